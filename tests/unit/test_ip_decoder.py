"""The ``ip`` decoder on frames crafted with dpkt: every link type, IPv4/IPv6, transports,
fragments, VLAN tags, and every kind of malformed packet (counted, never raised)."""

from __future__ import annotations

import random
import struct

import dpkt
import pytest
from captures import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    ethernet,
    gre,
    icmp,
    icmp6,
    ip_packet,
    ip_raw,
    ipv6_fragment_header,
    ipv6_options_header,
    ipv6_packet,
    linux_sll,
    linux_sll2,
    loopback,
    ppp,
    pppoe_session,
    tcp,
    tcp_frame,
    udp,
    udp_frame,
    vxlan,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowpipe import PacketBatch, StageContext
from flowpipe.event import Event
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.decoders import ip as ip_module
from flowpipe.plugins.decoders.ip import IpDecoder

TIMESTAMP = 1_700_000_000.123  # 2023-11-14T22:13:20.123Z
PACKET_EVENT = {"kind": "event", "category": ["network"], "dataset": "packet"}
V4_SRC, V4_DST = "192.0.2.1", "198.51.100.2"
V6_SRC, V6_DST = "2001:db8::1", "2001:db8:0:1::2"
ETHERTYPE_ARP = 0x0806
DLT_RAW = 12  # what libpcap reports for LINKTYPE_RAW files on Linux


def make_decoder(**options: object) -> IpDecoder:
    """An ``ip`` decoder built as the pipeline builds it: validated options and a context.

    Flow records are off unless ``options`` say otherwise: these tests are about packets.
    """
    options.setdefault("flows", {"enabled": False})
    assert validate_options(IpDecoder.options, options) == []
    return IpDecoder(
        build_namespace(IpDecoder.options, options), StageContext("ip", Counters("ip", "decoder"))
    )


def decode(
    frames: list[bytes],
    link_type: int = LINKTYPE_ETHERNET,
    wire_lengths: list[int] | None = None,
    **options: object,
) -> tuple[list[Event], dict[str, int]]:
    """Decode ``frames`` as one batch (timestamps TIMESTAMP, +1 s, ...): events and counters."""
    decoder = make_decoder(**options)
    batch = PacketBatch(link_type, "test")
    for index, frame in enumerate(frames):
        wire_length = len(frame) if wire_lengths is None else wire_lengths[index]
        batch.append(TIMESTAMP + index, frame, wire_length)
    events: list[Event] = []
    assert decoder.decode(batch, events) is None
    return events, decoder.context.counters.values


def endpoints(event: Event) -> tuple:
    """(source ip, source port, destination ip, destination port, transport, type) of an event."""
    source, destination, network = event["source"], event["destination"], event["network"]
    return (
        source["ip"],
        source.get("port"),
        destination["ip"],
        destination.get("port"),
        network["transport"],
        network["type"],
    )


def ipv4_bytes(transport: dpkt.Packet, src: str = V4_SRC, dst: str = V4_DST, **fields: int) -> bytes:
    """A serialised IPv4 packet (``fields``: dpkt IP header fields such as ``off``, ``hl``, ``len``)."""
    packet = ip_packet(src, dst, transport)
    for name, value in fields.items():
        setattr(packet, name, value)
    return bytes(packet)


# -- whole events ---------------------------------------------------------------------------------


def test_ipv4_tcp_event() -> None:
    frame = tcp_frame(V4_SRC, V4_DST, 40000, 80, b"hello")
    events, counters = decode([frame])
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "event": PACKET_EVENT,
            "network": {"type": "ipv4", "transport": "tcp", "iana_number": "6", "bytes": 59},
            "source": {"ip": V4_SRC, "port": 40000},
            "destination": {"ip": V4_DST, "port": 80},
        }
    ]
    assert counters == {}


def test_ipv4_udp_event_counts_wire_length() -> None:
    frame = udp_frame(V4_SRC, V4_DST, 5353, 53, b"q" * 20)
    events, _ = decode([frame[:46]], wire_lengths=[len(frame)])  # cut by a snapshot length
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "event": PACKET_EVENT,
            "network": {"type": "ipv4", "transport": "udp", "iana_number": "17", "bytes": 62},
            "source": {"ip": V4_SRC, "port": 5353},
            "destination": {"ip": V4_DST, "port": 53},
        }
    ]


def test_ipv4_icmp_event_has_type_and_code() -> None:
    frame = ethernet(ip_packet(V4_SRC, V4_DST, icmp(3, 1, bytes(4))))
    events, counters = decode([frame])
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "event": PACKET_EVENT,
            "network": {"type": "ipv4", "transport": "icmp", "iana_number": "1", "bytes": 42},
            "source": {"ip": V4_SRC},
            "destination": {"ip": V4_DST},
            "icmp": {"type": 3, "code": 1},
        }
    ]
    assert counters == {}


def test_ipv6_icmpv6_event() -> None:
    frame = ethernet(ip_packet(V6_SRC, V6_DST, icmp6(128)))
    events, _ = decode([frame])
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "event": PACKET_EVENT,
            "network": {"type": "ipv6", "transport": "ipv6-icmp", "iana_number": "58", "bytes": 62},
            "source": {"ip": V6_SRC},
            "destination": {"ip": V6_DST},
            "icmp": {"type": 128, "code": 0},
        }
    ]


def test_single_vlan_event() -> None:
    frame = ethernet(ip_packet(V4_SRC, V4_DST, tcp(1234, 443)), vlans=[100])
    events, counters = decode([frame])
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "event": PACKET_EVENT,
            "network": {
                "type": "ipv4",
                "transport": "tcp",
                "iana_number": "6",
                "bytes": 58,
                "vlan": {"id": "100"},
            },
            "source": {"ip": V4_SRC, "port": 1234},
            "destination": {"ip": V4_DST, "port": 443},
        }
    ]
    assert counters == {}


def test_qinq_event_has_outer_and_inner_vlan() -> None:
    frame = ethernet(ip_packet(V6_SRC, V6_DST, udp(1000, 2000)), vlans=[300, 42])
    events, _ = decode([frame])
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "event": PACKET_EVENT,
            "network": {
                "type": "ipv6",
                "transport": "udp",
                "iana_number": "17",
                "bytes": 70,
                "vlan": {"id": "300"},
                "inner": {"vlan": {"id": "42"}},
            },
            "source": {"ip": V6_SRC, "port": 1000},
            "destination": {"ip": V6_DST, "port": 2000},
        }
    ]


