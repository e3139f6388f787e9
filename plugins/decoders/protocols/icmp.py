"""The ``icmp`` analyzer: ICMP and ICMPv6 requests paired with their replies, as Packetbeat's icmp.

Echo request/reply (ICMPv4 types 8/0, ICMPv6 128/129) and, for ICMPv4, timestamp (13/14),
information (15/16) and address mask (17/18) requests are transactions: a request waits for the
reply with the same identifier and sequence number on its flow (the ``ip`` decoder keys ICMP flows
so that a request and its reply share one, its sender being the client). A request still without
reply after ``transaction_timeout`` of capture time is published alone, ``status: Error``; a reply
without request is published alone with a note. Every other message is published alone when it
is seen: error messages (destination unreachable, source quench, time exceeded, parameter
problem; for ICMPv6 also packet too big) with ``status: Error``, the rest (redirects, router and
neighbour discovery, ...) with ``status: OK``.

The parts, as in every analyzer:

1. options: only the common ones (no ports: ICMP has none);
2. the parser (:func:`parse_message`): one ICMP message -> a :class:`~flowpipe.Message`;
3. transactions: the shared :class:`~flowpipe.Transactions` helper, keyed by (identifier,
   sequence) within the flow;
4. publishing (:func:`fill_event`): ``icmp.version``, ``icmp.request.*``, ``icmp.response.*`` and
   Packetbeat's ``path`` (the server's address).

``icmp.request.message``/``icmp.response.message`` are the texts Packetbeat shows (gopacket's
names: ``EchoRequest``, ``DestinationUnreachable(Port)``, ``TimeExceeded(TTLExceeded)``, ...).
``client.bytes``/``server.bytes`` are the sizes of the ICMP messages, header included.
"""

from __future__ import annotations

import struct

from flowpipe import AppPacket, Event, IcmpAnalyzer, Message, Transactions, hookimpl

__all__ = ["IcmpProtocolAnalyzer", "fill_event", "message_text", "parse_message"]

PROTO_ICMPV6 = 58
ECHO_HEADER = 8
"""Bytes of an ICMP header with identifier and sequence number."""
_ID_SEQ = struct.Struct("!HH").unpack_from

V4_REQUESTS = frozenset((8, 13, 15, 17))
"""ICMPv4 requests that expect a reply: echo, timestamp, information, address mask."""
V4_REPLIES = frozenset((0, 14, 16, 18))
V6_REQUESTS = frozenset((128,))
V6_REPLIES = frozenset((129,))
V4_ERRORS = frozenset((3, 4, 11, 12))
"""Destination unreachable, source quench, time exceeded, parameter problem."""
V6_ERRORS = frozenset((1, 2, 3, 4))
"""Destination unreachable, packet too big, time exceeded, parameter problem."""

V4_NAMES: dict[int, tuple[str, dict[int, str] | None]] = {
    0: ("EchoReply", None),
    3: (
        "DestinationUnreachable",
        {
            0: "Net",
            1: "Host",
            2: "Protocol",
            3: "Port",
            4: "FragmentationNeeded",
            5: "SourceRoutingFailed",
            6: "NetUnknown",
            7: "HostUnknown",
            8: "SourceIsolated",
            9: "NetAdminProhibited",
            10: "HostAdminProhibited",
            11: "NetTOS",
            12: "HostTOS",
            13: "CommAdminProhibited",
            14: "HostPrecedence",
            15: "PrecedenceCutoff",
        },
    ),
    4: ("SourceQuench", None),
    5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
    13: ("TimestampRequest", None),
    14: ("TimestampReply", None),
    15: ("InfoRequest", None),
    16: ("InfoReply", None),
    17: ("AddressMaskRequest", None),
    18: ("AddressMaskReply", None),
}
"""ICMPv4 type -> (name, code names or None when the type has no codes): gopacket's texts."""
V6_NAMES: dict[int, tuple[str, dict[int, str] | None]] = {
    1: (
        "DestinationUnreachable",
        {
            0: "NoRouteToDst",
            1: "AdminProhibited",
            2: "BeyondScopeOfSrc",
            3: "AddressUnreachable",
            4: "PortUnreachable",
            5: "SrcAddressFailedPolicy",
            6: "RejectRouteToDst",
        },
    ),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    4: (
        "ParameterProblem",
        {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedNextHeader"},
    ),
    128: ("EchoRequest", None),
    129: ("EchoReply", None),
    133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None),
    135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None),
    137: ("Redirect", None),
}
"""ICMPv6 type -> (name, code names or None): gopacket's texts."""


