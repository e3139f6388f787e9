"""The ``protocol`` decoder: application analyzers turn streams and datagrams into transactions.

It consumes the ``tcp`` decoder's :class:`~flowpipe.plugins.decoders.transport.StreamEvent`
items and drives the analyzers of :mod:`flowpipe.analyzer` (Packetbeat's contract):

- a TCP connection belongs to the analyzer whose ``ports`` list its server port (else its
  client port: the analyzer's directions are then swapped, so that ``TO_SERVER`` is always
  towards the listed port); on other ports, with ``content_detection`` on, its first bytes are offered to
  every analyzer that can recognise its protocol (:meth:`~flowpipe.analyzer.Analyzer.detect`),
  holding at most ``detection_bytes`` per direction meanwhile, and replayed to the one that
  claims it. Connections nobody claims are counted (``streams.unclaimed``) and skipped.
- DATA goes to ``parse``, GAP to ``on_gap``, FIN to ``on_fin``, CLOSED to ``on_close``; a
  connection idle for the analyzer's ``connection_timeout`` of capture time is closed too.
- UDP datagrams go to the analyzer listing their server (else client) port among those with
  ``udp`` in their ``transports`` (a TCP analyzer that also parses UDP, as DNS, is one of them);
  ICMP messages to every ICMP analyzer.

Each analyzer is configured in its own section of ``protocols`` (``protocols: {http: {ports:
[80, 8000-8100]}, dns: {enabled: false}}``); an analyzer not named keeps its defaults, so with no
section at all every installed analyzer runs on its default ports. Two enabled analyzers may not
claim the same port of the same transport.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from flowpipe import (
    TO_CLIENT,
    TO_SERVER,
    Analyzer,
    AnyValue,
    Bool,
    ByteSize,
    Decoder,
    Event,
    IcmpAnalyzer,
    MapOf,
    Option,
    OptionError,
    StageContext,
    Struct,
    TcpAnalyzer,
    hookimpl,
)
from flowpipe.registry import Registry

from .transport import CLOSED, DATA, DATAGRAM, FIN, GAP, PROTO_TCP, PROTO_UDP, StreamEvent

__all__ = ["ProtocolDecoder"]

EXPIRY_INTERVAL = 1.0
"""Seconds of capture time between two looks for idle connections and timed-out transactions."""
ICMP_PROTOCOLS = frozenset((1, 58))
UNCLAIMED = "streams.unclaimed"
UNCLAIMED_TIMEOUT = 60.0
"""Capture time after which an idle connection no analyzer claimed is forgotten."""
ANALYZER_ERROR = "analyzer_error"


class Connection:
    """A TCP connection as the decoder tracks it: its analyzer, the analyzer's state, activity."""

    __slots__ = ("analyzer", "candidates", "held", "last", "served_by_client", "state")

    def __init__(self, analyzer: TcpAnalyzer | None, last: float, served_by_client: bool = False) -> None:
        self.analyzer = analyzer
        """The analyzer that claimed the connection; None while detecting or when unclaimed."""
        self.state: Any = None
        self.last = last
        self.candidates: list[TcpAnalyzer] | None = None
        """While detecting: the analyzers that have not said no yet."""
        self.held: list[StreamEvent] | None = None
        """While detecting: the stream items seen so far, replayed to the analyzer that claims.
        None with no analyzer: nobody claimed the connection, its items are skipped."""
        self.served_by_client = served_by_client
        """The analyzer's port is the flow's client port: the flow's client is the protocol's
        server (a connection picked up mid-stream with the roles guessed wrong, or an active-mode
        data connection), so directions are swapped for the analyzer."""


