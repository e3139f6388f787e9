"""Capture-file structure, walked without libpcap: where does a damaged file break?

libpcap reports *that* a file is truncated or corrupt, not *where*. After ``good`` packets were
read, :func:`locate_damage` walks the record (pcap) or block (pcapng) headers to the byte offset
at which the first unreadable packet record starts. It runs once per damaged file, off the hot path.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["locate_damage"]

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond
    b"\xa1\xb2\x3c\x4d": ">",
}
PCAPNG_SECTION_HEADER = 0x0A0D0D0A
PCAPNG_PACKET_BLOCKS = {0x00000002, 0x00000003, 0x00000006}  # packet, simple packet, enhanced packet


def locate_damage(path: Path, good: int) -> int | None:
    """The byte offset of the record after the first ``good`` packets, or None if unknown."""
    with open(path, "rb") as stream:
        data = stream.read()
    magic = data[:4]
    if magic in PCAP_MAGICS:
        return _pcap_offset(data, PCAP_MAGICS[magic], good)
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == PCAPNG_SECTION_HEADER:
        return _pcapng_offset(data, good)
    return 0 if good == 0 else None


def _pcap_offset(data: bytes, order: str, good: int) -> int:
    offset = 24
    record = struct.Struct(order + "IIII")
    for _ in range(good):
        if offset + record.size > len(data):
            return offset
        captured = record.unpack_from(data, offset)[2]
        offset += record.size + captured
    return min(offset, len(data))


def _pcapng_offset(data: bytes, good: int) -> int:
    offset = 0
    order = "<"
    seen = 0
    while offset + 12 <= len(data):
        block_type = struct.unpack_from(order + "I", data, offset)[0]
        if block_type == PCAPNG_SECTION_HEADER:
            order = "<" if data[offset + 8 : offset + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        length = struct.unpack_from(order + "I", data, offset + 4)[0]
        if block_type in PCAPNG_PACKET_BLOCKS:
            if seen == good:
                return offset
            seen += 1
        if length < 12 or length % 4 or offset + length > len(data):
            return offset
        offset += length
    return offset
