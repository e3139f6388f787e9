"""Packets as they leave an input: columnar batches of raw frames.

An input emits :class:`PacketBatch` objects. A batch holds frames of one link type in three
parallel lists (timestamps, frames, wire lengths) so that reading a packet creates no object of
its own: the hot path iterates ``zip(batch.timestamps, batch.frames, batch.wire_lengths)``.
:meth:`PacketBatch.packets` is the convenient (allocating) view for code off the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["LINKTYPE_ETHERNET", "Packet", "PacketBatch"]

LINKTYPE_ETHERNET = 1


class Packet(NamedTuple):
    """One captured frame: capture time (seconds since the epoch), bytes, length on the wire."""

    timestamp: float
    frame: bytes
    wire_length: int
    link_type: int = LINKTYPE_ETHERNET


class PacketBatch:
    """Frames of one link type, captured by one input, in capture order.

    ``clock`` is set only on a batch *without* frames that a live input sends while no packet
    arrives: the wall-clock time it stands for, so decoders can expire flows and connections.
    """

    __slots__ = ("clock", "frames", "link_type", "nbytes", "source", "timestamps", "wire_lengths")

    def __init__(self, link_type: int, source: str = "", clock: float | None = None) -> None:
        self.link_type = link_type
        self.source = source
        self.clock = clock
        self.timestamps: list[float] = []
        self.frames: list[bytes] = []
        self.wire_lengths: list[int] = []
        self.nbytes = 0

    def append(self, timestamp: float, frame: bytes, wire_length: int) -> None:
        """Add one frame (off the hot path; readers append to the lists directly)."""
        self.timestamps.append(timestamp)
        self.frames.append(frame)
        self.wire_lengths.append(wire_length)
        self.nbytes += len(frame)

    def __len__(self) -> int:
        return len(self.frames)

    def packets(self) -> Iterator[Packet]:
        """Yield each frame as a :class:`Packet` (allocates one tuple per frame)."""
        link_type = self.link_type
        for timestamp, frame, wire_length in zip(
            self.timestamps, self.frames, self.wire_lengths, strict=False
        ):
            yield Packet(timestamp, frame, wire_length, link_type)

    def __repr__(self) -> str:
        return f"<PacketBatch link_type={self.link_type} packets={len(self)} bytes={self.nbytes}>"