def test_three_tags_report_the_outermost_and_innermost_vlan() -> None:
    frame = ethernet(ip_packet(V4_SRC, V4_DST, udp(1, 2)), vlans=[7, 8, 4095])
    events, _ = decode([frame])
    network = events[0]["network"]
    assert (network["vlan"], network["inner"]) == ({"id": "7"}, {"vlan": {"id": "4095"}})


def test_vlan_priority_bits_are_not_part_of_the_id() -> None:
    frame = bytearray(ethernet(ip_packet(V4_SRC, V4_DST, udp(1, 2)), vlans=[5]))
    struct.pack_into("!H", frame, 14, (7 << 13) | (1 << 12) | 5)  # PCP 7, DEI 1, VID 5
    events, _ = decode([bytes(frame)])
    assert events[0]["network"]["vlan"] == {"id": "5"}


# -- transports -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (tcp_frame(V4_SRC, V4_DST, 1025, 22), (V4_SRC, 1025, V4_DST, 22, "tcp", "ipv4")),
        (udp_frame(V4_SRC, V4_DST, 68, 67), (V4_SRC, 68, V4_DST, 67, "udp", "ipv4")),
        (ethernet(ip_packet(V4_SRC, V4_DST, icmp(8))), (V4_SRC, None, V4_DST, None, "icmp", "ipv4")),
        (tcp_frame(V6_SRC, V6_DST, 50000, 443), (V6_SRC, 50000, V6_DST, 443, "tcp", "ipv6")),
        (udp_frame(V6_SRC, V6_DST, 546, 547), (V6_SRC, 546, V6_DST, 547, "udp", "ipv6")),
        (
            ethernet(ip_packet(V6_SRC, V6_DST, icmp6(135))),
            (V6_SRC, None, V6_DST, None, "ipv6-icmp", "ipv6"),
        ),
    ],
    ids=["ipv4-tcp", "ipv4-udp", "ipv4-icmp", "ipv6-tcp", "ipv6-udp", "ipv6-icmpv6"],
)
def test_transports(frame: bytes, expected: tuple) -> None:
    events, counters = decode([frame])
    assert [endpoints(event) for event in events] == [expected]
    assert counters == {}


def test_other_ip_protocols_have_no_ports() -> None:
    gre = ethernet(ip_packet(V4_SRC, V4_DST, udp(1, 2)))
    gre = gre[:23] + bytes([47]) + gre[24:]  # protocol GRE
    unassigned = gre[:23] + bytes([253]) + gre[24:]
    events, _ = decode([gre, unassigned])
    assert [(event["network"]["transport"], event["network"]["iana_number"]) for event in events] == [
        ("gre", "47"),
        ("253", "253"),
    ]
    assert all("port" not in event["source"] for event in events)


def test_ipv4_options_are_skipped() -> None:
    packet = ip_packet(V4_SRC, V4_DST, tcp(1111, 2222))
    packet.opts = b"\x01\x01\x01\x00"  # NOP, NOP, NOP, end of options list
    packet.hl = 6
    events, counters = decode([ethernet(packet)])
    assert [endpoints(event) for event in events] == [(V4_SRC, 1111, V4_DST, 2222, "tcp", "ipv4")]
    assert counters == {}


def test_ethernet_padding_is_not_read_as_ports() -> None:
    """A 60-byte minimum frame: the IPv4 total length says where the datagram ends."""
    packet = bytearray(ipv4_bytes(udp(1, 2)))
    struct.pack_into("!H", packet, 2, 22)  # total length: the header and 2 bytes of UDP
    frame = ethernet(bytes(packet[:22]) + bytes(24))
    assert len(frame) == 60
    events, counters = decode([frame])
    assert events == []
    assert counters == {"dropped.malformed.truncated_udp": 1}


def test_ipv4_total_length_zero_is_segmentation_offload() -> None:
    packet = bytearray(ipv4_bytes(tcp(4000, 80, b"x" * 3000)))
    struct.pack_into("!H", packet, 2, 0)
    events, counters = decode([ethernet(bytes(packet))])
    assert [endpoints(event) for event in events] == [(V4_SRC, 4000, V4_DST, 80, "tcp", "ipv4")]
    assert counters == {}


def test_ipv6_payload_length_zero_uses_the_captured_length() -> None:
    frame = ethernet(ipv6_packet(V6_SRC, V6_DST, 17, bytes(udp(7, 9)), payload_length=0))
    events, counters = decode([frame])
    assert [endpoints(event) for event in events] == [(V6_SRC, 7, V6_DST, 9, "udp", "ipv6")]
    assert counters == {}


def test_timestamps_keep_their_milliseconds() -> None:
    frame = tcp_frame(V4_SRC, V4_DST, 1, 2)
    decoder = make_decoder()
    batch = PacketBatch(LINKTYPE_ETHERNET)
    for micros in (123000, 999999, 0, 1000):
        batch.append(1_700_000_000 + micros * 1e-6, frame, len(frame))
    events: list[Event] = []
    decoder.decode(batch, events)
    assert [event["@timestamp"] for event in events] == [
        "2023-11-14T22:13:20.123Z",
        "2023-11-14T22:13:20.999Z",
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:13:20.001Z",
    ]


# -- fragments (defragmentation off) and IPv6 extension headers ------------------------------------

NO_DEFRAG = {"defrag": {"enabled": False}}


def test_ipv4_first_fragment_has_ports_later_fragment_not() -> None:
    first = ethernet(ipv4_bytes(udp(5000, 6000, b"a" * 16), mf=1))
    later = ethernet(ipv4_bytes(udp(5000, 6000, b"b" * 16), offset=3))  # 24 bytes in
    events, counters = decode([first, later], **NO_DEFRAG)
    assert [endpoints(event) for event in events] == [
        (V4_SRC, 5000, V4_DST, 6000, "udp", "ipv4"),
        (V4_SRC, None, V4_DST, None, "udp", "ipv4"),
    ]
    assert counters == {}


def test_ipv4_later_fragment_too_short_for_ports_is_not_malformed() -> None:
    packet = bytearray(ipv4_bytes(tcp(1, 2), mf=1, offset=185))
    struct.pack_into("!H", packet, 2, 22)  # two bytes of fragment data
    events, counters = decode([ethernet(bytes(packet[:22]))], **NO_DEFRAG)
    assert [endpoints(event) for event in events] == [(V4_SRC, None, V4_DST, None, "tcp", "ipv4")]
    assert counters == {}


