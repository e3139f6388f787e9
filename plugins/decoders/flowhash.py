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

from flowpipe.packet import PacketBatch

from .layers import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    LINK_DECODERS,
    LINKTYPE_ETHERNET,
    NOT_IP,
    Network,
    ipv4,
    ipv6,
    network_layer,
)

__all__ = ["FlowSplitter", "flow_hash"]

_U16 = struct.Struct("!H").unpack_from
_WITH_PORTS = frozenset((6, 17, 132))
"""TCP, UDP and SCTP: their first four bytes are the source and destination ports."""
_IPV4_NO_OPTIONS = b"\x08\x00\x45"
"""The EtherType of IPv4, then version 4 with a 20-byte header: the common case, read in place."""
_PROTOCOL_HASHES = {protocol: crc32(protocol.to_bytes(1, "big")) for protocol in _WITH_PORTS}


def flow_hash(frame: bytes, link_type: int = LINKTYPE_ETHERNET) -> int:
    """The symmetric flow hash of one frame (0 to 2**32 - 1): the same for both directions of a flow.

    Never raises: a frame that cannot be read hashes to 0.
    """
    decoded = _network(frame, link_type)
    if type(decoded) is int:
        return decoded
    return _endpoints_hash(frame, decoded, decoded[7] < 0)


class FlowSplitter:
    """Splits batches of frames between ``ways`` consumers by :func:`flow_hash`, fragments included.

    Unlike :func:`flow_hash` alone, fragments go where their datagram's flow goes: a first
    fragment carries the ports, so it is routed as the unfragmented packets of its flow are, and
    the splitter remembers where its datagram went (by protocol, addresses and identification; the
    latest ``max_datagrams``). A later fragment follows it. One that comes before its first
    fragment (a sender that fragments last first) is held until the first comes, and then goes
    just before it; held fragments are let go by their addresses after ``hold`` seconds of
    capture time without their first fragment, when more than ``max_held`` wait (the oldest
    datagram first), and on :meth:`release`. One splitter serves frames of one link type.
    """

    def __init__(
        self,
        ways: int,
        link_type: int = LINKTYPE_ETHERNET,
        max_datagrams: int = 4096,
        hold: float = 1.0,
        max_held: int = 1024,
    ) -> None:
        self.ways = ways
        self.link_type = link_type
        self.max_datagrams = max_datagrams
        self.hold = hold
        self.max_held = max_held
        self._datagrams: dict[bytes, int] = {}
        """Where each recent fragmented datagram went, oldest first."""
        self._held: dict[bytes, list[tuple[float, bytes, int, int]]] = {}
        """Fragments waiting for their first fragment, by datagram, oldest datagram first:
        (timestamp, frame, wire length, hash of the addresses)."""
        self._held_count = 0

    def split(self, batch: PacketBatch) -> list[PacketBatch]:
        """One batch per consumer (possibly empty), each in the order of ``batch`` (held fragments
        let go come first, fragments held for a first fragment just before it)."""
        ways = self.ways
        link_type = self.link_type
        parts = [PacketBatch(link_type, batch.source) for _ in range(ways)]
        columns = [(part.timestamps.append, part.frames.append, part.wire_lengths.append) for part in parts]
        datagrams = self._datagrams
        held = self._held
        if held and batch.timestamps:
            self._let_go(columns, batch.timestamps[-1] - self.hold)
        ethernet = link_type == LINKTYPE_ETHERNET
        frames = zip(batch.timestamps, batch.frames, batch.wire_lengths, strict=False)
        for timestamp, frame, wire_length in frames:
            if ethernet:
                value = _common_case_hash(frame)
                if value >= 0:
                    add_timestamp, add_frame, add_length = columns[value % ways]
                    add_timestamp(timestamp)
                    add_frame(frame)
                    add_length(wire_length)
                    continue
            decoded = _network(frame, link_type)
            if type(decoded) is int:
                way = decoded % ways
            elif decoded[7] < 0:
                way = _endpoints_hash(frame, decoded, True) % ways
            else:
                datagram = _datagram(frame, decoded)
                if decoded[2] >= 0:  # the first fragment
                    way = _endpoints_hash(frame, decoded, True) % ways
                    self._remember(datagram, way)
                    if datagram in held:
                        self._send_held(columns[way], datagram)
                else:
                    found = datagrams.get(datagram)
                    if found is None:
                        self._hold(columns, datagram, timestamp, frame, wire_length, decoded)
                        continue
                    way = found
            add_timestamp, add_frame, add_length = columns[way]
            add_timestamp(timestamp)
            add_frame(frame)
            add_length(wire_length)
        for part in parts:
            part.nbytes = sum(map(len, part.frames))
        return parts

    def release(self) -> list[PacketBatch]:
        """Let every held fragment go (end of input): one batch per consumer."""
        parts = [PacketBatch(self.link_type) for _ in range(self.ways)]
        columns = [(part.timestamps.append, part.frames.append, part.wire_lengths.append) for part in parts]
        self._let_go(columns, float("inf"))
        for part in parts:
            part.nbytes = sum(map(len, part.frames))
        return parts

    def _hold(
        self, columns: list, datagram: bytes, timestamp: float, frame: bytes, wire_length: int, decoded: tuple
    ) -> None:
        by_addresses = _endpoints_hash(frame, decoded, False)
        self._held.setdefault(datagram, []).append((timestamp, frame, wire_length, by_addresses))
        self._held_count += 1
        while self._held_count > self.max_held:
            self._let_go_one(columns, next(iter(self._held)))

    def _send_held(self, column: tuple, datagram: bytes) -> None:
        add_timestamp, add_frame, add_length = column
        fragments = self._held.pop(datagram)
        self._held_count -= len(fragments)
        for timestamp, frame, wire_length, _ in fragments:
            add_timestamp(timestamp)
            add_frame(frame)
            add_length(wire_length)

    def _let_go(self, columns: list, older_than: float) -> None:
        """Send the datagrams held since before capture time ``older_than`` by their addresses."""
        held = self._held
        while held:
            datagram, fragments = next(iter(held.items()))
            if fragments[0][0] >= older_than:
                break
            self._let_go_one(columns, datagram)

    def _let_go_one(self, columns: list, datagram: bytes) -> None:
        way = self._held[datagram][0][3] % self.ways
        self._send_held(columns[way], datagram)

    def _remember(self, datagram: bytes, way: int) -> None:
        datagrams = self._datagrams
        datagrams.pop(datagram, None)
        if len(datagrams) >= self.max_datagrams:
            del datagrams[next(iter(datagrams))]
        datagrams[datagram] = way


