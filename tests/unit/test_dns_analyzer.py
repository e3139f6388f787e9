"""The ``dns`` analyzer on crafted messages: names (compression, loops, limits, escaping), every
decoded record type, EDNS, malformed and truncated messages, UDP and TCP (framing split at every
offset, many messages per segment, max_message_size), id correlation, timeouts, notes, content
detection, the per-transport port check and registered domains. Every expected field is spelled
out. The real ``protocol`` decoder drives the analyzer; a few tests run the whole pipeline on a
capture file."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
import textwrap
from pathlib import Path
from typing import Any

import pytest
from analyzers import transactions
from captures import tcp_conversation, udp_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowpipe import StageContext, StartupError
from flowpipe.config import load_pipeline
from flowpipe.errors import ConfigError
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace
from flowpipe.plugins.decoders.protocol import ProtocolDecoder
from flowpipe.plugins.decoders.protocols.dns import (
    KNOWN_NAMES,
    DnsAnalyzer,
    IncompleteError,
    MalformedError,
    PublicSuffixList,
    TcpFramer,
    parse_message,
    read_name,
)
from flowpipe.plugins.decoders.transport import CLOSED, DATA, DATAGRAM, Flow, StreamEvent
from flowpipe.registry import Registry

T0 = 1_700_000_000.0
CLIENT_IP, SERVER_IP = "192.0.2.1", "198.51.100.53"
QUERY, RESPONSE = 0x0100, 0x8180  # RD; QR RD RA
NXDOMAIN = 0x8183

# -- building messages ---------------------------------------------------------------------------


def name(text: str) -> bytes:
    """``text`` as an uncompressed wire-format name."""
    if text == ".":
        return b"\x00"
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".")) + b"\x00"


QNAME_POINTER = b"\xc0\x0c"
"""A compression pointer to the question's name (right after the header)."""


def question(qname: str = "www.example.com", qtype: int = 1, qclass: int = 1) -> bytes:
    return name(qname) + struct.pack("!HH", qtype, qclass)


def rr(rtype: int, rdata: bytes, owner: bytes = QNAME_POINTER, ttl: int = 300, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def opt(udp_size: int = 1232, ext_rcode: int = 0, version: int = 0, do: bool = False) -> bytes:
    ttl = (ext_rcode << 24) | (version << 16) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", 41, udp_size, ttl, 0)


def message(
    ident: int,
    flags: int,
    questions: tuple[bytes, ...] = (question(),),
    answers: tuple[bytes, ...] = (),
    authorities: tuple[bytes, ...] = (),
    additionals: tuple[bytes, ...] = (),
) -> bytes:
    counts = (len(questions), len(answers), len(authorities), len(additionals))
    return struct.pack("!6H", ident, flags, *counts) + b"".join(
        (*questions, *answers, *authorities, *additionals)
    )


def a(address: str, **kwargs: Any) -> bytes:
    return rr(1, ipaddress.IPv4Address(address).packed, **kwargs)


def tcp_framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(data)) + data for data in messages)


# -- driving the real protocol decoder -----------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.default()


class Harness:
    """A ``protocol`` decoder built as the pipeline builds it, fed stream items directly."""

    def __init__(self, registry: Registry, tmp_path: Path, **dns_options: Any) -> None:
        dns_options.setdefault("public_suffix_list", "")
        options = {"protocols": {"dns": dns_options}}
        config = build_namespace(ProtocolDecoder.schema(registry), options)
        context = StageContext(
            "protocol", Counters("protocol", "decoder"), base_dir=tmp_path, registry=registry
        )
        self.decoder = ProtocolDecoder(config, context)
        self.decoder.open()
        self.events: list[dict[str, Any]] = []
        self.ports = 40000

    @property
    def counters(self) -> dict[str, int]:
        return self.decoder.context.counters.values

    def flow(self, protocol: int = 17, server_port: int = 53) -> Flow:
        self.ports += 1
        return Flow(
            ("flow", self.ports, protocol),
            protocol,
            "ipv4",
            CLIENT_IP,
            self.ports,
            SERVER_IP,
            server_port,
            T0,
        )

    def feed(self, *items: StreamEvent) -> list[dict[str, Any]]:
        self.decoder.decode(list(items), self.events)
        return self.events

    def flush(self) -> list[dict[str, Any]]:
        self.decoder.flush(self.events)
        return self.events


@pytest.fixture
def harness(registry: Registry, tmp_path: Path) -> Harness:
    return Harness(registry, tmp_path)


def datagram(flow: Flow, data: bytes, t: float = 0.0, from_client: bool = True, gap: int = 0) -> StreamEvent:
    return StreamEvent(DATAGRAM, T0 + t, flow, from_client, data, gap)


def segment(flow: Flow, data: bytes, t: float = 0.0, from_client: bool = True) -> StreamEvent:
    return StreamEvent(DATA, T0 + t, flow, from_client, data)


def closed(flow: Flow, t: float = 1.0) -> StreamEvent:
    return StreamEvent(CLOSED, T0 + t, flow, True, b"", 0, "fin")


FLAGS_RD_RA = {
    "authoritative": False,
    "truncated_response": False,
    "recursion_desired": True,
    "recursion_available": True,
    "authentic_data": False,
    "checking_disabled": False,
}
WWW_QUERY = message(0x1234, QUERY)
WWW_RESPONSE = message(0x1234, RESPONSE, answers=(a("192.0.2.10"), a("192.0.2.11", ttl=60)))

# -- names ---------------------------------------------------------------------------------------

HEADER = bytes(12)


def test_a_name_and_the_offset_after_it() -> None:
    data = HEADER + name("www.example.com") + b"rest"
    assert read_name(data, 12) == ("www.example.com", 29)


def test_the_root_name_is_a_dot() -> None:
    assert read_name(HEADER + b"\x00", 12) == (".", 13)


