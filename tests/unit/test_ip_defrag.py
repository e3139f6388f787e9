"""Defragmentation in the ``ip`` decoder, on fragments crafted with dpkt: reassembled datagrams
forwarded whole and counted in their flow, one event per datagram, losses and caps counted."""

from __future__ import annotations

from typing import Any

from captures import LINKTYPE_ETHERNET, ethernet, ip_fragment, tcp, udp

from flowpipe import PacketBatch, StageContext
from flowpipe.event import Event
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.decoders.ip import IpDecoder
from flowpipe.plugins.decoders.transport import TransportPacket

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
V4_SRC, V4_DST = "192.0.2.1", "198.51.100.2"
V6_SRC, V6_DST = "2001:db8::1", "2001:db8:0:1::2"
DATA = bytes(range(256)) * 4 + b"tail"  # 1028 bytes
UDP_DATAGRAM = bytes(udp(5353, 53, DATA))  # 1036 bytes: pieces 0-512, 512-1024, 1024-1036


def make_decoder(downstream: bool = True, **options: Any) -> IpDecoder:
    """An ``ip`` decoder built as the pipeline builds it; ``downstream``: a decoder follows."""
    assert validate_options(IpDecoder.options, options) == []
    config = build_namespace(IpDecoder.options, options)
    assert IpDecoder.check_config(config) == []
    decoder = IpDecoder(config, StageContext("ip", Counters("ip", "decoder")))
    decoder.downstream = downstream
    return decoder


def feed(decoder: IpDecoder, packets: list[tuple[float, bytes]]) -> tuple[list[Event], list[TransportPacket]]:
    """Decode ``packets`` as one batch: the events and the forwarded packets."""
    batch = PacketBatch(LINKTYPE_ETHERNET, "test")
    for timestamp, frame in packets:
        batch.append(timestamp, frame, len(frame))
    events: list[Event] = []
    forwarded = decoder.decode(batch, events) or []
    return events, forwarded


def udp_fragments(pieces: list[tuple[int, int]], src: str = V4_SRC, dst: str = V4_DST) -> list[bytes]:
    """Ethernet frames of :data:`UDP_DATAGRAM`'s bytes ``start:stop`` for each piece (MF set but on
    the piece that ends the datagram)."""
    return [
        ethernet(ip_fragment(src, dst, 17, UDP_DATAGRAM[start:stop], start, stop < len(UDP_DATAGRAM), 77))
        for start, stop in pieces
    ]


def flow_counts(decoder: IpDecoder) -> list[tuple[str, int, str, int, int, int, int, int]]:
    """(client, client port, server, server port, client packets/bytes, server packets/bytes) per flow."""
    return [
        (
            flow.client_ip,
            flow.client_port,
            flow.server_ip,
            flow.server_port,
            flow.client_packets,
            flow.client_bytes,
            flow.server_packets,
            flow.server_bytes,
        )
        for flow in decoder.flows.flows.values()
    ]


def test_ipv4_udp_in_three_fragments_out_of_order_is_forwarded_whole() -> None:
    middle, last, first = udp_fragments([(512, 1024), (1024, 1036), (0, 512)])
    decoder = make_decoder()
    _, forwarded = feed(decoder, [(T0, middle), (T0 + 0.1, last), (T0 + 0.2, first)])
    [packet] = forwarded
    assert (packet.timestamp, packet.from_client, packet.payload, packet.missing) == (T0 + 0.2, True, DATA, 0)
    assert (packet.flow.client_port, packet.flow.server_port) == (5353, 53)
    total = len(middle) + len(last) + len(first)
    assert total == 546 + 46 + 546
    assert flow_counts(decoder) == [(V4_SRC, 5353, V4_DST, 53, 3, total, 0, 0)]
    assert decoder.context.counters.values == {"defrag.held": 2, "defrag.reassembled": 1, "flows": 1}


