"""The ``stdout`` output: events on standard output, one JSON line each or pretty-printed."""

from __future__ import annotations

import contextlib
import sys

from flowpipe import Choice, Event, Option, Output, OutputError, hookimpl
from flowpipe.codecs import encode_batch


class StdoutOutput(Output):
    """Print events on standard output (``json``: one line per event; ``pretty``: indented)."""

    options = (Option("codec", Choice("json", "pretty"), "json", "how each event is written"),)

    def open(self) -> None:
        self.stream = sys.stdout.buffer

    def write(self, events: list[Event]) -> None:
        try:
            self.stream.write(encode_batch(events, self.config.codec))
        except BrokenPipeError as error:  # a closed pipe will not come back
            raise OutputError(f"standard output closed: {error}", retryable=False) from error
        except OSError as error:
            raise OutputError(f"cannot write to standard output: {error}") from error

    def flush(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.stream.flush()


@hookimpl
def flowpipe_add_outputs() -> dict[str, type[Output]]:
    return {"stdout": StdoutOutput}
