"""Counters of every stage and queue: the ledger of what came in, went out and was dropped.

Each :class:`Counters` is written by the one thread that runs its stage and read by others
(summary, periodic log, Prometheus endpoint); in CPython an ``int`` update in a dict is atomic
enough for monotonic counters read as snapshots.

Counter names: ``in``, ``out``, and ``dropped.<reason>`` for every drop (``dropped.malformed``,
``dropped.queue_full``, ...). Stages add further names of their own (``bytes``, ``retries``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import ConfigError, StartupError

__all__ = ["Counters", "MetricsServer", "RateLimitedLog", "render_prometheus"]

DROPPED = "dropped."


class Counters:
    """Named monotonic counters (and gauges) of one stage or queue."""

    __slots__ = ("gauges", "kind", "owner", "values")

    def __init__(self, owner: str, kind: str) -> None:
        self.owner = owner
        self.kind = kind
        self.values: dict[str, int] = {}
        self.gauges: dict[str, Any] = {}

    def add(self, name: str, amount: int = 1) -> None:
        """Increase counter ``name`` by ``amount``."""
        values = self.values
        values[name] = values.get(name, 0) + amount

    def drop(self, reason: str, amount: int = 1) -> None:
        """Count ``amount`` items dropped for ``reason``."""
        self.add(DROPPED + reason, amount)

    def add_many(self, counts: dict[str, int]) -> None:
        """Merge a dict of per-batch counts (hot paths count locally, then merge once)."""
        values = self.values
        for name, amount in counts.items():
            values[name] = values.get(name, 0) + amount

    def get(self, name: str) -> int:
        return self.values.get(name, 0)

    def drops(self) -> dict[str, int]:
        """Drops by reason."""
        return {
            name[len(DROPPED) :]: value
            for name, value in list(self.values.items())
            if name.startswith(DROPPED)
        }

    def dropped_total(self) -> int:
        return sum(self.drops().values())

    def snapshot(self) -> dict[str, Any]:
        return {**self.values, **self.gauges}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(all_counters: Iterable[Counters]) -> str:
    """Render counters in the Prometheus text exposition format (version 0.0.4)."""
    counter_lines: list[str] = []
    drop_lines: list[str] = []
    gauge_lines: list[str] = []
    for counters in all_counters:
        base = f'kind="{_label(counters.kind)}",id="{_label(counters.owner)}"'
        for name, value in sorted(list(counters.values.items())):
            if name.startswith(DROPPED):
                reason = _label(name[len(DROPPED) :])
                drop_lines.append(f'flowpipe_dropped_total{{{base},reason="{reason}"}} {value}')
            else:
                counter_lines.append(f'flowpipe_items_total{{{base},counter="{_label(name)}"}} {value}')
        for name, value in sorted(list(counters.gauges.items())):
            if isinstance(value, (int, float)):
                gauge_lines.append(f'flowpipe_gauge{{{base},gauge="{_label(name)}"}} {value}')
    return "".join(
        f"{line}\n"
        for line in (
            "# HELP flowpipe_items_total Items counted by a stage or queue.",
            "# TYPE flowpipe_items_total counter",
            *counter_lines,
            "# HELP flowpipe_dropped_total Items dropped by a stage or queue, by reason.",
            "# TYPE flowpipe_dropped_total counter",
            *drop_lines,
            "# HELP flowpipe_gauge Current values (queue depth, bytes held).",
            "# TYPE flowpipe_gauge gauge",
            *gauge_lines,
        )
    )


class MetricsServer:
    """Serves ``/metrics`` in Prometheus text format from a background thread."""

    def __init__(self, address: str, collect: Any) -> None:
        host, _, port = address.rpartition(":")
        collect_counters = collect

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = render_prometheus(collect_counters()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        if not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"metrics.http: expected host:port, got {address!r}")
        try:
            self.server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        except OSError as error:
            raise StartupError(f"metrics.http {address}: cannot listen: {error.strerror or error}") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RateLimitedLog:
    """Logs each kind of message at most once per ``interval`` seconds, counting the rest.

    Errors while running are reported this way: the first occurrence at once, then one line per
    interval saying how many more were suppressed.
    """

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, message: str, *args: Any, exc_info: Any = None) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        self.logger.log(level, message, *args, exc_info=exc_info)

    def error(self, kind: str, message: str, *args: Any, exc_info: Any = None) -> None:
        self.log(logging.ERROR, kind, message, *args, exc_info=exc_info)

    def warning(self, kind: str, message: str, *args: Any) -> None:
        self.log(logging.WARNING, kind, message, *args)
