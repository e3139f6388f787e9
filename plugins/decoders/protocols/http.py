"""The ``http`` analyzer: HTTP/1.x requests and responses as Packetbeat-compatible transactions.

Messages are framed as RFC 9112 says: a request's body by ``Transfer-Encoding: chunked`` (chunk
extensions and trailers allowed) or ``Content-Length``, else it has none; a response's the same
way, except that responses to HEAD, 1xx, 204 and 304 have none and a response with neither
header runs until the server closes the connection (HTTP/1.0 style). A start line tells a request
from a response, whichever side sent it (a connection picked up midway may have its sides
swapped). Interim 1xx responses (the
``100 Continue`` of ``Expect: 100-continue``) are skipped; after ``101 Switching Protocols`` or a
2xx answer to CONNECT the connection speaks another protocol and is no longer parsed. Requests
may be pipelined.

Bodies are counted, not buffered: only the header section is held, up to ``max_message_size``
(beyond it the headers still frame the message but are not kept, and the event has a note). The
bodies whose Content-Type contains one of ``include_body_for`` are kept up to the same size.
A gap in a body only shortens what is kept (note ``gap in body``); a gap anywhere else loses the
message boundaries, so what is pending is published and parsing resumes at the next segment
that starts a message. The credentials of ``Authorization`` and ``Proxy-Authorization`` never
reach an event: their values read ``*`` in headers and raw text, and a Basic user name becomes
``user.name``.

The module has the four parts of every analyzer: options (:class:`HttpAnalyzer.options`), the
parser (:class:`HttpParser`, one per direction), transactions (the shared
:class:`~flowpipe.Transactions` pairs requests with responses in order) and publishing
(:func:`fill_event`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
from collections import deque
from typing import Any

from flowpipe import (
    TO_SERVER,
    AppPacket,
    Bool,
    Event,
    FlowInfo,
    ListOf,
    Message,
    Option,
    OptionError,
    Str,
    TcpAnalyzer,
    Transactions,
    hookimpl,
)
from flowpipe.options import OptionType

__all__ = ["HttpAnalyzer", "HttpParser", "fill_event"]

NOTE_GAP_IN_BODY = "gap in body"
NOTE_GAP_LOST = "message incomplete: a gap in the stream cut it"
NOTE_ENDED = "message incomplete: the stream ended inside it"
NOTE_BAD_FRAMING = "malformed body framing: the rest of the stream is skipped until a new message"
NOTE_BAD_REAL_IP = "real_ip_header value is not an IP address"
NOTE_GAP_PENDING = "no response: a gap in the stream lost the message boundaries"

# Parser states. The first five take whole lines; the others count body bytes or skip.
START, HEADERS, CHUNK_SIZE, CHUNK_END, TRAILERS, BODY, CHUNK_DATA, UNTIL_CLOSE, SKIP = range(9)
LINE_STATES = frozenset((START, HEADERS, CHUNK_SIZE, CHUNK_END, TRAILERS))

REQUEST, RESPONSE = 0, 1
"""What :meth:`HttpParser.feed` reports: request headers complete (register the request now, so
that a response framed by its method can follow), or a whole response."""

REDACTED = "*"
SECRET_HEADERS = frozenset((b"authorization", b"proxy-authorization"))
FOLDING = (b" ", b"\t")
"""First bytes of an obsolete folded line (more of the previous header's value)."""
TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
MAX_LENGTH_DIGITS = 18
"""Longest Content-Length accepted (int() of a longer digit string is slow, or refused)."""
MAX_METHOD = 32
"""Longest method content detection accepts (real ones are at most 17 characters)."""
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_CACHED_HOST = 300
"""Longest Host value (or authority) whose parts are cached (a name is at most 253 characters)."""

_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32} [^\x00-\x20\x7f]+ HTTP/1\.[0-9][\r\n]")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] [0-9]{3}[ \r\n]")
_VERSIONS = {f"HTTP/1.{digit}".encode(): f"1.{digit}" for digit in range(10)}
"""The HTTP-version of a start line (``HTTP/1.x``) -> the event's ``http.version``."""
_PORT = re.compile(r"[0-9]{1,5}")
_ABSOLUTE_REST = re.compile(r"([^/?#]*)([^#]*)")
"""What follows ``scheme://`` in an absolute-form target: the authority, then path and query."""


# -- options -------------------------------------------------------------------------------------


class HeaderSelection(OptionType):
    """``send_headers``: ``true`` (every header), ``false`` (none) or a list of header names."""

    name = "boolean or list of header names"

    def convert(self, value: Any) -> bool | tuple[str, ...]:
        if isinstance(value, bool):
            return value
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) and item.strip() for item in items):
            raise OptionError("expected true, false or a list of header names")
        return tuple(sorted({item.strip().lower() for item in items}))


