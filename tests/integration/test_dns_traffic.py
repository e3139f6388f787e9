"""The ``dns`` analyzer on real traffic: ``dig`` asking a local ``dnsmasq`` over UDP and TCP.

dnsmasq runs in the foreground on 127.0.0.1 and a free port, with no upstream servers and no
hosts file, and answers only what its command line defines (``--host-record``, ``--mx-host``,
``--txt-record``, ``--srv-host``, ``--cname``; ``--local`` makes other names under
``example.com`` NXDOMAIN). Every dig run is captured with tcpdump into one file that the real
pipeline decodes once; each test checks one exchange, found by the DNS id dig printed, with the
sizes dig printed. Needs the Debian packages dnsutils, dnsmasq-base and tcpdump (and root for
the capture).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from analyzers import transactions
from sniff import free_port, sniffing, wait_for_port

DNSMASQ_RECORDS = [
    "--local=/example.com/",
    "--host-record=www.example.com,192.0.2.10,2001:db8::10",
    "--host-record=mail.example.com,192.0.2.25",
    "--mx-host=example.com,mail.example.com,10",
    "--txt-record=example.com,v=spf1 -all",
    "--srv-host=_sip._tcp.example.com,sip.example.com,5060,10,20",
    "--cname=alias.example.com,www.example.com",
]
QUERIES = {
    "a": ["www.example.com", "A"],
    "aaaa": ["www.example.com", "AAAA"],
    "mx": ["example.com", "MX"],
    "txt": ["example.com", "TXT"],
    "srv": ["_sip._tcp.example.com", "SRV"],
    "nxdomain": ["nope.example.com", "A"],
    "noedns": ["mail.example.com", "A", "+noedns"],
    "tcp": ["alias.example.com", "A", "+tcp"],
}
SUFFIXES = "// test list\ncom\n"
AUTHORITATIVE = {
    "authoritative": True,
    "truncated_response": False,
    "recursion_desired": True,
    "recursion_available": True,
    "authentic_data": False,
    "checking_disabled": False,
}
EDNS = {"version": "0", "do": False, "ext_rcode": "NOERROR", "udp_size": 1232}


@dataclass
class DigRun:
    """What dig printed about one exchange."""

    id: int
    query_size: int
    response_size: int


@dataclass
class Traffic:
    port: int
    runs: dict[str, DigRun]
    events: dict[int, dict[str, Any]]
    """The published transactions by DNS id."""
    counters: dict[str, int]


def dig(port: int, name: str, rtype: str, *options: str) -> DigRun:
    output = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+qr", "+tries=1", "+time=5", *options, name, rtype],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    sent = re.search(r"id: (\d+)", output)
    query_size = re.search(r";; QUERY SIZE: (\d+)", output)
    response_size = re.search(r";; MSG SIZE\s+rcvd: (\d+)", output)
    assert sent and query_size and response_size, output
    return DigRun(int(sent.group(1)), int(query_size.group(1)), int(response_size.group(1)))


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    for program, package in (("dig", "dnsutils"), ("dnsmasq", "dnsmasq-base")):
        if shutil.which(program) is None:
            pytest.skip(f"this test needs '{program}' (Debian package {package}), which is not installed")
    folder = tmp_path_factory.mktemp("dns")
    port = free_port()
    with sniffing(folder / "dns.pcap", f"host 127.0.0.1 and port {port}") as capture:
        log = (folder / "dnsmasq.log").open("w")
        server = subprocess.Popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                f"--port={port}",
                *DNSMASQ_RECORDS,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port)
            runs = {key: dig(port, *query) for key, query in QUERIES.items()}
        finally:
            server.terminate()
            server.wait(timeout=10)
            log.close()
    (folder / "suffixes.dat").write_text(SUFFIXES)
    decoded = transactions(folder, capture, {"dns": {"ports": [port], "public_suffix_list": "suffixes.dat"}})
    events = {event["dns"]["id"]: event for event in decoded}
    assert len(events) == len(decoded) == len(QUERIES)
    yield Traffic(port, runs, events, decoded.counters)


def exchange(traffic: Traffic, key: str) -> dict[str, Any]:
    """The event of one dig run, after checking what every exchange shares."""
    run = traffic.runs[key]
    event = traffic.events[run.id]
    transport = "tcp" if key == "tcp" else "udp"
    assert event["type"] == "dns"
    assert event["network"]["transport"] == transport
    assert event["network"]["type"] == "ipv4"
    assert event["client"]["ip"] == event["server"]["ip"] == "127.0.0.1"
    assert event["server"]["port"] == traffic.port
    assert (event["client"]["bytes"], event["server"]["bytes"]) == (run.query_size, run.response_size)
    assert event["method"] == "QUERY"
    assert event["dns"]["type"] == "answer"
    assert event["dns"]["op_code"] == "QUERY"
    assert event["event"]["duration"] > 0
    assert "notes" not in event
    return event


def question(name: str, qtype: str) -> dict[str, str]:
    fields = {"name": name, "type": qtype, "class": "IN", "registered_domain": "example.com"}
    fields.update(etld_plus_one="example.com", top_level_domain="com")
    if name != "example.com":
        fields["subdomain"] = name.removesuffix(".example.com")
    return fields


def test_an_a_query_over_udp(traffic: Traffic) -> None:
    event = exchange(traffic, "a")
    assert event["status"] == "OK"
    assert event["query"] == "class IN, type A, www.example.com"
    assert event["resource"] == "www.example.com"
    assert event["related"]["ip"] == ["127.0.0.1", "192.0.2.10"]
    assert event["dns"] == {
        "type": "answer",
        "id": traffic.runs["a"].id,
        "op_code": "QUERY",
        "flags": AUTHORITATIVE,
        "response_code": "NOERROR",
        "header_flags": ["AA", "RD", "RA"],
        "question": question("www.example.com", "A"),
        "opt": EDNS,
        "answers_count": 1,
        "answers": [{"name": "www.example.com", "type": "A", "class": "IN", "ttl": 0, "data": "192.0.2.10"}],
        "resolved_ip": ["192.0.2.10"],
        "authorities_count": 0,
        "additionals_count": 0,
    }


def test_an_aaaa_query_over_udp(traffic: Traffic) -> None:
    dns = exchange(traffic, "aaaa")["dns"]
    assert dns["question"] == question("www.example.com", "AAAA")
    assert dns["answers"] == [
        {"name": "www.example.com", "type": "AAAA", "class": "IN", "ttl": 0, "data": "2001:db8::10"}
    ]
    assert dns["resolved_ip"] == ["2001:db8::10"]


def test_an_mx_query_gets_the_exchange_and_its_address_as_additional(traffic: Traffic) -> None:
    event = exchange(traffic, "mx")
    assert event["query"] == "class IN, type MX, example.com"
    dns = event["dns"]
    assert dns["question"] == question("example.com", "MX")
    assert dns["answers"] == [
        {
            "name": "example.com",
            "type": "MX",
            "class": "IN",
            "ttl": 0,
            "preference": 10,
            "data": "mail.example.com",
        }
    ]
    assert (dns["answers_count"], dns["authorities_count"], dns["additionals_count"]) == (1, 0, 1)
    assert "resolved_ip" not in dns


def test_a_txt_query(traffic: Traffic) -> None:
    dns = exchange(traffic, "txt")["dns"]
    assert dns["answers"] == [
        {"name": "example.com", "type": "TXT", "class": "IN", "ttl": 0, "data": "v=spf1 -all"}
    ]


def test_an_srv_query(traffic: Traffic) -> None:
    dns = exchange(traffic, "srv")["dns"]
    assert dns["question"] == question("_sip._tcp.example.com", "SRV")
    assert dns["answers"] == [
        {
            "name": "_sip._tcp.example.com",
            "type": "SRV",
            "class": "IN",
            "ttl": 0,
            "priority": 10,
            "weight": 20,
            "port": 5060,
            "data": "sip.example.com",
        }
    ]


def test_an_unknown_name_is_nxdomain_and_an_error(traffic: Traffic) -> None:
    event = exchange(traffic, "nxdomain")
    assert event["status"] == "Error"
    assert event["event"]["type"] == ["connection", "protocol", "error"]
    dns = event["dns"]
    assert dns["response_code"] == "NXDOMAIN"
    assert dns["question"] == question("nope.example.com", "A")
    assert dns["answers_count"] == 0
    assert "answers" not in dns


def test_a_query_without_edns_gets_an_answer_without_it(traffic: Traffic) -> None:
    dns = exchange(traffic, "noedns")["dns"]
    assert "opt" not in dns
    assert dns["resolved_ip"] == ["192.0.2.25"]
    assert dns["additionals_count"] == 0


def test_a_cname_chain_over_tcp(traffic: Traffic) -> None:
    event = exchange(traffic, "tcp")
    assert event["query"] == "class IN, type A, alias.example.com"
    dns = event["dns"]
    assert dns["flags"] == AUTHORITATIVE
    assert dns["opt"] == EDNS
    assert dns["answers"] == [
        {"name": "alias.example.com", "type": "CNAME", "class": "IN", "ttl": 0, "data": "www.example.com"},
        {"name": "www.example.com", "type": "A", "class": "IN", "ttl": 0, "data": "192.0.2.10"},
    ]
    assert dns["resolved_ip"] == ["192.0.2.10"]
    assert traffic.counters["streams.dns"] == 2  # dig's connection and wait_for_port's probe


def test_every_message_was_paired_and_nothing_dropped(traffic: Traffic) -> None:
    assert traffic.counters["dns.transactions"] == len(QUERIES)
    assert {
        name: count for name, count in traffic.counters.items() if "dropped" in name or "unmatched" in name
    } == {}
