"""A one-line progress bar on a terminal: packets, bytes of total, rate and ETA."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from .stage import Input

__all__ = ["ProgressBar"]

WIDTH = 24


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """Redraws one line on ``stream`` at most every ``interval`` seconds."""

    def __init__(self, stream: TextIO, inputs: Sequence[Input], interval: float = 0.25) -> None:
        self.stream = stream
        self.inputs = inputs
        self.interval = interval
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.drawn = False

    def line(self, now: float) -> str | None:
        reports = [stage.progress() for stage in self.inputs]
        reports = [report for report in reports if report is not None]
        if not reports:
            return None
        packets = sum(report.packets for report in reports)
        done = sum(report.done_bytes for report in reports)
        totals = [report.total_bytes for report in reports]
        elapsed = max(now - self.started, 1e-6)
        text = f"{packets:,} packets  {packets / elapsed:,.0f}/s"
        if all(total is not None for total in totals):
            total = sum(t for t in totals if t is not None)
            fraction = min(done / total, 1.0) if total else 1.0
            filled = int(fraction * WIDTH)
            eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
            bar = "#" * filled + "." * (WIDTH - filled)
            text = f"[{bar}] {fraction:4.0%}  {text}  {_size(done)} of {_size(total)}  ETA {_clock(eta)}"
        return text

    def update(self) -> None:
        now = time.monotonic()
        if now - self.last_draw < self.interval:
            return
        self.last_draw = now
        text = self.line(now)
        if text is not None:
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self.drawn = True

    def finish(self) -> None:
        """Erase the bar so the summary starts on a clean line."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False