def test_a_pointer_continues_the_name_and_ends_it_on_the_wire() -> None:
    data = HEADER + name("example.com") + b"\x03www\xc0\x0c" + b"tail"
    assert read_name(data, 25) == ("www.example.com", 31)


def test_pointers_may_chain_backwards() -> None:
    data = HEADER + name("com") + b"\x07example\xc0\x0c" + b"\x03www\xc0\x11"
    assert read_name(data, 27) == ("www.example.com", 33)


@pytest.mark.parametrize(
    ("data", "offset", "problem"),
    [
        (HEADER + b"\xc0\x0c", 12, "points to itself"),
        (HEADER + b"\xc0\x0e\x00", 12, "points forward"),
        (HEADER + b"\x01a\xc0\x0c", 12, "a loop back to the name's own start"),
        (HEADER + b"\x01a\x00" + b"\x01b\xc0\x0f" + b"\xc0\x0f", 19, "a loop through an earlier pointer"),
        (HEADER + b"\xc0\x05", 12, "points into the header"),
        (HEADER + b"\x41" + b"x" * 65 + b"\x00", 12, "label type 01 (extended)"),
        (HEADER + b"\x81" + b"x" * 2 + b"\x00", 12, "label type 10"),
        (HEADER + (b"\x3f" + b"x" * 63) * 4 + b"\x00", 12, "257 octets"),
    ],
)
def test_malformed_names_are_refused(data: bytes, offset: int, problem: str) -> None:
    with pytest.raises(MalformedError):
        read_name(data, offset)


def test_a_name_of_exactly_255_octets_is_fine() -> None:
    labels = ["a" * 63] * 3 + ["b" * 61]
    data = HEADER + name(".".join(labels))
    assert read_name(data, 12) == (".".join(labels), 12 + 255)


def test_the_length_limit_holds_through_names_read_before() -> None:
    qname = ".".join(["a" * 63, "b" * 63, "c" * 63])  # 193 octets on the wire
    for length, fits in ((61, True), (62, False)):
        owner = bytes([length]) + b"d" * length + QNAME_POINTER
        data = message(1, RESPONSE, questions=(question(qname),), answers=(a("192.0.2.1", owner=owner),))
        if fits:
            assert parse_message(data).answers[0]["name"] == "d" * length + "." + qname
        else:
            with pytest.raises(MalformedError, match="longer than 255"):
                parse_message(data)


@pytest.mark.parametrize("data", [HEADER + b"\x03ww", HEADER + b"\x03www", HEADER + b"\xc0"])
def test_a_name_running_past_the_data_is_incomplete(data: bytes) -> None:
    with pytest.raises(IncompleteError):
        read_name(data, 12)


def test_special_bytes_in_labels_are_escaped() -> None:
    data = HEADER + b'\x07a.b\\c"d' + b"\x05t\tu\xff " + b"\x00"
    assert read_name(data, 12) == ('a\\.b\\\\c\\"d.t\\tu\\255 ', 27)


def pointer_chain(count: int) -> bytes:
    """The root name, then ``count`` pointers each pointing at the one before it."""
    targets = [12] + [13 + 2 * index for index in range(count - 1)]
    return HEADER + b"\x00" + b"".join(struct.pack("!H", 0xC000 | target) for target in targets)


def test_a_long_pointer_chain_is_cut_off() -> None:
    data = pointer_chain(64)
    assert read_name(data, len(data) - 2) == (".", len(data))
    data = pointer_chain(65)
    with pytest.raises(MalformedError, match="too many"):
        read_name(data, len(data) - 2)


# -- record data ---------------------------------------------------------------------------------

NSEC_BITMAP = b"\x00\x06\x40\x01\x00\x00\x00\x03" + b"\x01\x01\x40"  # A MX RRSIG NSEC | CAA

RECORDS = [
    (1, bytes([192, 0, 2, 1]), "A", {"data": "192.0.2.1"}),
    (28, ipaddress.IPv6Address("2001:db8::1").packed, "AAAA", {"data": "2001:db8::1"}),
    (2, name("ns1.example.com"), "NS", {"data": "ns1.example.com"}),
    (5, QNAME_POINTER, "CNAME", {"data": "www.example.com"}),
    (12, name("host.example.com"), "PTR", {"data": "host.example.com"}),
    (39, name("example.net"), "DNAME", {"data": "example.net"}),
    (15, b"\x00\x0a" + name("mail.example.com"), "MX", {"preference": 10, "data": "mail.example.com"}),
    (
        6,
        name("ns1.example.com")
        + name("hostmaster.example.com")
        + struct.pack("!5I", 2024010101, 7200, 3600, 1209600, 300),
        "SOA",
        {
            "data": "ns1.example.com",
            "rname": "hostmaster.example.com",
            "serial": 2024010101,
            "refresh": 7200,
            "retry": 3600,
            "expire": 1209600,
            "minimum": 300,
        },
    ),
    (
        33,
        struct.pack("!3H", 10, 20, 5060) + name("sip.example.com"),
        "SRV",
        {"priority": 10, "weight": 20, "port": 5060, "data": "sip.example.com"},
    ),
    (16, b"\x0bv=spf1 -all\x05hello", "TXT", {"data": "v=spf1 -all hello"}),
    (16, b'\x05a"b\\\x01', "TXT", {"data": 'a\\"b\\\\\\001'}),
    (16, b"", "TXT", {"data": ""}),
    (99, b"\x0bv=spf1 -all", "SPF", {"data": "v=spf1 -all"}),
    (13, b"\x03x86\x05Linux", "HINFO", {"cpu": "x86", "os": "Linux", "data": "x86 Linux"}),
    (
        35,
        struct.pack("!2H", 100, 10) + b"\x01S\x07SIP+D2U\x00" + name("_sip._udp.example.com"),
        "NAPTR",
        {
            "order": 100,
            "preference": 10,
            "flags": "S",
            "service": "SIP+D2U",
            "regexp": "",
            "data": "_sip._udp.example.com",
        },
    ),
    (
        43,
        struct.pack("!HBB", 60485, 5, 1) + bytes.fromhex("2bb183af5f22588179a53b0a98631fad1a292118"),
        "DS",
        {
            "key_tag": 60485,
            "algorithm": 5,
            "digest_type": 1,
            "data": "2BB183AF5F22588179A53B0A98631FAD1A292118",
        },
    ),
    (
        48,
        struct.pack("!HBB", 257, 3, 8) + b"\x03\x01\x00\x01",
        "DNSKEY",
        {"flags": 257, "protocol": 3, "algorithm": 8, "data": "AwEAAQ=="},
    ),
    (
        46,
        struct.pack("!HBBIIIH", 1, 8, 3, 3600, 1_700_000_000, 1_699_000_000, 12345)
        + name("example.com")
        + b"\x01\x02\x03",
        "RRSIG",
        {
            "type_covered": "A",
            "algorithm": 8,
            "labels": 3,
            "original_ttl": 3600,
            "expiration": "20231114221320",
            "inception": "20231103082640",
            "key_tag": 12345,
            "signer_name": "example.com",
            "data": "AQID",
        },
    ),
    (
        47,
        name("host.example.com") + NSEC_BITMAP,
        "NSEC",
        {"data": "host.example.com", "type_bits": "A MX RRSIG NSEC CAA"},
    ),
    (
        257,
        b"\x00\x05issue" + b"letsencrypt.org",
        "CAA",
        {"flag": 0, "tag": "issue", "data": "letsencrypt.org"},
    ),
    (44, b"\x01\x01\xab\xcd", "SSHFP", {"data": "0101abcd"}),
    (65280, b"\xde\xad", "TYPE65280", {"data": "dead"}),
]


