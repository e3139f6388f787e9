"""Real servers for the output tests: osmem-server and a fault-injecting HTTP proxy in front of it.

- :class:`Osmem` runs the ``osmem-server`` binary of the PyPI package of that name (an in-memory,
  OpenSearch-compatible server; ``osmem_server.resolve_binary()``) on a free port, and can stop
  and start again on the same port. Japanese analysis is off (``-no-ja``): with it, creating an
  index takes seconds.
- Fixtures: ``osmem`` runs one empty, frozen base server for the session; ``cluster`` gives each
  test a fresh, empty clone of it on a port of its own (osmem's ``POST /_osmem/clones``), so tests
  never see each other's indices or templates; ``proxy`` is a :class:`BulkProxy` in front of the
  clone. A test module takes them with ``osmem, cluster, proxy = servers.osmem, servers.cluster,
  servers.proxy``.
- :class:`BulkProxy` forwards HTTP to a server. It normalises the media types of
  ``elasticsearch-py`` 8/9 (``application/vnd.elasticsearch+x-ndjson; compatible-with=9`` ->
  ``application/x-ndjson``, likewise ``+json``), which osmem refuses, in ``Content-Type`` and
  ``Accept``, and passes every response header through once, unchanged. It records every
  request (body un-gzipped), and injects faults on demand: answer a status (429, 503, 401...)
  to the next N requests or for T seconds, drop connections without an answer, or refuse every
  second item of the next N bulk requests with a per-item 429 (those items are not forwarded,
  as a busy cluster rejects items). It can listen with TLS (:func:`make_certificates`).
- Pipelines for the output tests: a capture of every kind of event (:data:`CAPTURE`), the
  ``counting`` input, ``flowpipe run`` in a process (to the end, or in the background while its
  standard error is watched), or in this process when a test runs many (:func:`run_in_process`).
"""

from __future__ import annotations

import datetime
import gzip
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from captures import ethernet, icmp, ip_packet, tcp_conversation, udp_frame, write_pcap
from sniff import free_port, wait_for_port

from flowpipe.config import load_pipeline
from flowpipe.metrics import Counters
from flowpipe.pipeline import Pipeline
from flowpipe.registry import Registry
from flowpipe.summary import Summary

__all__ = [
    "CAPTURE",
    "DAY_INDEX",
    "FAST_BACKOFF",
    "FILE",
    "PER_PACKET",
    "Background",
    "BulkProxy",
    "Osmem",
    "Recorded",
    "canonical",
    "capture_pipeline",
    "cluster",
    "counter",
    "counting_pipeline",
    "field_type",
    "installed_template",
    "make_certificates",
    "ndjson",
    "osmem",
    "proxy",
    "request",
    "run_flowpipe",
    "run_in_process",
    "search_all",
    "write_pipeline",
]

_VENDOR_MEDIA_TYPE = re.compile(r"application/vnd\.elasticsearch\+([\w-]+)\s*;\s*compatible-with=\d+")
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "content-length", "host"))
REJECTED = {"type": "es_rejected_execution_exception", "reason": "rejected by the test proxy"}


def osmem_binary() -> str:
    """The osmem-server binary of the installed package, made executable; skip without the package."""
    osmem_server = pytest.importorskip("osmem_server", reason="needs the osmem-server package (test extra)")
    binary = osmem_server.resolve_binary()
    if not os.access(binary, os.X_OK):
        os.chmod(binary, 0o755)
    return binary


