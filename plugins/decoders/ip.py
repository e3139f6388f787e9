"""The ``ip`` decoder: link layer, IPv4/IPv6 and transport headers, one event per packet.

Layers decoded, each in place with ``struct.unpack_from`` on the captured frame (the only bytes
copied are the packed addresses, which key a cache of their text form):

- link: Ethernet II, Linux cooked (SLL, SLL2), raw IP, BSD null/loopback (either byte order),
  then any number of 802.1Q/802.1ad tags (QinQ);
- network: IPv4 (options skipped) and IPv6 with its extension headers walked (hop-by-hop,
  routing, fragment, destination options, authentication header). The IPv4 total length or IPv6
  payload length bounds what follows, so Ethernet padding is never read as a header; a length of
  0 (segmentation offload on the capturing host, IPv6 jumbograms) means the captured bytes;
- transport: TCP, UDP and SCTP ports, ICMP and ICMPv6 type and code. A fragment other than the
  first carries no transport header, so its event has no ports.

Each packet becomes one event with ECS fields: ``@timestamp``, ``source.ip``/``source.port``,
``destination.ip``/``destination.port``, ``network.type`` (``ipv4``/``ipv6``),
``network.transport`` (``tcp``, ``udp``, ``icmp``, ``ipv6-icmp``, ...), ``network.iana_number``,
``network.bytes`` (the frame's length on the wire), ``network.vlan.id`` (outer tag) and
``network.inner.vlan.id`` (innermost tag when there are several). ECS has no ICMP fields;
ICMP packets carry ``icmp.type`` and ``icmp.code`` (numbers), the per-packet form of the values
Packetbeat's ICMP transactions report as ``icmp.request.type``/``icmp.request.code``.

Nothing raises out of :meth:`IpDecoder.decode`. A packet whose headers are cut short or
impossible is dropped and counted as ``dropped.malformed.<reason>``; one that is not IP (ARP, LLC,
...) as ``dropped.not_ip``; a batch of a link type not listed above as
``dropped.unsupported_link_type``.
"""

from __future__ import annotations

import socket
import struct
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace

from flowpipe import Decoder, Event, PacketBatch, StageContext, format_timestamp, hookimpl

_U16 = struct.Struct("!H").unpack_from
_U32_LE = struct.Struct("<I").unpack_from
_U32_BE = struct.Struct("!I").unpack_from
_IPV4 = struct.Struct("!BxH2xHxB2x4s4s").unpack_from
"""version/IHL, total length, flags/fragment offset, protocol, source, destination."""
_IPV6 = struct.Struct("!B3xHBx16s16s").unpack_from
"""version (high nibble), payload length, next header, source, destination."""
_PORTS = struct.Struct("!HH").unpack_from
_TYPE_CODE = struct.Struct("!BB").unpack_from
_inet_ntop = socket.inet_ntop

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))  # 802.1Q, 802.1ad, pre-standard QinQ

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = (12, 14, 101)  # DLT_RAW (12; 14 on OpenBSD) and LINKTYPE_RAW in files
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
BSD_AF_INET = 2
BSD_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD/DragonFly, Darwin

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6_FRAGMENT = 44
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
IPV6_EXTENSIONS = frozenset((0, 43, PROTO_IPV6_FRAGMENT, PROTO_AH, 60))
WITH_PORTS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_SCTP))
ICMP_PROTOCOLS = frozenset((PROTO_ICMP, PROTO_ICMPV6))

_NAMES = {
    1: "icmp",
    2: "igmp",
    4: "ipv4",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    59: "ipv6-nonxt",
    89: "ospf",
    103: "pim",
    112: "vrrp",
    132: "sctp",
}
TRANSPORTS = tuple(_NAMES.get(number, str(number)) for number in range(256))
"""``network.transport`` by IP protocol number: the IANA keyword, or the number as text."""
IANA_NUMBERS = tuple(str(number) for number in range(256))
VLAN_IDS = tuple(str(number) for number in range(4096))
ADDRESS_CACHE_SIZE = 65536

# Drop reasons, as counted (``dropped.`` is prepended by the counters).
NOT_IP = "not_ip"
UNSUPPORTED_LINK_TYPE = "unsupported_link_type"
TRUNCATED_ETHERNET = "malformed.truncated_ethernet"
TRUNCATED_LINUX_SLL = "malformed.truncated_linux_sll"
TRUNCATED_LINUX_SLL2 = "malformed.truncated_linux_sll2"
TRUNCATED_LOOPBACK = "malformed.truncated_loopback"
TRUNCATED_VLAN = "malformed.truncated_vlan"
TRUNCATED_IP = "malformed.truncated_ip"
TRUNCATED_IPV4 = "malformed.truncated_ipv4"
BAD_IPV4_VERSION = "malformed.bad_ipv4_version"
BAD_IPV4_HEADER_LENGTH = "malformed.bad_ipv4_header_length"
BAD_IPV4_TOTAL_LENGTH = "malformed.bad_ipv4_total_length"
TRUNCATED_IPV6 = "malformed.truncated_ipv6"
BAD_IPV6_VERSION = "malformed.bad_ipv6_version"
TRUNCATED_IPV6_EXTENSION = "malformed.truncated_ipv6_extension"
TRUNCATED_ICMP = "malformed.truncated_icmp"
TRUNCATED_PORTS = {protocol: f"malformed.truncated_{TRANSPORTS[protocol]}" for protocol in WITH_PORTS}

