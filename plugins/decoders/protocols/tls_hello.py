"""ClientHello and ServerHello messages of the ``tls`` analyzer: bytes -> :class:`Hello`.

:func:`parse_client_hello` and :func:`parse_server_hello` take the body of a handshake message
(after its 4-byte header) and return a :class:`Hello`, or raise :class:`MalformedHelloError` when the
message's structure does not hold (a length that runs past its end, a session id over 32
bytes). A known extension whose own content is malformed does not spoil the hello: it is
listed as unparsed. Values are kept as numbers, GREASE included, in wire order; the names for
the event come from :func:`detailed_fields`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .tls_names import (
    compression_name,
    extension_name,
    group_name,
    point_format_name,
    signature_name,
    version_name,
)

__all__ = [
    "GREASE",
    "HELLO_RETRY_RANDOM",
    "Hello",
    "MalformedHelloError",
    "alpn_text",
    "detailed_fields",
    "is_grease",
    "parse_client_hello",
    "parse_server_hello",
]

HELLO_RETRY_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
"""The random of a TLS 1.3 HelloRetryRequest (a ServerHello asking for a second ClientHello)."""

EXT_SERVER_NAME = 0
EXT_STATUS_REQUEST = 5
EXT_SUPPORTED_GROUPS = 10
EXT_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_SESSION_TICKET = 35
EXT_PRE_SHARED_KEY = 41
EXT_SUPPORTED_VERSIONS = 43
EXT_KEY_SHARE = 51

_U16 = struct.Struct("!H")

GREASE = frozenset(0x0A0A + 0x1010 * index for index in range(16))
"""The GREASE code points (RFC 8701: 0x0a0a, 0x1a1a, ..., 0xfafa); ``value in GREASE`` in loops."""


class MalformedHelloError(ValueError):
    """A hello message whose structure does not hold."""


def is_grease(value: int) -> bool:
    """Whether ``value`` is a GREASE code point (RFC 8701: 0x0a0a, 0x1a1a, ..., 0xfafa)."""
    return value in GREASE


@dataclass(slots=True, eq=False)
class Hello:
    """A ClientHello or ServerHello: the numbers as sent (GREASE included, wire order)."""

    client: bool
    """ClientHello (True) or ServerHello."""
    version: int
    """The legacy version field (0x0303 for TLS 1.2 and 1.3)."""
    random: bytes
    session_id: bytes
    ciphers: list[int]
    """Offered cipher suites (client) or the selected one (server)."""
    compression: list[int]
    """Offered compression methods (client) or the selected one (server)."""
    extensions: list[int] = field(default_factory=list)
    """Extension types in wire order."""
    server_names: list[str] = field(default_factory=list)
    alpn: list[bytes] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    """Offered versions (client) or the selected one (server)."""
    groups: list[int] = field(default_factory=list)
    point_formats: list[int] = field(default_factory=list)
    signature_algorithms: list[int] = field(default_factory=list)
    key_share: list[int] = field(default_factory=list)
    """Groups of the offered key shares (client) or of the chosen one (server)."""
    session_ticket: int | None = None
    """Length of the session_ticket extension (0: support announced), None when absent."""
    psk: int | None = None
    """pre_shared_key: identities offered (client) or the selected identity (server); None: absent."""
    status_request: str | None = None
    """status_request: the status type asked for (client: ``ocsp``), ``response`` (server); None: absent."""
    unparsed: list[int] = field(default_factory=list)
    """Extensions present but not decoded (no parser, or malformed content)."""

    @property
    def negotiated_version(self) -> int:
        """The version a ServerHello selects: supported_versions when present, else legacy version."""
        if not self.client and self.supported_versions:
            return self.supported_versions[0]
        return self.version

    @property
    def hello_retry(self) -> bool:
        """Whether this ServerHello is a TLS 1.3 HelloRetryRequest."""
        return not self.client and self.random == HELLO_RETRY_RANDOM


class _Reader:
    """Bounds-checked big-endian reads over ``data[pos:end]``."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, size: int) -> int:
        """Advance by ``size``; return where the taken part starts."""
        start = self.pos
        if start + size > self.end:
            raise MalformedHelloError(f"needs {size} bytes at offset {start}, has {self.end - start}")
        self.pos = start + size
        return start

    def u8(self) -> int:
        return self.data[self.take(1)]

    def u16(self) -> int:
        return _U16.unpack_from(self.data, self.take(2))[0]

    def raw(self, size: int) -> bytes:
        start = self.take(size)
        return self.data[start : start + size]

    def vector(self, length_size: int) -> _Reader:
        """The length-prefixed vector that follows, as a reader of its own."""
        size = self.u8() if length_size == 1 else self.u16()
        start = self.take(size)
        return _Reader(self.data, start, start + size)

    def u16_list(self) -> list[int]:
        """The rest as 16-bit values (a trailing odd byte is malformed)."""
        start, end = self.pos, self.end
        if (end - start) % 2:
            raise MalformedHelloError(f"odd length {end - start} of a list of 16-bit values")
        self.pos = end
        return list(struct.unpack_from(f"!{(end - start) // 2}H", self.data, start))

    def u8_list(self) -> list[int]:
        start = self.pos
        self.pos = self.end
        return list(self.data[start : self.end])

    def more(self) -> bool:
        return self.pos < self.end


