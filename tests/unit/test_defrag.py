"""The IPv4/IPv6 defragmenter: arrival orders, duplicates, first-copy-wins overlaps, malformed
fragments, capture-time timeouts, every cap with its counter and the memory it leaves held, and
property tests (random fragmentations reassemble; random garbage never raises nor exceeds caps)."""

from __future__ import annotations

import gc
import itertools
import math
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowpipe.plugins.decoders.defrag import (
    DATAGRAM_OVERHEAD,
    FRAGMENT_OVERHEAD,
    MIN_MAX_BYTES,
    Defragmenter,
)

T0 = 1_700_000_000.0
SRC4, DST4, OTHER4 = b"\xc0\x00\x02\x01", b"\xc6\x33\x64\x02", b"\xc0\x00\x02\x63"
KEY4 = (SRC4, DST4, 0x1234, 17)
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000010000000000000002")
KEY6 = (SRC6, DST6, 0xDEADBEEF)
PAYLOAD = bytes(range(256)) * 4  # 1024 bytes, every byte position distinguishable mod 256


def held(pieces: int, payload: int, datagrams: int = 1) -> int:
    """What ``held_bytes`` should be for this many pieces, payload bytes and datagrams."""
    return datagrams * DATAGRAM_OVERHEAD + pieces * FRAGMENT_OVERHEAD + payload


def feed(defrag: Defragmenter, fragments: list[tuple[int, int, bool]], key: tuple = KEY4) -> list:
    """Add ``(start, stop, more_fragments)`` slices of PAYLOAD in order; each call's result."""
    return [defrag.add(key, T0, start, more, PAYLOAD[start:stop]) for start, stop, more in fragments]


THREE = [(0, 400, True), (400, 800, True), (800, 1024, False)]


def test_in_order_fragments_reassemble_and_release_everything():
    defrag = Defragmenter()
    assert feed(defrag, THREE) == [None, None, PAYLOAD]
    assert defrag.counters == {"reassembled": 1}
    assert (len(defrag), defrag.held_bytes) == (0, 0)


def test_partial_datagram_is_held_with_exact_charge():
    defrag = Defragmenter()
    assert feed(defrag, THREE[:2]) == [None, None]
    assert (len(defrag), defrag.held_bytes) == (1, held(2, 800))
    assert defrag.counters == {}


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_every_arrival_order_reassembles(order):
    defrag = Defragmenter()
    results = feed(defrag, [THREE[index] for index in order])
    assert results == [None, None, PAYLOAD]
    assert defrag.counters == {"reassembled": 1}
    assert defrag.held_bytes == 0


def test_reverse_order_of_many_small_fragments():
    pieces = [(start, start + 64, start + 64 < 1024) for start in range(0, 1024, 64)]
    defrag = Defragmenter()
    results = feed(defrag, pieces[::-1])
    assert results == [None] * 15 + [PAYLOAD]
    assert defrag.counters == {"reassembled": 1}


def test_exact_duplicates_are_counted_and_ignored():
    defrag = Defragmenter()
    results = feed(defrag, [THREE[0], THREE[0], THREE[2], THREE[2], THREE[1]])
    assert results == [None, None, None, None, PAYLOAD]
    assert defrag.counters == {"duplicate": 2, "reassembled": 1}


def test_identical_copy_of_part_of_a_held_fragment_is_a_duplicate():
    defrag = Defragmenter()
    assert feed(defrag, [(0, 400, True), (8, 16, True), (200, 400, True)]) == [None] * 3
    assert defrag.counters == {"duplicate": 2}
    assert defrag.held_bytes == held(1, 400)


def test_duplicate_last_fragment_completes_when_it_brings_the_end():
    defrag = Defragmenter()
    # [0, 1024) held without knowing it is all; a last fragment repeating its tail fixes the end.
    assert feed(defrag, [(0, 1024, True), (1016, 1024, False)]) == [None, PAYLOAD]
    assert defrag.counters == {"duplicate": 1, "reassembled": 1}


