"""Conditions (flowpipe.conditions): every operator on nested events, combinations, IPv4 and IPv6
networks, and the exact key path of every invalid condition."""

from __future__ import annotations

from typing import Any

import pytest

from flowpipe import conditions
from flowpipe.conditions import NAMED_NETWORKS, Condition, compile_condition
from flowpipe.options import Option, OptionError, validate_options

EVENT: dict[str, Any] = {
    "@timestamp": "2023-11-14T22:13:20.000Z",
    "event": {"dataset": "http", "duration": 1500000, "kind": "event"},
    "http": {"request": {"method": "GET"}, "response": {"status_code": 404, "mime_type": None}},
    "url": {"path": "/admin/login.php", "query": ""},
    "network": {"transport": "tcp", "protocol": "http"},
    "source": {"ip": "192.168.1.10", "port": 51000},
    "destination": {"ip": "2a02:ec80::5", "port": 80},
    "related": {"ip": ["192.168.1.10", "2a02:ec80::5"]},
    "tags": ["web", "internal"],
    "ratio": 0.25,
    "secure": False,
    "count": 1,
}


def holds(spec: Any, event: dict[str, Any] = EVENT) -> bool:
    return compile_condition(spec)(event)


def error_of(spec: Any) -> tuple[str, str]:
    """The key path and message of the error ``spec`` raises, as ``flowpipe check`` shows them."""
    with pytest.raises(OptionError) as caught:
        compile_condition(spec)
    return ".".join(str(part) for part in caught.value.path), caught.value.message


# -- operators -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"http.request.method": "GET"}, True),
        ({"http.request.method": "get"}, False),
        ({"http": {"request": {"method": "GET"}}}, True),  # nested mappings are dotted names
        ({"http.response.status_code": 404}, True),
        ({"http.response.status_code": 404.0}, True),
        ({"http.response.status_code": "404"}, False),  # a string is not a number
        ({"ratio": 0.25}, True),
        ({"secure": False}, True),
        ({"count": True}, False),  # a boolean is not a number, nor the other way round
        ({"secure": 0}, False),
        ({"http.request.method": "GET", "network.transport": "tcp"}, True),
        ({"http.request.method": "GET", "network.transport": "udp"}, False),  # all fields must hold
        ({"missing.field": "x"}, False),
        ({"http.request": "GET"}, False),  # a mapping is not a string
        ({"tags": "web"}, False),  # a list is not a string
    ],
)
def test_equals(spec: dict[str, Any], expected: bool) -> None:
    assert holds({"equals": spec}) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"url.path": "/admin"}, True),
        ({"url.path": "login.php"}, True),
        ({"url.path": "/Admin"}, False),
        ({"url.query": ""}, True),  # the empty string is in every string
        ({"tags": "web"}, True),  # membership in a list
        ({"tags": "we"}, False),  # ...of the whole item
        ({"http.response.status_code": "404"}, False),  # not a string or a list
        ({"missing": "x"}, False),
        ({"url.path": "admin", "tags": "internal"}, True),
        ({"url.path": "admin", "tags": "external"}, False),
    ],
)
def test_contains(spec: dict[str, Any], expected: bool) -> None:
    assert holds({"contains": spec}) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"url.path": "^/admin/"}, True),
        ({"url.path": "login"}, True),  # search, not match: anywhere in the value
        ({"url.path": r"\.php$"}, True),
        ({"url.path": "^login"}, False),
        ({"url.path": "(?i)/ADMIN"}, True),
        ({"tags": "^int"}, True),  # any item of a list
        ({"tags": "^ext"}, False),
        ({"http.response.status_code": "404"}, False),  # numbers are not strings
        ({"missing": ".*"}, False),
        ({"url": {"path": "admin"}, "http.request.method": "^G"}, True),
    ],
)
def test_regexp(spec: dict[str, Any], expected: bool) -> None:
    assert holds({"regexp": spec}) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"http.response.status_code": {"gte": 400}}, True),
        ({"http.response.status_code": {"gte": 400, "lt": 500}}, True),
        ({"http.response.status_code": {"gt": 404}}, False),
        ({"http.response.status_code": {"gte": 404}}, True),
        ({"http.response.status_code": {"lt": 404}}, False),
        ({"http.response.status_code": {"lte": 404}}, True),
        ({"http.response.status_code.gte": 400, "http.response.status_code.lt": 500}, True),  # Beats' form
        ({"http": {"response": {"status_code": {"gte": 500}}}}, False),
        ({"ratio": {"gt": 0.2, "lt": 0.3}}, True),
        ({"ratio": {"gt": 0.25}}, False),
        ({"event.duration": {"gte": 1e6}, "http.response.status_code": {"lt": 400}}, False),  # all fields
        ({"url.path": {"gte": 0}}, False),  # a string is not a number
        ({"secure": {"lte": 1}}, False),  # nor a boolean
        ({"missing": {"gte": 0}}, False),
    ],
)
def test_range(spec: dict[str, Any], expected: bool) -> None:
    assert holds({"range": spec}) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (["http.request.method", "url.path"], True),
        (["http.response.mime_type"], True),  # present with a null value
        (["http.request.method", "url.fragment"], False),
        (["http.request.method.name"], False),  # below a string
        ("url", True),  # one name alone
    ],
)
def test_has_fields(spec: Any, expected: bool) -> None:
    assert holds({"has_fields": spec}) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"source.ip": "192.168.0.0/16"}, True),
        ({"source.ip": "192.168.1.77/24"}, True),  # host bits are ignored, as Go's ParseCIDR does
        ({"source.ip": "10.0.0.0/8"}, False),
        ({"source.ip": ["10.0.0.0/8", "192.168.1.0/24"]}, True),  # any of a list
        ({"source.ip": "private"}, True),
        ({"source.ip": "public"}, False),
        ({"destination.ip": "2a02:ec80::/29"}, True),
        ({"destination.ip": "2a02:ec88::/29"}, False),
        ({"destination.ip": "public"}, True),
        ({"destination.ip": "192.168.0.0/16"}, False),  # IPv6 address, IPv4 network
        ({"related.ip": "2a02:ec80::/29"}, True),  # any address of a list
        ({"related.ip": "loopback"}, False),
        ({"source.ip": "private", "destination.ip": "public"}, True),
        ({"source.ip": "private", "destination.ip": "private"}, False),  # all fields must hold
        ({"source.port": "private"}, False),  # not an address
        ({"url.path": "private"}, False),
        ({"missing": "private"}, False),
    ],
)
def test_network(spec: dict[str, Any], expected: bool) -> None:
    assert holds({"network": spec}) is expected


