"""The runtime under load: bounded queues, fan-out, the drop policy, retries, failures, metrics.

The pipelines use test plugins from tests/fixtures/runtime_plugins (loaded through the pipeline
file's ``plugins:`` key): ``counting`` inputs that generate a known number of unique packets,
and ``record``/``slow``/``flaky`` outputs that write every event they get as one JSON line.
Some tests run the CLI; those that must watch counters while the pipeline is stalled run a
:class:`~flowpipe.pipeline.Pipeline` in a thread of the test process.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from background import wait_until_still
from summary_lines import parse_summary

from flowpipe.config import load_pipeline
from flowpipe.pipeline import Pipeline
from flowpipe.registry import Registry
from flowpipe.summary import Summary

PLUGINS = Path(__file__).resolve().parents[1] / "fixtures" / "runtime_plugins"


# -- helpers -------------------------------------------------------------------------------------


def write_pipeline(tmp_path: Path, *, batch_size: int = 100, **sections: Any) -> Path:
    """A pipeline file using the test plugins, the ``ip`` decoder and the given sections."""
    document: dict[str, Any] = {
        "plugins": [str(PLUGINS / "counting.py"), str(PLUGINS / "recording.py")],
        "decoders": [{"type": "ip", "flows": {"enabled": False}}],  # one event per packet
        **sections,
    }
    document["pipeline"] = {"batch_size": batch_size, **document.get("pipeline", {})}
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def flowpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowpipe", *args]


def run_cli(config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        flowpipe("run", "-c", str(config)), capture_output=True, text=True, timeout=timeout, cwd=config.parent
    )


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def headline(stderr: str) -> re.Match[str]:
    match = re.search(
        r"^flowpipe: finished in ([\d.]+) s: ([\d,]+) packets read \(([\d,]+) packets/s\); "
        r"events shipped: (.*); dropped ([\d,]+); decode errors ([\d,]+)$",
        stderr,
        re.MULTILINE,
    )
    assert match, stderr
    return match


def record_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def source_ips(path: Path) -> list[str]:
    return [event["source"]["ip"] for event in record_lines(path)]


def expected_ips(count: int) -> list[str]:
    return [f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}" for index in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class InProcess:
    """A pipeline running in a thread of the test process, its counters readable while it runs."""

    def __init__(self, config: Path) -> None:
        registry = Registry.default()
        self.pipeline = Pipeline(load_pipeline(config, registry), registry)
        self.summary: Summary | None = None
        self.thread = threading.Thread(target=self._run, name="test-pipeline", daemon=True)

    def _run(self) -> None:
        self.summary = self.pipeline.run()

    def counter(self, owner: str, name: str) -> int:
        for counters in self.pipeline.all_counters():
            if counters.owner == owner:
                return counters.get(name)
        raise KeyError(owner)

    def depth(self, queue: str) -> int:
        return next(c for c in self.pipeline.all_counters() if c.owner == queue).gauges["depth_batches"]

    def finish(self, timeout: float = 10.0) -> Summary:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not finish"
        assert self.summary is not None
        return self.summary


@contextmanager
def in_process(config: Path, release: Path | None = None) -> Iterator[InProcess]:
    """Start the pipeline; on the way out (even on failure) release stalled outputs and stop it."""
    running = InProcess(config)
    running.thread.start()
    try:
        yield running
    finally:
        if release is not None:
            release.touch()
        running.pipeline.request_stop()
        running.thread.join(10.0)


# -- bounded queues ------------------------------------------------------------------------------

# A stalled output holds one batch in write; its queue, the worker (blocked putting one batch),
# the input queue and the input (blocked putting one batch, already counted as read) hold the
# rest. With 50 packets per batch: 50 bytes per frame + 16 = 3,300 bytes per packet batch; an
# event batch is well over 6,000 bytes (about 250 bytes of JSON per event).
BOUNDS = [
    pytest.param(4, "64MiB", 4, 4, id="bounded-in-batches"),
    pytest.param(64, 6000, 2, 1, id="bounded-in-bytes"),
]


@pytest.mark.parametrize(("batches", "size", "input_depth", "output_depth"), BOUNDS)
def test_stalled_output_holds_back_the_input_within_queue_capacity(
    tmp_path: Path, batches: int, size: int | str, input_depth: int, output_depth: int
) -> None:
    release = tmp_path / "release"
    config = write_pipeline(
        tmp_path,
        batch_size=50,
        inputs=[{"type": "counting"}],
        outputs=[{"type": "slow", "path": "slow.ndjson", "block_until": str(release)}],
        pipeline={"queue": {"batches": batches, "bytes": size}},
    )
    with in_process(config, release) as running:
        read = wait_until_still(lambda: running.counter("counting", "out"))
        in_flight = 3  # batches held by the output's write, the worker and the input's put
        assert read == (input_depth + output_depth + in_flight) * 50
        assert running.depth("inputs") == input_depth
        assert running.depth("to-slow") == output_depth
        assert running.counter("slow", "out") == 0
        time.sleep(0.3)
        assert running.counter("counting", "out") == read, "the input kept reading past the bound"
        release.touch()
        wait_for(lambda: running.counter("slow", "out") > read, what="the output to resume")
        running.pipeline.request_stop()
        summary = running.finish()
    assert summary.exit_status == 0
    total = summary.packets
    assert summary.events_shipped() == {"slow": total}
    assert source_ips(tmp_path / "slow.ndjson") == expected_ips(total)
    assert summary.dropped == 0


# -- fan-out and the drop policy -----------------------------------------------------------------


def test_every_output_gets_every_event(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting", "count": 3000}],
        outputs=[
            {"type": "record", "id": "a", "path": "a.ndjson"},
            {"type": "record", "id": "b", "path": "b.ndjson"},
        ],
    )
    result = run_cli(config)
    assert result.returncode == 0, result.stderr
    a, b = record_lines(tmp_path / "a.ndjson"), record_lines(tmp_path / "b.ndjson")
    assert a == b
    assert [event["source"]["ip"] for event in a] == expected_ips(3000)
    assert headline(result.stderr).group(2, 4, 5, 6) == ("3,000", "a 3,000, b 3,000", "0", "0")
    stages = parse_summary(result.stderr)
    for owner in ("a", "b"):
        assert stages[("queue", f"to-{owner}")] == {"in": 3000, "out": 3000}
        assert stages[("output", owner)] == {"in": 3000, "out": 3000}


def test_stalled_output_with_on_full_drop_does_not_hold_back_the_others(tmp_path: Path) -> None:
    release = tmp_path / "release"
    total = 5000
    config = write_pipeline(
        tmp_path,
        batch_size=50,
        inputs=[{"type": "counting", "count": total}],
        outputs=[
            {"type": "record", "id": "fast", "path": "fast.ndjson"},
            {
                "type": "slow",
                "path": "slow.ndjson",
                "block_until": str(release),
                "on_full": "drop",
            },
        ],
        pipeline={"queue": {"batches": 2}},
    )
    with in_process(config, release) as running:
        wait_for(lambda: running.counter("fast", "out") == total, what="the fast output to get everything")
        assert running.counter("slow", "out") == 0, "the slow output was stalled the whole time"
        assert running.counter("to-slow", "in") == total
        release.touch()
        summary = running.finish()
    assert summary.exit_status == 0
    queue = next(counters for counters in summary.queues if counters.owner == "to-slow")
    slow = next(counters for counters in summary.outputs if counters.owner == "slow")
    delivered = slow.get("out")
    assert 2 * 50 <= delivered <= 3 * 50  # its queue's 2 batches, plus at most the one it was writing
    assert queue.values == {"in": total, "out": delivered, "dropped.queue_full": total - delivered}
    assert slow.values == {"in": delivered, "out": delivered}
    assert summary.events_shipped() == {"fast": total, "slow": delivered}
    assert summary.dropped == total - delivered
    assert source_ips(tmp_path / "fast.ndjson") == expected_ips(total)
    assert len(source_ips(tmp_path / "slow.ndjson")) == delivered


def test_slow_output_with_on_full_drop_ledger_from_the_cli(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        batch_size=50,
        inputs=[{"type": "counting", "count": 4000}],
        outputs=[
            {"type": "record", "id": "fast", "path": "fast.ndjson"},
            {"type": "slow", "path": "slow.ndjson", "sleep": "20ms", "on_full": "drop"},
        ],
        pipeline={"queue": {"batches": 2}},
    )
    result = run_cli(config)
    assert result.returncode == 0, result.stderr
    stages = parse_summary(result.stderr)
    queue, slow = stages[("queue", "to-slow")], stages[("output", "slow")]
    dropped = queue["dropped.queue_full"]
    assert dropped > 0
    assert queue == {"in": 4000, "out": 4000 - dropped, "dropped.queue_full": dropped}
    assert slow == {"in": 4000 - dropped, "out": 4000 - dropped}
    assert len(source_ips(tmp_path / "slow.ndjson")) == 4000 - dropped
    assert stages[("output", "fast")] == {"in": 4000, "out": 4000}
    assert headline(result.stderr).group(4, 5) == (f"fast 4,000, slow {4000 - dropped:,}", f"{dropped:,}")


# -- retries and failures ------------------------------------------------------------------------


def test_unreachable_output_is_retried_with_backoff_then_delivers_everything(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting", "count": 1000}],
        outputs=[
            {
                "type": "flaky",
                "path": "flaky.ndjson",
                "fail_first": 3,
                "backoff": {"init": "100ms", "max": "1s"},
            }
        ],
    )
    result = run_cli(config)
    assert result.returncode == 0, result.stderr
    assert source_ips(tmp_path / "flaky.ndjson") == expected_ips(1000)
    assert parse_summary(result.stderr)[("output", "flaky")] == {"in": 1000, "out": 1000, "retries": 3}
    # reported once (rate-limited), not silently
    reports = re.findall(r"output 'flaky' failed \((.*)\); retrying in (.*) s", result.stderr)
    assert reports == [("unreachable (failure 1 of 3)", "0.1")]
    # waits of 0.1, 0.2 and 0.4 s, each with +-20 % jitter: doubling, not immediate retries
    assert float(headline(result.stderr).group(1)) >= 0.7 * 0.8


def test_an_output_may_join_queued_batches_into_larger_writes(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        batch_size=10,
        inputs=[{"type": "counting", "count": 1000}],
        outputs=[{"type": "bulky", "path": "bulky.ndjson", "bulk": 300, "wait": "2s"}],
    )
    result = run_cli(config)
    assert result.returncode == 0, result.stderr
    assert source_ips(tmp_path / "bulky.ndjson") == expected_ips(1000)
    sizes = [int(line) for line in (tmp_path / "bulky.ndjson.sizes").read_text().split()]
    assert sum(sizes) == 1000
    assert max(sizes) <= 300 + 9  # a write grows by whole batches of 10
    assert len(sizes) < 20  # not one write per batch of 10
    assert parse_summary(result.stderr)[("output", "bulky")] == {"in": 1000, "out": 1000}


def test_a_partly_delivered_batch_retries_only_what_remains(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting", "count": 1000}],
        outputs=[{"type": "partial", "path": "partial.ndjson", "backoff": {"init": "1ms", "max": "10ms"}}],
    )
    result = run_cli(config)
    assert result.returncode == 0, result.stderr
    delivered, dead = source_ips(tmp_path / "partial.ndjson"), source_ips(tmp_path / "partial.ndjson.dead")
    assert len(dead) == 10  # one per batch of 100
    assert sorted(delivered + dead) == sorted(expected_ips(1000))  # each event once: no duplicates
    summary = parse_summary(result.stderr)[("output", "partial")]
    assert summary == {"in": 1000, "out": 990, "retries": 10, "dropped.rejected": 10}


def test_input_failure_delivers_what_was_read_and_exits_1(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting", "fail_after": 250}],
        outputs=[{"type": "record", "path": "out.ndjson"}],
    )
    result = run_cli(config)
    assert result.returncode == 1, result.stderr
    assert source_ips(tmp_path / "out.ndjson") == expected_ips(250)
    assert headline(result.stderr).group(2, 4) == ("250", "record 250")
    failures = re.findall(r"^  FAILED: (.*)$", result.stderr, re.MULTILINE)
    assert failures == ["input 'counting' failed: RuntimeError: counting input failed after 250 items"]


def test_processor_returning_garbage_costs_its_batches_not_the_run(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        plugins=[str(PLUGINS / "counting.py"), str(PLUGINS / "recording.py"), str(PLUGINS / "broken.py")],
        inputs=[{"type": "counting_events", "count": 1000}],
        decoders=[],
        processors=[{"type": "broken", "fail_every": 2}],
        outputs=[{"type": "record", "path": "out.ndjson"}],
    )
    result = run_cli(config)
    assert result.returncode == 0, result.stderr
    kept = [index for index in range(1000) if index // 100 % 2 == 0]  # batches 1, 3, 5... pass
    assert [event["event"]["sequence"] for event in record_lines(tmp_path / "out.ndjson")] == kept
    stages = parse_summary(result.stderr)
    assert stages[("processor", "broken")] == {"in": 1000, "out": 500, "dropped.processor_error": 500}
    assert stages[("output", "record")] == {"in": 500, "out": 500}
    assert result.stderr.count("processor 'broken' failed on a batch; its events are dropped") == 1


# -- metrics -------------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.read().decode()
    return {
        series: int(value)
        for series, value in (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    }


def try_scrape(port: int) -> dict[str, int] | None:
    try:
        return scrape(port)
    except OSError:
        return None


def test_metrics_http_serves_the_counters_of_a_running_pipeline(tmp_path: Path) -> None:
    port = free_port()
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting", "count": 600, "linger": True}],
        outputs=[{"type": "record", "path": "out.ndjson"}],
        metrics={"http": f"127.0.0.1:{port}", "period": 0},
    )
    process = subprocess.Popen(
        flowpipe("run", "-c", str(config)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        done = 'flowpipe_items_total{kind="output",id="record",counter="out"}'
        series = wait_for(
            lambda: (metrics := try_scrape(port)) and metrics.get(done) == 600 and metrics,
            what="the output to ship 600 events",
        )
        assert process.poll() is None, "the input lingers: the pipeline must still be running"
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    items = {key: value for key, value in series.items() if key.startswith("flowpipe_items_total")}
    assert items == {
        'flowpipe_items_total{kind="input",id="counting",counter="bytes"}': 600 * 50,
        'flowpipe_items_total{kind="input",id="counting",counter="out"}': 600,
        'flowpipe_items_total{kind="queue",id="inputs",counter="in"}': 600,
        'flowpipe_items_total{kind="queue",id="inputs",counter="out"}': 600,
        'flowpipe_items_total{kind="decoder",id="ip",counter="in"}': 600,
        'flowpipe_items_total{kind="decoder",id="ip",counter="out"}': 600,
        'flowpipe_items_total{kind="worker",id="worker",counter="out"}': 600,
        'flowpipe_items_total{kind="queue",id="to-record",counter="in"}': 600,
        'flowpipe_items_total{kind="queue",id="to-record",counter="out"}': 600,
        'flowpipe_items_total{kind="output",id="record",counter="in"}': 600,
        done: 600,
    }
    assert not any(key.startswith("flowpipe_dropped_total") for key in series)
    assert series['flowpipe_gauge{kind="queue",id="inputs",gauge="depth_batches"}'] == 0
    assert series['flowpipe_gauge{kind="queue",id="to-record",gauge="depth_bytes"}'] == 0
    assert process.returncode == 0, stderr
    assert headline(stderr).group(2, 4) == ("600", "record 600")


def test_metrics_http_port_in_use_fails_at_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_pipeline(
            tmp_path,
            inputs=[{"type": "counting", "count": 10}],
            outputs=[{"type": "record", "path": "out.ndjson"}],
            metrics={"http": f"127.0.0.1:{port}"},
        )
        result = run_cli(config)
    assert result.returncode == 1
    assert (
        result.stderr == f"flowpipe: metrics.http 127.0.0.1:{port}: cannot listen: Address already in use\n"
    )


def test_metrics_period_logs_every_counter(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting", "count": 300, "linger": True}],
        outputs=[{"type": "record", "path": "out.ndjson"}],
        metrics={"period": "100ms"},
    )
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            flowpipe("run", "-c", str(config)), stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            line = wait_for(
                lambda: next(
                    (
                        line
                        for line in log.read_text().splitlines()
                        if "output:record[in=300 out=300]" in line
                    ),
                    None,
                ),
                what="a metrics line with every event shipped",
            )
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)
    assert process.returncode == 0
    message = line.split(" INFO flowpipe.metrics: ", 1)[1]
    assert message == (
        "metrics: input:counting[bytes=15000 out=300] "
        "queue:inputs[depth_batches=0 depth_bytes=0 in=300 out=300] "
        "decoder:ip[in=300 out=300] worker:worker[out=300] "
        "queue:to-record[depth_batches=0 depth_bytes=0 in=300 out=300] "
        "output:record[in=300 out=300]"
    )
