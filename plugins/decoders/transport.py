"""What the packet decoders hand each other: flows, transport packets and stream events.

::

    ip  --list[TransportPacket]-->  tcp  --list[StreamEvent]-->  protocol

- The ``ip`` decoder tracks every conversation as a :class:`Flow` (both directions of a 5-tuple
  and VLAN) and forwards each TCP and UDP packet as a :class:`TransportPacket` that points at its
  flow and says which way it went (``from_client``).
- The ``tcp`` decoder reassembles each TCP connection and forwards, per direction and in order,
  :class:`StreamEvent` items: payload bytes (``DATA``), holes it could not fill (``GAP``), a
  direction's end (``FIN``) and the connection's end (``CLOSED``); UDP datagrams pass as
  ``DATAGRAM``.

A flow object is the identity of a connection: when a 5-tuple is reused after a close, the ``ip``
decoder starts a new :class:`Flow`, so later stages key their per-connection state on the object.
Later stages read a flow's fields; only the ``ip`` decoder writes them.

Payloads are ``bytes`` copies that a receiver may keep.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CLOSED",
    "DATA",
    "DATAGRAM",
    "FIN",
    "GAP",
    "Flow",
    "StreamEvent",
    "TransportPacket",
]

PROTO_TCP = 6
PROTO_UDP = 17

# TCP flags as in the header's low byte.
FIN_FLAG = 0x01
SYN_FLAG = 0x02
RST_FLAG = 0x04
PSH_FLAG = 0x08
ACK_FLAG = 0x10
URG_FLAG = 0x20


class Flow:
    """One bidirectional conversation, as the ``ip`` decoder tracks it.

    The client is the side that opened it: the sender of a SYN, the receiver of a SYN-ACK, and
    otherwise (a flow picked up mid-stream) the side with the higher port, or the first sender
    when that does not decide. Counters are per direction: ``client_*`` counts what the client
    sent, ``server_*`` what the server sent.
    """

    __slots__ = (
        "client_bytes",
        "client_ip",
        "client_packets",
        "client_port",
        "community_id",
        "id",
        "key",
        "last",
        "network_type",
        "protocol",
        "server_bytes",
        "server_ip",
        "server_packets",
        "server_port",
        "start",
        "state",
        "vlan",
    )

    def __init__(
        self,
        key: tuple[object, ...],
        protocol: int,
        network_type: str,
        client_ip: str,
        client_port: int,
        server_ip: str,
        server_port: int,
        start: float,
        vlan: tuple[int, ...] = (),
    ) -> None:
        self.key = key
        """Hashable and the same for both directions (the flow table's key)."""
        self.protocol = protocol
        """IANA protocol number (6 TCP, 17 UDP, 1 ICMP, ...)."""
        self.network_type = network_type
        """``ipv4`` or ``ipv6``."""
        self.client_ip = client_ip
        self.client_port = client_port
        """0 for protocols without ports."""
        self.server_ip = server_ip
        self.server_port = server_port
        self.vlan = vlan
        """VLAN ids, outermost first; empty when untagged."""
        self.start = start
        """Capture time of the first packet."""
        self.last = start
        """Capture time of the latest packet."""
        self.client_packets = 0
        self.client_bytes = 0
        self.server_packets = 0
        self.server_bytes = 0
        self.state = ""
        """TCP: the connection state the ``ip`` decoder saw (for flow records); else empty."""
        self.id = ""
        """``flow.id``: set by the ``ip`` decoder when the flow is created."""
        self.community_id = ""
        """``network.community_id`` (Community ID v1): set by the ``ip`` decoder."""

    def __repr__(self) -> str:
        return (
            f"<Flow {self.protocol} {self.client_ip}:{self.client_port} -> "
            f"{self.server_ip}:{self.server_port} vlan={self.vlan}>"
        )


class TransportPacket(NamedTuple):
    """A TCP or UDP packet, forwarded by the ``ip`` decoder with its flow and direction."""

    timestamp: float
    flow: Flow
    from_client: bool
    payload: bytes
    """The transport payload as captured (after defragmentation)."""
    missing: int = 0
    """Payload bytes the IP header announces but the capture cut off (snapshot length)."""
    flags: int = 0
    """TCP flags (the header's low byte); 0 for UDP."""
    seq: int = 0
    """TCP sequence number; 0 for UDP."""
    ack: int = 0
    """TCP acknowledgement number; 0 for UDP."""
    window: int = 0
    """TCP window (unscaled); 0 for UDP."""


DATA = 0
"""``data`` holds the next in-order payload bytes of one direction."""
GAP = 1
"""``gap`` bytes of one direction are missing (lost or never captured); data continues after."""
FIN = 2
"""One direction ended (FIN seen and everything before it delivered)."""
CLOSED = 3
"""The connection is over (both FINs, RST, timeout, eviction or end of input); ``reason`` says
which. Nothing more comes for this flow object."""
DATAGRAM = 4
"""``data`` is one UDP datagram's payload."""


class StreamEvent(NamedTuple):
    """One item of the ``tcp`` decoder's output."""

    kind: int
    timestamp: float
    flow: Flow
    from_client: bool
    data: bytes = b""
    gap: int = 0
    reason: str = ""
    """For ``CLOSED``: ``fin``, ``rst``, ``timeout``, ``evicted`` or ``end_of_input``."""