NAMED = {  # Beats' (Go net.IP) answers for each named range, IPv4 and IPv6
    "loopback": (["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"], ["128.0.0.1", "::2", "10.0.0.1"]),
    "unspecified": (["0.0.0.0", "::"], ["0.0.0.1", "::1"]),
    "private": (
        ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.0.1", "fd12:3456::1", "::ffff:10.0.0.1"],
        ["172.32.0.1", "11.0.0.1", "fc00::1", "100.64.0.1", "8.8.8.8"],
    ),
    "link_local_unicast": (["169.254.1.1", "fe80::1", "febf::1"], ["169.253.1.1", "fec0::1"]),
    "multicast": (["224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1"], ["223.255.255.255", "fe80::1"]),
    "link_local_multicast": (["224.0.0.251", "ff02::fb", "ff12::1"], ["224.0.1.1", "ff05::1", "ff01::1"]),
    "interface_local_multicast": (["ff01::1", "ff11::2"], ["ff02::1", "224.0.0.1"]),
    "global_unicast": (
        ["8.8.8.8", "10.0.0.1", "2a02:ec80::5", "fd00::1"],  # private addresses are global unicast in Go
        ["255.255.255.255", "0.0.0.0", "127.0.0.1", "224.0.0.1", "169.254.0.1", "fe80::1", "::1", "ff02::1"],
    ),
    "public": (
        ["8.8.8.8", "81.2.69.160", "2a02:ec80::5", "239.1.1.1", "ff05::1"],
        [
            *("10.0.0.1", "127.0.0.1", "0.0.0.0", "255.255.255.255", "169.254.0.1", "224.0.0.9"),
            *("ff02::1", "ff01::1", "fd00::1", "::1", "::"),
        ],
    ),
}


@pytest.mark.parametrize("name", NAMED)
def test_named_networks(name: str) -> None:
    inside, outside = NAMED[name]
    check = compile_condition({"network": {"ip": name}})
    assert [address for address in inside if not check({"ip": address})] == []
    assert [address for address in outside if check({"ip": address})] == []


