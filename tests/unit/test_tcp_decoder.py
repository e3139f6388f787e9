"""The ``tcp`` decoder on exact packet sequences: handshakes, mid-stream pickup, FIN and RST,
holes, caps, timeouts on capture time, eviction, reused 5-tuples, UDP; every expected stream
event spelled out. Property tests (hypothesis) check reassembly of shuffled, repeated and lost
segments and that random garbage never raises or holds more than the caps allow."""

from __future__ import annotations

import random
from collections import OrderedDict
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowpipe import StageContext
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.decoders.seq import MASK
from flowpipe.plugins.decoders.tcp import TcpDecoder
from flowpipe.plugins.decoders.transport import (
    ACK_FLAG,
    CLOSED,
    DATA,
    DATAGRAM,
    FIN,
    FIN_FLAG,
    GAP,
    PSH_FLAG,
    RST_FLAG,
    SYN_FLAG,
    Flow,
    StreamEvent,
    TransportPacket,
)
from flowpipe.registry import Registry

T0 = 1_700_000_000.0
CLIENT_ISN = 1000
SERVER_ISN = 3_000_000_000
KINDS = {DATA: "data", GAP: "gap", FIN: "fin", CLOSED: "closed", DATAGRAM: "datagram"}


def make_decoder(**options: Any) -> TcpDecoder:
    """A ``tcp`` decoder built as the pipeline builds it: validated options and a context."""
    config = build_namespace(TcpDecoder.all_options(), options)
    return TcpDecoder(config, StageContext("tcp", Counters("tcp", "decoder")))


def make_flow(client_port: int = 40000, protocol: int = 6) -> Flow:
    return Flow(
        ("flow", client_port, protocol), protocol, "ipv4", "192.0.2.1", client_port, "198.51.100.2", 80, T0
    )


class Talk:
    """Packets of one TCP connection. Positions are offsets from each side's first data byte
    (the byte after its SYN); ``ack`` is an offset into the other side's data."""

    def __init__(self, flow: Flow, client_isn: int = CLIENT_ISN, server_isn: int = SERVER_ISN) -> None:
        self.flow = flow
        self.isn = {True: client_isn, False: server_isn}

    def seq(self, from_client: bool, offset: int) -> int:
        return (self.isn[from_client] + 1 + offset) & MASK

    def packet(
        self,
        from_client: bool,
        offset: int,
        data: bytes = b"",
        *,
        flags: int = ACK_FLAG,
        ack: int | None = None,
        t: float = 0.0,
        missing: int = 0,
        window: int = 65535,
    ) -> TransportPacket:
        seq = self.isn[from_client] if flags & SYN_FLAG else self.seq(from_client, offset)
        ack_number = 0 if ack is None else self.seq(not from_client, ack)
        if ack is None:
            flags &= ~ACK_FLAG
        return TransportPacket(T0 + t, self.flow, from_client, data, missing, flags, seq, ack_number, window)

    def client(self, offset: int, data: bytes = b"", **fields: Any) -> TransportPacket:
        return self.packet(True, offset, data, **fields)

    def server(self, offset: int, data: bytes = b"", **fields: Any) -> TransportPacket:
        return self.packet(False, offset, data, **fields)

    def handshake(self, t: float = 0.0) -> list[TransportPacket]:
        return [
            self.client(0, flags=SYN_FLAG, t=t),
            self.server(0, flags=SYN_FLAG | ACK_FLAG, ack=0, t=t),
            self.client(0, ack=0, t=t),
        ]


def simplify(events: list[StreamEvent], flows: dict[Flow, str] | None = None) -> list[tuple]:
    """Events as tuples: (kind, side[, data | gap | reason]), side "c" or "s", prefixed with the
    flow's name when ``flows`` names them."""
    result = []
    for event in events:
        side = "c" if event.from_client else "s"
        item: tuple = (KINDS[event.kind], side)
        if event.kind == DATA:
            item += (event.data,)
        elif event.kind == GAP:
            item += (event.gap,)
        elif event.kind == CLOSED:
            item += (event.reason,)
        elif event.kind == DATAGRAM:
            item += (event.data, event.gap)
        result.append((flows[event.flow], *item) if flows else item)
    return result


def counters(decoder: TcpDecoder) -> dict[str, int]:
    return dict(decoder.context.counters.values)


# Registration


