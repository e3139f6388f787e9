"""Fuzzing the header decoders of :mod:`~flowpipe.plugins.decoders.layers` and the ``ip`` decoder's
ledger with random bytes and mutated valid frames (bits flipped, bytes set, inserted, deleted, cut).

Header decoders (every link decoder, :func:`~layers.network_layer`, :func:`~layers.ipv4`,
:func:`~layers.ipv6`, :func:`~layers.gre`): nothing raises; the result is a documented drop reason
(``gre``: None) or offsets inside the buffer that agree with each other; and a decoder reads only
the bytes it is given: bytes before the offset or past the limit change nothing, and moving the
packet moves the offsets by as much.

The ``ip`` decoder (defragmentation on, flow records on or off, last decoder or followed by one),
one frame per batch so that each frame's outcome shows: every frame is exactly one of a
per-packet event or a forwarded packet, a drop counted by reason, or a fragment held
(``defrag.held``); followed by a decoder, a frame with none of these is a packet of a protocol it
does not forward, counted in its flow. Every frame decoded is counted in one flow, with its
bytes (a reassembled datagram: with the fragments it stands for), and the final records report
exactly what the flows counted. Datagram-level drops (``dropped.defrag.timeout``,
``too_many_datagrams``, ``too_many_bytes``) count datagrams, whose fragments were counted as held
when they came: each fragment held is delivered in one datagram or lost with one, so fragments
held are at least those delivered plus one per datagram lost.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Sequence

import dpkt
from captures import (
    ethernet,
    gre,
    icmp,
    icmp6,
    ip_fragment,
    ip_packet,
    ip_raw,
    ipv6_options_header,
    ipv6_packet,
    linux_sll,
    linux_sll2,
    loopback,
    ppp,
    pppoe_session,
    tcp,
    udp,
    vxlan,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowpipe import PacketBatch, StageContext
from flowpipe.event import Event
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.decoders import layers
from flowpipe.plugins.decoders.defrag import Defragmenter
from flowpipe.plugins.decoders.ip import IpDecoder
from flowpipe.plugins.decoders.transport import Flow

V4_A, V4_B = "192.0.2.1", "198.51.100.2"
V6_A, V6_B = "2001:db8::1", "2001:db8:0:1::2"
OUTER_A, OUTER_B = "10.0.0.1", "10.0.0.2"
SYN, ACK, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN
T0 = 1_700_000_000.0

DROP_REASONS = frozenset(
    value
    for name, value in vars(layers).items()
    if name.isupper()
    and isinstance(value, str)
    and (value == layers.NOT_IP or value.startswith("malformed."))
)
"""Every drop reason the header decoders return."""
DATAGRAM_DROPS = frozenset(
    ("dropped.defrag.timeout", "dropped.defrag.too_many_datagrams", "dropped.defrag.too_many_bytes")
)
"""Drops counted per datagram lost, not per frame."""
LOST_DATAGRAMS = ("timeout", "too_many_datagrams", "too_many_bytes", "too_many_fragments")
"""Why datagrams in reassembly are lost (``dropped.defrag.<reason>``), each with its held fragments."""
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LEDGER = settings(FUZZ, max_examples=200)


# -- valid packets and frames ----------------------------------------------------------------------


def ipv4_with_options(transport: dpkt.Packet) -> bytes:
    """An IPv4 packet with 8 bytes of options (router alert, no-ops, end of options)."""
    packet = ip_packet(V4_A, V4_B, transport)
    packet.opts = b"\x94\x04\x00\x00\x01\x01\x01\x00"
    packet.hl = 7
    return bytes(packet)


def mpls(packet: bytes, labels: int = 2) -> bytes:
    """``labels`` MPLS label stack entries, the last with the bottom-of-stack bit, then ``packet``."""
    return b"".join(
        struct.pack("!I", (16 + index) << 12 | (index == labels - 1) << 8 | 64) for index in range(labels)
    ) + bytes(packet)


def is_ipv6(packet: bytes) -> bool:
    return packet[0] >> 4 == 6


def hdlc(address: int) -> Callable[[bytes], bytes]:
    """Cisco HDLC framing (address 0x0f unicast, 0x8f broadcast) with the packet's EtherType."""
    return lambda packet: struct.pack("!BBH", address, 0, 0x86DD if is_ipv6(packet) else 0x0800) + packet


