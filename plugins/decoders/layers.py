"""Header decoders of the ``ip`` decoder: link layers, IPv4 and IPv6, tunnels' headers.

Each decodes in place with ``struct.unpack_from`` on the captured frame and returns offsets into
it, or a drop reason (a string, counted as ``dropped.<reason>``) for what cannot be decoded:

- :data:`LINK_DECODERS`: the link header of each supported link type other than Ethernet (which
  the ``ip`` decoder reads inline): Linux cooked (SLL, SLL2), raw IP, BSD null/loopback (either
  byte order), PPP (with or without HDLC-like framing, compressed protocol field), PPP over
  Ethernet, Cisco HDLC;
- :func:`network_layer`: what lies between a link header and the IP header: 802.1Q/802.1ad tags,
  MPLS labels, PPPoE sessions and PPP frames, and Ethernet frames carried by tunnels;
- :func:`ipv4` and :func:`ipv6` (extension headers walked: hop-by-hop, routing, fragment,
  destination options, authentication header). The IPv4 total length or IPv6 payload length
  bounds what follows, so Ethernet padding is never read as a header; a length of 0
  (segmentation offload on the capturing host, IPv6 jumbograms) means the captured bytes;
- :func:`gre`: where a GRE packet's payload starts and what it is (GRE version 0 with its
  optional fields, ERSPAN types I to III, PPTP's enhanced GRE).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["LINK_DECODERS", "LinkResult", "Network", "gre", "ipv4", "ipv6", "network_layer"]

_U16 = struct.Struct("!H").unpack_from
_U32_LE = struct.Struct("<I").unpack_from
_U32_BE = struct.Struct("!I").unpack_from
_IPV4 = struct.Struct("!BxH2xHxB2x4s4s").unpack_from
"""version/IHL, total length, flags/fragment offset, protocol, source, destination."""
_IPV6 = struct.Struct("!B3xHBx16s16s").unpack_from
"""version (high nibble), payload length, next header, source, destination."""
_FLAGS_PROTOCOL = struct.Struct("!HH").unpack_from

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame follows
ETHERTYPE_PPP = 0x880B  # a PPP frame follows (PPTP's GRE)
ETHERTYPE_PPPOE_SESSION = 0x8864
ETHERTYPE_ERSPAN_II = 0x88BE  # types I (no header) and II
ETHERTYPE_ERSPAN_III = 0x22EB
MPLS_ETHERTYPES = frozenset((0x8847, 0x8848))
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))  # 802.1Q, 802.1ad, pre-standard QinQ
PPP_ETHERTYPES = {0x0021: ETHERTYPE_IPV4, 0x0057: ETHERTYPE_IPV6}
"""PPP protocol numbers of IPv4 and IPv6, and their EtherTypes."""
MAX_LINK_HEADERS = 16
"""VLAN tags, MPLS labels and other headers walked between the link and the network layer."""

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = (12, 14, 101)  # DLT_RAW (12; 14 on OpenBSD) and LINKTYPE_RAW in files
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51
LINKTYPE_C_HDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
BSD_AF_INET = 2
BSD_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD/DragonFly, Darwin

PROTO_IPV6_FRAGMENT = 44
PROTO_AH = 51
IPV6_EXTENSIONS = frozenset((0, 43, PROTO_IPV6_FRAGMENT, PROTO_AH, 60))

# Drop reasons, as counted (``dropped.`` is prepended by the counters).
NOT_IP = "not_ip"
TRUNCATED_ETHERNET = "malformed.truncated_ethernet"
TRUNCATED_LINUX_SLL = "malformed.truncated_linux_sll"
TRUNCATED_LINUX_SLL2 = "malformed.truncated_linux_sll2"
TRUNCATED_LOOPBACK = "malformed.truncated_loopback"
TRUNCATED_PPP = "malformed.truncated_ppp"
TRUNCATED_HDLC = "malformed.truncated_hdlc"
TRUNCATED_VLAN = "malformed.truncated_vlan"
TRUNCATED_MPLS = "malformed.truncated_mpls"
TOO_MANY_HEADERS = "malformed.too_many_link_headers"
TRUNCATED_IP = "malformed.truncated_ip"
TRUNCATED_IPV4 = "malformed.truncated_ipv4"
BAD_IPV4_VERSION = "malformed.bad_ipv4_version"
BAD_IPV4_HEADER_LENGTH = "malformed.bad_ipv4_header_length"
BAD_IPV4_TOTAL_LENGTH = "malformed.bad_ipv4_total_length"
TRUNCATED_IPV6 = "malformed.truncated_ipv6"
BAD_IPV6_VERSION = "malformed.bad_ipv6_version"
TRUNCATED_IPV6_EXTENSION = "malformed.truncated_ipv6_extension"

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


def _ppp_at(frame: bytes, offset: int, limit: int) -> LinkResult:
    """A PPP frame at ``offset``: optional address and control bytes (ff 03), then the protocol
    in one byte (when compressed: odd) or two."""
    if offset + 2 <= limit and frame[offset] == 0xFF and frame[offset + 1] == 0x03:
        offset += 2
    if offset >= limit:
        return TRUNCATED_PPP
    if frame[offset] & 1:
        protocol = frame[offset]
        offset += 1
    elif offset + 2 <= limit:
        protocol = _U16(frame, offset)[0]
        offset += 2
    else:
        return TRUNCATED_PPP
    ethertype = PPP_ETHERTYPES.get(protocol)
    return (ethertype, offset) if ethertype else NOT_IP


def _ppp(frame: bytes) -> LinkResult:
    """DLT_PPP: a PPP frame, with or without HDLC-like framing."""
    return _ppp_at(frame, 0, len(frame))


def _ppp_hdlc(frame: bytes) -> LinkResult:
    """LINKTYPE_PPP_HDLC: PPP in HDLC-like framing, or Cisco HDLC (address 0x0f or 0x8f)."""
    if frame[:1] in (b"\x0f", b"\x8f"):
        return _cisco_hdlc(frame)
    return _ppp_at(frame, 0, len(frame))


def _cisco_hdlc(frame: bytes) -> LinkResult:
    """LINKTYPE_C_HDLC: address, control, then an EtherType."""
    return (_U16(frame, 2)[0], 4) if len(frame) >= 4 else TRUNCATED_HDLC


def _ppp_ether(frame: bytes) -> LinkResult:
    """LINKTYPE_PPP_ETHER: a PPPoE session header, then a PPP frame."""
    return _ppp_at(frame, 6, len(frame)) if len(frame) >= 6 else TRUNCATED_PPP


LINK_DECODERS: dict[int, Callable[[bytes], LinkResult]] = {
    LINKTYPE_NULL: _null,
    LINKTYPE_LOOP: _loop,
    LINKTYPE_LINUX_SLL: _linux_sll,
    LINKTYPE_LINUX_SLL2: _linux_sll2,
    LINKTYPE_IPV4: lambda frame: (ETHERTYPE_IPV4, 0),
    LINKTYPE_IPV6: lambda frame: (ETHERTYPE_IPV6, 0),
    LINKTYPE_PPP: _ppp,
    LINKTYPE_PPP_HDLC: _ppp_hdlc,
    LINKTYPE_PPP_ETHER: _ppp_ether,
    LINKTYPE_C_HDLC: _cisco_hdlc,
    **dict.fromkeys(LINKTYPE_RAW, _raw),
}
"""Link-layer decoders other than Ethernet's (which is inlined in the hot loop), by link type."""