def message_text(version: int, icmp_type: int, code: int) -> str:
    """The human-readable form of a type and code, as Packetbeat writes ``icmp.*.message``."""
    known = (V6_NAMES if version == 6 else V4_NAMES).get(icmp_type)
    if known is None:
        return f"{icmp_type}({code})"
    name, codes = known
    if codes is None and code == 0:
        return name
    code_name = codes.get(code) if codes is not None else None
    return f"{name}({code_name})" if code_name is not None else f"{name}(Code: {code})"


def parse_message(
    data: bytes, version: int, timestamp: float, from_client: bool, size: int
) -> Message | None:
    """One ICMP message (``data`` from its header on) -> a Message; None when too short.

    ``size``: the message's length on the wire (``data`` may be cut by the capture).
    ``fields`` holds ``version``, ``type``, ``code``, ``text`` and, for the request/reply types,
    ``id`` and ``seq``.
    """
    if len(data) < 4:
        return None
    icmp_type, code = data[0], data[1]
    fields: dict[str, int | str] = {
        "version": version,
        "type": icmp_type,
        "code": code,
        "text": message_text(version, icmp_type, code),
    }
    if version == 6:
        paired = icmp_type in V6_REQUESTS or icmp_type in V6_REPLIES
        error = icmp_type in V6_ERRORS
    else:
        paired = icmp_type in V4_REQUESTS or icmp_type in V4_REPLIES
        error = icmp_type in V4_ERRORS
    if paired:
        if len(data) < ECHO_HEADER:
            return None
        fields["id"], fields["seq"] = _ID_SEQ(data, 4)
    return Message(timestamp=timestamp, from_client=from_client, size=size, fields=fields, error=error)


class IcmpProtocolAnalyzer(IcmpAnalyzer):
    """ICMP and ICMPv6: request/reply pairs as transactions, other messages alone."""

    def open(self) -> None:
        self.transactions = Transactions(self, fill_event)

    def parse_icmp(self, packet: AppPacket) -> None:
        flow = packet.flow
        version = 6 if flow.protocol == PROTO_ICMPV6 else 4
        data = packet.data
        size = len(data) + packet.gap
        message = parse_message(data, version, packet.timestamp, packet.from_client, size)
        if message is None:
            self.drop("truncated")
            return
        fields = message.fields
        icmp_type = fields["type"]
        if "id" not in fields:
            self.transactions.publish_alone(flow, message)  # its sender is the client
        elif icmp_type in (V6_REPLIES if version == 6 else V4_REPLIES):
            self.transactions.response(flow, message, (fields["id"], fields["seq"]))
        else:
            self.transactions.request(flow, message, (fields["id"], fields["seq"]))

    def expire(self, now: float) -> None:
        self.transactions.expire(now)

    def flush(self) -> None:
        self.transactions.flush()


def fill_event(event: Event, request: Message | None, response: Message | None) -> None:
    """Add the icmp fields of a transaction (Packetbeat's names), and ``path``."""
    first = request if request is not None else response
    assert first is not None
    icmp: dict[str, object] = {"version": first.fields["version"]}
    if request is not None:
        icmp["request"] = _section(request)
    if response is not None:
        icmp["response"] = _section(response)
    event["icmp"] = icmp
    event["path"] = event["server"]["ip"]


def _section(message: Message) -> dict[str, object]:
    fields = message.fields
    section: dict[str, object] = {"message": fields["text"], "type": fields["type"], "code": fields["code"]}
    if "id" in fields:
        section["id"] = fields["id"]
        section["seq"] = fields["seq"]
    return section


@hookimpl
def flowpipe_add_analyzers() -> dict[str, type[IcmpAnalyzer]]:
    return {"icmp": IcmpProtocolAnalyzer}
