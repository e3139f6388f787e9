"""A symmetric flow hash of raw frames: both directions of a conversation get the same value.

Whoever splits packets between consumers (the ``kafka`` output's partitions, later the workers of
``pipeline.workers``) uses it so that every flow stays whole in one place, as AF_PACKET's fanout
hash and NIC RSS do. The value is a CRC-32, the same in every process and on every machine, so
several sensors writing to one topic agree on where a flow goes:

- TCP, UDP and SCTP over IPv4 or IPv6: the protocol, then the two endpoints (address and port),
  the lower one first;
- other IP protocols (ICMP, ESP, GRE...): the protocol and the two addresses, the lower first;
- IP fragments (IPv4 with more-fragments or an offset, IPv6 with a fragment header): the protocol
  and the two addresses, so that every fragment of a datagram goes to the same place and can be
  reassembled there (a flow whose datagrams are sometimes fragmented may then be split);
- non-IP Ethernet frames (ARP, LLDP...): the two MAC addresses, the lower first;
- anything else (non-IP frames of other link types, frames too short or malformed to read,
  unknown link types): 0.

The link layers are the ``ip`` decoder's (:mod:`.layers`): Ethernet with 802.1Q/802.1ad tags,
MPLS, PPPoE, Linux cooked (SLL, SLL2), raw IP, BSD loopback, PPP and Cisco HDLC. Tunnels are not
looked into: the outer header decides. Headers are read in place with ``struct.unpack_from``.
"""

from __future__ import annotations

import struct
from zlib import crc32

from .layers import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    LINK_DECODERS,
    LINKTYPE_ETHERNET,
    NOT_IP,
    ipv4,
    ipv6,
    network_layer,
)

__all__ = ["flow_hash"]

_U16 = struct.Struct("!H").unpack_from
_WITH_PORTS = frozenset((6, 17, 132))
"""TCP, UDP and SCTP: their first four bytes are the source and destination ports."""


def flow_hash(frame: bytes, link_type: int = LINKTYPE_ETHERNET) -> int:
    """The symmetric flow hash of one frame (0 to 2**32 - 1): the same for both directions of a flow.

    Never raises: a frame that cannot be read hashes to 0.
    """
    limit = len(frame)
    if link_type == LINKTYPE_ETHERNET:
        if limit < 14:
            return 0
        ethertype, offset = _U16(frame, 12)[0], 14
    else:
        link_decoder = LINK_DECODERS.get(link_type)
        if link_decoder is None:
            return 0
        link = link_decoder(frame)
        if isinstance(link, str):
            return 0
        ethertype, offset = link
    if ethertype == ETHERTYPE_IPV4:
        decoded = ipv4(frame, offset, limit)
    elif ethertype == ETHERTYPE_IPV6:
        decoded = ipv6(frame, offset, limit)
    else:
        decoded = network_layer(frame, ethertype, offset, limit, [])
    if isinstance(decoded, str):
        if decoded != NOT_IP or link_type != LINKTYPE_ETHERNET:
            return 0
        first, second = frame[0:6], frame[6:12]
        return crc32(first + second if first <= second else second + first)
    _network_type, protocol, start, end, _announced, source, destination, fragment = decoded
    if protocol in _WITH_PORTS and fragment < 0 and start >= 0 and start + 4 <= end:
        source += frame[start : start + 2]
        destination += frame[start + 2 : start + 4]
    if destination < source:
        source, destination = destination, source
    return crc32(destination, crc32(source, crc32(protocol.to_bytes(1, "big"))))
