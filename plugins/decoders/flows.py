"""The ``ip`` decoder's flow table and flow records (Packetbeat's flows, Zeek's conn.log).

Every packet the ``ip`` decoder decodes belongs to one :class:`~.transport.Flow`, found in
:attr:`FlowTable.flows` by its key (both directions and the VLAN tags). The decoder does the
per-packet work inline (look-up, counters) and calls this module for what is rare: a new flow
(:meth:`FlowTable.open`), TCP control segments and FIN acknowledgements (:meth:`FlowTable.segment`),
and the clock (:meth:`FlowTable.tick`, when capture time passed :attr:`FlowTable.next_check`).

A flow ends, and its final record (``flow.final: true``) is made:

- TCP: :data:`LINGER` after both FINs were acknowledged (``fin``) or a RST (``rst``); a SYN
  (without ACK, FIN or RST) on a key whose flow saw a FIN or RST ends that flow at once and starts
  a new one;
- after ``timeout`` without packets (``timeout``);
- when a new flow needs room and ``max_flows`` are tracked: the least recently active flow ends
  (``evicted``, counted as ``flows_evicted``);
- at the end of the input (``end_of_input``).

While it lasts, a flow older than ``period`` gets a record (``flow.final: false``, cumulative
counts) every ``period`` in which it had packets. Time is capture time: the clock is checked
when it passed :attr:`FlowTable.next_check` (about every second), so expiry and reports cost
nothing per packet. The table is an ``OrderedDict`` in order of last activity (the decoder moves
a flow to the end on each packet), so expiry and eviction take flows from the front.

A record has ``@timestamp`` (its last packet), ``event.dataset: flow``, ``event.kind: event``,
``event.category: [network]``, ``event.type: [connection]``, ``event.start``, ``event.end``,
``event.duration`` (nanoseconds), ``flow.id`` (16 hex digits, the same in every record of a
flow), ``flow.final``, ``flow.end_reason`` (final records), ``flow.state`` (TCP), ``source.*``
(the client: ``ip``, ``port``, ``packets``, ``bytes``), ``destination.*`` (the server, likewise),
``network.type``, ``network.transport``, ``network.iana_number``, ``network.community_id``,
``network.packets``, ``network.bytes`` (frame lengths on the wire), ``network.vlan.id`` and
``network.inner.vlan.id``, and for ICMP ``icmp.type`` and ``icmp.code`` of its first message.
Ports are left out for protocols without them and for flows of later fragments.

``flow.state`` (TCP only) is Zeek's ``conn_state``, from the flags each side sent (until the
connection closed; what comes while it lingers is counted but changes no state): ``S0``
(SYN, no reply), ``S1`` (established, not closed), ``SF`` (both sides sent FIN), ``REJ`` (SYN
answered by RST), ``S2``/``S3`` (established, only the client/server sent FIN), ``RSTO``/``RSTR``
(established, the client/server reset), ``RSTOS0`` (client SYN then RST, no SYN-ACK), ``RSTRH``
(server SYN-ACK then RST, no SYN seen), ``SH``/``SHR`` (client SYN then FIN / server SYN-ACK then
FIN, no answer) and ``OTH`` (no SYN seen: picked up mid-stream).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from types import SimpleNamespace

from flowpipe import Bool, Duration, Event, Int, Option, Struct
from flowpipe.metrics import Counters

from .transport import (
    ACK_FLAG,
    FIN_ACKED,
    FIN_FLAG,
    NO_FIN,
    RST_FLAG,
    SEEN_ANY,
    SEEN_DATA,
    SYN_FLAG,
    Flow,
)

__all__ = [
    "ENDED",
    "FLOW_OPTIONS",
    "IANA_NUMBERS",
    "LINGER",
    "PORTLESS",
    "TRANSPORTS",
    "VLAN_IDS",
    "WITH_PORTS",
    "FlowTable",
    "conn_state",
]

FLOW_OPTIONS = Struct(
    Option("enabled", Bool(), True, "emit flow records (flows are tracked anyway while a decoder follows)"),
    Option(
        "period",
        Duration(),
        "10s",
        "a flow older than this gets a record (flow.final: false) every period; 0 = final records only",
    ),
    Option("timeout", Duration(), "30s", "a flow ends after this long without packets"),
    Option(
        "max_flows",
        Int(1),
        262144,
        "flows tracked at once; past it the least recently active ends (counted as flows_evicted)",
    ),
)
"""The ``flows`` option of the ``ip`` decoder."""

LINGER = 5.0
"""Seconds a closed TCP flow stays in the table (for late ACKs, retransmitted FINs and RSTs)
before its final record, as Zeek's ``tcp_close_delay`` and ``tcp_reset_delay``."""
CHECK_INTERVAL = 1.0
"""Seconds of capture time between two checks of the clock (shorter when a timeout is)."""
ENDED = FIN_FLAG | RST_FLAG
"""Flags that, once sent by either side of a TCP flow, make a new SYN start a new flow."""
PORTLESS = 0x100
"""Added to the protocol in a flow key of packets without a transport header (later fragments)."""

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
WITH_PORTS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_SCTP))
_NAMES = {
    1: "icmp",
    2: "igmp",
    4: "ipv4",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    59: "ipv6-nonxt",
    89: "ospf",
    103: "pim",
    112: "vrrp",
    132: "sctp",
}
TRANSPORTS = tuple(_NAMES.get(number, str(number)) for number in range(256))
"""``network.transport`` by IP protocol number: the IANA keyword, or the number as text."""
IANA_NUMBERS = tuple(str(number) for number in range(256))
VLAN_IDS = tuple(str(number) for number in range(4096))
ICMP_REPLIES = {PROTO_ICMP: frozenset((0, 14, 16, 18)), PROTO_ICMPV6: frozenset((129, 140, 145))}
"""ICMP types that answer a request: the receiver of one that opens a flow is its client."""

