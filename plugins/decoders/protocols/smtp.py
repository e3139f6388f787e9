"""The ``smtp`` analyzer: SMTP sessions (RFC 5321) as one event per mail transaction.

A mail transaction is what the client does from ``MAIL FROM`` to the reply to the end of its
message (``DATA`` and the content up to ``<CRLF>.<CRLF>``, or ``BDAT`` chunks up to ``LAST``), or
to the reply to the ``RSET``/``QUIT`` that abandons it. Its event carries the envelope
(``smtp.mail_from``, ``smtp.rcpt_to``), the session it ran in (``smtp.helo``, the ``AUTH``
mechanism, never credentials), every reply code, and the message headers as ECS ``email.*``.
A connection without a mail transaction (``EHLO`` + ``QUIT``, a failed ``AUTH``, a greeting and
nothing more) gives one ``session`` event instead; so does a session that switches to TLS with
``STARTTLS``, after which nothing more is parsed.

Parts, as in every analyzer:

1. options: the common ones and ``session_timeout``;
2. parsers: :class:`ReplyParser` splits the server's bytes into (multi-line) replies;
   :class:`ClientParser` holds the client's bytes, which the analyzer reads as commands, SASL
   responses, message content (dot-unstuffed) or ``BDAT`` chunks depending on the replies;
   :mod:`.smtp_message` keeps the header section of a message (the body is counted only);
3. transactions: commands wait in order for their replies (pipelining, RFC 2920); an
   :class:`Exchange` (a mail transaction, or the session's own commands) is published once its
   client side is over and every command it holds has its reply. The shared
   :class:`~flowpipe.Transactions` helper pairs one request with one response, which a
   multi-step transaction is not, so this module keeps the order itself and publishes through
   :func:`~flowpipe.transactions.transaction_event` with the helper's notes and counters;
4. publishing (:meth:`SmtpAnalyzer._emit`): an exchange -> the ``smtp.*`` and ``email.*`` fields.

The client is read one command ahead of the replies only where SMTP lets it be: after ``DATA``,
``AUTH`` and ``STARTTLS`` its bytes are held until the reply says what they are (message
content, a SASL response, TLS). Bytes held beyond 64 KiB without a reply, or still held when the
connection ends (a capture of the client's side only), are read as if the reply had been
positive. A connection idle for ``session_timeout`` (servers wait minutes for a client) is closed.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any

from flowpipe import (
    TO_SERVER,
    AppPacket,
    Duration,
    FlowInfo,
    Message,
    Option,
    StreamBuffer,
    TcpAnalyzer,
    hookimpl,
)
from flowpipe.transactions import (
    NOTE_CLOSED,
    NOTE_OVERFLOW,
    NOTE_TIMEOUT,
    NOTE_UNMATCHED_RESPONSE,
    transaction_event,
)

from .smtp_message import MessageHeaders, email_fields

__all__ = ["ClientParser", "ReplyParser", "SmtpAnalyzer"]

NOTE_STARTTLS = "STARTTLS: the rest of the session is encrypted"
NOTE_ABORTED = "mail transaction aborted by {}"
MAX_LIST = 1000
"""Recipients and replies listed per event; more are counted in the bytes only."""
MAX_COMMANDS = 10_000
"""Commands awaiting replies on one connection; past it every waiting command is given up."""
MAX_TEXT = 1000
"""Characters kept of a command argument, an address or a reply line."""
MAX_PARAMS = 16
"""ESMTP parameters kept of a MAIL FROM."""
MAX_REPLY_LINES = 100
"""Lines kept of a multi-line reply."""
HOLD_LIMIT = 64 * 1024
"""Client bytes held while the reply to DATA, AUTH or STARTTLS is awaited."""
ENDING_VERBS = frozenset(("RSET", "QUIT"))
"""Commands that end an open mail transaction and whose replies say nothing of its outcome."""
RESETTING_VERBS = frozenset(("EHLO", "HELO"))
"""Session commands that abandon an open mail transaction (RFC 5321 4.1.4)."""
DOT, LF = 0x2E, 0x0A

# Client modes: how the next client bytes are read.
COMMAND, BLOCKED, SASL, DATA, BDAT, DISCARD, OFF = range(7)

_VERB = re.compile(r"[A-Z][A-Z0-9-]{0,31}")
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?: +|$)")


# -- parsers -------------------------------------------------------------------------------------


class Reply:
    """One server reply: its code and lines (a multi-line reply is one Reply)."""

    __slots__ = ("code", "lines", "size", "timestamp")

    def __init__(self, code: int, lines: list[str], size: int, timestamp: float) -> None:
        self.code = code
        self.lines = lines
        """The lines as sent, without CRLF (at most MAX_REPLY_LINES, each at most MAX_TEXT)."""
        self.size = size
        self.timestamp = timestamp

    def fields(self) -> dict[str, Any]:
        """``smtp.response``: code, enhanced status code (RFC 3463) and message text."""
        enhanced = None
        texts = []
        for line in self.lines:
            text = line[4:]
            match = _ENHANCED.match(text)
            if match:
                enhanced = enhanced or match.group(1)
                text = text[match.end() :]
            texts.append(text)
        response: dict[str, Any] = {"code": self.code}
        if enhanced:
            response["enhanced_code"] = enhanced
        response["message"] = "\n".join(texts)
        return response


class ReplyParser:
    """Splits the server's side of a connection into replies (``250-...`` lines up to ``250 ...``)."""

    __slots__ = ("buffer", "code", "discarding", "lines", "reply_start", "size", "start")

    def __init__(self, limit: int) -> None:
        self.buffer = StreamBuffer(limit)
        self.discarding = False
        """A line outgrew the limit: skip to its end."""
        self.start = 0.0
        """Capture time of the first buffered byte."""
        self.lines: list[str] = []
        """The lines of the reply being read."""
        self.code = 0
        """Its code (of its first line)."""
        self.size = 0
        self.reply_start = 0.0

    def feed(self, data: bytes, timestamp: float, malformed: list[int]) -> list[Reply]:
        """Parse ``data``; return the replies it completes. Malformed lines add 1 to ``malformed[0]``."""
        replies: list[Reply] = []
        buffer = self.buffer
        if not buffer.data:
            self.start = timestamp
        offset = 0
        while True:
            room = buffer.limit - len(buffer.data)
            piece = data[offset : offset + room]
            buffer.data += piece
            offset += len(piece)
            while (line := buffer.line()) is not None:
                if self.discarding:
                    self.discarding = False
                    self.size += len(line)
                else:
                    self._line(line, replies, malformed)
                self.start = timestamp
            if offset >= len(data):
                return replies
            # a line longer than the buffer: read what fits as the line, skip the rest of it
            line = buffer.take(buffer.limit)
            self._line(line, replies, malformed)
            self.discarding = True

    def _line(self, line: bytes, replies: list[Reply], malformed: list[int]) -> None:
        text = line.rstrip(b"\r\n")
        if (
            len(text) < 3
            or not text[:3].isdigit()
            or text[0] not in b"12345"
            or (len(text) > 3 and text[3] not in b" -")
        ):
            malformed[0] += 1
            self.size += len(line)
            return
        code = int(text[:3])
        if self.lines and code != self.code:  # another code: the unfinished reply was all there is
            malformed[0] += 1
            self._done(replies)
        if not self.lines:
            self.reply_start = self.start
            self.code = code
        if len(self.lines) < MAX_REPLY_LINES:
            self.lines.append(text[: MAX_TEXT + 4].decode("utf-8", "replace"))
        self.size += len(line)
        if len(text) == 3 or text[3] == 0x20:
            self._done(replies)

    def _done(self, replies: list[Reply]) -> None:
        replies.append(Reply(self.code, self.lines, self.size, self.reply_start))
        self.lines = []
        self.size = 0


