"""The per-direction TCP reassembler (plugins/decoders/reassembly.py) on exact segment sequences:
order, retransmissions, overlaps (first copy wins), wrap-around, holes and when they are declared
lost, caps with their counters, FIN placement, snapshot-length cuts; and the sequence helpers."""

from __future__ import annotations

import pytest

from flowpipe.plugins.decoders.reassembly import Budget, Stream
from flowpipe.plugins.decoders.seq import seq_add, seq_diff
from flowpipe.plugins.decoders.transport import DATA, FIN, GAP, Flow, StreamEvent

ISN = 1000
T = 1_700_000_000.0
FLOW = Flow(("test",), 6, "ipv4", "192.0.2.1", 40000, "198.51.100.2", 80, T)
BIG = 1 << 30


def make_stream(
    isn: int | None = ISN, *, max_stream_bytes: int = BIG, max_segments: int = BIG, max_memory: int = BIG
) -> Stream:
    """A client stream; started by a SYN with ``isn`` (data at isn + 1) unless ``isn`` is None."""
    stream = Stream(FLOW, True, Budget(max_stream_bytes, max_segments, max_memory))
    if isn is not None:
        assert stream.syn(isn)
    return stream


def at(offset: int, isn: int = ISN) -> int:
    """The sequence number of the byte at ``offset`` of a stream whose SYN had ``isn``."""
    return seq_add(isn, 1 + offset)


def feed(stream: Stream, *segments: tuple[int, bytes] | tuple[int, bytes, int]) -> list[tuple]:
    """Give ``stream`` segments (offset, data[, missing]); return what it delivered, simplified."""
    out: list[StreamEvent] = []
    for segment in segments:
        offset, data, *missing = segment
        stream.segment(at(offset), data, missing[0] if missing else 0, out, T)
    return simplify(out)


def simplify(out: list[StreamEvent]) -> list[tuple]:
    """("data", bytes), ("gap", n) and ("fin",) items; checks the fields every item shares."""
    result: list[tuple] = []
    for event in out:
        assert (event.timestamp, event.flow, event.from_client) == (T, FLOW, True)
        if event.kind == DATA:
            result.append(("data", event.data))
        elif event.kind == GAP:
            result.append(("gap", event.gap))
        else:
            assert event.kind == FIN
            result.append(("fin",))
    return result


def counts(stream: Stream) -> dict[str, int]:
    return dict(stream.budget.counts)


# Sequence numbers


def test_seq_diff_is_signed_across_the_wrap() -> None:
    assert seq_diff(5, 0xFFFFFFFB) == 10
    assert seq_diff(0xFFFFFFFB, 5) == -10
    assert seq_diff(100, 100) == 0
    assert seq_diff(0x7FFFFFFF, 0) == 0x7FFFFFFF
    assert seq_diff(0x80000000, 0) == -0x80000000
    assert seq_add(0xFFFFFFFF, 1) == 0
    assert seq_add(0, -1) == 0xFFFFFFFF


# Order


def test_in_order_segments_are_delivered_as_they_come() -> None:
    stream = make_stream()
    assert feed(stream, (0, b"abc"), (3, b"defg")) == [("data", b"abc"), ("data", b"defg")]
    assert (stream.offset, stream.seq, stream.quiet) == (7, at(7), True)
    assert counts(stream) == {}


def test_three_segments_reversed_come_out_in_order() -> None:
    stream = make_stream()
    assert feed(stream, (8, b"GHI"), (4, b"defg")) == []
    assert (stream.buffered, stream.budget.buffered, stream.quiet) == (7, 7, False)
    assert feed(stream, (0, b"abcd")) == [("data", b"abcd"), ("data", b"defg"), ("data", b"GHI")]
    assert (stream.buffered, stream.budget.buffered, stream.pending, stream.quiet) == (0, 0, None, True)
    assert counts(stream) == {"out_of_order": 2}


def test_retransmission_of_delivered_data_is_not_delivered_again() -> None:
    stream = make_stream()
    assert feed(stream, (0, b"hello"), (0, b"hello"), (2, b"ll"), (5, b"!")) == [
        ("data", b"hello"),
        ("data", b"!"),
    ]
    assert counts(stream) == {"retransmissions": 2}


def test_retransmission_of_held_data_is_held_once() -> None:
    stream = make_stream()
    assert feed(stream, (5, b"world"), (5, b"world"), (6, b"orl")) == []
    assert (stream.buffered, len(stream.pending or [])) == (5, 1)
    assert feed(stream, (0, b"hello")) == [("data", b"hello"), ("data", b"world")]
    assert counts(stream) == {"out_of_order": 1, "retransmissions": 2}


