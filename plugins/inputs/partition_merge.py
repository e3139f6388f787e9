"""Packets of several Kafka partitions handed over in capture-time order, from a bounded buffer.

A consumer gets each partition's messages in order, but the partitions one after another in
chunks (a fetch response holds up to ``max.partition.fetch.bytes`` of each). Decoders expire
flows and transactions by the packets' capture time, so packets must come in capture-time order
across partitions too: a consumer reading a backlog of partition 0 and then of partition 1 would
otherwise keep partition 1's flows past their time (or end them too early).

:class:`PartitionMerge` holds each assigned partition's packets and hands over the oldest head
first (a k-way merge; within a partition the Kafka order stays). It waits while an assigned
partition that has nothing buffered and is not known to be at its end (librdkafka's partition
EOF) may still bring older packets, until the buffer holds ``max_bytes`` or it has waited
``max_wait`` seconds; then it hands over what it holds, in order. Messages that carry no packet
(a malformed key) keep their place, so that read positions advance only over what was handed
over: :meth:`PartitionMerge.take` records, per partition, the offset after the last message
handed over.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

from flowpipe import PacketBatch

__all__ = ["Key", "PartitionMerge"]

Key = tuple[str, int]
"""A partition: topic and partition number."""

_NO_TIME = float("-inf")
"""The time of a message without a packet: it leaves as soon as it is the head of its partition."""


class PartitionMerge:
    """A bounded k-way merge of partitions' packets by capture time."""

    def __init__(self, max_bytes: int, max_wait: float) -> None:
        self.max_bytes = max_bytes
        self.max_wait = max_wait
        self.nbytes = 0
        """Bytes of frames held."""
        self._queues: dict[Key, deque[tuple[float, bytes | None, int]]] = {}
        self._at_end: set[Key] = set()
        self._heads: list[tuple[float, int, Key]] = []
        self._order = 0
        self._silent = 0
        """Assigned partitions with nothing held that are not at their end: they block the merge."""
        self._blocked_since: float | None = None

    def __len__(self) -> int:
        return sum(map(len, self._queues.values()))

    def assign(self, keys: Iterable[Key]) -> None:
        """Partitions now read by this consumer."""
        for key in keys:
            if key not in self._queues:
                self._queues[key] = deque()
                self._silent += 1

    def revoke(self, keys: Iterable[Key]) -> int:
        """Partitions no longer read: forget what they hold; return how many messages that was."""
        discarded = 0
        for key in keys:
            queue = self._queues.pop(key, None)
            if queue is None:
                continue
            discarded += len(queue)
            self.nbytes -= sum(len(frame) for _, frame, _ in queue if frame is not None)
            if not queue and key not in self._at_end:
                self._silent -= 1
            self._at_end.discard(key)
        if discarded:
            self._heads = [head for head in self._heads if head[2] in self._queues]
            heapq.heapify(self._heads)
        return discarded

    def end_of_partition(self, key: Key) -> None:
        """Everything the partition held when it was fetched has been added."""
        queue = self._queues.get(key)
        if queue is None or key in self._at_end:
            return
        self._at_end.add(key)
        if not queue:
            self._silent -= 1

    def add(self, key: Key, timestamp: float, frame: bytes | None, offset: int) -> bool:
        """Hold one message (``frame`` None: no packet); False if ``key`` is not assigned."""
        queue = self._queues.get(key)
        if queue is None:
            return False
        if frame is None:
            timestamp = _NO_TIME
        else:
            self.nbytes += len(frame)
        if not queue:
            if key in self._at_end:
                self._at_end.discard(key)
            else:
                self._silent -= 1
            self._order += 1
            heapq.heappush(self._heads, (timestamp, self._order, key))
        elif key in self._at_end:
            self._at_end.discard(key)  # its end has moved: it is silent again once emptied
        queue.append((timestamp, frame, offset))
        return True

    def take(self, batch: PacketBatch, positions: dict[Key, int], limit: int, now: float, drain: bool) -> int:
        """Move up to ``limit`` messages, oldest first, into ``batch``; return how many were taken.

        ``positions`` gets the offset after the last message taken from each partition. Nothing
        is taken while a silent partition may still bring older packets, unless the buffer is
        full, the wait (from ``now``, monotonic seconds) is over, or ``drain`` is set.
        """
        heads = self._heads
        taken = 0
        while heads and taken < limit:
            if self._silent and not drain and self.nbytes < self.max_bytes:
                if self._blocked_since is None:
                    self._blocked_since = now
                if now - self._blocked_since < self.max_wait:
                    break
            elif not self._silent:
                self._blocked_since = None  # a later block is a new wait
            _, _, key = heapq.heappop(heads)
            queue = self._queues[key]
            timestamp, frame, offset = queue.popleft()
            positions[key] = offset + 1
            if frame is not None:
                batch.timestamps.append(timestamp)
                batch.frames.append(frame)
                batch.wire_lengths.append(len(frame))
                batch.nbytes += len(frame)
                self.nbytes -= len(frame)
            if queue:
                self._order += 1
                heapq.heappush(heads, (queue[0][0], self._order, key))
            elif key not in self._at_end:
                self._silent += 1
            taken += 1
        if not heads:
            self._blocked_since = None
        return taken
