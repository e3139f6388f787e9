"""The ``ip`` decoder: link layer, tunnels, IPv4/IPv6 and transport headers; flows.

Layers decoded (the header decoders are in :mod:`.layers`), each in place with
``struct.unpack_from`` on the captured frame (the only bytes copied are the packed addresses,
which key a cache of their text form, and forwarded payloads):

- link: Ethernet II, Linux cooked (SLL, SLL2), raw IP, BSD null/loopback (either byte order),
  PPP (with or without HDLC-like framing, PPP over Ethernet sessions), Cisco HDLC, then any
  number of 802.1Q/802.1ad tags (QinQ) and MPLS labels;
- network: IPv4 (options skipped) and IPv6 with its extension headers walked (hop-by-hop,
  routing, fragment, destination options, authentication header). The IPv4 total length or IPv6
  payload length bounds what follows, so Ethernet padding is never read as a header; a length of
  0 (segmentation offload on the capturing host, IPv6 jumbograms) means the captured bytes;
- tunnels, decapsulated so that the innermost packet is what events and flows describe: IP in IP
  (IPv4 or IPv6 in IPv4 or IPv6), GRE (IPv4, IPv6, Ethernet, ERSPAN types I-III, PPTP's PPP) and
  VXLAN (UDP to ``vxlan_ports``). The outer headers are not reported; VLAN tags of inner Ethernet
  frames follow the outer ones. A tunnel packet whose inner packet cannot be decoded (cut short,
  not IP, a fragment) stays the outer packet (a GRE or UDP packet);
- transport: TCP, UDP and SCTP ports, TCP flags, sequence and acknowledgement numbers, ICMP and
  ICMPv6 type and code. A fragment other than the first carries no transport header.

Fragments go through :meth:`IpDecoder._fragment`: with ``defrag.enabled`` (the default) every
IPv4 fragment (MF set or an offset) and every IPv6 packet with a fragment header is reassembled
by a :class:`~.defrag.Defragmenter` (its docstring says how overlaps, duplicates, timeouts and caps
are handled), keyed on (source, destination, identification, protocol) for IPv4 and (source,
destination, identification) for IPv6, whose transport protocol is the offset-0 fragment's next
header (an extension header there is not walked: the datagram is then reported by addresses only).
A datagram is decoded, once its last missing fragment arrives, exactly as an unfragmented packet
with the reassembled payload, and stands for all its fragments: it counts as that many packets in
its flow, with the sum of their frame lengths as bytes (so flow counts match frame counts), and
when the ``ip`` decoder is last it makes one per-packet event, at the completing fragment's time,
whose ``network.bytes`` is that sum and ``network.packets`` the number of fragments. A fragment
that does not complete its datagram makes no event and is counted as ``defrag.held``; fragments
of a datagram that never completes are in no flow and make no event (the datagram is counted as
dropped, below). A fragment the capture cut short (snapshot length) cannot be reassembled and is
decoded as it stands, as with ``defrag.enabled: false``: the first fragment with its ports, later
ones by addresses only.

Defragmentation counters, merged once per batch: ``defrag.held`` (fragments held),
``defrag.reassembled`` (datagrams completed), ``defrag.duplicate`` and ``defrag.overlap``
(fragments; first copy wins); datagrams lost as ``dropped.defrag.timeout`` (also those still
incomplete at the end of the input), ``dropped.defrag.too_many_fragments``,
``dropped.defrag.too_many_datagrams`` and ``dropped.defrag.too_many_bytes``; malformed fragments,
dropped alone, as ``dropped.malformed.fragment_bad_length``, ``dropped.malformed.fragment_bad_end``
and ``dropped.malformed.fragment_too_long`` (also an IPv4 datagram whose header and payload exceed
65,535 bytes).

Every packet is counted in a flow (see :mod:`.flows`): flows are keyed on protocol, both
endpoints and the VLAN tags; ports for TCP, UDP and SCTP; for ICMP and ICMPv6 the type and its
counterpart (or code) as the Community ID defines them, so an echo request and its reply share a
flow; addresses only for other protocols and for later fragments. Flow records are events with
``event.dataset: flow``; ``flows.enabled: false`` turns them off (flows are still tracked when a
decoder follows: it gets them with the packets). Counters: ``flows`` (flows started) and
``flows_evicted`` (flows ended early because ``flows.max_flows`` were tracked).

What else comes out depends on the decoders that follow:

- last in the chain: one event per packet, with ECS fields ``@timestamp``,
  ``source.ip``/``source.port``, ``destination.ip``/``destination.port``, ``network.type``
  (``ipv4``/``ipv6``), ``network.transport`` (``tcp``, ``udp``, ``icmp``, ``ipv6-icmp``, ...),
  ``network.iana_number``, ``network.bytes`` (the frame's length on the wire),
  ``network.vlan.id`` (outer tag) and ``network.inner.vlan.id`` (innermost tag when there are
  several). ECS has no ICMP fields; ICMP packets carry ``icmp.type`` and ``icmp.code`` (numbers),
  the per-packet form of the values Packetbeat's ICMP transactions report as
  ``icmp.request.type``/``icmp.request.code``;
- followed by a decoder (``tcp``): no per-packet events; every TCP, UDP and ICMP/ICMPv6 packet
  that is not a fragment, and every reassembled datagram (one packet with the whole payload), is
  forwarded as a :class:`~.transport.TransportPacket` with its flow (the payload of an ICMP
  packet starts at its ICMP header, for the ICMP analyzer).

Nothing raises out of :meth:`IpDecoder.decode`. A packet whose headers are cut short or
impossible is dropped and counted as ``dropped.malformed.<reason>``; one that is not IP (ARP, LLC,
...) as ``dropped.not_ip``; a batch of a link type not listed above as
``dropped.unsupported_link_type``. A TCP or UDP packet counted in its flow but not forwarded
because its transport header is cut short counts as ``dropped.malformed.truncated_tcp`` (or
``_udp``) or ``dropped.malformed.bad_tcp_header_length``, and a fragment that is not reassembled
as ``dropped.fragment``.
"""