def test_overlap_with_delivered_data_keeps_the_first_copy() -> None:
    stream = make_stream()
    assert feed(stream, (0, b"abcdef"), (4, b"XYghij")) == [("data", b"abcdef"), ("data", b"ghij")]
    assert counts(stream) == {"overlaps": 1}


def test_overlap_with_held_data_keeps_the_first_copy() -> None:
    stream = make_stream()
    # Held first: "KLMNO" at 10..15 and "RS" at 17..19; then a copy covering 8..20 with other bytes.
    assert feed(stream, (0, b"abcdefgh"), (10, b"KLMNO"), (17, b"RS")) == [("data", b"abcdefgh")]
    assert feed(stream, (8, b"xxyyyyyzzwwv")) == [
        ("data", b"xx"),
        ("data", b"KLMNO"),
        ("data", b"zz"),
        ("data", b"RS"),
        ("data", b"v"),
    ]
    assert (stream.offset, stream.buffered, stream.budget.buffered) == (20, 0, 0)
    assert counts(stream) == {"out_of_order": 2, "overlaps": 1}


def test_out_of_order_overlap_holds_only_the_new_bytes() -> None:
    stream = make_stream()
    assert feed(stream, (10, b"KLMNO"), (8, b"ijklmnopq")) == []
    assert stream.pending == [(8, b"ij"), (10, b"KLMNO"), (15, b"pq")]
    assert stream.buffered == 9
    assert feed(stream, (0, b"abcdefgh")) == [
        ("data", b"abcdefgh"),
        ("data", b"ij"),
        ("data", b"KLMNO"),
        ("data", b"pq"),
    ]
    assert counts(stream) == {"out_of_order": 2, "overlaps": 1}


def test_wrap_around_with_out_of_order_segments() -> None:
    isn = 0xFFFFFFF0  # data starts at 0xFFFFFFF1; byte 15 is at sequence number 0
    stream = make_stream(isn)
    out: list[StreamEvent] = []
    stream.segment(at(20, isn), b"UVWXY", 0, out, T)  # sequence 5, after the wrap
    stream.segment(at(10, isn), b"klmnopqrst", 0, out, T)  # 0xFFFFFFFB..4: across the wrap
    assert at(20, isn) == 5 and at(10, isn) == 0xFFFFFFFB
    assert out == []
    stream.segment(at(0, isn), b"abcdefghij", 0, out, T)
    assert simplify(out) == [("data", b"abcdefghij"), ("data", b"klmnopqrst"), ("data", b"UVWXY")]
    assert (stream.seq, stream.offset) == (10, 25)
    out.clear()
    stream.segment(seq_add(isn, 1), b"abc", 0, out, T)  # an old copy from before the wrap
    stream.segment(10, b"Z", 0, out, T)
    assert simplify(out) == [("data", b"Z")]
    assert counts(stream) == {"out_of_order": 2, "retransmissions": 1}


def test_keepalive_one_below_the_next_byte_is_not_data() -> None:
    stream = make_stream()
    assert feed(stream, (0, b"abc"), (2, b"c"), (2, b"\x00"), (3, b"d")) == [("data", b"abc"), ("data", b"d")]
    assert counts(stream) == {"keepalives": 2}


def test_zero_window_probe_byte_is_delivered_once() -> None:
    stream = make_stream()
    # The probe carries the next byte; once the window opens the sender sends it again with more.
    assert feed(stream, (0, b"abc"), (3, b"d"), (3, b"defgh")) == [
        ("data", b"abc"),
        ("data", b"d"),
        ("data", b"efgh"),
    ]
    assert counts(stream) == {"overlaps": 1}


def test_mid_stream_start_at_the_first_segment() -> None:
    stream = make_stream(isn=None)
    out: list[StreamEvent] = []
    stream.segment(123456, b"middle", 0, out, T)
    stream.segment(123450, b"before", 0, out, T)  # earlier bytes arriving later: too late
    stream.segment(123462, b"!", 0, out, T)
    assert simplify(out) == [("data", b"middle"), ("data", b"!")]
    assert counts(stream) == {"retransmissions": 1}


def test_syn_restarts_an_empty_stream_and_rejects_another_isn_after_data() -> None:
    stream = make_stream(isn=500)
    assert stream.syn(500)  # a retransmitted SYN
    assert stream.syn(ISN)  # another ISN while nothing was delivered: the new one counts
    assert feed(stream, (0, b"abc")) == [("data", b"abc")]
    assert stream.syn(ISN)  # the same SYN again after data: harmless
    assert not stream.syn(77)
    assert feed(stream, (3, b"d")) == [("data", b"d")]