def test_ipv6_hop_by_hop_destination_options_and_fragment_headers() -> None:
    segment = bytes(tcp(33000, 8080, b"payload"))
    chain_first = (
        ipv6_options_header(60)  # hop-by-hop -> destination options
        + ipv6_options_header(44, length=16)  # destination options -> fragment
        + ipv6_fragment_header(6, offset=0, more=True)
        + segment
    )
    chain_later = (
        ipv6_options_header(60) + ipv6_options_header(44, 16) + ipv6_fragment_header(6, offset=1232) + segment
    )
    frames = [ethernet(ipv6_packet(V6_SRC, V6_DST, 0, chain)) for chain in (chain_first, chain_later)]
    events, counters = decode(frames, **NO_DEFRAG)
    assert [endpoints(event) for event in events] == [
        (V6_SRC, 33000, V6_DST, 8080, "tcp", "ipv6"),
        (V6_SRC, None, V6_DST, None, "tcp", "ipv6"),
    ]
    assert events[0]["network"]["iana_number"] == "6"
    assert counters == {}


def test_ipv6_later_fragment_data_is_not_walked_as_headers() -> None:
    """Data of a later fragment that looks like a truncated extension header is data."""
    chain = ipv6_fragment_header(0, offset=8) + b"\x00\xff"  # "hop-by-hop" of 2048 bytes
    events, counters = decode([ethernet(ipv6_packet(V6_SRC, V6_DST, 44, chain))], **NO_DEFRAG)
    assert [endpoints(event) for event in events] == [(V6_SRC, None, V6_DST, None, "0", "ipv6")]
    assert counters == {}


def test_ipv6_routing_and_authentication_headers_are_walked() -> None:
    routing = struct.pack("!BBBB4x", 51, 0, 0, 0)  # type 0 routing header, no addresses
    authentication = struct.pack("!BBHII", 17, 4, 0, 0x100, 1) + bytes(12)  # (4 + 2) * 4 bytes
    chain = routing + authentication + bytes(udp(500, 4500))
    events, counters = decode([ethernet(ipv6_packet(V6_SRC, V6_DST, 43, chain))])
    assert [endpoints(event) for event in events] == [(V6_SRC, 500, V6_DST, 4500, "udp", "ipv6")]
    assert counters == {}


# -- link types -----------------------------------------------------------------------------------

IPV4_TCP = ip_packet(V4_SRC, V4_DST, tcp(40000, 80))
IPV6_UDP = ip_packet(V6_SRC, V6_DST, udp(5353, 53))
EXPECTED = [(V4_SRC, 40000, V4_DST, 80, "tcp", "ipv4"), (V6_SRC, 5353, V6_DST, 53, "udp", "ipv6")]


@pytest.mark.parametrize(
    ("link_type", "frame"),
    [
        (LINKTYPE_ETHERNET, ethernet),
        (LINKTYPE_LINUX_SLL, linux_sll),
        (LINKTYPE_LINUX_SLL2, linux_sll2),
        (LINKTYPE_RAW, bytes),
        (DLT_RAW, bytes),
        (LINKTYPE_NULL, loopback),
        (LINKTYPE_NULL, lambda packet: loopback(packet, byteorder="big")),
        (LINKTYPE_NULL, lambda packet: loopback(packet, family=2 if packet is IPV4_TCP else 30)),
        (LINKTYPE_LOOP, lambda packet: loopback(packet, byteorder="big")),
        (
            LINKTYPE_LOOP,
            lambda packet: loopback(packet, family=2 if packet is IPV4_TCP else 28, byteorder="big"),
        ),
    ],
    ids=[
        "ethernet",
        "linux-sll",
        "linux-sll2",
        "raw",
        "dlt-raw",
        "null-little-endian",
        "null-big-endian",
        "null-darwin-inet6",
        "loop",
        "loop-freebsd-inet6",
    ],
)
def test_link_types(link_type: int, frame) -> None:
    events, counters = decode([frame(IPV4_TCP), frame(IPV6_UDP)], link_type)
    assert [endpoints(event) for event in events] == EXPECTED
    assert counters == {}


def test_ipv4_and_ipv6_link_types() -> None:
    events_v4, _ = decode([bytes(IPV4_TCP)], LINKTYPE_IPV4)
    events_v6, _ = decode([bytes(IPV6_UDP)], LINKTYPE_IPV6)
    assert [endpoints(event) for event in events_v4 + events_v6] == EXPECTED


def test_vlan_inside_linux_cooked_capture() -> None:
    tagged = struct.pack("!HH", 12, 0x0800) + bytes(IPV4_TCP)  # VID 12, then IPv4
    events, counters = decode([linux_sll(tagged, protocol=0x8100)], LINKTYPE_LINUX_SLL)
    assert [endpoints(event) for event in events] == EXPECTED[:1]
    assert events[0]["network"]["vlan"] == {"id": "12"}
    assert counters == {}


@pytest.mark.parametrize(
    ("link_type", "frame"),
    [
        (LINKTYPE_ETHERNET, ethernet(bytes(28), ethertype=ETHERTYPE_ARP)),
        (LINKTYPE_ETHERNET, ethernet(bytes(28), ethertype=ETHERTYPE_ARP, vlans=[9])),
        (LINKTYPE_ETHERNET, ethernet(b"\xaa\xaa\x03" + bytes(43), ethertype=46)),  # 802.3 length + LLC
        (LINKTYPE_LINUX_SLL, linux_sll(bytes(28), protocol=ETHERTYPE_ARP)),
        (LINKTYPE_LINUX_SLL2, linux_sll2(bytes(28), protocol=ETHERTYPE_ARP)),
        (LINKTYPE_NULL, loopback(bytes(20), family=7)),
        (LINKTYPE_LOOP, loopback(bytes(20), family=7, byteorder="big")),
    ],
    ids=["arp", "arp-in-vlan", "llc", "sll-arp", "sll2-arp", "null-other-family", "loop-other-family"],
)
def test_not_ip_is_counted(link_type: int, frame: bytes) -> None:
    events, counters = decode([frame, frame], link_type)
    assert events == []
    assert counters == {"dropped.not_ip": 2}


def test_unsupported_link_type_drops_the_batch() -> None:
    events, counters = decode([bytes(IPV4_TCP)] * 3, link_type=105)  # IEEE 802.11
    assert events == []
    assert counters == {"dropped.unsupported_link_type": 3}


# -- malformed packets ----------------------------------------------------------------------------