def test_registered_as_the_decoder_after_ip() -> None:
    registry = Registry.default()
    info = registry.get("decoder", "tcp")
    assert info is not None and info.cls is TcpDecoder
    assert (TcpDecoder.consumes, TcpDecoder.produces, TcpDecoder.default_order) == ("transport", "stream", 20)


def test_options_and_their_checks() -> None:
    config = build_namespace(TcpDecoder.all_options(), {})
    assert (
        config.max_stream_bytes,
        config.max_segments,
        config.max_memory,
        config.max_connections,
        config.connection_timeout,
    ) == (4 * 1024**2, 4096, 256 * 1024**2, 100_000, 60.0)
    assert TcpDecoder.check_config(config) == []
    errors = TcpDecoder.check_config(build_namespace(TcpDecoder.all_options(), {"connection_timeout": 0}))
    assert [(error.message, error.path) for error in errors] == [
        ("must be more than 0", ("connection_timeout",))
    ]
    assert [error.path for error in validate_options(TcpDecoder.all_options(), {"max_segments": -1})] == [
        ("max_segments",)
    ]


# Connections from start to end


def test_handshake_data_and_fin_both_ways() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, b"GET / HTTP/1.1\r\n\r\n", flags=ACK_FLAG | PSH_FLAG, ack=0, t=0.1),
        talk.server(0, b"HTTP/1.1 200 OK\r\n", ack=18, t=0.2),
        talk.server(17, b"\r\nbody", ack=18, t=0.2),
        talk.client(18, flags=FIN_FLAG | ACK_FLAG, ack=23, t=0.3),
        talk.server(23, flags=FIN_FLAG | ACK_FLAG, ack=19, t=0.4),
    ]
    events = decoder.decode(packets, [])
    assert simplify(events) == [
        ("data", "c", b"GET / HTTP/1.1\r\n\r\n"),
        ("data", "s", b"HTTP/1.1 200 OK\r\n"),
        ("data", "s", b"\r\nbody"),
        ("fin", "c"),
        ("fin", "s"),
        ("closed", "s", "fin"),
    ]
    assert [round(event.timestamp - T0, 3) for event in events] == [0.1, 0.2, 0.2, 0.3, 0.4, 0.4]
    assert all(event.flow is talk.flow for event in events)
    # The last ACK and a retransmitted FIN come after the close: counted, nothing forwarded.
    late = [talk.client(19, ack=24, t=0.5), talk.server(23, flags=FIN_FLAG | ACK_FLAG, ack=19, t=0.6)]
    assert decoder.decode(late, []) == []
    assert counters(decoder) == {"closed.fin": 1, "after_close": 2}
    assert decoder.flush([]) == []


def test_half_close_then_data_the_other_way() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, b"quit", ack=0),
        talk.client(4, flags=FIN_FLAG | ACK_FLAG, ack=0),
        talk.server(0, b"bye ", ack=5),
        talk.server(4, b"now", ack=5),
        talk.server(7, flags=FIN_FLAG | ACK_FLAG, ack=5),
        talk.client(5, ack=8),
    ]
    assert simplify(decoder.decode(packets, [])) == [
        ("data", "c", b"quit"),
        ("fin", "c"),
        ("data", "s", b"bye "),
        ("data", "s", b"now"),
        ("fin", "s"),
        ("closed", "s", "fin"),
    ]


def test_fin_with_data_and_fin_before_its_data() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(4, b"tail", flags=FIN_FLAG | ACK_FLAG, ack=0),  # overtook "head"
        talk.client(0, b"head", ack=0),
        talk.server(0, b"ok", flags=FIN_FLAG | ACK_FLAG, ack=9),
    ]
    assert simplify(decoder.decode(packets, [])) == [
        ("data", "c", b"head"),
        ("data", "c", b"tail"),
        ("fin", "c"),
        ("data", "s", b"ok"),
        ("fin", "s"),
        ("closed", "s", "fin"),
    ]


def test_rst_mid_stream_delivers_held_data_after_its_hole() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, b"01234", ack=0, t=1.0),
        talk.client(10, b"ABCDE", ack=0, t=1.1),  # 5..10 lost
        talk.server(0, flags=RST_FLAG, t=1.2),
    ]
    events = decoder.decode(packets, [])
    assert simplify(events) == [
        ("data", "c", b"01234"),
        ("gap", "c", 5),
        ("data", "c", b"ABCDE"),
        ("closed", "s", "rst"),
    ]
    assert events[-1].timestamp == T0 + 1.2
    assert decoder.decode([talk.client(5, b"56789", ack=0, t=1.3), talk.server(0, flags=RST_FLAG)], []) == []
    assert counters(decoder) == {
        "out_of_order": 1,
        "gaps": 1,
        "gap_bytes": 5,
        "closed.rst": 1,
        "after_close": 2,
    }
    assert decoder.context.counters.gauges == {"connections": 0, "buffered_bytes": 0}


