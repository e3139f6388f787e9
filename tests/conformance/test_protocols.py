"""Differential test of the protocol analyzers against Wireshark's dissectors on the shared corpus.

flowpipe runs once per capture of ``../shared/corpus`` with every installed analyzer on its
default ports (the chain ``ip`` (no flow records), ``tcp``, ``protocol``; DNS without the Public
Suffix List, which no compared value needs); Wireshark's dissectors, through sharkd
(:class:`tshark.Sharkd`), read the same capture with HTTP, DNS and SMTP decoded on exactly the
ports of flowpipe's analyzers (TLS has no port preference: its heuristic dissector finds it on
any port). Compared per capture, as multisets:

- http: (method, request target) of each request; the status code of each final response
  (tshark's interim 1xx responses other than 101 are left out: they answer no request);
- dns: (name, type) of the question of each query (a flowpipe event counts when it has a query);
- tls: the server name (SNI) of each ClientHello over TCP;
- smtp: the address of each MAIL FROM and of each RCPT TO command.

Only what was seen on the analyzer's default ports counts, on both sides; what either finds
elsewhere (flowpipe by content detection, tshark by heuristics) is counted in the report, not
compared. Recall is matched / tshark's count, precision matched / flowpipe's count. A capture
where they differ must be listed in ``EXCEPTIONS`` with the reason, and a listed capture must
still differ (so that the list stays honest). An analyzer that raised (counted as
``dropped.<protocol>.analyzer_error``) is a difference too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import corpus
import pytest
import tshark
import yaml
from tshark import Sighting

from flowpipe.config import load_pipeline
from flowpipe.options import Ports
from flowpipe.pipeline import Pipeline
from flowpipe.registry import Registry

corpus.require("tshark", "sharkd")
CAPTURES = corpus.captures()


@dataclass(frozen=True)
class Measure:
    """One thing compared: the key of both sides' :class:`~tshark.Sighting` lists."""

    name: str
    protocol: str
    label: str


MEASURES = (
    Measure("http.request", "http", "requests (method, target)"),
    Measure("http.status", "http", "response status codes"),
    Measure("dns.query", "dns", "queries (name, type)"),
    Measure("tls.sni", "tls", "ClientHello server names"),
    Measure("smtp.mail_from", "smtp", "MAIL FROM addresses"),
    Measure("smtp.rcpt_to", "smtp", "RCPT TO addresses"),
)
PROTOCOLS = ("http", "dns", "tls", "smtp")
PORT_PREFERENCES = {
    "http": ("http.tcp.port",),
    "dns": ("dns.tcp.port", "dns.udp.port"),
    "smtp": ("smtp.tcp.port",),
}
"""The Wireshark preferences that set the ports a dissector decodes, per protocol."""

_SMTP_REJECTED_DATA = (
    "the server rejects the pipelined MAIL FROM (553), RCPT TO and DATA (503) of frame 8; tshark "
    "enters message mode at the client's DATA without waiting for its reply, so it takes the RSET "
    "(frame 11) and the second MAIL FROM / RCPT TO (frame 14) for message content; flowpipe follows "
    "the replies and reports both mail transactions"
)
EXCEPTIONS: dict[str, dict[str, str]] = {
    "http": {
        "http-missing-protocol__input.pcap": "the request line has no HTTP version (the HTTP/0.9 form, "
        "yet followed by headers) and the answer has no status line; flowpipe, like Packetbeat, counts "
        "both as dropped.http.malformed; tshark shows the request",
        "http-gap-beyond-body__input.pcap": "segments of the first response's body and the whole second "
        "response are not captured; tshark waits for the missing bytes, never dissects the first "
        "response (frame 7) and takes the third one (frame 24) for continuation data; flowpipe reports "
        "the first and third status lines (the second was never captured)",
        "http-gap-double__input.pcap": "two gaps in the body of the second response (before frames 18 "
        "and 21); tshark waits for the missing bytes and never dissects that response (frame 13); "
        "flowpipe reports its status line",
        "tcp-rst-unacked-stream-10__TLPW1-tcp-174.56.47.59-10.3.11.101-tcp-80-49309.pcap": "the "
        "response's body (Content-Length 181348) is cut by lost segments and the client's RST after "
        "about 58 kB; tshark dissects an HTTP message only once its whole body is reassembled, so never "
        "this response (frame 7); flowpipe reports its status line",
    },
    "dns": {},
    "tls": {},
    "smtp": {
        "smtp-bdat-bad-tail-reply-queue__input.pcap": "the client pipelines an invalid 'BDAT 5 X' "
        "(rejected: 501) with MAIL FROM, RCPT TO and DATA in frame 9; tshark takes the whole segment "
        "for chunk data and sees no command; flowpipe, after the 501, reads them as commands",
        "smtp-bdat-pipelined-next-mail__input.pcap": "frame 13 holds two BDAT chunks (64 bytes, then "
        "152 LAST) followed by the pipelined MAIL FROM / RCPT TO of the next mail; tshark takes the whole "
        "segment for chunk data and misses that envelope; flowpipe counts the chunk sizes and reads it",
        "smtp-data-rejected__10.7.29.101_49898-178.63.41.150_25.pcap": _SMTP_REJECTED_DATA,
        "smtp-to-comma__10.7.29.101_49898-178.63.41.150_25.pcap": f"{_SMTP_REJECTED_DATA} (the same "
        "session as smtp-data-rejected, the capture damaged after frame 18)",
        "smtp-pipelining__input.pcap": "the client sends MAIL FROM, RCPT TO, DATA and the whole message "
        "in one segment (frame 11); tshark takes all of it for message content (IMF) and shows no "
        "command; flowpipe reads the commands",
    },
}
"""Per protocol, the captures whose differences from tshark are understood: file name -> reason
(tshark 4.0, Debian 12's: a newer one may dissect some of them as flowpipe does)."""