def test_empty_last_fragment_only_fixes_the_end():
    defrag = Defragmenter()
    assert feed(defrag, [(0, 512, True), (1024, 1024, False), (512, 1024, True)]) == [None, None, PAYLOAD]
    assert defrag.counters == {"reassembled": 1}


def overlap_case(first: tuple[int, bytes], second: tuple[int, bytes]) -> tuple[bytes, int]:
    """Hold ``first`` then ``second`` (offset, data) of a 48-byte datagram, then fill it with '.'
    in 8-byte fragments: the reassembled bytes and how many pieces were held before filling."""
    defrag = Defragmenter()
    for offset, data in (first, second):
        assert defrag.add(KEY4, T0, offset, True, data) is None
    pieces = len(defrag._datagrams[KEY4].starts)
    results = [defrag.add(KEY4, T0, offset, offset < 40, b"." * 8) for offset in range(0, 48, 8)]
    assert results[:-1] == [None] * 5
    assert defrag.counters["reassembled"] == 1
    return results[-1], pieces


def test_left_overlap_keeps_the_first_copy():
    result, pieces = overlap_case((16, b"A" * 16), (8, b"b" * 16))
    assert result == b"." * 8 + b"b" * 8 + b"A" * 16 + b"." * 16
    assert pieces == 2


def test_right_overlap_keeps_the_first_copy():
    result, pieces = overlap_case((16, b"A" * 16), (24, b"b" * 16))
    assert result == b"." * 16 + b"A" * 16 + b"b" * 8 + b"." * 8
    assert pieces == 2


def test_inner_overlap_changes_nothing():
    result, pieces = overlap_case((8, b"A" * 32), (16, b"b" * 16))
    assert result == b"." * 8 + b"A" * 32 + b"." * 8
    assert pieces == 1


def test_covering_overlap_fills_only_the_holes():
    result, pieces = overlap_case((16, b"A" * 8), (8, b"b" * 32))
    assert result == b"." * 8 + b"bbbbbbbb" + b"A" * 8 + b"b" * 16 + b"." * 8
    assert pieces == 3


def test_overlap_counters_are_exact():
    defrag = Defragmenter()
    adds = [
        (16, b"A" * 16),  # held
        (16, b"A" * 16),  # exact duplicate
        (20, b"A" * 4 + b"Z" * 4),  # inside, different bytes: overlap, nothing held changes
        (8, b"b" * 16),  # left overlap: [8, 16) new
        (24, b"A" * 8 + b"c" * 8),  # identical where it overlaps, new after: still an overlap
    ]
    for offset, data in adds:
        assert defrag.add(KEY4, T0, offset, True, data) is None
    assert defrag.counters == {"duplicate": 1, "overlap": 3}
    assert defrag.held_bytes == held(3, 32)
    assert defrag.add(KEY4, T0, 0, True, b"." * 8) is None
    assert defrag.add(KEY4, T0, 40, False, b"-" * 8) == b"." * 8 + b"b" * 8 + b"A" * 16 + b"c" * 8 + b"-" * 8


def test_covering_fragment_spanning_two_held_pieces_and_the_end():
    defrag = Defragmenter()
    assert defrag.add(KEY4, T0, 16, True, b"A" * 8) is None
    assert defrag.add(KEY4, T0, 32, True, b"B" * 8) is None
    assert defrag.add(KEY4, T0, 8, False, memoryview(b"C" * 40)) is None
    assert defrag.counters == {"overlap": 1}
    assert defrag.held_bytes == held(5, 40)
    result = defrag.add(KEY4, T0, 0, True, b"." * 8)
    assert result == b"." * 8 + b"C" * 8 + b"A" * 8 + b"C" * 8 + b"B" * 8 + b"C" * 8
    assert defrag.counters == {"overlap": 1, "reassembled": 1}
    assert defrag.held_bytes == 0


