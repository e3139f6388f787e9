"""Logstash/Beats format strings: names built from each event (index names, Kafka topics).

``%{[event][dataset]}``, ``%{[event.dataset]}`` and ``%{event.dataset}`` insert a field's value;
``%{[event.dataset]:unknown}`` gives a default for events without the field; ``%{+yyyy.MM.dd}``
inserts the event's ``@timestamp`` (UTC) in Joda tokens ``yyyy yy MM dd HH mm ss`` (other
characters are kept, text in single quotes literally). Everything else is literal text.

A :class:`Template` is compiled once, when the configuration is loaded (the :class:`Sprintf`
option type does it and reports mistakes with their place); :meth:`Template.render` is cheap.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .event import Event, get_field
from .options import OptionError, OptionType

__all__ = ["MissingFieldError", "Sprintf", "Template"]

_REFERENCE = re.compile(r"%\{([^}]*)\}")
_JODA = re.compile(r"'[^']*'|yyyy|yy|MM|dd|HH|mm|ss|[A-Za-z]+")
_TIMESTAMP_SLICES = {
    "yyyy": (0, 4),
    "yy": (2, 4),
    "MM": (5, 7),
    "dd": (8, 10),
    "HH": (11, 13),
    "mm": (14, 16),
    "ss": (17, 19),
}
_MISSING: Any = object()


class MissingFieldError(LookupError):
    """An event lacks a field the template needs and the template gives no default."""


class Template:
    """A compiled format string."""

    __slots__ = ("parts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[str | tuple[str, Any, Any]] = []
        """Literal strings, ``("field", path, default)`` and ``("date", slices, None)`` parts."""
        position = 0
        for match in _REFERENCE.finditer(text):
            if match.start() > position:
                self.parts.append(text[position : match.start()])
            self.parts.append(_compile(match.group(1)))
            position = match.end()
        if "%{" in text[position:]:
            raise OptionError(f"unclosed %{{ in {text!r}")
        if position < len(text):
            self.parts.append(text[position:])

    @property
    def is_static(self) -> bool:
        """Whether the result is the same for every event."""
        return all(isinstance(part, str) for part in self.parts)

    def render(self, event: Event) -> str:
        """The string for ``event``; raises :class:`MissingFieldError` for a missing field without default."""
        pieces: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            kind, spec, default = part
            if kind == "field":
                value = get_field(event, spec, _MISSING)
                if value is _MISSING or value is None:
                    if default is None:
                        raise MissingFieldError(f"the event has no field {spec!r} for {self.text!r}")
                    value = default
                pieces.append(value if isinstance(value, str) else str(value))
            else:
                stamp = event.get("@timestamp")
                if not isinstance(stamp, str) or len(stamp) < 19:
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                pieces.append(
                    "".join(piece if isinstance(piece, str) else stamp[piece[0] : piece[1]] for piece in spec)
                )
        return "".join(pieces)


def _compile(reference: str) -> tuple[str, Any, Any]:
    if reference.startswith("+"):
        pattern = reference[1:]
        if not pattern:
            raise OptionError("empty date pattern %{+}")
        pieces: list[Any] = []
        position = 0
        for match in _JODA.finditer(pattern):
            if match.start() > position:
                pieces.append(pattern[position : match.start()])
            token = match.group(0)
            if token.startswith("'"):  # quoted literal text, as in Joda
                pieces.append(token[1:-1])
            elif token not in _TIMESTAMP_SLICES:
                raise OptionError(
                    f"unknown date token {token!r} in %{{+{pattern}}} (use yyyy, yy, MM, dd, HH, mm, ss)"
                )
            else:
                pieces.append(_TIMESTAMP_SLICES[token])
            position = match.end()
        if position < len(pattern):
            pieces.append(pattern[position:])
        return ("date", tuple(pieces), None)
    name, default = reference, None
    if reference.startswith("["):
        closing = reference.rfind("]")
        name, rest = reference[: closing + 1], reference[closing + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise OptionError(f"expected ':default' after the field in %{{{reference}}}")
            default = rest[1:]
        inner = name[1:-1]
        path = ".".join(part for part in inner.split("][")) if "][" in inner else inner
    else:
        path = reference
    if (
        not path
        or not re.fullmatch(r"[^\[\]\s]+", path)
        or ".." in path
        or path.startswith(".")
        or path.endswith(".")
    ):
        raise OptionError(f"bad field reference %{{{reference}}}")
    return ("field", path, default)


class Sprintf(OptionType):
    """A format string with ``%{[field]}`` and ``%{+yyyy.MM.dd}`` references, compiled to a Template."""

    name = "format string (%{[field]}, %{+yyyy.MM.dd})"

    def convert(self, value: Any) -> Template:
        if isinstance(value, Template):
            return value
        if not isinstance(value, str) or not value:
            raise OptionError(f"expected a non-empty format string, got {value!r}")
        return Template(value)
