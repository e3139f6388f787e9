"""Acknowledgements (at least once): an input's checkpoint is acknowledged only once every output
has shipped, rejected or dropped what came before it.

The pipelines run in this process with the test plugins of tests/fixtures/runtime_plugins: the
``checkpointed`` input (event batches, each followed by a checkpoint, acknowledgements recorded
with the number of lines an output's file held at that moment) and the ``record``, ``slow``,
``flaky``, ``partial`` and ``bulky`` outputs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import yaml

from flowpipe.config import load_pipeline
from flowpipe.pipeline import Pipeline
from flowpipe.queues import END, BatchQueue, Marker
from flowpipe.registry import Registry

PLUGINS = Path(__file__).resolve().parents[1] / "fixtures" / "runtime_plugins"
FAST_BACKOFF = {"init": "10ms", "max": "20ms"}


def run(tmp_path: Path, outputs: list[dict[str, Any]], **options: Any) -> Pipeline:
    """Run ``checkpointed`` (with ``options``) into ``outputs``; return the finished pipeline."""
    pipeline_settings = options.pop("pipeline", {})
    document = {
        "plugins": [str(PLUGINS / "checkpoints.py"), str(PLUGINS / "recording.py")],
        "inputs": [{"type": "checkpointed", **options}],
        "decoders": [],
        "outputs": outputs,
        "pipeline": pipeline_settings,
    }
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    registry = Registry.default()
    pipeline = Pipeline(load_pipeline(path, registry), registry)
    pipeline.run()
    return pipeline


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


def test_a_checkpoint_is_acknowledged_once_its_events_are_in_every_output(tmp_path: Path) -> None:
    pipeline = run(
        tmp_path,
        [{"type": "record", "path": "fast.ndjson"}, {"type": "slow", "path": "slow.ndjson", "sleep": "50ms"}],
        watch="slow.ndjson",
    )
    source = pipeline.inputs[0]
    assert source.acknowledged == [1, 2, 3]
    assert source.lines_seen == [2, 4, 6]  # the slower output had written each batch before its ack
    assert not pipeline.failures


def test_nothing_is_acknowledged_behind_a_stalled_output_nor_after_the_shutdown_timeout(
    tmp_path: Path,
) -> None:
    pipeline = run(
        tmp_path,
        [
            {"type": "record", "path": "fast.ndjson"},
            {"type": "slow", "path": "stuck.ndjson", "block_until": str(tmp_path / "never")},
        ],
        pipeline={"shutdown_timeout": "500ms"},
    )
    assert pipeline.inputs[0].acknowledged == []
    assert lines(tmp_path / "fast.ndjson") == 6
    assert any("shutdown timeout" in failure for failure in pipeline.failures)


def test_retried_writes_are_acknowledged_once_they_succeed(tmp_path: Path) -> None:
    pipeline = run(
        tmp_path,
        [{"type": "flaky", "path": "flaky.ndjson", "fail_first": 2, "backoff": FAST_BACKOFF}],
        watch="flaky.ndjson",
    )
    source = pipeline.inputs[0]
    assert source.acknowledged == [1, 2, 3]
    assert source.lines_seen == [2, 4, 6]
    assert pipeline.outputs[0].context.counters.get("retries") == 2


def test_rejected_events_count_as_done(tmp_path: Path) -> None:
    """Of each batch of 4 the ``partial`` output writes 3 (one at a retry) and refuses one for good."""
    pipeline = run(
        tmp_path,
        [{"type": "partial", "path": "partial.ndjson", "backoff": FAST_BACKOFF}],
        size=4,
        watch="partial.ndjson",
    )
    source = pipeline.inputs[0]
    assert source.acknowledged == [1, 2, 3]
    assert source.lines_seen == [3, 6, 9]
    assert pipeline.outputs[0].context.counters.drops() == {"rejected": 3}


def test_a_bulk_output_joins_batches_across_checkpoints_and_passes_them_after_the_write(
    tmp_path: Path,
) -> None:
    pipeline = run(
        tmp_path,
        [{"type": "bulky", "path": "bulk.ndjson", "bulk": 100, "wait": "5s"}],  # the end comes first
        watch="bulk.ndjson",
    )
    source = pipeline.inputs[0]
    assert (tmp_path / "bulk.ndjson.sizes").read_text().split() == ["6"]
    assert source.acknowledged == [1, 2, 3]
    assert source.lines_seen == [6, 6, 6]


def test_events_dropped_by_a_full_drop_queue_count_as_done_and_checkpoints_merge(tmp_path: Path) -> None:
    pipeline = run(
        tmp_path,
        [{"type": "slow", "path": "slow.ndjson", "sleep": "20ms", "on_full": "drop"}],
        batches=40,
        size=1,
        pipeline={"queue": {"batches": 2}},
    )
    source = pipeline.inputs[0]
    dropped = pipeline.output_runners[0].queue.counters.drops()["queue_full"]
    assert dropped > 0
    assert lines(tmp_path / "slow.ndjson") == 40 - dropped
    assert source.acknowledged[-1] == 40
    assert source.acknowledged == sorted(set(source.acknowledged))
    assert len(source.acknowledged) < 40  # checkpoints behind dropped batches merged into one


# -- the queue ----------------------------------------------------------------------------------


class Mark(Marker):
    __slots__ = ("tokens",)

    def __init__(self, *tokens: int) -> None:
        self.tokens = list(tokens)

    def merge(self, later: Marker) -> None:
        assert isinstance(later, Mark)
        self.tokens += later.tokens


def test_a_full_drop_queue_merges_a_marker_into_the_marker_before_it() -> None:
    queue = BatchQueue("q", 2, 1 << 20, on_full="drop")
    assert queue.put([{"a": 1}])
    assert queue.put_marker(first := Mark(1))
    assert not queue.put([{"a": 2}])  # full: dropped
    assert queue.put_marker(Mark(2))  # merged into the last item, a marker
    assert len(queue) == 2
    assert first.tokens == [1, 2]


def test_a_full_drop_queue_takes_a_marker_past_its_bound_behind_a_batch() -> None:
    queue = BatchQueue("q", 1, 1 << 20, on_full="drop")
    assert queue.put([{"a": 1}])
    assert queue.put_marker(Mark(1))
    assert queue.put_marker(Mark(2))
    queue.end()
    taken = [queue.get(), queue.get(), queue.get()]
    assert taken[0] == [{"a": 1}]
    assert isinstance(taken[1], Mark) and taken[1].tokens == [1, 2]
    assert taken[2] is END
    assert queue.counters.values == {"in": 1, "out": 1}  # markers carry no items


def test_a_full_block_queue_holds_a_marker_back_until_there_is_room() -> None:
    queue = BatchQueue("q", 1, 1 << 20)
    assert queue.put([{"a": 1}])
    done = threading.Event()
    threading.Thread(target=lambda: (queue.put_marker(Mark(1)), done.set()), daemon=True).start()
    assert not done.wait(0.2)
    assert queue.get() == [{"a": 1}]
    assert done.wait(2.0)
    assert isinstance(queue.get(), Mark)
