"""What the ``elasticsearch`` and ``opensearch`` outputs share: bulk requests, retries, dead letters.

A flavour (one module per client library) subclasses :class:`BulkOutput` and implements
:meth:`BulkOutput.connect`, returning a :class:`Cluster`: three calls (bulk, does a template
exist, put a template) whose failures are raised as :class:`ClusterError` with the HTTP status
(None when no answer came). Everything else is here, once:

- **Requests.** :meth:`BulkOutput.write` turns the batch into NDJSON bulk bodies of at most
  ``bulk_max_size`` events each (serialised with orjson; action lines cached per index name) and
  sends them on ``workers`` threads at once. It returns only when the cluster has answered
  every item, so an event counts as shipped (``out``) only once the cluster acknowledged it.
- **Retries.** The pipeline retries (``backoff.init`` to ``backoff.max``, doubling, with jitter);
  this output never sleeps. Items that failed with 429 or 5xx, and every item of a request that
  failed as a whole with a connection error, timeout, 401/403, 408, 429 or 5xx, are handed back
  through ``OutputError(remaining=...)``: only those are sent again, and what is still being
  retried at shutdown is counted as undelivered by the pipeline.
- **Dead letters.** Items refused for good (a 4xx other than those, e.g. a mapping conflict), and
  events whose index name cannot be built (a field missing without a default), are appended to
  the ``dead_letter.path`` NDJSON file with the error and the event, counted as
  ``dropped.rejected``, and not retried.
- **Index template.** At start, unless ``setup.template.enabled`` is false, a composable index
  template with ECS mappings is installed (kept if it exists, unless ``overwrite``). A cluster
  that cannot be reached does not stop the start: the template is installed before the first
  bulk request, and events wait in the output's queue meanwhile (backpressure). A definitive
  refusal (401/403 or another 4xx) stops the start with one line.
"""

from __future__ import annotations

import ssl
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import orjson

import flowpipe
from flowpipe import (
    Bool,
    Choice,
    Duration,
    Event,
    Int,
    ListOf,
    Option,
    OptionError,
    Output,
    OutputError,
    StartupError,
    Str,
    Struct,
    format_timestamp,
)
from flowpipe.codecs import CODECS
from flowpipe.sprintf import MissingFieldError, Sprintf, Template

__all__ = ["BulkOutput", "Cluster", "ClusterError", "Connection", "describe_answer", "index_template"]

DEFAULT_INDEX = "flowpipe-%{+yyyy.MM.dd}"
DEFAULT_DATA_STREAM = "logs-flowpipe.%{[event.dataset]:generic}-default"
TEMPLATE_PRIORITY = 200
"""Above Elasticsearch's built-in ``logs-*-*`` template (100), which would otherwise tie with ours."""
_RETRYABLE_REQUEST = frozenset((401, 403, 408, 429))
_encode_event = CODECS["json"]


class ClusterError(Exception):
    """A request failed: ``status`` is the HTTP status of the answer, None when none came."""

    def __init__(self, message: str, status: int | None = None, *, wrong_server: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.wrong_server = wrong_server
        """The server answered but is not what the client library talks to (a definitive refusal)."""

    @property
    def retryable(self) -> bool:
        """Worth sending again: no answer, 429, 5xx, 408, or credentials that may be fixed (401/403)."""
        if self.wrong_server:
            return False
        return self.status is None or self.status >= 500 or self.status in _RETRYABLE_REQUEST

    @property
    def definitive(self) -> bool:
        """A refusal that waiting will not change: a 4xx other than 408 and 429, or the wrong server."""
        if self.wrong_server:
            return True
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)


class Cluster:
    """The few calls the bulk machinery makes; a flavour implements them with its client."""

    def bulk(self, body: bytes) -> dict[str, Any]:
        """POST ``body`` to ``_bulk``; return the answer with at least ``errors`` and ``items``
        (each ``{action: {"status": ..., "error": ...}}``); raise ClusterError."""
        raise NotImplementedError

    def template_exists(self, name: str) -> bool:
        """Whether the composable index template ``name`` exists; raise ClusterError."""
        raise NotImplementedError

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        """Create or replace the composable index template ``name``; raise ClusterError."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the client's connections."""


@dataclass(frozen=True)
class Connection:
    """The connection options both flavours take, ready for a client library."""

    hosts: list[str]
    basic_auth: tuple[str, str] | None
    api_key: str | tuple[str, str] | None
    ssl_context: ssl.SSLContext | None
    compression: bool
    timeout: float
    connections: int


