"""Beats-style conditions: a mapping from the pipeline file compiled into a fast event predicate.

A condition is a mapping with exactly one operator::

    equals:     {http.response.status_code: 200}        # every field listed must hold
    contains:   {url.path: /admin}                      # substring; for a list, membership
    regexp:     {user_agent.original: "^curl/"}         # Python ``re``, search anywhere
    range:      {event.duration: {gte: 1000000}}        # gt, gte, lt, lte on numbers
    has_fields: [http.request.method, url.path]
    network:    {source.ip: private}                    # CIDR, named range, or a list of them
    and:        [COND, COND, ...]
    or:         [COND, COND, ...]
    not:        COND

Field names are dotted paths into nested events (as :func:`flowpipe.event.get_field` reads
them); nested mappings in a condition are the same as dotted keys (``{http: {method: GET}}`` is
``{http.method: GET}``). A missing field makes ``equals``, ``contains``, ``regexp``, ``range``
and ``network`` false, as in Beats.

:func:`compile_condition` checks everything once, at configuration time (operators, regular
expressions, CIDRs, range bounds, shapes), and raises :class:`~flowpipe.options.OptionError`
with the key path of the problem (``or.1.regexp.url.path``). The predicate it returns never
raises: regular expressions and networks are compiled beforehand, and the result of each
``network`` test is cached per address (bounded LRU).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from .event import Event, field_getter
from .options import OptionError, OptionType, _describe
from .suggest import did_you_mean

__all__ = ["NAMED_NETWORKS", "OPERATORS", "Condition", "Predicate", "compile_condition"]

Predicate = Callable[[Event], bool]
"""A compiled condition: whether it holds for an event."""
KeyPath = tuple[str | int, ...]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

OPERATORS = ("equals", "contains", "regexp", "range", "has_fields", "network", "and", "or", "not")
RANGE_BOUNDS = ("gt", "gte", "lt", "lte")
NETWORK_CACHE_SIZE = 4096
"""Addresses whose result is remembered, per ``network`` field."""

_MISSING: Any = object()


# -- field access --------------------------------------------------------------------------------


def _getter(field: str) -> Callable[[Event], Any]:
    """A reader of dotted ``field`` returning ``_MISSING`` when it is absent."""
    return field_getter(field, _MISSING)


def _fields(
    spec: Any, path: KeyPath, stop: Callable[[Any], bool] | None = None
) -> list[tuple[str, Any, KeyPath]]:
    """The ``(dotted field, value, key path)`` leaves of an operator's field mapping.

    Nested mappings are flattened into dotted names (as Beats does), unless ``stop`` says a
    mapping is a value of its own (the bounds of ``range``).
    """
    if not isinstance(spec, Mapping):
        raise OptionError(f"expected a mapping of field names to values, got {_describe(spec)}", path)
    if not spec:
        raise OptionError("expected at least one field", path)
    leaves: list[tuple[str, Any, KeyPath]] = []

    def walk(mapping: Mapping[Any, Any], prefix: str, where: KeyPath) -> None:
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            here = (*where, str(key))
            if any(not part for part in name.split(".")):
                raise OptionError(f"invalid field name {name!r}", here)
            if isinstance(value, Mapping) and value and not (stop and stop(value)):
                walk(value, f"{name}.", here)
            else:
                leaves.append((name, value, here))

    walk(spec, "", path)
    return leaves


def _all(checks: list[Predicate]) -> Predicate:
    if len(checks) == 1:
        return checks[0]
    checks_tuple = tuple(checks)

    def every(event: Event) -> bool:
        for check in checks_tuple:  # noqa: SIM110 (a plain loop: no generator per event)
            if not check(event):
                return False
        return True

    return every


# -- operators -----------------------------------------------------------------------------------


def _equals(spec: Any, path: KeyPath) -> Predicate:
    checks = []
    for field, expected, where in _fields(spec, path):
        if not isinstance(expected, (str, int, float)):  # bool is an int
            raise OptionError(f"expected a string, number or boolean, got {_describe(expected)}", where)
        checks.append(_equal_to(_getter(field), expected))
    return _all(checks)


def _equal_to(get: Callable[[Event], Any], expected: str | float | bool) -> Predicate:
    """As in Beats, strings equal strings, numbers numbers and booleans booleans only."""
    if isinstance(expected, bool):
        return lambda event: get(event) is expected
    if isinstance(expected, str):
        return lambda event: get(event) == expected

    def equal_number(event: Event) -> bool:
        value = get(event)
        return type(value) in (int, float) and value == expected

    return equal_number


def _contains(spec: Any, path: KeyPath) -> Predicate:
    checks = []
    for field, expected, where in _fields(spec, path):
        if not isinstance(expected, str):
            raise OptionError(f"expected a string, got {_describe(expected)}", where)
        get = _getter(field)

        def contains(event: Event, get: Callable[[Event], Any] = get, expected: str = expected) -> bool:
            value = get(event)
            if isinstance(value, str):
                return expected in value
            if isinstance(value, list):
                return expected in value
            return False

        checks.append(contains)
    return _all(checks)


def _regexp(spec: Any, path: KeyPath) -> Predicate:
    checks = []
    for field, expected, where in _fields(spec, path):
        if not isinstance(expected, str):
            raise OptionError(f"expected a regular expression string, got {_describe(expected)}", where)
        try:
            search = re.compile(expected).search
        except re.error as error:
            raise OptionError(f"invalid regular expression {expected!r}: {error}", where) from None
        get = _getter(field)

        def matches(event: Event, get: Callable[[Event], Any] = get, search: Any = search) -> bool:
            value = get(event)
            if isinstance(value, str):
                return search(value) is not None
            if isinstance(value, list):
                return any(isinstance(item, str) and search(item) is not None for item in value)
            return False

        checks.append(matches)
    return _all(checks)


def _range(spec: Any, path: KeyPath) -> Predicate:
    bounds: dict[str, dict[str, float]] = {}
    for name, value, where in _fields(spec, path, stop=lambda value: set(value) <= set(RANGE_BOUNDS)):
        if isinstance(value, Mapping):  # field: {gte: 1, lt: 2}
            if not value:
                raise OptionError("expected bounds such as {gte: 400, lt: 500} (gt, gte, lt, lte)", where)
            field, items = name, [(str(key), bound, (*where, str(key))) for key, bound in value.items()]
        else:  # field.gte: 1
            field, _, op = name.rpartition(".")
            if op not in RANGE_BOUNDS or not field:
                raise OptionError(
                    f"expected bounds such as {{gte: 400, lt: 500}} (gt, gte, lt, lte), "
                    f"got {_describe(value)}",
                    where,
                )
            items = [(op, value, where)]
        for op, bound, bound_path in items:
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                raise OptionError(f"expected a number, got {_describe(bound)}", bound_path)
            bounds.setdefault(field, {})[op] = float(bound)
    return _all([_bounded(_getter(field), limits) for field, limits in bounds.items()])


def _bounded(get: Callable[[Event], Any], limits: dict[str, float]) -> Predicate:
    gt, gte, lt, lte = (limits.get(op) for op in RANGE_BOUNDS)

    def within(event: Event) -> bool:
        value = get(event)
        return (
            type(value) in (int, float)
            and (gt is None or value > gt)
            and (gte is None or value >= gte)
            and (lt is None or value < lt)
            and (lte is None or value <= lte)
        )

    return within


def _has_fields(spec: Any, path: KeyPath) -> Predicate:
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names:
        raise OptionError(f"expected a list of field names, got {_describe(spec)}", path)
    getters = []
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
            raise OptionError(f"expected a field name, got {_describe(name)}", (*path, index))
        getters.append(_getter(name))
    return _all([lambda event, get=get: get(event) is not _MISSING for get in getters])


def _not(spec: Any, path: KeyPath) -> Predicate:
    inner = _compile(spec, path)
    return lambda event: not inner(event)


def _combined(spec: Any, path: KeyPath, every: bool) -> Predicate:
    if not isinstance(spec, list) or not spec:
        raise OptionError(f"expected a list of conditions, got {_describe(spec)}", path)
    parts = tuple(_compile(item, (*path, index)) for index, item in enumerate(spec))
    if every:
        return _all(list(parts))

    def any_holds(event: Event) -> bool:
        for part in parts:  # noqa: SIM110 (a plain loop: no generator per event)
            if part(event):
                return True
        return False

    return any_holds


# -- network -------------------------------------------------------------------------------------

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_PRIVATE = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("fd00::/8"),  # RFC 4193 locally assigned, as Beats has it
)
_LINK_LOCAL_MULTICAST_V4 = ipaddress.ip_network("224.0.0.0/24")


def _multicast_scope(address: Address, scope: int) -> bool:
    """An IPv6 multicast address of ``scope`` (1 interface-local, 2 link-local)."""
    packed = address.packed
    return address.version == 6 and packed[0] == 0xFF and packed[1] & 0x0F == scope


def _link_local_multicast(address: Address) -> bool:
    if address.version == 4:
        return address in _LINK_LOCAL_MULTICAST_V4
    return _multicast_scope(address, 2)


def _private(address: Address) -> bool:
    return any(address in network for network in _PRIVATE)


def _global_unicast(address: Address) -> bool:
    return not (
        address == _BROADCAST
        or address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
    )


def _public(address: Address) -> bool:
    return not (
        _private(address)
        or address.is_loopback
        or address.is_unspecified
        or address == _BROADCAST
        or address.is_link_local
        or _link_local_multicast(address)
        or _multicast_scope(address, 1)
    )


NAMED_NETWORKS: dict[str, Callable[[Address], bool]] = {
    "loopback": lambda address: address.is_loopback,
    "global_unicast": _global_unicast,
    "unicast": _global_unicast,
    "link_local_unicast": lambda address: address.is_link_local,
    "interface_local_multicast": lambda address: _multicast_scope(address, 1),
    "link_local_multicast": _link_local_multicast,
    "multicast": lambda address: address.is_multicast,
    "unspecified": lambda address: address.is_unspecified,
    "private": _private,
    "public": _public,
}
"""Beats' named ranges (Go's ``net.IP`` methods); IPv4-mapped IPv6 addresses count as IPv4."""


def _parse_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _network_test(text: Any, where: KeyPath) -> Callable[[Address], bool]:
    if not isinstance(text, str):
        raise OptionError(f"expected a CIDR or a named network, got {_describe(text)}", where)
    named = NAMED_NETWORKS.get(text)
    if named is not None:
        return named
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        hint = did_you_mean(text, NAMED_NETWORKS)
        raise OptionError(
            f"invalid network {text!r}{hint}: expected a CIDR such as 192.0.2.0/24 or 2001:db8::/32, "
            f"or one of {', '.join(NAMED_NETWORKS)}",
            where,
        ) from None
    return network.__contains__


def _network(spec: Any, path: KeyPath) -> Predicate:
    checks = []
    for field, value, where in _fields(spec, path):
        if isinstance(value, list):
            if not value:
                raise OptionError("expected at least one network", where)
            tests = tuple(_network_test(item, (*where, index)) for index, item in enumerate(value))
        else:
            tests = (_network_test(value, where),)

        @lru_cache(maxsize=NETWORK_CACHE_SIZE)
        def contains(text: str, tests: tuple[Callable[[Address], bool], ...] = tests) -> bool:
            address = _parse_address(text)
            return address is not None and any(test(address) for test in tests)

        get = _getter(field)

        def in_network(event: Event, get: Callable[[Event], Any] = get, contains: Any = contains) -> bool:
            value = get(event)
            if isinstance(value, str):
                return contains(value)
            if isinstance(value, list):
                return any(isinstance(item, str) and contains(item) for item in value)
            return False

        checks.append(in_network)
    return _all(checks)


# -- compiling -----------------------------------------------------------------------------------

_COMPILERS: dict[str, Callable[[Any, KeyPath], Predicate]] = {
    "equals": _equals,
    "contains": _contains,
    "regexp": _regexp,
    "range": _range,
    "has_fields": _has_fields,
    "network": _network,
    "and": lambda spec, path: _combined(spec, path, every=True),
    "or": lambda spec, path: _combined(spec, path, every=False),
    "not": _not,
}


def _compile(spec: Any, path: KeyPath) -> Predicate:
    if not isinstance(spec, Mapping) or not spec:
        raise OptionError(
            f"expected a condition: a mapping with one of {', '.join(OPERATORS)}; got {_describe(spec)}", path
        )
    key, *others = spec
    operator = str(key)
    if others:
        raise OptionError(
            f"a condition has one operator, got {operator!r} and {str(others[0])!r}: "
            "combine them with 'and' or 'or'",
            (*path, str(others[0])),
        )
    compiler = _COMPILERS.get(operator)
    if compiler is None:
        hint = did_you_mean(operator, OPERATORS)
        raise OptionError(
            f"unknown condition operator{hint}; operators: {', '.join(OPERATORS)}", (*path, operator)
        )
    return compiler(spec[key], (*path, operator))


def compile_condition(spec: Any) -> Predicate:
    """Check a condition mapping and compile it into a predicate on events.

    Raise :class:`~flowpipe.options.OptionError` whose ``path`` leads to the faulty part.
    """
    return _compile(spec, ())


class Condition(OptionType):
    """An option holding a condition (the ``when:`` of processors); converts to a predicate."""

    name = "condition"

    def convert(self, value: Any) -> Predicate:
        return compile_condition(value)