@pytest.mark.parametrize(
    ("rtype", "rdata", "type_text", "decoded"), RECORDS, ids=[f"{r[2]}-{i}" for i, r in enumerate(RECORDS)]
)
def test_record_data_is_decoded_per_type(
    rtype: int, rdata: bytes, type_text: str, decoded: dict[str, Any]
) -> None:
    parsed = parse_message(message(7, RESPONSE, answers=(rr(rtype, rdata, ttl=3600),)))
    assert parsed.answers == [
        {"name": "www.example.com", "type": type_text, "class": "IN", "ttl": 3600, **decoded}
    ]
    assert parsed.complete


def test_an_a_record_of_another_class_is_shown_as_hex() -> None:
    parsed = parse_message(message(7, RESPONSE, answers=(rr(1, b"\x00\x01\x02\x03", rclass=3),)))
    assert parsed.answers == [
        {"name": "www.example.com", "type": "A", "class": "CH", "ttl": 300, "data": "00010203"}
    ]


@pytest.mark.parametrize(
    ("rtype", "rdata"),
    [
        (1, b"\x01\x02\x03"),
        (28, b"\x01\x02\x03\x04"),
        (15, b"\x00\x0a"),
        (15, b"\x00\x0a\x03www"),
        (6, name("a.example") + name("b.example") + b"\x00" * 19),
        (33, b"\x00\x01\x00\x02\x00"),
        (16, b"\x05abc"),
        (13, b"\x03x86"),
        (35, b"\x00\x01\x00\x02\x01S"),
        (43, b"\x00\x01\x05"),
        (48, b"\x01\x01"),
        (46, b"\x00\x01\x08"),
        (47, name("a.example") + b"\x00\x00"),
        (47, name("a.example") + b"\x00\x21" + b"\x00" * 33),
        (47, name("a.example") + b"\x00"),
        (257, b"\x00\x09issue"),
        (5, b"\xc0\x40"),
    ],
)
def test_malformed_record_data_is_refused(rtype: int, rdata: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_message(message(7, RESPONSE, answers=(rr(rtype, rdata),)))


def test_a_name_in_record_data_may_not_run_past_the_record() -> None:
    rdata = b"\x03www"  # the name goes on into the next record's bytes
    data = message(7, RESPONSE, answers=(rr(5, rdata), a("192.0.2.1", owner=b"\x00")))
    with pytest.raises(MalformedError):
        parse_message(data)


# -- messages ------------------------------------------------------------------------------------


def test_a_message_shorter_than_a_header_is_incomplete() -> None:
    with pytest.raises(IncompleteError):
        parse_message(b"\x00" * 11)


def test_records_running_past_the_message_make_it_malformed_unless_it_was_cut() -> None:
    data = message(9, RESPONSE, answers=(a("192.0.2.1"), a("192.0.2.2")))[:-3]
    with pytest.raises(IncompleteError):
        parse_message(data)
    parsed = parse_message(data, cut=True)
    assert not parsed.complete
    assert [answer["data"] for answer in parsed.answers] == ["192.0.2.1"]
    assert parsed.answers_count == 2


def test_counts_beyond_the_data_are_malformed() -> None:
    data = struct.pack("!6H", 1, RESPONSE, 1, 65535, 0, 0) + question()
    with pytest.raises(MalformedError):
        parse_message(data)


def test_authorities_and_additionals_are_decoded_only_when_asked() -> None:
    data = message(
        3,
        RESPONSE,
        authorities=(rr(2, name("ns1.example.com"), owner=name("example.com")),),
        additionals=(a("192.0.2.53", owner=name("ns1.example.com")), opt()),
    )
    plain = parse_message(data)
    assert (plain.authorities, plain.additionals) == ([], [])
    assert (plain.authorities_count, plain.additionals_count) == (1, 1)
    full = parse_message(data, authorities=True, additionals=True)
    assert full.authorities == [
        {"name": "example.com", "type": "NS", "class": "IN", "ttl": 300, "data": "ns1.example.com"}
    ]
    assert full.additionals == [
        {"name": "ns1.example.com", "type": "A", "class": "IN", "ttl": 300, "data": "192.0.2.53"}
    ]


def test_an_opt_record_not_owned_by_the_root_is_malformed() -> None:
    bad_opt = name("example.com") + opt()[1:]
    with pytest.raises(MalformedError):
        parse_message(message(3, RESPONSE, additionals=(bad_opt,)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedError):
        parse_message(data, authorities=True, additionals=True)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6))