from __future__ import annotations

import socket
import struct
from collections import defaultdict
from types import SimpleNamespace

from flowpipe import (
    Bool,
    ByteSize,
    Decoder,
    Duration,
    Event,
    Int,
    ListOf,
    Option,
    OptionError,
    PacketBatch,
    StageContext,
    Struct,
    format_timestamp,
    hookimpl,
)

from .community_id import icmp_ports
from .defrag import MAX_PAYLOAD, MIN_MAX_BYTES, Defragmenter
from .flowhash import FlowSplitter
from .flows import ENDED, FLOW_OPTIONS, IANA_NUMBERS, PORTLESS, TRANSPORTS, VLAN_IDS, WITH_PORTS, FlowTable
from .layers import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_TEB,
    LINK_DECODERS,
    LINKTYPE_ETHERNET,
    TRUNCATED_ETHERNET,
    Network,
    gre,
    ipv4,
    ipv6,
    network_layer,
)
from .transport import SEEN_ANY, SEEN_DATA, TransportPacket

_U16 = struct.Struct("!H").unpack_from
_PORTS = struct.Struct("!HH").unpack_from
_TCP = struct.Struct("!HHIIBBH").unpack_from
"""source port, destination port, sequence, acknowledgement, data offset (high nibble), flags, window."""
_TYPE_CODE = struct.Struct("!BB").unpack_from
_IPV6_FRAGMENT = struct.Struct("!BxHI").unpack_from
"""next header, offset (bytes: the field's low 3 bits are flags) and M flag, identification."""
_inet_ntop = socket.inet_ntop
_new = tuple.__new__
"""Builds a TransportPacket from all its fields without the NamedTuple's Python-level ``__new__``."""

PROTO_ICMP = 1
PROTO_IPIP = 4
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6 = 41
PROTO_GRE = 47
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
ICMP_PROTOCOLS = frozenset((PROTO_ICMP, PROTO_ICMPV6))
TUNNEL_PROTOCOLS = frozenset((PROTO_IPIP, PROTO_IPV6, PROTO_GRE))
MAX_ENCAPSULATIONS = 4
"""Tunnels decapsulated inside one another; a deeper one stays a packet of the tunnel protocol."""
OPENING = 0x17  # SYN, ACK, FIN, RST: a SYN that opens a connection has only the first
SYN = 0x02
CONTROL = 0x07  # FIN, SYN, RST
NO_VLANS: tuple[int, ...] = ()
TCP_BITS = tuple(range(SEEN_ANY << 1))
"""Every value of ``Flow.client_tcp`` and ``Flow.server_tcp``, made once: flows share these ints
instead of holding their own (an int above 256 is an object of 28 bytes)."""
ADDRESS_CACHE_SIZE = 65536

