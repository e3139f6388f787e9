"""The message an SMTP client sends: its header section kept, its size counted, ``email.*`` fields.

:class:`MessageHeaders` collects the (dot-unstuffed) bytes of a message up to the blank line that
ends its header section, bounded by a limit; :func:`email_fields` turns that section into ECS
``email.*`` fields (RFC 5322 folding undone, RFC 2047 encoded words decoded, dates in ISO 8601).
The body is never kept.
"""

from __future__ import annotations

import re
from datetime import UTC
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

__all__ = ["MessageHeaders", "email_fields"]

MAX_ADDRESSES = 1000
"""Addresses listed per header field."""
_HEADERS_END = re.compile(rb"\n\r?\n")
_WANTED_HEADERS = frozenset(
    (
        b"subject",
        b"from",
        b"to",
        b"cc",
        b"bcc",
        b"reply-to",
        b"sender",
        b"message-id",
        b"date",
        b"content-type",
        b"x-mailer",
    )
)
_ADDRESS_HEADERS = (
    (b"from", "from"),
    (b"to", "to"),
    (b"cc", "cc"),
    (b"bcc", "bcc"),
    (b"reply-to", "reply_to"),
)
"""Header fields whose addresses become ``email.<field>.address`` lists."""


class MessageHeaders:
    """The header section of a message (up to ``limit`` bytes) and the size of the whole message."""

    __slots__ = ("data", "done", "limit", "size", "truncated")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.done = False
        """The header section is complete (or cut): what follows is only counted."""
        self.truncated = False
        self.size = 0
        """Bytes of the message so far (after dot-unstuffing)."""

    def add(self, chunk: bytes) -> None:
        """Append message bytes; keep them while the header section lasts."""
        self.size += len(chunk)
        if self.done:
            return
        start = max(len(self.data) - 2, 0)
        room = self.limit - len(self.data)
        self.data += chunk[:room]
        if self.data[:1] == b"\n" or self.data[:2] == b"\r\n":  # no header section at all
            self.data.clear()
            self.done = True
            return
        end = _HEADERS_END.search(self.data, start)
        if end is not None:
            del self.data[end.start() + 1 :]
            self.done = True
        elif len(chunk) > room:
            self.cut()

    def cut(self) -> None:
        """The header section outgrew the limit: keep its whole lines, read no more of it."""
        del self.data[self.data.rfind(b"\n") + 1 :]
        self.truncated = self.done = True

    def lost(self, nbytes: int) -> None:
        """``nbytes`` of the message were not captured: count them, keep no more headers."""
        self.size += nbytes
        self.done = True


def email_fields(headers: bytes) -> dict[str, Any]:
    """ECS ``email.*`` fields from a message's header section (RFC 5322, folded lines allowed)."""
    values = _header_values(headers)
    email: dict[str, Any] = {}
    subject = values.get(b"subject")
    if subject:
        email["subject"] = _decode_words(subject[0])
    for header, name in _ADDRESS_HEADERS:
        found = values.get(header)
        if found:
            addresses = [address for _, address in getaddresses(found) if address][:MAX_ADDRESSES]
            if addresses:
                email[name] = {"address": addresses}
    sender = values.get(b"sender")
    if sender:
        addresses = [address for _, address in getaddresses(sender[:1]) if address]
        if addresses:
            email["sender"] = {"address": addresses[0]}
    message_id = values.get(b"message-id")
    if message_id:
        identifier = message_id[0].strip()
        if identifier.startswith("<") and identifier.endswith(">"):
            identifier = identifier[1:-1]
        if identifier:
            email["message_id"] = identifier
    date = values.get(b"date")
    if date:
        timestamp = _date(date[0])
        if timestamp is not None:
            email["origination_timestamp"] = timestamp
    content_type = values.get(b"content-type")
    if content_type:
        mime_type = content_type[0].split(";", 1)[0].strip().lower()
        if mime_type:
            email["content_type"] = mime_type
    mailer = values.get(b"x-mailer")
    if mailer:
        email["x_mailer"] = _decode_words(mailer[0])
    return email


def _header_values(headers: bytes) -> dict[bytes, list[str]]:
    """The unfolded values of the wanted header fields, by lower-case name, in order."""
    fields: list[tuple[bytes, list[bytes]]] = []
    current: list[bytes] | None = None
    for raw in headers.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line[:1] in (b" ", b"\t"):  # a folded continuation
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        current = [value] if colon and name in _WANTED_HEADERS else None
        if current is not None:
            fields.append((name, current))
    values: dict[bytes, list[str]] = {}
    for name, pieces in fields:
        values.setdefault(name, []).append(b"".join(pieces).decode("utf-8", "replace").strip())
    return values


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words (``=?UTF-8?B?...?=``); the text as it is when they are broken."""
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return value


def _date(value: str) -> str | None:
    """An RFC 5322 date as ISO 8601 UTC with milliseconds; None when it does not parse."""
    try:
        moment = parsedate_to_datetime(value)
        if moment.tzinfo is None:  # "-0000": no zone information, taken as UTC
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