def test_damaged_real_messages_only_ever_raise_malformed(seed: int, damage: list[tuple[int, int]]) -> None:
    data = bytearray(
        message(
            seed,
            RESPONSE,
            answers=(rr(5, name("alias.example.com")), a("192.0.2.1", owner=name("alias.example.com"))),
            authorities=(
                rr(6, name("ns.example.com") + name("h.example.com") + bytes(20), owner=name("example.com")),
            ),
            additionals=(opt(do=True),),
        )
    )
    for position, value in damage:
        data[position % len(data)] = value
    with contextlib.suppress(MalformedError):
        parse_message(bytes(data), authorities=True, additionals=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 120), st.integers(0, 255)), max_size=8))
def test_the_analyzer_never_fails_on_damaged_exchanges(
    harness: Harness, damage: list[tuple[bool, int, int]]
) -> None:
    query, answer = bytearray(WWW_QUERY), bytearray(WWW_RESPONSE)
    for in_query, position, value in damage:
        target = query if in_query else answer
        target[position % len(target)] = value
    udp, tcp = harness.flow(), harness.flow(protocol=6)
    harness.feed(
        datagram(udp, bytes(query)),
        datagram(udp, bytes(answer), from_client=False),
        segment(tcp, tcp_framed(bytes(query))),
        segment(tcp, tcp_framed(bytes(answer)), from_client=False),
        closed(tcp),
    )
    assert "dropped.dns.analyzer_error" not in harness.counters


# -- transactions over UDP -----------------------------------------------------------------------


def test_a_query_and_its_response_make_one_event(harness: Harness) -> None:
    flow = harness.flow()
    events = harness.feed(
        datagram(flow, WWW_QUERY), datagram(flow, WWW_RESPONSE, t=0.0025, from_client=False)
    )
    assert len(events) == 1
    event = events[0]
    assert event["type"] == "dns"
    assert event["status"] == "OK"
    assert event["method"] == "QUERY"
    assert event["query"] == "class IN, type A, www.example.com"
    assert event["resource"] == "www.example.com"
    assert event["network"] == {
        "type": "ipv4",
        "transport": "udp",
        "protocol": "dns",
        "bytes": len(WWW_QUERY) + len(WWW_RESPONSE),
    }
    assert event["event"]["duration"] == 2_500_000
    assert event["event"]["type"] == ["connection", "protocol"]
    assert event["client"] == {"ip": CLIENT_IP, "port": flow.client_port, "bytes": len(WWW_QUERY)}
    assert event["server"] == {"ip": SERVER_IP, "port": 53, "bytes": len(WWW_RESPONSE)}
    assert event["related"] == {"ip": [CLIENT_IP, SERVER_IP, "192.0.2.10", "192.0.2.11"]}
    assert "notes" not in event
    assert event["dns"] == {
        "type": "answer",
        "id": 0x1234,
        "op_code": "QUERY",
        "flags": FLAGS_RD_RA,
        "response_code": "NOERROR",
        "header_flags": ["RD", "RA"],
        "question": {"name": "www.example.com", "type": "A", "class": "IN"},
        "answers_count": 2,
        "answers": [
            {"name": "www.example.com", "type": "A", "class": "IN", "ttl": 300, "data": "192.0.2.10"},
            {"name": "www.example.com", "type": "A", "class": "IN", "ttl": 60, "data": "192.0.2.11"},
        ],
        "resolved_ip": ["192.0.2.10", "192.0.2.11"],
        "authorities_count": 0,
        "additionals_count": 0,
    }
    assert harness.counters == {"dns.transactions": 1}


def test_two_outstanding_queries_answered_in_reverse_order_pair_by_id(harness: Harness) -> None:
    flow = harness.flow()
    first = message(1, QUERY, questions=(question("one.example.com"),))
    second = message(2, QUERY, questions=(question("two.example.com", qtype=28),))
    second_answer = message(
        2,
        RESPONSE,
        questions=(question("two.example.com", qtype=28),),
        answers=(rr(28, ipaddress.IPv6Address("2001:db8::2").packed),),
    )
    first_answer = message(1, RESPONSE, questions=(question("one.example.com"),), answers=(a("192.0.2.1"),))
    events = harness.feed(
        datagram(flow, first, t=0.0),
        datagram(flow, second, t=0.001),
        datagram(flow, second_answer, t=0.005, from_client=False),
        datagram(flow, first_answer, t=0.010, from_client=False),
    )
    assert [
        (e["dns"]["id"], e["resource"], e["dns"]["resolved_ip"], e["event"]["duration"]) for e in events
    ] == [
        (2, "two.example.com", ["2001:db8::2"], 4_000_000),
        (1, "one.example.com", ["192.0.2.1"], 10_000_000),
    ]
    assert all(e["status"] == "OK" and "notes" not in e for e in events)


def test_an_error_response_code_makes_the_status_error(harness: Harness) -> None:
    flow = harness.flow()
    answer = message(
        5,
        NXDOMAIN,
        authorities=(
            rr(6, name("ns.example.com") + name("h.example.com") + bytes(20), owner=name("example.com")),
        ),
    )
    (event,) = harness.feed(
        datagram(flow, message(5, QUERY)), datagram(flow, answer, t=0.001, from_client=False)
    )
    assert event["status"] == "Error"
    assert event["event"]["type"] == ["connection", "protocol", "error"]
    assert event["dns"]["response_code"] == "NXDOMAIN"
    assert event["dns"]["authorities_count"] == 1
    assert "authorities" not in event["dns"]
    assert "resolved_ip" not in event["dns"]


