"""The ``drop`` processor: drops every event it gets; with ``when:``, Beats' ``drop_event``."""

from __future__ import annotations

from flowpipe import Event, Processor, hookimpl


class DropProcessor(Processor):
    """Drop events: all of them, or with ``when:`` those for which the condition holds."""

    def process(self, events: list[Event]) -> list[Event]:
        self.context.counters.drop("condition", len(events))
        return []


@hookimpl
def flowpipe_add_processors() -> dict[str, type[Processor]]:
    return {"drop": DropProcessor}
