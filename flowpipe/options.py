"""Typed option schemas for stages.

Every stage class declares its options as a tuple of :class:`Option`. The config layer validates a
pipeline file against them, ``flowpipe plugins NAME`` prints them, and the stage receives the
validated, converted values as attributes of ``self.config``.

A type is a small object with a human name (shown in errors and in ``flowpipe plugins NAME``) and
a ``convert`` method that returns the converted value or raises :class:`OptionError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from .suggest import did_you_mean

__all__ = [
    "AnyValue",
    "Bool",
    "ByteSize",
    "Choice",
    "Duration",
    "FieldPath",
    "Float",
    "Int",
    "ListOf",
    "MapOf",
    "Option",
    "OptionError",
    "OptionType",
    "Ports",
    "Str",
    "Struct",
    "validate_options",
]

_MISSING: Any = object()


class OptionError(ValueError):
    """A value does not fit its option. ``path`` is the key path below the failing option."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class OptionType:
    """Base class of option types: a name for humans and a converter."""

    name = "any"

    def convert(self, value: Any) -> Any:
        return value

    def __str__(self) -> str:
        return self.name


class AnyValue(OptionType):
    """Accepts any value unchanged."""


class Str(OptionType):
    name = "string"

    def __init__(self, *, nonempty: bool = False) -> None:
        self.nonempty = nonempty

    def convert(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise OptionError(f"expected a string, got {_describe(value)}")
        text = str(value)
        if self.nonempty and not text:
            raise OptionError("expected a non-empty string")
        return text


class Bool(OptionType):
    name = "boolean"

    def convert(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise OptionError(f"expected true or false, got {_describe(value)}")
        return value


class Int(OptionType):
    name = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        if minimum is not None and maximum is not None:
            self.name = f"integer {minimum}..{maximum}"
        elif minimum is not None:
            self.name = f"integer >= {minimum}"

    def convert(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"expected an integer, got {_describe(value)}")
        if self.minimum is not None and value < self.minimum:
            raise OptionError(f"must be >= {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise OptionError(f"must be <= {self.maximum}, got {value}")
        return value


class Float(OptionType):
    name = "number"

    def __init__(self, minimum: float | None = None, *, exclusive_minimum: bool = False) -> None:
        self.minimum = minimum
        self.exclusive_minimum = exclusive_minimum
        if minimum is not None:
            self.name = f"number {'>' if exclusive_minimum else '>='} {minimum:g}"

    def convert(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"expected a number, got {_describe(value)}")
        if self.minimum is not None:
            too_small = value <= self.minimum if self.exclusive_minimum else value < self.minimum
            if too_small:
                op = ">" if self.exclusive_minimum else ">="
                raise OptionError(f"must be {op} {self.minimum:g}, got {value:g}")
        return float(value)


class FieldPath(OptionType):
    """A dotted path into events (``source.ip``); with ``root``, ``""`` names the event itself."""

    name = "field"

    def __init__(self, *, root: bool = False) -> None:
        self.root = root

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise OptionError(f"expected a field name such as source.ip, got {_describe(value)}")
        if value == "" and self.root:
            return value
        if any(not part for part in value.split(".")):
            raise OptionError(f"invalid field name {value!r}: expected dotted names such as source.ip")
        return value


class Choice(OptionType):
    """One of a fixed set of strings."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.name = " | ".join(choices)

    def convert(self, value: Any) -> str:
        if value not in self.choices:
            raise OptionError(f"expected one of {', '.join(self.choices)}; got {_describe(value)}")
        return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Duration(OptionType):
    """Seconds as a float; accepts numbers (seconds) or strings such as ``500ms``, ``10s``, ``5m``."""

    name = "duration"

    def convert(self, value: Any) -> float:
        if isinstance(value, bool):
            raise OptionError(f"expected a duration such as 10s, got {_describe(value)}")
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION.match(value)):
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        else:
            raise OptionError(f"expected a duration such as 10s or 500ms, got {_describe(value)}")
        if seconds < 0:
            raise OptionError(f"must not be negative, got {value}")
        return seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


class ByteSize(OptionType):
    """Bytes as an int; accepts integers or strings such as ``64KiB``, ``10MB``, ``1g``."""

    name = "byte size"

    def convert(self, value: Any) -> int:
        if isinstance(value, bool):
            raise OptionError(f"expected a size such as 10MB, got {_describe(value)}")
        if isinstance(value, int):
            size = value
        elif isinstance(value, str) and (match := _SIZE.match(value)):
            unit = (match.group(2) or "").lower().rstrip("b")
            binary = unit.endswith("i")
            base = _SIZE_UNITS[unit.rstrip("i")]
            if binary:
                base = 1024 ** {"k": 1, "m": 2, "g": 3, "t": 4}[unit[0]]
            size = int(float(match.group(1)) * base)
        else:
            raise OptionError(f"expected a size such as 10MB or 64KiB, got {_describe(value)}")
        if size < 0:
            raise OptionError(f"must not be negative, got {value}")
        return size


class ListOf(OptionType):
    """A list of items of one type; a single scalar is accepted as a one-item list."""

    def __init__(self, item: OptionType, *, min_items: int = 0) -> None:
        self.item = item
        self.min_items = min_items
        self.name = f"list of {item.name}"

    def convert(self, value: Any) -> list[Any]:
        if value is None or isinstance(value, Mapping):
            raise OptionError(f"expected a {self.name}, got {_describe(value)}")
        items = value if isinstance(value, list) else [value]
        if len(items) < self.min_items:
            raise OptionError(f"expected at least {self.min_items} item(s)")
        converted = []
        for index, item in enumerate(items):
            try:
                converted.append(self.item.convert(item))
            except OptionError as error:
                raise OptionError(error.message, (index, *error.path)) from None
        return converted


class MapOf(OptionType):
    """A mapping from string keys to values of one type."""

    def __init__(self, value: OptionType) -> None:
        self.value = value
        self.name = f"mapping of string to {value.name}"

    def convert(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise OptionError(f"expected a mapping, got {_describe(value)}")
        converted = {}
        for key, item in value.items():
            try:
                converted[str(key)] = self.value.convert(item)
            except OptionError as error:
                raise OptionError(error.message, (str(key), *error.path)) from None
        return converted


class Ports(OptionType):
    """A list of TCP/UDP ports and inclusive ranges (``[80, 8080, "8000-8100"]``).

    Converted to a sorted tuple of distinct port numbers (a range of the whole port space is
    65,535 numbers: acceptable for a value built once at start-up).
    """

    name = "list of ports and ranges (80, 8000-8100)"

    def convert(self, value: Any) -> tuple[int, ...]:
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise OptionError(f"expected a list of ports, got {_describe(value)}")
        ports: set[int] = set()
        for index, item in enumerate(value):
            ports.update(self._one(item, index))
        return tuple(sorted(ports))

    @staticmethod
    def _one(item: Any, index: int) -> range:
        if isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        elif isinstance(item, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", item):
            low_text, _, high_text = item.partition("-")
            low = int(low_text)
            high = int(high_text) if high_text else low
        else:
            raise OptionError(
                f"expected a port (1-65535) or a range such as 8000-8100, got {_describe(item)}", (index,)
            )
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise OptionError(f"ports are 1-65535, got {item!r}", (index,))
        if low > high:
            raise OptionError(f"range {item!r} ends before it starts", (index,))
        return range(low, high + 1)


class Struct(OptionType):
    """A mapping with its own declared options (nested sections such as ``retry:``)."""

    def __init__(self, *options: Option) -> None:
        self.options = options
        self.name = "mapping"

    def convert(self, value: Any) -> SimpleNamespace:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise OptionError(f"expected a mapping, got {_describe(value)}")
        errors = validate_options(self.options, value)
        if errors:
            raise errors[0]
        return build_namespace(self.options, value)


@dataclass(frozen=True)
class Option:
    """One declared option of a stage: its key, type, default and a one-line description."""

    name: str
    type: OptionType
    default: Any = _MISSING
    description: str = ""
    required: bool = field(default=False)

    def __post_init__(self) -> None:
        if self.default is _MISSING and not self.required and not isinstance(self.type, Struct):
            raise TypeError(f"option {self.name!r} needs a default or required=True")

    @property
    def default_text(self) -> str:
        """The default as shown to users."""
        if self.required:
            return "(required)"
        if isinstance(self.type, Struct):
            return "(section)"
        if self.default is None:
            return "null"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)

    def default_value(self) -> Any:
        if isinstance(self.type, Struct) and self.default is _MISSING:
            return self.type.convert({})
        default = self.default
        if default is None:
            return None
        # Defaults are declared as users write them ("10MiB", "30s") and converted like their values.
        return self.type.convert(list(default) if isinstance(default, tuple) else default)


def validate_options(options: Iterable[Option], values: Mapping[str, Any]) -> list[OptionError]:
    """Check ``values`` against ``options``; return every error with its key path."""
    declared = {option.name: option for option in options}
    errors: list[OptionError] = []
    for name, option in declared.items():
        if name in values:
            continue
        if option.required:
            errors.append(OptionError("missing required option", (name,)))
        elif isinstance(option.type, Struct) and option.default is _MISSING:  # its required options
            nested = validate_options(option.type.options, {})
            errors.extend(OptionError(error.message, (name, *error.path)) for error in nested)
    for key, value in values.items():  # in file order, so errors come out in file order
        option = declared.get(key)
        if option is None:
            hint = did_you_mean(str(key), declared, known="options")
            errors.append(OptionError(f"unknown option{hint}", (key,)))
        elif value is None and option.default is None and not option.required:
            continue
        elif isinstance(option.type, Struct) and (value is None or isinstance(value, Mapping)):
            nested = validate_options(option.type.options, value or {})  # every error inside
            errors.extend(OptionError(error.message, (key, *error.path)) for error in nested)
        else:
            try:
                option.type.convert(value)
            except OptionError as error:
                errors.append(OptionError(error.message, (key, *error.path)))
    return errors


def build_namespace(options: Iterable[Option], values: Mapping[str, Any]) -> SimpleNamespace:
    """Convert already validated ``values`` into a namespace, filling defaults."""
    result = {}
    for option in options:
        if option.name in values and not (values[option.name] is None and option.default is None):
            try:
                result[option.name] = option.type.convert(values[option.name])
            except OptionError as error:  # a check spanning the option's parts (Struct subclasses)
                raise OptionError(error.message, (option.name, *error.path)) from None
        else:
            result[option.name] = option.default_value()
    return SimpleNamespace(**result)
