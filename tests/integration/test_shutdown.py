"""Shutdown of the real CLI: SIGINT/SIGTERM drain everything, a second signal exits at once, and
``pipeline.shutdown_timeout`` gives up on a stuck output with exit status 1.

The pipelines use the test plugins in tests/fixtures/runtime_plugins: an endless ``counting``
input of unique packets (source address ``10.a.b.c`` for packet number ``a.b.c``) and outputs
that write every event they get as one JSON line (``record``), slowly or never (``slow``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from background import started
from summary_lines import number, parse_summary

PLUGINS = Path(__file__).resolve().parents[1] / "fixtures" / "runtime_plugins"
HEADLINE = re.compile(
    r"^flowpipe: finished in [\d.]+ s: ([\d,]+) packets read .*; events shipped: (.*); dropped ", re.MULTILINE
)


def write_pipeline(tmp_path: Path, **sections: Any) -> Path:
    document: dict[str, Any] = {
        "plugins": [str(PLUGINS / "counting.py"), str(PLUGINS / "recording.py")],
        "decoders": [{"type": "ip", "flows": {"enabled": False}}],  # one event per packet
        **sections,
    }
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def source_ips(path: Path) -> list[str]:
    return [json.loads(line)["source"]["ip"] for line in path.read_text().splitlines()]


def expected_ips(count: int) -> list[str]:
    return [f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}" for index in range(count)]


DRAINS = [
    pytest.param(signal.SIGINT, {"type": "counting", "rate": 20000}, {"type": "record"}, id="SIGINT"),
    pytest.param(signal.SIGTERM, {"type": "counting", "rate": 20000}, {"type": "record"}, id="SIGTERM"),
    # full queues when the signal comes: everything queued must still be delivered
    pytest.param(
        signal.SIGINT, {"type": "counting"}, {"type": "slow", "sleep": "10ms"}, id="SIGINT-backpressure"
    ),
]


@pytest.mark.parametrize(("signum", "source", "sink"), DRAINS)
def test_signal_drains_everything_read_and_exits_0(
    tmp_path: Path, signum: signal.Signals, source: dict[str, Any], sink: dict[str, Any]
) -> None:
    out = tmp_path / "out.ndjson"
    config = write_pipeline(
        tmp_path,
        inputs=[source],
        outputs=[{**sink, "id": "sink", "path": str(out)}],
        pipeline={"batch_size": 100, "queue": {"batches": 8}},
    )
    with started(config) as process:
        wait_for(lambda: line_count(out) >= 500, what="events to flow")
        process.send_signal(signum)
        process.wait(timeout=10)
    stderr = (tmp_path / "stderr.log").read_text()
    assert process.returncode == 0, stderr
    assert f"{signum.name} received: stopping inputs, draining" in stderr
    read_text, shipped = HEADLINE.search(stderr).groups()  # type: ignore[union-attr]
    read = number(read_text)
    assert read >= 500
    assert shipped == f"sink {read:,}"
    assert source_ips(out) == expected_ips(read), "every packet read is delivered, once, in order"
    stages = parse_summary(stderr)
    assert stages[("input", "counting")] == {"out": read, "bytes": read * 50}
    assert stages[("output", "sink")] == {"in": read, "out": read}
    assert stages[("queue", "inputs")] == {"in": read, "out": read}


def test_second_sigint_exits_at_once_while_an_output_is_stuck(tmp_path: Path) -> None:
    fast = tmp_path / "fast.ndjson"
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting"}],
        outputs=[
            {"type": "record", "id": "fast", "path": str(fast)},
            {"type": "slow", "id": "stuck", "path": "stuck.ndjson", "block_until": str(tmp_path / "never")},
        ],
        pipeline={"batch_size": 100, "queue": {"batches": 2}, "shutdown_timeout": "60s"},
    )
    with started(config) as process:
        wait_for(lambda: line_count(fast) > 0, what="events to flow")
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert process.poll() is None, "the stuck output must keep the drain from finishing"
        second = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=5)
        took = time.monotonic() - second
    stderr = (tmp_path / "stderr.log").read_text()
    assert process.returncode == 130
    assert took < 2.0
    assert "SIGINT received: stopping inputs, draining" in stderr
    assert stderr.endswith("\nflowpipe: second SIGINT: exiting at once\n")
    assert "finished in" not in stderr


def test_shutdown_timeout_gives_up_on_a_stuck_output_and_exits_1(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting", "count": 500}],
        outputs=[
            {"type": "slow", "id": "stuck", "path": "stuck.ndjson", "block_until": str(tmp_path / "no")}
        ],
        pipeline={"batch_size": 100, "queue": {"batches": 2}, "shutdown_timeout": "500ms"},
    )
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - began < 10
    assert result.returncode == 1, result.stderr
    # the input read all 500 (the queues and the stuck write hold 5 batches); none was delivered
    assert HEADLINE.search(result.stderr).groups() == ("500", "stuck 0")  # type: ignore[union-attr]
    failures = re.findall(r"^  FAILED: (.*)$", result.stderr, re.MULTILINE)
    assert failures == [
        "shutdown timeout (0.5 s) reached: 500 queued or in-flight items were not delivered "
        "(dropped.undelivered)"
    ]
    stages = parse_summary(result.stderr)
    undelivered = sum(values.get("dropped.undelivered", 0) for values in stages.values())
    assert undelivered == 500
    assert stages[("output", "stuck")]["out"] == 0
    for values in stages.values():  # every queue's and output's ledger adds up
        if "in" in values:
            drops = sum(count for name, count in values.items() if name.startswith("dropped."))
            assert values["in"] == values["out"] + drops, values


def test_shutdown_timeout_counts_from_the_signal(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting"}],
        outputs=[
            {"type": "slow", "id": "stuck", "path": "stuck.ndjson", "block_until": str(tmp_path / "no")}
        ],
        pipeline={"batch_size": 100, "queue": {"batches": 2}, "shutdown_timeout": "300ms"},
        metrics={"period": "50ms"},
    )
    log = tmp_path / "stderr.log"
    with started(config) as process:
        wait_for(lambda: "metrics: " in log.read_text(), what="the pipeline to run")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    stderr = log.read_text()
    assert process.returncode == 1, stderr
    stages = parse_summary(stderr)
    read = stages[("input", "counting")]["out"]
    undelivered = sum(values.get("dropped.undelivered", 0) for values in stages.values())
    assert read == 7 * 100  # input's put 1 + input queue 2 + worker 1 + output queue 2 + stuck write 1
    assert undelivered == read
    assert f"FAILED: shutdown timeout (0.3 s) reached: {read} queued or in-flight items" in stderr
