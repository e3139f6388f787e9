"""The http analyzer on crafted conversations, through the real pipeline (pcap -> ip -> tcp -> protocol).

Conversations come from :func:`captures.tcp_conversation`; a segment left out of its frames makes
a gap (the next segment of the other side acknowledges beyond it).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from analyzers import Decoded, transactions
from captures import tcp_conversation

from flowpipe import StageContext
from flowpipe.config import load_pipeline
from flowpipe.errors import ConfigError
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace
from flowpipe.plugins.decoders.protocol import ProtocolDecoder
from flowpipe.plugins.decoders.protocols.http import REQUEST, HttpAnalyzer, HttpConnection
from flowpipe.registry import Registry

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 80)
HANDSHAKE = 3
"""Frames before the first exchange of a conversation."""

GET = b"GET /docs/index.html?lang=en&q=a+b HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
BAD_FRAMING = "malformed body framing: the rest of the stream is skipped until a new message"
GAP_PENDING = "no response: a gap in the stream lost the message boundaries"


def conversation(*exchanges: tuple[bool, bytes], **kwargs: Any) -> list[tuple[float, bytes]]:
    return tcp_conversation(CLIENT, SERVER, list(exchanges), **kwargs)


def connections(*conversations: list[tuple[bool, bytes]]) -> list[tuple[float, bytes]]:
    """Several connections one after the other, from client ports 41000, 41001, ..."""
    frames: list[tuple[float, bytes]] = []
    for index, exchanges in enumerate(conversations):
        frames += tcp_conversation((CLIENT[0], 41000 + index), SERVER, exchanges, start=1_700_000_000 + index)
    return frames


def run(tmp_path: Path, frames: list[tuple[float, bytes]], **options: Any) -> Decoded:
    """The events of ``frames`` with ``options`` for http; the other analyzers are off (faster)."""
    others = {name: {"enabled": False} for name in Registry.default().names("analyzer") if name != "http"}
    return transactions(tmp_path, frames, {**others, "http": options})


def get(path: str, *headers: str, host: str = "example.com") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ok(body: bytes = b"hi", *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def summary(event: dict[str, Any]) -> tuple[Any, ...]:
    """Method, path, status code and body sizes of a transaction."""
    http = event["http"]
    request, response = http.get("request", {}), http.get("response", {})
    return (
        request.get("method"),
        event.get("url", {}).get("path"),
        response.get("status_code"),
        request.get("body", {}).get("bytes"),
        response.get("body", {}).get("bytes"),
    )


# -- one transaction, every field ----------------------------------------------------------------


def test_a_get_and_its_response_give_packetbeat_fields(tmp_path: Path) -> None:
    request = GET[:-2] + b"Referer: http://example.com/\r\n\r\n"
    events = run(tmp_path, conversation((True, request), (False, OK)))
    assert len(events) == 1
    event = events[0]
    assert event["type"] == "http"
    assert event["status"] == "OK"
    assert event["event"]["category"] == ["network", "web"]
    assert event["event"]["dataset"] == "http"
    assert event["network"]["protocol"] == "http"
    assert event["method"] == "GET"
    assert event["path"] == "/docs/index.html"
    assert event["query"] == "GET /docs/index.html"
    assert event["url"] == {
        "original": "/docs/index.html?lang=en&q=a+b",
        "scheme": "http",
        "domain": "example.com",
        "path": "/docs/index.html",
        "extension": "html",
        "query": "lang=en&q=a+b",
        "full": "http://example.com/docs/index.html?lang=en&q=a+b",
    }
    assert event["user_agent"] == {"original": "curl/8.0"}
    assert event["destination"]["domain"] == "example.com"
    assert event["related"] == {"ip": ["10.0.0.1", "10.0.0.2"], "hosts": ["example.com"]}
    assert event["http"] == {
        "version": "1.1",
        "request": {
            "method": "GET",
            "referrer": "http://example.com/",
            "bytes": len(request),
            "body": {"bytes": 0},
        },
        "response": {
            "status_code": 200,
            "status_phrase": "ok",
            "bytes": len(OK),
            "body": {"bytes": 5},
            "mime_type": "text/html",
        },
    }
    assert event["source"]["bytes"] == len(request)
    assert event["destination"]["bytes"] == len(OK)
    assert event["event"]["duration"] == 1_000_000
    for absent in ("request", "response", "notes", "user", "headers"):
        assert absent not in event


def test_status_is_error_from_400(tmp_path: Path) -> None:
    statuses = ("399 Odd", "400 Bad Request", "503 Unavailable")
    responses = b"".join(ok(b"", status=status) for status in statuses)
    events = run(tmp_path, conversation((True, get("/1") + get("/2") + get("/3")), (False, responses)))
    assert [(event["http"]["response"]["status_code"], event["status"]) for event in events] == [
        (399, "OK"),
        (400, "Error"),
        (503, "Error"),
    ]


def test_a_404_response(tmp_path: Path) -> None:
    events = run(tmp_path, conversation((True, get("/missing")), (False, NOT_FOUND)))
    assert events[0]["status"] == "Error"
    assert events[0]["http"]["response"] == {
        "status_code": 404,
        "status_phrase": "not found",
        "bytes": len(NOT_FOUND),
        "body": {"bytes": 0},
    }


def test_url_fields_from_host_ports_and_target_forms(tmp_path: Path) -> None:
    exchanges = [
        (True, get("/a", host="example.com:8081")),
        (True, get("/b?", host="[2001:db8::1]:8443")),
        (True, get("/c", host="192.0.2.7")),
        (True, b"GET http://proxy.example:3128/d?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n"),
        (True, b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        (False, ok() * 5),
    ]
    events = run(tmp_path, conversation(*exchanges))
    assert [event["url"] for event in events] == [
        {
            "original": "/a",
            "scheme": "http",
            "domain": "example.com",
            "port": 8081,
            "path": "/a",
            "full": "http://example.com:8081/a",
        },
        {
            "original": "/b?",
            "scheme": "http",
            "domain": "2001:db8::1",
            "port": 8443,
            "path": "/b",
            "query": "",
            "full": "http://[2001:db8::1]:8443/b?",
        },
        {
            "original": "/c",
            "scheme": "http",
            "domain": "192.0.2.7",
            "path": "/c",
            "full": "http://192.0.2.7/c",
        },
        {
            "original": "http://proxy.example:3128/d?x=1",
            "scheme": "http",
            "domain": "proxy.example",
            "port": 3128,
            "path": "/d",
            "query": "x=1",
            "full": "http://proxy.example:3128/d?x=1",
        },
        {"original": "*", "scheme": "http", "domain": "example.com"},
    ]
    assert events[2]["related"] == {"ip": ["10.0.0.1", "10.0.0.2", "192.0.2.7"]}
    assert "domain" not in events[2]["destination"]
    assert [event["query"] for event in events] == ["GET /a", "GET /b", "GET /c", "GET /d", "OPTIONS *"]


def test_a_host_without_port_on_another_port_gets_the_server_port(tmp_path: Path) -> None:
    frames = tcp_conversation(CLIENT, ("10.0.0.2", 8080), [(True, get("/")), (False, ok())])
    assert run(tmp_path, frames)[0]["url"]["full"] == "http://example.com:8080/"


def test_without_host_there_is_no_domain(tmp_path: Path) -> None:
    events = run(tmp_path, conversation((True, b"GET /old HTTP/1.0\r\n\r\n"), (False, ok())))
    assert events[0]["url"] == {"original": "/old", "scheme": "http", "path": "/old"}
    assert events[0]["http"]["version"] == "1.0"


# -- headers, credentials, real IP ----------------------------------------------------------------


def test_send_headers_lists_the_headers_to_keep_lowercased(tmp_path: Path) -> None:
    request = get("/", "Accept: */*", "X-Trace: a", "x-trace: b", "Cookie: k=v")
    response = ok(b"hi", "Set-Cookie: s=1", "Server: test")
    events = run(
        tmp_path,
        conversation((True, request), (False, response)),
        send_headers=["X-Trace", "cookie", "Set-Cookie", "Content-Length"],
    )
    assert events[0]["http"]["request"]["headers"] == {"x-trace": "a, b", "cookie": "k=v"}
    assert events[0]["http"]["response"]["headers"] == {"content-length": "2", "set-cookie": "s=1"}


@pytest.mark.parametrize("options", [{"send_headers": True}, {"send_all_headers": True}])
def test_all_headers(tmp_path: Path, options: dict[str, Any]) -> None:
    events = run(tmp_path, conversation((True, get("/", "Accept: */*")), (False, ok())), **options)
    assert events[0]["http"]["request"]["headers"] == {"host": "example.com", "accept": "*/*"}
    assert events[0]["http"]["response"]["headers"] == {"content-length": "2"}


def test_folded_header_lines_continue_the_value(tmp_path: Path) -> None:
    request = b"GET / HTTP/1.1\r\nX-Long: one\r\n two\r\n\tthree\r\n\r\n"
    events = run(tmp_path, conversation((True, request), (False, ok())), send_headers=True)
    assert events[0]["http"]["request"]["headers"] == {"x-long": "one two three"}


def test_basic_auth_gives_the_user_and_no_password_anywhere(tmp_path: Path) -> None:
    request = get(
        "/private",
        "Authorization: Basic YWxpY2U6czNjcmV0LXB3",  # alice:s3cret-pw
        "Proxy-Authorization: Basic Ym9iOnByb3h5LXB3",  # bob:proxy-pw
    )
    events = run(
        tmp_path,
        conversation((True, request), (False, ok())),
        send_request=True,
        send_headers=True,
    )
    event = events[0]
    assert event["user"] == {"name": "alice"}
    assert event["related"]["user"] == ["alice"]
    assert event["http"]["request"]["headers"]["authorization"] == "*"
    assert event["http"]["request"]["headers"]["proxy-authorization"] == "*"
    assert event["request"] == (
        "GET /private HTTP/1.1\r\nHost: example.com\r\nAuthorization: *\r\nProxy-Authorization: *\r\n\r\n"
    )
    text = json.dumps(event)
    for secret in ("YWxpY2U6czNjcmV0LXB3", "Ym9iOnByb3h5LXB3", "s3cret", "proxy-pw"):
        assert secret not in text


def test_other_authorization_schemes_give_no_user(tmp_path: Path) -> None:
    request = get("/", "Authorization: Bearer abc.def.ghi")
    events = run(tmp_path, conversation((True, request), (False, ok())), send_request=True)
    assert "user" not in events[0]
    assert "abc.def" not in json.dumps(events[0])


def test_real_ip_header_gives_the_forwarded_ip(tmp_path: Path) -> None:
    values = {
        "203.0.113.9, 10.1.1.1": "203.0.113.9",
        "203.0.113.9:5555": "203.0.113.9",
        "[2001:db8::9]:443, 10.1.1.1": "2001:db8::9",
        "2001:db8:0::9": "2001:db8::9",
    }
    frames = connections(
        *([(True, get("/", f"X-Forwarded-For: {value}")), (False, ok())] for value in values)
    )
    events = run(tmp_path, frames, real_ip_header="X-Forwarded-For")
    assert [event["network"]["forwarded_ip"] for event in events] == list(values.values())
    assert [event["related"]["ip"] for event in events] == [
        ["10.0.0.1", "10.0.0.2", address] for address in values.values()
    ]


def test_a_real_ip_header_that_is_no_address_is_noted(tmp_path: Path) -> None:
    request = get("/", "X-Real-IP: unknown")
    events = run(tmp_path, conversation((True, request), (False, ok())), real_ip_header="x-real-ip")
    assert "forwarded_ip" not in events[0]["network"]
    assert events[0]["notes"] == ["real_ip_header value is not an IP address"]


def test_without_real_ip_header_forwarded_for_is_ignored(tmp_path: Path) -> None:
    request = get("/", "X-Forwarded-For: 203.0.113.9")
    events = run(tmp_path, conversation((True, request), (False, ok())))
    assert "forwarded_ip" not in events[0]["network"]


# -- raw text and bodies ----------------------------------------------------------------------------


def test_send_request_and_response_give_the_headers_without_body(tmp_path: Path) -> None:
    request = b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    request += b"Content-Length: 7\r\n\r\na=1&b=2"
    events = run(tmp_path, conversation((True, request), (False, OK)), send_request=True, send_response=True)
    assert events[0]["request"] == request[:-7].decode()
    assert events[0]["response"] == OK[:-5].decode()
    assert events[0]["http"]["request"]["body"] == {"bytes": 7}
    assert events[0]["http"]["request"]["mime_type"] == "application/x-www-form-urlencoded"


def test_include_body_for_keeps_matching_bodies(tmp_path: Path) -> None:
    request = b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
    request += b'Transfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n5\r\n": 1}\r\n0\r\n\r\n'
    response = ok(b"<p>x</p>", "Content-Type: text/html")
    events = run(
        tmp_path,
        conversation((True, request), (False, response)),
        include_body_for=["json"],
        send_request=True,
        send_response=True,
    )
    http = events[0]["http"]
    assert http["request"]["body"] == {"bytes": 8, "content": '{"a": 1}'}
    assert http["response"]["body"] == {"bytes": 8}
    assert events[0]["request"].endswith('\r\n\r\n{"a": 1}')
    assert events[0]["response"].endswith("Content-Type: text/html\r\n\r\n")


def test_a_kept_body_is_cut_at_max_message_size(tmp_path: Path) -> None:
    response = ok(b"x" * 100, "Content-Type: text/plain")
    events = run(
        tmp_path,
        conversation((True, get("/")), (False, response)),
        include_body_for=["text/"],
        max_message_size=len(response) - 40,
    )
    body = events[0]["http"]["response"]["body"]
    assert body == {"bytes": 100, "content": "x" * 60}
    assert events[0]["notes"] == [f"message truncated at max_message_size ({len(response) - 40} bytes)"]


# -- framing -------------------------------------------------------------------------------------------


def test_pipelined_requests_pair_with_their_responses_in_order(tmp_path: Path) -> None:
    requests = get("/1") + get("/2") + b"DELETE /3 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    responses = ok(b"one") + ok(b"", status="204 No Content") + NOT_FOUND
    events = run(tmp_path, conversation((True, requests), (False, responses[:30]), (False, responses[30:])))
    assert [summary(event) for event in events] == [
        ("GET", "/1", 200, 0, 3),
        ("GET", "/2", 204, 0, 0),
        ("DELETE", "/3", 404, 0, 0),
    ]
    assert [event["status"] for event in events] == ["OK", "OK", "Error"]


def test_many_messages_in_one_segment_and_keep_alive(tmp_path: Path) -> None:
    exchanges = [(True, get("/a")), (False, ok(b"A") + b"\r\n"), (True, get("/b")), (False, ok(b"BB"))]
    events = run(tmp_path, conversation(*exchanges))
    assert [summary(event) for event in events] == [("GET", "/a", 200, 0, 1), ("GET", "/b", 200, 0, 2)]


CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nTrailer: Expires\r\n\r\n"
    b"4;name=value\r\nWiki\r\n"
    b'B ; quoted="a;b"\r\npedia in \r\n\r\n'
    b"0\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\nX-Checksum: 1\r\n\r\n"
)


def test_chunked_response_with_extensions_and_trailers(tmp_path: Path) -> None:
    frames = conversation((True, get("/c") + get("/next")), (False, CHUNKED_RESPONSE + ok(b"after")))
    events = run(tmp_path, frames)
    assert [summary(event) for event in events] == [("GET", "/c", 200, 0, 15), ("GET", "/next", 200, 0, 5)]
    assert events[0]["http"]["response"]["bytes"] == len(CHUNKED_RESPONSE)


def test_chunked_request_body(tmp_path: Path) -> None:
    request = b"PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    request += b"a\r\n0123456789\r\n1\r\nX\r\n0\r\n\r\n"
    events = run(tmp_path, conversation((True, request), (True, get("/then")), (False, ok() + ok())))
    assert [summary(event) for event in events] == [("PUT", "/up", 200, 11, 2), ("GET", "/then", 200, 0, 2)]
    assert events[0]["http"]["request"]["bytes"] == len(request)


def test_expect_100_continue_skips_the_interim_response(tmp_path: Path) -> None:
    head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n"
    frames = conversation(
        (True, head),
        (False, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (True, b"x" * 1000),
        (True, b"y" * 1000),
        (False, ok(b"stored", status="201 Created")),
        step=0.5,
    )
    events = run(tmp_path, frames)
    assert [summary(event) for event in events] == [("POST", "/upload", 201, 2000, 6)]
    assert events[0]["http"]["request"]["bytes"] == len(head) + 2000
    assert events[0]["http"]["response"]["bytes"] == len(ok(b"stored", status="201 Created"))
    assert events[0]["event"]["duration"] == 2_000_000_000  # from the request's first byte
    assert events.counters["http.interim_responses"] == 1


def test_a_final_response_before_the_request_body_ends(tmp_path: Path) -> None:
    head = b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n"
    refused = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    events = run(tmp_path, conversation((True, head + b"x" * 10), (False, refused)))
    assert [summary(event) for event in events] == [("POST", "/big", 413, 10, 0)]
    assert events[0]["status"] == "Error"


def test_http_1_0_response_without_length_ends_with_the_connection(tmp_path: Path) -> None:
    response = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    frames = conversation(
        (True, b"GET /old HTTP/1.0\r\nUser-Agent: old\r\n\r\n"),
        (False, response + b"part one, "),
        (False, b"part two"),
    )
    events = run(tmp_path, frames, send_response=True, include_body_for=["text/plain"])
    assert [summary(event) for event in events] == [("GET", "/old", 200, 0, 18)]
    assert events[0]["http"]["response"]["body"]["content"] == "part one, part two"
    assert events[0]["response"] == response.decode() + "part one, part two"
    assert "notes" not in events[0]


def test_a_close_delimited_body_ends_at_the_end_of_input(tmp_path: Path) -> None:
    frames = conversation(
        (True, b"GET /old HTTP/1.0\r\n\r\n"), (False, b"HTTP/1.0 200 OK\r\n\r\nabc"), close=False
    )
    events = run(tmp_path, frames)
    assert [summary(event) for event in events] == [("GET", "/old", 200, 0, 3)]
    assert "notes" not in events[0]


def test_head_response_has_no_body(tmp_path: Path) -> None:
    head_response = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n"
    requests = b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n" + get("/small")
    events = run(tmp_path, conversation((True, requests), (False, head_response + ok(b"s"))))
    assert [summary(event) for event in events] == [("HEAD", "/big", 200, 0, 0), ("GET", "/small", 200, 0, 1)]
    assert events[0]["http"]["response"]["bytes"] == len(head_response)


def test_204_and_304_have_no_body(tmp_path: Path) -> None:
    not_modified = b'HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: "x"\r\n\r\n'
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    frames = conversation(
        (True, get("/a") + get("/b") + get("/c")), (False, not_modified + no_content + ok())
    )
    events = run(tmp_path, frames)
    assert [summary(event) for event in events] == [
        ("GET", "/a", 304, 0, 0),
        ("GET", "/b", 204, 0, 0),
        ("GET", "/c", 200, 0, 2),
    ]
    assert [event["http"]["response"]["status_phrase"] for event in events] == [
        "not modified",
        "no content",
        "ok",
    ]


def test_switching_protocols_ends_parsing(tmp_path: Path) -> None:
    upgrade = get("/chat", "Upgrade: websocket", "Connection: Upgrade")
    switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    frames = conversation((True, upgrade), (False, switched + b"\x81\x05hello"), (True, b"\x81\x85abcd1234"))
    events = run(tmp_path, frames)
    assert [summary(event) for event in events] == [("GET", "/chat", 101, 0, 0)]
    assert not any(key.startswith("dropped.") for key in events.counters)


def test_connect_tunnel_ends_parsing(tmp_path: Path) -> None:
    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    frames = conversation(
        (True, connect),
        (False, b"HTTP/1.1 200 Connection established\r\n\r\n"),
        (True, b"\x16\x03\x01\x02\x00"),
    )
    events = run(tmp_path, frames)
    assert len(events) == 1
    assert events[0]["url"] == {
        "original": "example.com:443",
        "scheme": "http",
        "domain": "example.com",
        "port": 443,
    }
    assert events[0]["query"] == "CONNECT example.com:443"
    assert not any(key.startswith("dropped.") for key in events.counters)


# -- a message split at every byte --------------------------------------------------------------------

SPLIT_POST = (
    b"POST /submit?id=7 HTTP/1.1\r\nHost: example.com:80\r\nUser-Agent: t\r\nContent-Type: text/plain\r\n"
    b"Authorization: Basic dTpw\r\nContent-Length: 11\r\n\r\nhello world"
)
SPLIT_HEAD = b"HEAD /h HTTP/1.1\r\nHost: example.com\r\n\r\n"
SPLIT_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nfirst\r\n6\r\nsecond\r\n0\r\nT: v\r\n\r\n"
)
SPLIT_HEAD_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
SPLIT_CLIENT = SPLIT_POST + SPLIT_HEAD
SPLIT_SERVER = b"HTTP/1.1 100 Continue\r\n\r\n" + SPLIT_CHUNKED + SPLIT_HEAD_RESPONSE


def _stable(event: dict[str, Any]) -> dict[str, Any]:
    """The event without what differs between connections: times, client port, flow hash."""
    event = json.loads(json.dumps(event))
    del event["@timestamp"], event["event"]["start"], event["event"]["end"]
    del event["source"]["port"], event["client"]["port"], event["network"]["community_id"]
    return event


def test_messages_split_at_every_byte_give_the_same_events(tmp_path: Path) -> None:
    """One connection per split point (client and server cut at once), one made of 1-byte segments."""
    splits: list[list[tuple[bool, bytes]]] = []
    for cut in range(max(len(SPLIT_CLIENT), len(SPLIT_SERVER))):
        client_cut = 1 + cut % (len(SPLIT_CLIENT) - 1)
        server_cut = 1 + cut % (len(SPLIT_SERVER) - 1)
        splits.append(
            [
                (True, SPLIT_CLIENT[:client_cut]),
                (True, SPLIT_CLIENT[client_cut:]),
                (False, SPLIT_SERVER[:server_cut]),
                (False, SPLIT_SERVER[server_cut:]),
            ]
        )
    splits.append(
        [(True, bytes([byte])) for byte in SPLIT_CLIENT] + [(False, bytes([byte])) for byte in SPLIT_SERVER]
    )
    splits.append([(True, SPLIT_CLIENT), (False, SPLIT_SERVER)])
    frames = []
    for index, exchanges in enumerate(splits):
        frames += tcp_conversation(
            (CLIENT[0], 20000 + index), SERVER, exchanges, start=1_700_000_000.0 + index, step=0.0
        )
    events = run(tmp_path, frames, send_request=True, send_response=True, include_body_for=["text/plain"])
    assert len(events) == 2 * len(splits)
    by_connection: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        by_connection.setdefault(event["source"]["port"], []).append(_stable(event))
    expected = by_connection[20000 + len(splits) - 1]
    for port, found in by_connection.items():
        assert found == expected, f"split variant {port - 20000}"
    assert [summary(event) for event in expected] == [
        ("POST", "/submit", 200, 11, 11),
        ("HEAD", "/h", 200, 0, 0),
    ]
    assert expected[0]["user"] == {"name": "u"}
    assert expected[0]["http"]["request"]["body"]["content"] == "hello world"
    assert expected[0]["http"]["response"]["body"]["content"] == "firstsecond"
    assert expected[0]["http"]["request"]["bytes"] == len(SPLIT_POST)
    assert expected[0]["http"]["response"]["bytes"] == len(SPLIT_CHUNKED)
    assert expected[0]["request"].endswith("Authorization: *\r\nContent-Length: 11\r\n\r\nhello world")
    assert expected[1]["http"]["request"]["bytes"] == len(SPLIT_HEAD)
    assert expected[1]["http"]["response"]["bytes"] == len(SPLIT_HEAD_RESPONSE)


# -- limits, gaps and damage ------------------------------------------------------------------------


def test_headers_beyond_max_message_size_are_not_kept_but_still_frame(tmp_path: Path) -> None:
    request = get("/big", "X-A: " + "a" * 60, "X-B: b", "Content-Length: 3") + b"xyz"
    events = run(
        tmp_path,
        conversation((True, request + get("/small")), (False, ok() + ok())),
        max_message_size=60,
        send_headers=True,
        send_request=True,
    )
    note = "message truncated at max_message_size (60 bytes)"
    assert [summary(event) for event in events] == [("GET", "/big", 200, 3, 2), ("GET", "/small", 200, 0, 2)]
    assert events[0]["notes"] == [note]
    assert events[0]["http"]["request"]["headers"] == {"host": "example.com"}
    assert events[0]["request"] == request[:60].decode()
    assert "notes" not in events[1]


def test_a_line_longer_than_max_message_size_is_skipped(tmp_path: Path) -> None:
    request = get("/", "X-Huge: " + "h" * 500, "Accept: */*")
    events = run(
        tmp_path,
        conversation((True, request[:100]), (True, request[100:300]), (True, request[300:]), (False, ok())),
        max_message_size=200,
        send_headers=True,
    )
    assert events[0]["http"]["request"]["headers"] == {"host": "example.com"}
    assert events[0]["http"]["request"]["bytes"] == len(request)
    assert events[0]["notes"] == ["message truncated at max_message_size (200 bytes)"]


def test_a_request_line_held_beyond_max_message_size_is_malformed(tmp_path: Path) -> None:
    long_request = get("/" + "p" * 300)
    frames = conversation(
        (True, long_request[:50]), (True, long_request[50:]), (True, get("/short")), (False, ok() + ok())
    )
    events = run(tmp_path, frames, max_message_size=100)
    assert [summary(event) for event in events] == [("GET", "/short", 200, 0, 2), (None, None, 200, None, 2)]
    assert events[1]["notes"] == ["response without a request"]
    assert events.counters["dropped.http.malformed"] == 1


def test_a_long_request_line_in_one_segment_is_truncated(tmp_path: Path) -> None:
    frames = conversation((True, get("/" + "p" * 300)), (False, ok()))
    events = run(tmp_path, frames, max_message_size=100, send_request=True)
    assert events[0]["url"]["path"] == "/" + "p" * 300
    assert events[0]["request"] == get("/" + "p" * 300)[:100].decode()
    assert events[0]["notes"] == ["message truncated at max_message_size (100 bytes)"]


def test_a_gap_in_a_body_shortens_it(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 30\r\n\r\n"
    frames = conversation(
        (True, get("/gap")),
        (False, head + b"0123456789"),
        (False, b"abcdefghij"),  # lost
        (False, b"ABCDEFGHIJ"),
        (True, get("/next")),
        (False, ok(b"fine")),
    )
    del frames[HANDSHAKE + 2]
    events = run(tmp_path, frames, include_body_for=["text"])
    assert [summary(event) for event in events] == [("GET", "/gap", 200, 0, 30), ("GET", "/next", 200, 0, 4)]
    assert events[0]["notes"] == ["gap in body"]
    assert events[0]["http"]["response"]["body"]["content"] == "0123456789"
    assert events[0]["http"]["response"]["bytes"] == len(head) + 30
    assert "notes" not in events[1]


def test_a_gap_in_a_chunk_shortens_the_body(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n"
    frames = conversation(
        (True, get("/c")),
        (False, head + b"0123456789"),
        (False, b"abcdefghij"),  # lost
        (False, b"\r\n0\r\n\r\n"),
    )
    del frames[HANDSHAKE + 2]
    events = run(tmp_path, frames)
    assert [summary(event) for event in events] == [("GET", "/c", 200, 0, 20)]
    assert events[0]["notes"] == ["gap in body"]


def test_a_gap_in_headers_publishes_what_is_pending_and_resyncs(tmp_path: Path) -> None:
    """The client's next request acknowledges past the hole: the gap is known before that request."""
    frames = conversation(
        (True, get("/lost")),
        (False, b"HTTP/1.1 200 OK\r\nContent-"),
        (False, b"Length: 2\r\n\r\n"),  # lost
        (False, b"hi"),
        (True, get("/after")),
        (False, ok(b"ok")),
        (True, get("/third")),
        (False, ok(b"3")),
    )
    del frames[HANDSHAKE + 2]
    events = run(tmp_path, frames)
    assert [(summary(event), event.get("notes")) for event in events] == [
        (("GET", "/lost", None, 0, None), [GAP_PENDING]),
        (("GET", "/after", 200, 0, 2), None),
        (("GET", "/third", 200, 0, 1), None),
    ]
    assert events.counters["dropped.http.incomplete"] == 1
    assert "dropped.http.malformed" not in events.counters


