"""The ``kafka`` input: packets in Apache Metron's pycapa format, or events, from Kafka topics,
read by a librdkafka consumer group (``confluent-kafka``) and committed at least once.

Codecs:

``pycapa`` (packets, for decoders)
    key = capture time in microseconds since the epoch, 8 bytes big-endian; value = the frame,
    of link type ``link_type`` (Ethernet unless told otherwise), as pycapa's producer and the
    ``kafka`` output with ``codec: pycapa`` write it. The length on the wire is the frame's (the
    format does not carry it). A message whose key is not 8 bytes is counted as
    ``dropped.malformed_key`` and skipped; one without a value as ``dropped.empty_value``. The
    packets of all assigned partitions are handed over in capture-time order
    (:mod:`.partition_merge`, bounded by ``merge_buffer``), since decoders expire flows by it.
``json`` (events)
    each value is one event, a JSON object, passed on as it is (what the ``kafka`` output's
    ``json`` codec wrote); anything else is ``dropped.malformed_json``.
``raw`` (events)
    each value becomes an event with the value as text in ``message`` (UTF-8; other bytes as
    ``\\xNN``), ``@timestamp`` from the message's Kafka timestamp, and ``kafka.topic``,
    ``kafka.partition``, ``kafka.offset`` and ``kafka.key`` (when the message has a key).

Delivery, at least once: offsets are never committed automatically. After each batch the input
yields a :class:`~flowpipe.stage.Checkpoint`; the pipeline acknowledges it once every output
has shipped (or counted as rejected or dropped) the events the worker made of the batches before
it, and the acknowledged read positions are committed from the input's thread, at most every
``commit_interval``, at every rebalance and when the input closes. Decoders may still hold what
those packets began (open flows and connections, requests awaiting their response): it is
shipped later, at a timeout or at the end of input. A clean end (``stop_when_idle``, SIGINT)
flushes it to the outputs before the last commit; after a crash it is lost, as a restarted
Packetbeat loses its open flows, while every packet whose events were not all shipped is read
again.

Rebalances: before partitions are taken away, the input waits (at most :data:`REVOKE_WAIT`
seconds) for the acknowledgements of what it already handed over from them, commits them, and
lets go; the new owner goes on from there. Flows of those partitions still open in this
pipeline's decoders stay here and end at their timeout or at the end of input, while the new
owner decodes their remaining packets as new flows: a flow that spans a rebalance is split in
two records. Counters ``partitions_assigned``, ``partitions_revoked`` and ``partitions_lost``
say how often; what was read but not yet handed over is dropped from memory (read again by the
new owner; counter ``revoked_unread``), and read positions not acknowledged in time are not
committed (``revoked_unacknowledged``: partitions whose messages the new owner reads again).

``stop_when_idle`` ends the input once no message came for that long, counted from the latest
partition assignment (a consumer group's join takes a few seconds; while a rebalance has taken
every partition away it does not count); the pipeline then drains and exits as at the end of a
file. Without it, the ``pycapa`` codec advances the decoders'
clock while no packet comes, from the last packet's capture time by the wall time since, so
flows and transactions of a quiet topic still end on time.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import orjson
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from flowpipe import (
    ByteSize,
    Choice,
    Duration,
    Event,
    Input,
    Int,
    ListOf,
    Option,
    OptionError,
    PacketBatch,
    StartupError,
    Str,
    format_timestamp,
    hookimpl,
)
from flowpipe.packet import LINKTYPE_ETHERNET
from flowpipe.stage import Checkpoint

from ..kafka_settings import HOSTS, LibrdkafkaLog, client_id_option, connection_settings, security_options
from .partition_merge import Key, PartitionMerge

__all__ = ["KafkaInput"]

REVOKE_WAIT = 10.0
"""Longest wait, when partitions are taken away, for the acknowledgements of what was handed over."""
_POLL = 0.25
"""Longest single wait for messages, so that a stop is noticed quickly."""
_MERGE_WAIT = 1.0
"""Longest wait for a partition that may still bring older packets (see :mod:`.partition_merge`)."""
_CLOCK_PERIOD = 1.0
"""How often the clock advances while no packet comes (without ``stop_when_idle``)."""
_KEY = struct.Struct(">Q").unpack
_EVENT_CODECS = ("json", "raw")


class Commits:
    """Read positions on their way to a commit: handed over (waiting for an acknowledgement),
    acknowledged (ready), committed.

    :meth:`acknowledge` is called from other threads; everything else from the input's.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._pending: deque[tuple[int, dict[Key, int]]] = deque()
        self._sequence = 0
        self._acknowledged = 0
        self.ready: dict[Key, int] = {}
        """Acknowledged positions not yet committed: the offset of the next message to read."""

    def checkpoint(self, positions: dict[Key, int]) -> int:
        """Positions just handed over; return the token of their checkpoint."""
        self._sequence += 1
        self._pending.append((self._sequence, positions))
        return self._sequence

    def acknowledge(self, token: int) -> None:
        with self._changed:
            if token > self._acknowledged:
                self._acknowledged = token
                self._changed.notify_all()

    def collect(self) -> dict[Key, int]:
        """Move what was acknowledged to :attr:`ready` and return it."""
        with self._changed:
            acknowledged = self._acknowledged
        pending = self._pending
        while pending and pending[0][0] <= acknowledged:
            self.ready.update(pending.popleft()[1])
        return self.ready

    def committed(self, offsets: dict[Key, int]) -> None:
        for key, offset in offsets.items():
            if self.ready.get(key) == offset:
                del self.ready[key]

    def waiting(self, keys: set[Key]) -> bool:
        """Whether something handed over from these partitions awaits its acknowledgement."""
        with self._changed:
            acknowledged = self._acknowledged
        return any(token > acknowledged and keys & positions.keys() for token, positions in self._pending)

    def wait(self, keys: set[Key], timeout: float, stopping: threading.Event) -> bool:
        """Wait until nothing of ``keys`` awaits an acknowledgement; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.waiting(keys):
            left = deadline - time.monotonic()
            if left <= 0 or stopping.is_set():
                return False
            with self._changed:
                self._changed.wait(min(left, _POLL))
        return True

    def forget(self, keys: set[Key]) -> set[Key]:
        """Partitions this consumer no longer owns; return those with positions left uncommitted."""
        left = {key for key in keys if key in self.ready}
        for key in keys:
            self.ready.pop(key, None)
        for _, positions in self._pending:
            for key in keys & positions.keys():
                left.add(key)
                del positions[key]
        return left


class KafkaInput(Input):
    """Read packets (pycapa format) or events (json, raw) from Kafka topics, at least once."""

    options = (
        HOSTS,
        Option("topics", ListOf(Str(nonempty=True), min_items=1), None, "topics to read"),
        Option(
            "topic_pattern",
            Str(nonempty=True),
            None,
            "read every topic whose whole name matches this regular expression (instead of topics)",
        ),
        Option("group_id", Str(nonempty=True), "flowpipe", "consumer group; members share its partitions"),
        Option(
            "auto_offset_reset",
            Choice("earliest", "latest"),
            "latest",
            "where a partition without a committed offset is read from",
        ),
        Option(
            "codec",
            Choice("pycapa", *_EVENT_CODECS),
            "pycapa",
            "pycapa: packets (key: capture time in us, value: frame); json: events; raw: value as message",
        ),
        Option(
            "link_type",
            Int(0, 0xFFFFFFFF),
            LINKTYPE_ETHERNET,
            "pycapa: link type (LINKTYPE_ value) of the frames; 1 = Ethernet",
        ),
        Option(
            "stop_when_idle",
            Duration(),
            None,
            "end the input after this long without a message (replays, tests); null: never",
        ),
        Option(
            "commit_interval",
            Duration(),
            "1s",
            "commit acknowledged offsets at most this often (and at rebalances and at the end)",
        ),
        Option(
            "merge_buffer",
            ByteSize(),
            "16MiB",
            "pycapa: frames held to hand the partitions' packets over in capture-time order",
        ),
        client_id_option(),
        *security_options("consumer"),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        """Exactly one of topics and topic_pattern; a pattern that compiles; link_type with pycapa."""
        problems = []
        if (config.topics is None) == (config.topic_pattern is None):
            where = () if config.topics is None else ("topic_pattern",)
            problems.append(OptionError("give exactly one of topics or topic_pattern", where))
        if config.topic_pattern is not None:
            try:
                re.compile(config.topic_pattern)
            except re.error as error:
                problems.append(OptionError(f"not a regular expression: {error}", ("topic_pattern",)))
        if config.codec != "pycapa" and config.link_type != LINKTYPE_ETHERNET:
            problems.append(OptionError("applies to codec pycapa only", ("link_type",)))
        return problems

    @classmethod
    def makes(cls, config: SimpleNamespace) -> str:
        return "packets" if config.codec == "pycapa" else "events"

    def open(self) -> None:
        config = self.config
        self.counters = self.context.counters
        self._commits = Commits()
        self._merge = PartitionMerge(config.merge_buffer, _MERGE_WAIT)
        self._lock = threading.Lock()
        """Held around every use of the consumer: librdkafka's consumer is used from one thread at a time."""
        self._closing = False
        self._assignment: set[Key] = set()
        self._assigned_at: float | None = None
        """When the latest assignment came; None before the first and while a rebalance took all."""
        self._last_message = 0.0
        self._next_commit = 0.0
        settings = connection_settings(config, self.context)
        settings.update(
            {
                "group.id": config.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": config.auto_offset_reset,
                "enable.partition.eof": config.codec == "pycapa",
            }
        )
        settings.update(config.settings)
        logger = LibrdkafkaLog(logging.getLogger(f"{self.context.log.name}.librdkafka"))
        try:
            self._consumer = Consumer(settings, error_cb=self._on_error, logger=logger)
        except KafkaException as error:
            raise StartupError(f"kafka input {self.context.id!r}: {error.args[0].str()}") from error

    # -- reading -------------------------------------------------------------------------------

    def read(self) -> Iterator[PacketBatch | list[Event] | Checkpoint]:
        config = self.config
        topics = config.topics or [f"^{config.topic_pattern}$"]
        with self._lock:
            self._consumer.subscribe(
                topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        if config.codec == "pycapa":
            yield from self._read_packets()
        else:
            yield from self._read_events()

    def _consume(self) -> list[Message]:
        """The next messages (at most a batch), having committed what is due first."""
        with self._lock:
            self._commit(force=False)
            messages = self._consumer.consume(self.context.batch_size, _POLL)
        if messages:
            self._last_message = time.monotonic()
        return messages

    def _idle(self, now: float) -> bool:
        """Whether ``stop_when_idle`` has passed without a message since the last assignment."""
        limit = self.config.stop_when_idle
        if limit is None or self._assigned_at is None:
            return False
        return now - max(self._assigned_at, self._last_message) >= limit

    def _read_packets(self) -> Iterator[PacketBatch | Checkpoint]:
        link_type = self.config.link_type
        merge = self._merge
        batch_size = self.context.batch_size
        live = self.config.stop_when_idle is None
        last_time: float | None = None  # capture time of the last packet handed over...
        last_at = 0.0  # ...and when (monotonic)
        next_tick = 0.0
        while not self.stopping.is_set():
            messages = self._consume()
            self._hold(messages)
            now = time.monotonic()
            drain = self._idle(now)
            while True:
                batch = PacketBatch(link_type, self.context.id)
                positions: dict[Key, int] = {}
                if not merge.take(batch, positions, batch_size, now, drain):
                    break
                if batch.frames:
                    last_time, last_at = batch.timestamps[-1], now
                    yield batch
                yield Checkpoint(self._commits.checkpoint(positions))
            if drain:
                return
            if live and last_time is not None and now - last_at >= _CLOCK_PERIOD and now >= next_tick:
                next_tick = now + _CLOCK_PERIOD
                yield PacketBatch(link_type, self.context.id, clock=last_time + (now - last_at))

    def _hold(self, messages: list[Message]) -> None:
        """Put consumed messages into the merge (pycapa), counting the malformed ones."""
        merge = self._merge
        malformed = empty = consumed = 0
        for message in messages:
            error = message.error()
            if error is not None:
                self._consumer_error(message, error)
                continue
            consumed += 1
            key, frame = message.key(), message.value()
            timestamp = 0.0
            if key is None or len(key) != 8:
                malformed += 1
                frame = None
            elif frame is None:
                empty += 1
            else:
                micros = _KEY(key)[0]
                timestamp = micros // 1_000_000 + (micros % 1_000_000) * 1e-6  # as libpcap's (s, us)
            merge.add((message.topic(), message.partition()), timestamp, frame, message.offset())
        self.counters.add("messages", consumed)
        if malformed:
            self.counters.drop("malformed_key", malformed)
        if empty:
            self.counters.drop("empty_value", empty)

    def _read_events(self) -> Iterator[list[Event] | Checkpoint]:
        raw = self.config.codec == "raw"
        while not self.stopping.is_set():
            messages = self._consume()
            if not messages and self._idle(time.monotonic()):
                return
            events: list[Event] = []
            positions: dict[Key, int] = {}
            malformed = consumed = 0
            for message in messages:
                error = message.error()
                if error is not None:
                    self._consumer_error(message, error)
                    continue
                consumed += 1
                positions[(message.topic(), message.partition())] = message.offset() + 1
                if raw:
                    events.append(_raw_event(message))
                    continue
                try:
                    event = orjson.loads(message.value() or b"")
                except orjson.JSONDecodeError:
                    event = None
                if isinstance(event, dict):
                    events.append(event)
                else:
                    malformed += 1
            self.counters.add("messages", consumed)
            if malformed:
                self.counters.drop("malformed_json", malformed)
            if events:
                yield events
            if positions:
                yield Checkpoint(self._commits.checkpoint(positions))

    def _consumer_error(self, message: Message, error: KafkaError) -> None:
        code = error.code()
        if code == KafkaError._PARTITION_EOF:
            self._merge.end_of_partition((message.topic(), message.partition()))
            return
        if error.fatal():
            raise KafkaException(error)
        self.context.errors.warning(
            f"kafka.{error.name()}", "kafka input %r: %s", self.context.id, error.str()
        )

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's errors outside messages (brokers down...), served within consume."""
        self.context.errors.warning(
            f"kafka.{error.name()}", "kafka input %r: %s", self.context.id, error.str()
        )

    # -- acknowledgements and commits ----------------------------------------------------------

    def acknowledge(self, token: Any) -> None:
        self._commits.acknowledge(token)

    def _commit(self, force: bool) -> None:
        """Commit the acknowledged positions (every ``commit_interval``, or now with ``force``)."""
        ready = self._commits.collect()
        now = time.monotonic()
        if not ready or (not force and now < self._next_commit):
            return
        self._next_commit = now + self.config.commit_interval
        offsets = dict(ready)
        try:
            listed = [TopicPartition(topic, number, offset) for (topic, number), offset in offsets.items()]
            results = self._consumer.commit(offsets=listed, asynchronous=False)
        except KafkaException as error:
            self.counters.add("commit_errors")
            self.context.errors.warning(
                "commit", "kafka input %r: commit failed (retried): %s", self.context.id, error.args[0].str()
            )
            return
        failed = {(result.topic, result.partition) for result in results or [] if result.error is not None}
        if failed:
            self.counters.add("commit_errors")
            self.context.errors.warning(
                "commit", "kafka input %r: commit failed for %s (retried)", self.context.id, _names(failed)
            )
        self._commits.committed({key: offset for key, offset in offsets.items() if key not in failed})
        self.counters.add("commits")

    # -- rebalances (called by librdkafka within consume or close, in the thread using it) -------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(partition.topic, partition.partition) for partition in partitions]
        self._merge.assign(keys)
        self._assignment.update(keys)
        self._assigned_at = time.monotonic()
        self.counters.add("partitions_assigned", len(keys))
        self.context.log.info("kafka input %r: partitions assigned: %s", self.context.id, _names(keys) or "-")

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(partition.topic, partition.partition) for partition in partitions}
        if not keys:
            return
        self.counters.add("partitions_revoked", len(keys))
        if not self._closing and not self._commits.wait(keys, REVOKE_WAIT, self.stopping):
            self.context.log.warning(
                "kafka input %r: partitions revoked before what was read from them was shipped; "
                "their new owner reads it again",
                self.context.id,
            )
        self._commit(force=True)
        self._let_go(keys)
        if self._closing:
            self.context.log.info("kafka input %r: partitions released: %s", self.context.id, _names(keys))
            return
        self.context.log.info(
            "kafka input %r: partitions revoked: %s (flows still open from them end here at their "
            "timeout or the end of input; their new owner decodes the rest as new flows)",
            self.context.id,
            _names(keys),
        )

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(partition.topic, partition.partition) for partition in partitions}
        self.counters.add("partitions_lost", len(keys))
        self._let_go(keys)
        self.context.log.warning(
            "kafka input %r: partitions lost (the group went on without this consumer): %s; "
            "what was read from them after the last commit is read again by their new owner",
            self.context.id,
            _names(keys),
        )

    def _let_go(self, keys: set[Key]) -> None:
        self._assignment -= keys
        if not self._assignment:
            self._assigned_at = None  # a rebalance is under way: not idle until the next assignment
        uncommitted = self._commits.forget(keys)
        if uncommitted:
            self.counters.add("revoked_unacknowledged", len(uncommitted))
        unread = self._merge.revoke(keys)
        if unread:
            self.counters.add("revoked_unread", unread)

    def close(self) -> None:
        self._closing = True
        if not self._lock.acquire(timeout=2 * _POLL + REVOKE_WAIT):
            self.context.log.error("kafka input %r: consumer still in use; not closed", self.context.id)
            return
        try:
            self._commit(force=True)
            self._consumer.close()  # leaves the group at once: its partitions go to the others
        except KafkaException as error:
            self.context.log.warning("kafka input %r: %s", self.context.id, error.args[0].str())
        finally:
            self._lock.release()


def _raw_event(message: Message) -> Event:
    kind, millis = message.timestamp()
    seconds = time.time() if kind == TIMESTAMP_NOT_AVAILABLE else millis / 1000
    kafka: dict[str, Any] = {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
    }
    key = message.key()
    if key is not None:
        kafka["key"] = key.decode("utf-8", "backslashreplace")
    return {
        "@timestamp": format_timestamp(seconds),
        "message": (message.value() or b"").decode("utf-8", "backslashreplace"),
        "kafka": kafka,
    }


def _names(keys: Iterable[Key]) -> str:
    return ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(keys))


@hookimpl
def flowpipe_add_inputs() -> dict[str, type[Input]]:
    return {"kafka": KafkaInput}
