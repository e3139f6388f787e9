"""The ``opensearch`` output against a real server: osmem-server, directly (opensearch-py talks to it as is).

The test proxy is used only where a test needs faults, TLS or a look at the requests. The bulk
machinery is the one the ``elasticsearch`` output uses (its tests cover data streams, missing
fields and two outputs at once); these tests cover what goes through opensearch-py: requests,
error answers, connection failures, credentials and TLS.
"""

from __future__ import annotations

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
from summary_lines import parse_summary

osmem, cluster, proxy = servers.osmem, servers.cluster, servers.proxy  # the fixtures


def os_output(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "opensearch", "hosts": [url], "backoff": FAST_BACKOFF, **options}


def test_events_arrive_field_for_field_as_the_file_output_writes_them(tmp_path: Path, cluster: str) -> None:
    result = run_flowpipe(capture_pipeline(tmp_path, FILE, os_output(cluster, compression=True)))
    assert result.returncode == 0, result.stderr
    written = ndjson(tmp_path / "events.ndjson")
    assert len(written) == 6
    assert canonical(search_all(cluster, "flowpipe-*")) == canonical(written)
    mappings = request(cluster, "GET", f"/{DAY_INDEX}/_mapping")[DAY_INDEX]["mappings"]
    assert field_type(mappings, "destination.ip") == {"type": "ip"}
    assert field_type(mappings, "event.end") == {"type": "date"}
    assert installed_template(cluster)["template"]["mappings"]["properties"]["source"]["properties"][
        "geo"
    ] == {
        "properties": {
            "location": {"type": "geo_point"},
            "country_iso_code": {"type": "keyword", "ignore_above": 1024},
            "country_name": {"type": "keyword", "ignore_above": 1024},
            "region_iso_code": {"type": "keyword", "ignore_above": 1024},
            "region_name": {"type": "keyword", "ignore_above": 1024},
            "city_name": {"type": "keyword", "ignore_above": 1024},
        }
    }
    assert parse_summary(result.stderr)[("output", "opensearch")] == {"in": 6, "out": 6}


def test_429_503_and_lost_connections_then_every_event_arrives_exactly_once(
    tmp_path: Path, cluster: str, proxy: BulkProxy
) -> None:
    proxy.fail(503, count=3)
    proxy.fail(429, count=2)
    proxy.reject_items(count=3)
    proxy.drop(count=2)
    config = counting_pipeline(tmp_path, 600, FILE, os_output(proxy.url, bulk_max_size=40, workers=3))
    summary = run_in_process(config)
    faults = [bulk.fault for bulk in proxy.bulk_requests() if bulk.fault]
    assert sorted(faults) == ["drop"] * 2 + ["reject_items"] * 3 + ["status"] * 5
    assert canonical(search_all(cluster, "flowpipe-*")) == canonical(ndjson(tmp_path / "events.ndjson"))
    output = counter(summary.outputs, "opensearch")
    assert output["in"] == output["out"] == 600 and 0 < output["retries"] <= len(faults)
    assert max(bulk.body.count(b"\n") // 2 for bulk in proxy.bulk_requests()) == 40  # bulk_max_size


def test_a_mapping_conflict_goes_to_the_dead_letter_file_and_the_rest_arrive(
    tmp_path: Path, cluster: str
) -> None:
    conflict = {"mappings": {"properties": {"network": {"properties": {"transport": {"type": "long"}}}}}}
    assert request(cluster, "PUT", f"/{DAY_INDEX}", conflict)["acknowledged"] is True
    result = run_flowpipe(capture_pipeline(tmp_path, FILE, os_output(cluster), decoders=PER_PACKET))
    assert result.returncode == 0, result.stderr
    written = ndjson(tmp_path / "events.ndjson")  # every event has a network.transport text
    dead = ndjson(tmp_path / "opensearch.dead-letter.ndjson")
    assert [record["event"] for record in dead] == written
    assert {(record["status"], record["error"]["type"]) for record in dead} == {
        (400, "mapper_parsing_exception")
    }
    assert search_all(cluster, DAY_INDEX) == []
    assert parse_summary(result.stderr)[("output", "opensearch")] == {
        "in": 12,
        "out": 0,
        "dropped.rejected": 12,
    }


def test_cluster_down_at_start_then_up_gets_every_event(tmp_path: Path) -> None:
    server = Osmem()
    flowpipe = Background(counting_pipeline(tmp_path, 300, os_output(server.url)))
    try:
        flowpipe.wait_for("cannot install index template 'flowpipe' yet")
        flowpipe.wait_for("retrying in")
        server.start()
        status, stderr = flowpipe.finish()
        assert status == 0, stderr
        assert len({document["source"]["ip"] for document in search_all(server.url, "flowpipe-*")}) == 300
        summary = parse_summary(stderr)[("output", "opensearch")]
        assert summary["in"] == summary["out"] == 300
    finally:
        server.stop()


def test_a_refused_login_at_start_stops_the_run_with_one_line(tmp_path: Path, proxy: BulkProxy) -> None:
    proxy.fail(403, bulk_only=False)
    result = run_flowpipe(counting_pipeline(tmp_path, 10, os_output(proxy.url, api_key="bm9wZTpub3Bl")))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"flowpipe: output 'opensearch': cannot install index template 'flowpipe' on {proxy.url}: "
        "HTTP 403 Forbidden"
    ]
    assert {recorded.headers["authorization"] for recorded in proxy.requests} == {"ApiKey bm9wZTpub3Bl"}


def test_credentials_reach_the_cluster(tmp_path: Path, proxy: BulkProxy) -> None:
    run_in_process(counting_pipeline(tmp_path, 5, os_output(proxy.url, username="admin", password="s3cret")))
    run_in_process(counting_pipeline(tmp_path, 5, os_output(proxy.url, api_key="key-id:key-secret")))
    first, second = proxy.bulk_requests()
    assert first.headers["authorization"] == "Basic YWRtaW46czNjcmV0"  # admin:s3cret
    assert second.headers["authorization"] == "ApiKey a2V5LWlkOmtleS1zZWNyZXQ="  # key-id:key-secret


def test_tls_with_a_ca_file_and_each_verification_mode(
    tmp_path: Path, cluster: str, caplog: pytest.LogCaptureFixture
) -> None:
    ca, server_context = make_certificates(tmp_path)
    with BulkProxy(cluster, tls=server_context) as tls_proxy:

        def run(host: str, **ssl: Any) -> dict[str, int]:
            output = os_output(f"https://{host}:{tls_proxy.port}", ssl=ssl)
            summary = run_in_process(counting_pipeline(tmp_path, 10, output, shutdown_timeout="1s"))
            return counter(summary.outputs, "opensearch")

        assert run("127.0.0.1", certificate_authorities=[str(ca)]) == {"in": 10, "out": 10}
        chain_only = run("localhost", certificate_authorities=[str(ca)], verification_mode="certificate")
        assert chain_only == {"in": 10, "out": 10}
        assert run("localhost", verification_mode="none") == {"in": 10, "out": 10}
        refused = run("localhost", certificate_authorities=[str(ca)])  # the certificate names 127.0.0.1 only
        assert "out" not in refused and refused["dropped.undelivered"] == 10
        assert "Hostname mismatch, certificate is not valid for 'localhost'" in caplog.text
    assert len(search_all(cluster, "flowpipe-*")) == 30