# Holes


def test_acknowledgement_beyond_a_hole_declares_it_lost() -> None:
    stream = make_stream()
    assert feed(stream, (0, b"abc"), (8, b"ijk"), (14, b"op")) == [("data", b"abc")]
    out: list[StreamEvent] = []
    stream.acked(at(3), out, T)  # a duplicate ACK for the hole: nothing is known lost
    stream.acked(at(5), out, T)  # the receiver got 3..5
    assert simplify(out) == [("gap", 2)]
    out.clear()
    stream.acked(at(15), out, T)  # beyond the second hole, into held data
    assert simplify(out) == [("gap", 3), ("data", b"ijk"), ("gap", 3), ("data", b"op")]
    assert (stream.offset, stream.buffered, stream.quiet) == (16, 0, True)
    assert counts(stream) == {"out_of_order": 2, "gaps": 3, "gap_bytes": 8}


def test_acknowledgement_declares_no_more_than_the_capture_saw() -> None:
    stream = make_stream()
    out: list[StreamEvent] = []
    stream.acked(at(1000), out, T)  # nothing held: nothing to declare
    assert feed(stream, (0, b"ab"), (6, b"gh")) == [("data", b"ab")]
    stream.acked(at(1000), out, T)  # far beyond: only up to the held data's end
    stream.acked(seq_add(ISN, -5000), out, T)  # before the stream: nothing
    assert simplify(out) == [("gap", 4), ("data", b"gh")]
    assert (stream.offset, stream.seq) == (8, at(8))
    assert feed(stream, (8, b"i")) == [("data", b"i")]


def test_snapshot_cut_bytes_are_a_gap_when_reached() -> None:
    stream = make_stream()
    assert feed(stream, (0, b"abcd", 6), (10, b"klm")) == [("data", b"abcd"), ("gap", 6), ("data", b"klm")]
    # Out of order, the cut part stays a hole until something declares it (here the end).
    assert feed(stream, (20, b"uv", 3), (13, b"nopqrst")) == [("data", b"nopqrst"), ("data", b"uv")]
    out: list[StreamEvent] = []
    stream.flush(out, T)
    assert simplify(out) == [("gap", 3)]
    assert counts(stream) == {"truncated": 2, "gaps": 2, "gap_bytes": 9, "out_of_order": 1}


def test_snapshot_cut_header_only_segments_are_pure_gaps() -> None:
    stream = make_stream()
    assert feed(stream, (0, b"", 100), (100, b"", 50), (150, b"xyz")) == [
        ("gap", 100),
        ("gap", 50),
        ("data", b"xyz"),
    ]


def test_flush_gives_up_every_hole_then_delivers_the_fin() -> None:
    stream = make_stream()
    out: list[StreamEvent] = []
    feed(stream, (0, b"ab"), (5, b"fg"), (9, b"j"))
    stream.fin_at(at(12), out, T)
    assert out == []
    stream.flush(out, T)
    assert simplify(out) == [("gap", 3), ("data", b"fg"), ("gap", 2), ("data", b"j"), ("gap", 2), ("fin",)]
    assert (stream.done, stream.buffered, stream.budget.buffered) == (True, 0, 0)


# FIN


def test_fin_before_the_last_data_waits_for_it() -> None:
    stream = make_stream()
    out: list[StreamEvent] = []
    stream.fin_at(at(6), out, T)
    assert out == [] and not stream.done
    assert feed(stream, (3, b"def"), (0, b"abc")) == [("data", b"abc"), ("data", b"def"), ("fin",)]
    assert stream.done
    stream.fin_at(at(6), out, T)  # retransmitted FIN
    assert out == []


def test_data_beyond_the_fin_is_discarded() -> None:
    stream = make_stream()
    assert feed(stream, (6, b"ghij")) == []
    out: list[StreamEvent] = []
    stream.fin_at(at(8), out, T)  # cuts the held "ghij" to "gh"
    assert stream.buffered == 2 and stream.budget.buffered == 2
    assert feed(stream, (0, b"abcdefXYZ"), (8, b"more")) == [
        ("data", b"abcdef"),
        ("data", b"gh"),
        ("fin",),
    ]
    assert counts(stream) == {"out_of_order": 1, "after_fin": 3, "overlaps": 1}  # "XY" lost to "gh"


def test_fin_before_delivered_data_is_ignored() -> None:
    stream = make_stream()
    feed(stream, (0, b"abcdef"))
    out: list[StreamEvent] = []
    stream.fin_at(at(2), out, T)
    assert out == [] and stream.fin == -1
    assert counts(stream) == {"ignored_fin": 1}