def compressed_ppp(packet: bytes) -> bytes:
    """PPP without address and control bytes and with a one-byte protocol field."""
    return bytes((0x57 if is_ipv6(packet) else 0x21,)) + packet


DATAGRAM = bytes(udp(5000, 53, b"q" * 40))  # 48 bytes: fragments at 0, 16 and 32
V6_DATAGRAM = bytes(udp(5001, 53, b"r" * 24))  # 32 bytes: fragments at 0 and 16
FRAGMENTS = [
    ip_fragment(V4_A, V4_B, 17, DATAGRAM[:16], 0, True, 7),
    ip_fragment(V4_A, V4_B, 17, DATAGRAM[16:32], 16, True, 7),
    ip_fragment(V4_A, V4_B, 17, DATAGRAM[32:], 32, False, 7),
]
BAD_END = ip_fragment(V4_A, V4_B, 17, b"x" * 16, 24, False, 7)
"""Another last fragment for datagram 7, ending at 40 rather than 48."""
BAD_LENGTH = ip_fragment(V4_A, V4_B, 17, b"y" * 12, 16, True, 7)
"""Not the last fragment, yet not a multiple of 8 bytes long."""
V6_FRAGMENTS = [
    ip_fragment(V6_A, V6_B, 17, V6_DATAGRAM[:16], 0, True, 9),
    ip_fragment(V6_A, V6_B, 17, V6_DATAGRAM[16:], 16, False, 9),
]
INNER_V4 = ip_packet(V4_A, V4_B, udp(5002, 53, b"inner"))
INNER_V6 = ip_packet(V6_A, V6_B, tcp(40003, 80, flags=SYN))
IP_PACKETS = [
    bytes(ip_packet(V4_A, V4_B, tcp(40000, 80, b"GET /", flags=ACK | FIN, seq=5, ack=9))),
    bytes(ip_packet(V4_B, V4_A, tcp(80, 40000, flags=ACK, seq=9, ack=11))),
    bytes(ip_packet(V4_A, V4_B, tcp(40001, 80, flags=SYN))),
    bytes(ip_packet(V6_A, V6_B, tcp(40002, 443, b"\x16\x03\x01", flags=ACK))),
    bytes(ip_packet(V4_A, V4_B, udp(5003, 53, b"query"))),
    bytes(ip_packet(V4_A, V4_B, icmp(8))),
    bytes(ip_packet(V6_A, V6_B, icmp6(128))),
    ipv4_with_options(udp(5004, 53, b"options")),
    ipv6_packet(  # hop-by-hop, routing, destination options, then UDP
        V6_A,
        V6_B,
        0,
        ipv6_options_header(43)
        + struct.pack("!BBBB4x", 60, 0, 0, 0)
        + ipv6_options_header(17, 16)
        + bytes(udp(5005, 53, b"ext")),
    ),
    ipv6_packet(V6_A, V6_B, 51, struct.pack("!BBHII", 6, 4, 0, 7, 1) + bytes(8) + bytes(tcp(1, 2))),  # AH
    ip_raw(OUTER_A, OUTER_B, 4, bytes(INNER_V4)),
    ip_raw(OUTER_A, OUTER_B, 41, bytes(INNER_V6)),
    ip_raw(OUTER_A, OUTER_B, 47, gre(INNER_V4, 0x0800, key=3, sequence=1, checksum=True)),
    ip_raw(OUTER_A, OUTER_B, 47, gre(ethernet(INNER_V6, vlans=[5]), 0x6558)),
    ip_raw(OUTER_A, OUTER_B, 47, gre(ethernet(INNER_V4), 0x88BE)),  # ERSPAN type I
    bytes(ip_packet(OUTER_A, OUTER_B, udp(50000, 4789, vxlan(ethernet(INNER_V4), 5)))),
    *FRAGMENTS,
    BAD_END,
    BAD_LENGTH,
    *V6_FRAGMENTS,
]
"""Raw IPv4 and IPv6 packets: transports, options, extension headers, tunnels, fragments."""
TRAINS = [
    [],
    FRAGMENTS,
    FRAGMENTS[::-1],
    [FRAGMENTS[0], FRAGMENTS[0], FRAGMENTS[2], FRAGMENTS[1]],  # a duplicate
    [FRAGMENTS[0], BAD_END, FRAGMENTS[1], FRAGMENTS[2]],
    [FRAGMENTS[0], FRAGMENTS[2], BAD_LENGTH, FRAGMENTS[1]],
    V6_FRAGMENTS,
    [V6_FRAGMENTS[1], V6_FRAGMENTS[0]],
]
"""Packets that belong together (a datagram's fragments, with anomalies), sent as one."""

