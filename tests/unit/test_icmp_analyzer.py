"""The icmp analyzer: request/reply pairs by identifier and sequence, messages alone, errors, time.

Frames are made with dpkt and decoded by the real pipeline (``pcap -> ip -> tcp -> protocol``),
so these tests also check that the ``ip`` decoder gives a request and its reply one flow, with
the request's sender as the client, whichever address is the lower one.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from analyzers import transactions
from captures import ethernet, icmp, icmp6, ip_packet, ip_raw, udp

from flowpipe.plugins.decoders.protocols.icmp import message_text, parse_message

START = 1_700_000_000.0
DATA = bytes(range(56))
"""The 56 data bytes ping sends by default: echo messages are 64 bytes."""


def echo(
    src: str, dst: str, icmp_type: int, ident: int, seq: int, data: bytes = DATA, code: int = 0
) -> bytes:
    """An Ethernet frame with an ICMP (IPv4 addresses) or ICMPv6 echo-style message."""
    body = struct.pack("!HH", ident, seq) + data
    message = icmp6(icmp_type, code, body) if ":" in src else icmp(icmp_type, code, body)
    return ethernet(ip_packet(src, dst, message))


def icmp_events(tmp_path: Path, frames: list[tuple[float, bytes]], **options: object):
    return transactions(tmp_path, frames, {"icmp": options} if options else None)


def without_community_id(event: dict) -> dict:
    community_id = event["network"].pop("community_id")
    assert community_id.startswith("1:")
    return event


def test_an_echo_request_and_its_reply_are_one_transaction(tmp_path: Path) -> None:
    frames = [
        (START, echo("10.0.0.1", "10.0.0.2", 8, 0x1234, 1)),
        (START + 0.0005, echo("10.0.0.2", "10.0.0.1", 0, 0x1234, 1)),
    ]
    events = icmp_events(tmp_path, frames)
    assert [without_community_id(event) for event in events] == [
        {
            "@timestamp": "2023-11-14T22:13:20.000Z",
            "type": "icmp",
            "status": "OK",
            "event": {
                "dataset": "icmp",
                "kind": "event",
                "category": ["network"],
                "type": ["connection", "protocol"],
                "start": "2023-11-14T22:13:20.000Z",
                "end": "2023-11-14T22:13:20.000Z",
                "duration": 500_000,
            },
            "network": {"type": "ipv4", "transport": "icmp", "protocol": "icmp", "bytes": 128},
            "source": {"ip": "10.0.0.1", "bytes": 64},
            "destination": {"ip": "10.0.0.2", "bytes": 64},
            "client": {"ip": "10.0.0.1", "bytes": 64},
            "server": {"ip": "10.0.0.2", "bytes": 64},
            "related": {"ip": ["10.0.0.1", "10.0.0.2"]},
            "icmp": {
                "version": 4,
                "request": {"message": "EchoRequest", "type": 8, "code": 0, "id": 0x1234, "seq": 1},
                "response": {"message": "EchoReply", "type": 0, "code": 0, "id": 0x1234, "seq": 1},
            },
            "path": "10.0.0.2",
        }
    ]
    assert events.counters["icmp.transactions"] == 1


def test_the_request_sender_is_the_client_whichever_address_is_lower(tmp_path: Path) -> None:
    frames = [
        (START, echo("10.0.0.9", "10.0.0.1", 8, 7, 1)),
        (START + 0.001, echo("10.0.0.1", "10.0.0.9", 0, 7, 1)),
        (START + 0.002, echo("10.0.0.1", "10.0.0.9", 8, 8, 1)),  # and the other way on its own flow
        (START + 0.003, echo("10.0.0.9", "10.0.0.1", 0, 8, 1)),
    ]
    events = icmp_events(tmp_path, frames)
    assert [
        (event["status"], event["client"]["ip"], event["server"]["ip"], event["path"]) for event in events
    ] == [
        ("OK", "10.0.0.9", "10.0.0.1", "10.0.0.1"),
        ("OK", "10.0.0.1", "10.0.0.9", "10.0.0.9"),
    ]
    assert events[0]["network"]["community_id"] != events[1]["network"]["community_id"]


def test_one_address_pinging_itself_pairs_too(tmp_path: Path) -> None:
    frames = [
        (START, echo("127.0.0.1", "127.0.0.1", 8, 99, 1)),
        (START + 0.001, echo("127.0.0.1", "127.0.0.1", 0, 99, 1)),
    ]
    (event,) = icmp_events(tmp_path, frames)
    assert (event["status"], event["client"]["ip"], event["server"]["ip"]) == ("OK", "127.0.0.1", "127.0.0.1")
    assert event["related"] == {"ip": ["127.0.0.1"]}


def test_replies_pair_by_identifier_and_sequence_not_by_order(tmp_path: Path) -> None:
    frames = [
        (START, echo("10.0.0.1", "10.0.0.2", 8, 1, 1)),
        (START + 0.001, echo("10.0.0.1", "10.0.0.2", 8, 1, 2)),
        (START + 0.002, echo("10.0.0.1", "10.0.0.2", 8, 2, 1)),
        (START + 0.010, echo("10.0.0.2", "10.0.0.1", 0, 2, 1)),
        (START + 0.020, echo("10.0.0.2", "10.0.0.1", 0, 1, 2)),
        (START + 0.030, echo("10.0.0.2", "10.0.0.1", 0, 1, 1)),
    ]
    events = icmp_events(tmp_path, frames)
    pairs = [
        (
            event["icmp"]["request"]["id"],
            event["icmp"]["request"]["seq"],
            event["icmp"]["response"]["id"],
            event["icmp"]["response"]["seq"],
            event["event"]["duration"],
        )
        for event in events
    ]
    assert pairs == [(2, 1, 2, 1, 8_000_000), (1, 2, 1, 2, 19_000_000), (1, 1, 1, 1, 30_000_000)]
    assert {event["status"] for event in events} == {"OK"}


def test_icmpv6_echo(tmp_path: Path) -> None:
    frames = [
        (START, echo("2001:db8::1", "2001:db8::2", 128, 0x55, 3, b"abc")),
        (START + 0.001, echo("2001:db8::2", "2001:db8::1", 129, 0x55, 3, b"abc")),
    ]
    (event,) = icmp_events(tmp_path, frames)
    assert event["status"] == "OK"
    assert event["network"]["type"] == "ipv6"
    assert event["network"]["transport"] == "ipv6-icmp"
    assert event["icmp"] == {
        "version": 6,
        "request": {"message": "EchoRequest", "type": 128, "code": 0, "id": 0x55, "seq": 3},
        "response": {"message": "EchoReply", "type": 129, "code": 0, "id": 0x55, "seq": 3},
    }
    assert (event["client"], event["server"]) == (
        {"ip": "2001:db8::1", "bytes": 11},
        {"ip": "2001:db8::2", "bytes": 11},
    )


def test_other_icmpv4_requests_pair_with_their_replies(tmp_path: Path) -> None:
    pairs = [  # timestamp, information, address mask
        (13, 14, "TimestampRequest", "TimestampReply", bytes(12)),
        (15, 16, "InfoRequest", "InfoReply", b""),
        (17, 18, "AddressMaskRequest", "AddressMaskReply", bytes(4)),
    ]
    frames = []
    for index, (request_type, reply_type, _, _, data) in enumerate(pairs):
        frames.append((START + index, echo("10.0.0.1", "10.0.0.2", request_type, 4, index, data)))
        frames.append((START + index + 0.001, echo("10.0.0.2", "10.0.0.1", reply_type, 4, index, data)))
    events = icmp_events(tmp_path, frames)
    assert [(event["status"], event["icmp"], event["client"]["bytes"]) for event in events] == [
        (
            "OK",
            {
                "version": 4,
                "request": {"message": request_text, "type": request_type, "code": 0, "id": 4, "seq": index},
                "response": {"message": reply_text, "type": reply_type, "code": 0, "id": 4, "seq": index},
            },
            8 + len(data),
        )
        for index, (request_type, reply_type, request_text, reply_text, data) in enumerate(pairs)
    ]


def test_a_request_without_reply_is_an_error_after_transaction_timeout(tmp_path: Path) -> None:
    frames = [
        (START, echo("10.0.0.1", "10.0.0.2", 8, 1, 1)),
        (START + 9.0, echo("10.0.0.1", "10.0.0.2", 8, 1, 2)),
        (START + 9.001, echo("10.0.0.2", "10.0.0.1", 0, 1, 2)),
        (START + 12.0, echo("10.0.0.3", "10.0.0.4", 8, 1, 1)),  # time goes on elsewhere
    ]
    events = icmp_events(tmp_path, frames)
    assert [(event["status"], event["icmp"]["request"]["seq"], event.get("notes")) for event in events] == [
        ("OK", 2, None),
        ("Error", 1, ["no response within transaction_timeout"]),
        ("Error", 1, ["no response before the end of input"]),
    ]
    unanswered = events[1]
    assert "response" not in unanswered["icmp"]
    assert unanswered["event"]["type"] == ["connection", "protocol", "error"]
    assert (unanswered["client"], unanswered["server"]) == (
        {"ip": "10.0.0.1", "bytes": 64},
        {"ip": "10.0.0.2", "bytes": 0},
    )
    assert events.counters["icmp.unmatched_requests"] == 2


def test_transaction_timeout_is_an_option(tmp_path: Path) -> None:
    frames = [
        (START, echo("10.0.0.1", "10.0.0.2", 8, 1, 1)),
        (START + 3.0, echo("10.0.0.2", "10.0.0.1", 0, 1, 1)),
    ]
    events = icmp_events(tmp_path, frames, transaction_timeout="2s")
    assert [(event["status"], event.get("notes")) for event in events] == [
        ("Error", ["no response within transaction_timeout"]),
        ("OK", ["response without a request"]),
    ]


def test_a_reply_without_request_is_published_alone_with_a_note(tmp_path: Path) -> None:
    frames = [
        (START, echo("10.0.0.2", "10.0.0.1", 0, 3, 9)),  # the capture began after the request
        (START + 1.0, echo("10.0.0.1", "10.0.0.2", 8, 3, 10)),
        (START + 1.001, echo("10.0.0.2", "10.0.0.1", 0, 3, 10)),
    ]
    events = icmp_events(tmp_path, frames)
    orphan, pair = events
    assert orphan["status"] == "OK"  # the project's rule for a response alone (Packetbeat says Error)
    assert orphan["notes"] == ["response without a request"]
    assert orphan["icmp"] == {
        "version": 4,
        "response": {"message": "EchoReply", "type": 0, "code": 0, "id": 3, "seq": 9},
    }
    assert (orphan["client"], orphan["server"], orphan["path"]) == (
        {"ip": "10.0.0.1", "bytes": 0},
        {"ip": "10.0.0.2", "bytes": 64},
        "10.0.0.2",
    )
    # the flow began with a reply: its receiver is the client, so the later request pairs normally
    assert (pair["status"], pair["client"]["ip"], pair["server"]["ip"]) == ("OK", "10.0.0.1", "10.0.0.2")
    assert events.counters["icmp.unmatched_responses"] == 1


def test_an_error_message_is_published_alone_as_an_error(tmp_path: Path) -> None:
    quoted = bytes(ip_packet("10.0.0.1", "10.0.0.2", udp(40000, 9, b"hi")))  # 30 bytes
    unreachable = ethernet(ip_packet("10.0.0.2", "10.0.0.1", icmp(3, 3, bytes(4) + quoted)))
    events = icmp_events(tmp_path, [(START, unreachable)])
    (event,) = events
    assert without_community_id(event) == {
        "@timestamp": "2023-11-14T22:13:20.000Z",
        "type": "icmp",
        "status": "Error",
        "event": {
            "dataset": "icmp",
            "kind": "event",
            "category": ["network"],
            "type": ["connection", "protocol", "error"],
            "start": "2023-11-14T22:13:20.000Z",
            "end": "2023-11-14T22:13:20.000Z",
        },
        "network": {"type": "ipv4", "transport": "icmp", "protocol": "icmp", "bytes": 8 + 30},
        "source": {"ip": "10.0.0.2", "bytes": 38},
        "destination": {"ip": "10.0.0.1", "bytes": 0},
        "client": {"ip": "10.0.0.2", "bytes": 38},
        "server": {"ip": "10.0.0.1", "bytes": 0},
        "related": {"ip": ["10.0.0.2", "10.0.0.1"]},
        "icmp": {"version": 4, "request": {"message": "DestinationUnreachable(Port)", "type": 3, "code": 3}},
        "path": "10.0.0.1",
    }
    assert events.counters["icmp.transactions"] == 1
    assert "icmp.unmatched_requests" not in events.counters


def test_messages_that_expect_no_reply_are_published_at_once(tmp_path: Path) -> None:
    v4, v6 = ("10.0.0.5", "10.0.0.1"), ("2001:db8::5", "2001:db8::1")
    cases = [  # addresses, message, icmp.request.message, status
        (v4, icmp(11, 0, bytes(4)), "TimeExceeded(TTLExceeded)", "Error"),
        (v4, icmp(4, 0, bytes(4)), "SourceQuench", "Error"),
        (v4, icmp(12, 1, bytes(4)), "ParameterProblem(MissingOption)", "Error"),
        (v4, icmp(5, 1, bytes(4)), "Redirect(Host)", "OK"),
        (v4, icmp(9, 0, bytes(4)), "RouterAdvertisement", "OK"),
        (v6, icmp6(2, 0, bytes(4)), "PacketTooBig", "Error"),
        (v6, icmp6(1, 4, bytes(4)), "DestinationUnreachable(PortUnreachable)", "Error"),
        (v6, icmp6(3, 0, bytes(4)), "TimeExceeded(HopLimitExceeded)", "Error"),
        (("2001:db8::5", "ff02::1:ff00:1"), icmp6(135, 0, bytes(20)), "NeighborSolicitation", "OK"),
        (v6, icmp6(200, 7, bytes(4)), "200(7)", "OK"),
    ]
    frames = [
        (START + index, ethernet(ip_packet(source, destination, message)))
        for index, ((source, destination), message, _, _) in enumerate(cases)
    ]
    events = icmp_events(tmp_path, frames)
    assert [
        (
            event["icmp"]["request"]["message"],
            event["status"],
            "error" in event["event"]["type"],
            "response" in event["icmp"] or "notes" in event,
            event["client"]["ip"],
            event["server"]["ip"],
        )
        for event in events
    ] == [(text, status, status == "Error", False, *addresses) for addresses, _, text, status in cases]


@pytest.mark.parametrize(
    ("version", "icmp_type", "code", "text"),
    [
        (4, 8, 0, "EchoRequest"),
        (4, 8, 1, "EchoRequest(Code: 1)"),
        (4, 0, 0, "EchoReply"),
        (4, 3, 3, "DestinationUnreachable(Port)"),
        (4, 3, 13, "DestinationUnreachable(CommAdminProhibited)"),
        (4, 3, 99, "DestinationUnreachable(Code: 99)"),
        (4, 5, 2, "Redirect(TOS+Net)"),
        (4, 11, 1, "TimeExceeded(FragmentReassemblyTimeExceeded)"),
        (4, 42, 3, "42(3)"),
        (6, 128, 0, "EchoRequest"),
        (6, 1, 0, "DestinationUnreachable(NoRouteToDst)"),
        (6, 4, 1, "ParameterProblem(UnrecognizedNextHeader)"),
        (6, 136, 0, "NeighborAdvertisement"),
        (6, 143, 0, "143(0)"),
    ],
)
def test_message_text_is_packetbeats(version: int, icmp_type: int, code: int, text: str) -> None:
    assert message_text(version, icmp_type, code) == text


def test_messages_too_short_are_dropped_and_counted(tmp_path: Path) -> None:
    frames = [
        (START, ethernet(ip_packet("10.0.0.1", "10.0.0.2", icmp(8, 0, b"\x00\x01")))),  # echo of 6 bytes
        (START + 1, ethernet(ip_raw("10.0.0.1", "10.0.0.2", 1, b"\x03\x03\x00"))),  # 3 bytes
    ]
    events = icmp_events(tmp_path, frames)
    assert list(events) == []
    assert events.counters["dropped.icmp.truncated"] == 2


def test_bytes_count_what_the_capture_cut_off(tmp_path: Path) -> None:
    frames = [
        (START, echo("10.0.0.1", "10.0.0.2", 8, 1, 1)[: 14 + 20 + 12]),  # 4 of 56 data bytes captured
        (START + 0.001, echo("10.0.0.2", "10.0.0.1", 0, 1, 1)),
    ]
    (event,) = icmp_events(tmp_path, frames)
    assert (event["status"], event["client"]["bytes"], event["server"]["bytes"]) == ("OK", 64, 64)


def test_parse_message_never_raises_on_any_prefix_or_byte() -> None:
    for version, echo_type in ((4, 8), (6, 128)):
        message = struct.pack("!BBHHH", echo_type, 0, 0, 1, 1) + DATA
        for end in range(len(message) + 1):
            parsed = parse_message(message[:end], version, START, True, end)
            assert (parsed is None) == (end < 8)
    for value in range(256):
        for version in (4, 6):
            parsed = parse_message(bytes((value, value)) + bytes(6), version, START, True, 8)
            assert parsed is not None and parsed.fields["type"] == value