_INACTIVE, _PARTIAL, _SYN_SENT, _ESTABLISHED, _CLOSED, _RESET = range(6)


def _endpoint(sent: int, other: int) -> int:
    """Zeek's state of one TCP endpoint, from the flags it and its peer sent."""
    if sent & RST_FLAG:
        return _RESET
    if sent & FIN_FLAG:
        return _CLOSED
    if sent & SYN_FLAG:
        return _ESTABLISHED if other & SYN_FLAG else _SYN_SENT
    return _PARTIAL if sent else _INACTIVE


def conn_state(client: int, server: int) -> str:
    """Zeek's ``conn_state`` of a TCP flow from the flags each side sent (``Flow.client_tcp``...)."""
    origin, response = _endpoint(client, server), _endpoint(server, client)
    origin_inactive = origin <= _PARTIAL
    response_inactive = response <= _PARTIAL
    if response == _RESET:
        if origin == _SYN_SENT or (origin == _RESET and not (client | server) & SEEN_DATA):
            return "REJ"
        return "RSTRH" if origin_inactive else "RSTR"
    if origin == _RESET:
        if response_inactive:
            return "RSTOS0" if (client | server) & SYN_FLAG else "OTH"
        return "RSTO"
    if origin == _CLOSED and response == _CLOSED:
        return "SF"
    if origin == _CLOSED:
        return "SH" if response_inactive else "S2"
    if response == _CLOSED:
        return "SHR" if origin_inactive else "S3"
    if origin == _SYN_SENT and response == _INACTIVE:
        return "S0"
    if origin == _ESTABLISHED and response == _ESTABLISHED:
        return "S1"
    return "OTH"


_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))
SECONDS_CACHE_SIZE = 4096