class HttpSettings:
    """What the parsers need of the analyzer's configuration, converted once."""

    __slots__ = (
        "all_headers",
        "analyzer",
        "body_types",
        "header_names",
        "limit",
        "max_pending",
        "noted_headers",
        "real_ip_header",
        "send_request",
        "send_response",
    )

    def __init__(self, analyzer: HttpAnalyzer) -> None:
        config = analyzer.config
        self.analyzer = analyzer
        self.limit: int = config.max_message_size
        self.max_pending: int = config.max_pending
        self.send_request: bool = config.send_request
        self.send_response: bool = config.send_response
        selection = config.send_headers
        self.all_headers: bool = config.send_all_headers or selection is True
        self.header_names = frozenset(
            name.encode("latin-1") for name in (() if isinstance(selection, bool) else selection)
        )
        self.real_ip_header: bytes | None = config.real_ip_header.strip().lower().encode("latin-1") or None
        self.body_types = tuple(kind.lower().encode("latin-1") for kind in config.include_body_for)
        noted = {b"content-length", b"transfer-encoding", *_INFO_HEADERS, *self.header_names}
        if self.real_ip_header:
            noted.add(self.real_ip_header)
        self.noted_headers: frozenset[bytes] | None = None if self.all_headers else frozenset(noted)
        """Names of the headers that matter (framing, event fields, chosen ones); None: every header."""


# -- parser --------------------------------------------------------------------------------------


class HttpConnection:
    """Per connection: a parser for each direction and what they share.

    ``client`` parses what is sent towards the analyzer's port (``TO_SERVER``), ``server`` the
    other direction; either may carry requests or responses (see :class:`HttpParser`).
    """

    __slots__ = ("client", "methods", "server", "tunnel")

    def __init__(self, settings: HttpSettings, lost: bool = False) -> None:
        self.methods: deque[str] = deque(maxlen=settings.max_pending)
        """Methods of the requests whose final response has not started: it frames the body."""
        self.tunnel = False
        """Set by 101 Switching Protocols or a 2xx answer to CONNECT: nothing more is HTTP/1."""
        self.client = HttpParser(settings, self, lost)
        self.server = HttpParser(settings, self, lost)


