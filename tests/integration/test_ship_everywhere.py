"""The worked example examples/ship-everywhere.yml: one capture to Elasticsearch, Kafka and a file.

It runs against the real servers of the other output tests (osmem-server through the
header-normalising proxy, the Tansu broker) and checks that the three outputs received the same
events.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import servers
from kafka_broker import Collector, KafkaBroker, kafka_broker_fixture
from servers import BulkProxy, search_all

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ship-everywhere.yml"

osmem, cluster, proxy = servers.osmem, servers.cluster, servers.proxy  # the fixtures
kafka_broker = kafka_broker_fixture


@pytest.mark.slow
def test_one_capture_reaches_elasticsearch_kafka_and_a_file_alike(
    tmp_path: Path, cluster: str, proxy: BulkProxy, kafka_broker: KafkaBroker
) -> None:
    kafka_broker.create_topic("flowpipe-events")
    output_file = tmp_path / "events.ndjson"
    env = {
        **os.environ,
        "ES_HOSTS": proxy.url,
        "KAFKA_HOSTS": kafka_broker.address,
        "OUTPUT_FILE": str(output_file),
        "SENSOR_NAME": "test-sensor",
    }
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(EXAMPLE), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    written = [orjson.loads(line) for line in output_file.read_bytes().splitlines()]
    assert len(written) > 40
    assert {event["observer"]["name"] for event in written} == {"test-sensor"}
    datasets = {event["event"]["dataset"] for event in written}
    assert {"flow", "http", "dns", "tls", "smtp"} <= datasets

    def key(event: dict) -> bytes:
        return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)

    with Collector(kafka_broker, ["flowpipe-events"]) as collector:
        collector.wait_for(len(written))
        collector.wait_until_drained()
        consumed = [orjson.loads(message.value) for message in collector.messages]
    assert sorted(map(key, consumed)) == sorted(map(key, written))
    indexed = search_all(cluster, "flowpipe-*")
    assert sorted(map(key, indexed)) == sorted(map(key, written))