def test_ipv6_tcp_in_two_fragments() -> None:
    segment = bytes(tcp(40000, 443, b"x" * 100 + b"y" * 60, seq=1000, ack=5, flags=0x18))
    frames = [
        ethernet(ip_fragment(V6_SRC, V6_DST, 6, segment[:120], 0, True, 0xDEADBEEF)),
        ethernet(ip_fragment(V6_SRC, V6_DST, 6, segment[120:], 120, False, 0xDEADBEEF)),
    ]
    decoder = make_decoder()
    _, forwarded = feed(decoder, [(T0, frames[0]), (T0 + 0.5, frames[1])])
    [packet] = forwarded
    assert (packet.payload, packet.flags, packet.seq, packet.ack, packet.missing) == (
        b"x" * 100 + b"y" * 60,
        0x18,
        1000,
        5,
        0,
    )
    assert (packet.flow.protocol, packet.flow.network_type) == (6, "ipv6")
    assert flow_counts(decoder) == [(V6_SRC, 40000, V6_DST, 443, 2, len(frames[0]) + len(frames[1]), 0, 0)]


def test_overlapping_fragments_first_copy_wins() -> None:
    datagram = bytes(udp(1000, 2000, b"A" * 24))  # 32 bytes
    forged = bytes(udp(1000, 2000, b"A" * 8 + b"B" * 16))[16:]  # bytes 16-32, half of it different
    frames = [
        ethernet(ip_fragment(V4_SRC, V4_DST, 17, datagram[:24], 0, True, 5)),
        ethernet(ip_fragment(V4_SRC, V4_DST, 17, forged, 16, True, 5)),  # overlaps bytes 16-24
        ethernet(ip_fragment(V4_SRC, V4_DST, 17, datagram[24:], 24, False, 5)),  # overlaps the forged tail
    ]
    decoder = make_decoder()
    _, forwarded = feed(decoder, [(T0 + index, frame) for index, frame in enumerate(frames)])
    [packet] = forwarded
    assert packet.payload == b"A" * 16 + b"B" * 8
    assert decoder.context.counters.values == {
        "defrag.held": 2,
        "defrag.overlap": 2,
        "defrag.reassembled": 1,
        "flows": 1,
    }


def test_missing_fragment_times_out_through_advance() -> None:
    first, last = udp_fragments([(0, 512), (1024, 1036)])
    decoder = make_decoder(defrag={"timeout": "10s"})
    events, forwarded = feed(decoder, [(T0, first), (T0 + 1, last)])
    assert forwarded == []
    assert len(decoder.defrag) == 1
    decoder.advance(T0 + 10, events)
    assert "dropped.defrag.timeout" not in decoder.context.counters.values
    decoder.advance(T0 + 10.5, events)
    assert decoder.context.counters.values == {"defrag.held": 2, "dropped.defrag.timeout": 1}
    assert (len(decoder.defrag), decoder.defrag.held_bytes, decoder._pending) == (0, 0, {})


def test_missing_fragment_is_dropped_at_end_of_input() -> None:
    first, middle = udp_fragments([(0, 512), (512, 1024)])
    decoder = make_decoder()
    events, forwarded = feed(decoder, [(T0, first), (T0 + 1, middle)])
    decoder.flush(events)
    assert forwarded == []
    assert decoder.context.counters.drops() == {"defrag.timeout": 1}
    assert decoder.context.counters.get("defrag.held") == 2


def test_capture_time_expires_datagrams_in_a_later_batch() -> None:
    [first] = udp_fragments([(0, 512)])
    decoder = make_decoder(defrag={"timeout": "5s"})
    feed(decoder, [(T0, first)])
    feed(decoder, [(T0 + 6, udp_fragments([(0, 512)], src="192.0.2.9")[0])])
    assert decoder.context.counters.values["dropped.defrag.timeout"] == 1
    assert len(decoder.defrag) == 1


def test_too_many_fragments_drops_the_datagram() -> None:
    frames = udp_fragments([(0, 512), (512, 1024), (1024, 1036)])
    decoder = make_decoder(defrag={"max_fragments": 2})
    _, forwarded = feed(decoder, [(T0 + index, frame) for index, frame in enumerate(frames)])
    assert forwarded == []
    assert decoder.context.counters.values == {"defrag.held": 2, "dropped.defrag.too_many_fragments": 1}
    assert (len(decoder.defrag), decoder._pending) == (0, {})