def _replace(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


GOOD_V4 = tcp_frame(V4_SRC, V4_DST, 1, 2)
GOOD_V6 = udp_frame(V6_SRC, V6_DST, 3, 4)


MALFORMED = [
    pytest.param(LINKTYPE_ETHERNET, GOOD_V4[:13], "truncated_ethernet", id="ethernet-13-bytes"),
    pytest.param(LINKTYPE_ETHERNET, ethernet(b"", vlans=[5])[:16], "truncated_vlan", id="vlan-tag-cut"),
    pytest.param(LINKTYPE_ETHERNET, ethernet(b"", vlans=[5, 6])[:20], "truncated_vlan", id="qinq-inner-cut"),
    pytest.param(LINKTYPE_LINUX_SLL, linux_sll(IPV4_TCP)[:15], "truncated_linux_sll", id="sll-15-bytes"),
    pytest.param(LINKTYPE_LINUX_SLL2, linux_sll2(IPV4_TCP)[:19], "truncated_linux_sll2", id="sll2-19-bytes"),
    pytest.param(LINKTYPE_NULL, b"\x02\x00\x00", "truncated_loopback", id="null-3-bytes"),
    pytest.param(LINKTYPE_LOOP, b"\x00\x00\x00", "truncated_loopback", id="loop-3-bytes"),
    pytest.param(LINKTYPE_RAW, b"", "truncated_ip", id="raw-empty"),
    pytest.param(LINKTYPE_ETHERNET, GOOD_V4[:33], "truncated_ipv4", id="ipv4-19-bytes"),
    pytest.param(
        LINKTYPE_ETHERNET,
        ethernet(ipv4_bytes(tcp(1, 2), hl=6))[:37],
        "truncated_ipv4",
        id="ipv4-options-cut",
    ),
    pytest.param(LINKTYPE_ETHERNET, _replace(GOOD_V4, 14, b"\x44"), "bad_ipv4_header_length", id="ihl-4"),
    pytest.param(LINKTYPE_ETHERNET, _replace(GOOD_V4, 14, b"\x40"), "bad_ipv4_header_length", id="ihl-0"),
    pytest.param(LINKTYPE_ETHERNET, _replace(GOOD_V4, 14, b"\x65"), "bad_ipv4_version", id="ipv4-version-6"),
    pytest.param(LINKTYPE_RAW, b"\x55" + bytes(IPV4_TCP)[1:], "bad_ipv4_version", id="raw-version-5"),
    pytest.param(
        LINKTYPE_ETHERNET, _replace(GOOD_V4, 16, b"\x00\x13"), "bad_ipv4_total_length", id="total-length-19"
    ),
    pytest.param(LINKTYPE_ETHERNET, GOOD_V4[:37], "truncated_tcp", id="tcp-3-bytes"),
    pytest.param(LINKTYPE_ETHERNET, GOOD_V6[: 14 + 40 + 3], "truncated_udp", id="udp-3-bytes"),
    pytest.param(
        LINKTYPE_ETHERNET,
        ethernet(ip_packet(V4_SRC, V4_DST, icmp(0)))[:35],
        "truncated_icmp",
        id="icmp-1-byte",
    ),
    pytest.param(
        LINKTYPE_ETHERNET,
        ethernet(ip_packet(V6_SRC, V6_DST, icmp6(129)))[:55],
        "truncated_icmp",
        id="icmpv6-1-byte",
    ),
    pytest.param(LINKTYPE_ETHERNET, GOOD_V6[:53], "truncated_ipv6", id="ipv6-39-bytes"),
    pytest.param(LINKTYPE_ETHERNET, _replace(GOOD_V6, 14, b"\x40"), "bad_ipv6_version", id="ipv6-version-4"),
    pytest.param(
        LINKTYPE_ETHERNET,
        ethernet(ipv6_packet(V6_SRC, V6_DST, 0, ipv6_options_header(17, 16)[:8])),
        "truncated_ipv6_extension",
        id="hop-by-hop-cut",
    ),
    pytest.param(
        LINKTYPE_ETHERNET,
        ethernet(ipv6_packet(V6_SRC, V6_DST, 60, ipv6_options_header(17)[:7])),
        "truncated_ipv6_extension",
        id="destination-options-7-bytes",
    ),
    pytest.param(
        LINKTYPE_ETHERNET,
        ethernet(ipv6_packet(V6_SRC, V6_DST, 44, ipv6_fragment_header(17)[:6])),
        "truncated_ipv6_extension",
        id="fragment-header-6-bytes",
    ),
    pytest.param(
        LINKTYPE_ETHERNET,
        ethernet(
            ipv6_packet(V6_SRC, V6_DST, 0, ipv6_options_header(17, 16) + bytes(udp(1, 2)), payload_length=8)
        ),
        "truncated_ipv6_extension",
        id="payload-length-ends-in-extension",
    ),
    pytest.param(
        LINKTYPE_ETHERNET,
        ethernet(
            ipv6_packet(V6_SRC, V6_DST, 0, ipv6_options_header(17) + bytes(udp(1, 2)), payload_length=10)
        ),
        "truncated_udp",
        id="payload-length-ends-in-ports",
    ),
]


@pytest.mark.parametrize(("link_type", "frame", "reason"), MALFORMED)
def test_malformed_packets_are_counted_by_reason(link_type: int, frame: bytes, reason: str) -> None:
    events, counters = decode([frame], link_type)
    assert events == []
    assert counters == {f"dropped.malformed.{reason}": 1}


def test_mixed_batch_keeps_good_packets_in_order_and_counts_the_rest() -> None:
    frames = [
        tcp_frame(V4_SRC, V4_DST, 1000, 80),
        GOOD_V4[:10],
        ethernet(bytes(28), ethertype=ETHERTYPE_ARP),
        udp_frame(V6_SRC, V6_DST, 2000, 53),
        GOOD_V4[:36],
        GOOD_V4[:10],
        _replace(GOOD_V4, 14, b"\x35"),
        ethernet(ip_packet(V4_SRC, V4_DST, icmp(8)), vlans=[20]),
    ]
    events, counters = decode(frames)
    assert [endpoints(event) for event in events] == [
        (V4_SRC, 1000, V4_DST, 80, "tcp", "ipv4"),
        (V6_SRC, 2000, V6_DST, 53, "udp", "ipv6"),
        (V4_SRC, None, V4_DST, None, "icmp", "ipv4"),
    ]
    assert [event["@timestamp"] for event in events] == [
        "2023-11-14T22:13:20.123Z",
        "2023-11-14T22:13:23.123Z",
        "2023-11-14T22:13:27.123Z",
    ]
    assert counters == {
        "dropped.malformed.truncated_ethernet": 2,
        "dropped.not_ip": 1,
        "dropped.malformed.truncated_tcp": 1,
        "dropped.malformed.bad_ipv4_version": 1,
    }


SAMPLES = [
    (LINKTYPE_ETHERNET, ethernet(ip_packet(V4_SRC, V4_DST, tcp(1, 2, b"data")), vlans=[1, 2])),
    (LINKTYPE_ETHERNET, ethernet(ip_packet(V4_SRC, V4_DST, icmp(8)))),
    (
        LINKTYPE_ETHERNET,
        ethernet(
            ipv6_packet(
                V6_SRC,
                V6_DST,
                0,
                ipv6_options_header(60)
                + ipv6_options_header(44, 24)
                + ipv6_fragment_header(17)
                + bytes(udp(1, 2)),
            )
        ),
    ),
    (LINKTYPE_LINUX_SLL, linux_sll(IPV6_UDP)),
    (LINKTYPE_LINUX_SLL2, linux_sll2(IPV4_TCP)),
    (LINKTYPE_NULL, loopback(IPV6_UDP)),
    (LINKTYPE_RAW, bytes(ip_packet(V6_SRC, V6_DST, icmp6(1, 4)))),
]


@pytest.mark.parametrize(("link_type", "frame"), SAMPLES)
def test_every_truncation_is_one_event_or_one_counted_drop(link_type: int, frame: bytes) -> None:
    cuts = [frame[:length] for length in range(len(frame) + 1)]
    events, counters = decode(cuts, link_type)
    dropped = sum(counters.values())
    assert len(events) + dropped == len(cuts)
    assert all(name.startswith("dropped.malformed.") for name in counters)
    assert endpoints(events[-1]) == endpoints(decode([frame], link_type)[0][0])


@pytest.mark.parametrize(("link_type", "frame"), SAMPLES)
def test_random_corruption_never_raises(link_type: int, frame: bytes) -> None:
    generator = random.Random(frame)
    damaged = []
    for _ in range(300):
        data = bytearray(frame)
        for _ in range(generator.randint(1, 4)):
            data[generator.randrange(len(data))] = generator.randrange(256)
        damaged.append(bytes(data[: generator.randint(0, len(data))]))
    events, counters = decode(damaged, link_type, defrag={"enabled": False})  # one outcome per frame
    assert len(events) + sum(counters.values()) == len(damaged)
    events, counters = decode(damaged, link_type)  # fragments held, timed out: never raises
    assert len(events) <= len(damaged)


def test_address_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ip_module, "ADDRESS_CACHE_SIZE", 3)
    decoder = make_decoder()
    batch = PacketBatch(LINKTYPE_ETHERNET)
    sources = [f"10.0.0.{index}" for index in range(1, 8)]
    for source in sources + sources[:2]:
        frame = tcp_frame(source, "10.9.9.9", 1, 2)
        batch.append(TIMESTAMP, frame, len(frame))
    events: list[Event] = []
    decoder.decode(batch, events)
    assert [event["source"]["ip"] for event in events] == sources + sources[:2]
    assert len(decoder._addresses) <= 3


