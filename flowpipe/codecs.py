"""Event serialisation shared by outputs: ``json`` (one compact line) and ``pretty`` (indented).

orjson is used because it is several times faster than the standard library on event dicts and
emits UTF-8 bytes directly; values it cannot serialise (bytes, sets, IP address objects) fall
back to ``str``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from .event import Event

__all__ = ["CODECS", "encode_batch", "encode_records"]


def _fallback(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _json(event: Event) -> bytes:
    return orjson.dumps(event, default=_fallback)


def _pretty(event: Event) -> bytes:
    return orjson.dumps(event, default=_fallback, option=orjson.OPT_INDENT_2)


CODECS: dict[str, Callable[[Event], bytes]] = {"json": _json, "pretty": _pretty}
"""Event codecs by name: each turns one event into bytes (without the trailing newline)."""

_LINE_OPTIONS = {
    "json": orjson.OPT_APPEND_NEWLINE,
    "pretty": orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
}
"""orjson's options for each codec's records, newline included (no copy of each record to add it)."""


def encode_records(events: list[Event], codec: str = "json") -> list[bytes]:
    """Each event as a newline-terminated record (an NDJSON line for ``json``)."""
    dumps, option = orjson.dumps, _LINE_OPTIONS[codec]
    return [dumps(event, default=_fallback, option=option) for event in events]


def encode_batch(events: list[Event], codec: str = "json") -> bytes:
    """Events as newline-terminated records (NDJSON for ``json``), joined into one bytes object."""
    return b"".join(encode_records(events, codec))
