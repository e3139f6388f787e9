"""The built-in processors (drop, drop_fields, add_fields, add_tags, rename, geoip) and ``when:``:
exact events out, batch order kept, and the ledger (in, out, drops by reason) exact in the real
pipeline. The geoip tests read small MaxMind DB files written by ``geoip_databases``."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import yaml
from captures import udp_frame, write_pcap
from geoip_databases import write_asn_database, write_city_database
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from flowpipe import Event, Processor, StageContext, StartupError
from flowpipe.config import load_pipeline
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.pipeline import Pipeline
from flowpipe.plugins.processors.drop import DropProcessor
from flowpipe.plugins.processors.fields import AddFields, AddTags, DropFields, Rename
from flowpipe.plugins.processors.geoip import GeoipProcessor
from flowpipe.registry import Registry

LONDON = {
    "continent_name": "Europe",
    "continent_code": "EU",
    "country_name": "United Kingdom",
    "country_iso_code": "GB",
    "region_name": "England",
    "region_iso_code": "GB-ENG",
    "city_name": "London",
    "postal_code": "EC1A",
    "timezone": "Europe/London",
    "location": {"lat": 51.5142, "lon": -0.0931},
}
LINKOPING = {
    "continent_name": "Europe",
    "continent_code": "EU",
    "country_name": "Sweden",
    "country_iso_code": "SE",
    "region_name": "Östergötland County",
    "region_iso_code": "SE-E",
    "city_name": "Linköping",
    "timezone": "Europe/Stockholm",
    "location": {"lat": 58.4167, "lon": 15.6167},
}
SWEDEN = {
    "continent_name": "Europe",
    "continent_code": "EU",
    "country_name": "Sweden",
    "country_iso_code": "SE",
}
AS_LONDON = {"number": 20712, "organization": {"name": "Andrews & Arnold Ltd"}}
AS_LINKOPING = {"number": 29518, "organization": {"name": "Bredband2 AB"}}


def configure(cls: type[Processor], **options: Any) -> SimpleNamespace:
    """Options validated and converted as the config layer does; fails on any error."""
    schema = cls.all_options()
    assert validate_options(schema, options) == []
    config = build_namespace(schema, options)
    assert cls.check_config(config) == []
    return config


def make(cls: type[Processor], base_dir: Path | None = None, **options: Any) -> Any:
    """A processor configured from ``options``, with a context of its own."""
    context = StageContext(cls.__name__, Counters(cls.__name__, "processor"), base_dir=base_dir or Path.cwd())
    return cls(configure(cls, **options), context)


def config_errors(cls: type[Processor], **options: Any) -> list[tuple[str, str]]:
    """(key path, message) of every problem the config layer reports for ``options``."""
    schema = cls.all_options()
    problems = validate_options(schema, options)
    if not problems:
        problems = cls.check_config(build_namespace(schema, options))
    return [(".".join(str(part) for part in problem.path), problem.message) for problem in problems]


def numbered(count: int) -> list[Event]:
    return [{"n": n, "parity": "even" if n % 2 == 0 else "odd"} for n in range(count)]


# -- when: and drop --------------------------------------------------------------------------------


class Tripler(Processor):
    """Test processor: drops multiples of 3 (counted), marks the others, records its batches."""

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self.batches: list[list[int]] = []

    def process(self, events: list[Event]) -> list[Event]:
        self.batches.append([event["n"] for event in events])
        kept = [event for event in events if event["n"] % 3]
        self.context.counters.drop("triple", len(events) - len(kept))
        for event in kept:
            event["seen"] = True
        return kept


def test_when_processes_only_matching_events_and_keeps_the_order() -> None:
    processor = make(Tripler, when={"equals": {"parity": "even"}})
    events = numbered(10)
    result = processor.apply(events)
    assert [(event["n"], "seen" in event) for event in result] == [
        (1, False),
        (2, True),
        (3, False),
        (4, True),
        (5, False),
        (7, False),
        (8, True),
        (9, False),
    ]
    assert processor.batches == [[0], [2], [4], [6], [8]]  # one call per run of selected events
    assert processor.context.counters.values == {"dropped.triple": 2}


def test_when_runs_of_selected_events_go_through_together() -> None:
    processor = make(Tripler, when={"range": {"n": {"gte": 2, "lt": 8}}})
    result = processor.apply(numbered(10))
    assert [event["n"] for event in result] == [0, 1, 2, 4, 5, 7, 8, 9]
    assert processor.batches == [[2, 3, 4, 5, 6, 7]]


def test_when_selecting_all_or_none() -> None:
    everything = make(Tripler, when={"has_fields": ["n"]})
    events = numbered(4)
    assert [event["n"] for event in everything.apply(events)] == [1, 2]
    assert everything.batches == [[0, 1, 2, 3]]
    nothing = make(Tripler, when={"has_fields": ["missing"]})
    events = numbered(4)
    assert nothing.apply(events) == numbered(4)
    assert nothing.batches == []
    without = make(Tripler)
    assert [event["n"] for event in without.apply(numbered(4))] == [1, 2]
    assert without.batches == [[0, 1, 2, 3]]


def test_drop_drops_everything_it_gets() -> None:
    drop = make(DropProcessor)
    assert drop.apply(numbered(5)) == []
    assert drop.context.counters.values == {"dropped.condition": 5}


def test_drop_with_when_is_beats_drop_event() -> None:
    drop = make(DropProcessor, when={"or": [{"equals": {"n": 1}}, {"range": {"n": {"gte": 4}}}]})
    assert [event["n"] for event in drop.apply(numbered(6))] == [0, 2, 3]
    assert drop.context.counters.values == {"dropped.condition": 3}


def test_every_processor_offers_when() -> None:
    for cls in (DropProcessor, DropFields, AddFields, AddTags, Rename, GeoipProcessor):
        assert "when" in [option.name for option in cls.all_options()]
    assert config_errors(DropProcessor, when={"regexp": {"url.path": "("}}) == [
        (
            "when.regexp.url.path",
            "invalid regular expression '(': missing ), unterminated subpattern at position 0",
        )
    ]


# -- drop_fields -----------------------------------------------------------------------------------


def test_drop_fields() -> None:
    processor = make(DropFields, fields=["http.request.headers", "url", "labels.missing"])
    events = [
        {"http": {"request": {"method": "GET", "headers": {"a": "b"}}}, "url": {"path": "/"}, "n": 1},
        {"http": {"request": {"method": "POST"}}, "n": 2},
    ]
    assert processor.apply(events) == [
        {"http": {"request": {"method": "GET"}}, "n": 1},
        {"http": {"request": {"method": "POST"}}, "n": 2},
    ]
    assert processor.context.counters.values == {"missing": 4}  # labels.missing twice, headers and url once


def test_drop_fields_ignore_missing() -> None:
    processor = make(DropFields, fields=["a", "b.c"], ignore_missing=True)
    assert processor.apply([{"a": 1, "b": {"c": 2, "d": 3}}, {"x": 1}]) == [{"b": {"d": 3}}, {"x": 1}]
    assert processor.context.counters.values == {}


def test_drop_fields_options() -> None:
    assert config_errors(DropFields, fields=["a", "@timestamp"]) == [
        ("fields.1", "@timestamp cannot be dropped")
    ]
    assert config_errors(DropFields, fields=[]) == [("fields", "expected at least 1 item(s)")]
    assert config_errors(DropFields, fields=["a..b"]) == [
        ("fields.0", "invalid field name 'a..b': expected dotted names such as source.ip")
    ]
    assert config_errors(DropFields) == [("fields", "missing required option")]


# -- add_fields ------------------------------------------------------------------------------------


def test_add_fields_under_fields_by_default() -> None:
    processor = make(AddFields, fields={"project": {"name": "flowpipe"}, "id": "574734885120952459"})
    assert processor.apply([{"n": 1}]) == [
        {"n": 1, "fields": {"project": {"name": "flowpipe"}, "id": "574734885120952459"}}
    ]


def test_add_fields_at_the_root_merge_and_replace() -> None:
    processor = make(
        AddFields,
        target="",
        fields={"labels.env": "prod", "labels": {"team": "net"}, "observer": {"name": "sensor-1"}, "n": 0},
    )
    events = [{"n": 1, "labels": {"env": "dev", "zone": "a"}, "observer": "old"}]
    assert processor.apply(events) == [
        {"n": 0, "labels": {"env": "prod", "zone": "a", "team": "net"}, "observer": {"name": "sensor-1"}}
    ]


def test_add_fields_under_a_dotted_target_and_copies_per_event() -> None:
    processor = make(AddFields, target="labels.site", fields={"racks": ["r1", "r2"], "geo": {"city": "Oslo"}})
    first, second = processor.apply([{}, {"labels": {"other": 1}}])
    assert first == {"labels": {"site": {"racks": ["r1", "r2"], "geo": {"city": "Oslo"}}}}
    assert second == {"labels": {"other": 1, "site": {"racks": ["r1", "r2"], "geo": {"city": "Oslo"}}}}
    first["labels"]["site"]["racks"].append("r3")
    first["labels"]["site"]["geo"]["city"] = "Bergen"
    assert second["labels"]["site"] == {"racks": ["r1", "r2"], "geo": {"city": "Oslo"}}
    assert processor.apply([{}]) == [{"labels": {"site": {"racks": ["r1", "r2"], "geo": {"city": "Oslo"}}}}]


def test_add_fields_options() -> None:
    assert config_errors(AddFields, fields={"a": 1, "a.b": 2}) == [
        ("fields.a.b", "'a.b' is inside a field that already has a value")
    ]
    assert config_errors(AddFields, fields={"a": {"b": 1}, "a.b": 2}) == [
        ("fields.a.b", "field 'a.b' is given twice")
    ]
    assert config_errors(AddFields, fields={"a": {"b..c": 1}}) == [
        ("fields.a.b..c", "invalid field name 'b..c': expected dotted names such as labels.env")
    ]
    assert config_errors(AddFields, fields={}) == [("fields", "expected at least one field")]
    assert config_errors(AddFields, fields=[1]) == [("fields", "expected a mapping, got a list")]
    assert config_errors(AddFields, fields={"a": 1}, target="x..y") == [
        ("target", "invalid field name 'x..y': expected dotted names such as source.ip")
    ]


# -- add_tags --------------------------------------------------------------------------------------


def test_add_tags() -> None:
    processor = make(AddTags, tags=["web", "prod", "web"])
    events = [{}, {"tags": ["prod", "old"]}, {"tags": "single"}, {"tags": None}, {"tags": {"not": "a list"}}]
    assert processor.apply(events) == [
        {"tags": ["web", "prod"]},
        {"tags": ["prod", "old", "web"]},
        {"tags": ["single", "web", "prod"]},
        {"tags": ["web", "prod"]},
        {"tags": {"not": "a list"}},
    ]
    assert processor.context.counters.values == {"failed": 1}
    first, second = processor.apply([{}, {}])
    first["tags"].append("mine")
    assert second == {"tags": ["web", "prod"]}


def test_add_tags_target() -> None:
    processor = make(AddTags, tags="internal", target="labels.tags")
    assert processor.apply([{"labels": {"a": 1}}]) == [{"labels": {"a": 1, "tags": ["internal"]}}]
    assert config_errors(AddTags, tags=[]) == [("tags", "expected at least 1 item(s)")]
    assert config_errors(AddTags, tags=["a", ""]) == [("tags.1", "expected a non-empty string")]


# -- rename ----------------------------------------------------------------------------------------


def renames(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": source, "to": target} for source, target in pairs]


def test_rename_in_order() -> None:
    processor = make(Rename, fields=renames(("a", "b"), ("b", "c.d"), ("x.y", "x.z"), ("m", "m.n")))
    events = [{"a": 1, "x": {"y": 2, "k": 3}, "m": "v"}]
    assert processor.apply(events) == [{"x": {"k": 3, "z": 2}, "c": {"d": 1}, "m": {"n": "v"}}]
    assert processor.context.counters.values == {}


FAILING = {"first": 1, "keep": {"a": 1, "b": 2, "c": 3}, "taken": "x", "last": 0}


@pytest.mark.parametrize(
    ("pairs", "problem"),
    [
        (
            (("first", "renamed"), ("keep.b", "taken")),
            "target field 'taken' already exists: drop or rename it first",
        ),
        (
            (("first", "renamed"), ("keep.b", "taken.inner")),
            "cannot rename to 'taken.inner': 'taken' is not an object",
        ),
        ((("first", "renamed"), ("nothing", "else")), "field 'nothing' is missing"),
        (
            (("first", "renamed"), ("keep.b", "new.deep.b"), ("last", "keep")),
            ("target field 'keep' already exists: drop or rename it first"),
        ),
    ],
)
def test_rename_failure_leaves_the_event_as_it_was(pairs: tuple[tuple[str, str], ...], problem: str) -> None:
    processor = make(Rename, fields=renames(*pairs))
    event = copy.deepcopy(FAILING)
    [result] = processor.apply([event])
    error = result.pop("error")
    assert error == {"message": f"rename failed: {problem}"}
    assert result == FAILING
    assert orjson.dumps(result) == orjson.dumps(FAILING)  # key order too
    assert processor.context.counters.values == {"failed": 1}


def test_rename_without_fail_on_error_skips_what_fails() -> None:
    processor = make(
        Rename,
        fields=renames(
            ("first", "renamed"), ("keep.b", "taken.inner"), ("nothing", "else"), ("last", "final")
        ),
        fail_on_error=False,
    )
    events = [copy.deepcopy(FAILING), {"first": 5, "keep": {"b": 1}, "last": 1, "nothing": 2}]
    assert orjson.dumps(processor.apply(events)) == orjson.dumps(
        [
            {"keep": {"a": 1, "b": 2, "c": 3}, "taken": "x", "renamed": 1, "final": 0},
            {"keep": {}, "renamed": 5, "taken": {"inner": 1}, "else": 2, "final": 1},
        ]
    )
    assert processor.context.counters.values == {"failed": 1}


def test_rename_ignore_missing() -> None:
    processor = make(Rename, fields=renames(("a", "b"), ("c", "d")), ignore_missing=True)
    assert processor.apply([{"c": 1}, {"a": 2}]) == [{"d": 1}, {"b": 2}]
    assert processor.context.counters.values == {}


def test_rename_options() -> None:
    assert config_errors(Rename, fields=[{"from": "a"}]) == [("fields.0.to", "missing required option")]
    assert config_errors(Rename, fields=[{"from": "a", "to": "b", "too": "c"}]) == [
        ("fields.0.too", "unknown option (did you mean 'to'?)")
    ]
    assert config_errors(Rename, fields={"from": "a", "to": "b"}) == [
        ("fields", "expected a list of mapping, got a mapping")
    ]


# -- geoip -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("geoip")
    write_city_database(folder / "city.mmdb")
    write_asn_database(folder / "asn.mmdb")
    return folder


def flow(source: str, destination: str, **extra: Any) -> Event:
    return {"source": {"ip": source, "port": 40000}, "destination": {"ip": destination, "port": 443}, **extra}


def test_geoip_city_and_asn(databases: Path) -> None:
    geoip = make(GeoipProcessor, databases, database="city.mmdb", asn_database="asn.mmdb")
    geoip.open()
    events = [
        flow("81.2.69.160", "89.160.20.128"),
        flow("2a02:ec80::5", "::ffff:81.2.69.1"),
        {"client": {"ip": "89.160.20.1"}, "server": {"ip": "8.8.8.8"}},
    ]
    assert geoip.apply(events) == [
        {
            "source": {"ip": "81.2.69.160", "port": 40000, "geo": LONDON, "as": AS_LONDON},
            "destination": {"ip": "89.160.20.128", "port": 443, "geo": LINKOPING, "as": AS_LINKOPING},
        },
        {
            "source": {"ip": "2a02:ec80::5", "port": 40000, "geo": SWEDEN},
            "destination": {"ip": "::ffff:81.2.69.1", "port": 443, "geo": LONDON, "as": AS_LONDON},
        },
        {"client": {"ip": "89.160.20.1", "geo": LINKOPING, "as": AS_LINKOPING}, "server": {"ip": "8.8.8.8"}},
    ]
    assert geoip.context.counters.values == {"enriched": 5, "not_found": 1}
    geoip.close()


def test_geoip_skips_special_addresses(databases: Path) -> None:
    geoip = make(GeoipProcessor, databases, database="city.mmdb", asn_database="asn.mmdb")
    geoip.open()
    special = ["10.0.0.1", "192.168.1.1", "127.0.0.1", "169.254.1.1", "224.0.0.251", "239.1.2.3", "0.0.0.0"]
    special += ["255.255.255.255", "100.64.0.1", "192.0.2.1", "240.0.0.1", "::1", "fe80::1", "fd00::1"]
    special += ["ff02::1", "ff0e::1", "2001:db8::1", "::", "::ffff:10.0.0.1"]
    events = [{"source": {"ip": address}} for address in special]
    assert geoip.apply(copy.deepcopy(events)) == events
    assert geoip.context.counters.values == {"skipped": len(special)}
    geoip.close()


def test_geoip_counts_what_is_not_an_address(databases: Path) -> None:
    geoip = make(GeoipProcessor, databases, asn_database="asn.mmdb", fields=["ip", "host.ip", "source.ip"])
    geoip.open()
    events = [
        {"ip": "81.2.69.5", "host": {"ip": "not an address"}, "source": "81.2.69.5"},
        {"ip": 1234},
        {"host": {"ip": None}},
    ]
    assert geoip.apply(events) == [
        {"ip": "81.2.69.5", "as": AS_LONDON, "host": {"ip": "not an address"}, "source": "81.2.69.5"},
        {"ip": 1234},
        {"host": {"ip": None}},
    ]
    assert geoip.context.counters.values == {"enriched": 1, "invalid": 2}
    geoip.close()


def test_geoip_results_are_cached_and_copied(databases: Path) -> None:
    geoip = make(GeoipProcessor, databases, database="city.mmdb", cache_size=2)
    geoip.open()
    first, second = geoip.apply([flow("81.2.69.160", "81.2.69.160"), flow("81.2.69.160", "10.0.0.1")])
    first["source"]["geo"]["location"]["lat"] = 0.0
    first["source"]["geo"]["city_name"] = "changed"
    assert second["source"]["geo"] == LONDON
    assert first["destination"]["geo"] == LONDON
    info = geoip.lookup.cache_info()
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (2, 2, 2, 2)
    geoip.apply([flow("89.160.20.1", "89.160.20.2")])  # the two least recent go
    geoip.apply([flow("81.2.69.160", "89.160.20.2")])
    info = geoip.lookup.cache_info()
    assert (info.hits, info.misses, info.currsize) == (3, 5, 2)
    geoip.close()


def test_geoip_ipv4_database_and_ipv6_addresses(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country", languages=["en"], description="v4")
    writer.insert_network(
        IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "GB", "names": {"en": "United Kingdom"}}}
    )
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    geoip = make(GeoipProcessor, tmp_path, database="v4.mmdb")
    geoip.open()
    assert geoip.apply([flow("81.2.69.7", "2a02:ec80::5")]) == [
        {
            "source": {
                "ip": "81.2.69.7",
                "port": 40000,
                "geo": {"country_name": "United Kingdom", "country_iso_code": "GB"},
            },
            "destination": {"ip": "2a02:ec80::5", "port": 443},
        }
    ]
    assert geoip.context.counters.values == {"enriched": 1, "not_found": 1}
    geoip.close()


def test_geoip_damaged_search_tree_is_counted(tmp_path: Path) -> None:
    path = write_city_database(tmp_path / "city.mmdb")
    data = bytearray(path.read_bytes())
    data[:64] = b"\xff" * 64  # the first search tree nodes point past the end
    path.write_bytes(bytes(data))
    geoip = make(GeoipProcessor, tmp_path, database="city.mmdb")
    geoip.open()
    events = [flow("81.2.69.160", "10.0.0.1")]
    assert geoip.apply(copy.deepcopy(events)) == events
    assert geoip.context.counters.values == {"lookup_errors": 1, "skipped": 1}
    geoip.close()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"database": "missing.mmdb"}, "database {dir}/missing.mmdb: no such file"),
        (
            {"database": "garbage.mmdb"},
            "database {dir}/garbage.mmdb: not a MaxMind DB file, or a damaged one",
        ),
        ({"database": "empty.mmdb"}, "database {dir}/empty.mmdb: not a MaxMind DB file, or a damaged one"),
        ({"database": "cut.mmdb"}, "database {dir}/cut.mmdb: not a MaxMind DB file, or a damaged one"),
        (
            {"database": "city.mmdb", "asn_database": "city.mmdb"},
            "asn_database {dir}/city.mmdb: a 'GeoLite2-City' database; give it as database, not asn_database",
        ),
        (
            {"database": "asn.mmdb"},
            "database {dir}/asn.mmdb: a 'GeoLite2-ASN' database; give it as asn_database, not database",
        ),
    ],
)
def test_geoip_database_problems_fail_the_start(
    tmp_path: Path, options: dict[str, str], problem: str
) -> None:
    write_city_database(tmp_path / "city.mmdb")
    write_asn_database(tmp_path / "asn.mmdb")
    (tmp_path / "garbage.mmdb").write_bytes(b"not a database at all" * 10)
    (tmp_path / "empty.mmdb").write_bytes(b"")
    (tmp_path / "cut.mmdb").write_bytes((tmp_path / "city.mmdb").read_bytes()[:-200])
    geoip = make(GeoipProcessor, tmp_path, **options)
    with pytest.raises(StartupError) as caught:
        geoip.open()
    assert geoip.readers == []  # a database opened before the failure is closed again
    assert str(caught.value) == "geoip 'GeoipProcessor': " + problem.format(dir=tmp_path)


def test_geoip_options() -> None:
    assert config_errors(GeoipProcessor) == [("database", "give database, asn_database or both")]
    assert config_errors(GeoipProcessor, database="a.mmdb", cache_size=-1) == [
        ("cache_size", "must be >= 0, got -1")
    ]
    assert config_errors(GeoipProcessor, database="a.mmdb", fields=["source..ip"]) == [
        ("fields.0", "invalid field name 'source..ip': expected dotted names such as source.ip")
    ]
    config = configure(GeoipProcessor, database="a.mmdb")
    assert (config.fields, config.cache_size, config.asn_database) == (
        ["source.ip", "destination.ip", "client.ip", "server.ip"],
        10000,
        None,
    )


# -- the ledger in the real pipeline ---------------------------------------------------------------

T0 = 1_700_000_000.0
PACKETS = [
    (T0, udp_frame("81.2.69.160", "10.0.0.1", 5353, 53, b"a")),
    (T0 + 1, udp_frame("10.0.0.1", "81.2.69.160", 53, 5353, b"b")),
    (T0 + 2, udp_frame("89.160.20.128", "10.0.0.2", 4000, 443, b"c")),
    (T0 + 3, udp_frame("2a02:ec80::5", "fd00::1", 4000, 443, b"d")),
    (T0 + 4, udp_frame("10.0.0.2", "10.0.0.3", 4000, 443, b"e")),
]


def test_processors_in_the_pipeline_keep_order_and_an_exact_ledger(databases: Path, tmp_path: Path) -> None:
    write_pcap(tmp_path / "capture.pcap", PACKETS)
    (tmp_path / "pipeline.yml").write_text(
        yaml.safe_dump(
            {
                "inputs": [{"type": "pcap", "files": ["capture.pcap"]}],
                "decoders": [{"type": "ip", "flows": {"enabled": False}}],
                "processors": [
                    {
                        "type": "geoip",
                        "database": str(databases / "city.mmdb"),
                        "asn_database": str(databases / "asn.mmdb"),
                    },
                    {
                        "type": "drop",
                        "when": {
                            "not": {
                                "or": [{"has_fields": ["source.geo"]}, {"has_fields": ["destination.geo"]}]
                            }
                        },
                    },
                    {
                        "type": "add_tags",
                        "tags": ["inbound"],
                        "when": {"network": {"destination.ip": "private"}},
                    },
                    {
                        "type": "drop_fields",
                        "fields": ["network", "event", "source.port", "destination.port"],
                    },
                ],
                "outputs": [{"type": "file", "path": "events.ndjson"}],
            }
        )
    )
    registry = Registry.default()
    pipeline = Pipeline(load_pipeline(tmp_path / "pipeline.yml", registry), registry)
    summary = pipeline.run()
    assert summary.failures == []
    events = [orjson.loads(line) for line in (tmp_path / "events.ndjson").read_bytes().splitlines()]
    assert events == [
        {
            "@timestamp": "2023-11-14T22:13:20.000Z",
            "source": {"ip": "81.2.69.160", "geo": LONDON, "as": AS_LONDON},
            "destination": {"ip": "10.0.0.1"},
            "tags": ["inbound"],
        },
        {
            "@timestamp": "2023-11-14T22:13:21.000Z",
            "source": {"ip": "10.0.0.1"},
            "destination": {"ip": "81.2.69.160", "geo": LONDON, "as": AS_LONDON},
        },
        {
            "@timestamp": "2023-11-14T22:13:22.000Z",
            "source": {"ip": "89.160.20.128", "geo": LINKOPING, "as": AS_LINKOPING},
            "destination": {"ip": "10.0.0.2"},
            "tags": ["inbound"],
        },
        {
            "@timestamp": "2023-11-14T22:13:23.000Z",
            "source": {"ip": "2a02:ec80::5", "geo": SWEDEN},
            "destination": {"ip": "fd00::1"},
            "tags": ["inbound"],
        },
    ]
    ledger = [dict(processor.context.counters.values) for processor in pipeline.processors]
    assert ledger == [
        {"in": 5, "out": 5, "enriched": 4, "skipped": 6},
        {"in": 5, "out": 4, "dropped.condition": 1},
        {"in": 4, "out": 4},
        {"in": 4, "out": 4},
    ]