def test_named_networks_are_beats_list() -> None:
    assert list(NAMED_NETWORKS) == [
        "loopback",
        "global_unicast",
        "unicast",
        "link_local_unicast",
        "interface_local_multicast",
        "link_local_multicast",
        "multicast",
        "unspecified",
        "private",
        "public",
    ]
    unicast = compile_condition({"network": {"ip": "unicast"}})
    assert [unicast({"ip": address}) for address in ("8.8.8.8", "fe80::1")] == [True, False]


def test_network_ignores_what_is_not_an_address() -> None:
    check = compile_condition({"network": {"ip": ["0.0.0.0/0", "::/0"]}})
    assert [check({"ip": value}) for value in ("1.2.3.4", "::1", "1.2.3", "example.com", "", 16909060)] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert check({"ip": ["junk", "1.2.3.4"]}) is True
    assert check({"ip": ["junk", 5]}) is False


def test_network_results_are_cached_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    parse = conditions._parse_address
    monkeypatch.setattr(conditions, "_parse_address", lambda text: parsed.append(text) or parse(text))
    check = compile_condition({"network": {"ip": "private"}})
    for _ in range(3):
        assert [check({"ip": address}) for address in ("10.0.0.1", "8.8.8.8")] == [True, False]
    assert parsed == ["10.0.0.1", "8.8.8.8"]

    monkeypatch.setattr(conditions, "NETWORK_CACHE_SIZE", 2)  # bounded: the least recent goes
    parsed.clear()
    check = compile_condition({"network": {"ip": "private"}})
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.2", "10.0.0.3"):
        assert check({"ip": address}) is True
    assert parsed == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.2"]


# -- combinations ----------------------------------------------------------------------------------


def test_and_or_not() -> None:
    get = {"equals": {"http.request.method": "GET"}}
    post = {"equals": {"http.request.method": "POST"}}
    error = {"range": {"http.response.status_code": {"gte": 400}}}
    assert holds({"and": [get, error]}) is True
    assert holds({"and": [get, error, post]}) is False
    assert holds({"or": [post, error]}) is True
    assert holds({"or": [post, {"not": get}]}) is False
    assert holds({"not": post}) is True
    assert holds({"not": {"not": get}}) is True
    nested = {
        "and": [{"or": [post, {"network": {"source.ip": "private"}}]}, {"not": {"has_fields": ["dns"]}}]
    }
    assert holds(nested) is True
    assert holds(nested, {**EVENT, "dns": {}}) is False


def test_or_stops_at_the_first_that_holds() -> None:
    seen: list[str] = []

    class Watched(dict):
        def get(self, key: str, default: Any = None) -> Any:
            seen.append(key)
            return super().get(key, default)

    event = Watched(a=1, b=2)
    assert compile_condition({"or": [{"equals": {"a": 1}}, {"equals": {"b": 2}}]})(event) is True
    assert seen == ["a"]
    seen.clear()
    assert compile_condition({"and": [{"equals": {"a": 2}}, {"equals": {"b": 2}}]})(event) is False
    assert seen == ["a"]


# -- invalid conditions ----------------------------------------------------------------------------