def test_a_query_without_response_times_out_on_capture_time(harness: Harness) -> None:
    flow, other = harness.flow(), harness.flow()
    events = harness.feed(datagram(flow, message(9, QUERY)), datagram(other, message(10, QUERY), t=9.5))
    assert events == []
    (event,) = harness.feed(datagram(other, message(11, QUERY), t=10.5))
    assert event["notes"] == ["no response within transaction_timeout"]
    assert event["status"] == "Error"
    assert event["dns"]["type"] == "query"
    assert event["dns"]["id"] == 9
    assert event["dns"]["flags"]["recursion_desired"] is True
    assert event["server"]["bytes"] == 0
    assert "duration" not in event["event"]
    ends = harness.flush()
    assert [(e["dns"]["id"], e["notes"]) for e in ends[1:]] == [
        (10, ["no response before the end of input"]),
        (11, ["no response before the end of input"]),
    ]
    assert harness.counters["dns.unmatched_requests"] == 3


def test_a_response_alone_is_published_with_a_note(harness: Harness) -> None:
    flow = harness.flow()
    (event,) = harness.feed(datagram(flow, WWW_RESPONSE, from_client=False))
    assert event["notes"] == ["response without a request"]
    assert event["status"] == "OK"  # the shared helper's rule: only an error response is an Error
    assert event["dns"]["type"] == "answer"
    assert event["query"] == "class IN, type A, www.example.com"
    assert event["client"] == {"ip": CLIENT_IP, "port": flow.client_port, "bytes": 0}
    assert harness.counters["dns.unmatched_responses"] == 1


def test_a_response_to_another_id_does_not_answer_the_query(harness: Harness) -> None:
    flow = harness.flow()
    events = harness.feed(
        datagram(flow, message(1, QUERY)), datagram(flow, message(2, RESPONSE), from_client=False)
    )
    assert [e["notes"] for e in events] == [["response without a request"]]
    assert [e["notes"] for e in harness.flush()[1:]] == [["no response before the end of input"]]


def test_messages_without_a_question_make_an_event_without_one(harness: Harness) -> None:
    flow = harness.flow()
    (event,) = harness.feed(
        datagram(flow, message(8, QUERY, questions=())),
        datagram(flow, message(8, RESPONSE | 0x0001, questions=()), from_client=False),  # FORMERR
    )
    assert "query" not in event and "resource" not in event and "question" not in event["dns"]
    assert (event["method"], event["dns"]["response_code"], event["status"]) == ("QUERY", "FORMERR", "Error")


def test_edns_fields_and_the_extended_response_code(harness: Harness) -> None:
    flow = harness.flow()
    query = message(4, QUERY, additionals=(opt(udp_size=4096, do=True),))
    answer = message(4, RESPONSE, additionals=(opt(udp_size=1232, ext_rcode=1, do=True),))
    (event,) = harness.feed(datagram(flow, query), datagram(flow, answer, from_client=False))
    assert event["dns"]["opt"] == {"version": "0", "do": True, "ext_rcode": "BADVERS", "udp_size": 1232}
    assert event["dns"]["response_code"] == "BADVERS"
    assert event["dns"]["header_flags"] == ["RD", "RA", "DO"]
    assert event["dns"]["additionals_count"] == 0
    assert event["status"] == "Error"
    assert "notes" not in event


def test_edns_in_only_one_of_the_pair_is_noted(harness: Harness) -> None:
    flow = harness.flow()
    events = harness.feed(
        datagram(flow, message(1, QUERY, additionals=(opt(),))),
        datagram(flow, message(1, RESPONSE), from_client=False),
        datagram(flow, message(2, QUERY)),
        datagram(flow, message(2, RESPONSE, additionals=(opt(),)), from_client=False),
    )
    assert [e["notes"] for e in events] == [
        ["the query used EDNS but the response does not"],
        ["the response uses EDNS but the query did not"],
    ]


def test_a_response_with_another_question_is_noted(harness: Harness) -> None:
    flow = harness.flow()
    answer = message(1, RESPONSE, questions=(question("evil.example.net"),), answers=(a("203.0.113.6"),))
    (event,) = harness.feed(datagram(flow, message(1, QUERY)), datagram(flow, answer, from_client=False))
    assert event["notes"] == ["the response's question differs from the query's"]
    assert event["query"] == "class IN, type A, www.example.com"
    assert event["dns"]["question"]["name"] == "evil.example.net"


def test_a_large_udp_response_without_edns_is_noted(harness: Harness) -> None:
    flow = harness.flow()
    answers = tuple(a(f"192.0.2.{index}") for index in range(40))
    (event,) = harness.feed(
        datagram(flow, message(1, QUERY)),
        datagram(flow, message(1, RESPONSE, answers=answers), from_client=False),
    )
    assert event["notes"] == ["UDP response larger than 512 bytes without EDNS"]
    assert event["dns"]["answers_count"] == 40