class HostUrl(Str):
    """``http(s)://host:port`` (``host:port`` means http)."""

    name = "URL (http://host:9200)"

    def convert(self, value: Any) -> str:
        text = super().convert(value).strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionError(f"expected http://host:port or https://host:port, got {value!r}")
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError as error:
            raise OptionError(f"bad port in {value!r}: {error}") from None
        return text.rstrip("/")


OPTIONS = (
    Option("hosts", ListOf(HostUrl(), min_items=1), ["http://127.0.0.1:9200"], "cluster nodes, used in turn"),
    Option("username", Str(), None, "basic authentication user"),
    Option("password", Str(), None, "basic authentication password"),
    Option("api_key", Str(), None, "API key: `id:key`, or the base64 encoding of it"),
    Option(
        "ssl",
        Struct(
            Option("certificate_authorities", ListOf(Str(nonempty=True)), [], "PEM files of trusted CAs"),
            Option(
                "verification_mode",
                Choice("full", "certificate", "none"),
                "full",
                "full: chain and host name; certificate: chain only; none: no check (insecure)",
            ),
        ),
        description="TLS for https:// hosts",
    ),
    Option("compression", Bool(), False, "gzip request bodies"),
    Option("timeout", Duration(), "90s", "longest wait for a connection or an answer"),
    Option(
        "index",
        Sprintf(),
        None,
        f"index name per event; default {DEFAULT_INDEX}, or {DEFAULT_DATA_STREAM} with data_stream",
    ),
    Option("data_stream", Bool(), False, "write to data streams: op_type create, template with data_stream"),
    Option("pipeline", Sprintf(), None, "ingest pipeline per event (format string)"),
    Option("bulk_max_size", Int(1), 1600, "most events in one bulk request; larger batches are split"),
    Option("workers", Int(1, 64), 1, "bulk requests of one batch in flight at once"),
    Option(
        "flush_interval",
        Duration(),
        "1s",
        "longest wait for more queued events to fill a bulk request of bulk_max_size",
    ),
    Option(
        "dead_letter",
        Struct(
            Option("enabled", Bool(), True, "write refused events to a file (else only count and log them)"),
            Option("path", Str(nonempty=True), None, "NDJSON file; default <output id>.dead-letter.ndjson"),
        ),
        description="events the cluster refused for good",
    ),
    Option(
        "setup",
        Struct(
            Option(
                "template",
                Struct(
                    Option("enabled", Bool(), True, "install an index template with ECS mappings at start"),
                    Option("name", Str(nonempty=True), "flowpipe", "the template's name"),
                    Option(
                        "pattern", Str(nonempty=True), None, "index pattern; default: the index's prefix + *"
                    ),
                    Option("overwrite", Bool(), False, "replace a template of that name that exists"),
                ),
            ),
        ),
        description="what is installed on the cluster at start",
    ),
)


def template_pattern(index: str) -> str | None:
    """The pattern matching every name ``index`` renders to: its literal prefix and ``*``."""
    prefix = index.split("%{", 1)[0]
    return prefix + "*" if prefix else None


class _ChainOnlyContext(ssl.SSLContext):
    """Verifies the certificate chain but not the host name (``verification_mode: certificate``).

    OpenSSL is told not to match the name, while Python code reading ``check_hostname`` sees it on:
    urllib3 (under both clients) matches the name itself when a context does not, and neither
    client lets an ``ssl_context`` be combined with its option to turn that off.
    """

    @property  # type: ignore[override]
    def check_hostname(self) -> bool:
        return True

    @check_hostname.setter
    def check_hostname(self, value: bool) -> None:
        """Ignored: the name is never matched."""


_OPENSSL_CHECK_HOSTNAME = ssl.SSLContext.check_hostname


def ssl_context(verification_mode: str, authorities: list[Path]) -> ssl.SSLContext:
    """A client TLS context: trust ``authorities`` (or the system's) and verify as asked."""
    context_class = _ChainOnlyContext if verification_mode == "certificate" else ssl.SSLContext
    context = context_class(ssl.PROTOCOL_TLS_CLIENT)
    if authorities:
        for path in authorities:
            context.load_verify_locations(cafile=str(path))
    else:
        context.load_default_certs()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verification_mode != "full":
        _OPENSSL_CHECK_HOSTNAME.__set__(context, False)
    if verification_mode == "none":
        context.verify_mode = ssl.CERT_NONE
    return context


