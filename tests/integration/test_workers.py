"""``pipeline.workers``: decoding in N processes gives the events of one process.

The capture mixes the sample (HTTP, DNS, TLS, SMTP, echo, ICMP, DHCP), HTTP conversations, UDP
flows that go idle past the flow timeout while others go on (and come back as new flows), and
fragmented datagrams in order and in reverse, spread over every worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dpkt
import pytest
import yaml
from captures import ethernet, ip_fragment, tcp_conversation, udp, udp_frame, write_pcap

from flowpipe.config import load_pipeline
from flowpipe.errors import ConfigError, StartupError
from flowpipe.pipeline import Pipeline
from flowpipe.plugins.decoders.flowhash import FlowSplitter
from flowpipe.registry import Registry

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "sample.pcap"
PLUGINS = Path(__file__).resolve().parents[1] / "fixtures" / "runtime_plugins"
START = 1_800_000_000.0


def sample_frames() -> list[tuple[float, bytes]]:
    with SAMPLE.open("rb") as handle:
        return [(timestamp, bytes(frame)) for timestamp, frame in dpkt.pcap.Reader(handle)]


def crafted_frames() -> list[tuple[float, bytes]]:
    """HTTP conversations, idle and returning UDP flows, fragmented datagrams, from START on."""
    frames: list[tuple[float, bytes]] = []
    for number in range(12):
        request = f"GET /page/{number} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode()
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        frames += tcp_conversation(
            (f"10.0.0.{10 + number}", 40000 + number),
            ("192.0.2.80", 80),
            [(True, request), (False, response)],
            start=START + number * 3.0,
        )
    for number in range(16):  # every 5 s for 20 s; half go silent for 45 s (> 30 s timeout) and return
        client = (f"10.0.1.{number}", 30000 + number)
        times = [0, 5, 10, 15, 20] + ([65, 70] if number % 2 else [25, 30, 35, 40, 45])
        for second in times:
            at = START + second + number * 0.01
            frames.append((at, udp_frame(client[0], "192.0.2.9", client[1], 9000, b"ping")))
            frames.append((at + 0.001, udp_frame("192.0.2.9", client[0], 9000, client[1], b"pong")))
    for number in range(8):  # 72 bytes of UDP in three fragments; every other datagram last first
        datagram = bytes(udp(20000 + number, 9001, bytes(range(64))))
        pieces = [
            ethernet(
                ip_fragment("10.0.2.1", "192.0.2.10", 17, datagram[at : at + 24], at, at < 48, 100 + number)
            )
            for at in (0, 24, 48)
        ]
        if number % 2:
            pieces.reverse()
        at = START + 50 + number
        frames += [(at + index * 0.001, piece) for index, piece in enumerate(pieces)]
        frames.append((at + 0.01, udp_frame("192.0.2.10", "10.0.2.1", 9001, 20000 + number, b"ack")))
    return sorted(frames, key=lambda pair: pair[0])


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("workers")
    return write_pcap(folder / "mixed.pcap", [*sample_frames(), *crafted_frames()])


def run_pipeline(folder: Path, document: dict[str, Any]) -> Pipeline:
    folder.mkdir(exist_ok=True)
    path = folder / "pipeline.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    registry = Registry.default()
    pipeline = Pipeline(load_pipeline(path, registry), registry)
    pipeline.run()
    return pipeline


def decode(folder: Path, capture: Path, workers: int) -> tuple[list[bytes], Pipeline]:
    pipeline = run_pipeline(
        folder,
        {
            "inputs": [{"type": "pcap", "files": [str(capture)]}],
            "outputs": [{"type": "file", "path": "events.ndjson", "rotate_every": 0}],
            "pipeline": {"workers": workers, "batch_size": 64},
        },
    )
    return sorted((folder / "events.ndjson").read_bytes().splitlines()), pipeline


def test_the_capture_spreads_over_the_workers(capture: Path) -> None:
    with capture.open("rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        batch_frames = [bytes(frame) for _, frame in reader]
    from flowpipe.packet import PacketBatch

    batch = PacketBatch(1)
    for frame in batch_frames:
        batch.append(0.0, frame, len(frame))
    for ways in (2, 3):
        sizes = [len(part) for part in FlowSplitter(ways).split(batch)]
        assert min(sizes) > len(batch_frames) // (ways * 3), sizes


@pytest.mark.parametrize("workers", [2, 3])
def test_n_workers_make_exactly_the_events_and_counts_of_one_process(
    tmp_path: Path, capture: Path, workers: int
) -> None:
    single, one = decode(tmp_path / "one", capture, 1)
    several, many = decode(tmp_path / "many", capture, workers)

    assert several == single
    events = [json.loads(line) for line in single]
    assert Counter(event["event"]["dataset"] for event in events) == {
        "flow": 120,
        "http": 18,
        "dns": 6,
        "dhcpv4": 4,
        "tls": 3,
        "echo": 3,
        "icmp": 3,
        "smtp": 2,
    }
    flows = [event["flow"] for event in events if event["event"]["dataset"] == "flow"]
    assert Counter(flow.get("end_reason", "periodic") for flow in flows) == {
        "periodic": 56,
        "end_of_input": 24,
        "fin": 23,
        "timeout": 17,
    }
    for stage, other in zip(one.decoders, many.decoders, strict=True):
        assert other.context.counters.values == stage.context.counters.values, stage.context.id
    assert many.worker_counters.values == one.worker_counters.values == {"out": len(single)}
    assert many.summary().exit_status == 0


def test_checkpoints_are_acknowledged_once_every_worker_shipped_what_came_before(tmp_path: Path) -> None:
    pipeline = run_pipeline(
        tmp_path,
        {
            "plugins": [str(PLUGINS / "checkpoints.py"), str(PLUGINS / "recording.py")],
            "inputs": [{"type": "checkpointed", "batches": 6, "size": 3, "watch": "slow.ndjson"}],
            "outputs": [
                {"type": "record", "path": "fast.ndjson"},
                {"type": "slow", "path": "slow.ndjson", "sleep": "20ms"},
            ],
            "pipeline": {"workers": 2},
        },
    )
    source = pipeline.inputs[0]
    assert source.acknowledged == [1, 2, 3, 4, 5, 6]
    # never early: at each acknowledgement the slow output holds at least what came before it
    # (events of later batches, from the other worker, may already be there)
    assert all(seen >= 3 * number for number, seen in enumerate(source.lines_seen, start=1))
    assert source.lines_seen == sorted(source.lines_seen)
    sequences = sorted(
        yaml.safe_load(line)["event"]["sequence"] for line in (tmp_path / "slow.ndjson").open()
    )
    assert sequences == list(range(18))
    assert not pipeline.failures


FAILING_PLUGIN = '''
import os

from flowpipe import Decoder, Processor, hookimpl
from flowpipe.plugins.decoders.flowhash import FlowSplitter


class Refusing(Processor):
    """Fails to open."""

    def open(self):
        raise OSError("no database here")


class Crashing(Decoder):
    """Ends its process at the frame holding CRASH; counts the frames before."""

    def decode(self, batch, events):
        for frame in batch.frames:
            if b"CRASH" in frame:
                os._exit(7)
        events.extend({"frame": len(frame)} for frame in batch.frames)

    def splitter(self, ways, link_type):
        return FlowSplitter(ways, link_type)


class Stalling(Crashing):
    """Never finishes flushing."""

    def flush(self, events):
        import time

        time.sleep(600)


class Unsplitting(Decoder):
    """Cannot share packets out between workers."""

    def decode(self, batch, events):
        return None


@hookimpl
def flowpipe_add_processors():
    return {"refusing": Refusing}


@hookimpl
def flowpipe_add_decoders():
    return {"crashing": Crashing, "stalling": Stalling, "unsplitting": Unsplitting}
'''


def test_a_first_decoder_without_a_splitter_is_refused_with_workers(tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING_PLUGIN)
    path = tmp_path / "pipeline.yml"
    path.write_text(
        "plugins: [failing.py]\n"
        "inputs: [{type: pcap, files: [x.pcap]}]\n"
        "decoders: [{type: unsplitting}]\n"
        "outputs: [{type: stdout}]\n"
        "pipeline:\n"
        "  workers: 2\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_pipeline(path, Registry.default())
    assert str(raised.value) == (
        f"{path}:6:3: pipeline.workers: the first decoder, 'unsplitting', cannot share packets out "
        "between worker processes (it has no splitter); set 1"
    )


def test_a_worker_that_cannot_open_its_stages_stops_the_start_with_the_reason_once(tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING_PLUGIN)
    with pytest.raises(StartupError) as raised:
        run_pipeline(
            tmp_path,
            {
                "plugins": ["failing.py"],
                "inputs": [{"type": "pcap", "files": [str(SAMPLE)]}],
                "processors": [{"type": "refusing"}],
                "outputs": [{"type": "file", "path": "events.ndjson"}],
                "pipeline": {"workers": 2},
            },
        )
    assert str(raised.value) == "processor 'refusing' failed to start: no database here"
    assert not (tmp_path / "events.ndjson").exists()  # outputs are opened after the workers


def run_failing(
    tmp_path: Path, decoder: str, frames: list[tuple[float, bytes]], **settings: Any
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``flowpipe run`` of ``frames`` through a decoder of FAILING_PLUGIN with 2 workers; the
    result and the seconds it took."""
    (tmp_path / "failing.py").write_text(FAILING_PLUGIN)
    capture = write_pcap(tmp_path / "capture.pcap", frames)
    config = tmp_path / "pipeline.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "plugins": ["failing.py"],
                "inputs": [{"type": "pcap", "files": [str(capture)]}],
                "decoders": [{"type": decoder}],
                "outputs": [{"type": "file", "path": "events.ndjson"}],
                "pipeline": {"workers": 2, **settings},
            }
        )
    )
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    return result, time.monotonic() - began