REPORT: dict[str, Any] = {"captures": 0, "measures": {}, "differences": []}
"""Filled by the tests, printed by conftest.py at the end of the run: per measure label its
counts (tshark, flowpipe, matched, tshark elsewhere, flowpipe elsewhere); per capture that differs
(protocol, capture, reason or None, differences)."""


@dataclass
class Run:
    """What both programs reported on one capture."""

    tshark: dict[str, list[Sighting]]
    flowpipe: dict[str, list[Sighting]]
    errors: Counter[str]
    """Analyzer exceptions per protocol (``dropped.<protocol>.analyzer_error``)."""


@dataclass
class Corpus:
    """Every capture's :class:`Run`, and the default ports of each installed analyzer."""

    ports: dict[str, frozenset[int]]
    runs: dict[str, Run]


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    registry = Registry.default()
    ports = _default_ports(registry)
    preferences = {
        preference: ",".join(map(str, sorted(ports[protocol])))
        for protocol, names in PORT_PREFERENCES.items()
        if protocol in ports
        for preference in names
    }
    folder = tmp_path_factory.mktemp("protocols")
    with ThreadPoolExecutor(1) as pool:  # sharkd works in its own process meanwhile
        truth = pool.submit(_dissect, CAPTURES, preferences)
        ours = {pcap.name: _run_flowpipe(pcap, folder, registry) for pcap in CAPTURES}
        theirs = truth.result()
    runs = {name: Run(theirs[name], *ours[name]) for name in ours}
    REPORT["captures"] = len(runs)
    return Corpus(ports, runs)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_analyzer_agrees_with_tshark(protocol: str, corpus_runs: Corpus) -> None:
    ports = corpus_runs.ports.get(protocol)
    if ports is None:
        pytest.fail(
            f"no {protocol!r} analyzer is installed: plugins/decoders/protocols/{protocol}.py registers "
            f"nothing yet (flowpipe plugins lists the analyzers)"
        )
    measures = [measure for measure in MEASURES if measure.protocol == protocol]
    totals = {measure.label: [0, 0, 0, 0, 0] for measure in measures}
    differing: dict[str, list[str]] = {}
    for name, run in corpus_runs.runs.items():
        errors = run.errors[protocol]
        differences = [f"flowpipe counted {errors} analyzer errors (exceptions)"] if errors else []
        for measure in measures:
            counts, found = _compare(ports, run.tshark[measure.name], run.flowpipe[measure.name])
            totals[measure.label] = [sum(pair) for pair in zip(totals[measure.label], counts, strict=True)]
            differences += [f"{measure.label}: {difference}" for difference in found]
        if differences:
            differing[name] = differences
    exceptions = EXCEPTIONS[protocol]
    REPORT["measures"].update(totals)
    REPORT["differences"] += [
        (protocol, name, exceptions.get(name), found) for name, found in differing.items()
    ]
    unexplained = {name: found for name, found in differing.items() if name not in exceptions}
    stale = sorted(name for name in exceptions if name not in differing)
    assert not unexplained, f"{protocol}: differences from tshark not listed in EXCEPTIONS: {unexplained}"
    assert not stale, f"{protocol}: EXCEPTIONS lists captures that no longer differ: {stale}"


# -- running both programs -------------------------------------------------------------------------


def _default_ports(registry: Registry) -> dict[str, frozenset[int]]:
    """The default ports of each installed analyzer among :data:`PROTOCOLS`."""
    ports = {}
    for protocol in PROTOCOLS:
        info = registry.get("analyzer", protocol)
        if info is not None:
            ports[protocol] = frozenset(Ports().convert(list(info.cls.default_ports)))
    return ports