def test_rst_from_the_client_with_a_fin_seen() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.server(0, b"banner", ack=0),
        talk.server(6, flags=FIN_FLAG | ACK_FLAG, ack=0),
        talk.client(0, b"reset: bye", flags=RST_FLAG | ACK_FLAG, ack=7),  # data on a RST, as tshark shows it
    ]
    assert simplify(decoder.decode(packets, [])) == [
        ("data", "s", b"banner"),
        ("fin", "s"),
        ("data", "c", b"reset: bye"),
        ("closed", "c", "rst"),
    ]


def test_rst_answering_a_syn() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [talk.client(0, flags=SYN_FLAG), talk.server(0, flags=RST_FLAG | ACK_FLAG, ack=0)]
    assert simplify(decoder.decode(packets, [])) == [("closed", "s", "rst")]


# Sequence setup


def test_mid_stream_pickup_starts_at_the_first_data() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow(), client_isn=0xFFFFFF00, server_isn=77)
    packets = [
        talk.client(500, ack=900),  # a pure ACK starts nothing
        talk.server(900, b"resumed", ack=500),
        talk.server(890, b"0123456789", ack=500),  # from before the pickup: too late
        talk.client(500, b"more", ack=907),
        talk.server(907, b"!", ack=504),
    ]
    assert simplify(decoder.decode(packets, [])) == [
        ("data", "s", b"resumed"),
        ("data", "c", b"more"),
        ("data", "s", b"!"),
    ]
    assert counters(decoder) == {"retransmissions": 1}


def test_syn_ack_sets_the_client_start_when_the_syn_was_missed() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        talk.server(0, flags=SYN_FLAG | ACK_FLAG, ack=0),
        talk.client(5, b"world", ack=0),  # overtook "hello": held, not a mid-stream start
        talk.client(0, b"hello", ack=0),
    ]
    assert simplify(decoder.decode(packets, [])) == [("data", "c", b"hello"), ("data", "c", b"world")]


def test_syn_retransmissions_and_a_conflicting_syn() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    other_isn = Talk(talk.flow, client_isn=555)
    packets = [
        talk.client(0, flags=SYN_FLAG),
        talk.client(0, flags=SYN_FLAG, t=1.0),
        talk.server(0, flags=SYN_FLAG | ACK_FLAG, ack=0, t=1.0),
        talk.server(0, flags=SYN_FLAG | ACK_FLAG, ack=0, t=1.1),
        talk.client(0, ack=0, t=1.1),
        talk.client(0, b"data", ack=0, t=1.2),
        other_isn.client(0, b"evil", flags=SYN_FLAG, t=1.3),
        talk.client(4, b"more", ack=0, t=1.4),
    ]
    assert simplify(decoder.decode(packets, [])) == [("data", "c", b"data"), ("data", "c", b"more")]
    assert counters(decoder) == {"unexpected_syn": 1}


def test_data_on_a_syn_is_payload() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        talk.client(0, b"early", flags=SYN_FLAG),  # TCP Fast Open
        talk.server(0, flags=SYN_FLAG | ACK_FLAG, ack=5),
        talk.client(0, b"early", flags=SYN_FLAG),  # retransmitted SYN with its data
        talk.client(5, b" bird", ack=0),
    ]
    assert simplify(decoder.decode(packets, [])) == [("data", "c", b"early"), ("data", "c", b" bird")]
    assert counters(decoder) == {"retransmissions": 1}


def test_sequence_wrap_around_with_out_of_order_segments() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow(), client_isn=MASK - 6)  # the client's data crosses 2**32 at offset 6
    packets = [
        *talk.handshake(),
        talk.client(8, b"IJKL", ack=0),
        talk.client(4, b"efgh", ack=0),  # 0xFFFFFFFC..: across the wrap
        talk.client(0, b"abcd", ack=0),
        talk.client(12, b"m", ack=0),
    ]
    assert talk.seq(True, 4) == MASK - 1 and talk.seq(True, 8) == 2
    assert simplify(decoder.decode(packets, [])) == [
        ("data", "c", b"abcd"),
        ("data", "c", b"efgh"),
        ("data", "c", b"IJKL"),
        ("data", "c", b"m"),
    ]