Network = tuple[str, int, int, int, int, bytes, bytes, int] | str
"""(network.type, transport protocol, offset of the transport header or -1 when the packet carries
none, end of the packet's captured bytes, end of the packet as its header announces it, packed
source, packed destination, fragment), or a drop reason. ``fragment`` is -1 unless the packet is
a fragment: then the offset of its IPv4 header, or of its IPv6 fragment header."""


def ipv4(frame: bytes, offset: int, limit: int) -> Network:
    """The IPv4 header at ``offset`` in ``frame``, whose bytes end at ``limit``."""
    if limit < offset + 20:
        return TRUNCATED_IPV4
    version_ihl, total_length, fragment, protocol, source, destination = _IPV4(frame, offset)
    if version_ihl >> 4 != 4:
        return BAD_IPV4_VERSION
    header_length = (version_ihl & 0x0F) << 2
    if header_length < 20:
        return BAD_IPV4_HEADER_LENGTH
    if total_length == 0:  # segmentation offload on the capturing host: the frame is the packet
        end = announced = limit
    elif total_length < header_length:
        return BAD_IPV4_TOTAL_LENGTH
    else:
        end = announced = offset + total_length
        if end > limit:  # cut by the snapshot length
            end = limit
    start = offset + header_length
    if start > end:
        return TRUNCATED_IPV4
    if not fragment & 0x3FFF:  # neither more fragments nor an offset
        return "ipv4", protocol, start, end, announced, source, destination, -1
    if fragment & 0x1FFF:  # only the first fragment carries the transport header
        start = -1
    return "ipv4", protocol, start, end, announced, source, destination, offset


