"""The ``kafka`` output: events as Kafka messages through librdkafka (``confluent-kafka``), at least once.

Each event becomes one message: the value from ``codec``, the topic from the ``topic`` format
string (``flowpipe-%{[event.dataset]}``) and an optional key from ``key``
(``%{[network.community_id]}``: every message of a flow lands in the same partition).

Delivery: :meth:`KafkaOutput.write` produces a batch, sends what is left of it at once at its end
(``linger.ms``, 50 by default, only groups messages within a write) and waits until every message
was delivered or reported failed, at most ``delivery_timeout`` (librdkafka's
``message.timeout.ms``). While a write waits, the pipeline queues the next batches; the next write
takes all of them at once (up to 16,384 events, without waiting for more), so the wait for a
write's last reports is paid once for many batches (packets, pycapa, go batch by batch).
The producer reports failed deliveries only (``delivery.report.only.error``; a report for every
message cost more than the rest of the output's work per message): a message that left the
producer without a failure report was delivered, and each failure report is matched back to an
item of the write with its topic, key and value (equal messages are interchangeable).
An event counts as shipped only once it was delivered. Events whose delivery failed
for a reason that may pass (broker down, timeout, leader change) are handed back to the pipeline
with ``OutputError(remaining=...)``: it backs off and retries only those, while the bounded queue
in front of this output holds back the rest (backpressure up to the input, or drops counted as
``queue_full`` with ``on_full: drop``). Events the cluster refuses for good (message too large,
topic authorization) and events without a field the topic needs are rejected and counted.

After a write with failures the producer is replaced by a new one: a producer whose broker lost
its state (a restarted broker without persistent storage) is otherwise left with an idempotent
producer id the broker no longer knows, and every later message times out.

``codec: pycapa`` sends the raw packets of a pipeline with ``decoders: []`` as Apache Metron's pycapa
sensor does: one message per packet, key = capture time in microseconds since the epoch (8 bytes,
big-endian), value = the captured frame as it is (its link type is not carried: consumers must be
told, Ethernet being pycapa's). The partition is chosen from the symmetric flow hash
(:mod:`flowpipe.plugins.decoders.flowhash`) modulo the topic's partition count, read from the
cluster once per producer: both directions of every flow land in one partition, so a consumer
group of decoding pipelines can share the partitions with every flow whole in one member.

An unreachable broker at start is not an error: librdkafka connects in the background and the
first writes are retried. At shutdown, messages still in the producer (a write the pipeline gave
up on at its ``shutdown_timeout``) get ``flush_timeout`` to be delivered, and what is left is
reported; the pipeline counts them as ``dropped.undelivered``.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from flowpipe import (
    Bool,
    Choice,
    Duration,
    Event,
    Int,
    Option,
    OptionError,
    Output,
    OutputError,
    PacketBatch,
    StartupError,
    hookimpl,
)
from flowpipe.codecs import CODECS
from flowpipe.options import OptionType
from flowpipe.plugins.decoders.flowhash import flow_hash
from flowpipe.sprintf import MissingFieldError, Sprintf, Template

from ..kafka_settings import HOSTS, LibrdkafkaLog, client_id_option, connection_settings, security_options

VALUE_CODECS: dict[str, Callable[[Any], bytes]] = {"json": CODECS["json"], "pycapa": bytes}
"""How an item becomes a message value, by ``codec`` name (``json``: the event as one JSON line;
``pycapa``: the packet's frame as it is, as Metron's pycapa producer sends ``pkt_raw``)."""
PACKET_CODECS = ("pycapa",)
_U64 = struct.Struct(">Q").pack


def pycapa_key(timestamp: float) -> bytes:
    """pycapa's message key for a packet captured at ``timestamp`` (seconds since the epoch).

    As Apache Metron's pycapa producer makes it (metron-sensors/pycapa/pycapa: producer.py
    ``timestamp()`` gives ``epoch_secs * 1000000 + delta_micros`` from the libpcap header and
    common.py ``pack_ts`` packs it with ``struct.pack(">Q", ts)``): the capture time in
    microseconds since the epoch, 8 bytes big-endian. Raises struct.error for a time before 1970.
    """
    return _U64(round(timestamp * 1_000_000))


PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.POLICY_VIOLATION,
        KafkaError._INVALID_ARG,
    }
)
"""Delivery errors that a retry cannot fix: the event is rejected. Every other error is retried."""

WRITE_EVENTS = 16_384
"""Most events of one write: the batches queued while a write waits are joined into the next one."""
LINGER_MS = 50
"""librdkafka's ``linger.ms``: each write ends by sending what is left at once, so lingering only
makes larger message sets within a write (fewer requests: less work for client and broker)."""
_WAIT_SLICE = 0.2
"""Longest single wait for delivery reports, so that a closing output is noticed quickly."""
_GRACE = 5.0
"""How long past ``delivery_timeout`` a write waits for librdkafka's reports before purging."""
_CLOSE_WAIT = 2.0
"""How long close() waits for a write in progress (another thread) to notice and return."""
_METADATA_SLICE = 1.0
"""Longest single wait for a topic's metadata (partition count), so that a closing output is noticed."""


