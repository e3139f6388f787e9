"""The kafka input's Commits: read positions from hand-over through acknowledgement to commit."""

from __future__ import annotations

import threading
import time

from flowpipe.plugins.inputs.kafka import Commits

A, B = ("t", 0), ("t", 1)


def test_an_acknowledgement_covers_every_earlier_checkpoint_and_a_late_one_changes_nothing() -> None:
    commits = Commits()
    tokens = [commits.checkpoint({A: 10}), commits.checkpoint({B: 5}), commits.checkpoint({A: 20})]
    assert commits.collect() == {}
    commits.acknowledge(tokens[1])
    assert commits.collect() == {A: 10, B: 5}
    commits.acknowledge(tokens[2])
    commits.acknowledge(tokens[0])  # late, from another output thread: covered already
    assert commits.collect() == {A: 20, B: 5}
    commits.committed({A: 20, B: 4})  # B's commit was of an older position: it stays ready
    assert commits.ready == {B: 5}


def test_partitions_let_go_leave_nothing_behind_and_say_what_was_not_committed() -> None:
    commits = Commits()
    first = commits.checkpoint({A: 10, B: 3})
    commits.checkpoint({A: 12})
    commits.acknowledge(first)
    commits.collect()
    assert commits.forget({A}) == {A}
    assert commits.ready == {B: 3}
    commits.acknowledge(first + 1)
    assert commits.collect() == {B: 3}


def test_wait_returns_once_the_partitions_are_acknowledged_or_after_the_timeout() -> None:
    commits = Commits()
    token = commits.checkpoint({A: 1})
    commits.checkpoint({B: 1})
    stopping = threading.Event()
    assert not commits.wait({A}, 0.1, stopping)
    threading.Timer(0.1, commits.acknowledge, [token]).start()
    started = time.monotonic()
    assert commits.wait({A}, 5.0, stopping)
    assert time.monotonic() - started < 1.0
    assert commits.waiting({B})
