"""BatchQueue: bounds in batches and bytes, block and drop policies, end of stream, close."""

from __future__ import annotations

import threading

import pytest

from flowpipe.packet import PacketBatch
from flowpipe.queues import END, BatchQueue, batch_size_bytes

BLOCKED = 0.2  # how long a producer must stay waiting to count as blocked


def packet_batch(packets: int, frame_size: int = 84) -> PacketBatch:
    """A batch of ``packets`` frames; it counts ``packets * (frame_size + 16)`` bytes in a queue."""
    batch = PacketBatch(1)
    for number in range(packets):
        batch.append(float(number), bytes(frame_size), frame_size)
    return batch


class Producer(threading.Thread):
    """Puts one batch from its own thread and records what ``put`` returned."""

    def __init__(self, queue: BatchQueue, batch: PacketBatch) -> None:
        super().__init__(daemon=True)
        self.queue = queue
        self.batch = batch
        self.result: bool | None = None
        self.done = threading.Event()

    def run(self) -> None:
        self.result = self.queue.put(self.batch)
        self.done.set()


def test_batch_size_counts_frame_bytes_plus_overhead() -> None:
    assert batch_size_bytes(packet_batch(3)) == 3 * 100
    assert batch_size_bytes([]) == 0
    assert batch_size_bytes([{"a": 1}, {"a": 2}]) == len(b'{"a":1}') * 2


def test_put_blocks_at_max_batches_until_a_get() -> None:
    queue = BatchQueue("q", max_batches=2, max_bytes=10**9)
    first, second, third = packet_batch(1), packet_batch(2), packet_batch(3)
    assert queue.put(first) and queue.put(second)
    producer = Producer(queue, third)
    producer.start()
    assert not producer.done.wait(BLOCKED), "put into a queue holding max_batches must block"
    assert len(queue) == 2
    assert queue.counters.get("in") == 3  # a blocked batch is not "in" yet
    assert queue.get() is first
    assert producer.done.wait(2.0)
    assert producer.result is True
    assert [queue.get(), queue.get()] == [second, third]
    assert queue.counters.values == {"in": 6, "out": 6}


def test_put_blocks_at_max_bytes_until_a_get() -> None:
    queue = BatchQueue("q", max_batches=100, max_bytes=250)
    batches = [packet_batch(1) for _ in range(4)]  # 100 bytes each
    for batch in batches[:3]:  # 0 and 100 and 200 bytes held are below 250: all three go in
        assert queue.put(batch)
    assert queue.nbytes == 300
    assert queue.counters.gauges == {"depth_batches": 3, "depth_bytes": 300}
    producer = Producer(queue, batches[3])
    producer.start()
    assert not producer.done.wait(BLOCKED), "put into a queue holding max_bytes must block"
    assert queue.get() is batches[0]
    assert producer.done.wait(2.0)
    assert queue.nbytes == 300
    assert len(queue) == 3


def test_oversized_batch_enters_an_empty_queue_then_blocks_the_next() -> None:
    queue = BatchQueue("q", max_batches=10, max_bytes=50)
    big = packet_batch(5)  # 500 bytes, ten times the bound
    producer = Producer(queue, big)
    producer.start()
    assert producer.done.wait(2.0), "an empty queue must accept any batch, or it could wedge"
    assert producer.result is True
    assert queue.nbytes == 500
    follower = Producer(queue, packet_batch(1))
    follower.start()
    assert not follower.done.wait(BLOCKED)
    assert queue.get() is big
    assert follower.done.wait(2.0)