class Acks(OptionType):
    """``acks``: all (-1), 0 or 1, as librdkafka's ``acks`` wants it."""

    name = "all | -1 | 0 | 1"

    def convert(self, value: Any) -> str:
        if isinstance(value, bool) or value not in ("all", -1, "-1", 0, "0", 1, "1"):
            raise OptionError(f"expected all, -1, 0 or 1, got {value!r}")
        return "all" if value in ("all", -1, "-1") else str(value)


Outgoing = tuple[int, str, str | bytes | None, bytes, int]
"""One message to produce: the index of its item, topic, key, value, partition (-1: from the key)."""


class _Outcome:
    """The messages of one write that were not delivered: to retry or rejected, by item index.

    Failures found while producing are settled at once; librdkafka's failure reports (``reports``,
    filled by the producer's delivery callback) name a message, not an index, and are matched to
    the items by :meth:`match` once the write's messages have all left the producer.
    """

    __slots__ = ("reasons", "rejected", "reports", "retry", "retry_reason", "unsettled")

    def __init__(self) -> None:
        self.retry: list[int] = []
        self.rejected: list[int] = []
        self.reasons: dict[str, int] = {}
        """Why items were rejected, and how many for each reason."""
        self.retry_reason = "no delivery report in time"
        self.reports: list[tuple[KafkaError, Message]] = []
        """librdkafka's failure reports not yet matched to items."""
        self.unsettled = False
        """Whether some messages' fate is unknown (still in the producer, or a report matched no
        item): then every item not rejected is retried."""

    def refuse(self, index: int, reason: str) -> None:
        """Item ``index`` is rejected for good."""
        self.rejected.append(index)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def defer(self, index: int, reason: str) -> None:
        """Item ``index`` is to be retried."""
        self.retry.append(index)
        self.retry_reason = reason

    def failed(self, index: int, error: KafkaError) -> None:
        permanent = error.code() in PERMANENT_ERRORS and not error.fatal()
        (self.refuse if permanent else self.defer)(index, error.str())

    def match(self, messages: Iterator[Outgoing]) -> None:
        """Settle the items of the failure reports, given the write's messages produced again."""
        if not self.reports:
            return
        failures: dict[tuple[str | None, bytes | None, bytes | None], list[KafkaError]] = {}
        for error, message in self.reports:
            failures.setdefault((message.topic(), message.key(), message.value()), []).append(error)
        self.reports = []
        for index, topic, key, value, _partition in messages:
            errors = failures.get((topic, key.encode() if isinstance(key, str) else key, value))
            if errors:
                self.failed(index, errors.pop())
        if any(failures.values()):
            self.unsettled = True

    def to_retry(self, count: int) -> list[int]:
        """The indices of the items to hand back, in order, of a write of ``count`` items."""
        if not self.unsettled:
            return sorted(self.retry)
        rejected = set(self.rejected)
        return [index for index in range(count) if index not in rejected]