# -- the index template ----------------------------------------------------------------------------

_ENDPOINT_FIELDS = {
    "ip": "ip",
    "port": "long",
    "bytes": "long",
    "packets": "long",
    "mac": "keyword",
    "domain": "keyword",
    "geo.location": "geo_point",
    "geo.country_iso_code": "keyword",
    "geo.country_name": "keyword",
    "geo.region_iso_code": "keyword",
    "geo.region_name": "keyword",
    "geo.city_name": "keyword",
    "as.number": "long",
    "as.organization.name": "keyword",
    "nat.ip": "ip",
    "nat.port": "long",
}
_FIELDS = {
    "@timestamp": "date",
    "event.start": "date",
    "event.end": "date",
    "event.created": "date",
    "event.ingested": "date",
    "event.duration": "long",
    "event.sequence": "long",
    "event.kind": "keyword",
    "event.category": "keyword",
    "event.type": "keyword",
    "event.dataset": "keyword",
    "event.outcome": "keyword",
    "network.type": "keyword",
    "network.transport": "keyword",
    "network.protocol": "keyword",
    "network.iana_number": "keyword",
    "network.community_id": "keyword",
    "network.direction": "keyword",
    "network.bytes": "long",
    "network.packets": "long",
    "network.vlan.id": "keyword",
    "network.inner.vlan.id": "keyword",
    "related.ip": "ip",
    "related.hosts": "keyword",
    "flow.id": "keyword",
    "flow.final": "boolean",
    "flow.state": "keyword",
    "flow.end_reason": "keyword",
    "type": "keyword",
    "status": "keyword",
    "dns.id": "keyword",
    "dns.resolved_ip": "ip",
    "http.response.status_code": "long",
    "http.request.bytes": "long",
    "http.response.bytes": "long",
    "tls.server.not_before": "date",
    "tls.server.not_after": "date",
    "tls.server.x509.not_before": "date",
    "tls.server.x509.not_after": "date",
    "request": "text",
    "response": "text",
    **{
        f"{endpoint}.{name}": kind
        for endpoint in ("source", "destination", "client", "server", "host", "observer")
        for name, kind in _ENDPOINT_FIELDS.items()
    },
}
"""ECS fields and their types. Any other ``*.ip`` string is an ``ip``, any other string a keyword."""


def _properties(fields: dict[str, str]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, kind in fields.items():
        node = root
        *parents, leaf = path.split(".") if path != "@timestamp" else [path]
        for part in parents:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[leaf] = {"type": kind, "ignore_above": 1024} if kind == "keyword" else {"type": kind}
    return root


def index_template(pattern: str, data_stream: bool) -> dict[str, Any]:
    """The composable index template body: ECS mappings for indices (or data streams) matching ``pattern``."""
    body: dict[str, Any] = {
        "index_patterns": [pattern],
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": {"index": {"mapping": {"total_fields": {"limit": 10000}}}},
            "mappings": {
                "date_detection": False,
                "dynamic_templates": [
                    {
                        "ip_addresses": {
                            "path_match": "*.ip",
                            "match_mapping_type": "string",
                            "mapping": {"type": "ip"},
                        }
                    },
                    {
                        "strings_as_keyword": {
                            "match_mapping_type": "string",
                            "mapping": {"type": "keyword", "ignore_above": 1024},
                        }
                    },
                ],
                "properties": _properties(_FIELDS),
            },
        },
        "_meta": {"managed_by": "flowpipe", "version": flowpipe.__version__},
    }
    if data_stream:
        body["data_stream"] = {}
    return body


# -- dead letters ----------------------------------------------------------------------------------


DeadLetter = tuple[Event, str | None, int | None, Any]
"""A refused event, the index it was meant for, the HTTP status and the cluster's error."""


class DeadLetters:
    """Appends refused events to an NDJSON file, one record each, opened when the first comes."""

    def __init__(self, path: Path | None, output_id: str) -> None:
        self.path = path
        self.output_id = output_id
        self._file: BinaryIO | None = None

    def write(self, records: list[DeadLetter]) -> None:
        """Append ``(event, index, status, error)`` records; raises OSError."""
        if self.path is None or not records:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 (kept open until close)
        now = format_timestamp(time.time())
        self._file.write(
            b"".join(
                orjson.dumps(
                    {
                        "@timestamp": now,
                        "output": self.output_id,
                        "index": index,
                        "status": status,
                        "error": error,
                        "event": event,
                    },
                    default=str,
                )
                + b"\n"
                for event, index, status, error in records
            )
        )
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# -- the output ------------------------------------------------------------------------------------