LinkResult = tuple[int, int] | str
"""(EtherType, offset of what follows the link header), or a drop reason."""


def _linux_sll(frame: bytes) -> LinkResult:
    return (_U16(frame, 14)[0], 16) if len(frame) >= 16 else TRUNCATED_LINUX_SLL


def _linux_sll2(frame: bytes) -> LinkResult:
    return (_U16(frame, 0)[0], 20) if len(frame) >= 20 else TRUNCATED_LINUX_SLL2


def _raw(frame: bytes) -> LinkResult:
    if not frame:
        return TRUNCATED_IP
    return (ETHERTYPE_IPV6 if frame[0] >> 4 == 6 else ETHERTYPE_IPV4), 0


def _address_family(family: int) -> LinkResult:
    if family == BSD_AF_INET:
        return ETHERTYPE_IPV4, 4
    if family in BSD_AF_INET6:
        return ETHERTYPE_IPV6, 4
    return NOT_IP


def _null(frame: bytes) -> LinkResult:
    """DLT_NULL: the family in the capturing host's byte order, which the file does not record."""
    if len(frame) < 4:
        return TRUNCATED_LOOPBACK
    family = _U32_LE(frame, 0)[0]
    return _address_family(family if family <= 0xFFFF else _U32_BE(frame, 0)[0])


def _loop(frame: bytes) -> LinkResult:
    """DLT_LOOP: the family in network byte order."""
    return _address_family(_U32_BE(frame, 0)[0]) if len(frame) >= 4 else TRUNCATED_LOOPBACK


LINK_DECODERS: dict[int, Callable[[bytes], LinkResult]] = {
    LINKTYPE_NULL: _null,
    LINKTYPE_LOOP: _loop,
    LINKTYPE_LINUX_SLL: _linux_sll,
    LINKTYPE_LINUX_SLL2: _linux_sll2,
    LINKTYPE_IPV4: lambda frame: (ETHERTYPE_IPV4, 0),
    LINKTYPE_IPV6: lambda frame: (ETHERTYPE_IPV6, 0),
    **dict.fromkeys(LINKTYPE_RAW, _raw),
}
"""Link-layer decoders other than Ethernet's (which is inlined in the hot loop), by link type."""


def _address(cache: dict[bytes, str], packed: bytes) -> str:
    """The text form of a packed address, remembered in ``cache`` (emptied when full)."""
    if len(cache) >= ADDRESS_CACHE_SIZE:
        cache.clear()
    text = cache[packed] = _inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
    return text


Network = tuple[str, int, int, int, bytes, bytes] | str
"""(network.type, transport protocol, offset of the transport header or -1 when the packet carries
none, end of the packet's bytes, packed source, packed destination), or a drop reason."""


def _ipv4(frame: bytes, offset: int) -> Network:
    """The IPv4 header at ``offset`` in ``frame``."""
    length = len(frame)
    if length < offset + 20:
        return TRUNCATED_IPV4
    version_ihl, total_length, fragment, protocol, source, destination = _IPV4(frame, offset)
    if version_ihl >> 4 != 4:
        return BAD_IPV4_VERSION
    header_length = (version_ihl & 0x0F) << 2
    if header_length < 20:
        return BAD_IPV4_HEADER_LENGTH
    if total_length == 0:  # segmentation offload on the capturing host: the frame is the packet
        end = length
    elif total_length < header_length:
        return BAD_IPV4_TOTAL_LENGTH
    else:
        end = offset + total_length
        if end > length:  # cut by the snapshot length
            end = length
    start = offset + header_length
    if start > end:
        return TRUNCATED_IPV4
    if fragment & 0x1FFF:  # only the first fragment carries the transport header
        start = -1
    return "ipv4", protocol, start, end, source, destination