def test_malformed_datagrams_are_counted_and_skipped(harness: Harness) -> None:
    flow = harness.flow()
    loop = struct.pack("!6H", 1, QUERY, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    events = harness.feed(
        datagram(flow, b"\x00" * 5),
        datagram(flow, loop),
        datagram(flow, message(1, RESPONSE, answers=(rr(1, b"\x01\x02"),)), from_client=False),
        datagram(flow, WWW_QUERY, t=0.1),
        datagram(flow, WWW_RESPONSE, t=0.2, from_client=False),
    )
    assert [e["dns"]["id"] for e in events] == [0x1234]
    assert harness.counters["dropped.dns.malformed"] == 3
    assert "dropped.dns.analyzer_error" not in harness.counters


def test_a_datagram_cut_by_the_capture_keeps_what_it_has(harness: Harness) -> None:
    flow = harness.flow()
    cut = WWW_RESPONSE[:-2]
    (event,) = harness.feed(datagram(flow, WWW_QUERY), datagram(flow, cut, from_client=False, gap=2))
    assert event["notes"] == ["datagram truncated by the capture (2 bytes missing)"]
    assert event["dns"]["answers_count"] == 2
    assert event["dns"]["answers"] == [
        {"name": "www.example.com", "type": "A", "class": "IN", "ttl": 300, "data": "192.0.2.10"}
    ]
    assert event["server"]["bytes"] == len(WWW_RESPONSE)


def test_authorities_and_additionals_are_added_when_configured(registry: Registry, tmp_path: Path) -> None:
    answer = message(
        3,
        RESPONSE,
        answers=(a("192.0.2.10"),),
        authorities=(rr(2, name("ns1.example.com"), owner=name("example.com"), ttl=86400),),
        additionals=(a("192.0.2.53", owner=name("ns1.example.com")), opt()),
    )
    counts = {"answers_count": 1, "authorities_count": 1, "additionals_count": 1}
    plain = Harness(registry, tmp_path)
    flow = plain.flow()
    (event,) = plain.feed(datagram(flow, message(3, QUERY)), datagram(flow, answer, from_client=False))
    assert {key: event["dns"].get(key) for key in (*counts, "authorities", "additionals")} == {
        **counts,
        "authorities": None,
        "additionals": None,
    }
    full = Harness(registry, tmp_path, include_authorities=True, include_additionals=True)
    flow = full.flow()
    (event,) = full.feed(datagram(flow, message(3, QUERY)), datagram(flow, answer, from_client=False))
    assert event["dns"]["authorities"] == [
        {"name": "example.com", "type": "NS", "class": "IN", "ttl": 86400, "data": "ns1.example.com"}
    ]
    assert event["dns"]["additionals"] == [
        {"name": "ns1.example.com", "type": "A", "class": "IN", "ttl": 300, "data": "192.0.2.53"}
    ]


def test_send_request_and_send_response_add_a_text_rendering(registry: Registry, tmp_path: Path) -> None:
    harness = Harness(registry, tmp_path, send_request=True, send_response=True)
    flow = harness.flow()
    answer = message(
        0x1234,
        RESPONSE,
        answers=(rr(15, b"\x00\x0a" + name("mail.example.com")),),
        authorities=(rr(2, name("ns1.example.com"), owner=name("example.com")),),
        additionals=(opt(),),
    )
    (event,) = harness.feed(datagram(flow, WWW_QUERY), datagram(flow, answer, from_client=False))
    assert event["request"] == (
        ";; opcode: QUERY, status: NOERROR, id: 4660\n"
        ";; flags: rd; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 0\n"
        "\n"
        ";; QUESTION SECTION:\n"
        ";www.example.com\tIN\tA\n"
    )
    assert event["response"] == (
        ";; opcode: QUERY, status: NOERROR, id: 4660\n"
        ";; flags: qr rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 1, ADDITIONAL: 0\n"
        ";; EDNS: version: 0, flags:; udp: 1232\n"
        "\n"
        ";; QUESTION SECTION:\n"
        ";www.example.com\tIN\tA\n"
        "\n"
        ";; ANSWER SECTION:\n"
        "www.example.com\t300\tIN\tMX\tpreference 10, mail.example.com\n"
        "\n"
        ";; AUTHORITY SECTION:\n"
        "example.com\t300\tIN\tNS\tns1.example.com\n"
    )
    assert "authorities" not in event["dns"]


# -- TCP -------------------------------------------------------------------------------------------


def test_the_framer_splits_a_stream_cut_at_every_offset() -> None:
    stream = tcp_framed(WWW_QUERY, message(2, QUERY, questions=(question("mx.example.com", qtype=15),)))
    expected = [
        (WWW_QUERY, len(WWW_QUERY), 0),
        (stream[len(WWW_QUERY) + 4 :], len(stream) - len(WWW_QUERY) - 4, 0),
    ]
    for cut in range(len(stream) + 1):
        framer = TcpFramer(65536)
        frames = framer.feed(stream[:cut], 1.0) + framer.feed(stream[cut:], 2.0)
        assert [(data, length, skipped) for data, _, length, skipped in frames] == expected, cut
        assert framer.pending == 0
    framer = TcpFramer(65536)
    frames = [
        frame
        for index in range(len(stream))
        for frame in framer.feed(stream[index : index + 1], float(index))
    ]
    assert [(data, start) for data, start, _, _ in frames] == [
        (WWW_QUERY, 0.0),
        (expected[1][0], len(WWW_QUERY) + 2.0),
    ]


def test_the_framer_keeps_max_message_size_bytes_and_skips_the_rest() -> None:
    stream = tcp_framed(WWW_RESPONSE, WWW_QUERY)
    for cut in range(len(stream) + 1):
        framer = TcpFramer(20)
        frames = framer.feed(stream[:cut], 1.0) + framer.feed(stream[cut:], 1.0)
        assert [(data, length, skipped) for data, _, length, skipped in frames] == [
            (WWW_RESPONSE[:20], len(WWW_RESPONSE), len(WWW_RESPONSE) - 20),
            (WWW_QUERY[:20], len(WWW_QUERY), len(WWW_QUERY) - 20),
        ]


def tcp_pair_events(
    harness: Harness, client_parts: list[bytes], server_parts: list[bytes]
) -> list[dict[str, Any]]:
    flow = harness.flow(protocol=6)
    items = [segment(flow, part, t=index * 0.001) for index, part in enumerate(client_parts)]
    items += [
        segment(flow, part, t=0.1 + index * 0.001, from_client=False)
        for index, part in enumerate(server_parts)
    ]
    before = len(harness.events)
    harness.feed(*items, closed(flow))
    return harness.events[before:]


QUERY_2 = message(2, QUERY, questions=(question("mail.example.com", qtype=28),))
RESPONSE_2 = message(
    2,
    RESPONSE,
    questions=(question("mail.example.com", qtype=28),),
    answers=(rr(28, ipaddress.IPv6Address("2001:db8::25").packed),),
)


def summary(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            e["network"]["transport"],
            e["dns"]["id"],
            e["resource"],
            e["dns"].get("resolved_ip"),
            e.get("notes"),
        )
        for e in events
    ]