class HttpParser:
    """Splits one direction of a connection into HTTP messages; bodies are counted, not kept.

    Requests and responses are told apart by their start line (a status line starts with
    ``HTTP/``), not by direction: a connection picked up midway may have its sides swapped.

    :meth:`feed` returns what it finished as ``(REQUEST, message)`` once a request's headers are
    complete (its size and body grow in place until its end) and ``(RESPONSE, message)`` once a
    response is complete.
    """

    __slots__ = (
        "body",
        "body_room",
        "chunked",
        "conn",
        "content_length",
        "ended",
        "fields",
        "from_client",
        "gapped",
        "header_bytes",
        "headers",
        "last_header",
        "line",
        "line_cut",
        "line_time",
        "message",
        "out",
        "probing",
        "raw",
        "remaining",
        "request",
        "secret",
        "settings",
        "state",
        "transfer_encoding",
        "truncated",
    )

    def __init__(self, settings: HttpSettings, conn: HttpConnection, lost: bool = False) -> None:
        self.settings = settings
        self.conn = conn
        self.from_client = True
        """``packet.from_client`` of this direction (the flow's view), which messages record."""
        self.state = SKIP if lost else START
        self.probing = lost
        """Since a loss of sync: a segment that does not start a message is not counted."""
        self.ended = False
        self.line = bytearray()
        """The start of a line whose end has not arrived, at most ``limit`` bytes."""
        self.line_cut = 0
        """Bytes of that line beyond ``limit``, not kept."""
        self.line_time = 0.0
        self.out: list[tuple[int, Message]] = []
        self._reset()

    def _reset(self) -> None:
        self.message: Message | None = None
        self.request = True
        """The message is a request (its start line is not a status line)."""
        self.fields: dict[str, Any] = {}
        self.headers: dict[str, str] | None = None
        self.last_header: str | None = None
        """The stored header a folded line would continue."""
        self.secret = False
        """The last header line was Authorization or Proxy-Authorization: its folded lines are secret too."""
        self.raw: bytearray | None = None
        self.body: bytearray | None = None
        self.body_room = 0
        self.header_bytes = 0
        self.remaining = 0
        self.content_length: int | None = None
        self.chunked = False
        self.transfer_encoding = False
        self.truncated = False
        self.gapped = False

    # -- input -----------------------------------------------------------------------------------

    def feed(self, data: bytes, timestamp: float, from_client: bool) -> list[tuple[int, Message]]:
        """Parse the next bytes of the stream (``from_client``: the packet's); return the messages
        they finished."""
        out = self.out = []
        self.from_client = from_client
        if self.ended or self.conn.tunnel:
            return out
        if self.state == SKIP:
            self.state = START  # lost sync: try whether this segment starts a message
        elif self.probing and (self.line or self.line_cut):
            self.line.clear()  # still lost: a message must start at a segment's start
            self.line_cut = 0
        position, end = 0, len(data)
        whole_blocks = True
        while position < end:
            state = self.state
            if state in LINE_STATES:
                if (
                    state == HEADERS
                    and whole_blocks
                    and not (self.line or self.line_cut)
                    and not data.startswith(b"\r\n", position)
                ):
                    # The usual case: the rest of the header section is in this segment.
                    block_end = data.find(b"\r\n\r\n", position)
                    if block_end >= 0 and self._header_block(data, position, block_end):
                        position = block_end + 4
                        continue
                    whole_blocks = False  # line by line for the rest of the segment
                newline = data.find(b"\n", position)
                if newline < 0:
                    self._partial_line(data, position, timestamp)
                    break
                if self.line or self.line_cut:
                    self._keep_line_part(data, position, newline + 1)
                    line, cut, started = bytes(self.line), self.line_cut, self.line_time
                    self.line.clear()
                    self.line_cut = 0
                else:
                    line, cut, started = data[position : newline + 1], 0, timestamp
                position = newline + 1
                self._line(line, cut, started)
            elif state in (BODY, CHUNK_DATA):
                take = min(self.remaining, end - position)
                self._body(data, position, take)
                position += take
                self.remaining -= take
                if not self.remaining:
                    self._body_part_done()
            elif state == UNTIL_CLOSE:
                self._body(data, position, end - position)
                break
            else:  # SKIP: lost sync, or a tunnel
                break
        return out

    def gap(self, nbytes: int) -> tuple[bool, list[tuple[int, Message]]]:
        """``nbytes`` were lost. Return whether the parser absorbed them (a gap inside a body, or
        while skipping), and the messages the gap finished."""
        out = self.out = []
        state = self.state
        if state == SKIP or self.conn.tunnel:
            return True, out
        if state == UNTIL_CLOSE or (state in (BODY, CHUNK_DATA) and nbytes <= self.remaining):
            assert self.message is not None
            if not self.gapped:
                self.gapped = True
                self.message.notes.append(NOTE_GAP_IN_BODY)
            self.message.size += nbytes
            self.fields["body_bytes"] += nbytes
            if self.body is not None:
                self.body_room = len(self.body)  # the body kept so far ends at the gap
            if state != UNTIL_CLOSE:
                self.remaining -= nbytes
                if not self.remaining:
                    self._body_part_done()
            return True, out
        return False, out

    def finish(self, note: str) -> list[tuple[int, Message]]:
        """The stream ended (or lost its sync): complete what can be, with ``note`` when cut."""
        out = self.out = []
        state, message = self.state, self.message
        if message is not None and not self.conn.tunnel:
            if state == HEADERS:
                self.settings.analyzer.drop("incomplete")
            else:
                if state != UNTIL_CLOSE:
                    message.notes.append(note)
                self._complete()
        elif state == START and self.line.strip() and not self.probing:
            self.settings.analyzer.drop("incomplete")
        self._reset()
        self.line.clear()
        self.line_cut = 0
        self.state = SKIP
        self.ended = True
        return out

    # -- lines -------------------------------------------------------------------------------------

    def _partial_line(self, data: bytes, position: int, timestamp: float) -> None:
        if not self.line and not self.line_cut:
            self.line_time = timestamp
        self._keep_line_part(data, position, len(data))
        start_line = self.state == START and not self.line_cut
        if start_line and not _plausible_start(self.line[:64]):
            self._malformed()

    def _keep_line_part(self, data: bytes, start: int, end: int) -> None:
        room = self.settings.limit - len(self.line)
        size = end - start
        if size <= room:
            self.line += data[start:end]
        else:
            if room > 0:
                self.line += data[start : start + room]
            self.line_cut += size - max(room, 0)

    def _line(self, line: bytes, cut: int, started: float) -> None:
        state = self.state
        if state == HEADERS:
            self._header_line(line, cut)
            return
        if state == START:
            self._start_line(line, cut, started)
            return
        message = self.message
        assert message is not None
        message.size += len(line) + cut
        text = _chomp(line)
        if state == CHUNK_SIZE:
            size = _chunk_size(text) if not cut else None
            if size is None:
                self._bad_framing()
            elif size:
                self.remaining = size
                self.state = CHUNK_DATA
            else:
                self.state = TRAILERS
        elif state == CHUNK_END:
            if text or cut:
                self._bad_framing()
            else:
                self.state = CHUNK_SIZE
        elif not text and not cut:  # TRAILERS: an empty line ends the message
            self._complete()

    def _start_line(self, line: bytes, cut: int, started: float) -> None:
        text = _chomp(line)
        if not text and not cut:
            return  # empty lines before a message are allowed (RFC 9112, 2.2)
        request = self.request = not text.startswith(b"HTTP/")
        fields = None if cut else _request_line(text) if request else _status_line(text)
        if fields is None:
            self._malformed()
            return
        self.probing = False
        fields["body_bytes"] = 0
        self.fields = fields
        self.message = Message(
            timestamp=started,
            from_client=self.from_client,
            size=len(line),
            fields=fields,
            error=fields.get("status_code", 0) >= 400,
        )
        self.header_bytes = len(line)
        if self.settings.send_request if request else self.settings.send_response:
            self.raw = bytearray(line[: self.settings.limit])
        self.state = HEADERS

    def _header_block(self, data: bytes, start: int, end: int) -> bool:
        """The header lines of ``data[start:end]`` and the empty line after them, at once.

        Only for a block that fits in ``max_message_size`` and whose lines all end in CRLF; returns
        False, having done nothing, for any other (:meth:`_header_line` then takes it line by line).
        """
        size = end + 4 - start
        if self.header_bytes + size > self.settings.limit:
            return False
        block = data[start:end]
        lines = block.split(b"\r\n")
        if block.count(b"\n") != len(lines) - 1:
            return False  # a line ends in a bare LF
        message = self.message
        assert message is not None
        message.size += size
        self.header_bytes += size
        noted = self.settings.noted_headers
        raw = self.raw
        secret = self.secret
        for line in lines:
            if line[:1] in FOLDING:
                self._folded_line(line, line + b"\r\n", secret, True)
                continue
            original_name, colon, value = line.partition(b":")
            name = original_name.strip(b" \t").lower()
            secret = name in SECRET_HEADERS
            if raw is not None:
                self._append_raw(original_name + b": *\r\n" if secret else line + b"\r\n")
            self.last_header = None
            if not colon or not name:
                self.settings.analyzer.count("malformed_header_lines")
            elif noted is None or name in noted:
                self._header(name, value, secret, True)
        self.secret = secret
        self._append_raw(b"\r\n")
        self._headers_done()
        return True

    def _header_line(self, line: bytes, cut: int) -> None:
        message = self.message
        assert message is not None
        size = len(line) + cut
        message.size += size
        self.header_bytes += size
        text = _chomp(line)
        if not text and not cut:
            self._append_raw(line)
            self._headers_done()
            return
        limit = self.settings.limit
        kept = self.header_bytes <= limit
        if not kept and not self.truncated:
            self.truncated = True
            message.notes.append(f"message truncated at max_message_size ({limit} bytes)")
        if text[:1] in FOLDING:  # obsolete line folding: more of the previous value
            self._folded_line(text, line, self.secret, kept and not cut)
            return
        original_name, colon, value = text.partition(b":")
        name = original_name.strip(b" \t").lower()
        secret = self.secret = name in SECRET_HEADERS
        self._append_raw(original_name + b": *\r\n" if secret else line)
        self.last_header = None
        if cut:
            return
        if not colon or not name:
            self.settings.analyzer.count("malformed_header_lines")
            return
        self._header(name, value, secret, kept)

    def _folded_line(self, text: bytes, line: bytes, secret: bool, kept: bool) -> None:
        """Obsolete line folding: more of the previous header's value (``text``: ``line`` chomped)."""
        if not secret:
            self._append_raw(line)
            if kept and self.headers is not None and self.last_header is not None:
                self.headers[self.last_header] += " " + text.strip(b" \t").decode("utf-8", "replace")

    def _header(self, name: bytes, value: bytes, secret: bool, kept: bool) -> None:
        """A header line ``name: value`` (name lowercased); ``kept``: within max_message_size."""
        value = value.strip(b" \t")
        if name == b"content-length":
            self._content_length(value)
        elif name == b"transfer-encoding":
            self.transfer_encoding = True
            self.chunked = value.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked"
        if not kept:
            return
        if name in _INFO_HEADERS:
            _INFO_HEADERS[name](self, value)
        settings = self.settings
        if name == settings.real_ip_header:
            self._real_ip(value)
        if settings.all_headers or name in settings.header_names:
            key = name.decode("latin-1")
            text_value = REDACTED if secret else value.decode("utf-8", "replace")
            headers = self.headers
            if headers is None:
                headers = self.headers = self.fields["headers"] = {}
            headers[key] = f"{headers[key]}, {text_value}" if key in headers else text_value
            self.last_header = key

    def _real_ip(self, value: bytes) -> None:
        fields = self.fields
        if "forwarded_ip" in fields or not self.request:
            return
        address = _forwarded_ip(value)
        if address is None:
            assert self.message is not None
            self.message.notes.append(NOTE_BAD_REAL_IP)
            fields["forwarded_ip"] = None
        else:
            fields["forwarded_ip"] = address

    def _append_raw(self, line: bytes) -> None:
        raw = self.raw
        if raw is not None:
            room = self.settings.limit - len(raw)
            if room > 0:
                raw += line[:room]

    def _content_length(self, value: bytes) -> None:
        if b"," in value:  # a list of one value repeated is that value (RFC 9110, 8.6)
            values = {item.strip(b" \t") for item in value.split(b",")}
            length = values.pop() if len(values) == 1 else b""
        else:
            length = value.strip(b" \t")
        valid = length.isdigit() and len(length) <= MAX_LENGTH_DIGITS
        if not valid or (self.content_length is not None and int(length) != self.content_length):
            self.content_length = -1  # invalid: the message cannot be framed
        else:
            self.content_length = int(length)

    # -- headers -> framing --------------------------------------------------------------------------

    def _headers_done(self) -> None:
        message = self.message
        assert message is not None
        if self.raw is not None:
            message.raw = bytes(self.raw)
        if self.request:
            self._request_framing(message)
        else:
            self._response_framing(message)

    def _request_framing(self, message: Message) -> None:
        self.conn.methods.append(self.fields["method"])
        self.out.append((REQUEST, message))
        if self.chunked:
            self._body_start(CHUNK_SIZE)
        elif self.transfer_encoding:
            self._body_start(UNTIL_CLOSE)
        elif self.content_length is not None and self.content_length < 0:
            self._bad_framing()
        elif self.content_length:
            self.remaining = self.content_length
            self._body_start(BODY)
        else:
            self._complete()

    def _response_framing(self, message: Message) -> None:
        code = self.fields["status_code"]
        if code < 200 and code != 101:  # interim: the final response follows
            self.settings.analyzer.count("interim_responses")
            self._reset()
            self.state = START
            return
        methods = self.conn.methods
        method = methods.popleft() if methods else ""
        if code == 101 or (method == "CONNECT" and 200 <= code < 300):
            self._complete()
            self.conn.tunnel = True
            self.state = SKIP
        elif method == "HEAD" or code in (204, 304):
            self._complete()
        elif self.chunked:
            self._body_start(CHUNK_SIZE)
        elif self.transfer_encoding or self.content_length is None:
            self._body_start(UNTIL_CLOSE)
        elif self.content_length < 0:
            self._bad_framing()
        elif self.content_length:
            self.remaining = self.content_length
            self._body_start(BODY)
        else:
            self._complete()

    def _body_start(self, state: int) -> None:
        self.state = state
        body_types = self.settings.body_types
        if body_types:
            content_type = self.fields.get("content_type", b"")
            if any(kind in content_type for kind in body_types):
                self.body = bytearray()
                self.body_room = max(0, self.settings.limit - self.header_bytes)

    # -- bodies ----------------------------------------------------------------------------------------

    def _body(self, data: bytes, position: int, size: int) -> None:
        message = self.message
        assert message is not None
        message.size += size
        self.fields["body_bytes"] += size
        body = self.body
        if body is not None:
            room = self.body_room - len(body)
            if room > 0:
                body += data[position : position + min(size, room)]
            if size > room and not self.truncated and not self.gapped:
                self.truncated = True
                message.notes.append(f"message truncated at max_message_size ({self.settings.limit} bytes)")

    def _body_part_done(self) -> None:
        if self.state == BODY:
            self._complete()
        else:
            self.state = CHUNK_END

    def _complete(self) -> None:
        message = self.message
        assert message is not None
        if self.body:
            body = bytes(self.body)
            self.fields["body"] = body
            if message.raw is not None:
                message.raw += body
        if not self.request:
            self.out.append((RESPONSE, message))
        tunnel = self.conn.tunnel
        self._reset()
        self.state = SKIP if tunnel else START

    # -- errors ----------------------------------------------------------------------------------------

    def _malformed(self) -> None:
        """Not an HTTP message start: count it (once per loss of sync), skip to the next segment."""
        if not self.probing:
            self.settings.analyzer.drop("malformed")
            self.probing = True
        self._reset()
        self._lose_sync()

    def _bad_framing(self) -> None:
        """A message whose end cannot be found: publish it with a note, skip to the next segment."""
        assert self.message is not None
        self.message.notes.append(NOTE_BAD_FRAMING)
        self.probing = True
        self._complete()
        self._lose_sync()

    def _lose_sync(self) -> None:
        self.line.clear()
        self.line_cut = 0
        self.state = SKIP