class Osmem:
    """One osmem-server process on ``127.0.0.1:port``; :meth:`start` again after :meth:`stop`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Osmem:
        self.process = subprocess.Popen(
            [osmem_binary(), "-addr", f"127.0.0.1:{self.port}", "-no-stdin-watch", "-no-ja"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return request(self.url, method, path, body)

    def clone(self) -> tuple[str, str]:
        """A fresh clone of this (frozen) server: its id and URL."""
        answer = self.request("POST", "/_osmem/clones")
        return answer["id"], answer["url"]


def request(url: str, method: str, path: str, body: Any = None) -> Any:
    """A JSON request to ``url``; the decoded answer (errors too, for 4xx/5xx)."""
    data = None if body is None else json.dumps(body).encode()
    message = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(message, timeout=10) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        text = error.read()
    return json.loads(text) if text else None


def search_all(url: str, index: str) -> list[dict[str, Any]]:
    """Every document's ``_source`` in ``index`` (a name or pattern), after a refresh."""
    request(url, "POST", f"/{index}/_refresh")
    answer = request(url, "POST", f"/{index}/_search", {"size": 10000, "query": {"match_all": {}}})
    return [hit["_source"] for hit in answer["hits"]["hits"]]


@pytest.fixture(scope="session")
def osmem() -> Iterator[Osmem]:
    """An empty osmem-server for the session, frozen: tests write to clones of it."""
    server = Osmem().start()
    try:
        server.request("POST", "/_osmem/base/freeze")
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(osmem: Osmem) -> Iterator[str]:
    """The URL of a fresh, empty clone of the session's server, for one test."""
    clone_id, url = osmem.clone()
    yield url
    osmem.request("DELETE", f"/_osmem/clones/{clone_id}")


@pytest.fixture
def proxy(cluster: str) -> Iterator[BulkProxy]:
    """The test proxy in front of this test's clone."""
    with BulkProxy(cluster) as running:
        yield running


# -- the proxy ---------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """A request the proxy received (header names in lower case, the body un-gzipped), and its fault."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    fault: str | None

    def bulk_actions(self) -> list[dict[str, Any]]:
        """The action lines of a bulk body."""
        return [json.loads(line) for line in self.body.splitlines()[::2]]


@dataclass
class _Fault:
    kind: str  # "status", "drop" or "reject_items"
    status: int = 0
    count: int | None = None
    seconds: float | None = None
    """How long the fault lasts from the first request it meets."""
    bulk_only: bool = True
    until: float | None = None

    def take(self, path: str) -> bool:
        """Whether the fault applies to a request for ``path``; counts it if so."""
        if self.bulk_only and "/_bulk" not in path:
            return False
        if self.seconds is not None:
            if self.until is None:
                self.until = time.monotonic() + self.seconds
            return time.monotonic() < self.until
        if self.count is None:
            return True
        self.count -= 1
        return self.count >= 0


