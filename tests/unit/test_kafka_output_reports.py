"""The kafka output's bookkeeping of one write: librdkafka's failure reports (confluent-kafka's own
``Message`` and ``KafkaError`` objects, as its delivery callback gets them) matched back to the
write's items, what is retried and what is rejected, and which writes are joined.

Delivery through a real broker is tested in tests/integration/test_kafka_output.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message

from flowpipe import StageContext
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.outputs.kafka import WRITE_EVENTS, KafkaOutput, Outgoing, _Outcome

TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)
TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


def outgoing(*values: bytes, key: str | bytes | None = None) -> list[Outgoing]:
    """The messages of a write of one item per value, on topic ``t``."""
    return [(index, "t", key, value, -1) for index, value in enumerate(values)]


def report(outcome: _Outcome, error: KafkaError, value: bytes, key: bytes | None = None) -> None:
    outcome.reports.append((error, Message(topic="t", key=key, value=value, error=error)))


def test_each_report_settles_one_item_with_its_message_equal_items_one_each() -> None:
    outcome = _Outcome()
    report(outcome, TIMED_OUT, b"b")
    report(outcome, TIMED_OUT, b"a")
    report(outcome, TOO_LARGE, b"c")
    outcome.match(iter(outgoing(b"a", b"b", b"a", b"c", b"a")))
    assert outcome.reports == []
    # one of the three equal "a" messages failed: which one does not matter (the first), one is retried
    assert outcome.to_retry(5) == [0, 1]
    assert outcome.rejected == [3]
    assert outcome.reasons == {"Broker: Message size too large": 1}
    assert outcome.retry_reason == "Local: Message timed out"


def test_a_text_key_matches_the_bytes_librdkafka_reports() -> None:
    outcome = _Outcome()
    report(outcome, TIMED_OUT, b"v", key="1:é=".encode())
    outcome.match(iter([(0, "t", "1:é=", b"v", -1), (1, "t", "1:x=", b"v", -1)]))
    assert outcome.to_retry(2) == [0]


def test_without_reports_nothing_is_retried_but_what_failed_while_producing() -> None:
    outcome = _Outcome()
    outcome.refuse(2, "no topic: the event has no field 'event.dataset'")
    outcome.defer(0, "the producer's queue is full")
    outcome.match(iter(outgoing(b"a", b"b")))
    assert outcome.to_retry(3) == [0]
    assert outcome.rejected == [2]


def test_a_report_no_item_matches_retries_every_item_not_rejected() -> None:
    outcome = _Outcome()
    outcome.refuse(1, "cannot encode: Dict key must be str")
    report(outcome, TIMED_OUT, b"never sent")
    outcome.match(iter(outgoing(b"a", b"b", b"c")))
    assert outcome.unsettled
    assert outcome.to_retry(3) == [0, 2]


def test_messages_still_in_the_producer_leave_every_item_not_rejected_to_retry() -> None:
    outcome = _Outcome()
    outcome.refuse(0, "capture time out of pycapa's range")
    outcome.unsettled = True  # what _await sets when a purge left messages in the producer
    assert outcome.to_retry(3) == [1, 2]


def make_output(**options: Any) -> KafkaOutput:
    options = {"hosts": ["127.0.0.1:9"], "topic": "t", **options}
    assert validate_options(KafkaOutput.all_options(), options) == []
    config = build_namespace(KafkaOutput.all_options(), options)
    return KafkaOutput(config, StageContext("kafka", Counters("kafka", "output"), base_dir=Path(".")))


def test_events_queued_during_a_write_are_joined_packets_are_written_batch_by_batch() -> None:
    assert make_output().batching() == (WRITE_EVENTS, 0.0)
    assert make_output(codec="pycapa").batching() == (0, 0.0)
