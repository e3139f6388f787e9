"""Bounded batch queues between stages.

A queue holds at most ``max_batches`` batches and about ``max_bytes`` bytes (a single batch larger
than ``max_bytes`` is still accepted into an empty queue, so nothing can wedge). When full, a
``block`` queue makes the producer wait (backpressure); a ``drop`` queue refuses the batch and
counts its items as ``dropped.queue_full``. The end of the stream is a :data:`END` marker.

A :class:`Marker` is an item without events that keeps its place among the batches (the
pipeline's acknowledgements of what inputs read). It takes a place in ``max_batches`` like a
batch, and a full ``block`` queue holds back its producer as for a batch; a full ``drop`` queue
never refuses one, so dropping events never loses the place of an acknowledgement (see
:meth:`BatchQueue.put_marker`).

Counters: ``in`` counts every item offered, ``out`` every item taken, and each item refused or
abandoned is dropped by reason (``queue_full``; ``undelivered`` when :meth:`BatchQueue.close`
discards it or it is offered to a closed queue), so ``in == out + dropped + items held`` at any
time. Gauges: ``depth_batches`` and ``depth_bytes`` held.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import orjson

from .metrics import Counters
from .packet import PacketBatch

__all__ = ["END", "BatchQueue", "Marker", "batch_size_bytes"]


class _End:
    def __repr__(self) -> str:
        return "END"


END: Any = _End()
"""Put by a producer after its last batch; ``get`` returns it once all producers have ended."""


class Marker:
    """An item without events that keeps its place among a queue's batches."""

    __slots__ = ()

    def merge(self, later: Marker) -> None:
        """Take over ``later``, which a full ``drop`` queue puts right behind this marker."""
        raise NotImplementedError


def batch_size_bytes(batch: Any) -> int:
    """The byte size a batch counts for in a queue.

    Packet batches know their size exactly. For event batches, the JSON size of the first event
    times the number of events: one serialisation per batch, close enough for a memory bound.
    """
    if isinstance(batch, PacketBatch):
        return batch.nbytes + 16 * len(batch)
    if not batch:
        return 0
    try:
        return len(orjson.dumps(batch[0], default=str)) * len(batch)
    except TypeError:
        return 512 * len(batch)


class BatchQueue:
    """A bounded FIFO of batches, with counters and a block-or-drop policy."""

    def __init__(
        self,
        name: str,
        max_batches: int,
        max_bytes: int,
        *,
        on_full: str = "block",
        producers: int = 1,
    ) -> None:
        self.name = name
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self.on_full = on_full
        self.counters = Counters(name, "queue")
        self._items: deque[tuple[Any, int, int]] = deque()
        self._bytes = 0
        self._open_producers = producers
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._not_empty = threading.Condition(self._lock)
        self._closed = False

    def _full(self) -> bool:
        return bool(self._items) and (len(self._items) >= self.max_batches or self._bytes >= self.max_bytes)

    def put(self, batch: Any, count: int | None = None) -> bool:
        """Add a batch; return False when it was dropped (``on_full: drop``, or queue closed)."""
        size = batch_size_bytes(batch)
        items = len(batch) if count is None else count
        with self._lock:
            if self._full() and self.on_full == "drop":
                self.counters.add("in", items)
                self.counters.drop("queue_full", items)
                return False
            while self._full() and not self._closed:
                self._not_full.wait()
            self.counters.add("in", items)  # only now: a blocked batch is not yet "in"
            if self._closed:
                self.counters.drop("undelivered", items)
                return False
            self._items.append((batch, size, items))
            self._bytes += size
            self._update_gauges()
            self._not_empty.notify()
        return True

    def put_marker(self, marker: Marker) -> bool:
        """Add a marker; return False when the queue is closed.

        A full ``block`` queue makes the producer wait as for a batch. A full ``drop`` queue takes
        it anyway: merged into the last item when that is a marker (:meth:`Marker.merge`), else
        added past the bound; so a ``drop`` queue holds at most one item more than its bound.
        """
        with self._lock:
            if self._full() and self.on_full == "drop":
                last = self._items[-1][0]
                if isinstance(last, Marker):
                    last.merge(marker)
                    return True
            else:
                while self._full() and not self._closed:
                    self._not_full.wait()
            if self._closed:
                return False
            self._items.append((marker, 0, 0))
            self._update_gauges()
            self._not_empty.notify()
        return True

    def end(self) -> None:
        """One producer has finished. When all have, ``get`` returns :data:`END`."""
        with self._lock:
            self._open_producers -= 1
            self._not_empty.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """The next batch, :data:`END` once drained and ended, or None after ``timeout``."""
        with self._lock:
            while not self._items:
                if self._open_producers <= 0 or self._closed:
                    return END
                if not self._not_empty.wait(timeout):
                    return None
            batch, size, items = self._items.popleft()
            self._bytes -= size
            self.counters.add("out", items)
            self._update_gauges()
            self._not_full.notify()
            return batch

    def close(self) -> int:
        """Abandon the queue: wake everyone, discard what it holds; return the items discarded."""
        with self._lock:
            self._closed = True
            discarded = sum(items for _, _, items in self._items)
            if discarded:
                self.counters.drop("undelivered", discarded)
            self._items.clear()
            self._bytes = 0
            self._update_gauges()
            self._not_full.notify_all()
            self._not_empty.notify_all()
            return discarded

    def _update_gauges(self) -> None:
        self.counters.gauges["depth_batches"] = len(self._items)
        self.counters.gauges["depth_bytes"] = self._bytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
