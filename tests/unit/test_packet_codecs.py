"""Packet codecs: the ``file`` output's ``pcap`` codec (read back with dpkt and tshark), the
``kafka`` output's ``pycapa`` key and value, and the symmetric flow hash that picks pycapa's
partitions (both directions of a flow alike, stable across processes, spread over partitions)."""

from __future__ import annotations

import gzip
import ipaddress
import logging
import random
import shutil
import struct
import subprocess
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import dpkt
import pytest
from captures import (
    ETH_DST,
    ETH_SRC,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    ethernet,
    icmp,
    ip_fragment,
    ip_packet,
    ipv6_options_header,
    ipv6_packet,
    linux_sll,
    linux_sll2,
    loopback,
    tcp,
    tcp_conversation,
    tcp_frame,
    udp,
    udp_frame,
)

from flowpipe import PacketBatch, StageContext, StartupError
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.decoders.flowhash import flow_hash
from flowpipe.plugins.outputs.file import PCAP_SNAPLEN, FileOutput
from flowpipe.plugins.outputs.kafka import VALUE_CODECS, KafkaOutput, pycapa_key

T0 = 1_700_000_000
DLT_RAW = 12
"""libpcap's DLT_RAW on Linux: what the pcap input reports for a LINKTYPE_RAW (101) file."""

Record = tuple[int, int, int, int, bytes]
"""seconds, microseconds, captured length, length on the wire, frame."""


# -- helpers -------------------------------------------------------------------------------------


def make_output(base_dir: Path, **options: Any) -> FileOutput:
    """A file output configured as a pipeline file would configure it (options validated)."""
    options = {"codec": "pcap", **options}
    assert validate_options(FileOutput.all_options(), options) == []
    config = build_namespace(FileOutput.all_options(), options)
    return FileOutput(config, StageContext("file", Counters("file", "output"), base_dir=base_dir))


def packet_batch(records: list[Record], link_type: int = LINKTYPE_ETHERNET) -> PacketBatch:
    """A batch whose timestamps are made from exact seconds and microseconds, as the pcap input does."""
    batch = PacketBatch(link_type, "test")
    for seconds, microseconds, _caplen, wire_length, frame in records:
        batch.append(seconds + microseconds / 1_000_000, frame, wire_length)
    return batch


def conversation_records(count: int = 0) -> list[Record]:
    """A TCP connection and a DNS-like UDP exchange, with microsecond timestamps of every kind."""
    frames = tcp_conversation(("192.0.2.1", 40000), ("192.0.2.2", 80), [(True, b"GET / HTTP/1.0\r\n\r\n")])
    frames += [(0.0, udp_frame("2001:db8::1", "2001:db8::2", 5353, 53, b"q" * 30))]
    frames += [(0.0, udp_frame("2001:db8::2", "2001:db8::1", 53, 5353, b"a" * 90))]
    micros = [0, 1, 999_999, 500_000, 123_456, 7, 999_000, 10, 654_321, 1_000]
    records = [
        (T0 + index, micros[index % len(micros)], len(frame), len(frame), frame)
        for index, (_, frame) in enumerate(frames)
    ]
    return records[:count] if count else records


def read_pcap(data: bytes) -> tuple[Any, list[Record]]:
    """The global header and records of a little-endian pcap file, parsed with dpkt's header classes."""
    header = dpkt.pcap.LEFileHdr(data[:24])
    records: list[Record] = []
    offset = 24
    while offset < len(data):
        record = dpkt.pcap.LEPktHdr(data[offset : offset + 16])
        offset += 16
        records.append(
            (record.tv_sec, record.tv_usec, record.caplen, record.len, data[offset : offset + record.caplen])
        )
        offset += record.caplen
    assert offset == len(data), "the last record is cut short"
    return header, records


def dpkt_reader(path: Path) -> tuple[int, list[tuple[float, bytes]]]:
    """Link type and (timestamp, frame) pairs as dpkt's pcap reader sees the file."""
    with path.open("rb") as file:
        reader = dpkt.pcap.Reader(file)
        return reader.datalink(), list(reader)