# -- PPP, HDLC, MPLS ------------------------------------------------------------------------------

LINKTYPE_PPP, LINKTYPE_PPP_HDLC, LINKTYPE_PPP_ETHER, LINKTYPE_C_HDLC = 9, 50, 51, 104
MPLS = 0x8847


def compressed_ppp(packet: dpkt.Packet) -> bytes:
    """A PPP frame without address and control bytes and with a one-byte protocol field."""
    return bytes((0x21 if isinstance(packet, dpkt.ip.IP) else 0x57,)) + bytes(packet)


def mpls(packet: dpkt.Packet, labels: int = 2) -> bytes:
    """``labels`` MPLS label stack entries (the last with the bottom-of-stack bit), then ``packet``."""
    return b"".join(
        struct.pack("!I", (16 + index) << 12 | (index == labels - 1) << 8 | 64) for index in range(labels)
    ) + bytes(packet)


@pytest.mark.parametrize(
    ("link_type", "frame"),
    [
        (LINKTYPE_PPP, ppp),
        (LINKTYPE_PPP, lambda packet: ppp(packet, framing=False)),
        (LINKTYPE_PPP, compressed_ppp),
        (LINKTYPE_PPP_HDLC, ppp),
        (LINKTYPE_PPP_HDLC, lambda packet: struct.pack("!BBH", 0x0F, 0, _ethertype(packet)) + bytes(packet)),
        (LINKTYPE_C_HDLC, lambda packet: struct.pack("!BBH", 0x8F, 0, _ethertype(packet)) + bytes(packet)),
        (LINKTYPE_PPP_ETHER, pppoe_session),
        (LINKTYPE_ETHERNET, lambda packet: ethernet(pppoe_session(packet), ethertype=0x8864)),
        (LINKTYPE_ETHERNET, lambda packet: ethernet(mpls(packet), ethertype=MPLS)),
        (LINKTYPE_ETHERNET, lambda packet: ethernet(mpls(packet, labels=1), ethertype=MPLS, vlans=[3])),
    ],
    ids=[
        "ppp",
        "ppp-unframed",
        "ppp-compressed",
        "ppp-hdlc",
        "ppp-hdlc-cisco",
        "c-hdlc",
        "ppp-ether",
        "pppoe",
        "mpls",
        "vlan-mpls",
    ],
)
def test_ppp_hdlc_and_mpls(link_type: int, frame) -> None:
    events, counters = decode([frame(IPV4_TCP), frame(IPV6_UDP)], link_type)
    assert [endpoints(event) for event in events] == EXPECTED
    assert counters == {}


def _ethertype(packet: dpkt.Packet) -> int:
    return 0x0800 if isinstance(packet, dpkt.ip.IP) else 0x86DD


@pytest.mark.parametrize(
    ("link_type", "frame", "reason"),
    [
        (LINKTYPE_PPP, ppp(bytes(20), protocol=0xC021), "not_ip"),  # LCP
        (LINKTYPE_ETHERNET, ethernet(pppoe_session(bytes(20), protocol=0x8021), ethertype=0x8864), "not_ip"),
        (LINKTYPE_PPP, b"\xff\x03\x00", "malformed.truncated_ppp"),
        (LINKTYPE_PPP_ETHER, b"\x11\x00\x00\x01", "malformed.truncated_ppp"),
        (LINKTYPE_C_HDLC, b"\x0f\x00\x08", "malformed.truncated_hdlc"),
        (LINKTYPE_ETHERNET, ethernet(b"\x00\x01\x01", ethertype=MPLS), "malformed.truncated_mpls"),
        (LINKTYPE_ETHERNET, ethernet(mpls(b"\x00" * 20, labels=1), ethertype=MPLS), "not_ip"),  # pseudowire
        (LINKTYPE_ETHERNET, ethernet(bytes(80), ethertype=MPLS), "malformed.too_many_link_headers"),
    ],
    ids=["lcp", "pppoe-ipcp", "ppp-cut", "pppoe-cut", "hdlc-cut", "mpls-cut", "mpls-not-ip", "mpls-endless"],
)
def test_ppp_and_mpls_that_are_not_ip_or_cut_are_counted(link_type: int, frame: bytes, reason: str) -> None:
    events, counters = decode([frame], link_type)
    assert (events, counters) == ([], {f"dropped.{reason}": 1})