def _dissect(captures: Iterable[Path], preferences: dict[str, str]) -> dict[str, dict[str, list[Sighting]]]:
    with tshark.Sharkd(preferences) as sharkd:
        found = {}
        for pcap in captures:
            sharkd.load(pcap)
            found[pcap.name] = tshark.application_values(sharkd)
        return found


def _run_flowpipe(
    pcap: Path, folder: Path, registry: Registry
) -> tuple[dict[str, list[Sighting]], Counter[str]]:
    """flowpipe's values on ``pcap`` and its analyzer exceptions per protocol."""
    output = folder / "events.ndjson"
    output.unlink(missing_ok=True)  # the file output appends
    config = folder / "pipeline.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "inputs": [{"type": "pcap", "files": [str(pcap)]}],
                "decoders": [
                    {"type": "ip", "flows": {"enabled": False}},
                    {"type": "tcp"},
                    # reading the Public Suffix List takes longer than most captures; no compared
                    # value depends on it
                    {"type": "protocol", "protocols": {"dns": {"public_suffix_list": ""}}},
                ],
                "outputs": [{"type": "file", "path": str(output)}],
                "metrics": {"period": 0},
            }
        )
    )
    pipeline = Pipeline(load_pipeline(config, registry), registry)
    pipeline.run()  # a damaged capture is a failure of the run, after the events before the damage
    events = [json.loads(line) for line in output.read_text().splitlines()] if output.exists() else []
    errors: Counter[str] = Counter()
    for name, value in pipeline.decoders[-1].context.counters.values.items():
        protocol, _, reason = name.removeprefix("dropped.").partition(".")
        if reason == "analyzer_error":
            errors[protocol] += value
    return _values(events), errors


def _values(events: list[dict[str, Any]]) -> dict[str, list[Sighting]]:
    """The compared values of flowpipe's transaction events, by measure."""
    found: dict[str, list[Sighting]] = {measure.name: [] for measure in MEASURES}
    for event in events:
        client, server = event.get("client", {}), event.get("server", {})
        ports = frozenset(port for port in (client.get("port"), server.get("port")) if port is not None)
        where = (
            f"{client.get('ip')}:{client.get('port')} -> {server.get('ip')}:{server.get('port')} "
            f"at {event.get('@timestamp')}"
        )

        def add(measure: str, *key: Any, ports: frozenset[int] = ports, where: str = where) -> None:
            found[measure].append(Sighting(tuple(str(part) for part in key), ports, where))

        dataset = _field(event, "event.dataset")
        if dataset == "http":
            if _field(event, "http.request.method") is not None:
                add("http.request", _field(event, "http.request.method"), _field(event, "url.original"))
            if _field(event, "http.response.status_code") is not None:
                add("http.status", _field(event, "http.response.status_code"))
        elif dataset == "dns" and client.get("bytes") and _field(event, "dns.question") is not None:
            add("dns.query", _field(event, "dns.question.name"), _field(event, "dns.question.type"))
        elif dataset == "tls" and _field(event, "tls.client.server_name") is not None:
            add("tls.sni", _field(event, "tls.client.server_name"))
        elif dataset == "smtp":
            if _field(event, "smtp.mail_from") is not None:
                add("smtp.mail_from", _field(event, "smtp.mail_from"))
            for address in _field(event, "smtp.rcpt_to") or ():
                add("smtp.rcpt_to", address)
    return found


def _field(event: dict[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


# -- comparing -------------------------------------------------------------------------------------


def _compare(
    ports: frozenset[int], theirs: list[Sighting], ours: list[Sighting]
) -> tuple[list[int], list[str]]:
    """Counts (tshark, flowpipe, matched, tshark elsewhere, flowpipe elsewhere) and the
    differences of one measure on one capture, on the analyzer's ``ports``."""
    their_here = [sighting for sighting in theirs if sighting.ports & ports]
    our_here = [sighting for sighting in ours if sighting.ports & ports]
    their_keys = Counter(sighting.key for sighting in their_here)
    our_keys = Counter(sighting.key for sighting in our_here)
    matched = sum((their_keys & our_keys).values())
    differences = [f"only tshark has {one.key} ({one.where})" for one in _unmatched(their_here, our_keys)]
    differences += [f"only flowpipe has {one.key} ({one.where})" for one in _unmatched(our_here, their_keys)]
    elsewhere = [len(theirs) - len(their_here), len(ours) - len(our_here)]
    counts = [len(their_here), len(our_here), matched, *elsewhere]
    return counts, differences


def _unmatched(sightings: list[Sighting], other: Counter[tuple[str, ...]]) -> list[Sighting]:
    """The sightings left once each key of ``other`` has matched as many of them as it counts."""
    left = Counter(other)
    unmatched = []
    for sighting in sightings:
        if left[sighting.key]:
            left[sighting.key] -= 1
        else:
            unmatched.append(sighting)
    return unmatched
