"""The ``elasticsearch`` output against a real server: osmem-server, through the test proxy.

elasticsearch-py 8/9 sends ``application/vnd.elasticsearch+json; compatible-with=N`` media types,
which osmem (OpenSearch-compatible) refuses; :class:`servers.BulkProxy` rewrites them to the plain
types and passes everything else through, so the product code stays standard. The same proxy
injects the faults (429, 503, dropped connections, per-item rejections, 401). Every test gets a
fresh, empty clone of one osmem server. The bulk machinery is shared with the ``opensearch``
output; the tests that do not depend on the client library (data streams, missing fields, two
outputs) are here only.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import servers
from servers import (
    DAY_INDEX,
    FAST_BACKOFF,
    FILE,
    PER_PACKET,
    Background,
    BulkProxy,
    Osmem,
    canonical,
    capture_pipeline,
    counter,
    counting_pipeline,
    field_type,
    installed_template,
    make_certificates,
    ndjson,
    request,
    run_flowpipe,
    run_in_process,
    search_all,
)
from sniff import free_port
from summary_lines import parse_summary

osmem, cluster, proxy = servers.osmem, servers.cluster, servers.proxy  # the fixtures


def es_output(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "elasticsearch", "hosts": [url], "backoff": FAST_BACKOFF, **options}


# -- delivery ------------------------------------------------------------------------------------


def test_events_arrive_field_for_field_as_the_file_output_writes_them(
    tmp_path: Path, cluster: str, proxy: BulkProxy
) -> None:
    config = capture_pipeline(tmp_path, FILE, es_output(proxy.url))
    result = run_flowpipe(config)
    assert result.returncode == 0, result.stderr
    written = ndjson(tmp_path / "events.ndjson")
    datasets = sorted(event["event"]["dataset"] for event in written)
    assert datasets == ["echo", "flow", "flow", "flow", "flow", "icmp"]
    assert canonical(search_all(cluster, "flowpipe-*")) == canonical(written)
    assert [index["index"] for index in request(cluster, "GET", "/_cat/indices?format=json")] == [DAY_INDEX]
    mappings = request(cluster, "GET", f"/{DAY_INDEX}/_mapping")[DAY_INDEX]["mappings"]  # from our template
    assert field_type(mappings, "source.ip") == {"type": "ip"}
    assert field_type(mappings, "related.ip") == {"type": "ip"}
    assert field_type(mappings, "event.start") == {"type": "date"}
    assert field_type(mappings, "source.bytes") == {"type": "long"}
    assert field_type(mappings, "network.community_id") == {"type": "keyword", "ignore_above": 1024}
    assert parse_summary(result.stderr)[("output", "elasticsearch")] == {"in": 6, "out": 6}
    actions = [action for bulk in proxy.bulk_requests() for action in bulk.bulk_actions()]
    assert actions == [{"index": {"_index": DAY_INDEX}}] * 6
    assert {bulk.path for bulk in proxy.bulk_requests()} == {
        "/_bulk?filter_path=errors,items.*.status,items.*.error"
    }


def test_template_has_the_ecs_mappings_and_an_existing_one_is_kept_unless_overwrite(
    tmp_path: Path, cluster: str, proxy: BulkProxy
) -> None:
    config = counting_pipeline(tmp_path, 10, es_output(proxy.url))
    assert counter(run_in_process(config).outputs, "elasticsearch") == {"in": 10, "out": 10}
    template = installed_template(cluster)
    assert template["index_patterns"] == ["flowpipe-*"]
    assert template["priority"] == 200
    assert "data_stream" not in template
    assert template["_meta"] == {"managed_by": "flowpipe", "version": "0.1.0"}
    mappings = template["template"]["mappings"]
    assert mappings["date_detection"] is False
    expected = {
        "@timestamp": "date",
        "event.start": "date",
        "event.end": "date",
        "source.ip": "ip",
        "destination.ip": "ip",
        "client.ip": "ip",
        "server.ip": "ip",
        "related.ip": "ip",
        "source.geo.location": "geo_point",
        "destination.geo.location": "geo_point",
        "source.port": "long",
        "destination.bytes": "long",
        "network.packets": "long",
        "event.duration": "long",
        "source.as.number": "long",
        "network.transport": "keyword",
        "flow.id": "keyword",
        "flow.final": "boolean",
    }
    assert {path: field_type(mappings, path)["type"] for path in expected} == expected
    assert [next(iter(rule)) for rule in mappings["dynamic_templates"]] == [
        "ip_addresses",
        "strings_as_keyword",
    ]
    assert mappings["dynamic_templates"][0]["ip_addresses"] == {
        "path_match": "*.ip",
        "match_mapping_type": "string",
        "mapping": {"type": "ip"},
    }

    mine = {"index_patterns": ["flowpipe-*"], "priority": 5, "_meta": {"owner": "someone else"}}
    assert request(cluster, "PUT", "/_index_template/flowpipe", mine) == {"acknowledged": True}
    run_in_process(config)
    assert installed_template(cluster)["_meta"] == {"owner": "someone else"}  # overwrite: false keeps it
    run_in_process(
        counting_pipeline(tmp_path, 10, es_output(proxy.url, setup={"template": {"overwrite": True}}))
    )
    assert installed_template(cluster)["_meta"] == {"managed_by": "flowpipe", "version": "0.1.0"}

    disabled = es_output(
        proxy.url, index="other-%{+yyyy}", setup={"template": {"enabled": False, "name": "other"}}
    )
    run_in_process(counting_pipeline(tmp_path, 10, disabled))
    assert request(cluster, "GET", "/_index_template/other")["status"] == 404
    assert len(search_all(cluster, "other-2023")) == 10


def test_data_streams_are_named_by_dataset_and_written_with_op_type_create(
    tmp_path: Path, cluster: str, proxy: BulkProxy
) -> None:
    # osmem has no data streams: without a template the names become plain indices, which is
    # enough to check the names and the op_type; the template's data_stream part is checked below.
    output = es_output(proxy.url, data_stream=True, setup={"template": {"enabled": False}})
    config = capture_pipeline(tmp_path, FILE, output)
    result = run_flowpipe(config)
    assert result.returncode == 0, result.stderr
    actions = [action for bulk in proxy.bulk_requests() for action in bulk.bulk_actions()]
    assert {next(iter(action)) for action in actions} == {"create"}
    written = ndjson(tmp_path / "events.ndjson")
    for dataset in ("echo", "flow", "icmp"):
        stored = search_all(cluster, f"logs-flowpipe.{dataset}-default")
        assert canonical(stored) == canonical(
            [event for event in written if event["event"]["dataset"] == dataset]
        )

    other_namespace = "logs-flowpipe.%{[event.dataset]}-other"  # new names: the ones above are indices now
    output = es_output(
        proxy.url, data_stream=True, index=other_namespace, setup={"template": {"name": "logs-flowpipe"}}
    )
    result = run_flowpipe(capture_pipeline(tmp_path, output))
    template = installed_template(cluster, "logs-flowpipe")
    assert template["data_stream"] == {"timestamp_field": {"name": "@timestamp"}}  # osmem's view of our {}
    assert template["index_patterns"] == ["logs-flowpipe.*"]
    # ...and osmem refuses writes into data streams: each event lands in the dead-letter file.
    dead = ndjson(tmp_path / "elasticsearch.dead-letter.ndjson")
    assert {(record["status"], record["error"]["type"]) for record in dead} == {
        (400, "unsupported_operation_exception")
    }
    assert parse_summary(result.stderr)[("output", "elasticsearch")] == {
        "in": 6,
        "out": 0,
        "dropped.rejected": 6,
    }


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.slow  # about 5 s: a flowpipe process, half a second of 503s, retries
def test_429_and_503_for_a_while_then_every_event_arrives_exactly_once(
    tmp_path: Path, cluster: str, proxy: BulkProxy
) -> None:
    config = counting_pipeline(tmp_path, 600, FILE, es_output(proxy.url))
    proxy.fail(503, seconds=0.5)  # from the first bulk request on
    proxy.fail(429, count=3)
    proxy.reject_items(count=3)  # every second item refused with a 429, not forwarded
    proxy.drop(count=2)  # connection closed without an answer
    result = run_flowpipe(config)
    assert result.returncode == 0, result.stderr
    faults = [bulk.fault for bulk in proxy.bulk_requests() if bulk.fault]
    assert faults.count("status") > 3 and faults.count("reject_items") == 3 and faults.count("drop") == 2
    assert canonical(search_all(cluster, "flowpipe-*")) == canonical(ndjson(tmp_path / "events.ndjson"))
    assert parse_summary(result.stderr)[("output", "elasticsearch")] == {
        "in": 600,
        "out": 600,
        "retries": len(faults),
    }


def test_refused_events_go_to_the_dead_letter_file_and_the_rest_arrive(
    tmp_path: Path, cluster: str, proxy: BulkProxy
) -> None:
    conflict = {"mappings": {"properties": {"icmp": {"properties": {"type": {"type": "ip"}}}}}}
    assert request(cluster, "PUT", f"/{DAY_INDEX}", conflict)["acknowledged"] is True
    config = capture_pipeline(tmp_path, FILE, es_output(proxy.url), decoders=PER_PACKET)
    result = run_flowpipe(config)
    assert result.returncode == 0, result.stderr
    written = ndjson(tmp_path / "events.ndjson")
    icmp_events = [event for event in written if event["network"]["transport"] == "icmp"]
    assert len(written) == 12 and len(icmp_events) == 2
    dead = ndjson(tmp_path / "elasticsearch.dead-letter.ndjson")
    assert [record["event"] for record in dead] == icmp_events
    for record in dead:
        assert (record["output"], record["index"], record["status"]) == ("elasticsearch", DAY_INDEX, 400)
        assert record["error"]["type"] == "mapper_parsing_exception"
        assert "failed to parse field [icmp.type] of type [ip]" in record["error"]["reason"]
    delivered = [event for event in written if event not in icmp_events]
    assert canonical(search_all(cluster, DAY_INDEX)) == canonical(delivered)
    summary = parse_summary(result.stderr)[("output", "elasticsearch")]
    assert summary == {"in": 12, "out": 10, "dropped.rejected": 2}
    assert result.stderr.count("2 events refused for good (400 mapper_parsing_exception") == 1


def test_an_event_without_the_field_its_index_name_needs_is_a_dead_letter(
    tmp_path: Path, cluster: str, proxy: BulkProxy
) -> None:
    output = es_output(
        proxy.url, index="flowpipe-%{[destination.port]}", dead_letter={"path": "dead/letters.ndjson"}
    )
    result = run_flowpipe(capture_pipeline(tmp_path, output, decoders=PER_PACKET))
    assert result.returncode == 0, result.stderr
    dead = ndjson(tmp_path / "dead" / "letters.ndjson")
    assert [record["event"]["network"]["transport"] for record in dead] == ["icmp", "icmp"]
    assert {(record["index"], record["status"]) for record in dead} == {(None, None)}
    assert dead[0]["error"] == {
        "type": "missing_field",
        "reason": "the event has no field 'destination.port' for 'flowpipe-%{[destination.port]}'",
    }
    stored = {index["index"] for index in request(cluster, "GET", "/_cat/indices?format=json")}
    assert stored == {"flowpipe-7", "flowpipe-40000", "flowpipe-9999", "flowpipe-5353"}
    summary = parse_summary(result.stderr)[("output", "elasticsearch")]
    assert summary == {"in": 12, "out": 10, "dropped.rejected": 2}


def test_cluster_down_at_start_then_up_gets_every_event(tmp_path: Path) -> None:
    server = Osmem()
    proxy = BulkProxy(server.url)
    flowpipe = Background(counting_pipeline(tmp_path, 500, es_output(proxy.url)))
    try:
        flowpipe.wait_for("cannot install index template 'flowpipe' yet")  # and it keeps retrying
        flowpipe.wait_for("retrying in")
        server.start()
        proxy.start()
        status, stderr = flowpipe.finish()
        assert status == 0, stderr
        stored = search_all(server.url, "flowpipe-*")
        assert sorted(document["source"]["ip"] for document in stored) == sorted(
            f"10.0.{index >> 8}.{index & 255}" for index in range(500)
        )
        assert installed_template(server.url)["index_patterns"] == ["flowpipe-*"]
        summary = parse_summary(stderr)[("output", "elasticsearch")]
        assert summary["in"] == summary["out"] == 500
    finally:
        proxy.stop()
        server.stop()


def test_with_the_cluster_down_the_file_output_still_gets_everything_when_it_may_drop(tmp_path: Path) -> None:
    down = es_output(f"http://127.0.0.1:{free_port()}", on_full="drop")
    config = counting_pipeline(
        tmp_path,
        3000,
        {"type": "file", "path": "events.ndjson"},
        down,
        queue={"batches": 4},
        shutdown_timeout="1s",
    )
    result = run_flowpipe(config)
    assert result.returncode == 1, result.stderr
    assert len(ndjson(tmp_path / "events.ndjson")) == 3000
    stages = parse_summary(result.stderr)
    assert stages[("output", "file")] == {"in": 3000, "out": 3000}
    queue, output = stages[("queue", "to-elasticsearch")], stages[("output", "elasticsearch")]
    assert output["out"] == 0
    assert output["in"] == output["dropped.undelivered"] > 0
    assert queue["in"] == 3000
    assert queue["dropped.queue_full"] + queue.get("dropped.undelivered", 0) + output["in"] == 3000
    assert "undelivered" in result.stderr


def test_with_the_cluster_down_and_backpressure_the_file_gets_what_was_read_until_the_queue_filled(
    tmp_path: Path,
) -> None:
    down = es_output(f"http://127.0.0.1:{free_port()}")
    config = counting_pipeline(
        tmp_path,
        0,
        {"type": "file", "path": "events.ndjson"},
        down,
        queue={"batches": 4},
        shutdown_timeout="1s",
    )
    flowpipe = Background(config)
    flowpipe.wait_for("retrying in")  # running, and the elasticsearch output fails
    time.sleep(1.0)  # its queue fills and blocks the worker, then the input
    flowpipe.process.send_signal(signal.SIGINT)
    status, stderr = flowpipe.finish()
    assert status == 1, stderr
    stages = parse_summary(stderr)
    written = len(ndjson(tmp_path / "events.ndjson"))
    assert 0 < written < 3000
    assert stages[("output", "file")] == {"in": written, "out": written}
    output, queue = stages[("output", "elasticsearch")], stages[("queue", "to-elasticsearch")]
    assert output["out"] == 0 and output["in"] == output["dropped.undelivered"]
    assert queue["in"] == written == output["in"] + queue["dropped.undelivered"]


# -- connection options --------------------------------------------------------------------------


def test_a_refused_login_at_start_stops_the_run_with_one_line(tmp_path: Path, proxy: BulkProxy) -> None:
    proxy.fail(401, bulk_only=False)
    result = run_flowpipe(
        counting_pipeline(tmp_path, 10, es_output(proxy.url, username="elastic", password="bad"))
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"flowpipe: output 'elasticsearch': cannot install index template 'flowpipe' on {proxy.url}: "
        "HTTP 401 Unauthorized"
    ]


def test_credentials_compression_and_ingest_pipeline_reach_the_cluster(
    tmp_path: Path, cluster: str, proxy: BulkProxy
) -> None:
    basic = es_output(proxy.url, username="elastic", password="s3cret", compression=True)
    summary = run_in_process(counting_pipeline(tmp_path, 10, basic))
    assert counter(summary.outputs, "elasticsearch") == {"in": 10, "out": 10}
    keyed = es_output(proxy.url, api_key="key-id:key-secret", pipeline="enrich-%{[network.transport]}")
    assert counter(run_in_process(counting_pipeline(tmp_path, 10, keyed)).outputs, "elasticsearch") == {
        "in": 10,
        "dropped.rejected": 10,
    }
    first, second = proxy.bulk_requests()
    assert first.headers["authorization"] == "Basic ZWxhc3RpYzpzM2NyZXQ="  # elastic:s3cret
    assert first.headers["content-encoding"] == "gzip"
    assert second.headers["authorization"] == "ApiKey a2V5LWlkOmtleS1zZWNyZXQ="  # key-id:key-secret
    assert "content-encoding" not in second.headers
    assert {action["index"]["pipeline"] for action in second.bulk_actions()} == {"enrich-udp"}
    # osmem has no ingest pipelines: it refuses each item naming the pipeline it was asked for.
    dead = ndjson(tmp_path / "elasticsearch.dead-letter.ndjson")
    assert {record["error"]["reason"] for record in dead} == {"pipeline with id [enrich-udp] does not exist"}
    assert len(search_all(cluster, "flowpipe-*")) == 10


def test_tls_with_a_ca_file_and_each_verification_mode(
    tmp_path: Path, cluster: str, caplog: pytest.LogCaptureFixture
) -> None:
    ca, server_context = make_certificates(tmp_path)
    with BulkProxy(cluster, tls=server_context) as proxy:
        port = proxy.port

        def run(host: str, **ssl: Any) -> dict[str, int]:
            output = es_output(f"https://{host}:{port}", ssl=ssl)
            summary = run_in_process(counting_pipeline(tmp_path, 10, output, shutdown_timeout="1s"))
            return counter(summary.outputs, "elasticsearch")

        assert run("127.0.0.1", certificate_authorities=[str(ca)]) == {"in": 10, "out": 10}
        assert (
            run("localhost", certificate_authorities=[str(ca)], verification_mode="certificate")["out"] == 10
        )
        assert run("localhost", verification_mode="none") == {"in": 10, "out": 10}
        refused = run("localhost", certificate_authorities=[str(ca)])  # the certificate names 127.0.0.1 only
        assert "out" not in refused and refused["dropped.undelivered"] == 10
        assert "Hostname mismatch, certificate is not valid for 'localhost'" in caplog.text
    assert len(search_all(cluster, "flowpipe-*")) == 30