# -- tunnels --------------------------------------------------------------------------------------

OUTER_A, OUTER_B = "10.0.0.1", "10.0.0.2"
INNER_V4 = ip_packet(V4_SRC, V4_DST, tcp(40000, 80))
INNER_V6 = ip_packet(V6_SRC, V6_DST, udp(5353, 53))


def erspan_ii(frame: bytes) -> bytes:
    """ERSPAN type II: GRE with a sequence number, the 8-byte ERSPAN header, the mirrored frame."""
    return gre(struct.pack("!II", 0x1000_0001, 0) + frame, 0x88BE, sequence=1)


def erspan_iii(frame: bytes, platform: bool = False) -> bytes:
    """ERSPAN type III: GRE with a sequence number, the 12-byte header (and the optional 8-byte
    platform subheader), the mirrored frame."""
    header = struct.pack("!IIHH", 0x2000_0001, 0, 0, 1 if platform else 0) + (bytes(8) if platform else b"")
    return gre(header + frame, 0x22EB, sequence=1)


def pptp(packet: dpkt.Packet, sequence: bool = True, ack: bool = True) -> bytes:
    """Enhanced GRE (version 1) as PPTP sends it: key (payload length, call id), optional
    sequence and acknowledgement numbers, then a PPP frame."""
    frame = ppp(packet)
    flags = 0x2001 | (0x1000 if sequence else 0) | (0x0080 if ack else 0)
    header = struct.pack("!HHHH", flags, 0x880B, len(frame), 7)
    return header + (b"\x00\x00\x00\x01" if sequence else b"") + (b"\x00\x00\x00\x00" if ack else b"") + frame


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        (ip_raw(OUTER_A, OUTER_B, 4, bytes(INNER_V4)), EXPECTED[0]),
        (ip_raw(OUTER_A, OUTER_B, 41, bytes(INNER_V6)), EXPECTED[1]),
        (ip_raw("2001:db8::a", "2001:db8::b", 4, bytes(INNER_V4)), EXPECTED[0]),
        (ip_raw(OUTER_A, OUTER_B, 47, gre(INNER_V4, 0x0800)), EXPECTED[0]),
        (ip_raw(OUTER_A, OUTER_B, 47, gre(INNER_V6, 0x86DD, key=9, sequence=3, checksum=True)), EXPECTED[1]),
        (ip_raw(OUTER_A, OUTER_B, 47, gre(ethernet(INNER_V4), 0x6558)), EXPECTED[0]),
        (ip_raw(OUTER_A, OUTER_B, 47, gre(ethernet(INNER_V4), 0x88BE)), EXPECTED[0]),  # ERSPAN type I
        (ip_raw(OUTER_A, OUTER_B, 47, erspan_ii(ethernet(INNER_V6))), EXPECTED[1]),
        (ip_raw(OUTER_A, OUTER_B, 47, erspan_iii(ethernet(INNER_V4))), EXPECTED[0]),
        (ip_raw(OUTER_A, OUTER_B, 47, erspan_iii(ethernet(INNER_V4), platform=True)), EXPECTED[0]),
        (ip_raw(OUTER_A, OUTER_B, 47, pptp(INNER_V4)), EXPECTED[0]),
        (ip_raw(OUTER_A, OUTER_B, 47, pptp(INNER_V6, sequence=False)), EXPECTED[1]),
        (ip_packet(OUTER_A, OUTER_B, udp(50000, 4789, vxlan(ethernet(INNER_V4), 5))), EXPECTED[0]),
        (
            ip_packet(
                OUTER_A,
                OUTER_B,
                udp(50000, 4789, vxlan(ethernet(ip_raw(OUTER_A, OUTER_B, 47, gre(INNER_V6, 0x86DD))), 5)),
            ),
            EXPECTED[1],
        ),
    ],
    ids=[
        "ipip",
        "6in4",
        "4in6",
        "gre",
        "gre-options",
        "gre-ethernet",
        "erspan-i",
        "erspan-ii",
        "erspan-iii",
        "erspan-iii-platform",
        "pptp",
        "pptp-no-sequence",
        "vxlan",
        "gre-in-vxlan",
    ],
)
def test_tunnels_are_decapsulated(outer: bytes | dpkt.Packet, inner: tuple) -> None:
    events, counters = decode([ethernet(outer)])
    assert [endpoints(event) for event in events] == [inner]
    assert events[0]["network"]["bytes"] == len(ethernet(outer))
    assert counters == {}


def test_vlan_tags_of_inner_ethernet_frames_follow_the_outer_ones() -> None:
    outer = ip_packet(OUTER_A, OUTER_B, udp(50000, 4789, vxlan(ethernet(INNER_V4, vlans=[30]), 5)))
    events, _ = decode([ethernet(outer, vlans=[10])])
    assert (events[0]["network"]["vlan"], events[0]["network"]["inner"]) == (
        {"id": "10"},
        {"vlan": {"id": "30"}},
    )


@pytest.mark.parametrize(
    ("outer", "transport"),
    [
        (ip_raw(OUTER_A, OUTER_B, 47, gre(INNER_V4, 0x1234)), "gre"),  # unknown payload
        (ip_raw(OUTER_A, OUTER_B, 47, b"\x40\x00\x08\x00" + bytes(INNER_V4)), "gre"),  # source routing
        (ip_raw(OUTER_A, OUTER_B, 47, b"\x00\x02\x08\x00" + bytes(INNER_V4)), "gre"),  # version 2
        (ip_raw(OUTER_A, OUTER_B, 47, gre(INNER_V4, 0x0800, key=1)[:6]), "gre"),  # cut in the options
        (ip_raw(OUTER_A, OUTER_B, 47, gre(bytes(INNER_V4)[:30], 0x0800)), "gre"),  # inner cut
        (ip_raw(OUTER_A, OUTER_B, 47, gre(bytes(20), 0x0806)), "gre"),  # ARP
        (ip_raw(OUTER_A, OUTER_B, 4, bytes(INNER_V6)), "ipv4"),  # IPv6 where IPv4 belongs
        (ip_raw(OUTER_A, OUTER_B, 41, b""), "ipv6"),
    ],
    ids=["unknown", "routing", "version-2", "options-cut", "inner-cut", "arp", "wrong-version", "empty"],
)
def test_tunnel_packets_that_cannot_be_decapsulated_stay_outer_packets(outer: bytes, transport: str) -> None:
    events, counters = decode([ethernet(outer)])
    assert [endpoints(event) for event in events] == [(OUTER_A, None, OUTER_B, None, transport, "ipv4")]
    assert counters == {}


