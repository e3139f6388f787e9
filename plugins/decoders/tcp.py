"""The ``tcp`` decoder: TCP connections reassembled into ordered streams, UDP datagrams passed on.

It consumes the ``ip`` decoder's :class:`~flowpipe.plugins.decoders.transport.TransportPacket`
items and forwards :class:`~flowpipe.plugins.decoders.transport.StreamEvent` items, per
connection (one :class:`~flowpipe.plugins.decoders.transport.Flow` object) and per direction, in
stream order:

- ``DATA``: the next payload bytes (:mod:`.reassembly` explains out-of-order segments,
  retransmissions, overlaps, keep-alives and when a hole is declared lost);
- ``GAP``: ``gap`` bytes that will never be seen; the stream goes on after them;
- ``FIN``: the direction ended (after everything before its FIN);
- ``CLOSED``: once per flow, last: ``reason`` is ``fin`` (both FINs delivered), ``rst`` (a RST
  from either side), ``timeout`` (``connection_timeout`` of capture time without a packet),
  ``evicted`` (``max_connections``) or ``end_of_input``. Before it, everything still held is
  delivered with its holes as GAP, then the FINs seen. For ``fin`` and ``rst`` its
  ``from_client`` is the side whose packet closed the connection, else True. Data on a RST is
  delivered (tshark shows it too; some stacks explain the reset in it) before the close;
- ``DATAGRAM``: a UDP datagram's payload, as is; its ``gap`` is the number of bytes the capture
  cut off (0 when whole).

Sequence setup: a SYN sets its direction's start (data on a SYN, as TCP Fast Open sends, is
payload); a SYN-ACK also sets the other direction's from its acknowledgement number when that
SYN was not seen. A direction without a SYN starts at its first segment with data or FIN
(mid-stream pickup); bytes before that point arriving later count as retransmissions. A SYN with
another initial sequence number on a direction that already carried data is ignored and counted
(``unexpected_syn``): a reused 5-tuple comes as a new flow object.

Time is capture time: a connection without packets for ``connection_timeout`` expires, checked
in least-recently-active order whenever capture time has advanced a second, and by
:meth:`TcpDecoder.advance` when a live input idles. Events flushed on timeout, eviction or end of
input carry the time of the connection's last packet. A closed connection's flow is remembered
as closed until ``connection_timeout`` passes without a packet for it (at most
``max_connections`` flows, oldest forgotten first), so late packets (the last ACK, retransmitted
FINs, data after a RST) are counted as ``after_close`` and produce nothing. A flow forgotten
this way and seen again starts over, with another CLOSED at its end: the ``ip`` decoder's flow
timeout (``flows.timeout``, 30 s) should not exceed ``connection_timeout``, so that it has
replaced the flow object by then.

Memory: the caps count payload bytes held out of order; each held segment adds about 100 bytes
of bookkeeping (bounded by ``max_segments``). A tracked connection costs about 260 bytes, and
each direction's reassembly state (made once the direction carries data, a FIN or bytes cut by
the capture) about 120 more.

The common case is a fast path: a segment that carries the next expected bytes of a direction
that holds nothing out of order is forwarded as DATA at once, without copying or buffering.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

from flowpipe import ByteSize, Decoder, Duration, Event, Int, Option, OptionError, StageContext, hookimpl

from .reassembly import KEEPALIVES, Budget, Stream
from .seq import MASK, seq_diff
from .transport import (
    ACK_FLAG,
    CLOSED,
    DATA,
    DATAGRAM,
    FIN_FLAG,
    PROTO_TCP,
    RST_FLAG,
    SYN_FLAG,
    Flow,
    StreamEvent,
    TransportPacket,
)

__all__ = ["TcpDecoder"]

EXPIRY_INTERVAL = 1.0
"""Seconds of capture time between two looks for expired connections."""
_CONTROL = SYN_FLAG | FIN_FLAG | RST_FLAG
_new = tuple.__new__
"""Builds a StreamEvent from all its fields without the Python-level ``__new__`` (the fast path)."""

# Counter names besides those of .reassembly.
UNEXPECTED_SYN = "unexpected_syn"
AFTER_CLOSE = "after_close"
DATAGRAMS = "datagrams"
MAX_CONNECTIONS = "dropped.max_connections"
CLOSED_PREFIX = "closed."

FIN_REASON = "fin"
RST_REASON = "rst"
TIMEOUT_REASON = "timeout"
EVICTED_REASON = "evicted"
END_REASON = "end_of_input"


class Connection:
    """One TCP connection being reassembled: its two directions and its last activity.

    A direction's :class:`Stream` is made when it is first needed (payload, bytes cut by the
    capture, a FIN, data held out of order); until then only the sequence number its SYN set is
    kept, so a connection that only shook hands costs no stream.
    """

    __slots__ = ("client", "client_seq", "flow", "last", "server", "server_seq")

    def __init__(self, flow: Flow, timestamp: float) -> None:
        self.flow = flow
        self.client: Stream | None = None
        """What the client sent; None until needed."""
        self.server: Stream | None = None
        """What the server sent; None until needed."""
        self.client_seq = -1
        """While :attr:`client` is None: the sequence number of its first byte; -1 before a SYN."""
        self.server_seq = -1
        """While :attr:`server` is None: as :attr:`client_seq`, for the server."""
        self.last = timestamp
        """Capture time of the latest packet."""

    def stream(self, from_client: bool, budget: Budget) -> Stream:
        """The stream of one direction, made (started where its SYN said) if it is not yet."""
        if from_client:
            stream = self.client
            if stream is None:
                stream = self.client = Stream(self.flow, True, budget, self.client_seq)
        else:
            stream = self.server
            if stream is None:
                stream = self.server = Stream(self.flow, False, budget, self.server_seq)
        return stream

    def next_seq(self, from_client: bool) -> int:
        """The sequence number one direction expects next; -1 before it started."""
        stream = self.client if from_client else self.server
        if stream is not None:
            return stream.seq
        return self.client_seq if from_client else self.server_seq

    def syn(self, from_client: bool, seq: int) -> bool:
        """A SYN with sequence number ``seq`` from one side (see :meth:`Stream.syn`)."""
        stream = self.client if from_client else self.server
        if stream is not None:
            return stream.syn(seq)
        if from_client:
            self.client_seq = (seq + 1) & MASK
        else:
            self.server_seq = (seq + 1) & MASK
        return True


class TcpDecoder(Decoder):
    """Reassemble TCP connections into ordered per-direction streams with gaps reported."""

    consumes = "transport"
    produces = "stream"
    default_order = 20
    options = (
        Option(
            "max_stream_bytes",
            ByteSize(),
            "4MiB",
            "bytes one direction of a connection may hold out of order (0: none, every hole is a gap)",
        ),
        Option("max_segments", Int(minimum=0), 4096, "segments one direction may hold out of order"),
        Option("max_memory", ByteSize(), "256MiB", "bytes all connections may hold out of order together"),
        Option(
            "max_connections",
            Int(minimum=1),
            100_000,
            "connections tracked; the least recently active is evicted",
        ),
        Option(
            "connection_timeout",
            Duration(),
            "60s",
            "capture time without a packet after which a connection is closed (reason timeout)",
        ),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        """A connection timeout is positive."""
        if config.connection_timeout <= 0:
            return [OptionError("must be more than 0", ("connection_timeout",))]
        return []

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self._budget = Budget(config.max_stream_bytes, config.max_segments, config.max_memory)
        self._connections: OrderedDict[Flow, Connection] = OrderedDict()
        """Open connections, least recently active first."""
        self._closed: OrderedDict[Flow, float] = OrderedDict()
        """Flows already closed, with the time they closed or last had a packet, oldest first."""
        self._timeout = config.connection_timeout
        self._next_expiry = float("-inf")

    def decode(self, batch: list[TransportPacket], events: list[Event]) -> list[StreamEvent]:
        """Reassemble ``batch``; return the stream events it completes (in order per direction)."""
        out: list[StreamEvent] = []
        append = out.append
        connections = self._connections
        get_connection = connections.get
        move_to_end = connections.move_to_end
        budget = self._budget
        counts = budget.counts
        next_expiry = self._next_expiry
        latest = None
        for packet in batch:
            timestamp, flow, from_client, payload, missing, flags, seq, ack, _ = packet
            if timestamp >= next_expiry:
                self._expire(timestamp, out)
                next_expiry = timestamp + EXPIRY_INTERVAL
            if flow.protocol != PROTO_TCP:
                append(_new(StreamEvent, (DATAGRAM, timestamp, flow, from_client, payload, missing, "")))
                counts[DATAGRAMS] += 1
                continue
            connection = get_connection(flow)
            if connection is None:
                connection = self._open(flow, timestamp, out)
                if connection is None:
                    continue
                latest = connection
            else:
                if connection is not latest:  # the latest connection is already at the end
                    move_to_end(flow)
                    latest = connection
                connection.last = timestamp
            if from_client:
                stream, other = connection.client, connection.server
            else:
                stream, other = connection.server, connection.client
            if flags & ACK_FLAG and other is not None and not other.quiet:
                other.acked(ack, out, timestamp)  # first: the reply follows the data it acknowledges
            if not flags & _CONTROL:
                if payload or missing:
                    if stream is None:
                        stream = connection.stream(from_client, budget)
                    if seq == stream.seq and stream.quiet and not missing:  # the fast path
                        size = len(payload)
                        stream.seq = (seq + size) & MASK
                        stream.offset += size
                        append(_new(StreamEvent, (DATA, timestamp, flow, from_client, payload, 0, "")))
                    else:
                        stream.segment(seq, payload, missing, out, timestamp)
                else:
                    expected = connection.next_seq(from_client) if stream is None else stream.seq
                    if seq != expected and expected >= 0 and seq_diff(seq, expected) == -1:
                        counts[KEEPALIVES] += 1
            elif self._control(connection, packet, out):
                continue
            else:
                stream = connection.client if from_client else connection.server
            if stream is not None and stream.done and other is not None and other.done:
                self._close(connection, FIN_REASON, from_client, timestamp, out)
                self._remember(flow, timestamp)
        self._next_expiry = next_expiry
        self._account()
        return out

    def flush(self, events: list[Event]) -> list[StreamEvent]:
        """End of input: deliver what every connection holds, then CLOSED (``end_of_input``)."""
        out: list[StreamEvent] = []
        while self._connections:
            _, connection = self._connections.popitem(last=False)
            self._close(connection, END_REASON, True, connection.last, out)
        self._closed.clear()
        self._account()
        return out

    def advance(self, now: float, events: list[Event]) -> list[StreamEvent]:
        """Expire the connections idle for ``connection_timeout`` at capture time ``now``."""
        out: list[StreamEvent] = []
        self._expire(now, out)
        self._next_expiry = max(self._next_expiry, now + EXPIRY_INTERVAL)
        self._account()
        return out

    def _open(self, flow: Flow, timestamp: float, out: list[StreamEvent]) -> Connection | None:
        """The new connection of ``flow``, or None (counted) when the flow was closed already."""
        closed = self._closed
        if flow in closed:
            closed.move_to_end(flow)
            closed[flow] = timestamp
            self._budget.counts[AFTER_CLOSE] += 1
            return None
        connections = self._connections
        if len(connections) >= self.config.max_connections:
            _, evicted = connections.popitem(last=False)
            self._budget.counts[MAX_CONNECTIONS] += 1
            self._close(evicted, EVICTED_REASON, True, evicted.last, out)
            self._remember(evicted.flow, timestamp)
        connection = connections[flow] = Connection(flow, timestamp)
        return connection

    def _control(self, connection: Connection, packet: TransportPacket, out: list[StreamEvent]) -> bool:
        """A packet with SYN, FIN or RST; return True when nothing more is to be done with it."""
        timestamp, _, from_client, payload, missing, flags, seq, ack, _ = packet
        if flags & RST_FLAG:
            if payload or missing:  # a diagnostic text, or data sent with the RST: the stream's last bytes
                connection.stream(from_client, self._budget).segment(seq, payload, missing, out, timestamp)
            self._close(connection, RST_REASON, from_client, timestamp, out)
            self._remember(connection.flow, timestamp)
            return True
        if flags & SYN_FLAG:
            if not connection.syn(from_client, seq):
                self._budget.counts[UNEXPECTED_SYN] += 1
                return True
            if flags & ACK_FLAG and connection.next_seq(not from_client) < 0:
                connection.syn(not from_client, (ack - 1) & MASK)
            seq = (seq + 1) & MASK
        if payload or missing or flags & FIN_FLAG:
            stream = connection.stream(from_client, self._budget)
            if payload or missing:
                stream.segment(seq, payload, missing, out, timestamp)
            if flags & FIN_FLAG:
                stream.fin_at((seq + len(payload) + missing) & MASK, out, timestamp)
        return False

    def _close(
        self, connection: Connection, reason: str, from_client: bool, timestamp: float, out: list[StreamEvent]
    ) -> None:
        """Deliver what ``connection`` holds, then CLOSED; stop tracking it."""
        flow = connection.flow
        if connection.client is not None:
            connection.client.flush(out, timestamp)
        if connection.server is not None:
            connection.server.flush(out, timestamp)
        out.append(StreamEvent(CLOSED, timestamp, flow, from_client, reason=reason))
        self._budget.counts[CLOSED_PREFIX + reason] += 1
        self._connections.pop(flow, None)

    def _remember(self, flow: Flow, timestamp: float) -> None:
        """Remember ``flow`` as closed at ``timestamp``, so its late packets produce nothing."""
        closed = self._closed
        closed[flow] = timestamp
        if len(closed) > self.config.max_connections:
            closed.popitem(last=False)

    def _expire(self, now: float, out: list[StreamEvent]) -> None:
        """Close the connections, and forget the closed flows, idle since ``now - connection_timeout``."""
        deadline = now - self._timeout
        closed = self._closed
        while closed and next(iter(closed.values())) <= deadline:
            closed.popitem(last=False)
        connections = self._connections
        while connections:
            connection = next(iter(connections.values()))
            if connection.last > deadline:
                break
            self._close(connection, TIMEOUT_REASON, True, connection.last, out)
            self._remember(connection.flow, now)

    def _account(self) -> None:
        """Merge this batch's counts into the ledger; update the gauges."""
        counters = self.context.counters
        counts = self._budget.counts
        if counts:
            counters.add_many(counts)
            counts.clear()
        gauges = counters.gauges
        gauges["connections"] = len(self._connections)
        gauges["buffered_bytes"] = self._budget.buffered


@hookimpl
def flowpipe_add_decoders() -> dict[str, type[Decoder]]:
    return {"tcp": TcpDecoder}