class ClientParser:
    """The client's side of a connection: bytes waiting to be read in the current mode."""

    __slots__ = (
        "after_discard",
        "buffer",
        "chunk",
        "chunk_command",
        "chunk_last",
        "consumed",
        "line_start",
        "mail",
        "message",
        "mode",
        "now",
        "start",
    )

    def __init__(self, limit: int) -> None:
        self.buffer = StreamBuffer(limit)
        self.mode = COMMAND
        self.after_discard = COMMAND
        self.start = 0.0
        """Capture time of the first buffered byte."""
        self.now = 0.0
        """Capture time of the last client packet."""
        self.line_start = True
        """In message content: the next byte starts a line."""
        self.consumed = 0
        """Wire bytes of the message content read so far."""
        self.chunk = 0
        """Bytes of the current BDAT chunk still to come."""
        self.chunk_command: Command | None = None
        self.chunk_last = False
        """The current chunk is the last of its message (``BDAT size LAST``)."""
        self.mail: Mail | None = None
        """The mail transaction whose content (DATA or BDAT) is being read."""
        self.message: MessageHeaders | None = None
        """That content's headers and size."""

    def take_line(self) -> tuple[bytes, float] | None:
        """The next complete line and the capture time of its first byte."""
        line = self.buffer.line()
        if line is None:
            return None
        start = self.start
        self.start = self.now
        return line, start


# -- transactions --------------------------------------------------------------------------------


