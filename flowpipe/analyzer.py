"""Application-protocol analyzers: Packetbeat's contract, driven by the ``protocol`` decoder.

The ``protocol`` decoder receives what the ``tcp`` decoder reassembled and hands it, per
connection, to the analyzer that claims the connection (by port, or by content on other ports).
An analyzer turns bytes into messages, pairs requests with responses through the shared
:class:`~flowpipe.transactions.Transactions` helper and publishes one event per transaction.

TCP analyzers (``transport = "tcp"``) implement, as in Packetbeat::

    parse(packet, flow, direction, state) -> state       # the next in-order bytes of one direction
    on_fin(flow, direction, state) -> state              # that direction ended
    on_gap(flow, direction, nbytes, state) -> (state, drop)   # nbytes were lost; drop: forget state
    connection_timeout                                   # idle time after which state is closed

plus one call Packetbeat lacks, because flowpipe flushes everything at the end of a capture::

    on_close(flow, state) -> None                        # the connection is over: publish what is pending

``state`` is whatever the analyzer returns (None on the first call of a connection); the
decoder keeps it per connection and never looks inside. UDP analyzers (``transport = "udp"``)
implement ``parse_udp(packet)`` and ICMP analyzers (``transport = "icmp"``) ``parse_icmp(packet)``;
they keep what they need between datagrams in the transaction helper. A protocol spoken over
several transports (DNS) is one analyzer that lists them in ``transports`` and implements each
one's calls: ``class DnsAnalyzer(TcpAnalyzer)`` with ``transports = ("tcp", "udp")`` and a
``parse_udp`` of its own.

Call order for one connection: ``parse``/``on_gap``/``on_fin`` in stream order (the two
directions interleaved as the packets came), then ``on_close`` exactly once. Every analyzer also
gets ``expire(now)`` about once per second of capture time and ``flush()`` at the end of input.

A packet is the ``tcp`` decoder's stream item: ``packet.timestamp`` (capture time),
``packet.data`` (payload bytes, the analyzer's to keep), ``packet.flow`` and ``packet.from_client``.
The flow carries the connection's addresses (``client_ip``, ``client_port``, ``server_ip``,
``server_port``), ``network_type``, ``community_id`` and ``id``. ``direction`` is the protocol's:
:data:`TO_SERVER` for what was sent towards the analyzer's port (the connection's opener, unless
the port listed is the flow's client port) and :data:`TO_CLIENT` for the other way;
``packet.from_client`` stays the flow's view, and is what a :class:`~flowpipe.Message` records.

Analyzers run in the worker thread and must not raise: a malformed message is counted
(:meth:`Analyzer.drop`) and skipped. The decoder still catches what escapes, counts it as
``dropped.<protocol>.analyzer_error`` and forgets that connection's state.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, ClassVar, Protocol

from .event import Event
from .options import Bool, ByteSize, Duration, Int, Option, Ports
from .stage import Stage, StageContext

__all__ = [
    "TO_CLIENT",
    "TO_SERVER",
    "Analyzer",
    "AppPacket",
    "FlowInfo",
    "IcmpAnalyzer",
    "StreamBuffer",
    "TcpAnalyzer",
    "UdpAnalyzer",
]

TO_SERVER = 0
"""Direction of what the connection's opener (the client) sent: Packetbeat's original direction."""
TO_CLIENT = 1
"""Direction of what the server sent."""


class FlowInfo(Protocol):
    """What an analyzer may read of a connection (the ``ip`` decoder's flow object)."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    protocol: int
    network_type: str
    community_id: str
    id: str
    vlan: tuple[int, ...]


class AppPacket(Protocol):
    """What an analyzer receives for each chunk of a stream or datagram."""

    timestamp: float
    flow: FlowInfo
    from_client: bool
    data: bytes
    gap: int
    """For a datagram: bytes of it the capture cut off (snapshot length); 0 when whole."""


class Analyzer(Stage):
    """Base of every application-protocol analyzer (one instance per ``protocol`` decoder).

    Subclasses set :attr:`transport`, :attr:`default_ports` and their own :attr:`options`; the
    common options (``enabled``, ``ports``, ``send_request``, ``send_response``,
    ``transaction_timeout``, ``max_message_size``, ``max_pending``) are added for them.
    """

    kind = "analyzer"
    transport: ClassVar[str] = "tcp"
    """``tcp``, ``udp`` or ``icmp``: what the analyzer parses."""
    transports: ClassVar[tuple[str, ...]] = ("tcp",)
    """Every transport the analyzer parses, each with its own ports (``ports`` applies to each);
    ``(transport,)`` unless a class that sets :attr:`transport` also sets this."""
    default_ports: ClassVar[tuple[int | str, ...]] = ()
    """Ports claimed when the configuration names none (``"8000-8100"`` ranges allowed)."""
    categories: ClassVar[tuple[str, ...]] = ("network",)
    """``event.category`` of this protocol's transactions (``web`` is added for HTTP, ...)."""
    default_max_message_size: ClassVar[str] = "10MiB"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "transport" in cls.__dict__ and "transports" not in cls.__dict__:
            cls.transports = (cls.transport,)

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self.name = context.id.rsplit(".", 1)[-1]
        """The protocol name this analyzer is registered under (``http``, ``dns``, ...)."""
        self._publish: Callable[[Event], None] = _nowhere

    @classmethod
    def all_options(cls) -> tuple[Option, ...]:
        common = [
            Option("enabled", Bool(), True, "analyze this protocol"),
            Option("send_request", Bool(), False, "add the raw request text as 'request'"),
            Option("send_response", Bool(), False, "add the raw response text as 'response'"),
            Option(
                "transaction_timeout",
                Duration(),
                "10s",
                "capture time a request waits for its response before it is published alone",
            ),
            Option(
                "max_message_size",
                ByteSize(),
                cls.default_max_message_size,
                "largest message (headers and what is kept of a body) buffered; more is truncated",
            ),
            Option("max_pending", Int(minimum=1), 64, "requests awaiting a response per connection"),
        ]
        if cls.transport != "icmp":
            common.insert(1, Option("ports", Ports(), list(cls.default_ports), "ports to analyze"))
        return (*common, *cls.options)

    @classmethod
    def detect(cls, data: bytes, from_client: bool) -> bool | None:
        """Content-based detection: whether ``data`` (a stream's first bytes) is this protocol.

        Return None when more bytes are needed to decide. Analyzers that cannot recognise their
        protocol from content keep this default (always False).
        """
        return False

    # -- what the protocol decoder calls -------------------------------------------------------

    def start(self, publish: Callable[[Event], None]) -> None:
        """Called by the decoder before any data: where :meth:`publish` sends events."""
        self._publish = publish

    def expire(self, now: float) -> None:
        """Capture time advanced to ``now``: publish transactions that timed out."""

    def flush(self) -> None:
        """End of input: publish everything pending."""

    # -- helpers for subclasses ----------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Emit ``event`` (a finished transaction)."""
        self._publish(event)

    def count(self, name: str, amount: int = 1) -> None:
        """Add to counter ``<protocol>.<name>`` of the ``protocol`` decoder."""
        self.context.counters.add(f"{self.name}.{name}", amount)

    def drop(self, reason: str, amount: int = 1) -> None:
        """Count ``amount`` messages dropped for ``reason`` (``dropped.<protocol>.<reason>``)."""
        self.context.counters.drop(f"{self.name}.{reason}", amount)


class TcpAnalyzer(Analyzer):
    """An analyzer of TCP streams (Packetbeat's TCP plugin contract)."""

    transport = "tcp"

    @property
    def connection_timeout(self) -> float:
        """Capture time without data after which the decoder closes a connection's state."""
        return self.config.transaction_timeout

    def parse(self, packet: AppPacket, flow: FlowInfo, direction: int, state: Any) -> Any:
        """Parse the next in-order bytes ``packet.data`` of ``direction``; return the new state."""
        raise NotImplementedError

    def on_fin(self, flow: FlowInfo, direction: int, state: Any) -> Any:
        """``direction`` ended (its FIN and everything before it were delivered)."""
        return state

    def on_gap(self, flow: FlowInfo, direction: int, nbytes: int, state: Any) -> tuple[Any, bool]:
        """``nbytes`` of ``direction`` were lost. Return ``(state, drop)``; ``drop`` discards the state.

        The default gives up on the connection (as most Packetbeat analyzers do): what is
        pending is published by :meth:`on_close` and the rest of the stream is parsed afresh.
        """
        self.on_close(flow, state)
        return None, True

    def on_close(self, flow: FlowInfo, state: Any) -> None:
        """The connection is over (or its state is dropped): publish what is pending."""


class UdpAnalyzer(Analyzer):
    """An analyzer of UDP datagrams (Packetbeat's UDP plugin contract)."""

    transport = "udp"

    def parse_udp(self, packet: AppPacket) -> None:
        """Parse one datagram, ``packet.data``."""
        raise NotImplementedError


class IcmpAnalyzer(Analyzer):
    """An analyzer of ICMP/ICMPv6 messages (``packet.data`` starts at the ICMP header)."""

    transport = "icmp"

    def parse_icmp(self, packet: AppPacket) -> None:
        """Parse one ICMP message."""
        raise NotImplementedError


class StreamBuffer:
    """The unparsed bytes of one direction of a stream, bounded by ``limit``.

    :meth:`feed` appends; parsers take lines or fixed-size parts off the front. Bytes beyond
    ``limit`` are not kept: :meth:`feed` returns the number it had to cut, so the parser can note
    the truncation and skip to the next message.
    """

    __slots__ = ("data", "limit")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def __len__(self) -> int:
        return len(self.data)

    def feed(self, chunk: bytes) -> int:
        """Append ``chunk``; return how many of its bytes did not fit (0 when all did)."""
        room = self.limit - len(self.data)
        if len(chunk) <= room:
            self.data += chunk
            return 0
        if room > 0:
            self.data += chunk[:room]
        return len(chunk) - max(room, 0)

    def line(self, terminator: bytes = b"\n") -> bytes | None:
        """Take the first line, terminator included; None while no complete line is buffered."""
        end = self.data.find(terminator)
        if end < 0:
            return None
        return self.take(end + len(terminator))

    def take(self, size: int) -> bytes:
        """Take (at most) the first ``size`` bytes."""
        part = bytes(self.data[:size])
        del self.data[:size]
        return part

    def clear(self) -> int:
        """Drop everything buffered; return how many bytes that was."""
        size = len(self.data)
        self.data.clear()
        return size


def _nowhere(event: Event) -> None:
    raise RuntimeError("analyzer used before the protocol decoder started it")