def _chomp(line: bytes) -> bytes:
    """``line`` without its line feed and a carriage return before it."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _request_line(text: bytes) -> dict[str, Any] | None:
    """``METHOD SP target SP HTTP/1.x`` (a target with spaces is tolerated, as Packetbeat does)."""
    first, last = text.find(b" "), text.rfind(b" ")
    if first <= 0 or last <= first + 1:
        return None
    method = text[:first]
    version = _VERSIONS.get(text[last + 1 :])
    if version is None or not TOKEN_CHARS.issuperset(method):
        return None
    return {
        "method": method.decode("ascii"),
        "target": text[first + 1 : last].decode("utf-8", "replace"),
        "version": version,
    }


def _status_line(text: bytes) -> dict[str, Any] | None:
    """``HTTP/1.x SP NNN [SP reason]``."""
    version = _VERSIONS.get(text[:8])
    if version is None or text[8:9] != b" ":
        return None
    code = text[9:12]
    if len(code) != 3 or not code.isdigit() or code[0] == 0x30 or text[12:13] not in (b"", b" "):
        return None
    return {
        "version": version,
        "status_code": int(code),
        "status_phrase": text[13:].strip(b" \t").decode("utf-8", "replace"),
    }


def _chunk_size(text: bytes) -> int | None:
    """The size on a chunk-size line (``1a;ext=value``), or None when it is not one."""
    digits = text.split(b";", 1)[0].strip(b" \t")
    if not digits or len(digits) > 16 or not HEX_DIGITS.issuperset(digits):
        return None
    return int(digits, 16)


def _plausible_start(prefix: bytearray) -> bool:
    """Whether the first bytes of a line could still begin a request line or a status line."""
    if prefix == b"\r" or b"HTTP/1."[: len(prefix)] == prefix[:7]:
        return True
    return TOKEN_CHARS.issuperset(prefix.split(b" ", 1)[0])


# -- the headers the event is made of ----------------------------------------------------------------


def _host(parser: HttpParser, value: bytes) -> None:
    parser.fields.setdefault("host", value.decode("utf-8", "replace"))


def _user_agent(parser: HttpParser, value: bytes) -> None:
    parser.fields.setdefault("user_agent", value.decode("utf-8", "replace"))


def _referrer(parser: HttpParser, value: bytes) -> None:
    parser.fields.setdefault("referrer", value.decode("utf-8", "replace"))


def _content_type(parser: HttpParser, value: bytes) -> None:
    content_type = value.lower()
    parser.fields["content_type"] = content_type
    mime_type = content_type.split(b";", 1)[0].strip(b" \t")
    if mime_type:
        parser.fields["mime_type"] = mime_type.decode("utf-8", "replace")


def _authorization(parser: HttpParser, value: bytes) -> None:
    user = _basic_auth_user(value) if parser.request else None
    if user:
        parser.fields["user"] = user


_INFO_HEADERS = {
    b"host": _host,
    b"user-agent": _user_agent,
    b"referer": _referrer,
    b"content-type": _content_type,
    b"authorization": _authorization,
}


def _basic_auth_user(value: bytes) -> str | None:
    scheme, _, credentials = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    credentials = credentials.strip(b" \t")
    try:
        decoded = base64.b64decode(credentials + b"=" * (-len(credentials) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, _ = decoded.partition(b":")
    return user.decode("utf-8", "replace") if colon else None


def _forwarded_ip(value: bytes) -> str | None:
    """The first address of an X-Forwarded-For style list (brackets and a port removed)."""
    text = value.split(b",", 1)[0].strip(b" \t").decode("latin-1")
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


# -- the analyzer ------------------------------------------------------------------------------------


class HttpAnalyzer(TcpAnalyzer):
    """HTTP/1.x: requests paired with responses, with URL, status, sizes and chosen headers."""

    default_ports = (80, 8080, 8000, 5000, 8002)
    categories = ("network", "web")
    options = (
        Option(
            "send_headers",
            HeaderSelection(),
            False,
            "headers added under http.request.headers/http.response.headers: true (all) or a list of names",
        ),
        Option("send_all_headers", Bool(), False, "add every header (as send_headers: true)"),
        Option(
            "real_ip_header",
            Str(),
            "",
            "header whose first address is the client's own (network.forwarded_ip), e.g. X-Forwarded-For",
        ),
        Option(
            "include_body_for",
            ListOf(Str(nonempty=True)),
            [],
            "Content-Type parts whose bodies are kept (http.*.body.content, and in request/response)",
        ),
    )

    @classmethod
    def detect(cls, data: bytes, from_client: bool) -> bool | None:
        """A request line or a status line; None while ``data`` is a prefix of one.

        Either may come from either side: a connection picked up midway may have its client
        taken for the server (the ``ip`` decoder then guesses by port numbers), and requests
        and responses are told apart by content, as Packetbeat does.
        """
        if _REQUEST_LINE.match(data) or _STATUS_LINE.match(data):
            return True
        return None if _request_prefix(data) or _status_prefix(data) else False

    def open(self) -> None:
        self.settings = HttpSettings(self)
        self.transactions = Transactions(self, fill_event)

    def parse(
        self, packet: AppPacket, flow: FlowInfo, direction: int, state: HttpConnection | None
    ) -> HttpConnection:
        if state is None:
            state = HttpConnection(self.settings)
        parser = state.client if direction == TO_SERVER else state.server
        finished = parser.feed(packet.data, packet.timestamp, packet.from_client)
        if finished:  # most segments (body parts) finish nothing
            self._hand_over(flow, finished)
        return state

    def on_fin(self, flow: FlowInfo, direction: int, state: HttpConnection | None) -> HttpConnection | None:
        if state is not None:
            parser = state.client if direction == TO_SERVER else state.server
            self._hand_over(flow, parser.finish(NOTE_ENDED))
        return state

    def on_gap(
        self, flow: FlowInfo, direction: int, nbytes: int, state: HttpConnection | None
    ) -> tuple[HttpConnection, bool]:
        if state is not None:
            parser = state.client if direction == TO_SERVER else state.server
            absorbed, finished = parser.gap(nbytes)
            self._hand_over(flow, finished)
            if absorbed:
                return state, False
            self._finish(flow, state, NOTE_GAP_LOST)
            self.transactions.close(flow, NOTE_GAP_PENDING)
        return HttpConnection(self.settings, lost=True), False

    def on_close(self, flow: FlowInfo, state: HttpConnection | None) -> None:
        if state is not None:
            self._finish(flow, state, NOTE_ENDED)
        self.transactions.close(flow)

    def expire(self, now: float) -> None:
        self.transactions.expire(now)

    def flush(self) -> None:
        self.transactions.flush()

    def _finish(self, flow: FlowInfo, state: HttpConnection, note: str) -> None:
        # The client first: its cut request gets its note before a response publishes it.
        self._hand_over(flow, state.client.finish(note))
        self._hand_over(flow, state.server.finish(note))

    def _hand_over(self, flow: FlowInfo, finished: list[tuple[int, Message]]) -> None:
        transactions = self.transactions
        for kind, message in finished:
            if kind == REQUEST:
                transactions.request(flow, message)
            else:
                transactions.response(flow, message)


def _request_prefix(data: bytes) -> bool:
    """Whether ``data`` (no complete request line) could still grow into one."""
    if b"\n" in data:
        return False
    method, space, rest = data.partition(b" ")
    if not method or len(method) > MAX_METHOD or not TOKEN_CHARS.issuperset(method):
        return False
    if not space:
        return True
    target, space, version = rest.partition(b" ")
    if any(byte <= 0x20 or byte == 0x7F for byte in target):
        return False
    if not space:
        return True
    if not target or len(version) > 9:
        return False
    return all(_fits(byte, expected) for byte, expected in zip(version, _VERSION_TEMPLATE, strict=False))


def _status_prefix(data: bytes) -> bool:
    """Whether ``data`` (shorter than a status line's start) could still grow into one."""
    return len(data) <= len(_STATUS_TEMPLATE) and all(
        _fits(byte, expected) for byte, expected in zip(data, _STATUS_TEMPLATE, strict=False)
    )


_DIGIT = -1
_VERSION_TEMPLATE = (*b"HTTP/1.", _DIGIT, ord("\r"))
_STATUS_TEMPLATE = (*b"HTTP/1.", _DIGIT, ord(" "), _DIGIT, _DIGIT, _DIGIT)


def _fits(byte: int, expected: int) -> bool:
    return 0x30 <= byte <= 0x39 if expected == _DIGIT else byte == expected


# -- publishing ----------------------------------------------------------------------------------------


def fill_event(event: Event, request: Message | None, response: Message | None) -> None:
    """Add the HTTP fields of a transaction (Packetbeat's and ECS's names)."""
    http: dict[str, Any] = {}
    if request is not None:
        fields = request.fields
        http["version"] = fields["version"]
        http["request"] = _request_fields(request)
        _url_fields(event, fields)
        if "user_agent" in fields:
            event["user_agent"] = {"original": fields["user_agent"]}
        if "user" in fields:
            event["user"] = {"name": fields["user"]}
            event["related"]["user"] = [fields["user"]]
        address = fields.get("forwarded_ip")
        if address is not None:
            event["network"]["forwarded_ip"] = address
            if address not in event["related"]["ip"]:
                event["related"]["ip"].append(address)
    elif response is not None:
        http["version"] = response.fields["version"]
    if response is not None:
        fields = response.fields
        answer: dict[str, Any] = {"status_code": fields["status_code"]}
        if fields["status_phrase"]:
            answer["status_phrase"] = fields["status_phrase"].lower()
        http["response"] = _message_fields(response, answer)
    event["http"] = http


def _request_fields(request: Message) -> dict[str, Any]:
    fields = request.fields
    result: dict[str, Any] = {"method": fields["method"]}
    if "referrer" in fields:
        result["referrer"] = fields["referrer"]
    return _message_fields(request, result)


def _message_fields(message: Message, result: dict[str, Any]) -> dict[str, Any]:
    """Add ``bytes``, ``body``, ``mime_type`` and ``headers`` of a request or response to ``result``."""
    fields = message.fields
    body: dict[str, Any] = {"bytes": fields["body_bytes"]}
    if "body" in fields:
        body["content"] = fields["body"].decode("utf-8", "replace")
    result["bytes"] = message.size
    result["body"] = body
    if "mime_type" in fields:
        result["mime_type"] = fields["mime_type"]
    if fields.get("headers"):
        result["headers"] = fields["headers"]
    return result


def _url_fields(event: Event, fields: dict[str, Any]) -> None:
    """``url.*``, Packetbeat's ``method``/``path``/``query`` and the Host's destination.domain."""
    method, target = fields["method"], fields["target"]
    scheme, host, port, address, path, query = "http", "", 0, False, None, None
    if target.startswith("/"):
        path, mark, query_text = target.partition("?")
        query = query_text if mark else None
    elif "://" in target:  # absolute form, sent to proxies: it names the host itself
        scheme, _, rest = target.partition("://")
        scheme = scheme.lower()
        authority, path = _ABSOLUTE_REST.match(rest).groups()  # type: ignore[union-attr]
        path, mark, query_text = (path or "/").partition("?")
        query = query_text if mark else None
        host, port, address = _split_host(authority.rpartition("@")[2])
    elif method == "CONNECT":  # authority form
        host, port, address = _split_host(target)
    if not host and "host" in fields:
        host, port, address = _split_host(fields["host"])
    if not port:
        port = event["destination"]["port"]
    url: dict[str, Any] = {"original": target, "scheme": scheme}
    if host:
        url["domain"] = host
    if port != DEFAULT_PORTS.get(scheme):
        url["port"] = port
    if path is not None:
        url["path"] = path
        name = path.rpartition("/")[2]
        if "." in name and not name.endswith("."):
            url["extension"] = name.rpartition(".")[2]
    if query is not None:
        url["query"] = query
    if host and path is not None:
        authority = f"[{host}]" if ":" in host else host
        if "port" in url:
            authority = f"{authority}:{port}"
        url["full"] = f"{scheme}://{authority}{path}" + (f"?{query}" if query is not None else "")
    event["url"] = url
    event["method"] = method
    event_path = event["path"] = path if path is not None else target
    event["query"] = f"{method} {event_path}"
    if host:
        related = event["related"]
        if address:
            if host not in related["ip"]:
                related["ip"].append(host)
        else:
            event["destination"]["domain"] = host
            related["hosts"] = [host]


def _split_host(authority: str) -> tuple[str, int, bool]:
    """Host and port (0 when none) of a Host header or an authority, IPv6 brackets removed, and
    whether the host is an IP address (cached for short values: hosts repeat from request to request)."""
    if len(authority) > MAX_CACHED_HOST:
        return _host_parts(authority)
    return _cached_host_parts(authority)


def _host_parts(authority: str) -> tuple[str, int, bool]:
    authority = authority.strip()
    if _is_ip(authority):
        return authority, 0, True
    host, colon, port_text = authority.rpartition(":")
    port = int(port_text) if colon and _PORT.fullmatch(port_text) else 0
    if not 0 < port < 65536:
        host, port = authority, 0
    if host.startswith("[") and host.endswith("]") and _is_ip(host[1:-1]):
        return host[1:-1], port, True
    return host, port, _is_ip(host)


_cached_host_parts = functools.lru_cache(maxsize=4096)(_host_parts)


def _is_ip(text: str) -> bool:
    """Whether ``text`` is an IP address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@hookimpl
def flowpipe_add_analyzers() -> dict[str, type[TcpAnalyzer]]:
    return {"http": HttpAnalyzer}