# Probes and keep-alives


def test_zero_window_probe() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, b"abc", ack=0),
        talk.server(0, ack=3, window=0),  # the receiver's window is full
        talk.client(3, b"d", ack=0),  # probe: the next byte
        talk.server(0, ack=3, window=0),  # not taken
        talk.server(0, ack=3, window=4096),
        talk.client(3, b"defg", ack=0),  # sent again with more
    ]
    assert simplify(decoder.decode(packets, [])) == [
        ("data", "c", b"abc"),
        ("data", "c", b"d"),
        ("data", "c", b"efg"),
    ]
    assert counters(decoder) == {"overlaps": 1}


def test_keepalives_are_not_data() -> None:
    decoder = make_decoder(connection_timeout="1h")
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, b"abc", ack=0),
        talk.client(2, ack=0, t=60.0),  # zero bytes at seq - 1
        talk.server(0, ack=3, t=60.0),
        talk.client(2, b"\x00", ack=0, t=120.0),  # one garbage byte at seq - 1
        talk.server(0, ack=3, t=120.0),
        talk.client(3, b"d", ack=0, t=120.5),
    ]
    assert simplify(decoder.decode(packets, [])) == [("data", "c", b"abc"), ("data", "c", b"d")]
    assert counters(decoder) == {"keepalives": 2}


def test_a_connection_that_only_shook_hands_holds_no_stream_until_data_comes() -> None:
    decoder = make_decoder(connection_timeout="1h")
    flow = make_flow()
    talk = Talk(flow)
    decoder.decode([*talk.handshake(), talk.server(-1, ack=0, t=30.0)], [])  # a server keep-alive
    connection = decoder._connections[flow]
    assert (connection.client, connection.server) == (None, None)
    assert (connection.client_seq, connection.server_seq) == (talk.seq(True, 0), talk.seq(False, 0))
    assert counters(decoder) == {"keepalives": 1}
    assert simplify(decoder.decode([talk.client(0, b"GET", ack=0, t=31.0)], [])) == [("data", "c", b"GET")]
    assert connection.client is not None and connection.server is None
    assert (connection.client.seq, connection.client.offset) == (talk.seq(True, 3), 3)
    events = decoder.decode([talk.server(0, b"OK", ack=3, t=31.5), talk.server(2, b"!", ack=3, t=31.6)], [])
    assert simplify(events) == [("data", "s", b"OK"), ("data", "s", b"!")]


# Holes


def test_gap_declared_by_the_other_side_acknowledging_beyond_it() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, b"aaaa", ack=0, t=1.0),
        talk.client(8, b"cccc", ack=0, t=1.1),  # 4..8 never captured
        talk.server(0, ack=4, t=1.2),  # duplicate ACK: the hole may still fill
        talk.server(0, ack=12, t=1.3),  # the server got it all
        talk.client(12, b"dddd", ack=0, t=1.4),
    ]
    events = decoder.decode(packets, [])
    assert simplify(events) == [
        ("data", "c", b"aaaa"),
        ("gap", "c", 4),
        ("data", "c", b"cccc"),
        ("data", "c", b"dddd"),
    ]
    assert [round(event.timestamp - T0, 3) for event in events] == [1.0, 1.3, 1.3, 1.4]
    assert counters(decoder) == {"out_of_order": 1, "gaps": 1, "gap_bytes": 4}


def test_snapshot_cut_segments_become_gaps() -> None:
    decoder = make_decoder()
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, b"GET", ack=0, missing=97),
        talk.client(100, b"", ack=0, missing=50),
        talk.server(0, b"ok", ack=150),
    ]
    assert simplify(decoder.decode(packets, [])) == [
        ("data", "c", b"GET"),
        ("gap", "c", 97),
        ("gap", "c", 50),
        ("data", "s", b"ok"),
    ]
    assert counters(decoder) == {"truncated": 2, "gaps": 2, "gap_bytes": 147}


