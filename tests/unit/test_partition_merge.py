"""PartitionMerge: the packets of several Kafka partitions in capture-time order, bounded."""

from __future__ import annotations

from flowpipe import PacketBatch
from flowpipe.plugins.inputs.partition_merge import PartitionMerge

A, B = ("packets", 0), ("packets", 1)
WAIT = 1.0


def take(merge: PartitionMerge, now: float = 0.0, limit: int = 100, drain: bool = False):
    """What one take hands over: (frames, positions, messages taken)."""
    batch = PacketBatch(1)
    positions: dict[tuple[str, int], int] = {}
    taken = merge.take(batch, positions, limit, now, drain)
    assert batch.wire_lengths == [len(frame) for frame in batch.frames]
    assert batch.nbytes == sum(map(len, batch.frames))
    return [frame.decode() for frame in batch.frames], positions, taken


def filled(*partitions: tuple[tuple[str, int], list[tuple[float, bytes | None]]]) -> PartitionMerge:
    merge = PartitionMerge(max_bytes=1 << 20, max_wait=WAIT)
    merge.assign([key for key, _ in partitions])
    for key, messages in partitions:
        for offset, (timestamp, frame) in enumerate(messages):
            assert merge.add(key, timestamp, frame, offset)
    return merge


def test_packets_of_partitions_at_their_end_come_out_in_capture_time_order() -> None:
    merge = filled((A, [(1.0, b"a1"), (3.0, b"a3"), (4.0, b"a4")]), (B, [(2.0, b"b2"), (5.0, b"b5")]))
    merge.end_of_partition(A)
    merge.end_of_partition(B)
    assert take(merge) == (["a1", "b2", "a3", "a4", "b5"], {A: 3, B: 2}, 5)
    assert merge.nbytes == 0 and len(merge) == 0


def test_a_silent_partition_holds_the_others_back_until_it_speaks_ends_or_the_wait_is_over() -> None:
    merge = filled((A, [(1.0, b"a1"), (3.0, b"a3")]), (B, []))
    assert take(merge, now=10.0) == ([], {}, 0)  # B may still bring older packets
    assert take(merge, now=10.5) == ([], {}, 0)
    merge.add(B, 2.0, b"b2", 0)
    assert take(merge, now=10.6) == (["a1", "b2"], {A: 1, B: 1}, 2)  # B is silent again once emptied
    assert take(merge, now=11.5) == ([], {}, 0)  # a new wait, from 10.6
    merge.end_of_partition(B)
    assert take(merge, now=11.5) == (["a3"], {A: 2}, 1)


def test_the_wait_for_a_silent_partition_is_bounded() -> None:
    merge = filled((A, [(1.0, b"a1"), (3.0, b"a3")]), (B, []))
    assert take(merge, now=10.0)[2] == 0
    assert take(merge, now=10.0 + WAIT) == (["a1", "a3"], {A: 2}, 2)


def test_a_full_buffer_or_a_drain_hands_over_without_waiting() -> None:
    merge = PartitionMerge(max_bytes=4, max_wait=WAIT)
    merge.assign([A, B])
    merge.add(A, 1.0, b"a1", 0)
    assert take(merge)[2] == 0
    merge.add(A, 3.0, b"a3", 1)  # 4 bytes held: full
    assert take(merge) == (["a1"], {A: 1}, 1)  # down to 2 bytes: waiting for B again
    assert take(merge, drain=True) == (["a3"], {A: 2}, 1)


def test_messages_without_a_packet_keep_their_place_and_advance_the_position() -> None:
    merge = filled((A, [(1.0, b"a1"), (0.0, None), (3.0, b"a3")]), (B, [(2.0, b"b2")]))
    merge.end_of_partition(A)
    merge.end_of_partition(B)
    assert take(merge, limit=2) == (["a1"], {A: 2}, 2)
    assert take(merge) == (["b2", "a3"], {A: 3, B: 1}, 2)


def test_a_revoked_partition_is_forgotten_and_holds_nothing_back() -> None:
    merge = filled((A, [(1.0, b"a1")]), (B, [(0.5, b"b0"), (2.0, b"b2")]))
    assert merge.revoke([B]) == 2
    assert merge.nbytes == 2
    assert not merge.add(B, 3.0, b"b3", 2)  # no longer assigned
    merge.end_of_partition(A)
    assert take(merge) == (["a1"], {A: 1}, 1)


def test_a_partition_that_got_more_after_its_end_is_silent_once_emptied() -> None:
    merge = filled((A, [(1.0, b"a1")]), (B, [(2.0, b"b2")]))
    merge.end_of_partition(A)
    merge.end_of_partition(B)
    merge.add(A, 3.0, b"a3", 1)  # A's end moved
    assert take(merge) == (["a1", "b2", "a3"], {A: 2, B: 1}, 3)
    merge.add(B, 4.0, b"b4", 1)
    assert take(merge, now=20.0) == ([], {}, 0)  # A may bring something older than b4
