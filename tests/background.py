"""``flowpipe run`` in the background, for tests that signal it or watch it while it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["started", "wait_until_still"]


@contextmanager
def started(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``flowpipe run`` in the background, stderr in ``stderr.log`` next to the config; killed if
    a test leaves it running (woken first, should the test have stopped it with SIGSTOP)."""
    with (config.parent / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowpipe", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=config.parent,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()


def wait_until_still(read: Callable[[], int], quiet: float = 0.3, timeout: float = 10.0) -> int:
    """Wait until ``read()`` stops changing for ``quiet`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        current = read()
        if current != value:
            value, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return value
    raise AssertionError(f"value kept changing (last {value})")