def test_cap_gives_up_a_hole_with_its_counter() -> None:
    decoder = make_decoder(max_segments=2, max_stream_bytes="1KiB")
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, b"a", ack=0),
        talk.client(2, b"c", ack=0),
        talk.client(4, b"e", ack=0),
        talk.client(6, b"g", ack=0),
        talk.client(8, b"x" * 1025, ack=0),
    ]
    assert simplify(decoder.decode(packets, [])) == [
        ("data", "c", b"a"),
        ("gap", "c", 1),
        ("data", "c", b"c"),
        ("gap", "c", 1),
        ("data", "c", b"e"),
        ("gap", "c", 1),
        ("data", "c", b"g"),
        ("gap", "c", 1),
        ("data", "c", b"x" * 1025),
    ]
    assert counters(decoder) == {
        "out_of_order": 3,
        "dropped.max_segments": 2,
        "dropped.max_stream_bytes": 2,
        "gaps": 4,
        "gap_bytes": 4,
    }
    assert decoder.context.counters.gauges == {"connections": 1, "buffered_bytes": 0}


def test_max_memory_across_connections() -> None:
    decoder = make_decoder(max_memory=10)
    first, second = Talk(make_flow(40001)), Talk(make_flow(40002))
    names = {first.flow: "1", second.flow: "2"}
    packets = [
        *first.handshake(),
        *second.handshake(),
        first.client(2, b"345678", ack=0),
        second.client(2, b"cd", ack=0),
        second.client(6, b"gh", ack=0),  # 10 bytes held: fits
        second.client(9, b"j", ack=0),  # 11: the second connection gives up its first hole
    ]
    assert simplify(decoder.decode(packets, []), names) == [("2", "gap", "c", 2), ("2", "data", "c", b"cd")]
    assert decoder.context.counters.gauges == {"connections": 2, "buffered_bytes": 9}
    assert counters(decoder)["dropped.max_memory"] == 1
    assert simplify(decoder.flush([]), names) == [
        ("1", "gap", "c", 2),
        ("1", "data", "c", b"345678"),
        ("1", "closed", "c", "end_of_input"),
        ("2", "gap", "c", 2),
        ("2", "data", "c", b"gh"),
        ("2", "gap", "c", 1),
        ("2", "data", "c", b"j"),
        ("2", "closed", "c", "end_of_input"),
    ]
    assert decoder.context.counters.gauges == {"connections": 0, "buffered_bytes": 0}


# Connection table: reuse, timeouts, eviction, end of input


def test_connection_reused_after_close_is_a_new_flow() -> None:
    decoder = make_decoder()
    old, new = make_flow(), make_flow()  # the same 5-tuple: the ip decoder starts a new Flow
    first, second = Talk(old), Talk(new, client_isn=70_000, server_isn=80_000)
    names = {old: "old", new: "new"}
    packets = [
        *first.handshake(),
        first.client(0, b"one", ack=0),
        first.client(3, flags=FIN_FLAG | ACK_FLAG, ack=0),
        first.server(0, flags=FIN_FLAG | ACK_FLAG, ack=4),
        first.client(4, ack=1),
        *second.handshake(t=1.0),
        second.client(0, b"two", ack=0, t=1.1),
        first.server(0, flags=FIN_FLAG | ACK_FLAG, ack=4, t=1.2),  # late retransmission on the old flow
        second.client(3, flags=RST_FLAG, t=1.3),
    ]
    assert simplify(decoder.decode(packets, []), names) == [
        ("old", "data", "c", b"one"),
        ("old", "fin", "c"),
        ("old", "fin", "s"),
        ("old", "closed", "s", "fin"),
        ("new", "data", "c", b"two"),
        ("new", "closed", "c", "rst"),
    ]
    assert counters(decoder) == {"closed.fin": 1, "closed.rst": 1, "after_close": 2}


def test_timeout_on_packet_time_checked_each_second() -> None:
    decoder = make_decoder(connection_timeout="60s")
    idle, busy = Talk(make_flow(40001)), Talk(make_flow(40002))
    names = {idle.flow: "idle", busy.flow: "busy"}
    setup = [
        *idle.handshake(t=0.0),
        idle.client(0, b"ab", ack=0, t=0.5),
        idle.client(5, b"fg", ack=0, t=1.0),  # 2..5 lost; held
        busy.client(0, b"x", t=1.2),
    ]
    assert simplify(decoder.decode(setup, []), names) == [
        ("idle", "data", "c", b"ab"),
        ("busy", "data", "c", b"x"),
    ]
    # A look at 59.5: the idle connection has been idle for 58.5 s.
    assert simplify(decoder.decode([busy.client(1, b"y", t=59.5)], []), names) == [
        ("busy", "data", "c", b"y")
    ]
    assert simplify(decoder.decode([busy.client(2, b"z", t=61.2)], []), names) == [
        ("idle", "gap", "c", 3),
        ("idle", "data", "c", b"fg"),
        ("idle", "closed", "c", "timeout"),
        ("busy", "data", "c", b"z"),
    ]
    assert decoder.decode([idle.client(7, b"late", t=61.3)], []) == []
    assert counters(decoder) == {
        "out_of_order": 1,
        "gaps": 1,
        "gap_bytes": 3,
        "closed.timeout": 1,
        "after_close": 1,
    }


