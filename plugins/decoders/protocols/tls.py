"""The ``tls`` analyzer: one event per TLS handshake, with Packetbeat's and ECS's ``tls.*`` fields.

The parts, as in every analyzer:

1. options (:class:`TlsAnalyzer.options`): Packetbeat's ``send_certificates``,
   ``include_raw_certificates``, ``include_detailed_fields`` and ``fingerprints``;
2. the parser (:class:`TlsConnection`): per direction, TLS records (split across segments or
   several per segment) and the handshake messages they carry (one message may span records),
   bounded by ``max_message_size``; hellos are decoded by :mod:`.tls_hello`, certificates by
   :mod:`.x509`, fingerprints computed by :mod:`.tls_fingerprints`;
3. transactions: the ClientHello is the request, the ServerHello (with the certificates that
   follow it) the response; both go to the shared :class:`~flowpipe.Transactions` helper when
   the handshake is over;
4. publishing (:meth:`TlsAnalyzer.fill_event`).

The handshake is over when it is **established** (as Packetbeat decides: both sides sent
ChangeCipherSpec; for TLS 1.3, whose handshake is encrypted after the ServerHello, both sides
sent encrypted records), when an alert ends it (a fatal alert or close_notify), when the
connection closes or idles out, at a gap in the stream, or at bytes that are not TLS records.
Then the connection's state is kept but its bytes are only counted (``tls.skipped_bytes``).
A transaction whose handshake was not established has ``status: Error``.

TLS 1.3 encrypts everything after the ServerHello: its certificates and the server's ALPN
choice (``tls.next_protocol``) cannot be seen; they are reported for TLS 1.2 and older.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from flowpipe import (
    AppPacket,
    Bool,
    Choice,
    Event,
    FlowInfo,
    ListOf,
    Message,
    Option,
    TcpAnalyzer,
    Transactions,
    hookimpl,
)
from flowpipe.transactions import NOTE_CLOSED

from .tls_fingerprints import ja3, ja3s, ja4
from .tls_hello import (
    GREASE,
    Hello,
    MalformedHelloError,
    alpn_text,
    detailed_fields,
    parse_client_hello,
    parse_server_hello,
)
from .tls_names import alert_name, cipher_name, group_name, version_name
from .x509 import CertificateInfo, fingerprints, parse_certificate, pem

__all__ = ["TlsAnalyzer", "TlsConnection"]

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
RECORD_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT))
MAX_RECORD = (1 << 14) + 2048
"""Largest record body: 2^14 bytes of plaintext plus the expansion compression and ciphers may add."""
CLIENT_HELLO, SERVER_HELLO, CERTIFICATE, SERVER_KEY_EXCHANGE = 1, 2, 11, 12
CERTIFICATE_REQUEST, CLIENT_KEY_EXCHANGE = 13, 16
TLS13 = 0x0304
FATAL = 2
CLOSE_NOTIFY = 0
NAMED_CURVE = 3
NOTE_ALERT = "no ServerHello: the handshake ended with an alert"
NOTE_NOT_ESTABLISHED = "the handshake was not completed"

_RECORD = struct.Struct("!BBBH")


def _skip_front(data: bytes, pending: int) -> tuple[bytes, int]:
    """Leave out the first ``pending`` bytes, as far as ``data`` goes: (what is left, bytes still to skip)."""
    skipped = min(pending, len(data))
    return data[skipped:], pending - skipped


def _pass_over(pos: int, end: int, size: int) -> tuple[int, int]:
    """Step over a body of ``size`` bytes at ``pos`` of a buffer ending at ``end``.

    Returns the position after it (``end`` when it goes past) and how many of its bytes are still to
    come (to be skipped with :func:`_skip_front`)."""
    if end - pos >= size:
        return pos + size, 0
    return end, size - (end - pos)


class TlsStream:
    """One direction of a connection: its record and handshake reassembly, and what it sent."""

    __slots__ = (
        "alerts",
        "application_data",
        "buffer",
        "bytes",
        "certificate_requested",
        "certificates",
        "change_cipher_spec",
        "encrypted",
        "from_client",
        "handshake",
        "handshake_skip",
        "key_exchange",
        "message_time",
        "record_time",
        "skip",
    )

    def __init__(self) -> None:
        self.buffer = bytearray()
        """Bytes of an incomplete record."""
        self.skip = 0
        """Bytes of an opaque record still to come (not buffered)."""
        self.handshake = bytearray()
        """Bytes of an incomplete handshake message."""
        self.handshake_skip = 0
        """Bytes of a handshake message over max_message_size still to come."""
        self.record_time = 0.0
        self.message_time = 0.0
        self.bytes = 0
        self.from_client = True
        """Whether the flow's client (``packet.from_client``) sends this stream."""
        self.encrypted = False
        """Records from here on are encrypted: their content is not parsed."""
        self.change_cipher_spec = False
        self.application_data = False
        self.key_exchange = False
        self.certificate_requested = False
        self.certificates: list[bytes] = []
        self.alerts: list[tuple[int, int]] = []