def _ipv6(frame: bytes, offset: int) -> Network:
    """The IPv6 header at ``offset`` in ``frame`` and its extension headers."""
    length = len(frame)
    if length < offset + 40:
        return TRUNCATED_IPV6
    version, payload_length, protocol, source, destination = _IPV6(frame, offset)
    if version >> 4 != 6:
        return BAD_IPV6_VERSION
    # A payload length of 0 is a jumbogram or segmentation offload: the frame is the packet.
    end = offset + 40 + payload_length if payload_length else length
    if end > length:  # cut by the snapshot length
        end = length
    start = offset + 40
    while protocol in IPV6_EXTENSIONS:
        if start + 8 > end:
            return TRUNCATED_IPV6_EXTENSION
        if protocol == PROTO_IPV6_FRAGMENT:
            fragment_offset = _U16(frame, start + 2)[0] >> 3
            protocol = frame[start]
            start += 8
            if fragment_offset:  # a later fragment: what follows is data, not a header
                return "ipv6", protocol, -1, end, source, destination
            continue
        size = (frame[start + 1] + 2) << 2 if protocol == PROTO_AH else (frame[start + 1] + 1) << 3
        if start + size > end:
            return TRUNCATED_IPV6_EXTENSION
        protocol = frame[start]
        start += size
    return "ipv6", protocol, start, end, source, destination


class IpDecoder(Decoder):
    """Decode link, IPv4/IPv6 and TCP/UDP/ICMP headers into one ECS event per packet."""

    consumes = "packets"
    produces = ""
    default_order = 10

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self._addresses: dict[bytes, str] = {}

    def decode(self, batch: PacketBatch, events: list[Event]) -> None:
        """Append one event per IP packet of ``batch``; count every other packet as a drop."""
        link_type = batch.link_type
        ethernet = link_type == LINKTYPE_ETHERNET
        link_decoder = LINK_DECODERS.get(link_type)
        if not ethernet and link_decoder is None:
            self.context.counters.drop(UNSUPPORTED_LINK_TYPE, len(batch))
            return None
        cache = self._addresses
        drops: defaultdict[str, int] = defaultdict(int)
        append = events.append
        for timestamp, frame, wire_length in zip(
            batch.timestamps, batch.frames, batch.wire_lengths, strict=False
        ):
            if ethernet:
                if len(frame) < 14:
                    drops[TRUNCATED_ETHERNET] += 1
                    continue
                ethertype = _U16(frame, 12)[0]
                offset = 14
            else:
                link = link_decoder(frame)
                if isinstance(link, str):
                    drops[link] += 1
                    continue
                ethertype, offset = link
            vlans = None
            if ethertype in VLAN_TPIDS:
                vlans = []
                while ethertype in VLAN_TPIDS and offset + 4 <= len(frame):
                    vlans.append(_U16(frame, offset)[0] & 0x0FFF)
                    ethertype = _U16(frame, offset + 2)[0]
                    offset += 4
                if ethertype in VLAN_TPIDS:
                    drops[TRUNCATED_VLAN] += 1
                    continue
            if ethertype == ETHERTYPE_IPV4:
                decoded = _ipv4(frame, offset)
            elif ethertype == ETHERTYPE_IPV6:
                decoded = _ipv6(frame, offset)
            else:
                drops[NOT_IP] += 1
                continue
            if isinstance(decoded, str):
                drops[decoded] += 1
                continue
            network_type, protocol, start, end, source_ip, destination_ip = decoded
            source = {"ip": cache.get(source_ip) or _address(cache, source_ip)}
            destination = {"ip": cache.get(destination_ip) or _address(cache, destination_ip)}
            icmp = None
            if start >= 0:
                if protocol in WITH_PORTS:
                    if start + 4 > end:
                        drops[TRUNCATED_PORTS[protocol]] += 1
                        continue
                    source["port"], destination["port"] = _PORTS(frame, start)
                elif protocol in ICMP_PROTOCOLS:
                    if start + 2 > end:
                        drops[TRUNCATED_ICMP] += 1
                        continue
                    icmp_type, icmp_code = _TYPE_CODE(frame, start)
                    icmp = {"type": icmp_type, "code": icmp_code}
            network = {
                "type": network_type,
                "transport": TRANSPORTS[protocol],
                "iana_number": IANA_NUMBERS[protocol],
                "bytes": wire_length,
            }
            if vlans:
                network["vlan"] = {"id": VLAN_IDS[vlans[0]]}
                if len(vlans) > 1:
                    network["inner"] = {"vlan": {"id": VLAN_IDS[vlans[-1]]}}
            event = {
                "@timestamp": format_timestamp(timestamp),
                "event": {"kind": "event", "category": ["network"], "dataset": "packet"},
                "network": network,
                "source": source,
                "destination": destination,
            }
            if icmp is not None:
                event["icmp"] = icmp
            append(event)
        if drops:
            counters = self.context.counters
            for reason, count in drops.items():
                counters.drop(reason, count)
        return None


@hookimpl
def flowpipe_add_decoders() -> dict[str, type[Decoder]]:
    return {"ip": IpDecoder}
