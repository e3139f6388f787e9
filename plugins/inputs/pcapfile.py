"""Capture-file structure, walked without libpcap: where does a damaged file break?

libpcap reports *that* a file is truncated or corrupt, not *where*. Given how many packet records
libpcap read before it failed, :func:`locate_damage` walks the record headers (pcap) or block
headers (pcapng) to the byte offset at which the first unreadable record starts. It follows the
lengths written in the file exactly as libpcap does, so the two agree on where each record starts.
It runs once per damaged file, off the hot path, and maps the file instead of reading it whole.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

__all__ = ["locate_damage"]

PCAP_FILE_HEADER = 24
PCAP_MAGICS = {  # magic as stored -> (byte order, record header size)
    b"\xd4\xc3\xb2\xa1": ("<", 16),  # microsecond timestamps
    b"\xa1\xb2\xc3\xd4": (">", 16),
    b"\x4d\x3c\xb2\xa1": ("<", 16),  # nanosecond timestamps
    b"\xa1\xb2\x3c\x4d": (">", 16),
    b"\x34\xcd\xb2\xa1": ("<", 24),  # Kuznetzov's "modified" pcap: 8 more bytes per record
    b"\xa1\xb2\xcd\x34": (">", 24),
}
PCAPNG_SECTION_HEADER = 0x0A0D0D0A
PCAPNG_INTERFACE = 0x00000001
PCAPNG_LITTLE_ENDIAN = b"\x4d\x3c\x2b\x1a"  # the section's byte-order magic, 0x1A2B3C4D, as stored
PCAPNG_PACKET_BLOCKS = frozenset((0x00000002, 0x00000003, 0x00000006))  # packet, simple, enhanced
PCAPNG_MIN_BLOCK = 12  # type, length, trailing length
MAX_SNAPLEN = 262144  # libpcap's largest snapshot length (for nearly every link type)


def locate_damage(path: str | Path, records: int) -> int:
    """The byte offset where the record after the first ``records`` packets starts.

    ``path`` must be a pcap or pcapng file (one libpcap opened). A pcapng block before that record
    that libpcap cannot read either is reported instead: one that is cut or whose lengths are
    impossible or disagree, or an interface whose link type or snapshot length differs from the
    first interface's (libpcap reads one link type per file). The result is the file size if the
    walk finds nothing wrong.
    """
    with open(path, "rb") as stream:
        size = stream.seek(0, 2)
        if size == 0:
            return 0
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            layout = PCAP_MAGICS.get(data[:4])
            if layout is not None:
                return _pcap_offset(data, size, *layout, records)
            return _pcapng_offset(data, size, records)


def _pcap_offset(data: mmap.mmap, size: int, order: str, header_size: int, records: int) -> int:
    captured_length = struct.Struct(order + "I").unpack_from
    offset = PCAP_FILE_HEADER
    for _ in range(records):
        if offset + header_size > size:
            return offset
        offset += header_size + captured_length(data, offset + 8)[0]
    return min(offset, size)


def _pcapng_offset(data: mmap.mmap, size: int, records: int) -> int:
    offset = 0
    order = "<"
    packets = 0
    first_interface = None
    while offset + PCAPNG_MIN_BLOCK <= size:
        block_type = struct.unpack_from(order + "I", data, offset)[0]
        if block_type == PCAPNG_SECTION_HEADER:  # the same in both byte orders
            order = "<" if data[offset + 8 : offset + 12] == PCAPNG_LITTLE_ENDIAN else ">"
        elif block_type == PCAPNG_INTERFACE and offset + 16 <= size:
            link_type, _, snaplen = struct.unpack_from(order + "HHI", data, offset + 8)
            interface = (link_type, snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN)
            first_interface = first_interface or interface
            if interface != first_interface:
                return offset
        elif block_type in PCAPNG_PACKET_BLOCKS:
            if packets == records:
                return offset
            packets += 1
        length = struct.unpack_from(order + "I", data, offset + 4)[0]
        if (
            length < PCAPNG_MIN_BLOCK
            or length % 4
            or offset + length > size
            or struct.unpack_from(order + "I", data, offset + length - 4)[0] != length
        ):
            return offset
        offset += length
    return offset