def test_an_output_that_cannot_open_stops_the_started_workers_at_once(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    began = time.monotonic()
    with pytest.raises(StartupError) as raised:
        run_pipeline(
            tmp_path,
            {
                "inputs": [{"type": "pcap", "files": [str(SAMPLE)]}],
                "outputs": [{"type": "file", "path": "not-a-folder/events.ndjson"}],
                "pipeline": {"workers": 2},
            },
        )
    assert time.monotonic() - began < 3  # the workers see their pipes end; no kill after a wait
    folder = tmp_path / "not-a-folder"
    assert str(raised.value) == f"cannot write {folder}/events.ndjson: {folder} is not a directory"


def test_a_worker_that_dies_fails_the_run_promptly_and_says_which(tmp_path: Path) -> None:
    frames = [
        (START + index, udp_frame("10.0.0.1", "10.0.0.2", 1000 + index, 2000, b"fine")) for index in range(50)
    ]
    frames.append((START + 60, udp_frame("10.0.0.1", "10.0.0.2", 999, 2000, b"CRASH")))
    result, seconds = run_failing(tmp_path, "crashing", frames, batch_size=8)
    assert seconds < 20  # not the 30 s shutdown timeout
    assert result.returncode == 1
    assert re.search(r"worker [01] ended unexpectedly \(exit code 7\): the run stops", result.stderr)
    assert result.stderr.count("ended unexpectedly") == 2  # the log line and the summary's failure


def test_ctrl_c_to_the_process_group_stops_the_run_cleanly_with_every_event(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "plugins": [str(PLUGINS / "checkpoints.py")],
                "inputs": [{"type": "checkpointed", "batches": 5, "size": 4, "linger": True}],
                "outputs": [{"type": "file", "path": "events.ndjson"}],
                "pipeline": {"workers": 2},
            }
        )
    )
    events = tmp_path / "events.ndjson"
    with (tmp_path / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowpipe", "run", "-c", str(config)],
            stderr=stderr,
            cwd=tmp_path,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
        try:
            deadline = time.monotonic() + 30
            while not (events.exists() and events.read_bytes().count(b"\n") == 20):
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert len(events.read_bytes().splitlines()) == 20
    log = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


def test_the_shutdown_timeout_stops_workers_that_do_not_finish(tmp_path: Path) -> None:
    frames = [(START, udp_frame("10.0.0.1", "10.0.0.2", 1, 2, b"x"))]
    result, seconds = run_failing(tmp_path, "stalling", frames, shutdown_timeout="1s")
    assert seconds < 15
    assert result.returncode == 1
    assert "shutdown timeout (1 s) reached" in result.stderr
    assert "ended unexpectedly" not in result.stderr  # killed on purpose, not lost
    assert (tmp_path / "events.ndjson").read_text().count("\n") == 1  # what was decoded got out