@dataclass
class BulkProxy:
    """A threaded HTTP(S) proxy to ``upstream`` that normalises media types, records and injects faults."""

    upstream: str
    port: int = 0
    tls: ssl.SSLContext | None = None
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self.port = self.port or free_port()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> BulkProxy:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        server.proxy = self  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(target=server.serve_forever, name="bulk-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> BulkProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------------

    def fail(
        self, status: int, *, count: int | None = None, seconds: float | None = None, bulk_only: bool = True
    ) -> None:
        """Answer ``status`` to the next ``count`` (bulk) requests, ``seconds`` from the first, or always."""
        self._add(_Fault("status", status, count, seconds, bulk_only))

    def drop(self, *, count: int | None = None, seconds: float | None = None) -> None:
        """Close the connection without an answer (nothing forwarded) for the next bulk requests."""
        self._add(_Fault("drop", 0, count, seconds))

    def reject_items(self, *, count: int) -> None:
        """Of the next ``count`` bulk requests, refuse every second item with a 429 (not forwarded)."""
        self._add(_Fault("reject_items", 429, count))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def bulk_requests(self) -> list[Recorded]:
        with self._lock:
            return [recorded for recorded in self.requests if "/_bulk" in recorded.path]

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            return next((fault for fault in self._faults if fault.take(path)), None)

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: ThreadingHTTPServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._relay()

    def do_HEAD(self) -> None:
        self._relay()

    def do_PUT(self) -> None:
        self._relay()

    def do_POST(self) -> None:
        self._relay()

    def do_DELETE(self) -> None:
        self._relay()

    def _relay(self) -> None:
        proxy: BulkProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = {
            name.lower(): _VENDOR_MEDIA_TYPE.sub(r"application/\1", value)
            if name.lower() in ("content-type", "accept")
            else value
            for name, value in self.headers.items()
            if name.lower() not in _HOP_BY_HOP
        }
        headers = dict(received)
        if headers.pop("content-encoding", None) == "gzip":  # forwarded plain, so faults can read it
            body = gzip.decompress(body)
        fault = proxy._take_fault(self.path)
        proxy._record(Recorded(self.command, self.path, received, body, fault.kind if fault else None))
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "status":
            error = dict(REJECTED, reason=f"HTTP {fault.status} from the test proxy")
            self._answer(
                fault.status, {"Content-Type": "application/json"}, {"error": error, "status": fault.status}
            )
            return
        if fault is not None and fault.kind == "reject_items":
            self._relay_half(proxy, headers, body)
            return
        status, answer_headers, data = self._forward(proxy, headers, body)
        self._send(status, answer_headers, data)

    def _forward(
        self, proxy: BulkProxy, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = urlsplit(proxy.upstream)
        connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
        try:
            connection.request(self.command, self.path, body=body if body else None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            connection.close()

    def _relay_half(self, proxy: BulkProxy, headers: dict[str, str], body: bytes) -> None:
        lines = body.splitlines(keepends=True)
        pairs = [lines[index : index + 2] for index in range(0, len(lines), 2)]
        kept = b"".join(b"".join(pair) for position, pair in enumerate(pairs) if position % 2 == 0)
        status, answer_headers, data = self._forward(proxy, headers, kept)
        if status != 200:
            self._send(status, answer_headers, data)
            return
        forwarded = iter(json.loads(data)["items"])
        items = []
        for position, pair in enumerate(pairs):
            if position % 2 == 0:
                items.append(next(forwarded))
            else:
                action = next(iter(json.loads(pair[0])))
                items.append({action: {"status": 429, "error": REJECTED}})
        self._answer(200, {"Content-Type": "application/json"}, {"errors": True, "items": items})

    def _answer(self, status: int, headers: dict[str, str], document: Any) -> None:
        headers = {**headers, "X-Elastic-Product": "Elasticsearch"}
        self._send(status, list(headers.items()), json.dumps(document).encode())

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status)
        length = str(len(data))
        for name, value in headers:
            if name.lower() == "content-length" and self.command == "HEAD":
                length = value
            elif name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


# -- certificates --------------------------------------------------------------------------------


def make_certificates(folder: Path, host: str = "127.0.0.1") -> tuple[Path, ssl.SSLContext]:
    """A CA (``ca.pem``) and a server certificate it signed for ``host``: the CA's path, a server context."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("flowpipe test CA", ca_key, "flowpipe test CA", ca_key, True)
    server_cert = build("flowpipe test server", server_key, "flowpipe test CA", ca_key, False)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return ca_path, context


# -- running flowpipe against them ---------------------------------------------------------------

RUNTIME_PLUGINS = Path(__file__).resolve().parent / "fixtures" / "runtime_plugins"
FAST_BACKOFF = {"init": "20ms", "max": "200ms"}
"""Retry timing for tests: faults last a fraction of a second."""


def write_pipeline(folder: Path, **sections: Any) -> Path:
    """``folder/pipeline.yml`` with the test plugins (``counting``...) available and ``sections``."""
    document = {"plugins": [str(RUNTIME_PLUGINS / "counting.py")], **sections}
    path = folder / "pipeline.yml"
    path.write_text(json.dumps(document, indent=1))  # JSON is YAML
    return path


def flowpipe_command(config: Path) -> list[str]:
    """The command line of ``flowpipe run`` on ``config`` with this interpreter."""
    return [sys.executable, "-m", "flowpipe", "run", "--no-progress", "-c", str(config)]


def run_flowpipe(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``flowpipe run`` to the end; its exit status, stdout and stderr."""
    return subprocess.run(
        flowpipe_command(config), capture_output=True, text=True, timeout=timeout, cwd=config.parent
    )


class Background:
    """``flowpipe run`` in the background, its standard error collected line by line as it comes."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            flowpipe_command(config),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=config.parent,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="flowpipe-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        """Wait until a line of standard error contains ``text``."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"flowpipe wrote no line with {text!r}:\n{''.join(self.lines)}")
            time.sleep(0.05)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the end: the exit status and all of standard error."""
        try:
            status = self.process.wait(timeout)
        finally:
            self.process.kill()
            self._reader.join(5)
        return status, "".join(self.lines)


def run_in_process(config: Path) -> Summary:
    """Run the pipeline in this process (no interpreter start-up, for tests that run many)."""
    registry = Registry.default()
    return Pipeline(load_pipeline(config, registry), registry).run()


def counter(counters_list: list[Counters], owner: str) -> dict[str, int]:
    """One stage's counters from a summary's list (``summary.outputs``), zeros left out."""
    for counters in counters_list:
        if counters.owner == owner:
            return {name: value for name, value in counters.snapshot().items() if value}
    raise KeyError(owner)


def ndjson(path: Path) -> list[dict[str, Any]]:
    """The records of an NDJSON file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def canonical(documents: list[dict[str, Any]]) -> list[str]:
    """Documents as sorted JSON texts with sorted keys, to compare collections field for field."""
    return sorted(json.dumps(document, sort_keys=True) for document in documents)


# -- pipelines for the output tests ------------------------------------------------------------

DAY_INDEX = "flowpipe-2023.11.14"
"""The default index of events captured at 1_700_000_000 (2023-11-14T22:13:20Z)."""
CAPTURE = [
    *tcp_conversation(("192.0.2.10", 40000), ("192.0.2.20", 7), [(True, b">hello\n"), (False, b"<hello\n")]),
    (1_700_000_000.1, udp_frame("192.0.2.1", "198.51.100.9", 53001, 9999, b"ping")),
    (1_700_000_000.2, udp_frame("2001:db8::3", "2001:db8::4", 53002, 5353, b"mdns")),
    (1_700_000_000.3, ethernet(ip_packet("192.0.2.1", "192.0.2.2", icmp(8)))),
    (1_700_000_000.4, ethernet(ip_packet("192.0.2.2", "192.0.2.1", icmp(0)))),
]
"""An echo (TCP port 7) conversation, two UDP datagrams and an ICMP echo exchange."""
FILE = {"type": "file", "path": "events.ndjson"}
"""The file output the tests compare the cluster's documents with."""
PER_PACKET = [{"type": "ip", "flows": {"enabled": False}}]
"""Decoders giving one event per packet."""


def capture_pipeline(folder: Path, *outputs: dict[str, Any], **sections: Any) -> Path:
    """A pipeline reading :data:`CAPTURE` (default decoders: flows and transactions) into ``outputs``."""
    write_pcap(folder / "capture.pcap", CAPTURE)
    return write_pipeline(
        folder, inputs=[{"type": "pcap", "files": ["capture.pcap"]}], outputs=list(outputs), **sections
    )


def counting_pipeline(folder: Path, count: int, *outputs: dict[str, Any], **settings: Any) -> Path:
    """``count`` packets of the ``counting`` input, one event each, in batches of 100, into ``outputs``.

    ``settings`` go to the ``pipeline`` section (``queue``, ``shutdown_timeout``...).
    """
    return write_pipeline(
        folder,
        inputs=[{"type": "counting", "count": count}],
        decoders=PER_PACKET,
        outputs=list(outputs),
        pipeline={"batch_size": 100, **settings},
    )


def field_type(mappings: dict[str, Any], path: str) -> dict[str, Any]:
    """The mapping of the field at dotted ``path`` in an index's or template's ``mappings``."""
    node = mappings
    *parents, leaf = path.split(".")
    for part in parents:
        node = node["properties"][part]
    return node["properties"][leaf]


def installed_template(url: str, name: str = "flowpipe") -> dict[str, Any]:
    """The composable index template ``name`` as the server at ``url`` has it."""
    return request(url, "GET", f"/_index_template/{name}")["index_templates"][0]["index_template"]
