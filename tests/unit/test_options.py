"""Option types and schema validation (flowpipe.options)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from flowpipe.options import (
    AnyValue,
    Bool,
    ByteSize,
    Choice,
    Duration,
    Float,
    Int,
    ListOf,
    MapOf,
    Option,
    OptionError,
    OptionType,
    Str,
    Struct,
    build_namespace,
    validate_options,
)


def error_of(option_type: OptionType, value: Any) -> tuple[str, tuple[str | int, ...]]:
    with pytest.raises(OptionError) as caught:
        option_type.convert(value)
    return caught.value.message, caught.value.path


# -- Duration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 10 s ", 10.0),
        ("30", 30.0),
        (3, 3.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_duration_converts_to_seconds(value: Any, seconds: float) -> None:
    result = Duration().convert(value)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10x", "expected a duration such as 10s or 500ms, got '10x'"),
        ("soon", "expected a duration such as 10s or 500ms, got 'soon'"),
        ("", "expected a duration such as 10s or 500ms, got ''"),
        ("-5s", "expected a duration such as 10s or 500ms, got '-5s'"),
        ("1m30s", "expected a duration such as 10s or 500ms, got '1m30s'"),
        ([1], "expected a duration such as 10s or 500ms, got a list"),
        (None, "expected a duration such as 10s or 500ms, got null"),
        (True, "expected a duration such as 10s, got boolean true"),
        (-1, "must not be negative, got -1"),
    ],
)
def test_duration_rejects(value: Any, message: str) -> None:
    assert error_of(Duration(), value) == (message, ())


# -- ByteSize --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("7", 7),
        ("5b", 5),
        ("5 B", 5),
        ("10KB", 10_000),
        ("10k", 10_000),
        ("10MB", 10_000_000),
        ("1g", 1_000_000_000),
        ("2TB", 2 * 10**12),
        ("64KiB", 65_536),
        ("64kib", 65_536),
        ("1.5KiB", 1536),
        ("2MiB", 2 * 1024**2),
        ("1Gi", 1024**3),
        ("1TiB", 1024**4),
    ],
)
def test_byte_size_converts_to_bytes(value: Any, size: int) -> None:
    result = ByteSize().convert(value)
    assert result == size
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "expected a size such as 10MB or 64KiB, got 'lots'"),
        ("10XB", "expected a size such as 10MB or 64KiB, got '10XB'"),
        ("KiB", "expected a size such as 10MB or 64KiB, got 'KiB'"),
        (1.5, "expected a size such as 10MB or 64KiB, got 1.5"),
        ({"a": 1}, "expected a size such as 10MB or 64KiB, got a mapping"),
        (False, "expected a size such as 10MB, got boolean false"),
        (-1, "must not be negative, got -1"),
    ],
)
def test_byte_size_rejects(value: Any, message: str) -> None:
    assert error_of(ByteSize(), value) == (message, ())


# -- scalars ---------------------------------------------------------------------------------------


def test_int_bounds_and_names() -> None:
    bounded = Int(1, 10)
    assert bounded.name == "integer 1..10"
    assert Int(0).name == "integer >= 0"
    assert Int().name == "integer"
    assert bounded.convert(1) == 1
    assert bounded.convert(10) == 10
    assert error_of(bounded, 0) == ("must be >= 1, got 0", ())
    assert error_of(bounded, 11) == ("must be <= 10, got 11", ())
    assert error_of(bounded, "3") == ("expected an integer, got '3'", ())
    assert error_of(bounded, 2.5) == ("expected an integer, got 2.5", ())
    assert error_of(bounded, True) == ("expected an integer, got boolean true", ())


def test_float_exclusive_minimum() -> None:
    speed = Float(0.0, exclusive_minimum=True)
    assert speed.name == "number > 0"
    assert Float(1).name == "number >= 1"
    assert speed.convert(2) == 2.0
    assert type(speed.convert(2)) is float
    assert error_of(speed, 0) == ("must be > 0, got 0", ())
    assert error_of(Float(1), 0.5) == ("must be >= 1, got 0.5", ())
    assert error_of(speed, "fast") == ("expected a number, got 'fast'", ())


def test_str_and_bool() -> None:
    assert Str().convert(5) == "5"
    assert Str().convert("") == ""
    assert error_of(Str(nonempty=True), "") == ("expected a non-empty string", ())
    assert error_of(Str(), ["a"]) == ("expected a string, got a list", ())
    assert error_of(Str(), False) == ("expected a string, got boolean false", ())
    assert Bool().convert(False) is False
    assert error_of(Bool(), "yes") == ("expected true or false, got 'yes'", ())
    assert error_of(Bool(), [True]) == ("expected true or false, got a list", ())
    assert AnyValue().convert({"x": [1]}) == {"x": [1]}


def test_long_values_are_shortened_in_messages() -> None:
    message, _ = error_of(Int(), "x" * 100)
    assert message == "expected an integer, got " + repr("x" * 100)[:37] + "..."


def test_choice() -> None:
    codec = Choice("json", "pretty")
    assert codec.name == "json | pretty"
    assert codec.convert("pretty") == "pretty"
    assert error_of(codec, "xml") == ("expected one of json, pretty; got 'xml'", ())
    assert error_of(codec, ["json"]) == ("expected one of json, pretty; got a list", ())


# -- containers ------------------------------------------------------------------------------------


def test_list_of_accepts_a_scalar_as_one_item() -> None:
    files = ListOf(Str(nonempty=True), min_items=1)
    assert files.name == "list of string"
    assert files.convert("x.pcap") == ["x.pcap"]
    assert files.convert(["a.pcap", "b.pcap"]) == ["a.pcap", "b.pcap"]
    assert error_of(files, []) == ("expected at least 1 item(s)", ())
    assert error_of(files, None) == ("expected a list of string, got null", ())
    assert error_of(files, {"a": 1}) == ("expected a list of string, got a mapping", ())


def test_list_of_names_the_failing_item() -> None:
    assert error_of(ListOf(Int()), [1, 2, "three"]) == ("expected an integer, got 'three'", (2,))


def test_list_of_struct_error_path_goes_through_index_and_key() -> None:
    servers = ListOf(Struct(Option("host", Str(), required=True), Option("port", Int(1, 65535), 80)))
    converted = servers.convert([{"host": "a"}, {"host": "b", "port": 8080}])
    assert converted == [SimpleNamespace(host="a", port=80), SimpleNamespace(host="b", port=8080)]
    assert error_of(servers, [{"host": "a"}, {"host": "b", "port": 0}]) == (
        "must be >= 1, got 0",
        (1, "port"),
    )
    assert error_of(servers, [{"port": 1}]) == ("missing required option", (0, "host"))


def test_map_of_names_the_failing_key() -> None:
    limits = MapOf(ByteSize())
    assert limits.name == "mapping of string to byte size"
    assert limits.convert({"http": "1KiB", 5: 2}) == {"http": 1024, "5": 2}
    assert error_of(limits, {"http": "1KiB", "dns": "big"}) == (
        "expected a size such as 10MB or 64KiB, got 'big'",
        ("dns",),
    )
    assert error_of(limits, ["a"]) == ("expected a mapping, got a list", ())


RETRY = Struct(
    Option("init", Duration(), 1.0, "first wait"),
    Option("limits", Struct(Option("max", Int(0), 3, "attempts")), description="nested section"),
)


def test_struct_fills_defaults_and_converts() -> None:
    assert RETRY.convert(None) == SimpleNamespace(init=1.0, limits=SimpleNamespace(max=3))
    assert RETRY.convert({"init": "500ms", "limits": {"max": 7}}) == SimpleNamespace(
        init=0.5, limits=SimpleNamespace(max=7)
    )


def test_struct_error_has_nested_path() -> None:
    assert error_of(RETRY, {"limits": {"max": -1}}) == ("must be >= 0, got -1", ("limits", "max"))
    assert error_of(RETRY, {"limits": {"mux": 1}}) == (
        "unknown option (did you mean 'max'?)",
        ("limits", "mux"),
    )
    assert error_of(RETRY, "fast") == ("expected a mapping, got 'fast'", ())


# -- schemas ---------------------------------------------------------------------------------------

SCHEMA = (
    Option("files", ListOf(Str()), required=True, description="inputs"),
    Option("bpf_filter", Str(), None, "filter"),
    Option("loop", Int(0), 1, "rounds"),
    Option("backoff", RETRY, description="retry timing"),
)


def paths_and_messages(errors: list[OptionError]) -> list[tuple[tuple[str | int, ...], str]]:
    return [(error.path, error.message) for error in errors]


def test_validate_reports_every_error_in_value_order_and_missing_first() -> None:
    values = {
        "loop": "x",
        "snaplen": 5,
        "backoff": {"init": "1x", "limits": {"max": -1, "mux": 2}},
        "bpf_fliter": "tcp",
    }
    assert paths_and_messages(validate_options(SCHEMA, values)) == [
        (("files",), "missing required option"),
        (("loop",), "expected an integer, got 'x'"),
        (("snaplen",), "unknown option; known options: files, bpf_filter, loop, backoff"),
        (("backoff", "init"), "expected a duration such as 10s or 500ms, got '1x'"),
        (("backoff", "limits", "max"), "must be >= 0, got -1"),
        (("backoff", "limits", "mux"), "unknown option (did you mean 'max'?)"),
        (("bpf_fliter",), "unknown option (did you mean 'bpf_filter'?)"),
    ]


def test_required_option_of_an_absent_or_null_section_is_missing() -> None:
    server = Struct(
        Option("host", Str(), required=True, description="host"), Option("port", Int(1), 80, "port")
    )
    options = (Option("server", server, description="where to send"),)
    missing = [(("server", "host"), "missing required option")]
    assert paths_and_messages(validate_options(options, {})) == missing
    assert paths_and_messages(validate_options(options, {"server": None})) == missing
    assert paths_and_messages(validate_options(options, {"server": {"port": 0}})) == [
        *missing,
        (("server", "port"), "must be >= 1, got 0"),
    ]
    assert build_namespace(options, {"server": {"host": "h"}}) == SimpleNamespace(
        server=SimpleNamespace(host="h", port=80)
    )


def test_validate_unknown_option_of_a_stage_without_options() -> None:
    assert paths_and_messages(validate_options((), {"x": 1})) == [(("x",), "unknown option")]


def test_null_is_accepted_where_the_default_is_null() -> None:
    assert validate_options(SCHEMA, {"files": ["a"], "bpf_filter": None, "backoff": None}) == []
    assert paths_and_messages(validate_options(SCHEMA, {"files": None})) == [
        (("files",), "expected a list of string, got null")
    ]
    assert paths_and_messages(validate_options(SCHEMA, {"files": ["a"], "loop": None})) == [
        (("loop",), "expected an integer, got null")
    ]


def test_build_namespace_fills_defaults_with_fresh_lists() -> None:
    options = (Option("ports", ListOf(Int()), (80, 8080), "ports"), *SCHEMA)
    first = build_namespace(options, {"files": "a.pcap", "bpf_filter": None})
    assert first == SimpleNamespace(
        ports=[80, 8080],
        files=["a.pcap"],
        bpf_filter=None,
        loop=1,
        backoff=SimpleNamespace(init=1.0, limits=SimpleNamespace(max=3)),
    )
    first.ports.append(443)
    assert build_namespace(options, {"files": "a"}).ports == [80, 8080]


def test_option_needs_a_default_or_required() -> None:
    with pytest.raises(TypeError, match="option 'x' needs a default or required=True"):
        Option("x", Int())


@pytest.mark.parametrize(
    ("option", "text"),
    [
        (Option("a", Int(), required=True), "(required)"),
        (Option("b", RETRY), "(section)"),
        (Option("c", Str(), None), "null"),
        (Option("d", Bool(), False), "false"),
        (Option("e", Duration(), 30.0), "30.0"),
        (Option("f", Choice("block", "drop"), "block"), "block"),
    ],
)
def test_default_text(option: Option, text: str) -> None:
    assert option.default_text == text
