"""Helpers for tests that capture live traffic on a veth pair (see tests/netns.py), with any live input.

- :class:`LiveRun`: ``flowpipe run`` in a namespace (one or several inputs, the ``ip`` decoder alone
  and a file output by default), waited for and stopped by the test; :func:`packet_events` reads
  its per-packet events, :func:`events_of_file` what flowpipe makes of a capture file, and
  :func:`check` runs ``flowpipe check`` on a pipeline text;
- :func:`http_and_udp_traffic` and :func:`assert_events_of_capture`: curl against http.server and
  a few UDP datagrams, captured by a live run and by tcpdump, and the check that both give the
  same events;
- :class:`Reader`, :func:`sender` and :func:`frames`: an input's ``read()`` run in a thread of the
  test process, a raw socket that puts exact frames on a veth end, and UDP frames to send.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from captures import udp_frame
from netns import Side, VethPair, in_namespace, require_programs

from flowpipe import Input, PacketBatch

__all__ = [
    "HTTP_PORT",
    "READY",
    "UDP_SENDER",
    "LiveRun",
    "Reader",
    "assert_events_of_capture",
    "check",
    "epoch",
    "events_of_file",
    "frames",
    "http_and_udp_traffic",
    "icmp_rows",
    "listening",
    "packet_events",
    "sender",
    "timeless",
]

HTTP_PORT = 8080
READY = "capturing on device"
"""What a live input logs once it captures."""


class LiveRun:
    """``flowpipe run`` in ``side``'s namespace, started, waited for and stopped by a test.

    ``input_options`` configures one input of ``input_type``, or a list of them several (each
    may name its own ``type`` and ``id``). ``sections`` are further top-level sections of the
    pipeline file; ``decoders`` and ``outputs`` replace the defaults (``ip`` alone, a file).
    """

    def __init__(
        self,
        tmp_path: Path,
        side: Side,
        input_options: dict[str, Any] | list[dict[str, Any]],
        prefix: Sequence[str] = (),
        input_type: str = "pcap",
        **sections: Any,
    ) -> None:
        self.output = tmp_path / "events.ndjson"
        self.stderr_path = tmp_path / "stderr.txt"
        inputs = [input_options] if isinstance(input_options, dict) else input_options
        self.input_count = len(inputs)
        config = tmp_path / "pipeline.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "inputs": [{"type": input_type, **options} for options in inputs],
                    "decoders": [{"type": "ip"}],
                    "outputs": [{"type": "file", "path": str(self.output)}],
                    **sections,
                }
            )
        )
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                side.command(*prefix, sys.executable, "-m", "flowpipe", "run", "-c", str(config)),
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        """The per-packet events written so far."""
        if not self.output.exists():
            return []
        return packet_events(self.output)

    def wait_until_capturing(self) -> None:
        """Wait until every input captures."""
        self.wait_for(lambda: self.stderr.count(READY) >= self.input_count, "flowpipe to start capturing")

    def wait_for_events(self, count: int) -> None:
        self.wait_for(lambda: len(self.events()) >= count, f"{count} events")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        """Wait until ``condition()`` holds; fail the test if flowpipe exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(
                    f"flowpipe exited with {self.process.returncode} waiting for {what}:\n{self.stderr}"
                )
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.stderr}")
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGINT, then wait for the drain; return the exit status."""
        self.process.send_signal(signal.SIGINT)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=20)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def packet_events(path: Path) -> list[dict[str, Any]]:
    """The per-packet events of an NDJSON file of events (its complete lines: it may be being written)."""
    events = [json.loads(line) for line in path.read_text().split("\n")[:-1]]
    return [event for event in events if event["event"]["dataset"] == "packet"]


def icmp_rows(events: list[dict[str, Any]]) -> list[tuple[str, str, int, int, int]]:
    return [
        (
            event["source"]["ip"],
            event["destination"]["ip"],
            event["icmp"]["type"],
            event["icmp"]["code"],
            event["network"]["bytes"],
        )
        for event in events
    ]


def epoch(event: dict[str, Any]) -> float:
    """An event's ``@timestamp`` (ISO 8601, UTC, milliseconds) as seconds since the epoch."""
    return datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00")).timestamp()


def timeless(event: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key != "@timestamp"}


def events_of_file(tmp_path: Path, capture: Path) -> list[dict[str, Any]]:
    """What ``flowpipe run`` makes of a capture file, with the same decoder and output."""
    output = tmp_path / "from-file.ndjson"
    config = tmp_path / "from-file.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "inputs": [{"type": "pcap", "files": [str(capture)]}],
                "decoders": [{"type": "ip"}],
                "outputs": [{"type": "file", "path": str(output)}],
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return packet_events(output)


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``flowpipe check`` of the pipeline ``text`` (dedented), run in ``tmp_path``."""
    (tmp_path / "pipeline.yml").write_text(textwrap.dedent(text))
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", "check", "-c", "pipeline.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


UDP_SENDER = textwrap.dedent(
    """
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], 40000))
    for size in (10, 20, 30):
        sock.sendto(b"u" * size, (sys.argv[2], 5353))
    """
)


def listening(side: Side) -> str:
    """``ss -ltn`` in ``side``'s namespace: the TCP sockets listening there."""
    return subprocess.run(side.command("ss", "-ltn"), capture_output=True, text=True, timeout=10).stdout