# Drop reasons besides those of .layers, as counted (``dropped.`` is prepended by the counters).
UNSUPPORTED_LINK_TYPE = "unsupported_link_type"
FRAGMENT = "fragment"
TRUNCATED_ICMP = "malformed.truncated_icmp"
TRUNCATED_TCP = "malformed.truncated_tcp"
TRUNCATED_UDP = "malformed.truncated_udp"
TRUNCATED_SCTP = "malformed.truncated_sctp"
BAD_TCP_HEADER_LENGTH = "malformed.bad_tcp_header_length"
FRAGMENT_TOO_LONG = "malformed.fragment_too_long"

DEFRAG_COUNTERS = {
    "reassembled": "defrag.reassembled",
    "duplicate": "defrag.duplicate",
    "overlap": "defrag.overlap",
    "timeout": "dropped.defrag.timeout",
    "too_many_fragments": "dropped.defrag.too_many_fragments",
    "too_many_datagrams": "dropped.defrag.too_many_datagrams",
    "too_many_bytes": "dropped.defrag.too_many_bytes",
    "bad_length": "dropped.malformed.fragment_bad_length",
    "bad_end": "dropped.malformed.fragment_bad_end",
    "too_long": "dropped.malformed.fragment_too_long",
}
"""The decoder's counter for each of the :class:`~.defrag.Defragmenter`'s."""
DEFRAG_HELD = "defrag.held"
EXPIRE_INTERVAL = 1.0
"""Capture seconds between two expiries of the defragmenter by the packets' clock."""

DEFRAG_OPTIONS = Struct(
    Option("enabled", Bool(), True, "reassemble IPv4 and IPv6 fragments (false: decode each as it stands)"),
    Option(
        "timeout",
        Duration(),
        "30s",
        "a datagram still incomplete this long after its first fragment is dropped",
    ),
    Option("max_datagrams", Int(1), 4096, "datagrams in reassembly at once; past it the oldest is dropped"),
    Option("max_fragments", Int(1), 64, "fragments held per datagram; past it the datagram is dropped"),
    Option(
        "max_bytes",
        ByteSize(),
        "16MiB",
        "memory held by datagrams in reassembly (at least 128KiB); past it the oldest are dropped",
    ),
)
"""The ``defrag`` option of the ``ip`` decoder."""


def _address(cache: dict[bytes, str], packed: bytes) -> str:
    """The text form of a packed address, remembered in ``cache`` (emptied when full)."""
    if len(cache) >= ADDRESS_CACHE_SIZE:
        cache.clear()
    text = cache[packed] = _inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
    return text