class KafkaOutput(Output):
    """Send events (or packets, pycapa's format) to Kafka (librdkafka), at-least-once delivery."""

    accepts = ("events", "packets")
    packet_codecs = PACKET_CODECS

    options = (
        HOSTS,
        Option(
            "topic",
            Sprintf(),
            required=True,
            description="topic of each event, a format string such as flowpipe-%{[event.dataset]}",
        ),
        Option(
            "key",
            Sprintf(),
            None,
            "message key, a format string such as %{[network.community_id]} (no key when a field is missing)",
        ),
        Option(
            "codec",
            Choice(*VALUE_CODECS),
            "json",
            "how each event becomes a message value; pycapa: raw packets (decoders: []) as pycapa sends them",
        ),
        Option("acks", Acks(), "all", "acknowledgements the leader waits for: all (-1), 1 or 0 (none)"),
        Option(
            "idempotence",
            Bool(),
            True,
            "idempotent producer: no duplicates or reordering from its own retries (needs acks: all)",
        ),
        Option(
            "compression",
            Choice("none", "gzip", "snappy", "lz4", "zstd"),
            "none",
            "compression of message batches",
        ),
        Option(
            "max_in_flight",
            Int(1, 1_000_000),
            5,
            "requests in flight per broker connection (at most 5 with idempotence)",
        ),
        Option(
            "delivery_timeout",
            Duration(),
            "30s",
            "longest wait for a message's delivery report; then it is handed back for a retry",
        ),
        Option(
            "flush_timeout",
            Duration(),
            "5s",
            "at shutdown, how long messages still in the producer may take to be delivered",
        ),
        client_id_option(),
        *security_options("producer"),
    )

    @classmethod
    def check_config(cls, config: Any) -> list[OptionError]:
        problems = []
        if config.codec in PACKET_CODECS:
            if not config.topic.is_static:
                problems.append(
                    OptionError("codec pycapa needs a plain topic name: packets have no fields", ("topic",))
                )
            if config.key is not None:
                problems.append(
                    OptionError("codec pycapa keys each message by its capture time: remove key", ("key",))
                )
        if not config.idempotence:
            return problems
        if config.acks != "all":
            problems.append(
                OptionError("idempotence needs acks: all (set idempotence: false for acks 0 or 1)", ("acks",))
            )
        if config.max_in_flight > 5:
            problems.append(
                OptionError("idempotence allows at most 5 requests in flight", ("max_in_flight",))
            )
        return problems

    def open(self) -> None:
        self._closing = threading.Event()
        self._writing = threading.Lock()
        self._fatal: KafkaError | None = None
        self._interrupted: _Outcome | None = None
        self._outcome = _Outcome()
        """What became of the messages of the write in progress (or of the last one)."""
        self._encode = VALUE_CODECS[self.config.codec]
        self._librdkafka_log = LibrdkafkaLog(logging.getLogger(f"{self.context.log.name}.librdkafka"))
        self._producer_settings = self.producer_settings()
        try:
            self._producer: Producer | None = self._new_producer()
        except KafkaException as error:
            raise StartupError(f"kafka output {self.context.id!r}: {error.args[0].str()}") from error

    def producer_settings(self) -> dict[str, Any]:
        """The librdkafka configuration built from the options (without the callbacks)."""
        config = self.config
        timeout_ms = max(1, int(config.delivery_timeout * 1000))
        settings = connection_settings(config, self.context)
        settings.update(
            {
                "acks": config.acks,
                "enable.idempotence": config.idempotence,
                "compression.type": config.compression,
                "max.in.flight.requests.per.connection": config.max_in_flight,
                "message.timeout.ms": timeout_ms,
                "request.timeout.ms": min(timeout_ms, 30_000),
                "delivery.report.only.error": True,
                "linger.ms": LINGER_MS,
            }
        )
        settings.update(config.settings)
        return settings

    def _new_producer(self) -> Producer:
        self._fatal = None
        self._partitions: dict[str, int] = {}
        """Partition count of each topic packets were sent to, as this producer learnt it."""
        return Producer(
            {**self._producer_settings, "on_delivery": self._on_delivery},
            error_cb=self._on_error,
            logger=self._librdkafka_log,
        )

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery report: kept for the write in progress when the delivery failed."""
        if error is not None:
            self._outcome.reports.append((error, message))

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's errors outside delivery reports (brokers down, fatal producer errors)."""
        if error.fatal():
            self._fatal = error
        self.context.errors.warning(
            f"kafka.{error.name()}", "kafka output %r: %s", self.context.id, error.str()
        )

    # -- writing -------------------------------------------------------------------------------

    def batching(self) -> tuple[int, float]:
        """Events queued while a write waits are joined into the next write, up to
        :data:`WRITE_EVENTS` (packets, pycapa, are written batch by batch)."""
        return (0, 0.0) if self.config.codec in PACKET_CODECS else (WRITE_EVENTS, 0.0)

    def write(self, events: list[Event] | PacketBatch) -> int | None:
        with self._writing:
            if self._closing.is_set():
                raise OutputError("the output is closing")
            if self._producer is None:
                self._producer = self._new_producer()
                self.context.counters.add("producer_restarts")
            producer = self._producer
            outcome = self._outcome = _Outcome()
            self._produce_all(producer, self._messages(producer, events, outcome), outcome)
            self._await(producer, outcome)
            if self._closing.is_set():  # the pipeline gave up on this write; close() reports on it
                self._interrupted = outcome
                raise OutputError("shutdown while waiting for delivery reports")
            outcome.match(self._messages(producer, events, None))
            retry = outcome.to_retry(len(events))
            rejected = len(outcome.rejected)
            items = "packets" if isinstance(events, PacketBatch) else "events"
            if rejected:
                self.context.errors.error(
                    "rejected",
                    "kafka output %r: %d %s refused for good: %s",
                    self.context.id,
                    rejected,
                    items,
                    "; ".join(f"{reason} ({count})" for reason, count in outcome.reasons.items()),
                )
            if not retry:
                return rejected
            self._retire(producer)
            raise OutputError(
                f"{len(retry)} of {len(events)} {items} not delivered: {outcome.retry_reason}",
                remaining=_subset(events, retry),
                rejected=rejected,
            )

    def _messages(
        self, producer: Producer, items: list[Event] | PacketBatch, outcome: _Outcome | None
    ) -> Iterator[Outgoing]:
        """The messages of ``items``; those that cannot be made are refused in ``outcome`` (None: the
        messages are made again to match failure reports, and skipped silently)."""
        if isinstance(items, PacketBatch):
            return self._packet_messages(producer, items, outcome)
        return self._event_messages(items, outcome)

    def _event_messages(self, events: list[Event], outcome: _Outcome | None) -> Iterator[Outgoing]:
        topic_template: Template = self.config.topic
        static_topic = topic_template.text if topic_template.is_static else None
        key_template: Template | None = self.config.key
        encode = self._encode
        unkeyed = 0
        for index, event in enumerate(events):
            try:
                topic = static_topic or topic_template.render(event)
            except MissingFieldError as error:
                if outcome is not None:
                    outcome.refuse(index, f"no topic: {error}")
                continue
            key = None
            if key_template is not None:
                try:
                    key = key_template.render(event)
                except MissingFieldError:
                    unkeyed += 1
            try:
                value = encode(event)
            except TypeError as error:  # orjson: a value or key it cannot serialise
                if outcome is not None:
                    outcome.refuse(index, f"cannot encode: {error}")
                continue
            yield index, topic, key, value, -1
        if unkeyed and outcome is not None:
            self.context.counters.add("unkeyed", unkeyed)

    def _packet_messages(
        self, producer: Producer, batch: PacketBatch, outcome: _Outcome | None
    ) -> Iterator[Outgoing]:
        """pycapa: key = capture time in microseconds, value = the frame, partition from the flow hash."""
        topic = self.config.topic.text
        partitions = self._partition_count(producer, topic)
        link_type = batch.link_type
        encode = self._encode
        for index, (timestamp, frame) in enumerate(zip(batch.timestamps, batch.frames, strict=False)):
            try:
                key = pycapa_key(timestamp)
            except struct.error:
                if outcome is not None:
                    outcome.refuse(index, "capture time out of pycapa's range")
                continue
            yield index, topic, key, encode(frame), flow_hash(frame, link_type) % partitions

    def _partition_count(self, producer: Producer, topic: str) -> int:
        """The number of partitions of ``topic``, asked of the cluster once per producer."""
        count = self._partitions.get(topic)
        if count:
            return count
        deadline = time.monotonic() + self.config.delivery_timeout
        problem = "no answer"
        while not self._closing.is_set() and time.monotonic() < deadline:
            try:
                metadata = producer.list_topics(topic, timeout=_METADATA_SLICE).topics.get(topic)
            except KafkaException as error:
                problem = error.args[0].str()
                continue
            if metadata is not None and metadata.error is None and metadata.partitions:
                self._partitions[topic] = count = len(metadata.partitions)
                return count
            problem = metadata.error.str() if metadata is not None and metadata.error else "no partitions"
            time.sleep(_WAIT_SLICE)
        raise OutputError(f"cannot learn the partitions of topic {topic!r}: {problem}")

    def _produce_all(self, producer: Producer, messages: Iterator[Outgoing], outcome: _Outcome) -> None:
        produce = producer.produce
        for index, topic, key, value, partition in messages:
            try:
                produce(topic, value, key, partition)
            except BufferError:  # librdkafka's local queue is full
                self._produce_when_full(producer, outcome, (index, topic, key, value, partition))
            except KafkaException as error:
                outcome.failed(index, error.args[0])

    def _produce_when_full(self, producer: Producer, outcome: _Outcome, message: Outgoing) -> None:
        """Serve reports to make room in librdkafka's queue until ``message`` fits in."""
        index, topic, key, value, partition = message
        while True:
            if self._closing.is_set() or self._fatal is not None:
                outcome.defer(index, "the producer's queue is full")
                return
            producer.poll(_WAIT_SLICE)
            try:
                producer.produce(topic, value, key, partition)
                return
            except BufferError:
                continue
            except KafkaException as error:
                outcome.failed(index, error.args[0])
                return

    def _await(self, producer: Producer, outcome: _Outcome) -> None:
        """Wait until every message left the producer, at most ``delivery_timeout`` plus a grace period."""
        deadline = time.monotonic() + self.config.delivery_timeout + _GRACE
        waiting = len(producer)
        while waiting and not self._closing.is_set() and self._fatal is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            waiting = producer.flush(min(left, _WAIT_SLICE))  # sends at once, whatever linger.ms
        if waiting and not self._closing.is_set():
            producer.purge()
            if producer.flush(_WAIT_SLICE):  # the purged messages' reports: retried
                outcome.unsettled = True

    def _retire(self, producer: Producer) -> None:
        """Drop a producer after failed deliveries; the next write starts a new one."""
        producer.purge()
        producer.flush(_WAIT_SLICE)
        self._producer = None  # destroyed with its last reference

    # -- shutdown ------------------------------------------------------------------------------

    def close(self) -> None:
        self._closing.set()
        if not self._writing.acquire(timeout=_CLOSE_WAIT):
            self.context.log.error("kafka output %r: a write did not return; not flushed", self.context.id)
            return
        try:
            producer, self._producer = self._producer, None
            if producer is None:
                return
            if self._interrupted is not None:
                self._report_interrupted(producer, self._interrupted)
            if len(producer):
                producer.purge()
                producer.flush(_WAIT_SLICE)
        finally:
            self._writing.release()

    def _report_interrupted(self, producer: Producer, outcome: _Outcome) -> None:
        """Give the messages of the write that shutdown interrupted ``flush_timeout`` to be delivered,
        and say how many were (the pipeline counted them all undelivered)."""
        producer.poll(0)  # the reports and errors already in served: the producer holds messages only
        waiting, failed = len(producer), len(outcome.reports)
        if not waiting:
            return
        producer.flush(self.config.flush_timeout)
        producer.poll(0)
        delivered = max(0, waiting - len(producer) - (len(outcome.reports) - failed))
        self.context.log.warning(
            "kafka output %r: shutdown interrupted a write with %d messages awaiting delivery: "
            "%d delivered within flush_timeout (%g s) although counted undelivered, %d not delivered",
            self.context.id,
            waiting,
            delivered,
            self.config.flush_timeout,
            waiting - delivered,
        )


def _subset(items: list[Event] | PacketBatch, indices: list[int]) -> list[Event] | PacketBatch:
    """The items of ``items`` at ``indices`` (a PacketBatch for a PacketBatch)."""
    if not isinstance(items, PacketBatch):
        return [items[index] for index in indices]
    subset = PacketBatch(items.link_type, items.source)
    for index in indices:
        subset.append(items.timestamps[index], items.frames[index], items.wire_lengths[index])
    return subset


@hookimpl
def flowpipe_add_outputs() -> dict[str, type[Output]]:
    return {"kafka": KafkaOutput}