def test_too_many_datagrams_evicts_the_oldest() -> None:
    first_a = udp_fragments([(0, 512)], src="192.0.2.10")[0]
    first_b, last_b = udp_fragments([(0, 512), (512, 1036)], src="192.0.2.11")
    last_a = udp_fragments([(512, 1036)], src="192.0.2.10")[0]
    decoder = make_decoder(defrag={"max_datagrams": 1})
    _, forwarded = feed(decoder, [(T0, first_a), (T0 + 1, first_b), (T0 + 2, last_b), (T0 + 3, last_a)])
    assert [packet.flow.client_ip for packet in forwarded] == ["192.0.2.11"]
    assert decoder.context.counters.drops() == {"defrag.too_many_datagrams": 1}
    assert [entry[:2] for entry in decoder._pending.values()] == [[1, len(last_a)]]  # A's tail, alone


def test_ip_decoder_last_makes_one_event_per_datagram() -> None:
    frames = udp_fragments([(0, 512), (1024, 1036), (512, 1024)])
    decoder = make_decoder(downstream=False, flows={"enabled": False})
    events, _ = feed(decoder, [(T0 + index, frame) for index, frame in enumerate(frames)])
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:22.000Z",
            "event": {"kind": "event", "category": ["network"], "dataset": "packet"},
            "network": {"type": "ipv4", "transport": "udp", "iana_number": "17", "bytes": 1138, "packets": 3},
            "source": {"ip": V4_SRC, "port": 5353},
            "destination": {"ip": V4_DST, "port": 53},
        }
    ]
    assert decoder.context.counters.values == {"defrag.held": 2, "defrag.reassembled": 1}


def test_ipv4_datagram_longer_than_65535_bytes_is_dropped() -> None:
    payload = bytes(65532)
    frames = [
        ethernet(ip_fragment(V4_SRC, V4_DST, 17, payload[:65512], 0, True, 9)),
        ethernet(ip_fragment(V4_SRC, V4_DST, 17, payload[65512:], 65512, False, 9)),
    ]
    decoder = make_decoder()
    _, forwarded = feed(decoder, [(T0, frames[0]), (T0 + 1, frames[1])])
    assert forwarded == []
    assert decoder.context.counters.drops() == {"malformed.fragment_too_long": 1}


def test_malformed_fragment_is_dropped_alone() -> None:
    first, middle, last = udp_fragments([(0, 512), (512, 1024), (1024, 1036)])
    odd = ethernet(ip_fragment(V4_SRC, V4_DST, 17, bytes(13), 512, True, 77))  # not a multiple of 8
    decoder = make_decoder()
    _, forwarded = feed(decoder, [(T0, first), (T0 + 1, odd), (T0 + 2, middle), (T0 + 3, last)])
    assert [packet.payload for packet in forwarded] == [DATA]
    assert decoder.context.counters.drops() == {"malformed.fragment_bad_length": 1}


def test_disabled_defragmentation_keeps_fragments_as_they_stand() -> None:
    frames = udp_fragments([(0, 512), (512, 1024), (1024, 1036)])
    decoder = make_decoder(defrag={"enabled": False})
    _, forwarded = feed(decoder, [(T0 + index, frame) for index, frame in enumerate(frames)])
    assert forwarded == []
    assert decoder.defrag is None
    assert decoder.context.counters.values == {"dropped.fragment": 3, "flows": 2}
    assert flow_counts(decoder) == [
        (V4_SRC, 5353, V4_DST, 53, 1, 546, 0, 0),
        (V4_SRC, 0, V4_DST, 0, 2, 546 + 46, 0, 0),
    ]


def test_max_bytes_below_128kib_is_refused() -> None:
    config = build_namespace(IpDecoder.options, {"defrag": {"max_bytes": "64KiB", "timeout": 0}})
    assert [(error.path, error.message) for error in IpDecoder.check_config(config)] == [
        (("defrag", "timeout"), "must be more than 0"),
        (("defrag", "max_bytes"), "must be at least 128KiB (131072 bytes), got 65536"),
    ]


def test_held_fragment_accounting_stays_bounded_by_max_datagrams() -> None:
    frames = [
        ethernet(ip_fragment(V4_SRC, V4_DST, 17, UDP_DATAGRAM[:512], 0, True, identification))
        for identification in range(50)
    ]
    decoder = make_decoder(defrag={"max_datagrams": 3})
    feed(decoder, [(T0, frame) for frame in frames])
    assert len(decoder.defrag) == 3
    assert len(decoder._pending) <= 6
    assert decoder.context.counters.drops() == {"defrag.too_many_datagrams": 47}
    assert decoder.defrag.held_bytes <= decoder.defrag.max_bytes