def test_a_gap_past_the_end_of_a_body_completes_it_with_a_note(tmp_path: Path) -> None:
    frames = conversation(
        (True, get("/a")),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"),
        (False, b"cd" + ok(b"x")[:10]),  # lost: the end of the body and the start of the next message
        (False, ok(b"x")[10:]),
        (True, get("/b")),
        (False, ok(b"yy")),
        (True, get("/third")),
        (False, ok(b"3")),
    )
    del frames[HANDSHAKE + 2]
    events = run(tmp_path, frames)
    assert [(summary(event), event.get("notes")) for event in events] == [
        (("GET", "/a", 200, 0, 2), ["message incomplete: a gap in the stream cut it"]),
        (("GET", "/b", 200, 0, 2), None),
        (("GET", "/third", 200, 0, 1), None),
    ]


def test_malformed_request_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    """One connection per kind of damage; each counts once, then a request starting a segment parses."""
    garbage = [
        b"\x16\x03\x01\x00\xa5\x01\x00",  # not text
        b"GET /\r\n",  # HTTP/0.9
        b"GET / HTTP/2.0\r\n\r\n",
        b"G@T / HTTP/1.1\r\n\r\n",
        b"GET/HTTP/1.1\r\n\r\n",
    ]
    frames = connections(
        *([(True, bad), (True, b"more garbage\r\n"), (True, get("/fine")), (False, ok())] for bad in garbage)
    )
    events = run(tmp_path, frames)
    assert [summary(event) for event in events] == [("GET", "/fine", 200, 0, 2)] * len(garbage)
    assert events.counters["dropped.http.malformed"] == len(garbage)


