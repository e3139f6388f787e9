"""The servers' ceilings: the client libraries alone, fed the same sample events, no flowpipe.

Usage: ``python raw_clients.py kafka HOST:PORT TOPIC SAMPLE COUNT`` or ``python raw_clients.py
opensearch URL SAMPLE COUNT``; prints ``{"events": N, "seconds": S}``.

- ``kafka``: confluent-kafka's producer with the kafka output's delivery settings (acks all,
  idempotence, librdkafka's default linger), the sample's lines as they are (already JSON), one
  flush at the end: the most a Python producer gets from the broker.
- ``opensearch``: ``opensearchpy.helpers.bulk`` in chunks of 1,600 (the output's
  ``bulk_max_size``) to the index the output writes to.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def kafka(address: str, topic: str, values: list[bytes], count: int) -> int:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": address, "acks": "all", "enable.idempotence": True})
    delivered = 0

    def report(error: object, _message: object) -> None:
        nonlocal delivered
        delivered += error is None

    for index in range(count):
        while True:
            try:
                producer.produce(topic, values[index % len(values)], on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        if index % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    return delivered


def opensearch(url: str, values: list[bytes], count: int) -> int:
    from opensearchpy import OpenSearch, helpers

    client = OpenSearch([url], timeout=300)
    documents = [json.loads(value) for value in values]
    actions = (
        {"_index": "flowpipe-raw", "_source": documents[index % len(documents)]} for index in range(count)
    )
    indexed, _ = helpers.bulk(client, actions, chunk_size=1600, max_retries=0)
    return indexed


def main(argv: list[str]) -> int:
    what = argv[0]
    sample, count = Path(argv[-2]), int(argv[-1])
    values = [line for line in sample.read_bytes().splitlines() if line]
    started = time.monotonic()
    events = kafka(argv[1], argv[2], values, count) if what == "kafka" else opensearch(argv[1], values, count)
    print(json.dumps({"events": events, "seconds": time.monotonic() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
