"""Reading the end-of-run summary that ``flowpipe run`` prints on stderr."""

from __future__ import annotations

import re

SUMMARY_LINE = re.compile(r"^  (input|decoder|processor|queue|output)\s+(\S+)\s+(.*)$")


def number(text: str) -> int:
    """A summary number such as ``1,234``."""
    return int(text.replace(",", ""))


def parse_summary(stderr: str) -> dict[tuple[str, str], dict[str, int]]:
    """The stage lines of a printed summary: (kind, id) -> counter name -> value."""
    stages: dict[tuple[str, str], dict[str, int]] = {}
    for line in stderr.splitlines():
        match = SUMMARY_LINE.match(line)
        if not match:
            continue
        kind, owner, rest = match.groups()
        values: dict[str, int] = {}
        dropped = re.search(r"  dropped [\d,]+ \((.*)\)$", rest)
        if dropped:
            for part in dropped.group(1).split(", "):
                reason, count = part.rsplit(" ", 1)
                values[f"dropped.{reason}"] = number(count)
            rest = rest[: dropped.start()]
        values.update((name, number(value)) for name, value in re.findall(r"(\S+) +([\d,]+)", rest))
        stages[(kind, owner)] = values
    return stages