def ipv6(frame: bytes, offset: int, limit: int) -> Network:
    """The IPv6 header at ``offset`` in ``frame`` (bytes up to ``limit``) and its extension headers."""
    if limit < offset + 40:
        return TRUNCATED_IPV6
    version, payload_length, protocol, source, destination = _IPV6(frame, offset)
    if version >> 4 != 6:
        return BAD_IPV6_VERSION
    # A payload length of 0 is a jumbogram or segmentation offload: the frame is the packet.
    end = announced = offset + 40 + payload_length if payload_length else limit
    if end > limit:  # cut by the snapshot length
        end = limit
    start = offset + 40
    fragment = -1
    while protocol in IPV6_EXTENSIONS:
        if start + 8 > end:
            return TRUNCATED_IPV6_EXTENSION
        if protocol == PROTO_IPV6_FRAGMENT:
            fragment = start
            fragment_offset = _U16(frame, start + 2)[0] >> 3
            protocol = frame[start]
            start += 8
            if fragment_offset:  # a later fragment: what follows is data, not a header
                return "ipv6", protocol, -1, end, announced, source, destination, fragment
            continue
        size = (frame[start + 1] + 2) << 2 if protocol == PROTO_AH else (frame[start + 1] + 1) << 3
        if start + size > end:
            return TRUNCATED_IPV6_EXTENSION
        protocol = frame[start]
        start += size
    return "ipv6", protocol, start, end, announced, source, destination, fragment


def network_layer(frame: bytes, ethertype: int, offset: int, limit: int, vlans: list[int]) -> Network:
    """The packet after the link header: VLAN tags (appended to ``vlans``), MPLS labels, PPPoE or
    PPP headers and Ethernet frames (of tunnels) walked until an IPv4 or IPv6 header."""
    for _ in range(MAX_LINK_HEADERS):
        if ethertype == ETHERTYPE_IPV4:
            return ipv4(frame, offset, limit)
        if ethertype == ETHERTYPE_IPV6:
            return ipv6(frame, offset, limit)
        if ethertype in VLAN_TPIDS:
            if offset + 4 > limit:
                return TRUNCATED_VLAN
            vlans.append(_U16(frame, offset)[0] & 0x0FFF)
            ethertype = _U16(frame, offset + 2)[0]
            offset += 4
        elif ethertype in MPLS_ETHERTYPES:
            if offset + 5 > limit:
                return TRUNCATED_MPLS
            bottom = frame[offset + 2] & 1
            offset += 4
            if bottom:  # no protocol field: the IP version tells
                version = frame[offset] >> 4
                if version == 4:
                    ethertype = ETHERTYPE_IPV4
                elif version == 6:
                    ethertype = ETHERTYPE_IPV6
                else:
                    return NOT_IP
        elif ethertype == ETHERTYPE_TEB:
            if offset + 14 > limit:
                return TRUNCATED_ETHERNET
            ethertype = _U16(frame, offset + 12)[0]
            offset += 14
        elif ethertype in (ETHERTYPE_PPPOE_SESSION, ETHERTYPE_PPP):
            link = _ppp_at(frame, offset + 6 if ethertype == ETHERTYPE_PPPOE_SESSION else offset, limit)
            if isinstance(link, str):
                return link
            ethertype, offset = link
        else:
            return NOT_IP
    return TOO_MANY_HEADERS


def gre(frame: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(EtherType of the payload, its offset) of the GRE header at ``start``, or None when it is
    not one that is decapsulated (source routing, an unknown version, cut short)."""
    if start + 4 > end:
        return None
    flags_version, ethertype = _FLAGS_PROTOCOL(frame, start)
    version = flags_version & 0x07
    offset = start + 4
    if version == 0:
        if flags_version & 0x4000:  # source routing (RFC 1701, obsolete)
            return None
        offset += ((flags_version >> 15) + (flags_version >> 13 & 1) + (flags_version >> 12 & 1)) << 2
        if ethertype == ETHERTYPE_ERSPAN_II:
            if flags_version & 0x1000:  # type II has a sequence number and an 8-byte header; type I neither
                offset += 8
            ethertype = ETHERTYPE_TEB
        elif ethertype == ETHERTYPE_ERSPAN_III:
            if offset + 12 > end:
                return None
            offset += 20 if frame[offset + 11] & 0x01 else 12  # optional platform subheader
            ethertype = ETHERTYPE_TEB
    elif version == 1 and ethertype == ETHERTYPE_PPP:  # PPTP: key, optional sequence and ack numbers
        offset += 4 + (flags_version >> 12 & 1) * 4 + (flags_version >> 7 & 1) * 4
    else:
        return None
    return (ethertype, offset) if offset <= end else None
