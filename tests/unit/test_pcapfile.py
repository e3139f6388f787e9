"""locate_damage: the byte offset where libpcap's first unreadable record starts.

Each case damages a capture, checks what libpcap itself makes of it (how many packets it reads,
the error it raises) and that the walk lands on the exact offset of the failing record.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pcapy
import pytest
from captures import write_pcap, write_pcapng

from flowpipe.plugins.inputs.pcapfile import locate_damage

PACKETS = [(1_700_000_000 + index, bytes([index]) * 60) for index in range(5)]
PCAP_RECORD = 16 + 60
EPB = 28 + 60 + 4  # enhanced packet block: header fields, frame (already 4-aligned), trailing length


def libpcap_read(path: Path) -> tuple[int, str | None]:
    """How many packets libpcap reads from ``path``, and the error that stopped it (if any)."""
    reader = pcapy.open_offline(str(path))
    count = 0
    try:
        while reader.next()[0] is not None:
            count += 1
    except pcapy.PcapError as error:
        return count, str(error)
    finally:
        reader.close()
    return count, None


def damaged(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def patched(data: bytes, offset: int, value: int, order: str = "<") -> bytes:
    copy = bytearray(data)
    struct.pack_into(order + "I", copy, offset, value)
    return bytes(copy)


def pcap_bytes(order: str, magic: int, record_header: int, packets: list[tuple[float, bytes]]) -> bytes:
    """A classic pcap file written by hand: any byte order, 16- or 24-byte record headers."""
    parts = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)]
    for timestamp, frame in packets:
        header = struct.pack(order + "IIII", int(timestamp), 0, len(frame), len(frame))
        parts.append(header + bytes(record_header - 16) + frame)
    return b"".join(parts)


def pcapng_block(order: str, block_type: int, body: bytes) -> bytes:
    padding = bytes(-len(body) % 4)
    length = 12 + len(body) + len(padding)
    return struct.pack(order + "II", block_type, length) + body + padding + struct.pack(order + "I", length)


def pcapng_bytes(order: str, packets: list[tuple[float, bytes]]) -> bytes:
    """A pcapng file written by hand in either byte order: section, interface, enhanced packets."""
    blocks = [
        pcapng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)),
        pcapng_block(order, 0x00000001, struct.pack(order + "HHI", 1, 0, 65535)),
    ]
    for timestamp, frame in packets:
        micros = int(timestamp * 1_000_000)
        fields = struct.pack(order + "IIIII", 0, micros >> 32, micros & 0xFFFFFFFF, len(frame), len(frame))
        blocks.append(pcapng_block(order, 0x00000006, fields + frame))
    return b"".join(blocks)


@pytest.fixture
def pcap_data(tmp_path: Path) -> bytes:
    return write_pcap(tmp_path / "good.pcap", PACKETS).read_bytes()


@pytest.fixture
def pcapng_data(tmp_path: Path) -> bytes:
    return write_pcapng(tmp_path / "good.pcapng", PACKETS).read_bytes()


def test_intact_pcap_walks_record_by_record(tmp_path: Path, pcap_data: bytes) -> None:
    path = damaged(tmp_path, pcap_data, "intact.pcap")
    assert libpcap_read(path) == (5, None)
    assert [locate_damage(path, records) for records in range(6)] == [24 + PCAP_RECORD * n for n in range(6)]
    assert locate_damage(path, 5) == len(pcap_data)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("cut_in_record_header", "truncated dump file; tried to read 16 header bytes, only got 8"),
        ("cut_in_packet_data", "truncated dump file; tried to read 60 captured bytes, only got 30"),
        ("absurd_caplen", "invalid packet capture length 2147483647, bigger than snaplen of 65535"),
        ("caplen_past_end", "truncated dump file; tried to read 5000 captured bytes, only got 212"),
    ],
)
def test_damaged_pcap_offset_is_the_third_record(
    tmp_path: Path, pcap_data: bytes, case: str, error: str
) -> None:
    third = 24 + 2 * PCAP_RECORD
    data = {
        "cut_in_record_header": pcap_data[: third + 8],
        "cut_in_packet_data": pcap_data[: third + 16 + 30],
        "absurd_caplen": patched(pcap_data, third + 8, 0x7FFFFFFF),
        "caplen_past_end": patched(pcap_data, third + 8, 5000),
    }[case]
    path = damaged(tmp_path, data, f"{case}.pcap")
    assert libpcap_read(path) == (2, error)
    assert locate_damage(path, 2) == third == 176


def test_caplen_too_long_but_inside_the_file_follows_libpcap(tmp_path: Path, pcap_data: bytes) -> None:
    # Record 3 claims 100 bytes: libpcap reads 40 bytes of record 4 as its data and then fails
    # on a "header" made of record 4's frame bytes. The walk follows the same lengths.
    third = 24 + 2 * PCAP_RECORD
    path = damaged(tmp_path, patched(pcap_data, third + 8, 100), "long.pcap")
    count, error = libpcap_read(path)
    assert (count, error) == (3, "invalid packet capture length 50529027, bigger than snaplen of 65535")
    assert locate_damage(path, 3) == third + 16 + 100


def test_big_endian_and_nanosecond_and_modified_pcap(tmp_path: Path) -> None:
    cases = {
        "big_endian.pcap": pcap_bytes(">", 0xA1B2C3D4, 16, PACKETS),
        "nanosecond.pcap": write_pcap(tmp_path / "nano.pcap", PACKETS, nano=True).read_bytes(),
        "modified.pcap": pcap_bytes("<", 0xA1B2CD34, 24, PACKETS),  # Kuznetzov's 24-byte records
    }
    for name, data in cases.items():
        record = (24 if name == "modified.pcap" else 16) + 60
        path = damaged(tmp_path, data[: 24 + 3 * record + 20], name)
        assert libpcap_read(path)[0] == 3, name
        assert locate_damage(path, 3) == 24 + 3 * record, name


def test_intact_pcapng_walks_block_by_block(tmp_path: Path, pcapng_data: bytes) -> None:
    path = damaged(tmp_path, pcapng_data, "intact.pcapng")
    first = len(pcapng_data) - 5 * EPB
    assert libpcap_read(path) == (5, None)
    assert [locate_damage(path, records) for records in range(5)] == [first + EPB * n for n in range(5)]
    assert locate_damage(path, 5) == len(pcapng_data)


@pytest.mark.parametrize(
    ("case", "good", "error"),
    [
        ("first_block_cut_in_header", 0, "truncated pcapng dump file; tried to read 8 bytes, only got 6"),
        ("second_block_cut_in_data", 1, "truncated pcapng dump file; tried to read 84 bytes, only got 42"),
        (
            "second_block_cut_before_trailer",
            1,
            "truncated pcapng dump file; tried to read 84 bytes, only got 83",
        ),
        ("third_block_absurd_length", 2, "pcapng block size 2147483632 > maximum 16777216"),
        ("third_block_length_too_small", 2, "block in pcapng dump file has a length of 7 < 12"),
        ("third_block_trailer_differs", 2, "block total length in header and trailer don't match"),
    ],
)
def test_damaged_pcapng_offset_is_the_failing_block(
    tmp_path: Path, pcapng_data: bytes, case: str, good: int, error: str
) -> None:
    first = len(pcapng_data) - 5 * EPB
    block = first + good * EPB
    data = {
        "first_block_cut_in_header": pcapng_data[: block + 6],
        "second_block_cut_in_data": pcapng_data[: block + 50],
        "second_block_cut_before_trailer": pcapng_data[: block + EPB - 1],
        "third_block_absurd_length": patched(pcapng_data, block + 4, 0x7FFFFFF0),
        "third_block_length_too_small": patched(pcapng_data, block + 4, 7),
        "third_block_trailer_differs": patched(pcapng_data, block + EPB - 4, EPB + 4),
    }[case]
    path = damaged(tmp_path, data, f"{case}.pcapng")
    assert libpcap_read(path) == (good, error)
    assert locate_damage(path, good) == block


def test_big_endian_pcapng(tmp_path: Path) -> None:
    data = pcapng_bytes(">", PACKETS)
    first = len(data) - 5 * EPB
    path = damaged(tmp_path, data[: first + 2 * EPB + 40], "big_endian.pcapng")
    assert libpcap_read(path)[0] == 2
    assert locate_damage(path, 2) == first + 2 * EPB


def test_empty_file_is_damaged_at_zero(tmp_path: Path) -> None:
    assert locate_damage(damaged(tmp_path, b"", "empty.pcap"), 0) == 0


def interface(link_type: int, snaplen: int = 65535) -> bytes:
    return pcapng_block("<", 0x00000001, struct.pack("<HHI", link_type, 0, snaplen))


def enhanced_packet(frame: bytes) -> bytes:
    return pcapng_block("<", 0x00000006, struct.pack("<IIIII", 0, 0, 5, len(frame), len(frame)) + frame)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("other_link_type", "an interface has a type 101 different from the type of the first interface"),
        (
            "other_snaplen",
            "an interface has a snapshot length 100 different from the type of the first interface",
        ),
        (
            "snaplen_0_is_the_largest",
            "an interface has a snapshot length 0 different from the type of the first interface",
        ),
        (
            "new_section_other_link_type",
            "an interface has a type 113 different from the type of the first interface",
        ),
    ],
)
def test_pcapng_interface_libpcap_refuses_is_the_damage(tmp_path: Path, case: str, error: str) -> None:
    start = pcapng_bytes("<", PACKETS[:1])  # section, interface (snapshot length 65535), one packet
    refused = {
        "other_link_type": interface(101),
        "other_snaplen": interface(1, 100),
        "snaplen_0_is_the_largest": interface(1, 0),
        "new_section_other_link_type": interface(113),
    }[case]
    before = start[:28] if case.startswith("new_section") else b""  # a second section header
    path = damaged(tmp_path, start + before + refused + enhanced_packet(b"x" * 60), f"{case}.pcapng")
    assert libpcap_read(path) == (1, error)
    assert locate_damage(path, 1) == len(start) + len(before)


def test_pcapng_blocks_libpcap_reads_are_walked_over(tmp_path: Path) -> None:
    data = pcapng_bytes("<", PACKETS[:1])
    offsets = [len(data) - EPB]
    for block in (
        pcapng_block("<", 0x00000004, bytes(8)),  # name resolution
        pcapng_block("<", 0x00000BAD, bytes(8)),  # unknown: skipped
        pcapng_block("<", 0x00000003, struct.pack("<I", 60) + b"s" * 60),  # simple packet
        data[:28] + interface(1, 65535),  # a second section, its interface like the first
        interface(1, 65535),
        enhanced_packet(b"e" * 60),
    ):
        if block[0] in (3, 6):
            offsets.append(len(data))
        data += block
    path = damaged(tmp_path, data, "varied.pcapng")
    assert libpcap_read(path) == (3, None)
    assert [locate_damage(path, records) for records in range(4)] == [*offsets, len(data)]


def test_pcapng_snaplen_0_matches_the_largest(tmp_path: Path) -> None:
    section = pcapng_bytes("<", [])
    data = section[:28] + interface(1, 0) + enhanced_packet(b"a" * 60) + interface(1, 262144)
    data += enhanced_packet(b"b" * 60)
    path = damaged(tmp_path, data, "largest.pcapng")
    assert libpcap_read(path) == (2, None)
    assert locate_damage(path, 2) == len(data)
