"""One direction of a TCP connection put back in order: the reassembler behind the ``tcp`` decoder.

A :class:`Stream` turns the segments one side sent, as captured (out of order, repeated,
overlapping, with holes), into :class:`~flowpipe.plugins.decoders.transport.StreamEvent` items
in stream order: ``DATA`` for payload, ``GAP`` for bytes that will never be seen, ``FIN`` once
the direction's end is reached. It knows nothing of the pipeline; the decoder owns the
connection table and tells each stream what its packets carried.

Positions
    Sequence numbers wrap at 2**32; a stream converts each one, once, into an unbounded *offset*
    from its first byte (:func:`~flowpipe.plugins.decoders.seq.seq_diff` against the next
    expected sequence number), and works on offsets from there.

Overlaps: the first copy wins
    Bytes already delivered are never delivered again, and bytes held out of order are not
    replaced by a later copy: a segment that overlaps either contributes only the bytes nobody
    sent before (counted as ``overlaps``; entirely old segments as ``retransmissions``), as
    Packetbeat drops the bytes it has seen. Receivers differ on overlaps whose bytes differ (an
    evasion trick); a passive observer cannot know the receiver's policy and keeps one.

When a hole is declared lost (``GAP``)
    A segment that starts beyond the next expected byte is held until the hole before it fills.
    The hole is given up, and reported as ``GAP(n)`` before the data after it, when:

    - the other direction acknowledges bytes beyond it (:meth:`Stream.acked`): the receiver got
      data the capture never saw. Only bytes the capture has evidence of (held data, a FIN, bytes
      cut by the snapshot length) are declared lost this way, so a bogus acknowledgement cannot
      invent a gap;
    - a cap bites while holding a new segment: the oldest hole is given up (and the one after it,
      until the segment fits or is in order). The cap is counted as ``dropped.<cap>``;
    - the connection ends (RST, timeout, eviction, end of input): :meth:`Stream.flush` gives up
      every hole and delivers everything held.

    Bytes the capture cut off (the snapshot length) are a gap as soon as the stream reaches them.

Caps (:class:`Budget`)
    ``max_segments`` and ``max_stream_bytes`` bound what one stream holds out of order,
    ``max_memory`` what all streams of a budget hold together. A stream that would exceed any of
    them makes room by giving up its own holes, as gopacket does when its page pool is empty, so
    holding never exceeds a cap. A cap of 0 holds nothing: every hole is a gap at once.

Keep-alives (0 or 1 byte one below the next expected sequence number) are not data; they are
counted as ``keepalives``. A zero-window probe carries the next byte of the stream: it is
delivered, and the copy sent again once the window opens is not delivered twice.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict
from itertools import islice
from operator import itemgetter

from .seq import seq_add, seq_diff
from .transport import DATA, FIN, GAP, Flow, StreamEvent

__all__ = ["Budget", "Stream"]

_START = itemgetter(0)

# Counter names (the decoder adds them to its ledger).
RETRANSMISSIONS = "retransmissions"
OVERLAPS = "overlaps"
OUT_OF_ORDER = "out_of_order"
KEEPALIVES = "keepalives"
GAPS = "gaps"
GAP_BYTES = "gap_bytes"
TRUNCATED = "truncated"
AFTER_FIN = "after_fin"
IGNORED_FIN = "ignored_fin"
MAX_SEGMENTS = "dropped.max_segments"
MAX_STREAM_BYTES = "dropped.max_stream_bytes"
MAX_MEMORY = "dropped.max_memory"


class Budget:
    """What the streams of one decoder share: the caps, the bytes held, and what they count.

    ``counts`` collects counter increments by name; the owner merges them into its ledger and
    clears them (hot paths count locally, then merge once).
    """

    __slots__ = ("buffered", "counts", "max_memory", "max_segments", "max_stream_bytes")

    def __init__(self, max_stream_bytes: int, max_segments: int, max_memory: int) -> None:
        self.max_stream_bytes = max_stream_bytes
        """Bytes one stream may hold out of order."""
        self.max_segments = max_segments
        """Segments one stream may hold out of order."""
        self.max_memory = max_memory
        """Bytes all streams may hold out of order together."""
        self.buffered = 0
        """Bytes all streams hold out of order now."""
        self.counts: defaultdict[str, int] = defaultdict(int)


class Stream:
    """The bytes one side of a connection sent, delivered in order with their holes reported.

    Call order for each packet of this side: :meth:`syn` for a SYN, :meth:`segment` for payload
    (or bytes cut by the snapshot length), :meth:`fin_at` for a FIN; call :meth:`acked` with the
    acknowledgement number of each packet of the *other* side, and :meth:`flush` when the
    connection ends. Each call appends what it delivers to ``out``, stamped ``timestamp``.

    While :attr:`quiet` is true (started, nothing held, no FIN seen), a segment whose sequence
    number equals :attr:`seq` is simply the next data: a caller may deliver it itself, advancing
    :attr:`seq` (wrapped with :func:`~flowpipe.plugins.decoders.seq.seq_add`) and :attr:`offset`
    by its length (the decoder's fast path).
    """

    __slots__ = (
        "budget",
        "buffered",
        "done",
        "fin",
        "flow",
        "from_client",
        "high",
        "offset",
        "pending",
        "quiet",
        "seq",
    )

    def __init__(self, flow: Flow, from_client: bool, budget: Budget, seq: int = -1) -> None:
        self.flow = flow
        self.from_client = from_client
        self.budget = budget
        self.seq = seq
        """Sequence number of the next byte expected; -1 until the stream starts (``seq``: started
        there, as :meth:`syn` starts it)."""
        self.offset = 0
        """Offset of :attr:`seq` from the stream's first byte: bytes delivered or reported missing."""
        self.high = 0
        """Offset just past the furthest byte known to exist (held data, a FIN, a cut), when that
        is beyond :attr:`offset`; not kept up to date by in-order delivery."""
        self.pending: list[tuple[int, bytes]] | None = None
        """Segments held out of order as (offset, bytes): sorted, never overlapping, all after
        :attr:`offset`; None when empty."""
        self.buffered = 0
        """Bytes held in :attr:`pending`."""
        self.fin = -1
        """Offset of the FIN; -1 until one is seen."""
        self.done = False
        """Whether the FIN was delivered."""
        self.quiet = seq >= 0
        """Started, nothing held and no FIN: the next in-order segment needs no other work."""

    def syn(self, seq: int) -> bool:
        """A SYN with sequence number ``seq``: data starts at ``seq + 1``.

        Starts (or, while nothing was delivered, restarts) the stream; return False for a SYN
        that contradicts data already seen (another initial sequence number), which the caller
        should ignore.
        """
        first = seq_add(seq, 1)
        if self.seq < 0 or (self.offset == 0 and self.pending is None and self.fin < 0):
            self.seq = first
            self.quiet = True
            return True
        return seq_add(self.seq, -self.offset) == first

    def segment(self, seq: int, data: bytes, missing: int, out: list[StreamEvent], timestamp: float) -> None:
        """Payload ``data`` at sequence number ``seq``, followed by ``missing`` bytes the capture cut.

        A stream that has not started (no SYN seen) starts here: mid-stream pickup.
        """
        counts = self.budget.counts
        if self.seq < 0:
            self.seq = seq
        elif len(data) <= 1 and not missing and seq_diff(seq, self.seq) == -1:
            counts[KEEPALIVES] += 1
            return
        start = self.offset + seq_diff(seq, self.seq)
        end = start + len(data)
        if missing:
            counts[TRUNCATED] += 1
        fin = self.fin
        if fin >= 0 and end + missing > fin:
            counts[AFTER_FIN] += 1
            if start >= fin:
                return
            if end > fin:
                data = data[: fin - start]
                end = fin
            missing = fin - end
        if end + missing > self.high:
            self.high = end + missing
        while start > self.offset:  # out of order: hold it, making room if a cap bites
            if not data:  # only cut bytes: nothing to hold, their hole is known (high)
                break
            pieces = self._uncovered(start, data)
            if not pieces:
                counts[RETRANSMISSIONS] += 1
                break
            size = sum(len(piece) for _, piece in pieces)
            cap = self._cap(size, len(pieces))
            if cap is None:
                self._hold(pieces, size)
                counts[OUT_OF_ORDER] += 1
                if size < len(data):
                    counts[OVERLAPS] += 1
                break
            counts[cap] += 1
            pending = self.pending
            self._skip_to(pending[0][0] if pending else start, out, timestamp)
        else:
            offset = self.offset
            if end <= offset:
                if data:
                    counts[RETRANSMISSIONS] += 1
            else:
                overlapped = start < offset
                if overlapped:
                    data = data[offset - start :]
                    start = offset
                if self.pending is None:
                    self._deliver(data, out, timestamp)
                else:  # held data overlapping this segment came first: it wins
                    pieces = self._uncovered(start, data)
                    size = sum(len(piece) for _, piece in pieces)
                    overlapped = overlapped or size < len(data)
                    self._hold(pieces, size)
                    self._drain(out, timestamp)
                if overlapped:
                    counts[OVERLAPS] += 1
            if missing and self.offset >= end:
                self._skip_to(end + missing, out, timestamp)
        self._settle(out, timestamp)

    def fin_at(self, seq: int, out: list[StreamEvent], timestamp: float) -> None:
        """A FIN at sequence number ``seq`` (just past the segment's data): the stream ends there.

        The first FIN counts; data held beyond it is discarded (``after_fin``), and a FIN before
        what was already delivered is ignored (``ignored_fin``).
        """
        if self.seq < 0:
            self.seq = seq
        if self.fin >= 0:
            return
        position = self.offset + seq_diff(seq, self.seq)
        if position < self.offset:
            self.budget.counts[IGNORED_FIN] += 1
            return
        self.fin = position
        self.high = position
        if self._held_end() > position:
            self._discard_after(position)
        self._settle(out, timestamp)

    def acked(self, ack: int, out: list[StreamEvent], timestamp: float) -> None:
        """The other side acknowledged everything before ``ack``: holes before it are lost."""
        if self.seq < 0 or self.high <= self.offset:
            return
        limit = min(self.offset + seq_diff(ack, self.seq), self.high)
        if limit > self.offset:
            self._skip_to(limit, out, timestamp)
            self._settle(out, timestamp)

    def flush(self, out: list[StreamEvent], timestamp: float) -> None:
        """The connection ends: give up every hole and deliver everything held (then the FIN)."""
        if self.seq < 0:
            return
        self._skip_to(self.high, out, timestamp)
        self._settle(out, timestamp)

    def _deliver(self, data: bytes, out: list[StreamEvent], timestamp: float) -> None:
        out.append(StreamEvent(DATA, timestamp, self.flow, self.from_client, data))
        self.offset += len(data)
        self.seq = seq_add(self.seq, len(data))

    def _uncovered(self, start: int, data: bytes) -> list[tuple[int, bytes]]:
        """The parts of ``data`` (at offset ``start``) that no held segment covers."""
        pending = self.pending
        if pending is None:
            return [(start, data)]
        end = start + len(data)
        index = bisect_left(pending, start, key=_START)
        if index and pending[index - 1][0] + len(pending[index - 1][1]) > start:
            index -= 1
        pieces = []
        position = start
        for held_start, held in islice(pending, index, None):
            if held_start >= end:
                break
            if held_start > position:
                pieces.append((position, data[position - start : held_start - start]))
            position = max(position, held_start + len(held))
        if position < end:
            pieces.append((position, data[position - start :] if position > start else data))
        return pieces

    def _cap(self, size: int, count: int) -> str | None:
        """The counter of the first cap that holding ``count`` more segments of ``size`` bytes breaks."""
        budget = self.budget
        if (0 if self.pending is None else len(self.pending)) + count > budget.max_segments:
            return MAX_SEGMENTS
        if self.buffered + size > budget.max_stream_bytes:
            return MAX_STREAM_BYTES
        if budget.buffered + size > budget.max_memory:
            return MAX_MEMORY
        return None

    def _hold(self, pieces: list[tuple[int, bytes]], size: int) -> None:
        pending = self.pending
        if pending is None:
            pending = self.pending = []
        for piece in pieces:
            insort(pending, piece, key=_START)
        self.buffered += size
        self.budget.buffered += size
        end = pieces[-1][0] + len(pieces[-1][1])
        if end > self.high:
            self.high = end

    def _held_end(self) -> int:
        pending = self.pending
        return pending[-1][0] + len(pending[-1][1]) if pending else self.offset

    def _discard_after(self, position: int) -> None:
        """Drop held bytes at or beyond ``position`` (they lie past the FIN)."""
        pending = self.pending
        assert pending is not None
        kept = []
        for start, data in pending:
            if start + len(data) <= position:
                kept.append((start, data))
            elif start < position:
                kept.append((start, data[: position - start]))
        released = self.buffered - sum(len(data) for _, data in kept)
        self.buffered -= released
        self.budget.buffered -= released
        self.budget.counts[AFTER_FIN] += 1
        self.pending = kept or None

    def _drain(self, out: list[StreamEvent], timestamp: float) -> None:
        """Deliver the held segments that continue the stream."""
        pending = self.pending
        if pending is None:
            return
        budget = self.budget
        while pending and pending[0][0] <= self.offset:
            start, data = pending.pop(0)
            self.buffered -= len(data)
            budget.buffered -= len(data)
            skip = self.offset - start
            if skip < len(data):
                self._deliver(data[skip:] if skip else data, out, timestamp)
        if not pending:
            self.pending = None

    def _skip_to(self, limit: int, out: list[StreamEvent], timestamp: float) -> None:
        """Give up the holes before offset ``limit``: GAP for each, DATA for what was held between."""
        counts = self.budget.counts
        while True:
            self._drain(out, timestamp)
            if self.offset >= limit:
                return
            pending = self.pending
            gap = min(pending[0][0], limit) - self.offset if pending else limit - self.offset
            out.append(StreamEvent(GAP, timestamp, self.flow, self.from_client, gap=gap))
            counts[GAPS] += 1
            counts[GAP_BYTES] += gap
            self.offset += gap
            self.seq = seq_add(self.seq, gap)

    def _settle(self, out: list[StreamEvent], timestamp: float) -> None:
        """Deliver the FIN once everything before it is; recompute :attr:`quiet`."""
        fin = self.fin
        if fin >= 0 and not self.done and self.offset >= fin:
            self.done = True
            out.append(StreamEvent(FIN, timestamp, self.flow, self.from_client))
        self.quiet = fin < 0 and self.pending is None and self.seq >= 0