def test_missing_middle_never_completes_and_times_out():
    defrag = Defragmenter(timeout=30.0)
    assert defrag.add(KEY4, T0, 0, True, PAYLOAD[:400]) is None
    assert defrag.add(KEY4, T0 + 1, 800, False, PAYLOAD[800:]) is None
    assert defrag.expire(T0 + 30.0) == 0  # exactly 30 s old: not older than the timeout
    assert defrag.held_bytes == held(2, 624)
    assert defrag.expire(T0 + 30.5) == 1
    assert defrag.counters == {"timeout": 1}
    assert (len(defrag), defrag.held_bytes) == (0, 0)
    # The missing fragment, late, starts a new datagram of its own.
    assert defrag.add(KEY4, T0 + 31, 400, True, PAYLOAD[400:800]) is None
    assert (len(defrag), defrag.held_bytes) == (1, held(1, 400))


def test_fragment_for_a_timed_out_datagram_starts_afresh_without_expire():
    defrag = Defragmenter(timeout=30.0)
    assert defrag.add(KEY4, T0, 0, True, PAYLOAD[:400]) is None
    assert defrag.add(KEY4, T0 + 30, 400, True, PAYLOAD[400:800]) is None  # 30 s: joins, no restart
    assert defrag.add(KEY4, T0 + 31, 800, False, PAYLOAD[800:]) is None
    assert defrag.counters == {"timeout": 1}
    assert defrag.held_bytes == held(1, 224)
    assert defrag.add(KEY4, T0 + 32, 0, True, PAYLOAD[:800]) == PAYLOAD
    assert defrag.counters == {"timeout": 1, "reassembled": 1}


def test_expire_stops_at_the_first_young_datagram():
    defrag = Defragmenter(timeout=30.0)
    keys = [(SRC4, DST4, ident, 17) for ident in range(4)]
    for ident, started in enumerate((T0, T0 + 10, T0 + 5, T0 + 20)):  # capture time ran backwards once
        assert defrag.add(keys[ident], started, 0, True, b"x" * 8) is None
    assert defrag.expire(T0 + 36) == 1  # T0 + 10 is young: T0 + 5 behind it waits
    assert defrag.expire(T0 + 41) == 2
    assert defrag.expire(T0 + 49) == 0
    assert defrag.expire(math.inf) == 1
    assert defrag.counters == {"timeout": 4}
    assert defrag.held_bytes == 0


def test_too_many_fragments_drops_the_datagram():
    defrag = Defragmenter(max_fragments=4)
    for offset in (0, 16, 32, 48):  # four pieces with holes between them
        assert defrag.add(KEY4, T0, offset, True, PAYLOAD[offset : offset + 8]) is None
    assert defrag.held_bytes == held(4, 32)
    assert defrag.add(KEY4, T0, 64, True, PAYLOAD[64:72]) is None
    assert defrag.counters == {"too_many_fragments": 1}
    assert (len(defrag), defrag.held_bytes) == (0, 0)
    assert defrag.add(KEY4, T0, 0, True, PAYLOAD[:16]) is None  # a new datagram for the key
    assert defrag.held_bytes == held(1, 16)


def test_fragment_filling_two_holes_counts_two_pieces_towards_the_cap():
    defrag = Defragmenter(max_fragments=4)
    for offset in (8, 24):
        assert defrag.add(KEY4, T0, offset, True, PAYLOAD[offset : offset + 8]) is None
    assert defrag.add(KEY4, T0, 0, True, PAYLOAD[:40]) is None  # holes [0, 8), [16, 24), [32, 40)
    assert defrag.counters == {"too_many_fragments": 1}
    assert len(defrag) == 0
    defrag = Defragmenter(max_fragments=5)
    for offset in (8, 24):
        assert defrag.add(KEY4, T0, offset, True, PAYLOAD[offset : offset + 8]) is None
    assert defrag.add(KEY4, T0, 8, False, PAYLOAD[8:40]) is None  # holes [16, 24), [32, 40)
    assert defrag.held_bytes == held(4, 32)
    assert defrag.add(KEY4, T0, 0, True, PAYLOAD[:8]) == PAYLOAD[:40]  # the fifth piece: allowed
    assert defrag.counters == {"overlap": 1, "reassembled": 1}