FRAMINGS: dict[int, list[Callable[[bytes], bytes]]] = {
    layers.LINKTYPE_ETHERNET: [
        ethernet,
        lambda packet: ethernet(packet, vlans=[5]),
        lambda packet: ethernet(packet, vlans=[100, 200]),
        lambda packet: ethernet(mpls(packet), ethertype=0x8847),
        lambda packet: ethernet(pppoe_session(packet), ethertype=0x8864),
    ],
    layers.LINKTYPE_NULL: [loopback, lambda packet: loopback(packet, byteorder="big")],
    layers.LINKTYPE_LOOP: [lambda packet: loopback(packet, byteorder="big")],
    layers.LINKTYPE_LINUX_SLL: [
        linux_sll,
        lambda packet: linux_sll(
            struct.pack("!HH", 7, 0x86DD if is_ipv6(packet) else 0x0800) + packet, 0x8100
        ),
    ],
    layers.LINKTYPE_LINUX_SLL2: [linux_sll2],
    layers.LINKTYPE_IPV4: [bytes],
    layers.LINKTYPE_IPV6: [bytes],
    layers.LINKTYPE_PPP: [ppp, lambda packet: ppp(packet, framing=False), compressed_ppp],
    layers.LINKTYPE_PPP_HDLC: [ppp, hdlc(0x0F)],
    layers.LINKTYPE_PPP_ETHER: [pppoe_session],
    layers.LINKTYPE_C_HDLC: [hdlc(0x0F), hdlc(0x8F)],
    **{link_type: [bytes] for link_type in layers.LINKTYPE_RAW},
}
"""How packets are framed on each link type the ``ip`` decoder reads."""
LINK_TYPES = sorted(FRAMINGS)
LINK_PACKETS = {
    layers.LINKTYPE_IPV4: [packet for packet in IP_PACKETS if not is_ipv6(packet)],
    layers.LINKTYPE_IPV6: [packet for packet in IP_PACKETS if is_ipv6(packet)],
}
"""The packets each link type carries, where that is not every one."""


def seeds(link_type: int) -> list[bytes]:
    """Every valid frame of ``link_type``: each packet in each framing."""
    packets = LINK_PACKETS.get(link_type, IP_PACKETS)
    return [frame(packet) for frame in FRAMINGS[link_type] for packet in packets]


SEEDS = {link_type: seeds(link_type) for link_type in LINK_TYPES}
GRE_PAYLOADS = [
    gre(INNER_V4, 0x0800),
    gre(INNER_V6, 0x86DD, key=9, sequence=3, checksum=True),
    gre(ethernet(INNER_V4), 0x6558),
    gre(ethernet(INNER_V4), 0x88BE),  # ERSPAN type I
    gre(struct.pack("!II", 0x1000_0001, 0) + ethernet(INNER_V6), 0x88BE, sequence=1),  # type II
    gre(struct.pack("!IIHH", 0x2000_0001, 0, 0, 0) + ethernet(INNER_V4), 0x22EB, sequence=1),  # type III
    gre(struct.pack("!IIHH", 0x2000_0001, 0, 0, 1) + bytes(8) + ethernet(INNER_V4), 0x22EB, sequence=1),
    struct.pack("!HHHHII", 0x3081, 0x880B, 24, 7, 1, 0) + ppp(bytes(INNER_V4)),  # PPTP: sequence and ack
    struct.pack("!HHHH", 0x2001, 0x880B, 24, 7) + ppp(bytes(INNER_V6)),  # PPTP: neither
    struct.pack("!HH", 0x4000, 0x0800) + bytes(INNER_V4),  # source routing: not decapsulated
]
"""GRE headers of every kind :func:`~layers.gre` reads, with what they carry."""


# -- strategies ------------------------------------------------------------------------------------