def parse_client_hello(body: bytes) -> Hello:
    """Parse a ClientHello's body."""
    reader = _Reader(body)
    version, random, session_id = _common(reader)
    ciphers = reader.vector(2)
    if (ciphers.end - ciphers.pos) % 2:
        raise MalformedHelloError("odd cipher_suites length")
    hello = Hello(True, version, random, session_id, ciphers.u16_list(), reader.vector(1).u8_list())
    _extensions(reader, hello, _CLIENT_EXTENSIONS)
    return hello


def parse_server_hello(body: bytes) -> Hello:
    """Parse a ServerHello's (or HelloRetryRequest's) body."""
    reader = _Reader(body)
    version, random, session_id = _common(reader)
    hello = Hello(False, version, random, session_id, [reader.u16()], [reader.u8()])
    _extensions(reader, hello, _SERVER_EXTENSIONS)
    return hello


def _common(reader: _Reader) -> tuple[int, bytes, bytes]:
    version = reader.u16()
    if version >> 8 != 3:
        raise MalformedHelloError(f"not a TLS hello: version {version >> 8}.{version & 0xFF}")
    random = reader.raw(32)
    session_id = reader.vector(1)
    if session_id.end - session_id.pos > 32:
        raise MalformedHelloError("session id longer than 32 bytes")
    return version, random, session_id.raw(session_id.end - session_id.pos)


def _extensions(reader: _Reader, hello: Hello, parsers: dict[int, Callable[[_Reader, Hello], None]]) -> None:
    if not reader.more():  # hellos without extensions (SSL 3.0, old TLS clients)
        return
    extensions = reader.vector(2)
    if reader.more():
        raise MalformedHelloError("bytes after the extensions")
    seen = set()
    body = extensions.data
    while extensions.more():
        code = _U16.unpack_from(body, extensions.take(2))[0]
        size = _U16.unpack_from(body, extensions.take(2))[0]
        start = extensions.take(size)
        hello.extensions.append(code)
        if code in GREASE:
            continue
        parser = parsers.get(code)
        if parser is None or code in seen:
            hello.unparsed.append(code)
            continue
        seen.add(code)
        data = _Reader(body, start, start + size)
        try:
            parser(data, hello)
            if data.more():
                raise MalformedHelloError(f"bytes left in extension {code}")
        except MalformedHelloError:
            hello.unparsed.append(code)


def _server_name(data: _Reader, hello: Hello) -> None:
    names = data.vector(2)
    while names.more():
        kind = names.u8()
        name = names.vector(2)
        if kind == 0:
            hello.server_names.append(name.raw(name.end - name.pos).decode("utf-8", "replace"))


def _alpn(data: _Reader, hello: Hello) -> None:
    protocols = data.vector(2)
    while protocols.more():
        protocol = protocols.vector(1)
        hello.alpn.append(protocol.raw(protocol.end - protocol.pos))


def _client_versions(data: _Reader, hello: Hello) -> None:
    hello.supported_versions = data.vector(1).u16_list()


def _server_version(data: _Reader, hello: Hello) -> None:
    hello.supported_versions = [data.u16()]


def _groups(data: _Reader, hello: Hello) -> None:
    hello.groups = data.vector(2).u16_list()


def _point_formats(data: _Reader, hello: Hello) -> None:
    hello.point_formats = data.vector(1).u8_list()


def _signature_algorithms(data: _Reader, hello: Hello) -> None:
    hello.signature_algorithms = data.vector(2).u16_list()


def _session_ticket(data: _Reader, hello: Hello) -> None:
    hello.session_ticket = data.end - data.pos
    data.pos = data.end