class Exchange:
    """What one event reports: a mail transaction, or the session's own commands."""

    __slots__ = (
        "client_bytes",
        "closed",
        "commands",
        "incomplete",
        "last",
        "notes",
        "outcome",
        "raw_commands",
        "raw_replies",
        "server_bytes",
        "start",
        "unanswered",
    )

    def __init__(self, start: float | None) -> None:
        self.start = start
        self.commands: list[Command] = []
        """The commands listed in ``smtp.replies`` (the first MAX_LIST)."""
        self.client_bytes = 0
        self.server_bytes = 0
        self.unanswered = 0
        self.closed = False
        """The client side is over: no more commands join."""
        self.incomplete = False
        """Cut short: a reply never came or the connection ended in the middle."""
        self.outcome: Reply | None = None
        """The reply that decides the status: the last one not to RSET or QUIT."""
        self.last: Reply | None = None
        self.notes: list[str] = []
        self.raw_commands: list[str] = []
        self.raw_replies: list[str] = []

    def note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)


class Mail(Exchange):
    """A mail transaction: the envelope and the message."""

    __slots__ = ("aborted_by", "auth", "helo", "mail_from", "message", "params", "rcpt_to")

    def __init__(self, start: float, helo: str | None, auth: str | None) -> None:
        super().__init__(start)
        self.helo = helo
        """The session's HELO name and AUTH mechanism when the transaction started."""
        self.auth = auth
        self.mail_from: str | None = None
        self.params: list[str] = []
        self.rcpt_to: list[str] = []
        self.message: MessageHeaders | None = None
        self.aborted_by: str | None = None


class Command:
    """A client command waiting for, or answered by, its reply."""

    __slots__ = ("argument", "due", "owner", "reply", "size", "timestamp", "verb")

    def __init__(self, verb: str, timestamp: float, size: int, owner: Exchange, argument: str = "") -> None:
        self.verb = verb
        """The verb in upper case; empty for a line that is no command."""
        self.argument = argument
        self.timestamp = timestamp
        self.due = timestamp
        """Capture time since which the server owes the reply (infinite while the client owes a
        SASL response)."""
        self.size = size
        self.owner = owner
        self.reply: Reply | None = None


class SmtpSession:
    """Per connection: the two parsers, the commands awaiting replies, the session's facts."""

    __slots__ = (
        "auth",
        "banner",
        "client",
        "greeted",
        "helo",
        "mail",
        "mails",
        "mails_seen",
        "off",
        "pending",
        "published",
        "requester",
        "server",
        "session",
        "starttls",
    )

    def __init__(self, limit: int) -> None:
        self.client = ClientParser(limit)
        self.server = ReplyParser(limit)
        self.pending: deque[Command] = deque()
        self.session = Exchange(None)
        """The commands that belong to no mail transaction."""
        self.mail: Mail | None = None
        """The mail transaction the client is in."""
        self.mails: deque[Mail] = deque()
        """Mail transactions not published yet, oldest first."""
        self.mails_seen = 0
        self.greeted = False
        self.banner: str | None = None
        self.helo: str | None = None
        self.auth: str | None = None
        self.starttls = False
        self.published = False
        """The session event was published."""
        self.requester = True
        """The SMTP client is the flow's client (the connection's opener): Message.from_client."""
        self.off = False
        """Nothing more is parsed (after QUIT, STARTTLS, or the end of the connection)."""


# -- the analyzer --------------------------------------------------------------------------------


