"""The one loop that moves packets from a libpcap handle (file or live) into a batch."""

from __future__ import annotations

from typing import Any

import pcapy

from flowpipe import PacketBatch

__all__ = ["fill_batch"]


def fill_batch(handle: Any, batch: PacketBatch, limit: int) -> pcapy.PcapError | None:
    """Append up to ``limit`` packets from ``handle`` to ``batch``'s lists.

    Stops early when the handle has nothing more (end of file, or nothing waiting on a
    non-blocking live handle). Returns libpcap's error instead of raising it, so the packets read
    before it stay in ``batch``. ``batch.nbytes`` is left to the caller.
    """
    next_packet = handle.next
    add_timestamp = batch.timestamps.append
    add_frame = batch.frames.append
    add_wire_length = batch.wire_lengths.append
    try:
        for _ in range(limit):
            header, frame = next_packet()
            if header is None:
                break
            seconds, micros = header.getts()
            add_timestamp(seconds + micros * 1e-6)
            add_frame(frame)
            add_wire_length(header.getlen())
    except pcapy.PcapError as error:
        return error
    return None