def tshark_fields(path: Path) -> list[tuple[Decimal, int, int, str]]:
    """(epoch time, captured length, wire length, encapsulation) of each frame as tshark reads the file."""
    if shutil.which("tshark") is None:
        pytest.skip("this test needs 'tshark' (Debian package tshark), which is not installed")
    fields = ["frame.time_epoch", "frame.cap_len", "frame.len", "frame.encap_type"]
    result = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(path),
            "-T",
            "fields",
            *(arg for field in fields for arg in ("-e", field)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    return [(Decimal(time), int(caplen), int(length), encap) for time, caplen, length, encap in rows]


# -- pcap codec ----------------------------------------------------------------------------------


def test_pcap_codec_writes_a_libpcap_file_dpkt_and_tshark_read_back_exactly(tmp_path: Path) -> None:
    records = conversation_records()
    cut = records[3][4][:40]  # a segment cut to 40 bytes by a snapshot length: the wire length stays
    records[3] = (*records[3][:2], 40, len(records[3][4]), cut)
    output = make_output(tmp_path, path="out.pcap")
    output.open()
    assert output.write(packet_batch(records[:5])) == 0
    assert output.write(packet_batch(records[5:])) == 0
    output.close()
    data = (tmp_path / "out.pcap").read_bytes()

    header, written = read_pcap(data)
    assert data[:4] == bytes.fromhex("d4c3b2a1")  # little-endian, microsecond timestamps
    assert (header.v_major, header.v_minor, header.thiszone, header.sigfigs) == (2, 4, 0, 0)
    assert (header.snaplen, header.linktype) == (262144, LINKTYPE_ETHERNET)
    assert written == records
    assert data.count(data[:24]) == 1  # one global header

    datalink, packets = dpkt_reader(tmp_path / "out.pcap")
    assert datalink == LINKTYPE_ETHERNET
    assert [frame for _, frame in packets] == [record[4] for record in records]
    assert [round(timestamp * 1_000_000) for timestamp, _ in packets] == [
        s * 1_000_000 + us for s, us, *_ in records
    ]

    assert tshark_fields(tmp_path / "out.pcap") == [
        (Decimal(f"{seconds}.{micros:06d}"), caplen, wire, "1")
        for seconds, micros, caplen, wire, _ in records
    ]


def test_each_rotated_file_is_a_complete_pcap_and_together_they_hold_every_packet(tmp_path: Path) -> None:
    records = conversation_records()
    output = make_output(tmp_path, path="out.pcap", rotate_every=300, number_of_files=20)
    output.open()
    for start in range(0, len(records), 3):
        output.write(packet_batch(records[start : start + 3]))
    output.close()

    def age(path: Path) -> int:  # out.pcap is the newest, out.pcap.1 the one before, ...
        return 0 if path.name == "out.pcap" else int(path.name.rsplit(".", 1)[1])

    files = sorted(tmp_path.glob("out.pcap*"), key=age, reverse=True)
    assert len(files) >= 4
    collected: list[Record] = []
    for path in files:
        data = path.read_bytes()
        header, written = read_pcap(data)
        assert (header.magic, header.linktype) == (0xA1B2C3D4, LINKTYPE_ETHERNET)
        assert written, f"{path.name} holds no packet"
        assert len(data) <= 300 or len(written) == 1, f"{path.name} is larger than rotate_every"
        assert dpkt_reader(path)[1] == [(s + us / 1e6, frame) for s, us, _, _, frame in written]
        collected.extend(written)
    assert collected == records


def test_gzip_pcap_is_one_valid_capture_after_appending_runs(tmp_path: Path) -> None:
    records = conversation_records()
    for start in (0, 6):  # two runs appending to the same file: the header is written once
        output = make_output(tmp_path, path="out.pcap.gz", gzip=True)
        output.open()
        output.write(packet_batch(records[start : start + 6]))
        output.close()
    data = gzip.decompress((tmp_path / "out.pcap.gz").read_bytes())
    header, written = read_pcap(data)
    assert header.linktype == LINKTYPE_ETHERNET
    assert written == records[:12]
    assert [row[1:3] for row in tshark_fields(tmp_path / "out.pcap.gz")] == [
        (r[2], r[3]) for r in records[:12]
    ]


def test_a_batch_of_another_link_type_is_rejected_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = conversation_records(4)
    output = make_output(tmp_path, path="out.pcap")
    output.open()
    assert output.write(packet_batch(records[:2])) == 0
    sll = [(s, us, 0, len(frame), linux_sll(frame[14:])) for s, us, _, _, frame in records[2:]]
    with caplog.at_level(logging.ERROR):
        assert output.write(packet_batch(sll, LINKTYPE_LINUX_SLL)) == 2
        assert output.write(packet_batch(sll, LINKTYPE_LINUX_SLL)) == 2
    assert output.write(packet_batch(records[2:])) == 0
    output.close()
    header, written = read_pcap((tmp_path / "out.pcap").read_bytes())
    assert header.linktype == LINKTYPE_ETHERNET
    assert written == records
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        f"file output 'file': 2 packets of link type 113 rejected: {tmp_path / 'out.pcap'} holds link type 1"
    ]


