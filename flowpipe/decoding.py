"""The decoding chain: decoders, then processors, then a hand-over of the resulting events.

One :class:`DecodingChain` runs in the pipeline's worker thread, or in each worker process of
``pipeline.workers`` (:mod:`flowpipe.workers`); only what it does with its events differs (put
them in the output queues, or send them back to the main process).

A decoder or processor that raises on a batch loses that batch (counted as
``dropped.decoder_error`` / ``dropped.processor_error``), never the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .event import Event
from .metrics import Counters
from .packet import PacketBatch
from .stage import Decoder, Processor

__all__ = ["DecodingChain"]

FLUSH_CHUNK = 4096
"""Events a flush or a clock advance hands to the processors and outputs at a time: the outputs'
queues then bound what is encoded at once (the end of a flood can end a million flows)."""


class DecodingChain:
    """Decoders then processors; every non-empty batch of events they make goes to ``ship``."""

    def __init__(
        self,
        decoders: list[Decoder],
        processors: list[Processor],
        counters: Counters,
        ship: Callable[[list[Event]], None],
    ) -> None:
        self.decoders = decoders
        self.processors = processors
        self.counters = counters
        """The ``worker`` counters: ``out`` counts the events shipped."""
        self._ship = ship

    def packets(self, batch: PacketBatch) -> None:
        """Decode a batch of packets; a batch without frames only advances the clock."""
        if batch.frames:
            self.events(self.decode(batch, 0))
        elif batch.clock is not None:
            self.drive("advance", batch.clock)

    def flush(self) -> None:
        """End of input: every decoder turns what it holds into events."""
        self.drive("flush")

    def decode(self, batch: Any, first: int) -> list[Event]:
        """Run ``batch`` through the decoders from position ``first``; return their events."""
        events: list[Event] = []
        items = batch
        for decoder in self.decoders[first:]:
            counters = decoder.context.counters
            counters.add("in", len(items))
            before = len(events)
            try:
                items = decoder.decode(items, events)
            except Exception:
                counters.drop("decoder_error", len(items))
                decoder.context.errors.error(
                    "decode",
                    "decoder %r failed on a batch; its items are dropped",
                    decoder.context.id,
                    exc_info=True,
                )
                return events
            counters.add("out", len(events) - before + (len(items) if items else 0))
            if not items:
                break
        return events

    def drive(self, what: str, *args: Any) -> None:
        """Call ``flush()`` or ``advance(now)`` on each decoder in order, passing on what each forwards."""
        for index, decoder in enumerate(self.decoders):
            events: list[Event] = []
            try:
                forwarded = getattr(decoder, what)(*args, events)
            except Exception:
                decoder.context.errors.error(
                    what, "decoder %r failed to %s", decoder.context.id, what, exc_info=True
                )
                continue
            decoder.context.counters.add("out", len(events) + (len(forwarded) if forwarded else 0))
            if forwarded:
                events.extend(self.decode(forwarded, index + 1))
            for start in range(0, len(events), FLUSH_CHUNK):  # an end-of-input flush may be huge
                self.events(events[start : start + FLUSH_CHUNK])

    def events(self, events: list[Event]) -> None:
        """Run ``events`` through the processors and ship what is left."""
        for processor in self.processors:
            if not events:
                return
            counters = processor.context.counters
            counters.add("in", len(events))
            try:
                processed = processor.apply(events)
                counters.add("out", len(processed))  # inside: a result without len() is its failure
            except Exception:
                counters.drop("processor_error", len(events))
                processor.context.errors.error(
                    "process",
                    "processor %r failed on a batch; its events are dropped",
                    processor.context.id,
                    exc_info=True,
                )
                return
            events = processed
        if events:
            self.counters.add("out", len(events))
            self._ship(events)