class ProtocolSections(Struct):
    """The ``protocols`` mapping: one section per installed analyzer, checked across analyzers."""

    def __init__(self, analyzers: dict[str, type[Analyzer]]) -> None:
        super().__init__(
            *(
                Option(name, Struct(*cls.all_options()), description=cls.summary())
                for name, cls in analyzers.items()
            )
        )
        self.analyzers = analyzers

    def convert(self, value: Any) -> SimpleNamespace:
        sections = super().convert(value)
        claimed: dict[tuple[str, int], str] = {}
        for name, cls in self.analyzers.items():
            section = getattr(sections, name)
            problems = cls.check_config(section)
            if problems:
                raise OptionError(problems[0].message, (name, *problems[0].path))
            if not section.enabled:
                continue
            for transport in cls.transports:
                for port in getattr(section, "ports", ()):
                    other = claimed.setdefault((transport, port), name)
                    if other != name:
                        raise OptionError(
                            f"{transport} port {port} is claimed by both {other!r} and {name!r}; "
                            f"remove it from one of them",
                            (name, "ports"),
                        )
        return sections


class ProtocolDecoder(Decoder):
    """Application analyzers (HTTP, DNS, TLS, ...) turning streams into transaction events."""

    consumes = "stream"
    produces = ""
    default_order = 30
    options = (
        Option(
            "content_detection",
            Bool(),
            True,
            "offer connections on unlisted ports to analyzers that recognise their protocol by content",
        ),
        Option("detection_bytes", ByteSize(), "4KiB", "bytes of each direction held while detecting"),
        Option(
            "protocols",
            MapOf(AnyValue()),
            {},
            "one section per analyzer (its options: flowpipe plugins NAME); unnamed ones keep defaults",
        ),
    )

    @classmethod
    def schema(cls, registry: Any) -> tuple[Option, ...]:
        """The options, with ``protocols`` holding a section per analyzer in ``registry``."""
        if registry is None:
            return cls.all_options()
        sections = ProtocolSections(_analyzer_classes(registry))
        return tuple(
            Option(option.name, sections, description=option.description)
            if option.name == "protocols"
            else option
            for option in cls.all_options()
        )

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        registry = context.registry if context.registry is not None else Registry.default()
        classes = _analyzer_classes(registry)
        sections = config.protocols
        if not isinstance(sections, SimpleNamespace):  # built without the registry's schema
            sections = ProtocolSections(classes).convert(sections)
        self.analyzers: list[Analyzer] = []
        self._tcp_ports: dict[int, TcpAnalyzer] = {}
        self._udp_ports: dict[int, tuple[Analyzer, Callable[[StreamEvent], None]]] = {}
        """UDP port -> the analyzer parsing it and its ``parse_udp``."""
        self._icmp: list[IcmpAnalyzer] = []
        self._detectors: list[TcpAnalyzer] = []
        for name, cls in classes.items():
            section = getattr(sections, name)
            if not section.enabled:
                continue
            analyzer_context = StageContext(
                id=f"{context.id}.{name}",
                counters=context.counters,
                base_dir=context.base_dir,
                batch_size=context.batch_size,
                failures=context.failures,
                registry=registry,
            )
            analyzer = cls(section, analyzer_context)
            analyzer.name = name
            analyzer.start(self._emit)
            self.analyzers.append(analyzer)
            if "udp" in cls.transports and hasattr(analyzer, "parse_udp"):
                self._udp_ports.update(dict.fromkeys(section.ports, (analyzer, analyzer.parse_udp)))
            if isinstance(analyzer, TcpAnalyzer):
                self._tcp_ports.update(dict.fromkeys(section.ports, analyzer))
                if config.content_detection and cls.detect.__func__ is not Analyzer.detect.__func__:  # type: ignore[attr-defined]
                    self._detectors.append(analyzer)
            elif isinstance(analyzer, IcmpAnalyzer):
                self._icmp.append(analyzer)
        self._connections: OrderedDict[Any, Connection] = OrderedDict()
        """TCP connections, least recently active first."""
        self._sink: list[Event] = []
        self._next_expiry = float("-inf")
        self._detection_bytes = config.detection_bytes

    def open(self) -> None:
        for analyzer in self.analyzers:
            analyzer.open()

    def close(self) -> None:
        for analyzer in self.analyzers:
            analyzer.close()

    def _emit(self, event: Event) -> None:
        self._sink.append(event)

    # -- the decoder calls ---------------------------------------------------------------------

    def decode(self, batch: list[StreamEvent], events: list[Event]) -> None:
        """Hand each stream item to its analyzer; the transactions they finish go to ``events``."""
        self._sink = events
        connections = self._connections
        get_connection = connections.get
        move_to_end = connections.move_to_end
        next_expiry = self._next_expiry
        for item in batch:
            kind, timestamp, flow = item[0], item[1], item[2]
            if timestamp >= next_expiry:
                self._expire(timestamp)
                next_expiry = timestamp + EXPIRY_INTERVAL
            if kind == DATAGRAM:
                self._datagram(item)
                continue
            connection = get_connection(flow)
            if connection is None:
                if kind == CLOSED:
                    continue
                connection = self._claim(flow, timestamp)
            else:
                move_to_end(flow)
                connection.last = timestamp
            analyzer = connection.analyzer
            if analyzer is not None:
                self._deliver(analyzer, connection, item)
            elif connection.held is not None:
                self._detect(flow, connection, item)
            elif kind == CLOSED:
                del connections[flow]
        self._next_expiry = next_expiry

    def flush(self, events: list[Event]) -> None:
        """End of input: close every connection, then let every analyzer publish what waits."""
        self._sink = events
        connections = self._connections
        while connections:
            flow, connection = connections.popitem(last=False)
            if connection.analyzer is not None:
                self._call_close(connection.analyzer, flow, connection.state)
        for analyzer in self.analyzers:
            self._guarded(analyzer, analyzer.flush)
        self._gauges()

    def advance(self, now: float, events: list[Event]) -> None:
        """Capture time advanced without packets: close idle connections, expire transactions."""
        self._sink = events
        self._expire(now)
        self._next_expiry = max(self._next_expiry, now + EXPIRY_INTERVAL)

    # -- routing ---------------------------------------------------------------------------------

    def _claim(self, flow: Any, timestamp: float) -> Connection:
        ports = self._tcp_ports
        analyzer = ports.get(flow.server_port)
        served_by_client = False
        if analyzer is None:
            analyzer = ports.get(flow.client_port)
            served_by_client = analyzer is not None
        if analyzer is not None:
            connection = Connection(analyzer, timestamp, served_by_client)
            self.context.counters.add(f"streams.{analyzer.name}")
        elif self._detectors:
            connection = Connection(None, timestamp)
            connection.candidates = list(self._detectors)
            connection.held = []
        else:
            connection = Connection(None, timestamp)
            self.context.counters.add(UNCLAIMED)
        self._connections[flow] = connection
        return connection

    def _detect(self, flow: Any, connection: Connection, item: StreamEvent) -> None:
        """Offer a connection that no port decided to the detecting analyzers."""
        held = connection.held
        assert held is not None and connection.candidates is not None
        kind = item[0]
        if kind == CLOSED:
            del self._connections[flow]
            self.context.counters.add(UNCLAIMED)
            return
        held.append(item)
        if kind != DATA:
            if kind == GAP:
                self._unclaimed(connection)
            return
        from_client = item[3]
        data = b"".join(
            held_item[4] for held_item in held if held_item[0] == DATA and held_item[3] == from_client
        )
        undecided = []
        for analyzer in connection.candidates:
            try:
                verdict = analyzer.detect(data[: self._detection_bytes], from_client)
            except Exception:
                analyzer.drop(ANALYZER_ERROR)
                verdict = False
            if verdict:
                connection.analyzer = analyzer
                connection.candidates = connection.held = None
                self.context.counters.add(f"streams.{analyzer.name}")
                self.context.counters.add("streams.detected")
                for held_item in held:
                    if connection.analyzer is None:  # the analyzer failed on an earlier held item
                        break
                    self._deliver(analyzer, connection, held_item)
                return
            if verdict is None:
                undecided.append(analyzer)
        connection.candidates = undecided
        if not undecided or len(data) >= self._detection_bytes:
            self._unclaimed(connection)

    def _unclaimed(self, connection: Connection) -> None:
        connection.candidates = connection.held = None
        self.context.counters.add(UNCLAIMED)

    def _deliver(self, analyzer: TcpAnalyzer, connection: Connection, item: StreamEvent) -> None:
        kind, _, flow, from_client = item[0], item[1], item[2], item[3]
        direction = TO_SERVER if from_client != connection.served_by_client else TO_CLIENT
        try:
            if kind == DATA:
                connection.state = analyzer.parse(item, flow, direction, connection.state)
            elif kind == GAP:
                state, drop = analyzer.on_gap(flow, direction, item[5], connection.state)
                connection.state = None if drop else state
            elif kind == FIN:
                connection.state = analyzer.on_fin(flow, direction, connection.state)
            else:  # CLOSED
                del self._connections[flow]
                analyzer.on_close(flow, connection.state)
        except Exception:
            self._failed(analyzer, connection, flow)

    def _failed(self, analyzer: Analyzer, connection: Connection, flow: Any) -> None:
        """An analyzer raised: count it, forget the connection's state, parse the rest afresh."""
        analyzer.drop(ANALYZER_ERROR)
        analyzer.context.errors.error(
            ANALYZER_ERROR,
            "analyzer %r failed on %r; its state is dropped",
            analyzer.name,
            flow,
            exc_info=True,
        )
        connection.state = None

    def _datagram(self, item: StreamEvent) -> None:
        flow = item[2]
        protocol = flow.protocol
        if protocol == PROTO_UDP:
            ports = self._udp_ports
            claimed = ports.get(flow.server_port) or ports.get(flow.client_port)
            if claimed is not None:
                self._guarded(claimed[0], claimed[1], item)
            else:
                self.context.counters.add("datagrams.unclaimed")
        elif protocol in ICMP_PROTOCOLS:
            for icmp in self._icmp:
                self._guarded(icmp, icmp.parse_icmp, item)
        elif protocol != PROTO_TCP:
            self.context.counters.add("datagrams.unclaimed")

    def _guarded(self, analyzer: Analyzer, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except Exception:
            analyzer.drop(ANALYZER_ERROR)
            analyzer.context.errors.error(
                ANALYZER_ERROR, "analyzer %r failed; the item is skipped", analyzer.name, exc_info=True
            )

    def _call_close(self, analyzer: TcpAnalyzer, flow: Any, state: Any) -> None:
        self._guarded(analyzer, analyzer.on_close, flow, state)

    # -- time --------------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Expire transactions; close connections idle past their analyzer's connection_timeout."""
        for analyzer in self.analyzers:
            self._guarded(analyzer, analyzer.expire, now)
        connections = self._connections
        while connections:
            flow, connection = next(iter(connections.items()))
            analyzer = connection.analyzer
            timeout = analyzer.connection_timeout if analyzer is not None else UNCLAIMED_TIMEOUT
            if connection.last > now - timeout:
                break
            del connections[flow]
            if analyzer is not None:
                self._call_close(analyzer, flow, connection.state)
        self._gauges()

    def _gauges(self) -> None:
        gauges = self.context.counters.gauges
        gauges["connections"] = len(self._connections)


def _analyzer_classes(registry: Registry) -> dict[str, type[Analyzer]]:
    """Every analyzer in ``registry``, by protocol name, in a stable order."""
    classes: dict[str, type[Analyzer]] = {}
    for name in registry.names("analyzer"):
        info = registry.get("analyzer", name)
        if info is not None:
            classes[name] = info.cls
    return classes


@hookimpl
def flowpipe_add_decoders() -> dict[str, type[Decoder]]:
    return {"protocol": ProtocolDecoder}