def test_acknowledged_fin_after_a_hole_declares_the_gap_then_ends() -> None:
    stream = make_stream()
    out: list[StreamEvent] = []
    feed(stream, (0, b"abc"))
    stream.fin_at(at(10), out, T)  # 3..10 never captured
    stream.acked(seq_add(at(10), 1), out, T)  # the FIN's ACK (FIN takes one sequence number)
    assert simplify(out) == [("gap", 7), ("fin",)]


# Caps


def test_max_segments_gives_up_the_oldest_hole() -> None:
    stream = make_stream(max_segments=2)
    assert feed(stream, (0, b"a"), (2, b"c"), (4, b"e")) == [("data", b"a")]
    assert feed(stream, (6, b"g")) == [("gap", 1), ("data", b"c")]
    assert [start for start, _ in stream.pending or []] == [4, 6]
    assert counts(stream) == {"out_of_order": 3, "dropped.max_segments": 1, "gaps": 1, "gap_bytes": 1}


def test_max_stream_bytes_gives_up_holes_until_the_segment_fits() -> None:
    stream = make_stream(max_stream_bytes=10)
    assert feed(stream, (10, b"0123"), (20, b"456789")) == []
    assert stream.buffered == 10
    # 5 more bytes do not fit: the hole 0..10 and then 14..20 are given up, "456789" delivered.
    assert feed(stream, (30, b"abcde")) == [("gap", 10), ("data", b"0123"), ("gap", 6), ("data", b"456789")]
    assert (stream.buffered, stream.offset) == (5, 26)
    assert counts(stream)["dropped.max_stream_bytes"] == 2


def test_segment_larger_than_the_cap_is_delivered_after_a_gap() -> None:
    stream = make_stream(max_stream_bytes=4)
    assert feed(stream, (3, b"defghij")) == [("gap", 3), ("data", b"defghij")]
    assert stream.buffered == 0
    assert counts(stream) == {"dropped.max_stream_bytes": 1, "gaps": 1, "gap_bytes": 3}


def test_zero_stream_bytes_holds_nothing() -> None:
    stream = make_stream(max_stream_bytes=0)
    assert feed(stream, (0, b"ab"), (4, b"ef"), (2, b"cd"), (6, b"g")) == [
        ("data", b"ab"),
        ("gap", 2),
        ("data", b"ef"),
        ("data", b"g"),
    ]
    assert counts(stream) == {"dropped.max_stream_bytes": 1, "gaps": 1, "gap_bytes": 2, "retransmissions": 1}


def test_max_memory_is_shared_by_the_streams_of_a_budget() -> None:
    budget = Budget(max_stream_bytes=100, max_segments=100, max_memory=10)
    first, second = Stream(FLOW, True, budget), Stream(FLOW, False, budget)
    first.syn(ISN)
    second.syn(ISN)
    out: list[StreamEvent] = []
    first.segment(at(5), b"123456", 0, out, T)
    second.segment(at(5), b"abc", 0, out, T)
    assert (budget.buffered, out) == (9, [])
    second.segment(at(10), b"XY", 0, out, T)  # 11 > 10: the second stream gives up its hole...
    assert [(event.kind, event.from_client, event.data, event.gap) for event in out] == [
        (GAP, False, b"", 5),
        (DATA, False, b"abc", 0),
    ]
    assert (budget.buffered, first.buffered, second.buffered) == (8, 6, 2)  # ...and then holds "XY"
    assert dict(budget.counts) == {"out_of_order": 3, "dropped.max_memory": 1, "gaps": 1, "gap_bytes": 5}


@pytest.mark.parametrize(("max_stream_bytes", "max_segments"), [(64, 1000), (1000, 3), (0, 0)])
def test_holding_never_exceeds_the_caps(max_stream_bytes: int, max_segments: int) -> None:
    stream = make_stream(max_stream_bytes=max_stream_bytes, max_segments=max_segments, max_memory=50)
    out: list[StreamEvent] = []
    for offset in range(200, 0, -7):  # every segment out of order until the end
        stream.segment(at(offset), bytes(range(offset % 200, offset % 200 + 5)), 0, out, T)
        assert stream.buffered == sum(len(data) for _, data in stream.pending or [])
        assert stream.buffered <= min(max_stream_bytes, 50)
        assert len(stream.pending or []) <= max_segments
        assert stream.budget.buffered == stream.buffered
    stream.flush(out, T)
    assert (stream.buffered, stream.budget.buffered, stream.pending) == (0, 0, None)
    delivered = sum(len(event.data) + event.gap for event in out)
    assert delivered == stream.offset == 205