def test_vxlan_needs_a_valid_vni_and_a_configured_port() -> None:
    inner = ethernet(INNER_V4)
    frames = [
        udp_frame(OUTER_A, OUTER_B, 50000, 4789, vxlan(inner, 5, valid=False)),
        udp_frame(OUTER_A, OUTER_B, 50000, 4789, vxlan(inner, 5)[:20]),
        udp_frame(OUTER_A, OUTER_B, 50000, 8472, vxlan(inner, 5)),
    ]
    events, _ = decode(frames)
    assert [endpoints(event)[3] for event in events] == [4789, 4789, 8472]
    decoder = make_decoder(vxlan_ports=[8472])
    batch = PacketBatch(LINKTYPE_ETHERNET, "test")
    for frame in frames:
        batch.append(TIMESTAMP, frame, len(frame))
    events = []
    decoder.decode(batch, events)
    assert [endpoints(event) for event in events] == [
        (OUTER_A, 50000, OUTER_B, 4789, "udp", "ipv4"),
        (OUTER_A, 50000, OUTER_B, 4789, "udp", "ipv4"),
        EXPECTED[0],
    ]


def test_tunnels_nested_deeper_than_the_limit_stay_the_last_tunnel_packet() -> None:
    packet = bytes(INNER_V4)
    for _ in range(ip_module.MAX_ENCAPSULATIONS + 1):
        packet = ip_raw(OUTER_A, OUTER_B, 4, packet)
    events, _ = decode([ethernet(packet)])
    assert [endpoints(event) for event in events] == [(OUTER_A, None, OUTER_B, None, "ipv4", "ipv4")]


# -- forwarding to the next decoder ---------------------------------------------------------------


def forward(
    frames: list[bytes], wire_lengths: list[int] | None = None, **options: object
) -> tuple[list, list[Event], dict[str, int]]:
    """Decode ``frames`` with a decoder following the ``ip`` decoder: forwarded packets, events,
    counters."""
    decoder = make_decoder(**options)
    decoder.downstream = True
    batch = PacketBatch(LINKTYPE_ETHERNET, "test")
    for index, frame in enumerate(frames):
        batch.append(TIMESTAMP + index, frame, len(frame) if wire_lengths is None else wire_lengths[index])
    events: list[Event] = []
    forwarded = decoder.decode(batch, events) or []
    return forwarded, events, decoder.context.counters.values


def test_tcp_udp_and_icmp_packets_are_forwarded_with_their_flow() -> None:
    frames = [
        tcp_frame(V4_SRC, V4_DST, 40000, 80, flags=dpkt.tcp.TH_SYN, seq=7),
        tcp_frame(V4_DST, V4_SRC, 80, 40000, flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, seq=99, ack=8),
        tcp_frame(
            V4_SRC, V4_DST, 40000, 80, b"hello", flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, seq=8, ack=100
        ),
        udp_frame(V6_SRC, V6_DST, 5353, 53, b"query"),
        ethernet(ip_packet(V4_SRC, V4_DST, icmp(8))),
    ]
    forwarded, events, counters = forward(frames)
    assert events == []  # no per-packet events; flow records are off in these tests
    assert [(packet[:1], packet[2:]) for packet in forwarded] == [
        ((TIMESTAMP,), (True, b"", 0, 0x02, 7, 0, 65535)),
        ((TIMESTAMP + 1,), (False, b"", 0, 0x12, 99, 8, 65535)),
        ((TIMESTAMP + 2,), (True, b"hello", 0, 0x18, 8, 100, 65535)),
        ((TIMESTAMP + 3,), (True, b"query", 0, 0, 0, 0, 0)),
        ((TIMESTAMP + 4,), (True, bytes(icmp(8)), 0, 0, 0, 0, 0)),  # from the ICMP header on
    ]
    tcp_flow, udp_flow = forwarded[0].flow, forwarded[3].flow
    assert forwarded[1].flow is tcp_flow and forwarded[2].flow is tcp_flow
    assert (tcp_flow.client_ip, tcp_flow.client_port, tcp_flow.server_ip, tcp_flow.server_port) == (
        V4_SRC,
        40000,
        V4_DST,
        80,
    )
    assert (tcp_flow.client_packets, tcp_flow.server_packets, tcp_flow.protocol, tcp_flow.network_type) == (
        2,
        1,
        6,
        "ipv4",
    )
    assert (udp_flow.client_ip, udp_flow.client_port, udp_flow.protocol) == (V6_SRC, 5353, 17)
    assert tcp_flow.id and tcp_flow.community_id.startswith("1:")
    assert counters == {"flows": 3}


def test_forwarded_payload_ends_with_the_ip_packet_not_the_frame() -> None:
    padded = tcp_frame(V4_SRC, V4_DST, 40000, 80, b"ab", flags=dpkt.tcp.TH_ACK) + bytes(6)  # Ethernet padding
    udp_padded = udp_frame(V4_SRC, V4_DST, 5000, 53, b"xyz") + bytes(10)
    forwarded, _, _ = forward([padded, udp_padded])
    assert [(packet.payload, packet.missing) for packet in forwarded] == [(b"ab", 0), (b"xyz", 0)]


def test_bytes_cut_by_the_snapshot_length_are_missing() -> None:
    tcp_packet = tcp_frame(V4_SRC, V4_DST, 40000, 80, b"0123456789", flags=dpkt.tcp.TH_ACK)
    udp_packet = udp_frame(V6_SRC, V6_DST, 5000, 53, b"0123456789")
    forwarded, _, _ = forward([tcp_packet[:58], udp_packet[:66]], [len(tcp_packet), len(udp_packet)])
    assert [(packet.payload, packet.missing) for packet in forwarded] == [(b"0123", 6), (b"0123", 6)]