@contextmanager
def tcpdump_capturing(side: Side, capture: Path) -> Iterator[Callable[[], bool]]:
    """tcpdump writes what ``side``'s device sees to ``capture`` while the block runs (its log next
    to it, ``.txt``); yields a check of whether it is listening yet."""
    log_path = capture.with_suffix(".txt")
    with log_path.open("w") as log:
        tcpdump = subprocess.Popen(
            side.command(
                "tcpdump", "-i", side.device, "-Z", "root", "--immediate-mode", "-U", "-w", str(capture)
            ),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        yield lambda: "listening on" in log_path.read_text()
    finally:
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=10)


def http_and_udp_traffic(
    tmp_path: Path, pair: VethPair, input_type: str, input_options: dict[str, Any]
) -> tuple[LiveRun, Path]:
    """curl fetches 10,000 bytes from http.server, then three UDP datagrams go client -> server.

    A live run (``input_type`` with ``input_options``) and tcpdump both capture on the client's
    veth end. Returns the stopped run and tcpdump's capture file.
    """
    require_programs("curl", "tcpdump")
    client, server = pair.client, pair.server
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_bytes(b"hello, live capture\n" * 500)
    web = subprocess.Popen(
        server.command(
            sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", server.address, "-d", str(site)
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reference = tmp_path / "tcpdump.pcap"
    try:
        with tcpdump_capturing(client, reference) as tcpdump_listening:
            run = LiveRun(tmp_path, client, input_options, input_type=input_type)
            run.wait_until_capturing()
            run.wait_for(tcpdump_listening, "tcpdump to start")
            run.wait_for(lambda: server.address in listening(server), "the web server to listen")
            fetched = client.run(
                "curl", "-sf", "--retry", "3", f"http://{server.address}:{HTTP_PORT}/hello.txt"
            )
            assert fetched.stdout == "hello, live capture\n" * 500
            client.run(sys.executable, "-c", UDP_SENDER, client.address, server.address)
            run.wait_for(
                lambda: sum(event["network"]["transport"] == "udp" for event in run.events()) == 3,
                "the UDP events",
            )
            time.sleep(0.3)  # the ICMP port-unreachable answers to the datagrams
            assert run.stop() == 0, run.stderr
    finally:
        web.terminate()
        web.wait(timeout=10)
    return run, reference


def assert_events_of_capture(tmp_path: Path, pair: VethPair, run: LiveRun, reference: Path) -> None:
    """The run's events of :func:`http_and_udp_traffic` equal those of tcpdump's capture, and are right."""
    client, server = pair.client, pair.server
    events = run.events()
    reference_events = events_of_file(tmp_path, reference)
    assert [timeless(event) for event in events] == [timeless(event) for event in reference_events]
    # Each capture socket stamps a packet with its own clock reading: microseconds apart.
    assert all(
        abs(epoch(live) - epoch(dumped)) < 0.005
        for live, dumped in zip(events, reference_events, strict=True)
    )

    tcp = [event for event in events if event["network"]["transport"] == "tcp"]
    client_port = tcp[0]["source"]["port"]
    assert tcp[0]["destination"] == {"ip": server.address, "port": HTTP_PORT}  # the SYN
    endpoints = {
        (
            (event["source"]["ip"], event["source"]["port"]),
            (event["destination"]["ip"], event["destination"]["port"]),
        )
        for event in tcp
    }
    assert endpoints == {
        ((client.address, client_port), (server.address, HTTP_PORT)),
        ((server.address, HTTP_PORT), (client.address, client_port)),
    }
    assert len(tcp) >= 10  # handshake, request, response segments, FINs, ACKs
    assert sum(event["network"]["bytes"] for event in tcp) > 10_000  # the 10,000-byte file went by
    udp = [
        (event["source"], event["destination"], event["network"]["bytes"])
        for event in events
        if event["network"]["transport"] == "udp"
    ]
    assert udp == [
        ({"ip": client.address, "port": 40000}, {"ip": server.address, "port": 5353}, 14 + 20 + 8 + size)
        for size in (10, 20, 30)
    ]


class Reader:
    """Runs an input's read() in a thread, recording each batch with the monotonic time it left."""

    def __init__(self, stage: Input) -> None:
        self.stage = stage
        self.batches: list[tuple[float, PacketBatch]] = []
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        for batch in self.stage.read():
            assert isinstance(batch, PacketBatch)
            self.batches.append((time.monotonic(), batch))

    def frames(self) -> list[bytes]:
        return [frame for _, batch in self.batches for frame in batch.frames]

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; batches so far: {self.batches}"
            time.sleep(0.01)

    def stop(self) -> float:
        """Ask the input to stop; return how long read() took to end."""
        asked = time.monotonic()
        self.stage.stop()
        self.thread.join(5.0)
        assert not self.thread.is_alive(), "read() did not end after stop()"
        return time.monotonic() - asked


def frames(count: int, size: int = 0, first_port: int = 6000) -> list[bytes]:
    """``count`` UDP frames server -> client, to ports from ``first_port`` on, ``size`` payload bytes."""
    return [
        udp_frame("192.0.2.2", "192.0.2.1", 5000, first_port + index, bytes([index % 256]) * size)
        for index in range(count)
    ]


def sender(side: Side) -> socket.socket:
    """A raw socket on ``side``'s veth end: what it sends leaves there and arrives at the other end."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sock.bind((side.device, 0))
        return sock

    return in_namespace(side.namespace, make)
