"""Processors through the real CLI: ``flowpipe check`` names the exact place of an invalid
condition, ``flowpipe run`` enriches a capture with ``geoip`` (databases written by the test)
and drops internal traffic with a condition, and a missing database fails the start in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dpkt
from captures import tcp_frame, udp_frame, write_pcap
from geoip_databases import write_asn_database, write_city_database
from summary_lines import parse_summary

T0 = 1_700_000_000.0
PACKETS = [
    (T0, tcp_frame("81.2.69.160", "10.0.0.1", 40000, 443, flags=dpkt.tcp.TH_SYN)),
    (T0 + 0.5, udp_frame("10.0.0.5", "10.0.0.6", 5353, 53, b"internal")),
    (T0 + 1, udp_frame("192.168.1.2", "89.160.20.128", 5000, 53, b"query")),
    (T0 + 1.5, udp_frame("fd00::2", "fd00::3", 5000, 53, b"internal")),
    (T0 + 2, udp_frame("2a02:ec80::5", "fd00::1", 6000, 123, b"ntp")),
]
PIPELINE = """\
inputs:
  - type: pcap
    files: [capture.pcap]
decoders:
  - type: ip
    flows: {enabled: false}
processors:
  - type: geoip
    database: city.mmdb
    asn_database: asn.mmdb
  - type: drop
    when:
      and:
        - network: {source.ip: private}
        - network: {destination.ip: [private, loopback]}
  - type: drop_fields
    fields: [event, network.iana_number]
outputs:
  - type: stdout
"""
UNITED_KINGDOM = {
    "continent_name": "Europe",
    "continent_code": "EU",
    "country_name": "United Kingdom",
    "country_iso_code": "GB",
}


def flowpipe(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def prepare(folder: Path, pipeline: str = PIPELINE) -> None:
    write_pcap(folder / "capture.pcap", PACKETS)
    write_city_database(folder / "city.mmdb")
    write_asn_database(folder / "asn.mmdb")
    (folder / "pipeline.yml").write_text(pipeline)


def test_run_enriches_and_drops_by_condition(tmp_path: Path) -> None:
    prepare(tmp_path)
    result = flowpipe(tmp_path, "run", "-c", "pipeline.yml")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:20.000Z",
            "network": {"type": "ipv4", "transport": "tcp", "bytes": 54},
            "source": {
                "ip": "81.2.69.160",
                "port": 40000,
                "geo": {
                    **UNITED_KINGDOM,
                    "region_name": "England",
                    "region_iso_code": "GB-ENG",
                    "city_name": "London",
                    "postal_code": "EC1A",
                    "timezone": "Europe/London",
                    "location": {"lat": 51.5142, "lon": -0.0931},
                },
                "as": {"number": 20712, "organization": {"name": "Andrews & Arnold Ltd"}},
            },
            "destination": {"ip": "10.0.0.1", "port": 443},
        },
        {
            "@timestamp": "2023-11-14T22:13:21.000Z",
            "network": {"type": "ipv4", "transport": "udp", "bytes": 47},
            "source": {"ip": "192.168.1.2", "port": 5000},
            "destination": {
                "ip": "89.160.20.128",
                "port": 53,
                "geo": {
                    "continent_name": "Europe",
                    "continent_code": "EU",
                    "country_name": "Sweden",
                    "country_iso_code": "SE",
                    "region_name": "Östergötland County",
                    "region_iso_code": "SE-E",
                    "city_name": "Linköping",
                    "timezone": "Europe/Stockholm",
                    "location": {"lat": 58.4167, "lon": 15.6167},
                },
                "as": {"number": 29518, "organization": {"name": "Bredband2 AB"}},
            },
        },
        {
            "@timestamp": "2023-11-14T22:13:22.000Z",
            "network": {"type": "ipv6", "transport": "udp", "bytes": 65},
            "source": {
                "ip": "2a02:ec80::5",
                "port": 6000,
                "geo": {
                    "continent_name": "Europe",
                    "continent_code": "EU",
                    "country_name": "Sweden",
                    "country_iso_code": "SE",
                },
            },
            "destination": {"ip": "fd00::1", "port": 123},
        },
    ]
    stages = parse_summary(result.stderr)
    assert stages[("processor", "geoip")] == {"in": 5, "out": 5, "enriched": 3, "skipped": 7}
    assert stages[("processor", "drop")] == {"in": 5, "out": 3, "dropped.condition": 2}
    assert stages[("processor", "drop_fields")] == {"in": 3, "out": 3}
    assert stages[("output", "stdout")] == {"in": 3, "out": 3}


INVALID = """\
inputs:
  - type: pcap
    files: [capture.pcap]
processors:
  - type: drop
    when:
      or:
        - equals: {network.transport: udp}
        - regexp:
            url.path: "^/admin["
  - type: add_tags
    tags: [checked]
    when:
      range: {source.port: {gte: low}}
  - type: drop
    when:
      not:
        network: {destination.ip: [private, 10.0.0.0/33]}
  - type: geoip
    database: city.mmdb
    when:
      equal: {a: b}
outputs:
  - type: stdout
"""


def test_check_names_the_place_of_an_invalid_condition(tmp_path: Path) -> None:
    prepare(tmp_path, INVALID)
    result = flowpipe(tmp_path, "check", "-c", "pipeline.yml")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "flowpipe: pipeline.yml:10:13: processors.0.when.or.1.regexp.url.path: "
        "invalid regular expression '^/admin[': unterminated character set at position 7",
        "flowpipe: pipeline.yml:14:29: processors.1.when.range.source.port.gte: expected a number, got 'low'",
        "flowpipe: pipeline.yml:18:45: processors.2.when.not.network.destination.ip.1: "
        "invalid network '10.0.0.0/33': expected a CIDR such as 192.0.2.0/24 or 2001:db8::/32, or one of "
        "loopback, global_unicast, unicast, link_local_unicast, interface_local_multicast, "
        "link_local_multicast, multicast, unspecified, private, public",
        "flowpipe: pipeline.yml:22:7: processors.3.when.equal: unknown condition operator "
        "(did you mean 'equals'?); operators: equals, contains, regexp, range, has_fields, network, "
        "and, or, not",
    ]


def test_a_missing_database_fails_the_start_in_one_line(tmp_path: Path) -> None:
    prepare(tmp_path, PIPELINE.replace("database: city.mmdb", "database: maps/GeoLite2-City.mmdb"))
    assert flowpipe(tmp_path, "check", "-c", "pipeline.yml").returncode == 0  # check opens nothing
    result = flowpipe(tmp_path, "run", "-c", "pipeline.yml")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"flowpipe: geoip 'geoip': database {tmp_path / 'maps/GeoLite2-City.mmdb'}: no such file\n"
    )
