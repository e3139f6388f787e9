"""Events: plain nested dicts with Elastic Common Schema field names.

Events are nested as Beats and Logstash ship them (``{"source": {"ip": ...}}``); code refers to a
field by its dotted path (``"source.ip"``). These helpers read and write such paths.
Events in a batch handed to outputs are shared by every output: outputs must not modify them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Event",
    "delete_field",
    "field_getter",
    "format_timestamp",
    "get_field",
    "get_path",
    "has_field",
    "set_field",
]

Event = dict[str, Any]
_MISSING: Any = object()


def get_field(event: Event, path: str, default: Any = None) -> Any:
    """The value at dotted ``path``, or ``default`` when any part is missing."""
    return get_path(event, path.split("."), default)


def get_path(event: Event, parts: Sequence[str], default: Any = None) -> Any:
    """The value at the path already split into ``parts``, or ``default`` when any is missing."""
    node: Any = event
    for part in parts:
        if not isinstance(node, dict):
            return default
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return default
    return node


def field_getter(path: str, default: Any = None) -> Callable[[Event], Any]:
    """A fast reader of dotted ``path`` (split once, here), for code that reads it per event."""
    parts = tuple(path.split("."))
    if len(parts) == 1:
        key = parts[0]
        return lambda event: event.get(key, default)
    return lambda event: get_path(event, parts, default)


def has_field(event: Event, path: str) -> bool:
    """Whether dotted ``path`` exists in ``event``."""
    return get_field(event, path, _MISSING) is not _MISSING


def set_field(event: Event, path: str, value: Any) -> None:
    """Set dotted ``path`` to ``value``, creating intermediate objects."""
    parts = path.split(".")
    node = event
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def delete_field(event: Event, path: str) -> bool:
    """Remove dotted ``path``; return whether it existed. Empty parents are left in place."""
    parts = path.split(".")
    node: Any = event
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return False
    if isinstance(node, dict) and parts[-1] in node:
        del node[parts[-1]]
        return True
    return False


_second_cache: tuple[int, str] = (-1, "")
_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def format_timestamp(seconds: float) -> str:
    """An ``@timestamp`` value: RFC 3339 UTC with milliseconds, as Beats write it.

    Packets arrive in time order, so the formatted whole second is cached. The time is first
    rounded to the microsecond: near 1.7e9 a float is only precise to about 0.24 us, so
    ``1700000000.123`` is stored as ``1700000000.12299990...`` and must still give ``.123``.
    """
    global _second_cache
    whole, micros = divmod(round(seconds * 1_000_000), 1_000_000)
    cached_second, text = _second_cache
    if cached_second != whole:
        text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (whole, text)  # one assignment: safe to share between threads
    return text + _MILLIS[micros // 1000]