def mutate(frame: bytes, program: bytes) -> bytes:
    """``frame`` changed by each 3-byte instruction of ``program``: operation, where (a fraction
    of the length), value. Operations: flip a bit, set a byte, insert or delete up to 8 bytes, cut."""
    data = bytearray(frame)
    for index in range(0, len(program) - 2, 3):
        operation, where, value = program[index : index + 3]
        position = where * (len(data) + 1) >> 8
        operation %= 5
        if operation == 0:
            data[position:position] = bytes((value,)) * (1 + (value & 7))
        elif operation == 1:
            del data[position : position + 1 + (value & 7)]
        elif operation == 2:
            del data[position:]
        elif data:
            position = min(position, len(data) - 1)
            if operation == 3:
                data[position] ^= 1 << (value & 7)
            else:
                data[position] = value
    return bytes(data)


PROGRAMS = st.binary(max_size=12)
"""Up to four changes to a frame (see :func:`mutate`); often none."""


def damaged(frames: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """One of ``frames``, mutated, or random bytes."""
    return st.one_of(
        st.tuples(st.sampled_from(frames), PROGRAMS).map(lambda case: mutate(*case)), st.binary(max_size=96)
    )


@st.composite
def captures(draw: st.DrawFn, link_type: int) -> list[bytes]:
    """Frames of ``link_type`` in one framing: a train of related packets and a few others, each
    maybe damaged, and maybe random bytes, in any order."""
    frame = draw(st.sampled_from(FRAMINGS[link_type]))
    packets = draw(st.sampled_from(TRAINS)) + draw(st.lists(st.sampled_from(IP_PACKETS), max_size=4))
    programs = draw(st.lists(PROGRAMS, min_size=len(packets), max_size=len(packets)))
    frames = [mutate(frame(packet), program) for packet, program in zip(packets, programs, strict=True)]
    frames += draw(st.lists(st.binary(max_size=80), max_size=2))
    return draw(st.permutations(frames)) if frames else [b""]


# -- checks ----------------------------------------------------------------------------------------


def check_link(result: layers.LinkResult, frame: bytes) -> None:
    """A link decoder's result: a drop reason, or an EtherType and an offset inside the frame."""
    if isinstance(result, str):
        assert result in DROP_REASONS
        return
    ethertype, offset = result
    assert 0 <= ethertype <= 0xFFFF
    assert 0 <= offset <= len(frame)


def check_network(result: layers.Network, frame: bytes, offset: int, limit: int) -> None:
    """A decoded network layer that starts at or after ``offset`` and whose bytes end at ``limit``:
    a drop reason, or an IP header inside the captured bytes and offsets in order after it."""
    if isinstance(result, str):
        assert result in DROP_REASONS
        return
    network_type, protocol, start, end, announced, source, destination, fragment = result
    header, address = {"ipv4": (20, 4), "ipv6": (40, 16)}[network_type]
    assert 0 <= protocol <= 255
    assert len(source) == len(destination) == address
    assert offset + header <= end <= limit  # the IP header was captured
    assert end <= announced  # what the header announces, or the capture when it announces 0
    assert start == -1 or offset + header <= start <= end
    if fragment >= 0 and network_type == "ipv4":  # the fragment's IPv4 header, with MF or an offset
        assert offset <= fragment and fragment + 20 <= end
        assert frame[fragment] >> 4 == 4 and struct.unpack_from("!H", frame, fragment + 6)[0] & 0x3FFF
    elif fragment >= 0:  # the IPv6 fragment header
        assert offset + 40 <= fragment and fragment + 8 <= end


def shifted(result: layers.Network, by: int) -> layers.Network:
    """``result`` of the same packet ``by`` bytes further into its frame."""
    if isinstance(result, str):
        return result
    network_type, protocol, start, end, announced, source, destination, fragment = result
    return (
        network_type,
        protocol,
        start + by if start >= 0 else -1,
        end + by,
        announced + by,
        source,
        destination,
        fragment + by if fragment >= 0 else -1,
    )


def link_layer(link_type: int, frame: bytes) -> layers.LinkResult:
    """What the ``ip`` decoder does with a frame's link header (Ethernet's is read inline there)."""
    if link_type == layers.LINKTYPE_ETHERNET:
        return (struct.unpack_from("!H", frame, 12)[0], 14) if len(frame) >= 14 else layers.TRUNCATED_ETHERNET
    return layers.LINK_DECODERS[link_type](frame)


# -- header decoders -------------------------------------------------------------------------------


def test_every_seed_is_a_valid_frame() -> None:
    """The frames that get mutated decode whole: the IP header is found, nothing is cut."""
    for link_type in LINK_TYPES:
        for frame in SEEDS[link_type]:
            link = link_layer(link_type, frame)
            assert not isinstance(link, str), (link_type, frame.hex())
            result = layers.network_layer(frame, *link, len(frame), [])
            assert not isinstance(result, str), (link_type, frame.hex(), result)
            assert result[3] == result[4] == len(frame)


@FUZZ
@given(
    st.sampled_from(LINK_TYPES).flatmap(
        lambda link_type: st.tuples(st.just(link_type), damaged(SEEDS[link_type]))
    )
)
def test_link_decoders(case: tuple[int, bytes]) -> None:
    link_type, frame = case
    link = link_layer(link_type, frame)
    check_link(link, frame)
    if isinstance(link, str):
        return
    vlans: list[int] = []
    result = layers.network_layer(frame, *link, len(frame), vlans)
    check_network(result, frame, link[1], len(frame))
    assert len(vlans) <= layers.MAX_LINK_HEADERS
    assert all(0 <= vlan <= 0x0FFF for vlan in vlans)


@FUZZ
@given(
    frame=damaged(SEEDS[layers.LINKTYPE_ETHERNET]),
    ethertype=st.sampled_from((0x0800, 0x86DD, 0x8100, 0x88A8, 0x8847, 0x8864, 0x6558, 0x880B, 0x0806)),
    prefix=st.binary(max_size=8),
    tail=st.binary(min_size=1, max_size=8),
    cut=st.integers(0, 40),
)
def test_network_layer_reads_only_between_offset_and_limit(
    frame: bytes, ethertype: int, prefix: bytes, tail: bytes, cut: int
) -> None:
    """Started on any Ethernet payload with any EtherType, and with the limit anywhere."""
    offset = min(14, len(frame))
    limit = max(offset, len(frame) - cut)
    vlans: list[int] = []
    result = layers.network_layer(frame, ethertype, offset, limit, vlans)
    check_network(result, frame, offset, limit)
    moved_vlans: list[int] = []
    moved = prefix + frame[:limit] + tail
    assert layers.network_layer(moved, ethertype, offset + len(prefix), limit + len(prefix), moved_vlans) == (
        shifted(result, len(prefix))
    )
    assert moved_vlans == vlans


@FUZZ
@given(
    packet=damaged(IP_PACKETS),
    version=st.sampled_from((layers.ipv4, layers.ipv6)),
    prefix=st.binary(max_size=8),
    tail=st.binary(min_size=1, max_size=8),
    cut=st.integers(0, 40),
)
def test_ip_headers_read_only_between_offset_and_limit(
    packet: bytes, version: Callable[[bytes, int, int], layers.Network], prefix: bytes, tail: bytes, cut: int
) -> None:
    limit = max(0, len(packet) - cut)
    result = version(packet, 0, limit)
    check_network(result, packet, 0, limit)
    assert version(prefix + packet[:limit] + tail, len(prefix), len(prefix) + limit) == shifted(
        result, len(prefix)
    )


@FUZZ
@given(
    payload=damaged(GRE_PAYLOADS),
    prefix=st.binary(max_size=8),
    tail=st.binary(min_size=1, max_size=8),
    cut=st.integers(0, 40),
)
def test_gre(payload: bytes, prefix: bytes, tail: bytes, cut: int) -> None:
    end = max(0, len(payload) - cut)
    result = layers.gre(payload, 0, end)
    if result is not None:
        ethertype, offset = result
        assert 0 <= ethertype <= 0xFFFF
        assert 4 <= offset <= end
        check_network(layers.network_layer(payload, ethertype, offset, end, []), payload, offset, end)
    moved = layers.gre(prefix + payload[:end] + tail, len(prefix), len(prefix) + end)
    assert moved == (None if result is None else (result[0], result[1] + len(prefix)))


def test_valid_gre_headers_are_decapsulated() -> None:
    """Every GRE seed but the source-routed one gives an IP packet, cut nowhere."""
    for payload in GRE_PAYLOADS[:-1]:
        ethertype, offset = layers.gre(payload, 0, len(payload))  # type: ignore[misc]
        result = layers.network_layer(payload, ethertype, offset, len(payload), [])
        assert not isinstance(result, str) and result[3] == len(payload), payload.hex()
    assert layers.gre(GRE_PAYLOADS[-1], 0, len(GRE_PAYLOADS[-1])) is None


# -- the ip decoder's ledger -----------------------------------------------------------------------


def make_decoder(flows: bool, downstream: bool) -> IpDecoder:
    """An ``ip`` decoder with small caps and timeouts, so that fuzzing reaches them."""
    options: dict[str, object] = {
        "flows": {"enabled": flows, "max_flows": 3, "period": "1s", "timeout": "10s"},
        "defrag": {"timeout": "750ms", "max_datagrams": 2, "max_fragments": 3},
    }
    assert validate_options(IpDecoder.options, options) == []
    decoder = IpDecoder(
        build_namespace(IpDecoder.options, options), StageContext("ip", Counters("ip", "decoder"))
    )
    decoder.downstream = downstream
    return decoder


def counted(flow: Flow) -> tuple[int, int]:
    """Packets and bytes counted in ``flow``, both directions."""
    return flow.client_packets + flow.server_packets, flow.client_bytes + flow.server_bytes


@LEDGER
@given(
    case=st.sampled_from(LINK_TYPES).flatmap(
        lambda link_type: st.tuples(st.just(link_type), captures(link_type))
    ),
    gaps=st.lists(st.sampled_from((0.0, 0.001, 0.3, 0.8, 3.0, 40.0)), min_size=12, max_size=12),
    flows=st.booleans(),
    downstream=st.booleans(),
)
def test_ip_decoder_accounts_for_every_frame(
    case: tuple[int, list[bytes]], gaps: list[float], flows: bool, downstream: bool
) -> None:
    link_type, frames = case
    decoder = make_decoder(flows, downstream)
    defrag = decoder.defrag
    assert defrag is not None
    counters = decoder.context.counters
    seen: dict[int, Flow] = {}
    """Every flow the decoder made, by id(), kept here after the decoder lets it go."""
    records: list[Event] = []
    reassembled = 0
    """Fragments held, then delivered in a reassembled datagram (by the frame that completed it)."""
    timestamp = T0
    for frame, gap in zip(frames, gaps, strict=False):
        timestamp += gap
        before = dict(counters.values)
        counted_before = {key: counted(flow) for key, flow in seen.items()}
        batch = PacketBatch(link_type, "fuzz")
        batch.append(timestamp, frame, len(frame))
        events: list[Event] = []
        forwarded = decoder.decode(batch, events) or []
        seen.update((id(flow), flow) for flow in decoder.flows.flows.values())
        changed = {name: value - before.get(name, 0) for name, value in counters.values.items()}
        drops = sum(
            count
            for name, count in changed.items()
            if name.startswith("dropped.") and name not in DATAGRAM_DROPS
        )
        held = changed.get("defrag.held", 0)
        per_packet = [event for event in events if event["event"]["dataset"] == "packet"]
        records += [event for event in events if event["event"]["dataset"] == "flow"]
        outcome = len(per_packet) + len(forwarded) + drops + held
        reassembled += sum(event["network"].get("packets", 1) - 1 for event in per_packet)
        touched = [flow for key, flow in seen.items() if counted(flow) != counted_before.get(key, (0, 0))]
        packets = sum(counted(flow)[0] - counted_before.get(id(flow), (0, 0))[0] for flow in touched)
        size = sum(counted(flow)[1] - counted_before.get(id(flow), (0, 0))[1] for flow in touched)
        description = (frame.hex(), changed, per_packet, forwarded)
        assert len(touched) <= 1, description  # one flow per frame
        if downstream:
            reassembled += max(0, packets - 1)
            assert not per_packet
            assert outcome <= 1, description
            if not outcome:  # a protocol the decoder does not forward, counted in its flow
                assert packets >= 1, description
                assert [flow.protocol for flow in touched if flow.protocol in (6, 17)] == [], description
            if forwarded:
                assert packets >= 1
        else:
            assert not forwarded
            assert outcome == 1, description
            if drops or held:
                assert (packets, size) == (0, 0), description
            elif flows:
                [event] = per_packet
                network = event["network"]
                assert (packets, size) == (network.get("packets", 1), network["bytes"]), description
        if not flows and not downstream:
            assert not seen and not records
        assert len(decoder.flows.flows) <= 3
        assert len(defrag) <= 2 and defrag.held_bytes <= defrag.max_bytes
    events = []
    decoder.flush(events)
    records += [event for event in events if event["event"]["dataset"] == "flow"]
    assert len(defrag) == 0 and not decoder.flows.flows
    # A held fragment is delivered in one datagram or lost with one; a datagram lost held one or more.
    lost = sum(counters.get(f"dropped.defrag.{reason}") for reason in LOST_DATAGRAMS)
    assert counters.get("defrag.held") >= reassembled + lost
    if flows:
        finals = [record for record in records if record["flow"]["final"]]
        assert counters.get("flows") == len(seen) == len(finals)
        assert Counter(
            (record["flow"]["id"], record["network"]["packets"], record["network"]["bytes"])
            for record in finals
        ) == Counter((flow.id, *counted(flow)) for flow in seen.values())


# -- what fuzzing found ----------------------------------------------------------------------------


def decode_one_by_one(
    frames: list[tuple[float, bytes]], **defrag: object
) -> tuple[list[Event], dict[str, int]]:
    """Per-packet events and counters of Ethernet ``frames`` at ``T0 + seconds``, one frame per batch."""
    decoder = IpDecoder(
        build_namespace(IpDecoder.options, {"flows": {"enabled": False}, "defrag": defrag}),
        StageContext("ip", Counters("ip", "decoder")),
    )
    events: list[Event] = []
    for seconds, frame in frames:
        batch = PacketBatch(layers.LINKTYPE_ETHERNET, "test")
        batch.append(T0 + seconds, frame, len(frame))
        decoder.decode(batch, events)
    decoder.flush(events)
    return events, decoder.context.counters.values


def test_a_malformed_fragment_of_a_datagram_in_reassembly_is_dropped_not_held() -> None:
    """It was counted twice: as dropped and as held (and then in the datagram's packets)."""
    first, middle, last = (ethernet(fragment) for fragment in FRAGMENTS)
    frames = [first, last, ethernet(BAD_LENGTH), ethernet(BAD_END), middle]
    events, counters = decode_one_by_one([(index * 0.1, frame) for index, frame in enumerate(frames)])
    assert counters == {
        "defrag.held": 2,
        "defrag.reassembled": 1,
        "dropped.malformed.fragment_bad_length": 1,
        "dropped.malformed.fragment_bad_end": 1,
    }
    [event] = events
    assert event["network"]["packets"] == 3
    assert event["network"]["bytes"] == len(first) + len(middle) + len(last)


def test_fragments_of_a_datagram_that_timed_out_do_not_count_in_the_next_one() -> None:
    """A fragment that finds its datagram timed out (before the once-a-second expiry dropped it)
    starts a new datagram; the fragments held for the old one counted in the new one too."""
    first, middle, last = (ethernet(fragment) for fragment in FRAGMENTS)
    frames = [(0.0, first), (0.8, first), (0.9, last), (1.0, middle)]  # the datagram times out at 0.75
    events, counters = decode_one_by_one(frames, timeout="750ms")
    assert counters == {
        "defrag.held": 3,
        "defrag.reassembled": 1,
        "dropped.defrag.timeout": 1,
    }
    [event] = events
    assert event["network"]["packets"] == 3
    assert event["network"]["bytes"] == len(first) + len(middle) + len(last)


def test_the_defragmenter_tells_what_became_of_each_fragment() -> None:
    """``kept`` and ``started`` after each ``add``: what the ``ip`` decoder needs to count right."""
    defrag = Defragmenter(timeout=1.0)
    outcomes = []
    for timestamp, offset, more, data in [
        (0.0, 0, True, bytes(16)),  # starts datagram 1
        (0.1, 16, True, bytes(12)),  # bad_length: dropped, the datagram stays
        (0.2, 32, False, bytes(8)),  # held
        (0.3, 16, False, bytes(8)),  # bad_end: dropped
        (2.0, 16, True, bytes(16)),  # datagram 1 timed out: starts another
        (2.1, 0, False, bytes(8)),  # atomic: returned, kept
        (2.2, 0, True, bytes(16)),  # held
        (2.3, 32, False, bytes(8)),  # completes datagram 2
    ]:
        payload = defrag.add("key", timestamp, offset, more, data)
        outcomes.append((defrag.kept, defrag.started, None if payload is None else len(payload)))
    assert outcomes == [
        (True, True, None),
        (False, False, None),
        (True, False, None),
        (False, False, None),
        (True, True, None),
        (True, False, 8),
        (True, False, None),
        (True, False, 40),
    ]
    assert defrag.counters == {"bad_length": 1, "bad_end": 1, "timeout": 1, "reassembled": 1}