def _timestamp(cache: dict[int, str], seconds: float) -> str:
    """An ECS date (RFC 3339 UTC, milliseconds) as ``flowpipe.format_timestamp`` writes it, with
    the text of whole seconds remembered in ``cache``: records name many different seconds (their
    starts), so the one-second cache of ``format_timestamp`` would keep missing."""
    whole, micros = divmod(round(seconds * 1_000_000), 1_000_000)
    text = cache.get(whole)
    if text is None:
        if len(cache) >= SECONDS_CACHE_SIZE:
            cache.clear()
        text = cache[whole] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + _MILLIS[micros // 1000]


class FlowTable:
    """Flows by key, in order of last activity, with their timers and records.

    ``emit``: whether records are made (``flows.enabled``); flows are tracked either way, as the
    ``tcp`` decoder needs them. Records are appended to the ``events`` list each call is given.
    """

    def __init__(self, config: SimpleNamespace, seed: int, emit: bool, counters: Counters) -> None:
        self.flows: OrderedDict[tuple[object, ...], Flow] = OrderedDict()
        """Flows by key, least recently active first."""
        self.timeout: float = config.timeout
        self.period: float = config.period
        self.max_flows: int = config.max_flows
        self.seed = seed
        self.emit = emit
        self.counters = counters
        self.interval = min(CHECK_INTERVAL, self.timeout, self.period or CHECK_INTERVAL)
        self.next_check = float("-inf")
        """Capture time at which the decoder next calls :meth:`tick`."""
        self.next_report = float("inf")
        self.closing: OrderedDict[Flow, None] = OrderedDict()
        """Closed TCP flows still in the table, in the order they closed (waiting out :data:`LINGER`)."""
        self.created = 0
        """Flows opened since the last :meth:`merge_counters`."""
        self._seconds: dict[int, str] = {}

    def open(
        self,
        key: tuple[object, ...],
        sender_is_low: bool,
        timestamp: float,
        network_type: str,
        protocol: int,
        sender_ip: str,
        receiver_ip: str,
        sender_port: int,
        receiver_port: int,
        vlan: tuple[int, ...],
        flags: int,
        icmp: tuple[int, int] | None,
        events: list[Event],
    ) -> Flow:
        """Start a flow with the packet just seen (it is not counted yet) and return it.

        A flow still under ``key`` (a TCP flow that saw a FIN or RST, now reused by a SYN) ends
        first. ``key``: ``(protocol, address, port, address, port, vlan)`` with packed addresses,
        the sender's endpoint first when ``sender_is_low`` (always for a one-way ICMP message), from
        which the flow computes its Community ID; ``sender_port``/``receiver_port``: ports, ICMP's
        type equivalents (see :func:`.community_id.icmp_ports`), or 0; ``flags``: the TCP flags,
        else 0; ``icmp``: ICMP's (type, code), else None.
        """
        flows = self.flows
        old = flows.pop(key, None)
        if old is not None:
            reason = old.end_reason or ("rst" if (old.client_tcp | old.server_tcp) & RST_FLAG else "fin")
            self._end(old, reason, events)
        elif len(flows) >= self.max_flows:
            self._evict(events)
        if icmp is not None:
            sender_is_client = icmp[0] not in ICMP_REPLIES[protocol]
        elif protocol == PROTO_TCP and flags & SYN_FLAG:
            sender_is_client = not flags & ACK_FLAG
        else:
            sender_is_client = sender_port >= receiver_port
        client, server, client_port, server_port = (
            (sender_ip, receiver_ip, sender_port, receiver_port)
            if sender_is_client
            else (receiver_ip, sender_ip, receiver_port, sender_port)
        )
        if icmp is not None or key[0] >= PORTLESS:  # type: ignore[operator]
            client_port = server_port = 0
        flow = Flow(
            key, protocol, network_type, client, client_port, server, server_port, timestamp, vlan, self.seed
        )
        flow.client_is_low = sender_is_low == sender_is_client
        flow.icmp = icmp
        flows[key] = flow
        self.created += 1
        return flow

    def segment(
        self, flow: Flow, from_client: bool, timestamp: float, flags: int, seq: int, ack: int, length: int
    ) -> None:
        """A TCP segment with SYN, FIN or RST, or any while a FIN awaits its acknowledgement.

        Called before the segment is counted. ``length``: its payload bytes (as announced).
        """
        if flow.closed is not None:
            return
        if flags & RST_FLAG:
            self._close(flow, "rst", timestamp, from_client, flags)
            return
        if flags & ACK_FLAG:  # does it acknowledge the other side's FIN?
            awaited = flow.server_fin if from_client else flow.client_fin
            if awaited >= 0 and (ack - awaited) & 0xFFFFFFFF < 0x80000000:
                if from_client:
                    flow.server_fin = FIN_ACKED
                else:
                    flow.client_fin = FIN_ACKED
        if flags & FIN_FLAG:
            end = (seq + length + 1 + (1 if flags & SYN_FLAG else 0)) & 0xFFFFFFFF
            if from_client:
                if flow.client_fin == NO_FIN:
                    flow.client_fin = end
            elif flow.server_fin == NO_FIN:
                flow.server_fin = end
        if flow.client_fin == FIN_ACKED and flow.server_fin == FIN_ACKED:
            self._close(flow, "fin", timestamp, from_client, flags)
        else:
            flow.fin_wait = flow.client_fin >= 0 or flow.server_fin >= 0

    def _close(self, flow: Flow, reason: str, timestamp: float, from_client: bool, flags: int) -> None:
        """The connection is over (``flags``: of the segment that ended it). Its state is settled
        now; its final record comes :data:`LINGER` later."""
        sent = flags | SEEN_ANY
        flow.state = conn_state(
            flow.client_tcp | sent if from_client else flow.client_tcp,
            flow.server_tcp if from_client else flow.server_tcp | sent,
        )
        flow.closed = timestamp
        flow.end_reason = reason
        flow.fin_wait = False
        self.closing[flow] = None

    def tick(self, now: float, events: list[Event]) -> None:
        """Capture time is ``now``: end lingering and idle flows; report long ones when a period is due."""
        if self.next_check == float("-inf"):  # the first packet: the report periods start
            self.next_report = now + self.period if self.period else float("inf")
        flows = self.flows
        closing = self.closing
        deadline = now - LINGER
        while closing:
            flow = next(iter(closing))
            if flow.closed > deadline:
                break
            del flows[flow.key]
            self._end(flow, flow.end_reason, events)
        deadline = now - self.timeout
        while flows:
            flow = next(iter(flows.values()))
            if flow.last > deadline:
                break
            del flows[flow.key]
            self._end(flow, flow.end_reason or "timeout", events)
        if now >= self.next_report:
            due = self.next_report
            self.next_report += ((now - due) // self.period + 1) * self.period
            if self.emit:
                self._report(due, events)
        # A report is made at the first packet at or after its time, so its records hold what
        # came before that time: the same in any worker process that owns the flows.
        self.next_check = min(now + self.interval, self.next_report)

    def _report(self, due: float, events: list[Event]) -> None:
        """A record (``flow.final: false``) of each flow older than a period at report time ``due``
        with packets since its last."""
        oldest = due - self.period
        record = self.record
        for flow in self.flows.values():
            if flow.start <= oldest and flow.last > flow.reported:
                events.append(record(flow, final=False))
                flow.reported = flow.last

    def _evict(self, events: list[Event]) -> None:
        """Make room: the least recently active flow ends."""
        _, flow = self.flows.popitem(last=False)
        if flow.closed is not None:  # it was over anyway
            self._end(flow, flow.end_reason, events)
        else:
            self.counters.add("flows_evicted")
            self._end(flow, "evicted", events)

    def _end(self, flow: Flow, reason: str, events: list[Event]) -> None:
        """Make ``flow``'s final record (it is already out of the table)."""
        if flow.closed is not None:
            self.closing.pop(flow, None)
        flow.end_reason = reason
        flow.fin_wait = False
        if self.emit:
            events.append(self.record(flow, final=True))

    def flush(self, events: list[Event]) -> None:
        """End of input: every flow ends (closed ones with their reason, others ``end_of_input``)."""
        flows = self.flows
        while flows:
            _, flow = flows.popitem(last=False)
            self._end(flow, flow.end_reason or "end_of_input", events)

    def merge_counters(self) -> None:
        """Add the flows opened since the last call to the ``flows`` counter."""
        if self.created:
            self.counters.add("flows", self.created)
            self.created = 0

    def record(self, flow: Flow, final: bool) -> Event:
        """The flow record of ``flow`` as it stands."""
        start, end = flow.start, max(flow.last, flow.start)
        protocol = flow.protocol
        source: dict[str, object] = {"ip": flow.client_ip}
        destination: dict[str, object] = {"ip": flow.server_ip}
        if protocol in WITH_PORTS and flow.key[0] == protocol:
            source["port"] = flow.client_port
            destination["port"] = flow.server_port
        source["packets"] = flow.client_packets
        source["bytes"] = flow.client_bytes
        destination["packets"] = flow.server_packets
        destination["bytes"] = flow.server_bytes
        network: dict[str, object] = {
            "type": flow.network_type,
            "transport": TRANSPORTS[protocol],
            "iana_number": IANA_NUMBERS[protocol],
            "community_id": flow.community_id,
            "packets": flow.client_packets + flow.server_packets,
            "bytes": flow.client_bytes + flow.server_bytes,
        }
        vlan = flow.vlan
        if vlan:
            network["vlan"] = {"id": VLAN_IDS[vlan[0]]}
            if len(vlan) > 1:
                network["inner"] = {"vlan": {"id": VLAN_IDS[vlan[-1]]}}
        details: dict[str, object] = {"id": flow.id, "final": final}
        if protocol == PROTO_TCP:
            if flow.closed is None:
                flow.state = conn_state(flow.client_tcp, flow.server_tcp)
            details["state"] = flow.state
        if final:
            details["end_reason"] = flow.end_reason
        seconds = self._seconds
        end_text = _timestamp(seconds, end)
        event: Event = {
            "@timestamp": end_text,
            "event": {
                "dataset": "flow",
                "kind": "event",
                "category": ["network"],
                "type": ["connection"],
                "start": _timestamp(seconds, start),
                "end": end_text,
                "duration": round((end - start) * 1_000_000) * 1000,
            },
            "flow": details,
            "network": network,
            "source": source,
            "destination": destination,
        }
        if flow.icmp is not None:
            event["icmp"] = {"type": flow.icmp[0], "code": flow.icmp[1]}
        return event