def test_too_many_datagrams_evicts_the_oldest():
    defrag = Defragmenter(max_datagrams=3)
    keys = [(SRC4, DST4, ident, 17) for ident in range(4)]
    for ident, key in enumerate(keys):
        assert defrag.add(key, T0 + ident, 0, True, PAYLOAD[:8]) is None
    assert defrag.counters == {"too_many_datagrams": 1}
    assert (len(defrag), defrag.held_bytes) == (3, held(3, 24, datagrams=3))
    assert defrag.add(keys[0], T0 + 5, 8, False, PAYLOAD[8:16]) is None  # evicted: starts over
    assert defrag.counters == {"too_many_datagrams": 2}
    assert defrag.add(keys[2], T0 + 5, 8, False, PAYLOAD[8:16]) == PAYLOAD[:16]  # kept
    assert defrag.add(keys[1], T0 + 5, 8, False, PAYLOAD[8:16]) is None  # evicted by keys[0]
    assert defrag.counters == {"too_many_datagrams": 2, "reassembled": 1}


def test_bytes_cap_evicts_the_oldest_until_the_fragment_fits():
    chunk = bytes(24000)
    one = held(1, len(chunk))  # five datagrams of one chunk fit in MIN_MAX_BYTES, six do not
    defrag = Defragmenter(max_bytes=MIN_MAX_BYTES)
    keys = [(SRC4, DST4, ident, 17) for ident in range(6)]
    for key in keys[:5]:
        assert defrag.add(key, T0, 0, True, chunk) is None
    assert (defrag.held_bytes, defrag.counters) == (5 * one, {})
    assert defrag.add(keys[5], T0, 0, True, chunk) is None
    assert defrag.counters == {"too_many_bytes": 1}
    assert (len(defrag), defrag.held_bytes) == (5, 5 * one)
    # keys[1] is now the oldest: growing it evicts it, and its fragment goes with it.
    assert defrag.add(keys[1], T0, 24000, True, chunk) is None
    assert defrag.counters == {"too_many_bytes": 2}
    assert (len(defrag), defrag.held_bytes) == (4, 4 * one)
    # keys[5] grows and still fits; its last fragment fits only once keys[2], the oldest, goes.
    assert defrag.add(keys[5], T0, 24000, True, chunk) is None
    assert defrag.counters == {"too_many_bytes": 2}
    assert defrag.held_bytes == 4 * one + FRAGMENT_OVERHEAD + len(chunk)
    assert defrag.add(keys[5], T0, 32000, False, chunk[:8000]) is None  # ends before held bytes do
    assert defrag.counters == {"too_many_bytes": 2, "bad_end": 1}
    assert defrag.add(keys[5], T0, 48000, False, chunk[:16000]) == bytes(64000)
    assert defrag.counters == {"too_many_bytes": 3, "bad_end": 1, "reassembled": 1}
    assert (len(defrag), defrag.held_bytes) == (2, 2 * one)


def test_non_last_fragment_not_a_multiple_of_8_is_dropped_alone():
    defrag = Defragmenter()
    assert defrag.add(KEY4, T0, 0, True, PAYLOAD[:400]) is None
    assert defrag.add(KEY4, T0, 400, True, PAYLOAD[400:813]) is None
    assert defrag.add(KEY4, T0, 400, True, b"") is None
    assert defrag.counters == {"bad_length": 2}
    assert defrag.held_bytes == held(1, 400)
    assert feed(defrag, THREE[1:]) == [None, PAYLOAD]


def test_payload_past_65535_bytes_is_too_long():
    defrag = Defragmenter()
    assert defrag.add(KEY4, T0, 65528, False, b"x" * 8) is None  # ends at 65536
    assert defrag.add(KEY4, T0, 65520, True, b"x" * 16) is None
    assert defrag.counters == {"too_long": 2}
    assert len(defrag) == 0
    assert defrag.add(KEY4, T0, 65528, False, b"x" * 7) is None  # ends at 65535: the largest
    assert defrag.add(KEY4, T0, 0, True, bytes(65528)) == bytes(65528) + b"x" * 7
    assert defrag.counters == {"too_long": 2, "reassembled": 1}