def test_dlt_raw_is_written_as_linktype_raw_and_a_new_file_takes_any_link_type(tmp_path: Path) -> None:
    packet = ip_packet("192.0.2.1", "192.0.2.2", udp(1, 2, b"x"))
    output = make_output(tmp_path, path="raw.pcap")
    output.open()
    output.write(packet_batch([(T0, 5, 0, len(bytes(packet)), bytes(packet))], DLT_RAW))
    output.close()
    header, written = read_pcap((tmp_path / "raw.pcap").read_bytes())
    assert header.linktype == LINKTYPE_RAW
    assert written == [(T0, 5, len(bytes(packet)), len(bytes(packet)), bytes(packet))]
    assert [row[3] for row in tshark_fields(tmp_path / "raw.pcap")] == ["7"]  # tshark's WTAP_ENCAP_RAW_IP


def test_frames_longer_than_the_snapshot_length_are_cut_and_counted(tmp_path: Path) -> None:
    big = ethernet(random.Random(3).randbytes(300_000 - 14), ethertype=0x88B5)  # a jumbo test frame
    output = make_output(tmp_path, path="big.pcap")
    output.open()
    output.write(packet_batch([(T0, 1, 0, len(big), big)]))
    output.close()
    _, written = read_pcap((tmp_path / "big.pcap").read_bytes())
    assert written == [(T0, 1, PCAP_SNAPLEN, 300_000, big[:PCAP_SNAPLEN])]
    assert output.context.counters.get("truncated") == 1
    assert tshark_fields(tmp_path / "big.pcap") == [(Decimal(f"{T0}.000001"), PCAP_SNAPLEN, 300_000, "1")]


def test_packets_whose_time_a_pcap_record_cannot_hold_are_rejected(tmp_path: Path) -> None:
    frame = udp_frame("192.0.2.1", "192.0.2.2", 1, 2, b"x")
    batch = PacketBatch(LINKTYPE_ETHERNET)
    for timestamp in (-1.5, float(T0), 2.0**32):
        batch.append(timestamp, frame, len(frame))
    output = make_output(tmp_path, path="time.pcap")
    output.open()
    assert output.write(batch) == 2
    output.close()
    assert read_pcap((tmp_path / "time.pcap").read_bytes())[1] == [(T0, 0, len(frame), len(frame), frame)]


def test_appending_takes_the_existing_files_link_type_and_refuses_other_files(tmp_path: Path) -> None:
    packet = bytes(ip_packet("192.0.2.1", "192.0.2.2", udp(1, 2, b"x")))
    output = make_output(tmp_path, path="raw.pcap")
    output.open()
    output.write(packet_batch([(T0, 1, 0, len(packet), packet)], DLT_RAW))
    output.close()
    output = make_output(tmp_path, path="raw.pcap")
    output.open()  # the file holds LINKTYPE_RAW: Ethernet frames do not belong in it
    frame = ethernet(packet)
    assert output.write(packet_batch([(T0, 2, 0, len(frame), frame)])) == 1
    assert output.write(packet_batch([(T0, 3, 0, len(packet), packet)], DLT_RAW)) == 0
    output.close()
    assert [record[:2] for record in read_pcap((tmp_path / "raw.pcap").read_bytes())[1]] == [(T0, 1), (T0, 3)]

    (tmp_path / "events.ndjson").write_text('{"a": 1}\n')
    with pytest.raises(StartupError) as error:
        make_output(tmp_path, path="events.ndjson").open()
    assert str(error.value) == (
        f"cannot write {tmp_path / 'events.ndjson'}: not a pcap file this output can append to "
        "(little-endian, microseconds); move it away or set append: false"
    )
    output = make_output(tmp_path, path="events.ndjson", append=False)
    output.open()
    output.write(packet_batch([(T0, 4, 0, len(frame), frame)]))
    output.close()
    assert read_pcap((tmp_path / "events.ndjson").read_bytes())[1] == [(T0, 4, len(frame), len(frame), frame)]