EXPECTED_TCP = [
    ("tcp", 0x1234, "www.example.com", ["192.0.2.10", "192.0.2.11"], None),
    ("tcp", 2, "mail.example.com", ["2001:db8::25"], None),
]


def test_tcp_messages_split_at_every_offset_give_the_same_events(harness: Harness) -> None:
    queries = tcp_framed(WWW_QUERY, QUERY_2)
    responses = tcp_framed(RESPONSE_2, WWW_RESPONSE)  # answered in reverse order
    for cut in range(1, len(queries)):
        events = tcp_pair_events(harness, [queries[:cut], queries[cut:]], [responses])
        assert sorted(summary(events)) == sorted(EXPECTED_TCP), cut
    for cut in range(1, len(responses)):
        events = tcp_pair_events(harness, [queries], [responses[:cut], responses[cut:]])
        assert sorted(summary(events)) == sorted(EXPECTED_TCP), cut
    byte_by_byte = [responses[index : index + 1] for index in range(len(responses))]
    events = tcp_pair_events(
        harness, [queries[index : index + 1] for index in range(len(queries))], byte_by_byte
    )
    assert sorted(summary(events)) == sorted(EXPECTED_TCP)
    assert {key: value for key, value in harness.counters.items() if "dropped" in key} == {}


def test_tcp_sizes_exclude_the_length_prefix(harness: Harness) -> None:
    events = tcp_pair_events(harness, [tcp_framed(WWW_QUERY)], [tcp_framed(WWW_RESPONSE)])
    assert [(e["client"]["bytes"], e["server"]["bytes"], e["network"]["transport"]) for e in events] == [
        (len(WWW_QUERY), len(WWW_RESPONSE), "tcp")
    ]


def test_a_tcp_message_over_max_message_size_is_truncated_and_noted(
    registry: Registry, tmp_path: Path
) -> None:
    harness = Harness(registry, tmp_path, max_message_size=len(RESPONSE_2))
    events = tcp_pair_events(
        harness, [tcp_framed(WWW_QUERY, QUERY_2)], [tcp_framed(WWW_RESPONSE, RESPONSE_2)]
    )
    first, second = events
    assert first["notes"] == [f"message truncated at max_message_size ({len(RESPONSE_2)} bytes)"]
    assert first["dns"]["answers"] == [
        {"name": "www.example.com", "type": "A", "class": "IN", "ttl": 300, "data": "192.0.2.10"}
    ]
    assert first["server"]["bytes"] == len(WWW_RESPONSE)
    assert summary([second]) == [EXPECTED_TCP[1]]


def test_a_frame_shorter_than_a_header_is_malformed_and_the_stream_goes_on(harness: Harness) -> None:
    events = tcp_pair_events(harness, [tcp_framed(b"\x00\x01\x02", WWW_QUERY)], [tcp_framed(WWW_RESPONSE)])
    assert summary(events) == [EXPECTED_TCP[0]]
    assert harness.counters["dropped.dns.malformed"] == 1


def test_a_connection_closing_mid_message_counts_it_incomplete(harness: Harness) -> None:
    events = tcp_pair_events(harness, [tcp_framed(WWW_QUERY), b"\x00\x40\x00\x07"], [])
    assert [e["notes"] for e in events] == [["no response before the connection closed"]]
    assert harness.counters["dropped.dns.incomplete"] == 1


def test_dns_over_tcp_on_another_port_is_found_by_content(harness: Harness) -> None:
    flow = harness.flow(protocol=6, server_port=5353)
    harness.feed(
        segment(flow, tcp_framed(WWW_QUERY)[:9]),
        segment(flow, tcp_framed(WWW_QUERY)[9:], t=0.001),
        segment(flow, tcp_framed(WWW_RESPONSE), t=0.002, from_client=False),
        closed(flow),
    )
    assert summary(harness.events) == [EXPECTED_TCP[0]]
    assert harness.counters["streams.detected"] == 1
    assert harness.counters["streams.dns"] == 1


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (tcp_framed(WWW_QUERY), True),
        (tcp_framed(WWW_RESPONSE), True),
        (tcp_framed(message(1, QUERY, additionals=(opt(),))), True),
        (tcp_framed(WWW_QUERY)[:14], None),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (tcp_framed(message(1, QUERY | 0x2800)), False),  # opcode UPDATE
        (tcp_framed(message(1, QUERY, questions=(question(), question()))), False),
        (tcp_framed(message(1, QUERY, answers=(a("192.0.2.1"),))), False),
        (tcp_framed(message(1, QUERY | 0x0040)), False),  # the Z bit
        (struct.pack("!H", 12) + WWW_QUERY, False),  # the length cannot hold the question
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), False),  # a TLS ClientHello
    ],
)
def test_content_detection(data: bytes, verdict: bool | None) -> None:
    assert DnsAnalyzer.detect(data, True) is verdict


# -- one analyzer, two transports: the protocol decoder's routing and port check -------------------


def test_the_dns_analyzer_serves_udp_and_tcp_on_its_ports(harness: Harness) -> None:
    udp, tcp = harness.flow(), harness.flow(protocol=6)
    harness.feed(
        datagram(udp, WWW_QUERY),
        datagram(udp, WWW_RESPONSE, from_client=False),
        segment(tcp, tcp_framed(QUERY_2)),
        segment(tcp, tcp_framed(RESPONSE_2), from_client=False),
        closed(tcp),
    )
    assert [e["network"]["transport"] for e in harness.events] == ["udp", "tcp"]
    assert DnsAnalyzer.transports == ("tcp", "udp")


UDP_PLUGIN = textwrap.dedent(
    '''
    """A test UDP analyzer that wants port 53 too."""

    from flowpipe import UdpAnalyzer, hookimpl


    class Hush(UdpAnalyzer):
        """Hush test protocol."""

        default_ports = (5300,)

        def parse_udp(self, packet):
            pass


    @hookimpl
    def flowpipe_add_analyzers():
        return {"hush": Hush}
    '''
)


