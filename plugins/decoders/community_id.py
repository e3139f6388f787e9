"""Community ID v1 flow hashing (https://github.com/corelight/community-id-spec).

The ID of a flow is ``"1:" + base64(sha1(seed . addr_a . addr_b . proto . 0 . port_a . port_b))``,
with the seed as 2 bytes, addresses packed (4 or 16 bytes) and ports as 2 bytes, all in network
byte order, and the endpoints ordered so that the smaller (address, port) pair comes first.
Protocols without ports (anything but TCP, UDP, SCTP, ICMP and ICMPv6) hash no port bytes.

ICMP and ICMPv6 have no ports: as in Zeek, the message type stands for the source port and its
counterpart type (echo request for an echo reply, ...) for the destination port, so both halves of
an exchange share one ID. A type without a counterpart is one-way: its code is the destination
port and the endpoints are not reordered. :func:`icmp_ports` gives this mapping; the ``ip``
decoder keys its ICMP flows on it, so a flow and its Community ID correspond one to one.
"""

from __future__ import annotations

import binascii
import hashlib
import struct

__all__ = ["ICMPV6_COUNTERPARTS", "ICMP_COUNTERPARTS", "community_id", "icmp_ports"]

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
PORT_PROTOCOLS = frozenset((PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP))
"""Protocols whose ports (or ICMP type/code equivalents) are part of the hash."""

ICMP_COUNTERPARTS = {
    0: 8,  # echo reply / echo request
    8: 0,
    9: 10,  # router advertisement / solicitation
    10: 9,
    13: 14,  # timestamp / reply
    14: 13,
    15: 16,  # information request / reply
    16: 15,
    17: 18,  # address mask request / reply
    18: 17,
}
"""ICMPv4 message types that are half of a request/response pair, and their other half."""
ICMPV6_COUNTERPARTS = {
    128: 129,  # echo request / reply
    129: 128,
    130: 131,  # multicast listener query / report
    131: 130,
    133: 134,  # router solicitation / advertisement
    134: 133,
    135: 136,  # neighbor solicitation / advertisement
    136: 135,
    139: 140,  # node information query / reply (who-are-you)
    140: 139,
    144: 145,  # home agent address discovery request / reply
    145: 144,
}
"""ICMPv6 message types that are half of a request/response pair, and their other half."""

_SEED = struct.Struct("!H")
_PROTOCOL = struct.Struct("!Bx")  # the protocol and a byte of padding
_PORTS = struct.Struct("!HH")


def icmp_ports(protocol: int, icmp_type: int, icmp_code: int) -> tuple[int, int, bool]:
    """The (source port, destination port, one-way) equivalents of an ICMP or ICMPv6 message."""
    counterparts = ICMP_COUNTERPARTS if protocol == PROTO_ICMP else ICMPV6_COUNTERPARTS
    counterpart = counterparts.get(icmp_type)
    if counterpart is None:
        return icmp_type, icmp_code, True
    return icmp_type, counterpart, False


def community_id(
    source: bytes,
    destination: bytes,
    protocol: int,
    source_port: int = 0,
    destination_port: int = 0,
    seed: int = 0,
    one_way: bool = False,
) -> str:
    """The Community ID v1 of a flow, from packed addresses (4 or 16 bytes each).

    For ICMP and ICMPv6 pass the ports from :func:`icmp_ports` and its ``one_way``; ports are
    ignored for protocols that have none.
    """
    if not one_way and (destination, destination_port) < (source, source_port):
        source, destination = destination, source
        source_port, destination_port = destination_port, source_port
    ports = _PORTS.pack(source_port, destination_port) if protocol in PORT_PROTOCOLS else b""
    data = b"".join((_SEED.pack(seed), source, destination, _PROTOCOL.pack(protocol), ports))
    return "1:" + binascii.b2a_base64(hashlib.sha1(data).digest(), newline=False).decode("ascii")