def test_fragments_conflicting_with_the_known_end_are_dropped():
    defrag = Defragmenter()
    assert defrag.add(KEY4, T0, 800, False, PAYLOAD[800:]) is None  # the end: 1024
    assert defrag.add(KEY4, T0, 800, False, PAYLOAD[800:1000]) is None  # another end
    assert defrag.add(KEY4, T0, 1024, True, b"y" * 8) is None  # past the end
    assert defrag.add(KEY4, T0, 1024, False, b"") is None  # the same end again: harmless
    assert defrag.add(KEY4, T0, 1032, False, b"") is None  # another, empty, end
    assert defrag.counters == {"bad_end": 3}
    defrag.add(KEY4, T0, 0, True, PAYLOAD[:400])
    assert defrag.add(KEY4, T0, 200, False, PAYLOAD[200:392]) is None  # ends inside held bytes
    assert defrag.counters == {"bad_end": 4}
    assert defrag.add(KEY4, T0, 400, True, PAYLOAD[400:800]) == PAYLOAD


def test_atomic_fragment_is_returned_without_disturbing_a_pending_datagram():
    defrag = Defragmenter()
    assert defrag.add(KEY6, T0, 0, True, PAYLOAD[:400]) is None
    assert defrag.add(KEY6, T0, 0, False, memoryview(b"atomic")) == b"atomic"
    assert defrag.counters == {}
    assert feed(defrag, THREE[1:], key=KEY6) == [None, PAYLOAD]


def test_ipv6_keys_and_same_ident_for_other_addresses_are_kept_apart():
    defrag = Defragmenter()
    other_payload = PAYLOAD[::-1]
    keys = [KEY6, (DST6, SRC6, 0xDEADBEEF), KEY4, (OTHER4, DST4, 0x1234, 17), (SRC4, DST4, 0x1234, 6)]
    results = {}
    for start, stop, more in THREE:  # interleaved: one fragment of each datagram in turn
        for index, key in enumerate(keys):
            payload = PAYLOAD if index % 2 == 0 else other_payload
            result = defrag.add(key, T0, start, more, payload[start:stop])
            if result is not None:
                results[key] = result
    assert results == {key: PAYLOAD if index % 2 == 0 else other_payload for index, key in enumerate(keys)}
    assert defrag.counters == {"reassembled": 5}


def test_fragments_are_copied_out_of_a_reused_buffer():
    defrag = Defragmenter()
    buffer = bytearray(PAYLOAD[:400])
    assert defrag.add(KEY4, T0, 0, True, memoryview(buffer)) is None
    buffer[:] = bytes(400)
    assert feed(defrag, THREE[1:]) == [None, PAYLOAD]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be > 0, got 0"),
        ({"max_datagrams": 0}, "max_datagrams must be >= 1, got 0"),
        ({"max_fragments": 0}, "max_fragments must be >= 1, got 0"),
        ({"max_bytes": MIN_MAX_BYTES - 1}, f"max_bytes must be >= {MIN_MAX_BYTES}, got {MIN_MAX_BYTES - 1}"),
    ],
)
def test_options_out_of_range_are_refused(options, message):
    with pytest.raises(ValueError) as error:
        Defragmenter(**options)
    assert str(error.value) == message


