"""Run the protocol analyzers on a capture, in this process, for analyzer tests.

:func:`transactions` writes ``frames`` (or takes a capture file), runs the real pipeline
``pcap -> ip -> tcp -> protocol -> file`` on it with flow records off, and returns the events
(transactions) in the order they were published, with the protocol decoder's counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import yaml
from captures import LINKTYPE_ETHERNET, write_pcap

from flowpipe.config import load_pipeline
from flowpipe.pipeline import Pipeline
from flowpipe.registry import Registry

__all__ = ["Decoded", "transactions"]


class Decoded(list):
    """The events of a run (a list), with the ``protocol`` decoder's counters as ``counters``."""

    counters: dict[str, int]


def transactions(
    folder: Path,
    capture: Iterable[tuple[float, bytes]] | Path,
    protocols: dict[str, Any] | None = None,
    linktype: int = LINKTYPE_ETHERNET,
    plugins: list[str] | None = None,
    **protocol_options: Any,
) -> Decoded:
    """Decode ``capture`` with the ``protocol`` decoder configured by ``protocols`` (its
    ``protocols:`` section) and ``protocol_options``; return the events it published.
    ``plugins``: local plugin modules for the pipeline file's ``plugins:`` list."""
    if isinstance(capture, Path):
        pcap = capture
    else:
        pcap = write_pcap(folder / "capture.pcap", capture, linktype=linktype)
    output = folder / "events.ndjson"
    output.unlink(missing_ok=True)  # the file output appends
    pipeline_file = folder / "pipeline.yml"
    pipeline_file.write_text(
        yaml.safe_dump(
            {
                "plugins": plugins or [],
                "inputs": [{"type": "pcap", "files": [str(pcap)]}],
                "decoders": [
                    {"type": "ip", "flows": {"enabled": False}},
                    {"type": "tcp"},
                    {"type": "protocol", "protocols": protocols or {}, **protocol_options},
                ],
                "outputs": [{"type": "file", "path": str(output)}],
            }
        )
    )
    registry = Registry.default()
    spec = load_pipeline(pipeline_file, registry)
    pipeline = Pipeline(spec, registry)
    summary = pipeline.run()
    assert not summary.failures, summary.failures
    events = Decoded(orjson.loads(line) for line in output.read_bytes().splitlines())
    events.counters = dict(pipeline.decoders[2].context.counters.values)
    return events