def test_malformed_status_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    status_lines = [b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n", b"HTTTP/1.1 200 OK\r\n\r\n"]
    frames = connections(
        *([(True, get("/x")), (False, bad), (True, get("/y")), (False, ok())] for bad in status_lines)
    )
    events = run(tmp_path, frames)
    assert [summary(event) for event in events] == [
        ("GET", "/x", 200, 0, 2),  # the next response is taken as the oldest request's
        ("GET", "/y", None, 0, None),
    ] * len(status_lines)
    assert events.counters["dropped.http.malformed"] == len(status_lines)


def test_an_invalid_content_length_ends_parsing_with_a_note(tmp_path: Path) -> None:
    request = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nabcde"
    frames = conversation((True, request), (False, ok()), (True, get("/later")), (False, ok()))
    events = run(tmp_path, frames)
    assert [(summary(event), event.get("notes")) for event in events] == [
        (
            ("POST", "/p", 200, 0, 2),
            [BAD_FRAMING],
        ),
        (("GET", "/later", 200, 0, 2), None),
    ]


def test_a_bad_chunk_size_is_noted(tmp_path: Path) -> None:
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    events = run(tmp_path, conversation((True, get("/")), (False, response)))
    assert events[0]["notes"] == [BAD_FRAMING]


def test_a_response_cut_by_the_end_of_the_connection_is_noted(tmp_path: Path) -> None:
    frames = conversation((True, get("/")), (False, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    events = run(tmp_path, frames)
    assert [(summary(event), event.get("notes")) for event in events] == [
        (("GET", "/", 200, 0, 3), ["message incomplete: the stream ended inside it"])
    ]


def test_a_request_alone_and_headers_cut_by_the_end(tmp_path: Path) -> None:
    frames = conversation((True, get("/alone")), (False, b"HTTP/1.1 200 OK\r\nCont"))
    events = run(tmp_path, frames)
    assert [(summary(event), event.get("notes")) for event in events] == [
        (("GET", "/alone", None, 0, None), ["no response before the connection closed"])
    ]
    assert events[0]["status"] == "Error"
    assert events.counters["dropped.http.incomplete"] == 1


# -- content detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "from_client", "verdict"),
    [
        (b"GET / HTTP/1.1\r\n", True, True),
        (b"M-SEARCH * HTTP/1.1\r", True, True),
        (b"PROPFIND /d/ HTTP/1.0\n", True, True),
        (b"G", True, None),
        (b"GET /index.ht", True, None),
        (b"GET / HTTP/1.", True, None),
        (b"GET / HTTP/1.1", True, None),
        (b"GET / HTTP/2", True, False),
        (b"GET / HTTP/1.1 \r\n", True, False),
        (b"GET  / HTTP/1.1\r\n", True, False),
        (b"EHLO mail.example\r\n", True, False),
        (b"\x16\x03\x01", True, False),
        (b"A" * 40, True, False),
        (b"HTTP/1.1 200 OK\r\n", False, True),
        (b"HTTP/1.0 404\r\n", False, True),
        (b"HTTP/1.1 20", False, None),
        (b"HTTP/1.1 200", False, None),
        (b"HTTP/2 200", False, False),
        (b"220 mail.example ESMTP\r\n", False, False),
        (b"GET / HTTP/1.1\r\n", False, True),  # sides swapped: a connection picked up midway
        (b"HTTP/1.1 200 OK\r\n", True, True),
    ],
)
def test_detect(data: bytes, from_client: bool, verdict: bool | None) -> None:
    assert HttpAnalyzer.detect(data, from_client) is verdict


def test_content_detection_claims_http_on_another_port(tmp_path: Path) -> None:
    frames = tcp_conversation(
        CLIENT,
        ("10.0.0.2", 9999),
        [(True, b"GET /x HT"), (True, b"TP/1.1\r\nHost: h\r\n\r\n"), (False, ok())],
    )
    events = transactions(tmp_path, frames, {})
    assert [summary(event) for event in events] == [("GET", "/x", 200, 0, 2)]
    assert events[0]["url"]["port"] == 9999
    assert events.counters["streams.detected"] == 1


def test_a_connection_picked_up_midway_with_its_sides_swapped(tmp_path: Path) -> None:
    """No handshake and the server on the higher port: the ip decoder takes it for the client."""
    client, server = ("10.0.0.1", 39976), ("10.0.0.2", 64000)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"
    exchanges = [(True, get("/a")), (False, ok(b"A")), (True, b"HEAD /b HTTP/1.1\r\n\r\n"), (False, head)]
    frames = tcp_conversation(client, server, exchanges, handshake=False)
    for protocols in ({}, {"http": {"ports": [64000]}}):
        events = transactions(tmp_path, frames, protocols)
        assert [summary(event) for event in events] == [("GET", "/a", 200, 0, 1), ("HEAD", "/b", 200, 0, 0)]
        assert [(event["client"]["port"], event["server"]["port"]) for event in events] == [
            (39976, 64000)
        ] * 2
        assert events[0]["url"]["port"] == 64000
        assert not any(key.startswith("dropped.") for key in events.counters)


# -- configuration --------------------------------------------------------------------------------------


def test_defaults_and_options(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(
        "inputs: [{type: pcap, files: [x.pcap]}]\n"
        "decoders:\n  - type: ip\n  - type: tcp\n  - type: protocol\n"
        "    protocols: {http: {send_headers: [User-Agent, COOKIE], real_ip_header: X-Real-IP}}\n"
        "outputs: [{type: stdout}]\n"
    )
    config = load_pipeline(path, Registry.default(), environ={}).decoders[2].config.protocols.http
    assert config.ports == (80, 5000, 8000, 8002, 8080)
    assert config.send_headers == ("cookie", "user-agent")
    assert config.send_all_headers is False
    assert config.real_ip_header == "X-Real-IP"
    assert config.include_body_for == []


def test_send_headers_rejects_other_values(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(
        "inputs: [{type: pcap, files: [x.pcap]}]\n"
        "decoders:\n  - type: ip\n  - type: tcp\n  - type: protocol\n"
        "    protocols: {http: {send_headers: [1, 2]}}\n"
        "outputs: [{type: stdout}]\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_pipeline(path, Registry.default(), environ={})
    assert "decoders.2.protocols.http.send_headers" in str(raised.value)
    assert "expected true, false or a list of header names" in str(raised.value)


def test_damaged_conversations_never_make_the_analyzer_fail(tmp_path: Path) -> None:
    """Valid messages with bytes flipped, cut, duplicated and split at random: parsed or counted."""
    rng = random.Random(4)
    valid_client = SPLIT_CLIENT + get("/x", "Transfer-Encoding: chunked") + b"5;e\r\nabcde\r\n0\r\n\r\n"
    valid_server = SPLIT_SERVER + CHUNKED_RESPONSE + b"HTTP/1.0 200 OK\r\n\r\nrest"
    conversations = []
    for _ in range(80):
        client, server = bytearray(valid_client), bytearray(valid_server)
        for data in (client, server):
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(len(data))
                action = rng.randrange(4)
                if action == 0:
                    data[at] = rng.randrange(256)
                elif action == 1:
                    del data[at : at + rng.randint(1, 40)]
                elif action == 2:
                    data[at:at] = data[at : at + rng.randint(1, 40)]
                else:
                    data[at:at] = rng.choice([b"\r\n", b"\n\n", b":", b" ", b"0\r\n\r\n", b"ffffffff\r\n"])
        cuts = sorted(rng.sample(range(1, min(len(client), len(server))), 4))
        exchanges = [(True, bytes(client[: cuts[0]])), (False, bytes(server[: cuts[1]]))]
        exchanges += [(True, bytes(client[cuts[0] :])), (False, bytes(server[cuts[1] :]))]
        conversations.append(exchanges)
    events = run(tmp_path, connections(*conversations), send_request=True, include_body_for=["text"])
    assert "dropped.http.analyzer_error" not in events.counters
    assert len(events) > 80


# -- a header section parsed at once or line by line --------------------------------------------------

PARSER_CLIENT = (
    b"\r\nPOST /form HTTP/1.1\r\nHost: example.com\r\nUser-Agent: a\r\n  folded agent\r\n"
    b"Authorization: Basic dTpw\r\n\tsecret continuation\r\nno colon here\r\n"
    b"Accept: x\r\nAccept: y\r\nX-Forwarded-For: 192.0.2.9, 10.0.0.1\r\nContent-Length: 3\r\n\r\nabc"
    b"GET /empty HTTP/1.1\r\n\r\n"
    b"GET /last HTTP/1.1\r\nCookie: c\r\n  d\r\nHost: last.example\r\n\r\n"
    b"GET /long HTTP/1.1\r\nX-Long: " + b"v" * 300 + b"\r\nHost: cut.example\r\n\r\n"
    b"GET /bare HTTP/1.1\r\nBare: lf\nHost: bare.example\r\n\r\n"
)
"""Requests whose header sections take the whole-section path, then two that cannot: one over
max_message_size (256 in the test), one with a line ending in a bare LF."""
PARSER_SERVER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi"
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 300 + b"\r\nContent-Length: 1\r\n\r\nz"
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
)


def _parsed(analyzer: HttpAnalyzer, segments: list[tuple[bool, bytes]]) -> list[tuple[Any, ...]]:
    """What both parsers of a fresh connection make of ``segments``, message by message."""
    conn = HttpConnection(analyzer.settings)
    found = []
    for from_client, data in segments:
        parser = conn.client if from_client else conn.server
        for kind, message in parser.feed(data, 1.0, from_client):
            found.append((kind, message))
    for parser in (conn.client, conn.server):
        found += parser.finish("ended")
    return [
        (kind, message.size, json.dumps(message.fields, default=repr), message.notes, message.raw)
        for kind, message in found
    ]


def test_a_header_section_whole_in_a_segment_parses_as_one_split_anywhere(tmp_path: Path) -> None:
    """The whole-section path (folding, secrets, bare LF, malformed lines, a section over
    max_message_size) gives what the line-by-line path gives for every split point."""
    registry = Registry.default()
    others = {name: {"enabled": False} for name in registry.names("analyzer") if name != "http"}
    options = {
        "send_all_headers": True,
        "send_request": True,
        "send_response": True,
        "real_ip_header": "X-Forwarded-For",
        "max_message_size": 256,
    }
    config = build_namespace(ProtocolDecoder.schema(registry), {"protocols": {**others, "http": options}})
    counters = Counters("protocol", "decoder")
    context = StageContext("protocol", counters, base_dir=tmp_path, registry=registry)
    decoder = ProtocolDecoder(config, context)
    decoder.open()
    (analyzer,) = decoder.analyzers
    assert isinstance(analyzer, HttpAnalyzer)
    whole = _parsed(analyzer, [(True, PARSER_CLIENT), (False, PARSER_SERVER)])
    assert counters.values["http.malformed_header_lines"] == 1  # "no colon here"
    one_byte = [(True, bytes([byte])) for byte in PARSER_CLIENT]
    one_byte += [(False, bytes([byte])) for byte in PARSER_SERVER]
    assert _parsed(analyzer, one_byte) == whole
    for cut in range(1, max(len(PARSER_CLIENT), len(PARSER_SERVER))):
        client_cut, server_cut = min(cut, len(PARSER_CLIENT) - 1), min(cut, len(PARSER_SERVER) - 1)
        segments = [
            (True, PARSER_CLIENT[:client_cut]),
            (True, PARSER_CLIENT[client_cut:]),
            (False, PARSER_SERVER[:server_cut]),
            (False, PARSER_SERVER[server_cut:]),
        ]
        assert _parsed(analyzer, segments) == whole, f"split at {cut}"
    assert counters.values["http.malformed_header_lines"] == 1 + max(len(PARSER_CLIENT), len(PARSER_SERVER))
    requests = [json.loads(fields) for kind, _, fields, *_ in whole if kind == REQUEST]
    assert [fields["target"] for fields in requests] == ["/form", "/empty", "/last", "/long", "/bare"]
    assert requests[0]["headers"] == {
        "host": "example.com",
        "user-agent": "a folded agent",
        "authorization": "*",
        "accept": "x, y",
        "x-forwarded-for": "192.0.2.9, 10.0.0.1",
        "content-length": "3",
    }
    assert requests[0]["forwarded_ip"] == "192.0.2.9"
    assert requests[0]["user"] == "u"
    assert requests[2]["headers"] == {"cookie": "c d", "host": "last.example"}
    assert "host" not in requests[3]  # beyond max_message_size: framed, not kept
    assert requests[4]["headers"] == {"bare": "lf", "host": "bare.example"}
    first_raw = whole[0][4]
    assert first_raw.startswith(b"POST /form HTTP/1.1\r\n")
    assert b"Authorization: *\r\nno colon here\r\n" in first_raw
    truncated = "message truncated at max_message_size (256 bytes)"
    assert [notes for *_, notes, _raw in whole] == [[], [], [], [truncated], [], [], [], [], [truncated], []]