OPERATORS = "equals, contains, regexp, range, has_fields, network, and, or, not"


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({}, "", f"expected a condition: a mapping with one of {OPERATORS}; got a mapping"),
        ("equals", "", f"expected a condition: a mapping with one of {OPERATORS}; got 'equals'"),
        (
            {"equal": {"a": 1}},
            "equal",
            f"unknown condition operator (did you mean 'equals'?); operators: {OPERATORS}",
        ),
        ({"match": {"a": 1}}, "match", f"unknown condition operator; operators: {OPERATORS}"),
        (
            {"equals": {"a": 1}, "regexp": {"b": "c"}},
            "regexp",
            "a condition has one operator, got 'equals' and 'regexp': combine them with 'and' or 'or'",
        ),
        ({"equals": ["a", 1]}, "equals", "expected a mapping of field names to values, got a list"),
        ({"equals": {}}, "equals", "expected at least one field"),
        ({"equals": {"a": None}}, "equals.a", "expected a string, number or boolean, got null"),
        ({"equals": {"a": [1]}}, "equals.a", "expected a string, number or boolean, got a list"),
        ({"equals": {"a..b": 1}}, "equals.a..b", "invalid field name 'a..b'"),
        ({"equals": {"a": {"": 1}}}, "equals.a.", "invalid field name 'a.'"),
        ({"contains": {"tags": 5}}, "contains.tags", "expected a string, got 5"),
        (
            {"regexp": {"url": {"path": "[a-"}}},
            "regexp.url.path",
            ("invalid regular expression '[a-': unterminated character set at position 0"),
        ),
        (
            {"regexp": {"a": "(?P<x"}},
            "regexp.a",
            ("invalid regular expression '(?P<x': missing >, unterminated name at position 4"),
        ),
        ({"regexp": {"a": True}}, "regexp.a", "expected a regular expression string, got boolean true"),
        ({"range": {"a": {"gte": "abc"}}}, "range.a.gte", "expected a number, got 'abc'"),
        ({"range": {"a.gte": True}}, "range.a.gte", "expected a number, got boolean true"),
        (
            {"range": {"a": 400}},
            "range.a",
            ("expected bounds such as {gte: 400, lt: 500} (gt, gte, lt, lte), got 400"),
        ),
        (
            {"range": {"a": {"gte": 1, "max": 2}}},
            "range.a.max",
            ("expected bounds such as {gte: 400, lt: 500} (gt, gte, lt, lte), got 2"),
        ),
        ({"range": {"a": {}}}, "range.a", "expected bounds such as {gte: 400, lt: 500} (gt, gte, lt, lte)"),
        ({"has_fields": []}, "has_fields", "expected a list of field names, got a list"),
        ({"has_fields": {"a": 1}}, "has_fields", "expected a list of field names, got a mapping"),
        ({"has_fields": ["a", 3]}, "has_fields.1", "expected a field name, got 3"),
        ({"has_fields": ["a", ""]}, "has_fields.1", "expected a field name, got ''"),
        (
            {"network": {"ip": "10.0.0.0/33"}},
            "network.ip",
            (
                "invalid network '10.0.0.0/33': expected a CIDR such as 192.0.2.0/24 or 2001:db8::/32, "
                "or one of " + ", ".join(NAMED_NETWORKS)
            ),
        ),
        (
            {"network": {"ip": "privat"}},
            "network.ip",
            (
                "invalid network 'privat' (did you mean 'private'?): expected a CIDR such as 192.0.2.0/24 or "
                "2001:db8::/32, or one of " + ", ".join(NAMED_NETWORKS)
            ),
        ),
        (
            {"network": {"ip": ["private", "2001:db8::/129"]}},
            "network.ip.1",
            (
                "invalid network '2001:db8::/129': expected a CIDR such as 192.0.2.0/24 or 2001:db8::/32, "
                "or one of " + ", ".join(NAMED_NETWORKS)
            ),
        ),
        ({"network": {"ip": ["private", 10]}}, "network.ip.1", "expected a CIDR or a named network, got 10"),
        ({"network": {"ip": []}}, "network.ip", "expected at least one network"),
        ({"and": []}, "and", "expected a list of conditions, got a list"),
        ({"or": {"equals": {"a": 1}}}, "or", "expected a list of conditions, got a mapping"),
        (
            {"not": [{"equals": {"a": 1}}]},
            "not",
            f"expected a condition: a mapping with one of {OPERATORS}; got a list",
        ),
        (
            {"or": [{"equals": {"a": 1}}, {"and": [{"has_fields": ["b"]}, {"not": {"regexp": {"c": "("}}}]}]},
            "or.1.and.1.not.regexp.c",
            "invalid regular expression '(': missing ), unterminated subpattern at position 0",
        ),
    ],
)
def test_invalid_conditions_name_the_key_path(spec: Any, path: str, message: str) -> None:
    assert error_of(spec) == (path, message)


def test_condition_option_type() -> None:
    option = Option("when", Condition(), None, "")
    assert str(option.type) == "condition"
    [error] = validate_options(
        [option], {"when": {"or": [{"equals": {"a": 1}}, {"regexp": {"url.path": "["}}]}}
    )
    assert error.path == ("when", "or", 1, "regexp", "url.path")
    assert error.message == "invalid regular expression '[': unterminated character set at position 0"
    assert validate_options([option], {"when": None}) == []
    predicate = option.type.convert({"has_fields": ["a"]})
    assert [predicate({"a": 1}), predicate({"b": 1})] == [True, False]