@dataclass
class _Item:
    event: Event
    index: str
    lines: bytes
    """The action line and the document, each ending in a newline."""


@dataclass
class _Outcome:
    """What became of one bulk request's items."""

    retry: list[_Item]
    dead: list[tuple[_Item, int | None, Any]]
    error: str | None = None


class BulkOutput(Output):
    """Base of outputs that ship events with the bulk API of Elasticsearch-like clusters."""

    options = OPTIONS

    @classmethod
    def check_config(cls, config: Any) -> list[OptionError]:
        errors = []
        template = config.setup.template
        index = config.index.text if config.index else cls.default_index(config.data_stream)
        if template.enabled and template.pattern is None and template_pattern(index) is None:
            errors.append(
                OptionError(
                    f"cannot derive an index pattern from index {index!r}; set setup.template.pattern",
                    ("setup", "template", "pattern"),
                )
            )
        if (config.username is None) != (config.password is None):
            errors.append(OptionError("username and password go together", ("password",)))
        return errors

    @staticmethod
    def default_index(data_stream: bool) -> str:
        return DEFAULT_DATA_STREAM if data_stream else DEFAULT_INDEX

    def connect(self, connection: Connection) -> Cluster:
        """A :class:`Cluster` for ``connection``, made with the flavour's client (no request yet)."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        config = self.config
        self.log = self.context.log
        self.index = config.index or Template(self.default_index(config.data_stream))
        self.action = "create" if config.data_stream else "index"
        self._actions: dict[tuple[str, str | None], bytes] = {}
        dead_letter = config.dead_letter
        path = dead_letter.path or f"{self.context.id}.dead-letter.ndjson"
        self.dead_letters = DeadLetters(
            self.context.resolve_path(path) if dead_letter.enabled else None, self.context.id
        )
        self.cluster = self.connect(self._connection())
        self.pool = (
            ThreadPoolExecutor(config.workers, f"{self.context.id}-bulk") if config.workers > 1 else None
        )
        template = config.setup.template
        self.template_ready = not template.enabled
        if template.enabled:
            self.template_name = template.name
            pattern = template.pattern or template_pattern(self.index.text)
            self.template_body = index_template(pattern, config.data_stream)
            try:
                self._install_template()
            except ClusterError as error:
                if error.definitive:
                    self.close()
                    raise StartupError(
                        f"output {self.context.id!r}: cannot install index template {template.name!r} "
                        f"on {', '.join(config.hosts)}: {error}"
                    ) from error
                self.log.warning(
                    "cannot install index template %r yet (%s); events wait until the cluster answers",
                    template.name,
                    error,
                )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        self.cluster.close()
        self.dead_letters.close()

    def _connection(self) -> Connection:
        config = self.config
        api_key: str | tuple[str, str] | None = config.api_key
        if api_key and ":" in api_key:
            key_id, _, key = api_key.partition(":")
            api_key = (key_id, key)
        hosts = config.hosts
        context = None
        if any(host.startswith("https://") for host in hosts):
            if config.ssl.verification_mode == "none":
                self.log.warning("ssl.verification_mode is none: the cluster's certificate is not checked")
                warnings.filterwarnings(
                    "ignore", message="Unverified HTTPS request"
                )  # urllib3's, per request
            authorities = [self.context.resolve_path(path) for path in config.ssl.certificate_authorities]
            try:
                context = ssl_context(config.ssl.verification_mode, authorities)
            except (OSError, ssl.SSLError) as error:
                raise StartupError(f"cannot load ssl.certificate_authorities: {error}") from error
        basic = (config.username, config.password) if config.username is not None else None
        return Connection(hosts, basic, api_key, context, config.compression, config.timeout, config.workers)

    def _install_template(self) -> None:
        overwrite = self.config.setup.template.overwrite
        if overwrite or not self.cluster.template_exists(self.template_name):
            self.cluster.put_template(self.template_name, self.template_body)
            self.log.info("installed index template %r", self.template_name)
        self.template_ready = True

    # -- writing -----------------------------------------------------------------------------------

    def batching(self) -> tuple[int, float]:
        """Queued batches are joined into bulk requests of up to ``bulk_max_size`` events."""
        return (self.config.bulk_max_size, self.config.flush_interval)

    def write(self, events: list[Event]) -> int:
        if not self.template_ready:
            try:
                self._install_template()
            except ClusterError as error:
                raise OutputError(f"cannot install index template {self.template_name!r}: {error}") from error
        items, dead = self._items(events)
        size = self.config.bulk_max_size
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        if self.pool is not None and len(chunks) > 1:
            outcomes = list(self.pool.map(self._send, chunks))
        else:
            outcomes = [self._send(chunk) for chunk in chunks]
        retry: list[Event] = []
        errors: list[str] = []
        for outcome in outcomes:
            retry.extend(item.event for item in outcome.retry)
            dead.extend((item.event, item.index, status, error) for item, status, error in outcome.dead)
            if outcome.error:
                errors.append(outcome.error)
        self._bury(dead)
        if retry:
            raise OutputError(
                f"{len(retry)} of {len(events)} events to send again ({errors[0]})",
                remaining=retry,
                rejected=len(dead),
            )
        return len(dead)

    def _items(self, events: list[Event]) -> tuple[list[_Item], list[DeadLetter]]:
        """Encode every event with its action line; events without an index name become dead letters."""
        items: list[_Item] = []
        dead: list[DeadLetter] = []
        index, pipeline, actions = self.index, self.config.pipeline, self._actions
        static_index = index.text if index.is_static else None
        for event in events:
            try:
                name = static_index or index.render(event)
                pipeline_name = pipeline.render(event) if pipeline is not None else None
            except MissingFieldError as error:
                dead.append((event, None, None, {"type": "missing_field", "reason": str(error)}))
                continue
            action = actions.get((name, pipeline_name))
            if action is None:
                meta = (
                    {"_index": name} if pipeline_name is None else {"_index": name, "pipeline": pipeline_name}
                )
                action = orjson.dumps({self.action: meta}) + b"\n"
                if len(actions) > 4096:  # names change with the date or a field: keep the cache small
                    actions.clear()
                actions[(name, pipeline_name)] = action
            items.append(_Item(event, name, action + _encode_event(event) + b"\n"))
        return items, dead

    def _send(self, items: list[_Item]) -> _Outcome:
        """One bulk request; sort its items into acknowledged, to retry and refused for good."""
        try:
            answer = self.cluster.bulk(b"".join(item.lines for item in items))
        except ClusterError as error:
            if error.retryable:
                return _Outcome(items, [], str(error))
            return _Outcome(
                [],
                [(item, error.status, {"type": "request_refused", "reason": str(error)}) for item in items],
            )
        if not answer.get("errors"):
            return _Outcome([], [])
        results = answer.get("items") or []
        if len(results) != len(items):
            return _Outcome(items, [], f"the cluster answered {len(results)} items for {len(items)} sent")
        outcome = _Outcome([], [])
        for item, result in zip(items, results, strict=True):
            status = next(iter(result.values())).get("status", 500) if result else 500
            if status < 300:
                continue
            error = next(iter(result.values())).get("error")
            if status == 429 or status >= 500:
                outcome.retry.append(item)
                if outcome.error is None:
                    outcome.error = f"{status} {_reason(error)}"
            else:
                outcome.dead.append((item, status, error))
        return outcome

    def _bury(self, dead: list[DeadLetter]) -> None:
        if not dead:
            return
        _, _, status, error = dead[0]
        self.context.errors.error(
            "dead_letter",
            "output %r: %d events refused for good (%s %s); see %s",
            self.context.id,
            len(dead),
            status if status is not None else "",
            _reason(error),
            self.dead_letters.path or "the log (dead_letter.enabled is false)",
        )
        try:
            self.dead_letters.write(dead)
        except OSError as error:
            self.context.errors.error(
                "dead_letter_file",
                "output %r cannot write the dead-letter file %s: %s",
                self.context.id,
                self.dead_letters.path,
                error.strerror or error,
            )


def describe_answer(status: int, body: Any) -> str:
    """An error answer in one line: ``HTTP 401 Unauthorized``, or with the cluster's error type and reason."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"HTTP {status}: {_reason(error)}"
    if isinstance(error, str):
        return f"HTTP {status}: {error}"
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _reason(error: Any) -> str:
    """``type: reason`` of a bulk item's error object."""
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
    return str(error)
