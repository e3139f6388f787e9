"""Counters, the Prometheus rendering and endpoint, rate-limited logging, and the run summary."""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import pytest

from flowpipe import metrics
from flowpipe.errors import ConfigError, StartupError
from flowpipe.metrics import Counters, MetricsServer, RateLimitedLog, render_prometheus
from flowpipe.summary import Summary


def counters(owner: str, kind: str, **values: int) -> Counters:
    result = Counters(owner, kind)
    for name, value in values.items():
        result.add(name.replace("__", "."), value)
    return result


def test_counters_add_drop_and_merge() -> None:
    ip = Counters("ip", "decoder")
    ip.add("in", 10)
    ip.add("in")
    ip.drop("malformed.truncated_ipv4", 2)
    ip.drop("not_ip")
    ip.add_many({"out": 8, "dropped.not_ip": 1})
    ip.gauges["depth_batches"] = 3
    assert ip.values == {"in": 11, "dropped.malformed.truncated_ipv4": 2, "dropped.not_ip": 2, "out": 8}
    assert ip.get("missing") == 0
    assert ip.drops() == {"malformed.truncated_ipv4": 2, "not_ip": 2}
    assert ip.dropped_total() == 4
    assert ip.snapshot() == {**ip.values, "depth_batches": 3}


def test_render_prometheus_exact_text() -> None:
    queue = counters("to-es", "queue", **{"in": 300, "out": 200, "dropped__queue_full": 100})
    queue.gauges.update({"depth_batches": 0, "depth_bytes": 0, "note": "not a number"})
    odd = counters('we"ird\\id', "output", out=5)
    assert render_prometheus([queue, odd]) == (
        "# HELP flowpipe_items_total Items counted by a stage or queue.\n"
        "# TYPE flowpipe_items_total counter\n"
        'flowpipe_items_total{kind="queue",id="to-es",counter="in"} 300\n'
        'flowpipe_items_total{kind="queue",id="to-es",counter="out"} 200\n'
        'flowpipe_items_total{kind="output",id="we\\"ird\\\\id",counter="out"} 5\n'
        "# HELP flowpipe_dropped_total Items dropped by a stage or queue, by reason.\n"
        "# TYPE flowpipe_dropped_total counter\n"
        'flowpipe_dropped_total{kind="queue",id="to-es",reason="queue_full"} 100\n'
        "# HELP flowpipe_gauge Current values (queue depth, bytes held).\n"
        "# TYPE flowpipe_gauge gauge\n"
        'flowpipe_gauge{kind="queue",id="to-es",gauge="depth_batches"} 0\n'
        'flowpipe_gauge{kind="queue",id="to-es",gauge="depth_bytes"} 0\n'
    )


def test_metrics_server_serves_current_values() -> None:
    stage = counters("pcap", "input", out=7)
    server = MetricsServer("127.0.0.1:0", lambda: [stage])
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert (
                'flowpipe_items_total{kind="input",id="pcap",counter="out"} 7\n' in response.read().decode()
            )
        stage.add("out", 5)
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            assert 'counter="out"} 12\n' in response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"{url}/nope", timeout=5)
        assert raised.value.code == 404
    finally:
        server.stop()


@pytest.mark.parametrize("address", ["9100x", "localhost", "127.0.0.1:99999"])
def test_metrics_server_rejects_a_malformed_address(address: str) -> None:
    with pytest.raises(ConfigError) as raised:
        MetricsServer(address, list)
    assert str(raised.value) == f"metrics.http: expected host:port, got {address!r}"


def test_metrics_server_port_in_use_is_a_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError) as raised:
            MetricsServer(f"127.0.0.1:{port}", list)
    assert str(raised.value) == f"metrics.http 127.0.0.1:{port}: cannot listen: Address already in use"


def test_rate_limited_log_reports_each_kind_once_per_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: now[0])
    errors = RateLimitedLog(logging.getLogger("flowpipe.test"), interval=30.0)
    with caplog.at_level(logging.WARNING, logger="flowpipe.test"):
        errors.warning("retry", "output %r failed", "es")
        errors.warning("retry", "output %r failed", "es")
        errors.error("bug", "other kind")
        now[0] += 29.9
        errors.warning("retry", "output %r failed", "es")
        now[0] += 0.2
        errors.warning("retry", "output %r failed", "es")
        errors.warning("retry", "output %r failed", "es")
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", "output 'es' failed"),
        ("ERROR", "other kind"),
        ("WARNING", "output 'es' failed (2 similar messages suppressed)"),
    ]


def test_summary_adds_up_and_renders_every_stage() -> None:
    summary = Summary(
        elapsed=2.0,
        inputs=[counters("pcap", "input", out=1000, bytes=64000)],
        decoders=[
            counters(
                "ip",
                "decoder",
                **{"in": 1000, "out": 990, "dropped__malformed.truncated_ipv4": 3, "dropped__not_ip": 7},
            )
        ],
        processors=[],
        outputs=[counters("a", "output", **{"in": 990, "out": 990}), counters("b", "output", **{"in": 890})],
        queues=[
            counters("inputs", "queue", **{"in": 1000, "out": 1000}),
            counters("to-b", "queue", **{"in": 990, "out": 890, "dropped__queue_full": 100}),
        ],
    )
    summary.outputs[1].add("out", 880)
    summary.outputs[1].drop("rejected", 10)
    assert summary.packets == 1000
    assert summary.dropped == 3 + 7 + 100 + 10
    assert summary.decode_errors == 3
    assert summary.events_shipped() == {"a": 990, "b": 880}
    assert summary.exit_status == 0
    assert summary.render().splitlines() == [
        "flowpipe: finished in 2.00 s: 1,000 packets read (500 packets/s); events shipped: a 990, b 880; "
        "dropped 120; decode errors 3",
        "  input     pcap             out      1,000  bytes 64,000",
        "  decoder   ip               in      1,000 out        990"
        "  dropped 10 (malformed.truncated_ipv4 3, not_ip 7)",
        "  queue     inputs           in      1,000 out      1,000",
        "  queue     to-b             in        990 out        890  dropped 100 (queue_full 100)",
        "  output    a                in        990 out        990",
        "  output    b                in        890 out        880  dropped 10 (rejected 10)",
    ]
    summary.failures.append("input 'pcap' failed: boom")
    assert summary.exit_status == 1
    assert summary.render().splitlines()[-1] == "  FAILED: input 'pcap' failed: boom"