def test_drop_policy_counts_every_refused_item() -> None:
    queue = BatchQueue("to-slow", max_batches=2, max_bytes=10**9, on_full="drop")
    sizes = [3, 4, 5, 6, 7]
    results = [queue.put(packet_batch(size, frame_size=1)) for size in sizes]
    assert results == [True, True, False, False, False]
    assert queue.counters.drops() == {"queue_full": 5 + 6 + 7}
    assert len(queue.get()) == 3
    assert queue.put(packet_batch(8, frame_size=1)) is True  # room again after a get
    assert len(queue.get()) == 4
    assert len(queue.get()) == 8
    assert queue.counters.values == {"in": 33, "out": 15, "dropped.queue_full": 18}
    assert queue.counters.get("in") == queue.counters.get("out") + queue.counters.dropped_total()


def test_drop_policy_counts_items_not_batches_nor_bytes() -> None:
    queue = BatchQueue("to-slow", max_batches=1, max_bytes=10**9, on_full="drop")
    assert queue.put([{"n": 1}])
    assert not queue.put([{"n": n} for n in range(250)])
    assert queue.counters.get("dropped.queue_full") == 250


def test_end_after_every_producer_ended() -> None:
    queue = BatchQueue("inputs", max_batches=4, max_bytes=10**9, producers=2)
    batch = packet_batch(1)
    queue.put(batch)
    queue.end()
    assert queue.get() is batch
    assert queue.get(timeout=0.05) is None, "one producer is still open: no END yet"
    waiting: list[object] = []
    consumer = threading.Thread(target=lambda: waiting.append(queue.get()), daemon=True)
    consumer.start()
    consumer.join(BLOCKED)
    assert consumer.is_alive() and not waiting
    queue.end()
    consumer.join(2.0)
    assert waiting == [END]
    assert queue.get() is END
    assert queue.get(timeout=0.0) is END


def test_batches_queued_before_the_end_are_still_delivered() -> None:
    queue = BatchQueue("inputs", max_batches=4, max_bytes=10**9)
    batches = [packet_batch(1), packet_batch(2)]
    for batch in batches:
        queue.put(batch)
    queue.end()
    assert [queue.get(), queue.get(), queue.get()] == [*batches, END]


def test_close_counts_undelivered_and_wakes_everyone() -> None:
    queue = BatchQueue("to-stuck", max_batches=2, max_bytes=10**9)
    queue.put(packet_batch(3))
    queue.put(packet_batch(4))
    producer = Producer(queue, packet_batch(5))
    producer.start()
    assert not producer.done.wait(BLOCKED)
    assert queue.close() == 7
    assert producer.done.wait(2.0)
    assert producer.result is False, "a producer woken by close must learn its batch was not taken"
    assert queue.get() is END
    assert queue.put(packet_batch(6)) is False
    assert queue.counters.values == {"in": 3 + 4 + 5 + 6, "dropped.undelivered": 3 + 4 + 5 + 6}
    assert queue.counters.gauges == {"depth_batches": 0, "depth_bytes": 0}
    assert len(queue) == 0


def test_close_wakes_a_consumer_waiting_on_an_empty_queue() -> None:
    queue = BatchQueue("inputs", max_batches=2, max_bytes=10**9)
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(queue.get()), daemon=True)
    consumer.start()
    consumer.join(BLOCKED)
    assert consumer.is_alive()
    assert queue.close() == 0
    consumer.join(2.0)
    assert got == [END]
    assert queue.counters.drops() == {}


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_ledger_adds_up_under_concurrent_producers(policy: str) -> None:
    queue = BatchQueue("q", max_batches=3, max_bytes=10**9, on_full=policy, producers=4)
    taken: list[int] = []

    def produce() -> None:
        for size in range(1, 51):
            queue.put(packet_batch(size, frame_size=1))
        queue.end()

    def consume() -> None:
        while (batch := queue.get()) is not END:
            taken.append(len(batch))

    threads = [threading.Thread(target=produce) for _ in range(4)] + [threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    offered = 4 * sum(range(1, 51))
    counters = queue.counters
    assert counters.get("in") == offered
    assert counters.get("out") == sum(taken)
    assert counters.get("out") + counters.get("dropped.queue_full") == offered
    if policy == "block":
        assert sum(taken) == offered
        assert counters.drops() == {}