def test_ports_are_claimed_per_transport(tmp_path: Path) -> None:
    plugin = tmp_path / "hush_plugin.py"
    plugin.write_text(UDP_PLUGIN)
    path = tmp_path / "pipeline.yml"
    body = (
        f"plugins: [{plugin}]\n"
        "inputs: [{type: pcap, files: [x.pcap]}]\n"
        "decoders: [{type: ip}, {type: tcp}, {type: protocol, protocols: PROTOCOLS}]\n"
        "outputs: [{type: stdout}]\n"
    )
    path.write_text(body.replace("PROTOCOLS", "{hush: {ports: [53]}}"))
    with pytest.raises(ConfigError, match="udp port 53 is claimed by both 'dns' and 'hush'"):
        load_pipeline(path, Registry.default(), environ={})
    path.write_text(body.replace("PROTOCOLS", "{hush: {ports: [53]}, dns: {ports: [5353]}}"))
    spec = load_pipeline(path, Registry.default(), environ={})
    assert spec.decoders[2].config.protocols.hush.ports == (53,)


# -- registered domains ----------------------------------------------------------------------------

SUFFIXES = """\
// a tiny Public Suffix List in its published format
com
co.uk
*.ck
!www.ck
公司.cn
cn

// ===BEGIN PRIVATE DOMAINS===
blogspot.com
"""


@pytest.mark.parametrize(
    ("qname", "fields"),
    [
        (
            "www.example.com",
            {"registered_domain": "example.com", "top_level_domain": "com", "subdomain": "www"},
        ),
        (
            "a.b.example.co.uk",
            {"registered_domain": "example.co.uk", "top_level_domain": "co.uk", "subdomain": "a.b"},
        ),
        ("Example.COM", {"registered_domain": "Example.COM", "top_level_domain": "COM"}),
        ("shop.blogspot.com", {"registered_domain": "shop.blogspot.com", "top_level_domain": "blogspot.com"}),
        ("x.y.ck", {"registered_domain": "x.y.ck", "top_level_domain": "y.ck"}),
        ("www.ck", {"registered_domain": "www.ck", "top_level_domain": "ck"}),
        ("a.www.ck", {"registered_domain": "www.ck", "top_level_domain": "ck", "subdomain": "a"}),
        (
            "www.shop.xn--55qx5d.cn",
            {
                "registered_domain": "shop.xn--55qx5d.cn",
                "top_level_domain": "xn--55qx5d.cn",
                "subdomain": "www",
            },
        ),
        ("host.lan", {"registered_domain": "host.lan", "top_level_domain": "lan"}),
        ("co.uk", {}),
        ("y.ck", {}),
        ("com", {}),
        (".", {}),
    ],
)
def test_registered_domains_follow_the_public_suffix_list(qname: str, fields: dict[str, str]) -> None:
    suffixes = PublicSuffixList(SUFFIXES.splitlines())
    expected = {**fields, "etld_plus_one": fields["registered_domain"]} if fields else {}
    assert suffixes.domain_fields(qname) == expected
    assert suffixes.domain_fields(qname) == expected  # remembered


def test_a_suffix_list_remembers_a_bounded_number_of_names() -> None:
    suffixes = PublicSuffixList(SUFFIXES.splitlines())
    for index in range(KNOWN_NAMES + 10):
        assert suffixes.domain_fields(f"host{index}.example.co.uk") == {
            "registered_domain": "example.co.uk",
            "etld_plus_one": "example.co.uk",
            "top_level_domain": "co.uk",
            "subdomain": f"host{index}",
        }
    assert 0 < len(suffixes.known) <= KNOWN_NAMES
    assert suffixes.domain_fields("host3.example.co.uk")["subdomain"] == "host3"


def test_the_question_gets_registered_domain_fields_from_the_configured_list(
    registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "suffixes.dat").write_text(SUFFIXES)
    harness = Harness(registry, tmp_path, public_suffix_list="suffixes.dat")
    flow = harness.flow()
    (event,) = harness.feed(datagram(flow, WWW_QUERY), datagram(flow, WWW_RESPONSE, from_client=False))
    assert event["dns"]["question"] == {
        "name": "www.example.com",
        "type": "A",
        "class": "IN",
        "registered_domain": "example.com",
        "etld_plus_one": "example.com",
        "top_level_domain": "com",
        "subdomain": "www",
    }


def test_a_configured_list_that_cannot_be_read_stops_the_start(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cannot read public_suffix_list"):
        Harness(registry, tmp_path, public_suffix_list="missing.dat")


# -- the whole pipeline on capture files -----------------------------------------------------------


def test_udp_and_tcp_exchanges_from_a_capture_file(tmp_path: Path) -> None:
    client, server = (CLIENT_IP, 40001), (SERVER_IP, 53)
    frames = [
        (T0, udp_frame(CLIENT_IP, SERVER_IP, 40000, 53, WWW_QUERY)),
        (T0 + 0.002, udp_frame(SERVER_IP, CLIENT_IP, 53, 40000, WWW_RESPONSE)),
    ]
    stream = tcp_framed(WWW_QUERY, QUERY_2)
    frames += tcp_conversation(
        client,
        server,
        [(True, stream[:7]), (True, stream[7:]), (False, tcp_framed(RESPONSE_2, WWW_RESPONSE))],
        start=T0 + 1,
    )
    events = transactions(tmp_path, frames, {"dns": {"public_suffix_list": ""}})
    assert summary(events) == [
        ("udp", 0x1234, "www.example.com", ["192.0.2.10", "192.0.2.11"], None),
        EXPECTED_TCP[1],
        EXPECTED_TCP[0],
    ]
    assert events[0]["network"]["community_id"]
    assert events.counters["dns.transactions"] == 3
