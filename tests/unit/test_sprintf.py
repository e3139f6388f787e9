"""Format strings for index names and topics: fields, defaults, dates, mistakes."""

from __future__ import annotations

import pytest

from flowpipe.options import OptionError
from flowpipe.sprintf import MissingFieldError, Sprintf, Template

EVENT = {
    "@timestamp": "2024-03-09T07:05:01.250Z",
    "event": {"dataset": "http"},
    "network": {"vlan": {"id": 7}},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("flowpipe", "flowpipe"),
        ("flowpipe-%{+yyyy.MM.dd}", "flowpipe-2024.03.09"),
        ("%{+yy-MM-dd'T'HH:mm:ss}", "24-03-09T07:05:01"),
        ("logs-%{[event][dataset]}-default", "logs-http-default"),
        ("logs-%{[event.dataset]}", "logs-http"),
        ("logs-%{event.dataset}", "logs-http"),
        ("vlan-%{[network][vlan][id]}", "vlan-7"),
        ("%{[dns.question.name]:none}-%{+yyyy}", "none-2024"),
        ("100%", "100%"),
    ],
)
def test_templates_render_fields_and_dates(text: str, expected: str) -> None:
    assert Template(text).render(EVENT) == expected


def test_static_templates_are_known() -> None:
    assert Template("flowpipe").is_static
    assert not Template("flowpipe-%{+yyyy}").is_static


def test_a_missing_field_without_default_is_an_error() -> None:
    with pytest.raises(MissingFieldError, match=r"no field 'dns\.id'"):
        Template("dns-%{[dns][id]}").render(EVENT)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x-%{+yyyy.MM.DD}", "unknown date token 'DD'"),
        ("x-%{[event.dataset]", "unclosed %{"),
        ("x-%{}", "bad field reference"),
        ("x-%{[a]junk}", "expected ':default'"),
        ("", "expected a non-empty format string"),
    ],
)
def test_mistakes_are_option_errors(text: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        Sprintf().convert(text)
