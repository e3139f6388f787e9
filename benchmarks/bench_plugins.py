"""Local plugins of the benchmark pipelines (``plugins: [bench_plugins.py]`` in a pipeline file).

- ``bench_events`` input: ``count`` pre-built events, taken in turn from an NDJSON file of sample
  events (``path``) that is parsed once at start. The same dict objects are handed out again and
  again (outputs never modify events), so the input costs almost nothing and an output's
  throughput is what a run measures.
- ``bench_sink`` decoder: consumes what the ``ip`` decoder forwards (transport packets) and drops
  it. Put after ``ip``, it makes ``ip`` do all its work (flows, forwarding) without a ``tcp``
  decoder, so per-stage costs can be told apart.
- ``discard`` output: takes events or packets and throws them away (the pipeline still counts
  them); with ``decoders: []`` it measures reading alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from flowpipe import Decoder, Event, Input, Int, Option, Output, PacketBatch, StartupError, Str, hookimpl


class BenchEventsInput(Input):
    """Pre-built events from a sample file, handed out in turn until ``count`` were produced."""

    produces = "events"
    options = (
        Option("path", Str(nonempty=True), required=True, description="NDJSON file of sample events"),
        Option("count", Int(1), 1_000_000, "events to produce"),
    )

    def open(self) -> None:
        path = self.context.resolve_path(self.config.path)
        try:
            self.samples: list[Event] = [
                orjson.loads(line) for line in path.read_bytes().splitlines() if line
            ]
        except (OSError, orjson.JSONDecodeError) as error:
            raise StartupError(f"bench_events: cannot read {path}: {error}") from error
        if not self.samples:
            raise StartupError(f"bench_events: {path} holds no event")

    def read(self) -> Iterator[list[Event]]:
        samples, size = self.samples, self.context.batch_size
        pool = samples * (2 + size // len(samples))  # at least len(samples) + size: any batch is one slice
        produced, total, position = 0, self.config.count, 0
        while produced < total and not self.stopping.is_set():
            take = min(size, total - produced)
            yield pool[position : position + take]
            produced += take
            position = (position + take) % len(samples)


class BenchSinkDecoder(Decoder):
    """Drop what the ``ip`` decoder forwards (so ``ip`` works as it does before ``tcp``)."""

    consumes = "transport"

    def decode(self, batch: Any, events: list[Event]) -> None:
        return None


class DiscardOutput(Output):
    """Throw events or packets away."""

    accepts = ("events", "packets")

    def write(self, events: list[Event] | PacketBatch) -> None:
        return None


@hookimpl
def flowpipe_add_inputs() -> dict[str, type[Input]]:
    return {"bench_events": BenchEventsInput}


@hookimpl
def flowpipe_add_decoders() -> dict[str, type[Decoder]]:
    return {"bench_sink": BenchSinkDecoder}


@hookimpl
def flowpipe_add_outputs() -> dict[str, type[Output]]:
    return {"discard": DiscardOutput}