class SmtpAnalyzer(TcpAnalyzer):
    """SMTP: one event per mail transaction (envelope, replies, message headers as email.*)."""

    default_ports = (25, 587, 2525)
    categories = ("network", "email")
    options = (
        Option(
            "session_timeout",
            Duration(),
            "5m",
            "capture time a connection may stay idle before its session is closed (servers wait 5 minutes)",
        ),
    )

    @property
    def connection_timeout(self) -> float:
        """Sessions idle longer than a transaction (a person typing, a slow client): session_timeout."""
        return self.config.session_timeout

    def open(self) -> None:
        self._waiting: dict[Any, SmtpSession] = {}
        """Connections with commands awaiting replies, for expire()."""

    @classmethod
    def detect(cls, data: bytes, from_client: bool) -> bool | None:
        """A server greeting ``220`` naming SMTP/ESMTP, or a client ``EHLO``/``HELO`` line.

        FTP greets with ``220`` too: a ``220`` greeting without "SMTP" leaves the decision to the
        client's first line.
        """
        if from_client:
            head = data[:5].upper()
            if len(head) < 5:
                return None if any(verb.startswith(head) for verb in (b"EHLO ", b"HELO ")) else False
            return head[:4] in (b"EHLO", b"HELO") and head[4:5] in (b" ", b"\r", b"\n")
        if len(data) < 4:
            return None if b"220".startswith(data[:3]) else False
        if data[:3] != b"220" or data[3:4] not in (b" ", b"-", b"\r"):
            return False
        return True if b"SMTP" in data.upper() else None

    # -- the contract ----------------------------------------------------------------------------

    def parse(
        self, packet: AppPacket, flow: FlowInfo, direction: int, state: SmtpSession | None
    ) -> SmtpSession:
        if state is None:
            state = SmtpSession(self.config.max_message_size)
            state.requester = packet.from_client == (direction == TO_SERVER)
        session = state
        if session.off:
            return session
        if direction == TO_SERVER:
            self._client_data(session, flow, packet.data, packet.timestamp)
        else:
            malformed = [0]
            for reply in session.server.feed(packet.data, packet.timestamp, malformed):
                if session.off:
                    break
                self._reply(session, flow, reply)
            if malformed[0]:
                self.drop("malformed_reply", malformed[0])
        return session

    def on_gap(self, flow: FlowInfo, direction: int, nbytes: int, state: Any) -> tuple[Any, bool]:
        """A gap inside message content is counted and parsing goes on; any other gives up."""
        session: SmtpSession | None = state
        if session is None or session.off:
            return session, False
        client = session.client
        mail, message = client.mail, client.message
        if direction == TO_SERVER and mail is not None and message is not None:
            if client.mode == DATA:
                held = client.buffer.clear()
                message.lost(held + nbytes)
                client.consumed += held + nbytes
                client.line_start = False
                mail.note(f"{nbytes} bytes of the message were not captured")
                return session, False
            if client.mode == BDAT and nbytes <= client.chunk and client.chunk_command is not None:
                client.chunk -= nbytes
                client.chunk_command.size += nbytes
                message.lost(nbytes)
                mail.note(f"{nbytes} bytes of the message were not captured")
                if client.chunk == 0:
                    self._end_chunk(session, flow)
                    self._pump(session, flow)
                return session, False
        return super().on_gap(flow, direction, nbytes, state)

    def on_close(self, flow: FlowInfo, state: SmtpSession | None) -> None:
        if state is None or state.off:
            return
        session = state
        client = session.client
        if client.mode == BLOCKED and client.buffer.data:  # no reply: one-sided capture
            self._assume_accepted(session, flow)
            self._pump(session, flow)
        if client.mode in (DATA, BDAT) and client.message is not None:  # the message's last bytes
            client.message.add(client.buffer.take(len(client.buffer)))
        self._give_up(session, flow, NOTE_CLOSED)
        mail = session.mail
        if mail is not None:
            mail.note(NOTE_ABORTED.format("the end of the connection"))
            mail.incomplete = True
            self._close_mail(session)
        self._publish_finished(session, flow)
        self._publish_session(session, flow)
        session.off = True

    def expire(self, now: float) -> None:
        deadline = now - self.config.transaction_timeout
        for flow, session in list(self._waiting.items()):
            if session.pending[0].due <= deadline:
                self._give_up(session, flow, NOTE_TIMEOUT)

    # -- client side -----------------------------------------------------------------------------

    def _client_data(self, session: SmtpSession, flow: FlowInfo, data: bytes, timestamp: float) -> None:
        client = session.client
        buffer = client.buffer
        client.now = timestamp
        if not buffer.data:
            client.start = timestamp
        offset = 0
        while True:
            room = self._room(client)
            if room > 0:
                piece = data[offset : offset + room]
                buffer.data += piece
                offset += len(piece)
            self._pump(session, flow)
            if offset >= len(data) or session.off or client.mode == OFF:
                return
            if self._room(client) <= 0:
                self._overflow(session, flow)

    @staticmethod
    def _room(client: ClientParser) -> int:
        """Bytes the client buffer may still take in the current mode."""
        limit = min(client.buffer.limit, HOLD_LIMIT) if client.mode == BLOCKED else client.buffer.limit
        return limit - len(client.buffer.data)

    def _overflow(self, session: SmtpSession, flow: FlowInfo) -> None:
        """The buffer is full and the mode cannot read it: make room."""
        client = session.client
        mode = client.mode
        if mode == BLOCKED:
            self._assume_accepted(session, flow)
        elif mode == DATA and client.message is not None:  # a header line longer than the buffer
            part = client.buffer.take(len(client.buffer))
            client.message.add(part)
            client.message.cut()
            client.consumed += len(part)
            client.line_start = False
        else:  # a command or SASL line longer than the buffer
            self.drop("line_too_long")
            line = client.buffer.take(len(client.buffer))
            if mode == COMMAND:
                self._command(session, flow, line, client.start, route=False)
                client.after_discard = COMMAND
            else:
                session.session.client_bytes += len(line)
                client.after_discard = BLOCKED
            client.mode = DISCARD

    def _pump(self, session: SmtpSession, flow: FlowInfo) -> None:
        """Read the client's buffered bytes as far as the current mode allows."""
        client = session.client
        buffer = client.buffer
        while not session.off:
            mode = client.mode
            if mode == COMMAND:
                taken = client.take_line()
                if taken is None:
                    return
                self._command(session, flow, taken[0], taken[1])
            elif mode == SASL:  # a SASL response: counted, never kept
                taken = client.take_line()
                if taken is None:
                    return
                session.session.client_bytes += len(taken[0])
                if session.pending:
                    session.pending[-1].due = taken[1]
                client.mode = BLOCKED
            elif mode == DATA:
                if not self._content(client):
                    return
                self._end_of_data(session, flow)
            elif mode == BDAT:
                size = min(client.chunk, len(buffer))
                if size == 0:
                    return
                part = buffer.take(size)
                client.chunk -= size
                if client.chunk_command is not None:
                    client.chunk_command.size += size
                if client.message is not None:
                    client.message.add(part)
                if client.chunk == 0:
                    self._end_chunk(session, flow)
            elif mode == DISCARD:
                end = buffer.data.find(b"\n")
                if end < 0:
                    session.session.client_bytes += buffer.clear()
                    return
                session.session.client_bytes += len(buffer.take(end + 1))
                client.mode = client.after_discard
            else:  # BLOCKED, OFF
                return

    def _command(
        self, session: SmtpSession, flow: FlowInfo, line: bytes, timestamp: float, route: bool = True
    ) -> None:
        """One command line; ``route`` false: a cut line, kept in order but not interpreted."""
        text = line[: MAX_TEXT + 16].rstrip(b"\r\n").decode("utf-8", "replace")
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        if not _VERB.fullmatch(verb):
            verb = ""
        argument = argument.strip()
        client = session.client
        owner: Exchange = session.session
        if route:
            if verb == "MAIL":
                if session.mail is not None:
                    session.mail.aborted_by = "MAIL"
                    self._close_mail(session)
                    self._publish_finished(session, flow)
                owner = self._start_mail(session, timestamp)
                owner.mail_from, owner.params = _path(argument, "FROM:")
            # RCPT, DATA and BDAT outside a transaction start one: a session seen from its middle
            elif verb == "BDAT" and (chunk := _chunk(argument)) is not None:
                mail = session.mail or self._start_mail(session, timestamp)
                self._bdat(session, flow, mail, chunk, argument, line, timestamp)
                return
            elif verb in ("RCPT", "DATA"):
                owner = session.mail or self._start_mail(session, timestamp)
                if verb == "RCPT":
                    address = _path(argument, "TO:")[0]
                    if address is not None and len(owner.rcpt_to) < MAX_LIST:
                        owner.rcpt_to.append(address)
                else:
                    client.mode = BLOCKED
            elif verb in ENDING_VERBS and session.mail is not None:
                owner = session.mail
                owner.aborted_by = verb
                self._close_mail(session)
            elif verb == "AUTH":
                mechanism = argument.split(" ", 1)[0].upper()[:MAX_TEXT]
                session.auth = mechanism or None
                text = f"AUTH {mechanism}".rstrip()  # never the initial response
                client.mode = BLOCKED
            elif verb in RESETTING_VERBS:  # takes effect when accepted (see _reply)
                argument = argument[:MAX_TEXT]
                if session.helo is None and argument:
                    session.helo = argument  # until a reply says more (a one-sided capture)
            elif verb == "STARTTLS":
                client.mode = BLOCKED
        command = Command(verb, timestamp, len(line), owner, argument)
        if self.config.send_request and len(owner.raw_commands) < MAX_LIST:
            owner.raw_commands.append(text[:MAX_TEXT])
        self._push(session, flow, command)

    def _bdat(
        self,
        session: SmtpSession,
        flow: FlowInfo,
        mail: Mail,
        chunk: tuple[int, bool],
        argument: str,
        line: bytes,
        timestamp: float,
    ) -> None:
        """``BDAT size [LAST]``: the command awaits its reply once its chunk is read."""
        size, last = chunk
        if mail.message is None:
            mail.message = MessageHeaders(self.config.max_message_size)
        client = session.client
        client.mail, client.message = mail, mail.message
        command = Command("BDAT", timestamp, len(line), mail)
        if self.config.send_request and len(mail.raw_commands) < MAX_LIST:
            mail.raw_commands.append(f"BDAT {argument}"[:MAX_TEXT])
        client.chunk_command = command
        client.chunk = size
        client.chunk_last = last
        client.mode = BDAT
        if size == 0:
            self._end_chunk(session, flow)

    def _end_chunk(self, session: SmtpSession, flow: FlowInfo) -> None:
        client = session.client
        command = client.chunk_command
        client.mode = COMMAND
        if command is None:
            return
        client.chunk_command = None
        command.due = client.now  # the reply is due once the chunk is sent
        self._push(session, flow, command)
        if client.chunk_last:
            client.mail = client.message = None
            self._close_mail(session, command.owner)

    @staticmethod
    def _content(client: ClientParser) -> bool:
        """Read message content (dot-stuffed lines); True when its terminating line was read."""
        data = client.buffer.data
        message = client.message
        if message is None:
            return False
        while not message.done:  # header section: line by line (lines start at a line start)
            end = data.find(b"\n")
            if end < 0:
                return False
            if data[0] == DOT:
                if data[: end + 1] in (b".\r\n", b".\n"):
                    client.consumed += end + 1
                    del data[: end + 1]
                    return True
                line = bytes(data[1 : end + 1])
            else:
                line = bytes(data[: end + 1])
            client.consumed += end + 1
            del data[: end + 1]
            message.add(line)
            client.line_start = True
        position = skipped = 0
        size = len(data)
        found = False
        while True:
            if client.line_start:
                if position >= size:
                    break
                if data[position] == DOT:
                    after = data[position + 1 : position + 3]
                    if after[:1] == b"\n" or after == b"\r\n":
                        found = True
                        break
                    if after in (b"", b"\r"):
                        break  # wait for the rest of the line
                    position += 1  # a stuffed dot: on the wire, not in the message
                    skipped += 1
                client.line_start = False
            next_dot = data.find(b"\n.", position)
            if next_dot < 0:
                if size > position and data[size - 1] == LF:
                    client.line_start = True
                position = size
                break
            position = next_dot + 1
            client.line_start = True
        message.size += position - skipped
        if found:
            terminator = 2 if data[position + 1] == LF else 3
            position += terminator
        client.consumed += position
        del data[:position]
        return found

    def _end_of_data(self, session: SmtpSession, flow: FlowInfo) -> None:
        """The message ended: the end-of-data indication is a command awaiting its reply ('.')."""
        client = session.client
        mail = client.mail
        client.mode = COMMAND
        client.mail = client.message = None
        if mail is None:
            return
        command = Command(".", client.now, client.consumed, mail)
        client.consumed = 0
        if self.config.send_request and len(mail.raw_commands) < MAX_LIST:
            mail.raw_commands.append(".")
        self._push(session, flow, command)
        self._close_mail(session, mail)

    def _assume_accepted(self, session: SmtpSession, flow: FlowInfo) -> None:
        """No reply to the held command: read on as if it had been accepted."""
        client = session.client
        command = session.pending[-1] if session.pending else None
        verb = command.verb if command is not None else ""
        if verb == "DATA" and session.mail is not None:
            self._start_content(session.mail, client)
        elif verb == "STARTTLS":
            self._starttls(session, flow)
        else:
            client.mode = COMMAND

    @staticmethod
    def _start_content(mail: Mail, client: ClientParser) -> None:
        mail.message = client.message = MessageHeaders(client.buffer.limit)
        client.mail = mail
        client.mode = DATA
        client.line_start = True
        client.consumed = 0

    # -- server side -----------------------------------------------------------------------------

    def _reply(self, session: SmtpSession, flow: FlowInfo, reply: Reply) -> None:
        client = session.client
        pending = session.pending
        if not session.greeted:
            session.greeted = True
            if reply.code == 220 or not pending:
                self._greeting(session, reply)
                return
        if not pending and client.mode == DATA and client.mail is not None:
            # the end of the message was lost: this reply answers it
            client.mail.note("the end of the message was not seen")
            self._end_of_data(session, flow)
        if not pending:
            self._unmatched(session, flow, reply)
            return
        command = pending[0]
        owner = command.owner
        self._record_reply(owner, reply)
        if reply.code == 334 and command.verb == "AUTH":  # a SASL challenge: a response follows
            command.due = math.inf
            if client.mode == BLOCKED:
                client.mode = SASL
                self._pump(session, flow)
            return
        pending.popleft()
        if not pending:
            self._waiting.pop(flow, None)
        command.reply = reply
        owner.unanswered -= 1
        owner.last = reply
        if command.verb not in ENDING_VERBS or owner.outcome is None:
            owner.outcome = reply
        verb = command.verb
        blocked = client.mode == BLOCKED and not pending
        if verb == "DATA" and blocked:
            if reply.code == 354 and isinstance(owner, Mail) and owner is session.mail:
                self._start_content(owner, client)
            else:
                client.mode = COMMAND
                if isinstance(owner, Mail):
                    self._close_mail(session, owner)
        elif verb == "STARTTLS" and blocked:
            if reply.code == 220:
                self._starttls(session, flow)
                return
            client.mode = COMMAND
        elif verb == "AUTH" and client.mode in (BLOCKED, SASL) and not pending:
            client.mode = COMMAND
        elif verb in RESETTING_VERBS and reply.code < 400:  # a new session: the transaction ends
            session.helo = command.argument
            if session.mail is not None:
                session.mail.aborted_by = verb
                self._close_mail(session)
        self._publish_finished(session, flow)
        if verb == "QUIT":
            self._publish_session(session, flow)
            session.off = True
            return
        self._pump(session, flow)

    def _greeting(self, session: SmtpSession, reply: Reply) -> None:
        exchange = session.session
        session.banner = reply.lines[0][4:] if reply.lines else ""
        if exchange.start is None:
            exchange.start = reply.timestamp
        exchange.server_bytes += reply.size
        exchange.outcome = exchange.last = reply
        if self.config.send_response:
            exchange.raw_replies.extend(reply.lines)

    def _record_reply(self, owner: Exchange, reply: Reply) -> None:
        owner.server_bytes += reply.size
        if self.config.send_response and len(owner.raw_replies) < MAX_LIST:
            owner.raw_replies.extend(reply.lines)

    def _starttls(self, session: SmtpSession, flow: FlowInfo) -> None:
        session.starttls = True
        session.session.note(NOTE_STARTTLS)
        session.client.mode = OFF
        session.client.buffer.clear()
        self._give_up(session, flow, NOTE_CLOSED)
        if session.mail is not None:
            session.mail.aborted_by = "STARTTLS"
            self._close_mail(session)
        self._publish_finished(session, flow)
        self._publish_session(session, flow)
        session.off = True

    # -- transactions ----------------------------------------------------------------------------

    def _start_mail(self, session: SmtpSession, timestamp: float) -> Mail:
        mail = Mail(timestamp, session.helo, session.auth)
        session.mail = mail
        session.mails.append(mail)
        session.mails_seen += 1
        return mail

    @staticmethod
    def _close_mail(session: SmtpSession, mail: Exchange | None = None) -> None:
        """The client side of ``mail`` (by default the open mail transaction) is over."""
        mail = mail if mail is not None else session.mail
        if mail is not None:
            mail.closed = True
            if session.mail is mail:
                session.mail = None

    def _push(self, session: SmtpSession, flow: Any, command: Command) -> None:
        """A command awaits its reply."""
        owner = command.owner
        owner.unanswered += 1
        owner.client_bytes += command.size
        if owner.start is None:
            owner.start = command.timestamp
        if len(owner.commands) < MAX_LIST:
            owner.commands.append(command)
        elif len(owner.commands) == MAX_LIST:
            owner.note(f"more than {MAX_LIST} commands: smtp.replies lists the first {MAX_LIST}")
        pending = session.pending
        pending.append(command)
        if len(pending) == 1 and flow is not None:
            self._waiting[flow] = session
        unfinished = sum(1 for mail in session.mails if mail.closed)
        if len(pending) > MAX_COMMANDS or unfinished > self.config.max_pending:
            self._give_up(session, flow, NOTE_OVERFLOW)

    def _give_up(self, session: SmtpSession, flow: Any, note: str) -> None:
        """Stop waiting for the replies of every pending command; publish what that finishes."""
        if not session.pending:
            return
        for command in session.pending:
            owner = command.owner
            owner.unanswered -= 1
            owner.note(note)
            owner.incomplete = True
        session.pending.clear()
        self._waiting.pop(flow, None)
        if session.client.mode in (BLOCKED, SASL):
            session.client.mode = COMMAND
        if session.mail is not None and session.mail.incomplete:
            self._close_mail(session)
        self._publish_finished(session, flow)

    def _publish_finished(self, session: SmtpSession, flow: Any) -> None:
        """Publish the oldest mail transactions that are over and answered."""
        mails = session.mails
        while mails and mails[0].closed and mails[0].unanswered <= 0:
            self._emit(flow, session, mails.popleft())

    def _publish_session(self, session: SmtpSession, flow: Any) -> None:
        """The session event: for a connection without mail transactions, or one that went TLS."""
        exchange = session.session
        if session.published or (session.mails_seen and not session.starttls):
            return
        if exchange.start is None:  # nothing was seen
            return
        session.published = True
        self._emit(flow, session, exchange)

    def _unmatched(self, session: SmtpSession, flow: FlowInfo, reply: Reply) -> None:
        """A reply to no command: published alone, as the shared helper does."""
        response = Message(reply.timestamp, not session.requester, reply.size)
        response.notes.append(NOTE_UNMATCHED_RESPONSE)
        response.error = reply.code >= 400
        if self.config.send_response:
            response.raw = "\r\n".join(reply.lines).encode()
        event = transaction_event(self, flow, None, response)
        event["smtp"] = {"response": reply.fields()}
        self.count("unmatched_responses")
        self.count("transactions")
        self.publish(event)

    # -- publishing ------------------------------------------------------------------------------

    def _emit(self, flow: Any, session: SmtpSession, exchange: Exchange) -> None:
        """Publish one exchange (a mail transaction or the session) as an event."""
        mail = exchange if isinstance(exchange, Mail) else None
        notes = list(exchange.notes)
        outcome = exchange.outcome
        if (
            mail is not None
            and mail.aborted_by
            and not mail.incomplete
            and (outcome is None or outcome.code < 400)
        ):
            notes.append(NOTE_ABORTED.format(mail.aborted_by))
        message = mail.message if mail is not None else None
        if message is not None and message.truncated:
            notes.append(f"message truncated at max_message_size ({message.limit} bytes)")
        start = exchange.start if exchange.start is not None else 0.0
        request = None
        if exchange.commands or exchange.client_bytes:
            request = Message(
                start, session.requester, exchange.client_bytes, notes=notes, error=exchange.incomplete
            )
            if self.config.send_request:
                request.raw = "\r\n".join(exchange.raw_commands).encode()
        response = None
        last = exchange.last
        if last is not None and outcome is not None:
            response = Message(
                last.timestamp, not session.requester, exchange.server_bytes, error=outcome.code >= 400
            )
            if request is None:
                response.notes = notes
                response.error = response.error or exchange.incomplete
            if self.config.send_response:
                response.raw = "\r\n".join(exchange.raw_replies).encode()
        if request is None and response is None:
            return
        event = transaction_event(self, flow, request, response)
        event["event"]["action"] = "mail-transaction" if mail is not None else "session"
        event["smtp"] = self._smtp_fields(session, exchange, mail)
        if message is not None:
            email = email_fields(bytes(message.data))
            if email:
                event["email"] = email
        if response is None or exchange.incomplete:
            self.count("unmatched_requests")
        self.count("transactions")
        self.publish(event)

    def _smtp_fields(self, session: SmtpSession, exchange: Exchange, mail: Mail | None) -> dict[str, Any]:
        smtp: dict[str, Any] = {}
        if session.banner is not None:
            smtp["banner"] = session.banner
        helo, auth = (mail.helo, mail.auth) if mail is not None else (session.helo, session.auth)
        if helo is not None:
            smtp["helo"] = helo
        if auth is not None:
            smtp["auth"] = {"mechanism": auth}
        if mail is not None:
            if mail.mail_from is not None:
                smtp["mail_from"] = mail.mail_from
            if mail.params:
                smtp["mail_params"] = mail.params
            if mail.rcpt_to:
                smtp["rcpt_to"] = mail.rcpt_to
            if mail.message is not None:
                smtp["data"] = {"bytes": mail.message.size}
        elif session.starttls:
            smtp["starttls"] = True
        if exchange.commands:
            smtp["replies"] = [
                {"command": command.verb, "code": command.reply.code}
                if command.reply is not None
                else {"command": command.verb}
                for command in exchange.commands
            ]
        if exchange.outcome is not None:
            smtp["response"] = exchange.outcome.fields()
        return smtp


def _chunk(argument: str) -> tuple[int, bool] | None:
    """The size and LAST flag of ``BDAT size [LAST]``; None when malformed."""
    words = argument.split()
    if not 1 <= len(words) <= 2 or not words[0].isdigit():
        return None
    if len(words) == 2 and words[1].upper() != "LAST":
        return None
    return int(words[0]), len(words) == 2


def _path(argument: str, prefix: str) -> tuple[str | None, list[str]]:
    """The address and ESMTP parameters of ``FROM:<path> params`` / ``TO:<path> params``."""
    if argument[: len(prefix)].upper() != prefix:
        return None, []
    rest = argument[len(prefix) :].lstrip()
    if rest.startswith("<"):
        end = rest.find(">")
        path, tail = (rest[1:], "") if end < 0 else (rest[1:end], rest[end + 1 :])
    else:
        path, _, tail = rest.partition(" ")
    if path.startswith("@") and ":" in path:  # a source route, to be ignored (RFC 5321 4.1.2)
        path = path.split(":", 1)[1]
    return path[:MAX_TEXT], tail.split()[:MAX_PARAMS]


@hookimpl
def flowpipe_add_analyzers() -> dict[str, type[TcpAnalyzer]]:
    return {"smtp": SmtpAnalyzer}
