"""Build capture files for tests: frames made with dpkt, written as classic pcap or pcapng files.

Frames are plain bytes, so a test can mix well-formed frames from the builders here with damaged
ones of its own. Transport checksums are filled in by dpkt when the IP layer is serialised.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

import dpkt

__all__ = [
    "ETH_DST",
    "ETH_SRC",
    "LINKTYPE_ETHERNET",
    "ethernet",
    "ip_packet",
    "tcp",
    "tcp_frame",
    "udp",
    "udp_frame",
    "write_pcap",
    "write_pcapng",
]

LINKTYPE_ETHERNET = dpkt.pcap.DLT_EN10MB
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


def ip_packet(src: str, dst: str, transport: dpkt.Packet, ttl: int = 64) -> dpkt.Packet:
    """An IPv4 or IPv6 packet (chosen from the address family) carrying a TCP/UDP ``transport``."""
    protocol = dpkt.ip.IP_PROTO_TCP if isinstance(transport, dpkt.tcp.TCP) else dpkt.ip.IP_PROTO_UDP
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version == 4:
        return dpkt.ip.IP(src=source.packed, dst=destination.packed, p=protocol, ttl=ttl, data=transport)
    packet = dpkt.ip6.IP6(src=source.packed, dst=destination.packed, nxt=protocol, hlim=ttl, data=transport)
    packet.plen = len(bytes(transport))
    return packet


def ethernet(
    payload: dpkt.Packet | bytes, ethertype: int | None = None, src: bytes = ETH_SRC, dst: bytes = ETH_DST
) -> bytes:
    """An Ethernet II frame; the EtherType defaults to IPv4 or IPv6 from ``payload``'s type."""
    if ethertype is None:
        ethertype = (
            dpkt.ethernet.ETH_TYPE_IP6 if isinstance(payload, dpkt.ip6.IP6) else dpkt.ethernet.ETH_TYPE_IP
        )
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=ethertype, data=payload))


def tcp_frame(src: str, dst: str, sport: int, dport: int, data: bytes = b"", **fields: int) -> bytes:
    """An Ethernet frame carrying one TCP segment over IPv4 or IPv6 (``fields``: flags, seq, ack)."""
    return ethernet(ip_packet(src, dst, tcp(sport, dport, data, **fields)))


def udp_frame(src: str, dst: str, sport: int, dport: int, data: bytes = b"") -> bytes:
    """An Ethernet frame carrying one UDP datagram over IPv4 or IPv6."""
    return ethernet(ip_packet(src, dst, udp(sport, dport, data)))
