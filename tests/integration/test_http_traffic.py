"""The http analyzer on real traffic: curl against Python's HTTP servers, captured with tcpdump.

Two captures, each made once for the module:

- curl against ``python -m http.server --protocol HTTP/1.1`` serving a folder: a GET, a 404, two
  URLs on one curl command line (one keep-alive connection) and a HEAD (``curl -I``);
- curl against a small ``BaseHTTPRequestHandler`` server speaking HTTP/1.1 (:data:`SERVER`): a POST
  with a chunked body, a POST with ``Expect: 100-continue`` (the server answers ``100 Continue``),
  a chunked response and an HTTP/1.0 response ended by closing the connection.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from analyzers import Decoded, transactions
from sniff import free_port, sniffing, wait_for_port

pytestmark = pytest.mark.slow

INDEX = b"<h1>flowpipe</h1>\n"
FILES = {"index.html": INDEX, "a.txt": b"a" * 100, "b.txt": b"b" * 2000}
UPLOAD = b"field=" + b"x" * 2994
CHUNKS = (b"first ", b"second ", b"third")
CLOSED_BODY = b"until the connection closes\n"
SERVER = f'''
"""HTTP/1.1 test server: POST counts the body (chunked or not), GET /chunked and GET /close."""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            size = 0
            while True:
                chunk = int(self.rfile.readline().split(b";")[0], 16)
                if not chunk:
                    while self.rfile.readline() not in (b"\\r\\n", b"\\n", b""):
                        pass
                    break
                size += len(self.rfile.read(chunk))
                self.rfile.readline()
        else:
            size = len(self.rfile.read(int(self.headers["Content-Length"])))
        body = f"received {{size}} bytes\\n".encode()
        self.send_response(201)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in {CHUNKS!r}:
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(part), part))
            self.wfile.write(b"0\\r\\n\\r\\n")
        else:  # an HTTP/1.0 response without Content-Length: its body ends with the connection
            self.protocol_version = "HTTP/1.0"
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write({CLOSED_BODY!r})


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


@dataclass
class Capture:
    """The events of one capture and what they should show."""

    events: Decoded
    port: int
    path: Path


def curl(*args: str) -> None:
    done = subprocess.run(["curl", "-sS", "-o", "/dev/null", *args], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()


def user_agent() -> str:
    """The User-Agent curl sends: ``curl/VERSION``."""
    version = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True).stdout
    return "curl/" + version.split()[1]


def capture_traffic(folder: Path, server: list[str], traffic: Any, **options: Any) -> Capture:
    """Run ``server`` (its port appended), capture what ``traffic(url)`` does, decode it."""
    if shutil.which("curl") is None:
        pytest.skip("this test needs 'curl' (Debian package curl), which is not installed")
    port = free_port()
    process = subprocess.Popen(
        [*server, str(port)], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        with sniffing(folder / "http.pcap", f"tcp port {port}") as path:
            traffic(lambda target: f"http://127.0.0.1:{port}{target}")
    finally:
        process.terminate()
        process.wait(timeout=10)
    events = transactions(folder, path, {"http": {"ports": [port], **options}})
    return Capture(events, port, path)


@pytest.fixture(scope="module")
def static(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    folder = tmp_path_factory.mktemp("static")
    site = folder / "site"
    site.mkdir()
    for name, content in FILES.items():
        (site / name).write_bytes(content)

    def traffic(url: Any) -> None:
        curl(url("/index.html"))
        curl(url("/missing"))
        curl(url("/a.txt"), "-o", "/dev/null", url("/b.txt"))
        curl("-I", url("/index.html"))

    server = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(site)]
    return capture_traffic(
        folder, [*server, "--protocol", "HTTP/1.1"], traffic, send_request=True, send_response=True
    )


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    folder = tmp_path_factory.mktemp("custom")
    (folder / "server.py").write_text(SERVER)
    upload = folder / "upload.txt"
    upload.write_bytes(UPLOAD)

    def traffic(url: Any) -> None:
        curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", url("/chunked-upload"))
        curl("-H", "Expect: 100-continue", "--data-binary", f"@{upload}", url("/upload"))
        curl(url("/chunked"))
        curl(url("/close"))

    return capture_traffic(
        folder,
        [sys.executable, "server.py"],
        traffic,
        send_request=True,
        send_response=True,
        include_body_for=["text/plain"],
    )


def curl_request(method: str, target: str, port: int, *headers: str) -> str:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"User-Agent: {user_agent()}"]
    return "\r\n".join([*lines, "Accept: */*", *headers]) + "\r\n\r\n"


def summary(event: dict[str, Any]) -> tuple[str, str, int]:
    """Method, path and status code of a transaction."""
    return event["method"], event["url"]["path"], event["http"]["response"]["status_code"]


def response_head(event: dict[str, Any]) -> str:
    """The raw response text up to its empty line (a kept body follows it)."""
    return event["response"].split("\r\n\r\n", 1)[0] + "\r\n\r\n"


# -- python -m http.server -------------------------------------------------------------------------


def test_static_server_transactions(static: Capture) -> None:
    events = static.events
    assert [summary(event) for event in events] == [
        ("GET", "/index.html", 200),
        ("GET", "/missing", 404),
        ("GET", "/a.txt", 200),
        ("GET", "/b.txt", 200),
        ("HEAD", "/index.html", 200),
    ]
    assert [event["status"] for event in events] == ["OK", "Error", "OK", "OK", "OK"]
    assert not any("notes" in event for event in events)
    assert not any(key.startswith("dropped.") for key in events.counters)


def test_get(static: Capture) -> None:
    event, port = static.events[0], static.port
    request = curl_request("GET", "/index.html", port)
    assert event["request"] == request
    assert event["url"] == {
        "original": "/index.html",
        "scheme": "http",
        "domain": "127.0.0.1",
        "port": port,
        "path": "/index.html",
        "extension": "html",
        "full": f"http://127.0.0.1:{port}/index.html",
    }
    assert (event["method"], event["path"], event["query"]) == ("GET", "/index.html", "GET /index.html")
    assert event["user_agent"] == {"original": user_agent()}
    assert event["related"] == {"ip": ["127.0.0.1"]}
    head = response_head(event)
    assert head.startswith("HTTP/1.1 200 OK\r\nServer: SimpleHTTP/")
    assert f"\r\nContent-Length: {len(INDEX)}\r\n" in head
    assert event["http"] == {
        "version": "1.1",
        "request": {"method": "GET", "bytes": len(request), "body": {"bytes": 0}},
        "response": {
            "status_code": 200,
            "status_phrase": "ok",
            "bytes": len(head) + len(INDEX),
            "body": {"bytes": len(INDEX)},
            "mime_type": "text/html",
        },
    }
    assert (event["source"]["bytes"], event["destination"]["bytes"]) == (len(request), len(head) + len(INDEX))


def test_not_found(static: Capture) -> None:
    event = static.events[1]
    response = event["http"]["response"]
    assert event["status"] == "Error"
    assert (response["status_code"], response["status_phrase"]) == (404, "file not found")
    assert response["mime_type"] == "text/html"
    assert f"\r\nContent-Length: {response['body']['bytes']}\r\n" in event["response"]
    assert response["bytes"] == len(response_head(event)) + response["body"]["bytes"]
    assert response["body"]["bytes"] > 0


def test_two_urls_share_one_keep_alive_connection(static: Capture) -> None:
    first, second = static.events[2], static.events[3]
    assert first["client"]["port"] == second["client"]["port"]
    ports = [event["client"]["port"] for event in static.events]
    assert ports.count(first["client"]["port"]) == 2
    assert len(set(ports)) == 4
    assert [event["http"]["response"]["body"]["bytes"] for event in (first, second)] == [100, 2000]
    assert [event["http"]["response"]["mime_type"] for event in (first, second)] == ["text/plain"] * 2
    assert second["request"] == curl_request("GET", "/b.txt", static.port)


def test_head_response_has_no_body(static: Capture) -> None:
    event = static.events[4]
    assert event["request"] == curl_request("HEAD", "/index.html", static.port)
    assert f"\r\nContent-Length: {len(INDEX)}\r\n" in event["response"]
    assert event["http"]["response"]["body"] == {"bytes": 0}
    assert event["http"]["response"]["bytes"] == len(event["response"])


def test_content_detection_gives_the_same_events(static: Capture, tmp_path: Path) -> None:
    detected = transactions(tmp_path, static.path, {"http": {"send_request": True, "send_response": True}})
    assert detected == static.events
    assert detected.counters["streams.detected"] == 4


# -- a handler of our own: chunked bodies, 100-continue, close-delimited -------------------------


def test_custom_server_transactions(custom: Capture) -> None:
    events = custom.events
    assert [summary(event) for event in events] == [
        ("POST", "/chunked-upload", 201),
        ("POST", "/upload", 201),
        ("GET", "/chunked", 200),
        ("GET", "/close", 200),
    ]
    assert not any("notes" in event for event in events)
    assert not any(key.startswith("dropped.") for key in events.counters)


def test_post_with_a_chunked_body(custom: Capture) -> None:
    event = custom.events[0]
    request = curl_request(
        "POST",
        "/chunked-upload",
        custom.port,
        "Transfer-Encoding: chunked",
        "Content-Type: application/x-www-form-urlencoded",
    )
    assert event["request"] == request
    framing = len(b"%x\r\n" % len(UPLOAD)) + len(b"\r\n0\r\n\r\n")  # curl sends it as one chunk
    assert event["http"]["request"] == {
        "method": "POST",
        "bytes": len(request) + len(UPLOAD) + framing,
        "body": {"bytes": len(UPLOAD)},
        "mime_type": "application/x-www-form-urlencoded",
    }
    assert event["http"]["response"]["body"] == {"bytes": 20, "content": f"received {len(UPLOAD)} bytes\n"}
    assert event["http"]["response"]["status_phrase"] == "created"


def test_expect_100_continue(custom: Capture) -> None:
    event = custom.events[1]
    request = curl_request(
        "POST",
        "/upload",
        custom.port,
        "Expect: 100-continue",
        f"Content-Length: {len(UPLOAD)}",
        "Content-Type: application/x-www-form-urlencoded",
    )
    assert event["request"] == request
    assert event["http"]["request"]["bytes"] == len(request) + len(UPLOAD)
    assert event["http"]["request"]["body"] == {"bytes": len(UPLOAD)}
    response = event["http"]["response"]
    assert (response["status_code"], response["body"]["content"]) == (201, f"received {len(UPLOAD)} bytes\n")
    assert event["response"].startswith("HTTP/1.1 201 Created\r\n")
    assert response["bytes"] == len(event["response"])
    assert custom.events.counters["http.interim_responses"] == 1


def test_chunked_response(custom: Capture) -> None:
    event = custom.events[2]
    body = b"".join(CHUNKS)
    framing = sum(len(b"%x\r\n\r\n" % len(part)) for part in CHUNKS) + len(b"0\r\n\r\n")
    head = response_head(event)
    assert "\r\nTransfer-Encoding: chunked\r\n" in head
    assert event["response"] == head + body.decode()
    assert event["http"]["response"] == {
        "status_code": 200,
        "status_phrase": "ok",
        "bytes": len(head) + len(body) + framing,
        "body": {"bytes": len(body), "content": body.decode()},
        "mime_type": "text/plain",
    }


def test_http_1_0_body_ended_by_closing(custom: Capture) -> None:
    event = custom.events[3]
    head = response_head(event)
    assert head.startswith("HTTP/1.0 200 OK\r\n")
    assert "Content-Length" not in head
    assert event["http"]["version"] == "1.1"  # the request's
    assert event["http"]["response"]["body"] == {"bytes": len(CLOSED_BODY), "content": CLOSED_BODY.decode()}
    assert event["http"]["response"]["bytes"] == len(head) + len(CLOSED_BODY)