def test_tcp_options_are_skipped_and_udp_length_bounds_the_payload() -> None:
    segment = tcp(40000, 80, b"data", flags=dpkt.tcp.TH_ACK)
    segment.opts = b"\x02\x04\x05\xb4\x01\x01\x04\x02"  # MSS, NOP, NOP, SACK permitted
    segment.off = 7
    datagram = bytearray(bytes(ip_packet(V4_SRC, V4_DST, udp(5000, 53, b"abcdef"))))
    struct.pack_into("!H", datagram, 24, 8 + 4)  # a UDP length shorter than the IP payload
    forwarded, _, _ = forward([ethernet(ip_packet(V4_SRC, V4_DST, segment)), ethernet(bytes(datagram))])
    assert [packet.payload for packet in forwarded] == [b"data", b"abcd"]


def test_packets_that_cannot_be_forwarded_are_counted_but_still_in_their_flow() -> None:
    whole = tcp_frame(V4_SRC, V4_DST, 40000, 80, flags=dpkt.tcp.TH_ACK)
    bad_offset = bytearray(whole)
    bad_offset[46] = 0x40  # data offset 4 words: 16 bytes, less than a TCP header
    beyond = bytearray(whole)
    beyond[46] = 0xF0  # 60 bytes of header in a 20-byte segment
    fragment = ethernet(ipv4_bytes(udp(5000, 53, b"x" * 16), mf=1))
    frames = [
        whole[:44],
        bytes(bad_offset),
        bytes(beyond),
        udp_frame(V4_SRC, V4_DST, 5000, 53)[:40],
        fragment,
    ]
    forwarded, _, counters = forward(frames, **NO_DEFRAG)
    assert forwarded == []
    assert counters == {
        "dropped.malformed.truncated_tcp": 1,
        "dropped.malformed.bad_tcp_header_length": 2,
        "dropped.malformed.truncated_udp": 1,
        "dropped.fragment": 1,
        "flows": 2,
    }


def test_timeout_must_be_positive() -> None:
    config = build_namespace(IpDecoder.options, {"flows": {"timeout": 0}})
    assert [(error.path, error.message) for error in IpDecoder.check_config(config)] == [
        (("flows", "timeout"), "must be more than 0")
    ]


# -- fuzzing: every mode, random damage -----------------------------------------------------------

FUZZ_SEEDS = [
    tcp_frame(V4_SRC, V4_DST, 40000, 80, b"data", flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_FIN, seq=5, ack=9),
    tcp_frame(V6_SRC, V6_DST, 40000, 80, flags=dpkt.tcp.TH_SYN),
    udp_frame(V4_SRC, V4_DST, 5000, 53, b"query"),
    ethernet(ip_packet(V6_SRC, V6_DST, icmp6(128))),
    ethernet(ip_raw(OUTER_A, OUTER_B, 47, erspan_ii(ethernet(INNER_V4, vlans=[4])))),
    ethernet(ip_raw(OUTER_A, OUTER_B, 47, pptp(INNER_V6))),
    udp_frame(OUTER_A, OUTER_B, 50000, 4789, vxlan(ethernet(INNER_V6), 5)),
    ethernet(pppoe_session(INNER_V4), ethertype=0x8864, vlans=[7, 8]),
    ethernet(mpls(INNER_V6), ethertype=MPLS),
    ethernet(ipv4_bytes(udp(5000, 6000, b"b" * 16), offset=3)),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(FUZZ_SEEDS),
    damage=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 250),
    downstream=st.booleans(),
    defrag=st.booleans(),
)
def test_damaged_packets_never_raise_in_any_mode(
    seed: bytes, damage: list[tuple[int, int]], cut: int, downstream: bool, defrag: bool
) -> None:
    data = bytearray(seed)
    for position, value in damage:
        data[position % len(data)] = value
    frames = [bytes(data[:cut]), bytes(data), seed]
    decoder = make_decoder(flows={"max_flows": 2, "period": "1s"}, defrag={"enabled": defrag})
    decoder.downstream = downstream
    batch = PacketBatch(LINKTYPE_ETHERNET, "test")
    for index, frame in enumerate(frames):
        batch.append(TIMESTAMP + index, frame, len(frame))
    events: list[Event] = []
    forwarded = decoder.decode(batch, events) or []
    assert len(decoder.flows.flows) <= 2
    decoder.flush(events)
    assert all(isinstance(packet.payload, bytes) and packet.missing >= 0 for packet in forwarded)
    flows = [event for event in events if event["event"]["dataset"] == "flow" and event["flow"]["final"]]
    counted = sum(event["network"]["packets"] for event in flows)
    drops = decoder.context.counters.drops()
    if defrag:  # a datagram stands for several frames; one lost counts once
        assert decoder.defrag is not None and len(decoder.defrag) == 0
        assert counted <= len(frames)
    elif downstream:
        assert len(forwarded) <= counted <= len(frames)
    else:
        assert counted == len(events) - len(flows) - sum(
            1 for event in events if event["event"]["dataset"] == "flow" and not event["flow"]["final"]
        )
        assert counted + sum(drops.values()) == len(frames)


def test_fragments_reach_the_defragmentation_hook_with_their_header_offsets() -> None:
    seen = []

    class Recording(IpDecoder):
        def _fragment(self, timestamp, frame, wire_length, decoded):
            seen.append((decoded[0], decoded[2], decoded[7]))
            return None  # held: nothing to decode yet

    first_v4 = ethernet(ipv4_bytes(udp(5000, 6000, b"a" * 16), mf=1))
    later_v4 = ethernet(ipv4_bytes(udp(5000, 6000, b"b" * 16), offset=3), vlans=[5])
    later_v6 = ethernet(
        ipv6_packet(V6_SRC, V6_DST, 0, ipv6_options_header(44) + ipv6_fragment_header(17, 8) + bytes(16))
    )
    whole = udp_frame(V4_SRC, V4_DST, 5000, 6000)
    decoder = Recording(make_decoder().config, StageContext("ip", Counters("ip", "decoder")))
    batch = PacketBatch(LINKTYPE_ETHERNET, "test")
    for frame in (first_v4, later_v4, later_v6, whole):
        batch.append(TIMESTAMP, frame, len(frame))
    events: list[Event] = []
    decoder.decode(batch, events)
    assert seen == [("ipv4", 34, 14), ("ipv4", -1, 18), ("ipv6", -1, 62)]
    assert [endpoints(event) for event in events] == [(V4_SRC, 5000, V4_DST, 6000, "udp", "ipv4")]