def _client_key_share(data: _Reader, hello: Hello) -> None:
    shares = data.vector(2)
    while shares.more():
        hello.key_share.append(shares.u16())
        shares.vector(2)


def _server_key_share(data: _Reader, hello: Hello) -> None:
    hello.key_share = [data.u16()]
    if data.more():  # a ServerHello's key share; a HelloRetryRequest names the group only
        data.vector(2)


def _client_psk(data: _Reader, hello: Hello) -> None:
    identities = data.vector(2)
    count = 0
    while identities.more():
        identities.vector(2)
        identities.take(4)  # obfuscated_ticket_age
        count += 1
    data.vector(2)  # binders
    hello.psk = count


def _server_psk(data: _Reader, hello: Hello) -> None:
    hello.psk = data.u16()


def _client_status_request(data: _Reader, hello: Hello) -> None:
    kind = data.u8()
    hello.status_request = "ocsp" if kind == 1 else str(kind)
    data.pos = data.end


def _server_status_request(data: _Reader, hello: Hello) -> None:
    hello.status_request = "response"


_CLIENT_EXTENSIONS: dict[int, Callable[[_Reader, Hello], None]] = {
    EXT_SERVER_NAME: _server_name,
    EXT_STATUS_REQUEST: _client_status_request,
    EXT_SUPPORTED_GROUPS: _groups,
    EXT_POINT_FORMATS: _point_formats,
    EXT_SIGNATURE_ALGORITHMS: _signature_algorithms,
    EXT_ALPN: _alpn,
    EXT_SESSION_TICKET: _session_ticket,
    EXT_PRE_SHARED_KEY: _client_psk,
    EXT_SUPPORTED_VERSIONS: _client_versions,
    EXT_KEY_SHARE: _client_key_share,
}
_SERVER_EXTENSIONS: dict[int, Callable[[_Reader, Hello], None]] = {
    EXT_STATUS_REQUEST: _server_status_request,
    EXT_POINT_FORMATS: _point_formats,
    EXT_ALPN: _alpn,
    EXT_SESSION_TICKET: _session_ticket,
    EXT_PRE_SHARED_KEY: _server_psk,
    EXT_SUPPORTED_VERSIONS: _server_version,
    EXT_KEY_SHARE: _server_key_share,
}


def alpn_text(protocol: bytes) -> str:
    """An ALPN protocol id as text (ids are ASCII in practice)."""
    return protocol.decode("utf-8", "replace")


def _names(values: list[int], name: Callable[[int], str]) -> list[str]:
    return [name(value) for value in values if value not in GREASE]


def detailed_fields(hello: Hello) -> dict:
    """Packetbeat's ``tls.detailed.client_hello`` / ``server_hello`` block for ``hello``."""
    block: dict = {"version": f"{hello.version >> 8}.{hello.version & 0xFF}", "random": hello.random.hex()}
    if hello.session_id:
        block["session_id"] = hello.session_id.hex()
    if hello.client:
        block["supported_compression_methods"] = [compression_name(code) for code in hello.compression]
    else:
        block["selected_compression_method"] = compression_name(hello.compression[0])
    extensions: dict = {}
    if hello.server_names:
        extensions["server_name_indication"] = list(hello.server_names)
    if hello.alpn:
        extensions["application_layer_protocol_negotiation"] = [alpn_text(item) for item in hello.alpn]
    if hello.session_ticket is not None:
        extensions["session_ticket"] = f"({hello.session_ticket} bytes)" if hello.session_ticket else ""
    if hello.supported_versions:
        versions = _names(hello.supported_versions, version_name)
        extensions["supported_versions"] = versions if hello.client else versions[0]
    if hello.groups:
        extensions["supported_groups"] = _names(hello.groups, group_name)
    if hello.signature_algorithms:
        extensions["signature_algorithms"] = _names(hello.signature_algorithms, signature_name)
    if hello.point_formats:
        extensions["ec_points_formats"] = [point_format_name(code) for code in hello.point_formats]
    if hello.key_share:
        groups = _names(hello.key_share, group_name)
        extensions["key_share"] = groups if hello.client else groups[0]
    if hello.psk is not None:
        extensions["pre_shared_key"] = {"identities" if hello.client else "selected_identity": hello.psk}
    if hello.status_request is not None:
        extensions["status_request"] = {"type": hello.status_request} if hello.client else {"response": True}
    if hello.unparsed:
        extensions["_unparsed_"] = [extension_name(code) for code in hello.unparsed]
    if extensions:
        block["extensions"] = extensions
    return block