def traced_growth(flood) -> tuple[int, Defragmenter]:
    """Memory allocated and still alive after ``flood(defrag)`` (keys built inside count too)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        defrag = flood()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, defrag
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shape", ["tiny_datagrams", "tiny_fragments", "huge_offsets"])
def test_adversarial_floods_stay_under_max_bytes_of_real_memory(shape):
    """Keys and fragments are sliced out of a fresh frame each time, as the decoder makes them."""
    max_bytes = 1 << 20

    def flood() -> Defragmenter:
        defrag = Defragmenter(max_datagrams=10**6, max_fragments=10**6, max_bytes=max_bytes)
        for number in range(30000):
            frame = memoryview(number.to_bytes(32, "big") + number.to_bytes(8, "big"))
            source, destination, data = bytes(frame[:16]), bytes(frame[16:32]), frame[32:]
            if shape == "tiny_datagrams":  # one 8-byte fragment each, never completed
                defrag.add((source, destination, number + 100_000), T0, 8, True, data)
            elif shape == "tiny_fragments":  # a dozen datagrams of thousands of 8-byte pieces
                defrag.add((SRC4, DST4, number % 12, 17), T0, 16 * (number // 12), True, data)
            else:  # an 8-byte last fragment at the largest offset, ident after ident
                defrag.add((source[:4], destination[:4], number, 17), T0, 65520, False, data)
        return defrag

    growth, defrag = traced_growth(flood)
    assert max_bytes // 2 < defrag.held_bytes <= max_bytes
    assert growth <= max_bytes
    assert defrag.counters.get("too_many_bytes", 0) > 0


# The property tests: fragmentations of random payloads, and garbage.


@st.composite
def fragmentations(draw):
    """A payload, several fragmentations of it (8-byte aligned cuts), shuffled, some repeated."""
    payload = draw(st.binary(min_size=1, max_size=3000))
    units = (len(payload) + 7) // 8
    fragments = []
    for _ in range(draw(st.integers(1, 3))):
        cuts = sorted(draw(st.sets(st.integers(1, max(1, units - 1)), max_size=40)) - {units})
        bounds = [0, *(cut * 8 for cut in cuts), len(payload)]
        fragments += [(start, stop) for start, stop in itertools.pairwise(bounds) if start < stop]
    fragments += draw(st.lists(st.sampled_from(fragments), max_size=10))
    order = draw(st.permutations(fragments))
    return payload, order


@settings(max_examples=300, deadline=None)
@given(fragmentations())
def test_random_fragmentations_reassemble_to_the_original(case):
    payload, fragments = case
    defrag = Defragmenter(max_fragments=1000)
    covered = bytearray(len(payload))
    last_seen = False
    for number, (start, stop) in enumerate(fragments):
        more = stop < len(payload)
        covered[start:stop] = b"\x01" * (stop - start)
        last_seen = last_seen or not more
        result = defrag.add(KEY6, T0 + number * 0.001, start, more, payload[start:stop])
        if not start and not more:  # atomic: returned as it is, leaving what is pending alone
            assert result == payload
            return
        if last_seen and all(covered):
            assert result == payload
            assert defrag.counters["reassembled"] == 1
            assert (len(defrag), defrag.held_bytes) == (0, 0)
            return
        assert result is None
    pytest.fail("every fragment was added but the datagram never completed")


garbage = st.tuples(
    st.integers(0, 7),  # which key
    st.floats(0, 100, allow_nan=False),  # timestamp offset
    st.one_of(st.integers(0, 70000), st.integers(0, 40).map(lambda units: units * 8)),  # offset
    st.booleans(),  # more fragments
    st.one_of(st.binary(max_size=64), st.integers(0, 70000).map(bytes)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(garbage, max_size=60), st.integers(1, 4), st.integers(1, 8))
def test_random_garbage_never_raises_and_stays_under_the_caps(fragments, max_datagrams, max_fragments):
    defrag = Defragmenter(
        timeout=10.0, max_datagrams=max_datagrams, max_fragments=max_fragments, max_bytes=MIN_MAX_BYTES
    )
    keys = [(SRC4, DST4, ident, 17) for ident in range(4)] + [(SRC6, DST6, ident) for ident in range(4)]
    for which, moment, offset, more, data in fragments:
        result = defrag.add(keys[which], T0 + moment, offset, more, data)
        assert result is None or isinstance(result, bytes)
        if which == 0:
            defrag.expire(T0 + moment)
        assert defrag.held_bytes <= MIN_MAX_BYTES
        assert len(defrag) <= max_datagrams
        charged = 0
        for datagram in defrag._datagrams.values():
            starts, datas = datagram.starts, datagram.datas
            assert len(starts) <= max_fragments
            assert all(datas) and starts == sorted(starts)
            assert all(a + len(d) <= b for a, d, b in zip(starts, datas, starts[1:], strict=False))
            assert datagram.size == sum(map(len, datas)) != datagram.end
            if datas and datagram.end >= 0:
                assert starts[-1] + len(datas[-1]) <= datagram.end
            charged += held(len(starts), datagram.size)
        assert defrag.held_bytes == charged
