"""The end-of-run summary: what every stage took in, put out and dropped, and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EXIT_OK, EXIT_RUNTIME
from .metrics import Counters

__all__ = ["DECODE_ERROR_REASONS", "Summary"]

DECODE_ERROR_REASONS = ("malformed", "parse_error", "decoder_error")
"""Decoder drop reasons (and their ``reason.detail`` forms) that count as decode errors; other
decoder drops (``not_ip``, caps, gaps) are deliberate and only appear with their stage."""


def _number(value: int) -> str:
    return f"{value:,}"


def _drops(counters: Counters) -> str:
    drops = counters.drops()
    if not drops:
        return ""
    detail = ", ".join(f"{reason} {_number(count)}" for reason, count in sorted(drops.items()))
    return f"  dropped {_number(sum(drops.values()))} ({detail})"


@dataclass
class Summary:
    """Counters of a finished run, grouped by stage kind, and the failures it reported."""

    elapsed: float
    inputs: list[Counters]
    decoders: list[Counters]
    processors: list[Counters]
    outputs: list[Counters]
    queues: list[Counters]
    failures: list[str] = field(default_factory=list)

    @property
    def packets(self) -> int:
        """Packets read by every input."""
        return sum(counters.get("out") for counters in self.inputs)

    @property
    def dropped(self) -> int:
        """Items dropped anywhere, every reason."""
        every = (*self.inputs, *self.decoders, *self.processors, *self.outputs, *self.queues)
        return sum(counters.dropped_total() for counters in every)

    @property
    def decode_errors(self) -> int:
        """Items decoders could not decode (see :data:`DECODE_ERROR_REASONS`)."""
        return sum(
            count
            for counters in self.decoders
            for reason, count in counters.drops().items()
            if reason.split(".", 1)[0] in DECODE_ERROR_REASONS
        )

    @property
    def exit_status(self) -> int:
        return EXIT_RUNTIME if self.failures else EXIT_OK

    def events_shipped(self) -> dict[str, int]:
        """Events each output acknowledged, by output id."""
        return {counters.owner: counters.get("out") for counters in self.outputs}

    def render(self) -> str:
        """The summary as printed on stderr at the end of a run."""
        rate = self.packets / self.elapsed if self.elapsed > 0 else 0.0
        shipped = ", ".join(f"{owner} {_number(n)}" for owner, n in self.events_shipped().items())
        lines = [
            f"flowpipe: finished in {self.elapsed:.2f} s: {_number(self.packets)} packets read "
            f"({_number(int(rate))} packets/s); events shipped: {shipped or 'none'}; "
            f"dropped {_number(self.dropped)}; decode errors {_number(self.decode_errors)}"
        ]
        for kind, group in (
            ("input", self.inputs),
            ("decoder", self.decoders),
            ("processor", self.processors),
            ("queue", self.queues),
            ("output", self.outputs),
        ):
            for counters in group:
                parts = [f"  {kind:<9} {counters.owner:<16}"]
                if kind != "input":
                    parts.append(f" in {_number(counters.get('in')):>10}")
                parts.append(f" out {_number(counters.get('out')):>10}")
                extra = {
                    name: value
                    for name, value in counters.values.items()
                    if name not in ("in", "out") and not name.startswith("dropped.")
                }
                parts.extend(f"  {name} {_number(value)}" for name, value in sorted(extra.items()))
                parts.append(_drops(counters))
                lines.append("".join(parts).rstrip())
        lines.extend(f"  FAILED: {failure}" for failure in self.failures)
        return "\n".join(lines)