def test_expiry_looks_at_most_once_per_second_of_capture_time() -> None:
    decoder = make_decoder(connection_timeout="10s")
    idle, busy = Talk(make_flow(40001)), Talk(make_flow(40002))
    decoder.decode([idle.client(0, b"a", t=0.0), busy.client(0, b"b", t=9.5)], [])
    # 10.2 is due (idle for 10.2 s) but the last look was at 9.5: the next is at 10.5.
    assert [event.kind for event in decoder.decode([busy.client(1, b"c", t=10.2)], [])] == [DATA]
    events = decoder.decode([busy.client(2, b"d", t=10.6)], [])
    assert [(event.kind, event.flow, event.reason) for event in events] == [
        (CLOSED, idle.flow, "timeout"),
        (DATA, busy.flow, ""),
    ]
    assert events[0].timestamp == T0  # the idle connection's last packet


def test_advance_expires_without_packets() -> None:
    decoder = make_decoder(connection_timeout="30s")
    talk = Talk(make_flow())
    decoder.decode([*talk.handshake(t=5.0), talk.client(0, b"hi", ack=0, t=6.0)], [])
    assert decoder.advance(T0 + 35.0, []) == []
    events = decoder.advance(T0 + 36.0, [])
    assert simplify(events) == [("closed", "c", "timeout")]
    assert events[0].timestamp == T0 + 6.0
    assert decoder.advance(T0 + 37.0, []) == []
    assert decoder.decode([talk.client(2, b"again", ack=0, t=37.0)], []) == []  # remembered as closed
    assert counters(decoder) == {"closed.timeout": 1, "after_close": 1}
    # A closed flow is forgotten after the timeout too: the table does not grow.
    decoder.advance(T0 + 100.0, [])
    assert (len(decoder._connections), len(decoder._closed)) == (0, 0)


def test_flush_at_end_of_input() -> None:
    decoder = make_decoder()
    first, second, udp = Talk(make_flow(40001)), Talk(make_flow(40002)), make_flow(53, protocol=17)
    names = {first.flow: "1", second.flow: "2", udp: "u"}
    packets = [
        *first.handshake(),
        first.client(0, b"abc", ack=0, t=1.0),
        first.client(6, b"ghi", ack=0, t=2.0),
        first.client(9, flags=FIN_FLAG | ACK_FLAG, ack=0, t=3.0),
        second.server(40, b"mid", ack=7, t=4.0),
        TransportPacket(T0 + 5.0, udp, True, b"query", 0),
        first.server(0, b"s", ack=3, t=6.0),  # the first becomes the most recently active
    ]
    assert simplify(decoder.decode(packets, []), names) == [
        ("1", "data", "c", b"abc"),
        ("2", "data", "s", b"mid"),
        ("u", "datagram", "c", b"query", 0),
        ("1", "data", "s", b"s"),
    ]
    events = decoder.flush([])
    assert simplify(events, names) == [
        ("2", "closed", "c", "end_of_input"),
        ("1", "gap", "c", 3),
        ("1", "data", "c", b"ghi"),
        ("1", "fin", "c"),
        ("1", "closed", "c", "end_of_input"),
    ]
    assert [event.timestamp - T0 for event in events] == [4.0, 6.0, 6.0, 6.0, 6.0]
    assert decoder.flush([]) == []
    assert decoder.context.counters.gauges == {"connections": 0, "buffered_bytes": 0}


def test_max_connections_evicts_the_least_recently_active() -> None:
    decoder = make_decoder(max_connections=2)
    a, b, c = (Talk(make_flow(port)) for port in (40001, 40002, 40003))
    names = {a.flow: "a", b.flow: "b", c.flow: "c"}
    packets = [
        a.client(0, b"a1", t=1.0),
        b.client(0, b"b1", t=2.0),
        b.client(5, b"b3", t=2.5),  # held after a hole
        a.client(2, b"a2", t=3.0),  # a is now more recent than b
        c.client(0, b"c1", t=4.0),  # a third connection: b goes
        b.client(2, b"b2", t=5.0),  # b was closed: nothing more for it
    ]
    assert simplify(decoder.decode(packets, []), names) == [
        ("a", "data", "c", b"a1"),
        ("b", "data", "c", b"b1"),
        ("a", "data", "c", b"a2"),
        ("b", "gap", "c", 3),
        ("b", "data", "c", b"b3"),
        ("b", "closed", "c", "evicted"),
        ("c", "data", "c", b"c1"),
    ]
    assert counters(decoder) == {
        "out_of_order": 1,
        "gaps": 1,
        "gap_bytes": 3,
        "dropped.max_connections": 1,
        "closed.evicted": 1,
        "after_close": 1,
    }
    assert decoder.context.counters.gauges == {"connections": 2, "buffered_bytes": 0}


