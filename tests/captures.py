"""Build capture files for tests: frames made with dpkt, written as classic pcap or pcapng files.

Frames are plain bytes, so a test can mix well-formed frames from the builders here with damaged
ones of its own. Transport checksums are filled in by dpkt when the IP layer is serialised.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import dpkt

__all__ = [
    "ETH_DST",
    "ETH_SRC",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "ethernet",
    "gre",
    "icmp",
    "icmp6",
    "ip_packet",
    "ip_raw",
    "ipv6_fragment_header",
    "ipv6_options_header",
    "ipv6_packet",
    "linux_sll",
    "linux_sll2",
    "loopback",
    "ppp",
    "pppoe_session",
    "tcp",
    "tcp_conversation",
    "tcp_frame",
    "udp",
    "udp_frame",
    "vxlan",
    "write_pcap",
    "write_pcapng",
]

LINKTYPE_ETHERNET = dpkt.pcap.DLT_EN10MB
LINKTYPE_NULL = 0
LINKTYPE_RAW = 101
"""Raw IP as written in files (libpcap hands it to programs as DLT_RAW, 12 on most systems)."""
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
ETH_SRC = bytes.fromhex("020000000001")
ETH_DST = bytes.fromhex("020000000002")


def write_pcap(
    path: str | Path,
    packets: Iterable[tuple[float, bytes]],
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 65535,
    nano: bool = False,
) -> Path:
    """Write ``(timestamp, frame)`` pairs to a classic pcap file (``nano``: nanosecond timestamps)."""
    path = Path(path)
    with path.open("wb") as file:
        writer = dpkt.pcap.Writer(file, snaplen=snaplen, linktype=linktype, nano=nano)
        for timestamp, frame in packets:
            writer.writepkt(frame, ts=timestamp)
    return path


def write_pcapng(
    path: str | Path,
    packets: Iterable[tuple[float, bytes]],
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 65535,
) -> Path:
    """Write ``(timestamp, frame)`` pairs to a pcapng file (one section, one interface, enhanced
    packet blocks with microsecond timestamps); return its path."""
    path = Path(path)
    with path.open("wb") as file:
        writer = dpkt.pcapng.Writer(file, snaplen=snaplen, linktype=linktype)
        for timestamp, frame in packets:
            writer.writepkt(frame, ts=timestamp)
    return path


def tcp(sport: int, dport: int, data: bytes = b"", flags: int = dpkt.tcp.TH_ACK, seq: int = 1, ack: int = 0):
    """A TCP segment (``flags`` from ``dpkt.tcp.TH_*``)."""
    return dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, data=data)


def udp(sport: int, dport: int, data: bytes = b""):
    """A UDP datagram."""
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)


def icmp(type_: int, code: int = 0, data: bytes = b"\x00\x01\x00\x01") -> dpkt.icmp.ICMP:
    """An ICMP message (``data``: the bytes after the checksum, e.g. echo identifier and sequence)."""
    return dpkt.icmp.ICMP(type=type_, code=code, data=data)


def icmp6(type_: int, code: int = 0, data: bytes = b"\x00\x01\x00\x01") -> dpkt.icmp6.ICMP6:
    """An ICMPv6 message (``data``: the bytes after the checksum)."""
    return dpkt.icmp6.ICMP6(type=type_, code=code, data=data)


_IP_PROTOCOLS = {
    dpkt.tcp.TCP: dpkt.ip.IP_PROTO_TCP,
    dpkt.udp.UDP: dpkt.ip.IP_PROTO_UDP,
    dpkt.icmp.ICMP: dpkt.ip.IP_PROTO_ICMP,
    dpkt.icmp6.ICMP6: dpkt.ip.IP_PROTO_ICMP6,
}


def ip_packet(src: str, dst: str, transport: dpkt.Packet, ttl: int = 64) -> dpkt.Packet:
    """An IPv4 or IPv6 packet (chosen from the address family) carrying a TCP, UDP, ICMP or
    ICMPv6 ``transport``."""
    protocol = _IP_PROTOCOLS[type(transport)]
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version == 4:
        return dpkt.ip.IP(src=source.packed, dst=destination.packed, p=protocol, ttl=ttl, data=transport)
    packet = dpkt.ip6.IP6(src=source.packed, dst=destination.packed, nxt=protocol, hlim=ttl, data=transport)
    packet.plen = len(bytes(transport))
    return packet


def ip_raw(src: str, dst: str, protocol: int, payload: bytes, ttl: int = 64) -> bytes:
    """An IPv4 or IPv6 packet (from the address family) of IP protocol ``protocol`` around ``payload``
    (another packet's bytes for IP in IP, a GRE header and its payload, ...)."""
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version == 4:
        return bytes(dpkt.ip.IP(src=source.packed, dst=destination.packed, p=protocol, ttl=ttl, data=payload))
    return ipv6_packet(src, dst, protocol, payload, hop_limit=ttl)


def gre(
    payload: dpkt.Packet | bytes,
    protocol: int,
    key: int | None = None,
    sequence: int | None = None,
    checksum: bool = False,
) -> bytes:
    """A GRE (version 0) header carrying ``payload`` of EtherType ``protocol``, with the optional
    checksum (written as 0), key and sequence number fields."""
    flags = (
        (0x8000 if checksum else 0)
        | (0x2000 if key is not None else 0)
        | (0x1000 if sequence is not None else 0)
    )
    header = struct.pack("!HH", flags, protocol)
    if checksum:
        header += bytes(4)
    if key is not None:
        header += struct.pack("!I", key)
    if sequence is not None:
        header += struct.pack("!I", sequence)
    return header + bytes(payload)


def vxlan(frame: bytes, vni: int, valid: bool = True) -> bytes:
    """A VXLAN header (the I flag set when ``valid``) and the Ethernet ``frame`` it carries."""
    return struct.pack("!BxxxI", 0x08 if valid else 0, vni << 8) + frame


def ppp(payload: dpkt.Packet | bytes, protocol: int | None = None, framing: bool = True) -> bytes:
    """A PPP frame: the address and control bytes (ff 03) when ``framing``, the protocol (IPv4's
    0x0021 or IPv6's 0x0057 from ``payload`` by default) and ``payload``."""
    if protocol is None:
        protocol = 0x0057 if _ethertype(payload) == dpkt.ethernet.ETH_TYPE_IP6 else 0x0021
    return (b"\xff\x03" if framing else b"") + struct.pack("!H", protocol) + bytes(payload)


def pppoe_session(payload: dpkt.Packet | bytes, session: int = 1, protocol: int | None = None) -> bytes:
    """A PPPoE session header and a PPP frame without framing bytes (an Ethernet payload of
    EtherType 0x8864)."""
    frame = ppp(payload, protocol, framing=False)
    return struct.pack("!BBHH", 0x11, 0, session, len(frame)) + frame


def _ethertype(payload: dpkt.Packet | bytes) -> int:
    """IPv6's EtherType for an IPv6 packet (dpkt's, or raw bytes starting with version 6), else IPv4's."""
    if isinstance(payload, dpkt.ip6.IP6) or (
        isinstance(payload, bytes) and payload[:1] and payload[0] >> 4 == 6
    ):
        return dpkt.ethernet.ETH_TYPE_IP6
    return dpkt.ethernet.ETH_TYPE_IP


def ethernet(
    payload: dpkt.Packet | bytes,
    ethertype: int | None = None,
    src: bytes = ETH_SRC,
    dst: bytes = ETH_DST,
    vlans: Sequence[int] = (),
) -> bytes:
    """An Ethernet II frame; the EtherType defaults to IPv4 or IPv6 from ``payload``.

    ``vlans``: VLAN ids of 802.1Q tags, outermost first; with several (QinQ) the outer ones are
    802.1ad service tags (TPID 0x88a8) and the innermost an 802.1Q tag (TPID 0x8100).
    """
    if ethertype is None:
        ethertype = _ethertype(payload)
    tags = b"".join(
        struct.pack("!HH", 0x8100 if index == len(vlans) - 1 else 0x88A8, vlan)
        for index, vlan in enumerate(vlans)
    )
    # Packed by hand: dpkt would parse a bytes payload and trim it to the IP total length.
    return dst + src + tags + struct.pack("!H", ethertype) + bytes(payload)


def linux_sll(payload: dpkt.Packet | bytes, protocol: int | None = None, src: bytes = ETH_SRC) -> bytes:
    """A Linux cooked (SLL) frame, as received from ``src``; the protocol defaults as in :func:`ethernet`."""
    protocol = _ethertype(payload) if protocol is None else protocol
    return struct.pack("!HHH8sH", 0, 1, 6, src, protocol) + bytes(payload)


def linux_sll2(payload: dpkt.Packet | bytes, protocol: int | None = None, src: bytes = ETH_SRC) -> bytes:
    """A Linux cooked v2 (SLL2) frame on interface 1, received from ``src``."""
    protocol = _ethertype(payload) if protocol is None else protocol
    return struct.pack("!HHiHBB8s", protocol, 0, 1, 1, 0, 6, src) + bytes(payload)


def loopback(
    payload: dpkt.Packet | bytes, family: int | None = None, byteorder: Literal["little", "big"] = "little"
) -> bytes:
    """A BSD null/loopback frame: the address family in 4 bytes, then the packet.

    The family defaults to 2 (AF_INET) or 24 (AF_INET6 of NetBSD/OpenBSD). ``byteorder``: the
    capturing host's for LINKTYPE_NULL, ``"big"`` for LINKTYPE_LOOP.
    """
    if family is None:
        family = 24 if _ethertype(payload) == dpkt.ethernet.ETH_TYPE_IP6 else 2
    return family.to_bytes(4, byteorder) + bytes(payload)


def ipv6_packet(
    src: str,
    dst: str,
    next_header: int,
    payload: bytes,
    hop_limit: int = 64,
    payload_length: int | None = None,
) -> bytes:
    """A raw IPv6 packet: a 40-byte header and ``payload`` (extension headers included, as bytes).

    ``payload_length`` overrides the header's payload length (default: ``len(payload)``).
    """
    length = len(payload) if payload_length is None else payload_length
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        length,
        next_header,
        hop_limit,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


def ipv6_options_header(next_header: int, length: int = 8) -> bytes:
    """A hop-by-hop or destination options header of ``length`` bytes (a multiple of 8), PadN-filled."""
    if length % 8 or length < 8:
        raise ValueError(f"an options header is a multiple of 8 bytes, not {length}")
    return struct.pack("!BBBB", next_header, length // 8 - 1, 1, length - 4) + bytes(length - 4)


def ipv6_fragment_header(
    next_header: int, offset: int = 0, more: bool = False, identification: int = 1
) -> bytes:
    """An IPv6 fragment header; ``offset`` in bytes (a multiple of 8)."""
    if offset % 8:
        raise ValueError(f"a fragment offset is a multiple of 8 bytes, not {offset}")
    return struct.pack("!BBHI", next_header, 0, offset | int(more), identification)


def ip_fragment(
    src: str, dst: str, protocol: int, data: bytes, offset: int, more: bool, identification: int = 1
) -> bytes:
    """One fragment, as raw IPv4 or IPv6 bytes (from the address family), carrying ``data`` at byte
    ``offset`` (a multiple of 8) of its datagram's payload; ``more``: the MF flag. IPv6 fragments
    have a fragment header whose next header is ``protocol``."""
    if offset % 8:
        raise ValueError(f"a fragment offset is a multiple of 8 bytes, not {offset}")
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version == 6:
        header = ipv6_fragment_header(protocol, offset, more, identification)
        return ipv6_packet(src, dst, 44, header + data)
    return bytes(
        dpkt.ip.IP(
            src=source.packed,
            dst=destination.packed,
            p=protocol,
            id=identification,
            mf=int(more),
            offset=offset >> 3,
            data=data,
        )
    )


def tcp_frame(src: str, dst: str, sport: int, dport: int, data: bytes = b"", **fields: int) -> bytes:
    """An Ethernet frame carrying one TCP segment over IPv4 or IPv6 (``fields``: flags, seq, ack)."""
    return ethernet(ip_packet(src, dst, tcp(sport, dport, data, **fields)))


def udp_frame(src: str, dst: str, sport: int, dport: int, data: bytes = b"") -> bytes:
    """An Ethernet frame carrying one UDP datagram over IPv4 or IPv6."""
    return ethernet(ip_packet(src, dst, udp(sport, dport, data)))


def tcp_conversation(
    client: tuple[str, int],
    server: tuple[str, int],
    exchanges: Sequence[tuple[bool, bytes]],
    start: float = 1_700_000_000.0,
    step: float = 0.001,
    handshake: bool = True,
    close: bool = True,
    client_isn: int = 1000,
    server_isn: int = 5000,
) -> list[tuple[float, bytes]]:
    """A whole TCP connection as ``(timestamp, frame)`` pairs, ``step`` seconds apart.

    ``exchanges`` lists ``(from_client, data)`` segments in the order sent; each is acknowledged
    by the next segment of the other side. With ``handshake`` the connection opens with SYN,
    SYN-ACK, ACK; with ``close`` it ends with FIN from the client, FIN from the server, last ACK.
    Feed a message split across segments as several exchanges of the same side.
    """
    seq = {True: client_isn, False: server_isn}
    frames: list[tuple[float, bytes]] = []
    clock = [start]

    def send(from_client: bool, data: bytes = b"", flags: int = dpkt.tcp.TH_ACK) -> None:
        src, dst = (client, server) if from_client else (server, client)
        frame = tcp_frame(
            src[0], dst[0], src[1], dst[1], data, flags=flags, seq=seq[from_client], ack=seq[not from_client]
        )
        frames.append((clock[0], frame))
        clock[0] += step
        seq[from_client] = (
            seq[from_client] + len(data) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
        ) & 0xFFFFFFFF

    if handshake:
        send(True, flags=dpkt.tcp.TH_SYN)
        send(False, flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
        send(True)
    for from_client, data in exchanges:
        send(from_client, data, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH)
    if close:
        send(True, flags=dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        send(False, flags=dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        send(True)
    return frames
