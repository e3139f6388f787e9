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

import hashlib
import struct
from typing import NamedTuple

from .community_id import community_id, icmp_ports

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
SEEN_DATA = 0x100
"""In :attr:`Flow.client_tcp` and :attr:`Flow.server_tcp`: that side sent TCP payload."""
SEEN_ANY = 0x200
"""In :attr:`Flow.client_tcp` and :attr:`Flow.server_tcp`: that side sent a segment."""
NO_FIN = -1
"""In :attr:`Flow.client_fin` and :attr:`Flow.server_fin`: no FIN seen from that side."""
FIN_ACKED = -2
"""In :attr:`Flow.client_fin` and :attr:`Flow.server_fin`: that side's FIN was acknowledged."""


_START = struct.Struct("!d")


class Flow:
    """One bidirectional conversation, as the ``ip`` decoder tracks it.

    The client is the side that opened it: the sender of a SYN, the receiver of a SYN-ACK, and
    otherwise (a flow picked up mid-stream) the side with the higher port, or the first sender
    when that does not decide (ICMP: the receiver when the first message is a reply, else the
    sender). Counters are per direction: ``client_*`` counts what the client sent, ``server_*``
    what the server sent (packets, and bytes as frame lengths on the wire).
    """

    __slots__ = (
        "_ids",
        "client_bytes",
        "client_fin",
        "client_ip",
        "client_is_low",
        "client_packets",
        "client_port",
        "client_tcp",
        "closed",
        "end_reason",
        "fin_wait",
        "icmp",
        "key",
        "last",
        "network_type",
        "protocol",
        "reported",
        "server_bytes",
        "server_fin",
        "server_ip",
        "server_packets",
        "server_port",
        "server_tcp",
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
        seed: int | None = None,
    ) -> None:
        self.key = key
        """Hashable and the same for both directions (the flow table's key). With a ``seed`` (the
        ``ip`` decoder's flows) it is ``(protocol, address, port, address, port, vlan)`` with packed
        addresses, a one-way ICMP message's sender first: what the Community ID is hashed from."""
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
        """TCP: the connection state the ``ip`` decoder saw (for flow records); else empty. Set, as
        a Zeek ``conn_state`` code (``S0``, ``SF``, ``REJ``, ...), when a flow record is made."""
        self._ids: int | tuple[str, str] | None = seed
        """The Community ID seed until :attr:`community_id` or :attr:`id` is first read, then both
        (computed once, when first needed: most flows of a busy link never make an event); None
        for a flow that has neither (one not made by the ``ip`` decoder)."""
        self.client_is_low = True
        """Whether the client's (address, port) is the first endpoint of :attr:`key`: a packet
        from the key's first endpoint is from the client exactly when this is true."""
        self.icmp: tuple[int, int] | None = None
        """ICMP and ICMPv6: (type, code) of the flow's first message; else None."""
        self.client_tcp = 0
        """TCP: the flags of every segment the client sent, or-ed (plus ``SEEN_DATA`` once it sent
        payload and ``SEEN_ANY`` once it sent anything)."""
        self.server_tcp = 0
        """TCP: as :attr:`client_tcp`, for the server."""
        self.client_fin = NO_FIN
        """TCP: the sequence number that acknowledges the client's FIN, ``NO_FIN`` before one was
        seen, ``FIN_ACKED`` once the server acknowledged it."""
        self.server_fin = NO_FIN
        """TCP: as :attr:`client_fin`, for the server's FIN."""
        self.fin_wait = False
        """TCP: a FIN awaits its acknowledgement (the ``ip`` decoder then reads every segment's ACK)."""
        self.closed: float | None = None
        """Capture time the connection ended (both FINs acknowledged, or a RST); None while open."""
        self.end_reason = ""
        """Why the flow ended (``flow.end_reason``): ``fin``, ``rst``, ``timeout``, ``evicted`` or
        ``end_of_input``; empty while it goes on."""
        self.reported = -1.0
        """Capture time of the last packet counted in the flow's latest record (-1.0: none yet)."""

    @property
    def community_id(self) -> str:
        """``network.community_id`` (Community ID v1, hashed from :attr:`key`); empty without a seed."""
        ids = self._ids
        if type(ids) is not tuple:
            ids = self._make_ids()
        return ids[0]

    @property
    def id(self) -> str:
        """``flow.id``: 16 hex digits hashed from the Community ID, the VLAN tags and the start
        time, so the same for every record of a flow and different for a key's later flows."""
        ids = self._ids
        if type(ids) is not tuple:
            ids = self._make_ids()
        return ids[1]

    def _make_ids(self) -> tuple[str, str]:
        seed = self._ids
        if seed is None:
            ids = ("", "")
        else:
            _, low, low_port, high, high_port, _ = self.key
            one_way = self.icmp is not None and icmp_ports(self.protocol, *self.icmp)[2]
            community = community_id(low, high, self.protocol, low_port, high_port, seed, one_way)  # type: ignore[arg-type]
            data = _START.pack(self.start) + community.encode("ascii")
            if self.vlan:
                data += b"".join(vlan.to_bytes(2, "big") for vlan in self.vlan)
            ids = (community, hashlib.blake2b(data, digest_size=8).hexdigest())
        self._ids = ids
        return ids

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