def test_udp_datagrams_pass_through() -> None:
    decoder = make_decoder()
    flow = make_flow(5353, protocol=17)
    packets = [
        TransportPacket(T0, flow, True, b"question", 0),
        TransportPacket(T0 + 1, flow, False, b"answ", 60),  # cut by the snapshot length
        TransportPacket(T0 + 2, flow, False, b"", 0),
    ]
    events = decoder.decode(packets, [])
    assert simplify(events) == [
        ("datagram", "c", b"question", 0),
        ("datagram", "s", b"answ", 60),
        ("datagram", "s", b"", 0),
    ]
    assert [event.timestamp for event in events] == [T0, T0 + 1, T0 + 2]
    assert decoder.flush([]) == []
    assert counters(decoder) == {"datagrams": 3}


def test_closed_once_per_flow() -> None:
    decoder = make_decoder(connection_timeout="5s")
    talk = Talk(make_flow())
    packets = [
        *talk.handshake(),
        talk.client(0, flags=RST_FLAG),
        talk.server(0, flags=RST_FLAG),
        talk.client(0, b"x", flags=FIN_FLAG | ACK_FLAG, ack=0),
        talk.client(0, flags=SYN_FLAG),
    ]
    assert simplify(decoder.decode(packets, [])) == [("closed", "c", "rst")]
    assert decoder.advance(T0 + 4.0, []) == []
    assert decoder.flush([]) == []


# Properties