class TlsConnection:
    """The handshake of one connection, parsed from both directions."""

    __slots__ = (
        "client_hello",
        "client_hello_stream",
        "client_hello_time",
        "curve",
        "done",
        "ended",
        "hello_retry",
        "limit",
        "notes",
        "problems",
        "server_hello",
        "server_hello_time",
        "server_stream",
        "streams",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streams = (TlsStream(), TlsStream())
        """Indexed by direction (TO_SERVER, TO_CLIENT)."""
        self.client_hello: Hello | None = None
        self.server_hello: Hello | None = None
        self.client_hello_time = 0.0
        self.server_hello_time = 0.0
        self.server_stream: TlsStream | None = None
        """The stream that sent the ServerHello."""
        self.client_hello_stream: TlsStream | None = None
        self.hello_retry = False
        self.curve: int | None = None
        """The ECDHE group of a TLS 1.2 ServerKeyExchange."""
        self.ended = False
        """An alert ended the handshake."""
        self.done = False
        """The handshake is over (or the stream is not TLS): bytes are no longer parsed."""
        self.notes: list[str] = []
        self.problems: list[str] = []
        """Drop reasons for the analyzer to count."""

    # -- what the handshake says -------------------------------------------------------------

    @property
    def tls13(self) -> bool:
        return self.server_hello is not None and self.server_hello.negotiated_version >= TLS13

    @property
    def client_stream(self) -> TlsStream:
        """The stream that sent the ClientHello, else the one that is not the server's."""
        if self.client_hello_stream is not None:
            return self.client_hello_stream
        opener, answerer = self.streams
        return answerer if self.server_stream is opener else opener

    @property
    def server_side(self) -> TlsStream:
        """The stream that sent the ServerHello, else the one that is not the client's."""
        if self.server_stream is not None:
            return self.server_stream
        opener, answerer = self.streams
        return answerer if self.client_stream is opener else opener

    @property
    def established(self) -> bool:
        server = self.server_stream
        if server is None:
            return False
        client = self.client_stream
        if self.tls13:
            return server.application_data and client.application_data
        return server.change_cipher_spec and client.change_cipher_spec

    @property
    def resumption_method(self) -> str | None:
        """``id`` or ``ticket`` when the session was resumed, else None."""
        client_hello, server_hello, server = self.client_hello, self.server_hello, self.server_stream
        if client_hello is None or server_hello is None or server is None:
            return None
        if self.tls13:
            return "ticket" if server_hello.psk is not None else None
        if server.key_exchange or server.certificates or self.client_stream.key_exchange:
            return None
        if client_hello.session_ticket and server_hello.session_ticket is not None:
            return "ticket"
        if client_hello.session_id and client_hello.session_id == server_hello.session_id:
            return "ticket" if client_hello.session_ticket else "id"
        return None

    # -- parsing ---------------------------------------------------------------------------------

    def feed(self, direction: int, data: bytes, timestamp: float, from_client: bool) -> None:
        """Parse the next bytes of ``direction`` (``from_client``: sent by the flow's client)."""
        stream = self.streams[direction]
        stream.bytes += len(data)
        stream.from_client = from_client
        if stream.skip:
            data, stream.skip = _skip_front(data, stream.skip)
        if not data:
            return
        buffer = stream.buffer
        if not buffer:
            stream.record_time = timestamp
        buffer += data
        pos, end = 0, len(buffer)
        while end - pos >= 5 and not self.done:
            kind, major, minor, length = _RECORD.unpack_from(buffer, pos)
            if kind not in RECORD_TYPES or major != 3 or minor > 4 or length > MAX_RECORD:
                self._not_tls(f"record type {kind}, version {major}.{minor}, length {length}")
                return
            if kind in (HANDSHAKE, ALERT) and not stream.encrypted:
                if end - pos - 5 < length:
                    break
                body = bytes(buffer[pos + 5 : pos + 5 + length])
                pos += 5 + length
                if kind == HANDSHAKE:
                    self._handshake(stream, body)
                else:
                    self._alert(stream, body)
            else:
                self._opaque(stream, kind)
                pos, stream.skip = _pass_over(pos + 5, end, length)
            stream.record_time = timestamp
        del buffer[:pos]

    def _not_tls(self, what: str) -> None:
        self.notes.append(f"not a TLS record ({what}): the rest of the connection is skipped")
        self.problems.append("malformed_record")
        self.done = True

    def _opaque(self, stream: TlsStream, kind: int) -> None:
        if kind == CHANGE_CIPHER_SPEC:
            stream.change_cipher_spec = True
            # After a HelloRetryRequest, TLS 1.3's middlebox ChangeCipherSpec precedes a plaintext hello.
            if not self.hello_retry or self.server_hello is not None:
                stream.encrypted = True
        elif kind == APPLICATION_DATA:
            stream.application_data = True
            stream.encrypted = True

    def _alert(self, stream: TlsStream, body: bytes) -> None:
        if not body or len(body) % 2:
            self.problems.append("malformed_alert")
            return
        for index in range(0, len(body), 2):
            level, code = body[index], body[index + 1]
            stream.alerts.append((level, code))
            if level == FATAL or code == CLOSE_NOTIFY:
                self.ended = True

    def _handshake(self, stream: TlsStream, body: bytes) -> None:
        if stream.handshake_skip:
            body, stream.handshake_skip = _skip_front(body, stream.handshake_skip)
            if not body:
                return
        messages = stream.handshake
        if not messages:
            stream.message_time = stream.record_time
        messages += body
        pos, end = 0, len(messages)
        while end - pos >= 4:
            kind = messages[pos]
            length = int.from_bytes(messages[pos + 1 : pos + 4], "big")
            if length > self.limit:
                self.notes.append(f"message truncated at max_message_size ({self.limit} bytes)")
                self.problems.append("truncated")
                pos, stream.handshake_skip = _pass_over(pos + 4, end, length)
                continue
            if end - pos - 4 < length:
                break
            message = bytes(messages[pos + 4 : pos + 4 + length])
            pos += 4 + length
            self._message(stream, kind, message)
            stream.message_time = stream.record_time
        del messages[:pos]

    def _message(self, stream: TlsStream, kind: int, body: bytes) -> None:
        if kind == CLIENT_HELLO:
            if self.client_hello is None:  # a second one answers a HelloRetryRequest
                self.client_hello = self._hello(parse_client_hello, body, "ClientHello")
                self.client_hello_time, self.client_hello_stream = stream.message_time, stream
        elif kind == SERVER_HELLO:
            if self.server_hello is None:
                hello = self._hello(parse_server_hello, body, "ServerHello")
                if hello is not None and hello.hello_retry:
                    self.hello_retry = True
                elif hello is not None:
                    self.server_hello, self.server_hello_time, self.server_stream = (
                        hello,
                        stream.message_time,
                        stream,
                    )
        elif kind == CERTIFICATE:
            stream.certificates = self._certificates(body)
        elif kind == SERVER_KEY_EXCHANGE:
            stream.key_exchange = True
            hello = self.server_hello
            ecdhe = hello is not None and "_ECDHE_" in cipher_name(hello.ciphers[0])
            if ecdhe and len(body) >= 3 and body[0] == NAMED_CURVE:
                self.curve = int.from_bytes(body[1:3], "big")
        elif kind == CLIENT_KEY_EXCHANGE:
            stream.key_exchange = True
        elif kind == CERTIFICATE_REQUEST:
            stream.certificate_requested = True

    def _hello(self, parse: Callable[[bytes], Hello], body: bytes, name: str) -> Hello | None:
        try:
            return parse(body)
        except MalformedHelloError as error:
            self.notes.append(f"malformed {name}: {error}")
            self.problems.append("malformed_hello")
            return None

    def _certificates(self, body: bytes) -> list[bytes]:
        """The DER certificates of a (TLS 1.2 and older) Certificate message."""
        if len(body) < 3 or int.from_bytes(body[:3], "big") != len(body) - 3:
            self.problems.append("malformed_certificate")
            self.notes.append("malformed Certificate message")
            return []
        certificates, pos = [], 3
        while pos < len(body):
            size = int.from_bytes(body[pos : pos + 3], "big")
            if pos + 3 + size > len(body):
                self.problems.append("malformed_certificate")
                self.notes.append("malformed Certificate message")
                return []
            certificates.append(body[pos + 3 : pos + 3 + size])
            pos += 3 + size
        return certificates


class TlsAnalyzer(TcpAnalyzer):
    """TLS handshakes: versions, cipher suites, SNI, ALPN, certificates, JA3/JA3S/JA4 fingerprints."""

    default_ports = (443, 993, 995, 5223, 8443, 8883, 9243)
    default_max_message_size = "64KiB"
    options = (
        Option(
            "send_certificates",
            Bool(),
            True,
            "add the certificates (tls.server.x509, tls.detailed.server_certificate, ...) of TLS <= 1.2",
        ),
        Option(
            "include_raw_certificates",
            Bool(),
            False,
            "add the certificate chains in PEM form as tls.server/client.certificate_chain",
        ),
        Option("include_detailed_fields", Bool(), True, "add Packetbeat's tls.detailed fields"),
        Option(
            "fingerprints",
            ListOf(Choice("sha1", "sha256", "md5")),
            ["sha1"],
            "hashes of the certificates to add as tls.server/client.hash.<algorithm>",
        ),
    )

    def open(self) -> None:
        self.transactions = Transactions(self, self.fill_event)

    @classmethod
    def detect(cls, data: bytes, from_client: bool) -> bool | None:
        """A TLS handshake record from the client whose first message is a ClientHello."""
        if not from_client or not b"\x16\x03".startswith(data[:2]) or (len(data) > 2 and data[2] > 4):
            return False
        if len(data) < 6:
            return None
        length = int.from_bytes(data[3:5], "big")
        if not 0 < length <= MAX_RECORD or data[5] != CLIENT_HELLO:
            return False
        if len(data) >= 11:  # the hello's length and legacy version
            return int.from_bytes(data[6:9], "big") >= 38 and data[9] == 3
        return None

    # -- the analyzer contract --------------------------------------------------------------------

    def parse(
        self, packet: AppPacket, flow: FlowInfo, direction: int, state: TlsConnection | None
    ) -> TlsConnection:
        if state is None:
            state = TlsConnection(self.config.max_message_size)
        if state.done:
            self.count("skipped_bytes", len(packet.data))
            return state
        state.feed(direction, packet.data, packet.timestamp, packet.from_client)
        for reason in state.problems:
            self.drop(reason)
        state.problems.clear()
        if state.done or state.ended or state.established:
            self._finish(flow, state)
        return state

    def on_gap(
        self, flow: FlowInfo, direction: int, nbytes: int, state: TlsConnection | None
    ) -> tuple[TlsConnection, bool]:
        if state is None:
            state = TlsConnection(self.config.max_message_size)
            state.done = True
        elif not state.done:
            state.notes.append(f"{nbytes} bytes of the stream were lost")
            self._finish(flow, state)
        return state, False

    def on_close(self, flow: FlowInfo, state: TlsConnection | None) -> None:
        if state is not None and not state.done:
            self._finish(flow, state)

    # -- transactions ------------------------------------------------------------------------------

    def _finish(self, flow: FlowInfo, state: TlsConnection) -> None:
        """The handshake is over: publish it as one transaction, and parse no more."""
        state.done = True
        client_hello, server_hello = state.client_hello, state.server_hello
        if client_hello is None and server_hello is None:
            return
        client, server = state.client_stream, state.server_stream
        established = state.established
        notes = state.notes
        if server_hello is not None and not established and not state.ended:
            notes.append(NOTE_NOT_ESTABLISHED)
        request = response = None
        if client_hello is not None:
            request = Message(state.client_hello_time, client.from_client, client.bytes, {"tls": state})
            request.notes = notes
            self.transactions.request(flow, request)
        if server_hello is not None and server is not None:
            response = Message(
                state.server_hello_time,
                server.from_client,
                server.bytes,
                {"tls": state},
                error=not established,
            )
            if request is None:
                response.notes = notes
            self.transactions.response(flow, response)
        elif request is not None:
            self.transactions.close(flow, NOTE_ALERT if state.ended else NOTE_CLOSED)

    # -- publishing -------------------------------------------------------------------------------

    def fill_event(self, event: Event, request: Message | None, response: Message | None) -> None:
        """Add the ``tls`` fields (and ``destination.domain``, the SNI) of a handshake."""
        message = request if request is not None else response
        assert message is not None
        state: TlsConnection = message.fields["tls"]
        config = self.config
        client_hello, server_hello = state.client_hello, state.server_hello
        method = state.resumption_method
        tls: dict[str, Any] = {}
        client: dict[str, Any] = {}
        server: dict[str, Any] = {}
        details: dict[str, Any] = {}
        client_print: tuple[str, str] | None = None
        server_print: tuple[str, str] | None = None
        if server_hello is not None:
            server_print = ja3s(server_hello)
            version = server_hello.negotiated_version
            tls["version"], tls["version_protocol"] = _ecs_version(version)
            tls["cipher"] = cipher_name(server_hello.ciphers[0])
            curve = state.curve if not state.tls13 else next(iter(server_hello.key_share), None)
            if curve is not None:
                tls["curve"] = group_name(curve)
            if server_hello.alpn:
                tls["next_protocol"] = alpn_text(server_hello.alpn[0])
            server["ja3s"] = server_print[1]
            details["version"] = version_name(version)
        tls["established"] = state.established
        tls["resumed"] = method is not None
        if client_hello is not None:
            if client_hello.server_names:
                client["server_name"] = client_hello.server_names[0]
                event["destination"]["domain"] = event["server"]["domain"] = client_hello.server_names[0]
            client["supported_ciphers"] = [
                cipher_name(code) for code in client_hello.ciphers if code not in GREASE
            ]
            client_print = ja3(client_hello)
            client["ja3"] = client_print[1]
            client["ja4"] = ja4(client_hello)
        if config.send_certificates:
            if state.server_stream is not None:
                self._certificates(state.server_stream.certificates, server, details, "server")
            self._certificates(state.client_stream.certificates, client, details, "client")
        if client:
            tls["client"] = client
        if server:
            tls["server"] = server
        if config.include_detailed_fields:
            tls["detailed"] = self._detailed(state, details, method, client_print, server_print)
        event["tls"] = tls

    def _certificates(
        self, chain: list[bytes], side: dict[str, Any], details: dict[str, Any], role: str
    ) -> None:
        described: list[CertificateInfo] = []
        for der in chain:
            info = parse_certificate(der)
            if info is None:
                self.drop("malformed_certificate")
                break
            described.append(info)
        if described:
            leaf = described[0]
            side.update(
                subject=leaf.subject,
                issuer=leaf.issuer,
                not_before=leaf.not_before,
                not_after=leaf.not_after,
                x509=leaf.x509(),
            )
            if self.config.fingerprints:
                side["hash"] = fingerprints(chain[0], self.config.fingerprints)
            details[f"{role}_certificate"] = leaf.detailed()
            if len(described) > 1:
                details[f"{role}_certificate_chain"] = [info.detailed() for info in described[1:]]
        if chain and self.config.include_raw_certificates:
            side["certificate_chain"] = [pem(der) for der in chain]

    def _detailed(
        self,
        state: TlsConnection,
        details: dict[str, Any],
        method: str | None,
        client_print: tuple[str, str] | None,
        server_print: tuple[str, str] | None,
    ) -> dict[str, Any]:
        """Packetbeat's ``tls.detailed`` block; ``*_print``: the hellos' JA3 / JA3S ``(string, hash)``."""
        server = state.server_stream
        details["client_certificate_requested"] = server is not None and server.certificate_requested
        if method is not None:
            details["resumption_method"] = method
        if state.hello_retry:
            details["hello_retry_request"] = True
        if state.client_hello is not None and client_print is not None:
            details["client_hello"] = detailed_fields(state.client_hello)
            details["client_hello"]["ja3_string"] = client_print[0]
        if state.server_hello is not None and server_print is not None:
            details["server_hello"] = detailed_fields(state.server_hello)
            details["server_hello"]["selected_cipher"] = cipher_name(state.server_hello.ciphers[0])
            details["server_hello"]["ja3s_string"] = server_print[0]
        alerts = [
            {
                "source": role,
                "severity": "fatal" if level == FATAL else "warning",
                "code": code,
                "type": alert_name(code),
            }
            for role, stream in (("client", state.client_stream), ("server", state.server_side))
            for level, code in stream.alerts
        ]
        if alerts:
            details["alerts"] = alerts
            details["alert_types"] = [alert["type"] for alert in alerts]
        return details


def _ecs_version(version: int) -> tuple[str, str]:
    """ECS ``tls.version`` and ``tls.version_protocol`` of a protocol version."""
    major, minor = version >> 8, version & 0xFF
    if major == 3:
        return (f"1.{minor - 1}", "tls") if minor else ("3.0", "ssl")
    return f"{major}.{minor}", "unknown"


@hookimpl
def flowpipe_add_analyzers() -> dict[str, type[TcpAnalyzer]]:
    return {"tls": TlsAnalyzer}