def _common_case_hash(frame: bytes) -> int:
    """:func:`flow_hash` of an Ethernet frame of unfragmented TCP, UDP or SCTP over IPv4 without
    options (most traffic), read in place; -1 for any other frame."""
    if len(frame) < 38 or frame[12:15] != _IPV4_NO_OPTIONS or frame[23] not in _PROTOCOL_HASHES:
        return -1
    if _U16(frame, 20)[0] & 0x3FFF or _U16(frame, 16)[0] < 24:  # a fragment, or too short for ports
        return -1
    source, destination = frame[26:30] + frame[34:36], frame[30:34] + frame[36:38]
    if destination < source:
        source, destination = destination, source
    return crc32(destination, crc32(source, _PROTOCOL_HASHES[frame[23]]))


def _network(frame: bytes, link_type: int) -> Network | int:
    """The network layer of ``frame`` as :mod:`.layers` decodes it, or the hash of a frame without
    one (non-IP Ethernet: its two MAC addresses; anything unreadable: 0)."""
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
    return decoded


def _endpoints_hash(frame: bytes, decoded: tuple, with_ports: bool) -> int:
    """The hash of the protocol and the two endpoints, lower first (with ports if asked and there)."""
    _network_type, protocol, start, end, _announced, source, destination, _fragment = decoded
    if with_ports and protocol in _WITH_PORTS and start >= 0 and start + 4 <= end:
        source += frame[start : start + 2]
        destination += frame[start + 2 : start + 4]
    if destination < source:
        source, destination = destination, source
    return crc32(destination, crc32(source, crc32(protocol.to_bytes(1, "big"))))


def _datagram(frame: bytes, decoded: tuple) -> bytes:
    """What the fragments of one datagram share: protocol, addresses and identification."""
    network_type, protocol, _start, _end, _announced, source, destination, fragment = decoded
    if network_type == "ipv4":
        identification = frame[fragment + 4 : fragment + 6]
    else:
        identification = frame[fragment + 4 : fragment + 8]
    return protocol.to_bytes(1, "big") + source + destination + identification