def _deliveries(draw: Any, size: int) -> list[tuple[int, int]]:
    """(start, end) ranges covering 0..size: a random cut plus random repeats and overlaps."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, size - 1)), max_size=40))) - {size})
    bounds = [0, *cuts, size]
    ranges = list(pairwise(bounds))
    extra = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 64)), max_size=15))
    ranges += [(start, min(size, start + length)) for start, length in extra]
    return ranges


@st.composite
def shuffled_streams(draw: Any) -> tuple[bytes, int, list[TransportPacket], list[int]]:
    data = draw(st.binary(min_size=1, max_size=1500))
    isn = draw(st.one_of(st.integers(0, MASK), st.integers(MASK - 1600, MASK)))
    talk = Talk(make_flow(), client_isn=isn)
    ranges = _deliveries(draw, len(data))
    packets = [talk.client(start, data[start:end]) for start, end in ranges]
    packets.append(talk.client(len(data), flags=FIN_FLAG))
    order = draw(st.permutations(range(len(packets))))
    shuffled = [talk.client(0, flags=SYN_FLAG)] + [packets[index] for index in order]
    splits = sorted(draw(st.lists(st.integers(0, len(shuffled)), max_size=5)))
    return data, isn, shuffled, splits


def _decode_in_batches(
    decoder: TcpDecoder, packets: list[TransportPacket], splits: list[int]
) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for start, end in pairwise([0, *splits, len(packets)]):
        events += decoder.decode(packets[start:end], [])
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shuffled_streams())
def test_shuffled_repeated_and_overlapping_segments_reassemble_exactly(
    case: tuple[bytes, int, list[TransportPacket], list[int]],
) -> None:
    data, _, packets, splits = case
    decoder = make_decoder()
    events = _decode_in_batches(decoder, packets, splits) + decoder.flush([])
    assert b"".join(event.data for event in events if event.kind == DATA) == data
    assert [event.kind for event in events if event.kind != DATA] == [FIN, CLOSED]
    assert events[-1].reason == "end_of_input"
    assert decoder.context.counters.gauges["buffered_bytes"] == 0


@st.composite
def lossy_streams(draw: Any) -> tuple[bytes, list[TransportPacket], dict[str, Any]]:
    data = draw(st.binary(min_size=1, max_size=800))
    talk = Talk(make_flow(), client_isn=draw(st.integers(0, MASK)))
    packets = []
    for start, end in _deliveries(draw, len(data)):
        if draw(st.integers(0, 3)):  # a quarter of the segments are never captured
            packets.append(talk.client(start, data[start:end]))
    acks = draw(st.lists(st.integers(0, len(data)), max_size=5))
    packets += [talk.server(0, ack=ack) for ack in acks]
    packets = draw(st.permutations(packets))
    packets = [talk.client(0, flags=SYN_FLAG), *packets, talk.client(len(data), flags=FIN_FLAG)]
    caps = {
        "max_stream_bytes": draw(st.sampled_from([0, 16, 100_000])),
        "max_segments": draw(st.sampled_from([0, 2, 1000])),
        "max_memory": draw(st.sampled_from([8, 100_000])),
    }
    return data, packets, caps


@settings(max_examples=150, deadline=None)
@given(lossy_streams())
def test_every_delivered_byte_is_at_its_place_despite_losses(case: tuple[bytes, list, dict]) -> None:
    data, packets, caps = case
    decoder = make_decoder(**caps)
    events = decoder.decode(packets, []) + decoder.flush([])
    position = 0
    for event in events:
        if event.kind == DATA:
            assert event.data == data[position : position + len(event.data)]
            position += len(event.data)
        elif event.kind == GAP:
            assert event.gap > 0
            position += event.gap
    assert position == len(data)
    assert [event.kind for event in events if event.kind not in (DATA, GAP)] == [FIN, CLOSED]


def _check_caps(decoder: TcpDecoder, caps: dict[str, int]) -> None:
    held = 0
    for connection in decoder._connections.values():
        for stream in (connection.client, connection.server):
            if stream is None:
                continue
            pending = stream.pending or []
            assert stream.buffered == sum(len(data) for _, data in pending) <= caps["max_stream_bytes"]
            assert len(pending) <= caps["max_segments"]
            held += stream.buffered
    assert decoder._budget.buffered == held <= caps["max_memory"]
    assert len(decoder._connections) <= caps["max_connections"]
    assert len(decoder._closed) <= caps["max_connections"]


garbage_packets = st.lists(
    st.tuples(
        st.integers(0, 3),  # flow
        st.booleans(),  # from_client
        st.binary(max_size=40),  # payload
        st.sampled_from([0, 0, 0, 1, 100]),  # missing
        st.integers(0, 255),  # flags
        st.one_of(st.integers(0, 200), st.integers(MASK - 100, MASK), st.integers(0, MASK)),  # seq
        st.one_of(st.integers(0, 200), st.integers(0, MASK)),  # ack
        st.floats(0, 3),  # time step
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(garbage_packets, st.randoms(use_true_random=False))
def test_random_garbage_never_raises_and_stays_under_the_caps(items: list[tuple], rng: random.Random) -> None:
    caps = {"max_stream_bytes": 64, "max_segments": 3, "max_memory": 100, "max_connections": 2}
    decoder = make_decoder(connection_timeout="4s", **caps)
    flows = [make_flow(40000 + index, protocol=6 if index < 3 else 17) for index in range(4)]
    now = T0
    closed: set[Flow] = set()
    forgotten: set[Flow] = set()

    class ClosedFlows(OrderedDict):
        """The decoder's memory of closed flows: a flow it forgets may start a new life."""

        def popitem(self, last: bool = True) -> tuple[Flow, float]:
            flow, timestamp = super().popitem(last)
            forgotten.add(flow)
            return flow, timestamp

    decoder._closed = ClosedFlows()

    def check(events: list[StreamEvent]) -> None:
        """Nothing comes for a flow after its CLOSED while the decoder remembers it as closed."""
        for event in events:
            assert event.flow not in closed or event.flow in forgotten, "an event after CLOSED"
            if event.kind == CLOSED:
                closed.add(event.flow)
            assert (event.kind == DATAGRAM) == (event.flow.protocol == 17)
            assert event.kind != GAP or event.gap > 0
            assert event.kind != DATA or event.data
        closed.difference_update(forgotten)
        forgotten.clear()

    for flow_index, from_client, payload, missing, flags, seq, ack, step in items:
        now += step
        packet = TransportPacket(now, flows[flow_index], from_client, payload, missing, flags, seq, ack, 0)
        check(decoder.decode([packet], []))
        _check_caps(decoder, caps)
        if rng.random() < 0.05:
            now += rng.random() * 5
            check(decoder.advance(now, []))
    check(decoder.flush([]))
    assert decoder._budget.buffered == 0 and not decoder._connections
