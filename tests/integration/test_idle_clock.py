"""Idle time: a live input's empty batch with a ``clock`` reaches every decoder's ``advance``."""

from __future__ import annotations

from pathlib import Path

import yaml

from flowpipe.config import load_pipeline
from flowpipe.pipeline import Pipeline
from flowpipe.registry import Registry

PLUGIN = '''
from flowpipe import Decoder, Input, PacketBatch, hookimpl


class Ticking(Input):
    """One frame at t=100, then 1 s of silence reported as an empty batch at t=101."""

    def read(self):
        batch = PacketBatch(1)
        batch.append(100.0, b"frame", 5)
        yield batch
        yield PacketBatch(1, clock=101.0)


class First(Decoder):
    """Forwards what it sees; on advance, forwards a marker."""

    produces = "marks"

    def decode(self, batch, events):
        return [f"frame@{t}" for t in batch.timestamps]

    def advance(self, now, events):
        events.append({"first": f"advance@{now}"})
        return [f"expired@{now}"]


class Second(Decoder):
    """Turns whatever it is forwarded into events; records its own advance calls."""

    consumes = "marks"

    def decode(self, batch, events):
        events.extend({"second": item} for item in batch)

    def advance(self, now, events):
        events.append({"second": f"advance@{now}"})


@hookimpl
def flowpipe_add_inputs():
    return {"ticking": Ticking}


@hookimpl
def flowpipe_add_decoders():
    return {"first": First, "second": Second}
'''


def test_an_empty_batch_with_a_clock_advances_each_decoder_in_order(tmp_path: Path) -> None:
    (tmp_path / "ticking.py").write_text(PLUGIN)
    out = tmp_path / "events.ndjson"
    config = tmp_path / "pipeline.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "plugins": ["ticking.py"],
                "inputs": [{"type": "ticking"}],
                "decoders": [{"type": "first"}, {"type": "second"}],
                "outputs": [{"type": "file", "path": str(out)}],
            }
        )
    )
    registry = Registry.default()
    summary = Pipeline(load_pipeline(config, registry), registry).run()

    assert summary.exit_status == 0
    assert out.read_text().splitlines() == [
        '{"second":"frame@100.0"}',
        '{"first":"advance@101.0"}',
        '{"second":"expired@101.0"}',
        '{"second":"advance@101.0"}',
    ]