def test_output_kinds_follow_the_codec() -> None:
    def takes(cls: Any, **options: Any) -> tuple[str, ...]:
        return cls.takes(build_namespace(cls.all_options(), options))

    assert takes(FileOutput, path="x", codec="json") == ("events",)
    assert takes(FileOutput, path="x", codec="pcap") == ("packets",)
    assert takes(KafkaOutput, hosts=["h:1"], topic="t") == ("events",)
    assert takes(KafkaOutput, hosts=["h:1"], topic="t", codec="pycapa") == ("packets",)


# -- pycapa --------------------------------------------------------------------------------------


def test_pycapa_key_is_the_capture_time_in_microseconds_big_endian_and_the_value_the_frame() -> None:
    for seconds, micros in (
        (T0, 0),
        (T0, 1),
        (T0, 999_999),
        (1_796_028_559, 472_252),
        (0, 0),
        (4_102_444_800, 5),
    ):
        timestamp = seconds + micros / 1_000_000  # as the pcap input computes it
        # pycapa: struct.pack(">Q", epoch_secs * 1000000.0 + delta_micros)
        assert pycapa_key(timestamp) == struct.pack(">Q", seconds * 1_000_000 + micros)
    assert pycapa_key(1.000001) == b"\x00\x00\x00\x00\x00\x0f\x42\x41"
    with pytest.raises(struct.error):
        pycapa_key(-1.0)
    frame = tcp_frame("192.0.2.1", "192.0.2.2", 1, 2, b"payload")
    assert VALUE_CODECS["pycapa"](frame) is frame  # the frame as captured, not copied


# -- flow hash -----------------------------------------------------------------------------------


LINK_LAYERS = {
    "ethernet": (LINKTYPE_ETHERNET, ethernet),
    "qinq": (LINKTYPE_ETHERNET, lambda packet: ethernet(packet, vlans=[100, 200])),
    "sll": (LINKTYPE_LINUX_SLL, linux_sll),
    "sll2": (LINKTYPE_LINUX_SLL2, linux_sll2),
    "raw": (LINKTYPE_RAW, bytes),
    "dlt_raw": (DLT_RAW, bytes),
    "ipv4": (LINKTYPE_IPV4, bytes),
    "null": (LINKTYPE_NULL, loopback),
    "loop": (LINKTYPE_LOOP, lambda packet: loopback(packet, byteorder="big")),
}


@pytest.mark.parametrize(
    ("link", "version"),
    [(link, version) for link in LINK_LAYERS for version in (4, 6) if (link, version) != ("ipv4", 6)],
)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_flow_hash_is_the_same_both_ways_and_is_the_crc_of_the_sorted_endpoints(
    link: str, version: int, transport: str
) -> None:
    link_type, wrap = LINK_LAYERS[link]
    client, server = ("10.1.2.3", "192.0.2.200") if version == 4 else ("2001:db8::99", "2001:db8::1")
    make = tcp if transport == "tcp" else udp
    forward = wrap(ip_packet(client, server, make(50000, 443)))
    backward = wrap(ip_packet(server, client, make(443, 50000)))
    assert flow_hash(forward, link_type) == flow_hash(backward, link_type)
    # independently: CRC-32 of the protocol number and the two endpoints, the lower one first
    low = ipaddress.ip_address(client).packed + (50000).to_bytes(2, "big")
    high = ipaddress.ip_address(server).packed + (443).to_bytes(2, "big")
    if high < low:
        low, high = high, low
    protocol = b"\x06" if transport == "tcp" else b"\x11"
    assert flow_hash(forward, link_type) == zlib.crc32(protocol + low + high)


