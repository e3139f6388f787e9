"""Request/response correlation shared by every analyzer, and a transaction's common fields.

An analyzer parses bytes into :class:`Message` objects and hands them to its
:class:`Transactions`: requests wait per connection (and per ``key`` where the protocol has one,
such as a DNS id) until a response takes the oldest; responses without a request, requests that
time out (``transaction_timeout`` of capture time), requests still waiting when their connection
closes or the input ends, and requests beyond ``max_pending`` are published alone with a note.
Nothing is dropped silently.

Every published transaction gets the common fields Packetbeat ships (``type``, ``status``,
``event.*``, ``network.*``, ``source``/``destination`` and ``client``/``server`` with bytes,
``related.ip``, ``notes``, and the raw ``request``/``response`` texts under ``send_request``/
``send_response``); the analyzer's ``fill`` function adds the protocol's own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .event import Event, format_timestamp

if TYPE_CHECKING:
    from .analyzer import Analyzer, FlowInfo

__all__ = [
    "NOTE_CLOSED",
    "NOTE_END_OF_INPUT",
    "NOTE_OVERFLOW",
    "NOTE_TIMEOUT",
    "NOTE_UNMATCHED_RESPONSE",
    "Message",
    "Transactions",
    "transaction_event",
]

NOTE_TIMEOUT = "no response within transaction_timeout"
NOTE_CLOSED = "no response before the connection closed"
NOTE_END_OF_INPUT = "no response before the end of input"
NOTE_OVERFLOW = "no response: more than max_pending requests waited on the connection"
NOTE_UNMATCHED_RESPONSE = "response without a request"
TRANSPORTS = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 132: "sctp"}
"""``network.transport`` by IANA protocol number."""
PORTED = frozenset((6, 17, 132))
"""Protocols with ports (``client.port``, ``server.port``)."""
TABLE_LIMIT = 100_000
"""Requests one analyzer keeps waiting in all; beyond it the oldest is published alone."""


@dataclass(slots=True, eq=False)
class Message:
    """One parsed request or response."""

    timestamp: float
    """Capture time of the message's first byte."""
    from_client: bool
    """Whether the flow's client (the connection's opener: ``packet.from_client``) sent it."""
    size: int = 0
    """Bytes the message took on the wire (headers and body)."""
    fields: dict[str, Any] = field(default_factory=dict)
    """What the analyzer parsed, in the form its ``fill`` function wants."""
    notes: list[str] = field(default_factory=list)
    """Problems met while parsing (truncation, malformed parts)."""
    raw: bytes | None = None
    """The message as text for ``request``/``response`` (set when send_request/send_response)."""
    error: bool = False
    """The message reports a failure (an error status): the transaction's status is Error."""
    done: bool = False
    """Set by :class:`Transactions` once the request was published."""


Fill = Callable[[Event, "Message | None", "Message | None"], None]


