"""Packets as pipeline items: ``decoders: []`` sends raw packets to the outputs (``flowpipe run``).

- pcap input -> ``file`` output ``codec: pcap``: tshark and dpkt read the same packets, timestamps
  (to the microsecond), captured and wire lengths as in the input capture (the sample capture of
  real programs, and a copy cut to a 96-byte snapshot length by editcap);
- pcap input -> ``kafka`` output ``codec: pycapa`` against the real Tansu broker: one message per
  packet, key and value exactly as Apache Metron's pycapa producer makes them, the partition from
  the symmetric flow hash (both directions of every flow in one partition, in capture order), and
  a pcap rebuilt from the topic the way pycapa's consumer does reads back in tshark;
- ``flowpipe check`` refuses processors, and outputs that cannot take packets, with one line;
- the worked examples in examples/ pass ``flowpipe check``, and pcap-forward.yml runs.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import dpkt
import pytest
import yaml
from kafka_broker import (  # kafka_broker_fixture provides the kafka_broker fixture
    Collector,
    KafkaBroker,
    kafka_broker_fixture,  # noqa: F401
)
from summary_lines import parse_summary

from flowpipe.plugins.decoders.flowhash import flow_hash

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "sample.pcap"
EXAMPLES = REPO / "examples"
TOPIC = "pcap"
PARTITIONS = 4


def write_pipeline(tmp_path: Path, **sections: Any) -> Path:
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def flowpipe(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )


def need(program: str, package: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"this test needs '{program}' (Debian package {package}), which is not installed")


def tshark_frames(path: Path) -> list[tuple[Decimal, int, int, str]]:
    """(epoch time, captured length, wire length, frame bytes in hex) of every frame, as tshark reads them."""
    need("tshark", "tshark")
    fields = ("frame.time_epoch", "frame.cap_len", "frame.len")
    result = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", *(a for f in fields for a in ("-e", f))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    with path.open("rb") as file:  # the bytes, with dpkt: tshark has no field for a whole raw frame
        frames = [frame.hex() for _, frame in dpkt.pcap.Reader(file)]
    assert len(frames) == len(rows)
    return [(Decimal(t), int(c), int(w), frame) for (t, c, w), frame in zip(rows, frames, strict=True)]


def capture_packets(path: Path) -> list[tuple[int, bytes]]:
    """(capture time in microseconds, frame) of each packet of a pcap file, read with dpkt."""
    with path.open("rb") as file:
        return [(round(timestamp * 1_000_000), frame) for timestamp, frame in dpkt.pcap.Reader(file)]


def conversation(frame: bytes) -> tuple[Any, ...]:
    """Both directions of a conversation alike, found with dpkt: the protocol and the two endpoints
    (with ports for TCP and UDP), or the two MAC addresses for non-IP frames."""
    ethernet = dpkt.ethernet.Ethernet(frame)
    packet = ethernet.data
    if not isinstance(packet, (dpkt.ip.IP, dpkt.ip6.IP6)):
        return ("link", frozenset((ethernet.src, ethernet.dst)))
    protocol = packet.p if isinstance(packet, dpkt.ip.IP) else packet.nxt
    transport = packet.data
    if isinstance(transport, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        ends = {(packet.src, transport.sport), (packet.dst, transport.dport)}
    else:
        ends = {(packet.src,), (packet.dst,)}
    return (protocol, frozenset(ends))


# -- file output, codec pcap ---------------------------------------------------------------------


@pytest.mark.parametrize("snaplen", [None, 96])
def test_a_pipeline_without_decoders_writes_the_input_packets_to_a_pcap_file(
    tmp_path: Path, snaplen: int | None
) -> None:
    capture = SAMPLE
    if snaplen:  # records whose captured length is less than their wire length
        need("editcap", "wireshark-common")
        capture = tmp_path / "cut.pcap"
        subprocess.run(
            ["editcap", "-F", "pcap", "-s", str(snaplen), str(SAMPLE), str(capture)],
            check=True,
            capture_output=True,
        )
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "pcap", "files": [str(capture)]}],
        decoders=[],
        outputs=[{"type": "file", "path": "out/forwarded.pcap", "codec": "pcap"}],
        pipeline={"batch_size": 16},
    )
    result = flowpipe("run", "--no-progress", "-c", config)
    assert result.returncode == 0, result.stderr

    expected = tshark_frames(capture)
    assert tshark_frames(tmp_path / "out" / "forwarded.pcap") == expected
    count = len(expected)
    assert count == 201
    if snaplen:
        assert {caplen for _, caplen, wire, _ in expected if caplen < wire} == {snaplen}
    stages = parse_summary(result.stderr)
    assert stages[("input", "pcap")]["out"] == count
    assert stages[("queue", "inputs")] == {"in": count, "out": count}
    assert stages[("queue", "to-file")] == {"in": count, "out": count}
    assert stages[("output", "file")] == {"in": count, "out": count}


# -- configuration checks ------------------------------------------------------------------------


def test_check_refuses_processors_when_packets_reach_the_outputs(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yml"
    config.write_text(
        f"inputs:\n  - type: pcap\n    files: [{SAMPLE}]\ndecoders: []\n"
        "processors:\n  - type: add_tags\n    tags: [seen]\n"
        "outputs:\n  - type: file\n    path: out.pcap\n    codec: pcap\n"
    )
    result = flowpipe("check", "-c", config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"flowpipe: {config}:5:1: processors: processors take events, but with decoders: [] the packet "
        "inputs send raw packets to the outputs (remove the processors, or add decoders)"
    ]


def test_check_refuses_an_output_that_cannot_take_packets(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yml"
    config.write_text(
        f"inputs:\n  - type: pcap\n    files: [{SAMPLE}]\ndecoders: []\noutputs:\n  - type: stdout\n"
    )
    result = flowpipe("check", "-c", config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"flowpipe: {config}:6:5: outputs.0.type: output 'stdout' cannot take the raw packets that "
        "decoders: [] sends to the outputs; outputs that can: file with codec pcap, kafka with codec pycapa"
    ]


def test_check_refuses_a_packet_codec_where_events_reach_the_outputs(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yml"
    config.write_text(
        f"inputs:\n  - type: pcap\n    files: [{SAMPLE}]\n"
        "outputs:\n  - type: kafka\n    hosts: [localhost:9092]\n    topic: packets\n    codec: pycapa\n"
    )
    result = flowpipe("check", "-c", config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"flowpipe: {config}:8:5: outputs.0.codec: output 'kafka' with codec 'pycapa' takes packets, "
        "not events: give the pipeline decoders: [] to send its packet inputs' raw packets to the outputs"
    ]


def test_check_refuses_a_pycapa_topic_with_fields_and_a_key(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yml"
    config.write_text(
        f"inputs:\n  - type: pcap\n    files: [{SAMPLE}]\ndecoders: []\noutputs:\n  - type: kafka\n"
        "    hosts: [localhost:9092]\n    topic: t-%{[event.dataset]}\n    key: x\n    codec: pycapa\n"
    )
    result = flowpipe("check", "-c", config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"flowpipe: {config}:8:5: outputs.0.topic: codec pycapa needs a plain topic name: "
        "packets have no fields",
        f"flowpipe: {config}:9:5: outputs.0.key: codec pycapa keys each message by its capture time: "
        "remove key",
    ]


# -- kafka output, codec pycapa ------------------------------------------------------------------


def test_pycapa_messages_are_metrons_format_partitioned_by_symmetric_flow_hash(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.create_topic(TOPIC, partitions=PARTITIONS)
    config = write_pipeline(
        tmp_path,
        inputs=[{"type": "pcap", "files": [str(SAMPLE)]}],
        decoders=[],
        outputs=[{"type": "kafka", "hosts": [kafka_broker.address], "topic": TOPIC, "codec": "pycapa"}],
        pipeline={"batch_size": 32},
    )
    result = flowpipe("run", "--no-progress", "-c", config)
    assert result.returncode == 0, result.stderr
    packets = capture_packets(SAMPLE)
    with Collector(kafka_broker, [TOPIC]) as collector:
        collector.wait_until_drained()
    messages = collector.messages
    assert collector.errors == []

    # one message per packet: key = capture time in microseconds, 8 bytes big-endian; value = the frame
    assert sorted((m.key, m.value) for m in messages) == sorted(
        (struct.pack(">Q", micros), frame) for micros, frame in packets
    )
    # each partition holds its packets in capture order
    position = {(struct.pack(">Q", micros), frame): index for index, (micros, frame) in enumerate(packets)}
    assert len(position) == len(packets)
    by_partition: dict[int, list[int]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        by_partition[message.partition].append(position[(message.key, message.value)])
    assert all(places == sorted(places) for places in by_partition.values())
    # every conversation, both directions, in one partition: the one its flow hash names
    partitions: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    directions: dict[tuple[Any, ...], set[bytes]] = defaultdict(set)
    for message in messages:
        key = conversation(message.value)
        partitions[key].add(message.partition)
        directions[key].add(message.value[6:12])  # the sender's MAC address
        assert message.partition == flow_hash(message.value) % PARTITIONS
    assert all(len(found) == 1 for found in partitions.values()), partitions
    assert sum(len(senders) == 2 for senders in directions.values()) >= 15  # flows seen both ways
    assert sorted(by_partition) == list(range(PARTITIONS))  # the flows spread over every partition

    stages = parse_summary(result.stderr)
    assert stages[("output", "kafka")] == {"in": len(packets), "out": len(packets)}

    # Metron's pycapa consumer writes the topic out as a pcap (global header, then per message a
    # record header from the key, caplen = wire length = the value's size, and the value): tshark
    # reads the packets back with their timestamps.
    rebuilt = tmp_path / "from-topic.pcap"
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for message in sorted(messages, key=lambda m: position[(m.key, m.value)]):
        seconds, micros = divmod(struct.unpack(">Q", message.key)[0], 1_000_000)
        records.append(
            struct.pack("<IIII", seconds, micros, len(message.value), len(message.value)) + message.value
        )
    rebuilt.write_bytes(b"".join(records))
    assert tshark_frames(rebuilt) == tshark_frames(SAMPLE)


# -- worked examples -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "env"),
    [
        ("sensor-to-kafka.yml", {"SENSOR_INTERFACE": "eth0", "KAFKA_HOSTS": "kafka1:9092,kafka2:9092"}),
        ("pcap-forward.yml", {}),
    ],
)
def test_examples_pass_check(example: str, env: dict[str, str]) -> None:
    result = flowpipe("check", "-c", EXAMPLES / example, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{EXAMPLES / example}: OK (1 inputs, 0 decoders, 0 processors, 1 outputs)\n"


@pytest.mark.parametrize(
    ("example", "env", "summary"),
    [
        (
            "af-packet-sensor.yml",
            {"SENSOR_INTERFACE": "eth0"},
            "1 inputs, 3 decoders, 0 processors, 1 outputs",
        ),
        ("dpdk-replay.yml", {}, "1 inputs, 3 decoders, 0 processors, 1 outputs"),
        ("kafka-decoder.yml", {}, "1 inputs, 3 decoders, 0 processors, 1 outputs"),
        ("ship-everywhere.yml", {}, "1 inputs, 3 decoders, 1 processors, 3 outputs"),
    ],
)
def test_decoding_examples_pass_check(example: str, env: dict[str, str], summary: str) -> None:
    result = flowpipe("check", "-c", EXAMPLES / example, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{EXAMPLES / example}: OK ({summary})\n"


def test_every_example_is_checked() -> None:
    checked = {
        "sensor-to-kafka.yml",
        "pcap-forward.yml",
        "af-packet-sensor.yml",
        "dpdk-replay.yml",
        "kafka-decoder.yml",
        "ship-everywhere.yml",
    }
    assert {path.name for path in EXAMPLES.glob("*.yml")} == checked


def test_pcap_forward_example_writes_what_tcpdump_selects(tmp_path: Path) -> None:
    need("tcpdump", "tcpdump")
    env = {
        "CAPTURES": str(SAMPLE),
        "FORWARD_DIR": str(tmp_path / "forwarded"),
        "FORWARD_FILTER": "tcp or icmp",
    }
    result = flowpipe("run", "--no-progress", "-c", EXAMPLES / "pcap-forward.yml", env=env)
    assert result.returncode == 0, result.stderr
    (written,) = (tmp_path / "forwarded").glob("packets-*.pcap")
    selected = tmp_path / "selected.pcap"
    subprocess.run(
        ["tcpdump", "-r", str(SAMPLE), "-w", str(selected), "tcp or icmp"], check=True, capture_output=True
    )
    expected = tshark_frames(selected)
    assert 0 < len(expected) < 201
    assert tshark_frames(written) == expected
