"""Test plugin: a decoder after ``tcp`` that turns each connection's streams into one event.

The event carries what each side sent, in hex, and how many bytes were reported missing, so a
test can compare flowpipe's reassembly with tshark's "follow tcp stream".
"""

from __future__ import annotations

from typing import Any

from flowpipe import Decoder, Event, hookimpl
from flowpipe.plugins.decoders.transport import CLOSED, DATA, GAP, Flow, StreamEvent


class StreamDump(Decoder):
    """Collect each TCP connection's reassembled payload; emit it when the connection closes."""

    consumes = "stream"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connections: dict[Flow, dict[str, Any]] = {}

    def decode(self, batch: list[StreamEvent], events: list[Event]) -> None:
        for item in batch:
            if item.flow.protocol != 6:
                continue
            state = self.connections.setdefault(
                item.flow, {"client": bytearray(), "server": bytearray(), "gaps": 0}
            )
            side = "client" if item.from_client else "server"
            if item.kind == DATA:
                state[side] += item.data
            elif item.kind == GAP:
                state["gaps"] += item.gap
            elif item.kind == CLOSED:
                del self.connections[item.flow]
                flow = item.flow
                events.append({
                    "client": [flow.client_ip, flow.client_port],
                    "server": [flow.server_ip, flow.server_port],
                    "client_data": state["client"].hex(),
                    "server_data": state["server"].hex(),
                    "gap_bytes": state["gaps"],
                    "reason": item.reason,
                })  # fmt: skip


@hookimpl
def flowpipe_add_decoders() -> dict[str, type[Decoder]]:
    return {"stream_dump": StreamDump}
