"""The ``ip`` decoder: link layer, IPv4/IPv6 and transport headers.

Reads headers in place with ``struct.unpack_from`` on the captured frame (no slicing, no object
per layer). When no later decoder consumes its output, it turns every packet into one event with
ECS fields (``source.*``, ``destination.*``, ``network.*``).

Malformed packets (truncated headers, impossible lengths) are counted per reason as
``dropped.malformed.<reason>`` and skipped; packets that are not IP are counted as
``dropped.not_ip``. Nothing raises out of :meth:`IpDecoder.decode`.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from flowpipe import Decoder, Event, PacketBatch, format_timestamp, hookimpl

_U16 = struct.Struct("!H").unpack_from
_U32_LE = struct.Struct("<I").unpack_from
_U32_BE = struct.Struct("!I").unpack_from
_PORTS = struct.Struct("!HH").unpack_from
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = (12, 14, 101)
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
BSD_AF_INET6 = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD/DragonFly, Darwin

IPV6_EXTENSION_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
IPV6_FRAGMENT = 44
TRANSPORT_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 47: "gre"}
WITH_PORTS = (6, 17, 132)


def _link_layer(link_type: int, frame: bytes) -> tuple[int, int, list[int] | None] | str:
    """(network-layer offset, ethertype, VLAN ids) of a frame, or a malformation reason."""
    length = len(frame)
    if link_type == LINKTYPE_ETHERNET:
        if length < 14:
            return "truncated_ethernet"
        offset = 12
        ethertype = _U16(frame, offset)[0]
        vlans = None
        while ethertype in ETHERTYPE_VLAN:
            if length < offset + 6:
                return "truncated_vlan"
            if vlans is None:
                vlans = []
            vlans.append(_U16(frame, offset + 2)[0] & 0x0FFF)
            offset += 4
            ethertype = _U16(frame, offset)[0]
        return offset + 2, ethertype, vlans
    if link_type == LINKTYPE_LINUX_SLL:
        if length < 16:
            return "truncated_linux_sll"
        return 16, _U16(frame, 14)[0], None
    if link_type == LINKTYPE_LINUX_SLL2:
        if length < 20:
            return "truncated_linux_sll2"
        return 20, _U16(frame, 0)[0], None
    if link_type in LINKTYPE_RAW:
        if length < 1:
            return "truncated_ip"
        return 0, ETHERTYPE_IPV6 if frame[0] >> 4 == 6 else ETHERTYPE_IPV4, None
    if link_type in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if length < 4:
            return "truncated_loopback"
        family = (_U32_BE if link_type == LINKTYPE_LOOP else _U32_LE)(frame, 0)[0]
        if family > 0xFFFF:  # NULL is host byte order: a capture from the other endianness
            family = _U32_BE(frame, 0)[0]
        return 4, ETHERTYPE_IPV6 if family in BSD_AF_INET6 else ETHERTYPE_IPV4, None
    if link_type == LINKTYPE_IPV4:
        return 0, ETHERTYPE_IPV4, None
    if link_type == LINKTYPE_IPV6:
        return 0, ETHERTYPE_IPV6, None
    return "unsupported_link_type"


class IpDecoder(Decoder):
    """Decode link, IPv4/IPv6 and TCP/UDP/ICMP headers; one event per packet when last in the chain."""

    consumes = "packets"
    produces = ""
    default_order = 10

    def decode(self, batch: PacketBatch, events: list[Event]) -> None:
        drops: dict[str, int] = {}
        link_type = batch.link_type
        append = events.append
        for timestamp, frame, wire_length in zip(
            batch.timestamps, batch.frames, batch.wire_lengths, strict=False
        ):
            result = self._packet(link_type, frame)
            if isinstance(result, str):
                drops[result] = drops.get(result, 0) + 1
                continue
            network, source, destination = result
            network["bytes"] = wire_length
            append(
                {
                    "@timestamp": format_timestamp(timestamp),
                    "event": {"kind": "event", "category": ["network"], "dataset": "packet"},
                    "network": network,
                    "source": source,
                    "destination": destination,
                }
            )
        if drops:
            counters = self.context.counters
            for reason, count in drops.items():
                counters.drop(reason if reason == "not_ip" else f"malformed.{reason}", count)
        return None

    def _packet(
        self, link_type: int, frame: bytes
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | str:
        link = _link_layer(link_type, frame)
        if isinstance(link, str):
            return link
        offset, ethertype, vlans = link
        if ethertype == ETHERTYPE_IPV4:
            result = self._ipv4(frame, offset)
        elif ethertype == ETHERTYPE_IPV6:
            result = self._ipv6(frame, offset)
        else:
            return "not_ip"
        if isinstance(result, str) or vlans is None:
            return result
        result[0]["vlan"] = (
            {"id": vlans[0]} if len(vlans) == 1 else {"id": vlans[0], "inner": {"id": vlans[1]}}
        )
        return result

    def _ipv4(self, frame: bytes, offset: int) -> Any:
        if len(frame) < offset + 20:
            return "truncated_ipv4"
        version_ihl = frame[offset]
        if version_ihl >> 4 != 4:
            return "bad_ipv4_version"
        header_length = (version_ihl & 0x0F) * 4
        total_length = _U16(frame, offset + 2)[0]
        if header_length < 20 or total_length < header_length:
            return "bad_ipv4_length"
        if len(frame) < offset + header_length:
            return "truncated_ipv4"
        protocol = frame[offset + 9]
        source = {"ip": _inet_ntop(_AF_INET, frame[offset + 12 : offset + 16])}
        destination = {"ip": _inet_ntop(_AF_INET, frame[offset + 16 : offset + 20])}
        network = {
            "type": "ipv4",
            "transport": TRANSPORT_NAMES.get(protocol, str(protocol)),
            "iana_number": str(protocol),
        }
        fragment_offset = _U16(frame, offset + 6)[0] & 0x1FFF
        if fragment_offset == 0:
            reason = self._ports(frame, offset + header_length, protocol, source, destination)
            if reason:
                return reason
        return network, source, destination

    def _ipv6(self, frame: bytes, offset: int) -> Any:
        if len(frame) < offset + 40:
            return "truncated_ipv6"
        if frame[offset] >> 4 != 6:
            return "bad_ipv6_version"
        next_header = frame[offset + 6]
        source = {"ip": _inet_ntop(_AF_INET6, frame[offset + 8 : offset + 24])}
        destination = {"ip": _inet_ntop(_AF_INET6, frame[offset + 24 : offset + 40])}
        position = offset + 40
        first_fragment = True
        while next_header in IPV6_EXTENSION_HEADERS or next_header == IPV6_FRAGMENT:
            if len(frame) < position + 8:
                return "truncated_ipv6_extension"
            if next_header == IPV6_FRAGMENT:
                first_fragment = _U16(frame, position + 2)[0] >> 3 == 0
                length = 8
            else:
                length = (frame[position + 1] + 1) * 8
            next_header = frame[position]
            position += length
        network = {
            "type": "ipv6",
            "transport": TRANSPORT_NAMES.get(next_header, str(next_header)),
            "iana_number": str(next_header),
        }
        if first_fragment:
            reason = self._ports(frame, position, next_header, source, destination)
            if reason:
                return reason
        return network, source, destination

    @staticmethod
    def _ports(
        frame: bytes, offset: int, protocol: int, source: dict[str, Any], destination: dict[str, Any]
    ) -> str | None:
        if protocol in WITH_PORTS:
            if len(frame) < offset + 4:
                return f"truncated_{TRANSPORT_NAMES[protocol]}"
            source["port"], destination["port"] = _PORTS(frame, offset)
        return None


@hookimpl
def flowpipe_add_decoders() -> dict[str, type[Decoder]]:
    return {"ip": IpDecoder}