class Transactions:
    """Pairs one analyzer's requests with responses, per connection and key, in order.

    ``fill(event, request, response)`` adds the protocol's fields to an event that already has
    the common ones; either message may be None (a request alone, a response alone).
    """

    def __init__(self, analyzer: Analyzer, fill: Fill, limit: int = TABLE_LIMIT) -> None:
        self.analyzer = analyzer
        self.fill = fill
        self.limit = limit
        self.timeout: float = analyzer.config.transaction_timeout
        self.max_pending: int = analyzer.config.max_pending
        self._pending: dict[Any, dict[Hashable, deque[Message]]] = {}
        """Waiting requests: flow -> key -> requests, oldest first."""
        self._order: deque[tuple[Any, Hashable, Message]] = deque()
        """Every waiting request in arrival order (published ones are skipped lazily)."""
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Requests waiting for a response."""
        return self._waiting

    def request(self, flow: FlowInfo, message: Message, key: Hashable = None) -> None:
        """A request: it waits for the next response on ``flow`` with the same ``key``."""
        queue = self._pending.setdefault(flow, {}).setdefault(key, deque())
        if len(queue) >= self.max_pending:
            self._done_alone(flow, queue.popleft(), NOTE_OVERFLOW)
        queue.append(message)
        self._order.append((flow, key, message))
        self._waiting += 1
        if self._waiting > self.limit:
            self._publish_oldest(NOTE_OVERFLOW)
        elif len(self._order) > 2 * self._waiting + 1024:
            self._order = deque(entry for entry in self._order if not entry[2].done)

    def response(self, flow: FlowInfo, message: Message, key: Hashable = None) -> Message | None:
        """A response: publish it with the oldest waiting request of ``flow`` and ``key``.

        Returns that request, or None when none waited (the response is published alone, noted).
        """
        keys = self._pending.get(flow)
        queue = keys.get(key) if keys else None
        if not queue:
            message.notes.append(NOTE_UNMATCHED_RESPONSE)
            self.analyzer.count("unmatched_responses")
            self._publish(flow, None, message)
            return None
        request = queue.popleft()
        if not queue:
            del keys[key]  # type: ignore[union-attr]
            if not keys:
                del self._pending[flow]
        request.done = True
        self._waiting -= 1
        self._publish(flow, request, message)
        return request

    def publish_alone(self, flow: FlowInfo, message: Message, answer: bool = False) -> None:
        """Publish a message that expects no counterpart (an ICMP error, a DHCP message).

        Its sender is the client (with ``answer``, its receiver is: it is shown as a response);
        its status comes from its own ``error`` alone, and it gets no note.
        """
        request, response = (None, message) if answer else (message, None)
        event = transaction_event(self.analyzer, flow, request, response, alone=True)
        self.fill(event, request, response)
        self.analyzer.count("transactions")
        self.analyzer.publish(event)

    def pending(self, flow: FlowInfo, key: Hashable = None) -> int:
        """Requests of ``flow`` and ``key`` waiting for a response."""
        keys = self._pending.get(flow)
        queue = keys.get(key) if keys else None
        return len(queue) if queue else 0

    def close(self, flow: FlowInfo, note: str = NOTE_CLOSED) -> None:
        """``flow`` ended: publish its waiting requests alone, with ``note``."""
        keys = self._pending.pop(flow, None)
        if not keys:
            return
        for queue in keys.values():
            for request in queue:
                self._done_alone(flow, request, note)

    def expire(self, now: float) -> None:
        """Publish alone the requests that waited ``transaction_timeout`` by capture time ``now``."""
        order = self._order
        deadline = now - self.timeout
        while order:
            flow, key, request = order[0]
            if request.done:
                order.popleft()
            elif request.timestamp <= deadline:
                order.popleft()
                self._remove(flow, key, request)
                self._done_alone(flow, request, NOTE_TIMEOUT)
            else:
                break

    def flush(self) -> None:
        """End of input: publish every waiting request alone."""
        for flow in list(self._pending):
            self.close(flow, NOTE_END_OF_INPUT)
        self._order.clear()

    # -- internals -------------------------------------------------------------------------------

    def _publish_oldest(self, note: str) -> None:
        order = self._order
        while order:
            flow, key, request = order.popleft()
            if not request.done:
                self._remove(flow, key, request)
                self._done_alone(flow, request, note)
                return

    def _remove(self, flow: Any, key: Hashable, request: Message) -> None:
        keys = self._pending[flow]
        queue = keys[key]
        queue.remove(request)
        if not queue:
            del keys[key]
            if not keys:
                del self._pending[flow]

    def _done_alone(self, flow: Any, request: Message, note: str) -> None:
        request.done = True
        self._waiting -= 1
        request.notes.append(note)
        self.analyzer.count("unmatched_requests")
        self._publish(flow, request, None)

    def _publish(self, flow: FlowInfo, request: Message | None, response: Message | None) -> None:
        event = transaction_event(self.analyzer, flow, request, response)
        self.fill(event, request, response)
        self.analyzer.count("transactions")
        self.analyzer.publish(event)


def transaction_event(
    analyzer: Analyzer,
    flow: FlowInfo,
    request: Message | None,
    response: Message | None,
    alone: bool = False,
) -> Event:
    """A transaction event with the fields every protocol shares (Packetbeat's and ECS's names).

    The requester is ``source``/``client``, the responder ``destination``/``server``: for a
    request alone or a pair, the request's sender; for a response alone, its receiver. The
    status is Error when a message says so, or a request has no response (unless ``alone``: the
    message expects none).
    """
    if request is not None:
        first, requester_is_client = request, request.from_client
        request_bytes, notes = request.size, request.notes
        error = request.error or (response.error if response is not None else not alone)
    else:
        assert response is not None
        first, requester_is_client = response, not response.from_client
        request_bytes, notes = 0, []
        error = response.error
    if response is not None:
        response_bytes = response.size
        if response.notes:
            notes = notes + response.notes
    else:
        response_bytes = 0
    if requester_is_client:
        client_ip, client_port, server_ip, server_port = (
            flow.client_ip,
            flow.client_port,
            flow.server_ip,
            flow.server_port,
        )
    else:
        client_ip, client_port, server_ip, server_port = (
            flow.server_ip,
            flow.server_port,
            flow.client_ip,
            flow.client_port,
        )
    name = analyzer.name
    start = format_timestamp(first.timestamp)
    event_info: dict[str, Any] = {
        "dataset": name,
        "kind": "event",
        "category": list(analyzer.categories),
        "type": ["connection", "protocol", "error"] if error else ["connection", "protocol"],
        "start": start,
    }
    if request is not None and response is not None:
        event_info["end"] = format_timestamp(response.timestamp)
        event_info["duration"] = max(0, round((response.timestamp - request.timestamp) * 1e6)) * 1000
    else:
        event_info["end"] = start
    protocol = flow.protocol
    network: dict[str, Any] = {
        "type": flow.network_type,
        "transport": TRANSPORTS.get(protocol) or str(protocol),
        "protocol": name,
        "bytes": request_bytes + response_bytes,
    }
    if flow.community_id:
        network["community_id"] = flow.community_id
    if flow.vlan:
        network["vlan"] = {"id": flow.vlan[0]}
    if protocol in PORTED:
        client = {"ip": client_ip, "port": client_port, "bytes": request_bytes}
        server = {"ip": server_ip, "port": server_port, "bytes": response_bytes}
    else:
        client = {"ip": client_ip, "bytes": request_bytes}
        server = {"ip": server_ip, "bytes": response_bytes}
    event: Event = {
        "@timestamp": start,
        "type": name,
        "status": "Error" if error else "OK",
        "event": event_info,
        "network": network,
        "source": client.copy(),
        "destination": server.copy(),
        "client": client,
        "server": server,
        "related": {"ip": [client_ip] if client_ip == server_ip else [client_ip, server_ip]},
    }
    if notes:
        event["notes"] = list(notes)
    config = analyzer.config
    if config.send_request and request is not None and request.raw is not None:
        event["request"] = request.raw.decode("utf-8", "replace")
    if config.send_response and response is not None and response.raw is not None:
        event["response"] = response.raw.decode("utf-8", "replace")
    return event