class IpDecoder(Decoder):
    """Decode link, IP and transport headers, decapsulate tunnels, track flows (flow records).

    Last in the chain it emits one event per packet; followed by a decoder it forwards the TCP and
    UDP packets to it instead.
    """

    consumes = "packets"
    produces = "transport"
    default_order = 10
    options = (
        Option("flows", FLOW_OPTIONS, description="flow records (Packetbeat's flows, Zeek's conn.log)"),
        Option("community_id_seed", Int(0, 65535), 0, "seed of network.community_id (Community ID v1)"),
        Option(
            "vxlan_ports",
            ListOf(Int(0, 65535)),
            [4789],
            "UDP destination ports whose datagrams are decapsulated as VXLAN ([] for none)",
        ),
        Option("defrag", DEFRAG_OPTIONS, description="IPv4 and IPv6 defragmentation"),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        """Timeouts are positive; the defragmenter has room for the largest fragment."""
        errors = []
        if config.flows.timeout <= 0:
            errors.append(OptionError("must be more than 0", ("flows", "timeout")))
        if config.defrag.timeout <= 0:
            errors.append(OptionError("must be more than 0", ("defrag", "timeout")))
        if config.defrag.max_bytes < MIN_MAX_BYTES:
            errors.append(
                OptionError(
                    f"must be at least 128KiB ({MIN_MAX_BYTES} bytes), got {config.defrag.max_bytes}",
                    ("defrag", "max_bytes"),
                )
            )
        return errors

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self._addresses: dict[bytes, str] = {}
        self._vxlan_ports = frozenset(config.vxlan_ports)
        self._decapsulated = TUNNEL_PROTOCOLS | {PROTO_UDP} if self._vxlan_ports else TUNNEL_PROTOCOLS
        self.flows = FlowTable(config.flows, config.community_id_seed, config.flows.enabled, context.counters)
        """The flow table (tracked when flow records are on or a decoder follows)."""
        defrag = config.defrag
        self.defrag = (
            Defragmenter(
                timeout=defrag.timeout,
                max_datagrams=defrag.max_datagrams,
                max_fragments=defrag.max_fragments,
                max_bytes=defrag.max_bytes,
            )
            if defrag.enabled
            else None
        )
        """The defragmenter, or None when ``defrag.enabled`` is false."""
        self._pending: dict[tuple[object, ...], list[int]] = {}
        """Per datagram in reassembly: [fragments held, their frame bytes, transport protocol (-1 until
        the offset-0 fragment came) and its header's offset in the payload]."""
        self._next_expire = float("-inf")
        self._held = 0

    def decode(self, batch: PacketBatch, events: list[Event]) -> list[TransportPacket] | None:
        """Count each packet of ``batch`` in its flow; append per-packet events (last decoder) or
        return the TCP, UDP and ICMP packets (a decoder follows); append flow records that are due."""
        link_type = batch.link_type
        ethernet = link_type == LINKTYPE_ETHERNET
        link_decoder = LINK_DECODERS.get(link_type)
        if not ethernet and link_decoder is None:
            self.context.counters.drop(UNSUPPORTED_LINK_TYPE, len(batch))
            return None
        forward = self.downstream
        flows = self.flows
        track = forward or flows.emit
        table = flows.flows
        get_flow = table.get
        move_to_end = table.move_to_end
        open_flow = flows.open
        segment = flows.segment
        next_check = flows.next_check if track else float("inf")
        decapsulated = self._decapsulated
        vxlan_ports = self._vxlan_ports
        cache = self._addresses
        drops: defaultdict[str, int] = defaultdict(int)
        append = events.append
        out: list[TransportPacket] = []
        forward_packet = out.append
        latest = None
        for timestamp, frame, wire_length in zip(
            batch.timestamps, batch.frames, batch.wire_lengths, strict=False
        ):
            if timestamp >= next_check:
                flows.tick(timestamp, events)
                next_check = flows.next_check
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
            vlans = NO_VLANS
            if ethertype == ETHERTYPE_IPV4:
                decoded = ipv4(frame, offset, len(frame))
            elif ethertype == ETHERTYPE_IPV6:
                decoded = ipv6(frame, offset, len(frame))
            else:
                tags: list[int] = []
                decoded = network_layer(frame, ethertype, offset, len(frame), tags)
                if tags:
                    vlans = tuple(tags)
            if isinstance(decoded, str):
                drops[decoded] += 1
                continue
            network_type, protocol, start, end, announced, source_ip, destination_ip, fragment = decoded
            if (
                protocol in decapsulated
                and start >= 0
                and (
                    protocol != PROTO_UDP or (start + 16 <= end and _U16(frame, start + 2)[0] in vxlan_ports)
                )
            ):  # a tunnel
                inner = self._decapsulate(frame, decoded, vlans)
                if inner is not None:
                    decoded, vlans = inner
                    network_type, protocol, start, end, announced, source_ip, destination_ip, fragment = (
                        decoded
                    )
            packets = 1
            if fragment >= 0:
                held = self._fragment(timestamp, frame, wire_length, decoded)
                if held is None:
                    continue
                frame, decoded, packets, wire_length = held
                network_type, protocol, start, end, announced, source_ip, destination_ip, fragment = decoded
            source_port = destination_port = flags = seq = ack = 0
            icmp = None
            one_way = False
            key_protocol = protocol
            tcp_bits = 0
            payload_start = end
            if start < 0:
                key_protocol = protocol | PORTLESS
            elif protocol == PROTO_TCP:
                if start + 20 <= end:
                    source_port, destination_port, seq, ack, data_offset, flags, window = _TCP(frame, start)
                    payload_start = start + ((data_offset >> 4) << 2)
                    tcp_bits = flags | SEEN_ANY | (SEEN_DATA if announced > payload_start else 0)
                elif start + 4 <= end:
                    source_port, destination_port = _PORTS(frame, start)
                    tcp_bits = SEEN_ANY
                else:
                    drops[TRUNCATED_TCP] += 1
                    continue
            elif protocol == PROTO_UDP:
                if start + 4 > end:
                    drops[TRUNCATED_UDP] += 1
                    continue
                source_port, destination_port = _PORTS(frame, start)
            elif protocol in ICMP_PROTOCOLS:
                if start + 2 > end:
                    drops[TRUNCATED_ICMP] += 1
                    continue
                icmp = _TYPE_CODE(frame, start)
                if track:
                    source_port, destination_port, one_way = icmp_ports(protocol, icmp[0], icmp[1])
            elif protocol == PROTO_SCTP:
                if start + 4 > end:
                    drops[TRUNCATED_SCTP] += 1
                    continue
                source_port, destination_port = _PORTS(frame, start)

            if track:
                sender_is_low = (
                    one_way
                    or source_ip < destination_ip
                    or (source_ip == destination_ip and source_port < destination_port)
                )
                if sender_is_low:
                    key = (key_protocol, source_ip, source_port, destination_ip, destination_port, vlans)
                else:
                    key = (key_protocol, destination_ip, destination_port, source_ip, source_port, vlans)
                flow = get_flow(key)
                if flow is None or (flags & OPENING == SYN and (flow.client_tcp | flow.server_tcp) & ENDED):
                    flow = open_flow(
                        key,
                        sender_is_low,
                        timestamp,
                        network_type,
                        protocol,
                        cache.get(source_ip) or _address(cache, source_ip),
                        cache.get(destination_ip) or _address(cache, destination_ip),
                        source_port,
                        destination_port,
                        vlans,
                        flags,
                        icmp,
                        events,
                    )
                    latest = flow
                elif flow is not latest:  # the latest flow is already at the end
                    move_to_end(key)
                    latest = flow
                from_client = sender_is_low == flow.client_is_low
                if flags & CONTROL or flow.fin_wait:
                    segment(flow, from_client, timestamp, flags, seq, ack, announced - payload_start)
                if from_client:
                    flow.client_packets += packets
                    flow.client_bytes += wire_length
                    flow.client_tcp = TCP_BITS[flow.client_tcp | tcp_bits]
                else:
                    flow.server_packets += packets
                    flow.server_bytes += wire_length
                    flow.server_tcp = TCP_BITS[flow.server_tcp | tcp_bits]
                flow.last = timestamp

            if forward:
                if protocol == PROTO_TCP:
                    if fragment >= 0:
                        drops[FRAGMENT] += 1
                    elif start + 20 > end:
                        drops[TRUNCATED_TCP] += 1
                    elif payload_start < start + 20 or payload_start > announced:
                        drops[BAD_TCP_HEADER_LENGTH] += 1
                    elif payload_start > end:
                        drops[TRUNCATED_TCP] += 1
                    else:
                        forward_packet(
                            _new(
                                TransportPacket,
                                (
                                    timestamp,
                                    flow,
                                    from_client,
                                    frame[payload_start:end],
                                    announced - end,
                                    flags,
                                    seq,
                                    ack,
                                    window,
                                ),
                            )
                        )
                elif protocol == PROTO_UDP:
                    if fragment >= 0:
                        drops[FRAGMENT] += 1
                    elif start + 8 > end:
                        drops[TRUNCATED_UDP] += 1
                    else:
                        datagram_end = start + _U16(frame, start + 4)[0]
                        if datagram_end < start + 8 or datagram_end > announced:
                            datagram_end = announced  # a UDP length of 0 (jumbogram) or a bad one
                        captured_end = datagram_end if datagram_end < end else end
                        forward_packet(
                            _new(
                                TransportPacket,
                                (
                                    timestamp,
                                    flow,
                                    from_client,
                                    frame[start + 8 : captured_end],
                                    datagram_end - captured_end,
                                    0,
                                    0,
                                    0,
                                    0,
                                ),
                            )
                        )
                elif icmp is not None:  # for ICMP analyzers: the message from its header on
                    if fragment >= 0:
                        drops[FRAGMENT] += 1
                    else:
                        forward_packet(
                            _new(
                                TransportPacket,
                                (timestamp, flow, from_client, frame[start:end], announced - end, 0, 0, 0, 0),
                            )
                        )
                continue

            source = {"ip": cache.get(source_ip) or _address(cache, source_ip)}
            destination = {"ip": cache.get(destination_ip) or _address(cache, destination_ip)}
            if key_protocol in WITH_PORTS:
                source["port"] = source_port
                destination["port"] = destination_port
            network = {
                "type": network_type,
                "transport": TRANSPORTS[protocol],
                "iana_number": IANA_NUMBERS[protocol],
                "bytes": wire_length,
            }
            if packets > 1:
                network["packets"] = packets
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
                event["icmp"] = {"type": icmp[0], "code": icmp[1]}
            append(event)
        if drops:
            counters = self.context.counters
            for reason, count in drops.items():
                counters.drop(reason, count)
        flows.merge_counters()
        if self.defrag is not None:
            if batch.timestamps and batch.timestamps[-1] >= self._next_expire:
                self._expire(batch.timestamps[-1])
            self._merge_defrag()
        return out or None

    def _fragment(
        self, timestamp: float, frame: bytes, wire_length: int, decoded: Network
    ) -> tuple[bytes, Network, int, int] | None:
        """Where every IPv4 and IPv6 fragment goes: defragmentation's place in the decoder.

        ``decoded[7]`` is the offset of the fragment's IPv4 header or IPv6 fragment header in
        ``frame``. Returns the packet to decode in the fragment's place (its bytes, decoded network
        layer, the frames it stands for and their bytes on the wire), or None when there is none
        yet. That is the reassembled datagram when the fragment completes one; the fragment itself,
        decoded as it stands, when defragmentation is off or the capture cut the fragment short (a
        decoder that follows then gets no fragment: each is counted as ``dropped.fragment``).
        """
        defrag = self.defrag
        network_type, protocol, start, end, announced, source, destination, header = decoded  # type: ignore[misc]
        if defrag is None or end < announced:
            return frame, decoded, 1, wire_length
        if timestamp >= self._next_expire:
            self._expire(timestamp)
        if network_type == "ipv4":
            payload_start = header + ((frame[header] & 0x0F) << 2)
            field = _U16(frame, header + 6)[0]
            offset = (field & 0x1FFF) << 3
            more = bool(field & 0x2000)
            key: tuple[object, ...] = (source, destination, _U16(frame, header + 4)[0], protocol)
        else:
            payload_start = header + 8
            _, field, identification = _IPV6_FRAGMENT(frame, header)
            offset = field & 0xFFF8
            more = bool(field & 1)
            key = (source, destination, identification)
        pending = self._pending
        entry = pending.get(key)
        if entry is not None and key not in defrag:  # its datagram was dropped (timeout, a cap)
            del pending[key]
            entry = None
        payload = defrag.add(key, timestamp, offset, more, memoryview(frame)[payload_start:end])
        if entry is not None and defrag.started:  # its datagram had timed out: the fragment starts anew
            del pending[key]
            entry = None
        if payload is None:
            if not defrag.kept:  # dropped: a malformed fragment (its datagram stays), or its datagram went
                if entry is not None and key not in defrag:
                    del pending[key]
                return None
            if entry is None:
                if len(pending) >= 2 * defrag.max_datagrams:
                    self._prune()
                entry = pending[key] = [0, 0, -1, 0]
            entry[0] += 1
            entry[1] += wire_length
            if not offset:  # the transport protocol, and where its header starts in the payload
                entry[2] = protocol
                entry[3] = start - payload_start
            self._held += 1
            return None
        packets = 1
        if entry is not None:
            del pending[key]
            packets += entry[0]
            wire_length += entry[1]
        if offset:  # the held offset-0 fragment told the protocol and where its header starts
            if entry is not None and entry[2] >= 0:
                protocol = entry[2]
                start = payload_start + entry[3]
            else:
                start = payload_start
        if network_type == "ipv4" and payload_start - header + len(payload) > MAX_PAYLOAD:
            self.context.counters.drop(FRAGMENT_TOO_LONG)
            return None
        whole = frame[:payload_start] + payload
        end = len(whole)
        return whole, (network_type, protocol, start, end, end, source, destination, -1), packets, wire_length

    def _expire(self, now: float) -> None:
        """Drop the datagrams in reassembly that timed out by capture time ``now``."""
        defrag = self.defrag
        assert defrag is not None
        defrag.expire(now)
        self._next_expire = now + EXPIRE_INTERVAL
        if len(self._pending) > len(defrag):
            self._prune()

    def _prune(self) -> None:
        """Forget the held fragments of datagrams the defragmenter dropped."""
        defrag = self.defrag
        pending = self._pending
        for key in [key for key in pending if key not in defrag]:  # type: ignore[operator]
            del pending[key]

    def _merge_defrag(self) -> None:
        """Add the defragmenter's counts since the last call to the decoder's counters."""
        counters = self.context.counters
        if self._held:
            counters.add(DEFRAG_HELD, self._held)
            self._held = 0
        defrag_counts = self.defrag.counters  # type: ignore[union-attr]
        if defrag_counts:
            for name, amount in defrag_counts.items():
                counters.add(DEFRAG_COUNTERS[name], amount)
            defrag_counts.clear()

    def _decapsulate(
        self, frame: bytes, decoded: Network, vlans: tuple[int, ...]
    ) -> tuple[Network, tuple[int, ...]] | None:
        """The innermost packet of a tunnel packet (IP in IP, GRE, VXLAN) and its VLAN tags, or
        None when the outer packet is to stand as it is."""
        result = None
        for _ in range(MAX_ENCAPSULATIONS):
            _, protocol, start, end, _, _, _, fragment = decoded  # type: ignore[misc]
            if start < 0 or fragment >= 0:
                break
            if protocol == PROTO_IPIP:
                ethertype, offset = ETHERTYPE_IPV4, start
            elif protocol == PROTO_IPV6:
                ethertype, offset = ETHERTYPE_IPV6, start
            elif protocol == PROTO_GRE:
                payload = gre(frame, start, end)
                if payload is None:
                    break
                ethertype, offset = payload
            elif (
                protocol == PROTO_UDP
                and start + 16 <= end
                and _U16(frame, start + 2)[0] in self._vxlan_ports
                and frame[start + 8] & 0x08  # the VNI is valid
            ):
                ethertype, offset = ETHERTYPE_TEB, start + 16
            else:
                break
            tags = list(vlans)
            inner = network_layer(frame, ethertype, offset, end, tags)
            if isinstance(inner, str) or (inner[4] > end and end == decoded[4]):  # type: ignore[operator]
                break  # not decodable, or longer than the whole outer packet
            decoded, vlans = inner, tuple(tags)
            result = decoded, vlans
        return result

    def flush(self, events: list[Event]) -> None:
        """End of input: a final record of every flow; datagrams still incomplete are dropped
        (counted as ``dropped.defrag.timeout``)."""
        self.flows.flush(events)
        self.flows.merge_counters()
        if self.defrag is not None:
            self._expire(float("inf"))
            self._merge_defrag()

    def advance(self, now: float, events: list[Event]) -> None:
        """No packets for a while (live input): end the flows and drop the incomplete datagrams
        that timed out by ``now``."""
        if self.downstream or self.flows.emit:
            self.flows.tick(now, events)
        if self.defrag is not None:
            self._expire(now)
            self._merge_defrag()

    def splitter(self, ways: int, link_type: int) -> FlowSplitter:
        """For ``pipeline.workers``: share frames out by the symmetric flow hash, fragments with
        their datagram."""
        return FlowSplitter(ways, link_type)


@hookimpl
def flowpipe_add_decoders() -> dict[str, type[Decoder]]:
    return {"ip": IpDecoder}