def test_flow_hash_of_other_traffic() -> None:
    a, b = "192.0.2.1", "192.0.2.2"
    # ICMP and other IP protocols: by addresses
    ping = ethernet(ip_packet(a, b, icmp(8)))
    pong = ethernet(ip_packet(b, a, icmp(0)))
    assert flow_hash(ping) == flow_hash(pong) == zlib.crc32(b"\x01" + bytes([192, 0, 2, 1, 192, 0, 2, 2]))
    # every fragment of a datagram, first or not, hashes by addresses: they stay together
    first = ethernet(ip_fragment(a, b, 17, bytes(udp(53, 5353, bytes(40)))[:16], 0, True))
    later = ethernet(ip_fragment(a, b, 17, bytes(24), 16, False))
    reply = ethernet(ip_fragment(b, a, 17, bytes(24), 16, False))
    assert (
        flow_hash(first)
        == flow_hash(later)
        == flow_hash(reply)
        == zlib.crc32(b"\x11" + bytes([192, 0, 2, 1, 192, 0, 2, 2]))
    )
    v6_first = ethernet(ip_fragment("2001:db8::1", "2001:db8::2", 6, bytes(tcp(1, 2))[:16], 0, True))
    v6_later = ethernet(ip_fragment("2001:db8::2", "2001:db8::1", 6, bytes(8), 8, False))
    assert flow_hash(v6_first) == flow_hash(v6_later)
    # IPv6 extension headers are walked to the ports
    with_options = ethernet(
        ipv6_packet("2001:db8::1", "2001:db8::2", 0, ipv6_options_header(17) + bytes(udp(7, 9)))
    )
    plain = ethernet(ip_packet("2001:db8::2", "2001:db8::1", udp(9, 7)))
    assert flow_hash(with_options) == flow_hash(plain)
    # non-IP Ethernet (ARP): the two MAC addresses, the lower first
    arp = ethernet(bytes(28), ethertype=0x0806)
    arp_back = ethernet(bytes(28), ethertype=0x0806, src=ETH_DST, dst=ETH_SRC)
    assert flow_hash(arp) == flow_hash(arp_back) == zlib.crc32(ETH_SRC + ETH_DST)
    # non-IP of other link types, unknown link types, frames too short to read: 0
    assert flow_hash(linux_sll(bytes(28), protocol=0x0806), LINKTYPE_LINUX_SLL) == 0
    assert flow_hash(tcp_frame(a, b, 1, 2), 147) == 0
    assert flow_hash(b"", LINKTYPE_ETHERNET) == 0
    assert flow_hash(tcp_frame(a, b, 1, 2)[:30]) == 0  # IPv4 cut inside its header


def test_flow_hash_never_raises_on_cut_or_random_frames() -> None:
    frames = [
        ethernet(ip_packet("192.0.2.1", "192.0.2.2", tcp(1, 2, b"data")), vlans=[7]),
        ethernet(ip_packet("2001:db8::1", "2001:db8::2", udp(1, 2, b"data"))),
        ethernet(ipv6_packet("2001:db8::1", "2001:db8::2", 0, ipv6_options_header(6) + bytes(tcp(1, 2)))),
    ]
    for frame in frames:
        for end in range(len(frame) + 1):
            assert 0 <= flow_hash(frame[:end]) < 2**32
    rng = random.Random(7)
    for link_type in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW, LINKTYPE_NULL):
        for _ in range(2000):
            assert 0 <= flow_hash(rng.randbytes(rng.randrange(80)), link_type) < 2**32


def test_flow_hash_spreads_flows_over_partitions_and_keeps_each_flow_whole() -> None:
    rng = random.Random(1)
    partitions = 8
    counts = [0] * partitions
    for _ in range(4000):
        client = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        server = f"192.0.2.{rng.randrange(1, 255)}"
        sport, dport = rng.randrange(1024, 65536), rng.choice((53, 80, 443, 25))
        forward, backward = tcp_frame(client, server, sport, dport), tcp_frame(server, client, dport, sport)
        partition = flow_hash(forward) % partitions
        assert flow_hash(backward) % partitions == partition
        counts[partition] += 1
    assert all(400 <= count <= 600 for count in counts), counts  # 500 expected in each
