"""Conformance with tshark on the shared corpus of real-world captures (``../shared/corpus``).

For every capture, flowpipe runs ``ip`` (flows) and ``tcp`` (reassembly) in-process, and:

- its final flow records, summed per 5-tuple, must give the same conversations, frames and bytes
  per direction as ``tshark -z conv,tcp -z conv,udp``;
- every TCP stream that neither tshark nor flowpipe saw a loss in must carry exactly the bytes
  ``tshark -z follow,tcp,raw`` shows, in each direction.

Known differences are listed in ``EXCEPTIONS`` with their reason and printed in the test report.
The whole module skips with a message where the corpus or tshark is absent: the project never
needs ``../shared`` to pass its own tests.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import corpus
import pytest
import tshark
import yaml

from flowpipe.config import load_pipeline
from flowpipe.pipeline import Pipeline
from flowpipe.registry import Registry

PLUGIN = Path(__file__).with_name("stream_dump.py")

corpus.require("tshark")
CAPTURES = corpus.captures()

EXCEPTIONS: dict[str, str] = {
    "tcp-split-handshake-02-5whs__split-handshake-5whs.pcap": "split handshake (both sides send a SYN): "
    "tshark starts a new stream at the server's SYN, flowpipe keeps one connection, as Zeek does",
}
"""Captures whose differences from tshark are understood: file name -> the reason."""

REPORT: dict[str, Any] = {"captures": 0, "conversations": [0, 0], "streams": [0, 0], "differences": []}
"""Filled by the tests, printed by conftest.py at the end of the run."""


def _run_flowpipe(pcap: Path, folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Final flow records and per-connection stream dumps for ``pcap``."""
    out = folder / "events.ndjson"
    config = folder / "pipeline.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "plugins": [str(PLUGIN)],
                "inputs": [{"type": "pcap", "files": [str(pcap)]}],
                # tshark never times a conversation out: neither may flowpipe here
                "decoders": [
                    {"type": "ip", "flows": {"timeout": "1h"}},
                    {"type": "tcp", "connection_timeout": "1h"},
                    {"type": "stream_dump"},
                ],
                "outputs": [{"type": "file", "path": str(out)}],
                "metrics": {"period": 0},
            }
        )
    )
    registry = Registry.default()
    Pipeline(load_pipeline(config, registry), registry).run()
    events = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    flows = [e for e in events if e.get("event", {}).get("dataset") == "flow" and e["flow"]["final"]]
    dumps = [e for e in events if "client_data" in e]
    return flows, dumps


def _flow_conversations(flows: list[dict[str, Any]]) -> dict[Any, dict[tuple[str, int], list[int]]]:
    """(transport, endpoints) -> endpoint -> [frames, bytes] it sent, over every final record."""
    totals: dict[Any, dict[tuple[str, int], list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for flow in flows:
        transport = flow["network"]["transport"]
        if transport not in ("tcp", "udp"):
            continue
        client = (flow["source"]["ip"], flow["source"]["port"])
        server = (flow["destination"]["ip"], flow["destination"]["port"])
        sides = totals[(transport, frozenset((client, server)))]
        sides[client][0] += flow["source"]["packets"]
        sides[client][1] += flow["source"]["bytes"]
        sides[server][0] += flow["destination"]["packets"]
        sides[server][1] += flow["destination"]["bytes"]
    return totals


def _compare_conversations(pcap: Path, flows: list[dict[str, Any]]) -> list[str]:
    expected: dict[Any, tshark.Conversation] = {}
    for conversation in tshark.conversations(pcap):  # flowpipe's flows are summed per 5-tuple too
        key = conversation.key()
        expected[key] = expected[key] + conversation if key in expected else conversation
    actual = _flow_conversations(flows)
    differences = []
    for key in sorted(set(expected) | set(actual), key=repr):
        transport, endpoints = key
        name = f"{transport} {' <-> '.join(f'{ip}:{port}' for ip, port in sorted(endpoints))}"
        if key not in actual:
            differences.append(f"{name}: only tshark has it")
        elif key not in expected:
            differences.append(f"{name}: only flowpipe has it")
        else:
            wrong = []
            for endpoint in sorted(endpoints):
                frames, size = expected[key].sent_by(endpoint)
                got_frames, got_bytes = actual[key][endpoint]
                if got_frames != frames or not size.matches(got_bytes):
                    wrong.append(
                        f"{endpoint[0]}:{endpoint[1]} sent frames/bytes {got_frames}/{got_bytes} "
                        f"(tshark {frames}/{size!r})"
                    )
            if wrong:
                differences.append(f"{name}: " + "; ".join(wrong))
            else:
                REPORT["conversations"][0] += 1
    REPORT["conversations"][1] += len(expected)
    return differences


def _compare_streams(pcap: Path, dumps: list[dict[str, Any]]) -> list[str]:
    count = tshark.tcp_stream_count(pcap)
    lossy = tshark.streams_with_losses(pcap)
    followed = tshark.follow_tcp(pcap, [index for index in range(count) if index not in lossy])
    ours: dict[frozenset[Any], list[dict[str, Any]]] = defaultdict(list)
    for dump in dumps:
        ours[frozenset((tuple(dump["client"]), tuple(dump["server"])))].append(dump)
    differences = []
    for stream in followed:
        candidates = ours.get(frozenset(stream.nodes), [])
        if not candidates:
            differences.append(f"tcp stream {stream.index} {stream.nodes}: flowpipe has no such connection")
            continue
        dump = candidates.pop(0)
        if dump["gap_bytes"]:
            continue  # flowpipe saw a loss tshark did not flag: not comparable byte for byte
        client = (dump["client"][0], dump["client"][1])
        server = (dump["server"][0], dump["server"][1])
        REPORT["streams"][1] += 1
        wrong = []
        for side, peer in (("client", client), ("server", server)):
            data = bytes.fromhex(dump[f"{side}_data"])
            if data != stream.sent_by(peer):
                wrong.append(f"{side} sent {len(data)} bytes (tshark {len(stream.sent_by(peer))})")
        if wrong:
            differences.append(f"tcp stream {stream.index} {stream.nodes}: " + "; ".join(wrong))
        else:
            REPORT["streams"][0] += 1
    return differences


@pytest.mark.slow
@pytest.mark.parametrize("pcap", CAPTURES, ids=[capture.name for capture in CAPTURES])
def test_flows_and_streams_agree_with_tshark(pcap: Path, tmp_path: Path) -> None:
    flows, dumps = _run_flowpipe(pcap, tmp_path)
    differences = _compare_conversations(pcap, flows) + _compare_streams(pcap, dumps)
    REPORT["captures"] += 1
    if differences and pcap.name in EXCEPTIONS:
        REPORT["differences"].append((pcap.name, EXCEPTIONS[pcap.name], differences))
        return
    assert differences == []
