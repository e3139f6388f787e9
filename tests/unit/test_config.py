"""Pipeline files: locations, ${VAR} substitution, -E overrides, validation (flowpipe.config)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from plugin_sources import tagger_source

from flowpipe.config import Location, apply_overrides, load_document, load_pipeline, validate_pipeline
from flowpipe.errors import ConfigError
from flowpipe.registry import Registry

MINIMAL = """\
inputs:
  - type: pcap
    files: [a.pcap]
outputs:
  - type: stdout
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.default()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yml"
    path.write_text(textwrap.dedent(text))
    return path


def config_errors(call: object, *args: object, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.messages


# -- locations -------------------------------------------------------------------------------------


def test_every_key_and_list_item_has_its_location(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "pipeline:\n  queue:\n    bytes: 1MiB\n")
    document = load_document(path, environ={})
    file = str(path)
    assert document.data == {
        "inputs": [{"type": "pcap", "files": ["a.pcap"]}],
        "outputs": [{"type": "stdout"}],
        "pipeline": {"queue": {"bytes": "1MiB"}},
    }
    assert document.locations[("inputs",)] == Location(file, 1, 1)
    assert document.locations[("inputs", 0)] == Location(file, 2, 5)
    assert document.locations[("inputs", 0, "files")] == Location(file, 3, 5)
    assert document.locations[("inputs", 0, "files", 0)] == Location(file, 3, 13)
    assert document.locations[("pipeline", "queue", "bytes")] == Location(file, 8, 5)
    assert document.locate(("inputs", 0, "snaplen")) == Location(file, 2, 5)  # nearest ancestor
    assert document.error(("inputs", 0, "loop"), "bad") == f"{file}:2:5: inputs.0.loop: bad"
    assert document.error((), "bad") == f"{file}:1:1: (top level): bad"


def test_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    assert load_document(write(tmp_path, "# nothing\n"), environ={}).data == {}


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    assert config_errors(load_document, tmp_path / "nope.yml") == [f"{tmp_path / 'nope.yml'}: no such file"]
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"inputs: \xff\n")
    assert config_errors(load_document, binary) == [f"{binary}: not UTF-8 text (byte 8)"]


def test_merge_keys_are_expanded(tmp_path: Path) -> None:
    text = """\
    common: &common {codec: pretty}
    outputs:
      - <<: *common
        type: stdout
    """
    assert load_document(write(tmp_path, text), environ={}).data["outputs"] == [
        {"codec": "pretty", "type": "stdout"}
    ]


# -- ${VAR} substitution ---------------------------------------------------------------------------


def substituted(tmp_path: Path, value: str, environ: dict[str, str]) -> object:
    return load_document(write(tmp_path, f"key: {value}\n"), environ=environ).data["key"]


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${CAP}", {"CAP": "x.pcap"}, "x.pcap"),
        ("${CAP:default.pcap}", {}, "default.pcap"),
        ("${CAP:default.pcap}", {"CAP": "set.pcap"}, "set.pcap"),
        ("${CAP:}", {}, ""),
        ("${URL:http://localhost:9200}", {}, "http://localhost:9200"),
        ("dir/${NAME}-${DAY:mon}.pcap", {"NAME": "eth0"}, "dir/eth0-mon.pcap"),
        ('"${OUT:events-%{+yyyy.MM.dd}.ndjson}"', {}, "events-%{+yyyy.MM.dd}.ndjson"),
        ('"${OUT:events-%{+yyyy.MM.dd}.ndjson}"', {"OUT": "x.ndjson"}, "x.ndjson"),
        ("${N}", {"N": "100"}, 100),  # a whole plain reference takes the value's YAML type
        ("${N:100}", {}, 100),
        ("${R}", {"R": "2.5"}, 2.5),
        ("${FLAG}", {"FLAG": "true"}, True),
        ("${NOTHING}", {"NOTHING": "null"}, None),
        ('"${N}"', {"N": "100"}, "100"),  # quoted: stays a string
        ("'${N}'", {"N": "100"}, "100"),
        ("x${N}", {"N": "100"}, "x100"),  # part of a string: stays a string
        ("${LIST}", {"LIST": "[a, b]"}, "[a, b]"),  # only scalars are re-typed
        ("${BAD}", {"BAD": "["}, "["),  # not YAML on its own: kept as text
        ("$${CAP}", {"CAP": "x"}, "${CAP}"),  # $$ escapes
        ("$${N}", {"N": "1"}, "${N}"),
        ("price$5", {}, "price$5"),
        ("${5}", {}, "${5}"),  # not a variable name
        ("'${A}${B}'", {"A": "1", "B": "2"}, "12"),
    ],
)
def test_substitution(tmp_path: Path, value: str, environ: dict[str, str], expected: object) -> None:
    result = substituted(tmp_path, value, environ)
    assert result == expected
    assert type(result) is type(expected)


def test_substitution_in_lists_and_nested_mappings(tmp_path: Path) -> None:
    text = """\
    inputs:
      - type: pcap
        files: ["${DIR}/a.pcap", "${DIR}/b.pcap"]
        loop: ${LOOPS:2}
    """
    data = load_document(write(tmp_path, text), environ={"DIR": "/data"}).data
    assert data["inputs"] == [{"type": "pcap", "files": ["/data/a.pcap", "/data/b.pcap"], "loop": 2}]


def test_unset_variables_are_reported_with_location(tmp_path: Path) -> None:
    path = write(tmp_path, "inputs:\n  - type: pcap\n    files: ${CAPTURE}\n    loop: x${A}${B}\n")
    assert config_errors(load_document, path, environ={"B": "1"}) == [
        f"{path}:3:12: inputs.0.files: environment variable CAPTURE is not set "
        "(write ${CAPTURE:default} for a default)",
        f"{path}:4:11: inputs.0.loop: environment variable A is not set (write ${{A:default}} for a default)",
    ]


def test_whole_reference_is_typed_for_validation(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, MINIMAL.replace("[a.pcap]", "[a.pcap]\n    loop: ${N}"))
    assert load_pipeline(path, registry, environ={"N": "3"}).inputs[0].config.loop == 3
    assert config_errors(load_pipeline, path, registry, environ={"N": "three"}) == [
        f"{path}:4:5: inputs.0.loop: expected an integer, got 'three'"
    ]
    quoted = write(tmp_path, MINIMAL.replace("[a.pcap]", '[a.pcap]\n    loop: "${N}"'))
    assert config_errors(load_pipeline, quoted, registry, environ={"N": "3"}) == [
        f"{quoted}:4:5: inputs.0.loop: expected an integer, got '3'"
    ]


# -- -E overrides ----------------------------------------------------------------------------------


def overridden(tmp_path: Path, *overrides: str, text: str = MINIMAL) -> dict[str, object]:
    document = load_document(write(tmp_path, text), environ={})
    apply_overrides(document, list(overrides))
    return document.data


def test_override_scalar_where_a_list_is_expected(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, MINIMAL)
    spec = load_pipeline(path, registry, ["inputs.0.files=x.pcap"], environ={})
    assert spec.inputs[0].config.files == ["x.pcap"]


def test_override_list_value(tmp_path: Path, registry: Registry) -> None:
    spec = load_pipeline(write(tmp_path, MINIMAL), registry, ["inputs.0.files=[a.pcap, b.pcap]"], environ={})
    assert spec.inputs[0].config.files == ["a.pcap", "b.pcap"]


def test_override_creates_nested_sections(tmp_path: Path, registry: Registry) -> None:
    overrides = ["pipeline.queue.batches=8", "pipeline.queue.bytes=1MiB", "logging.level=debug"]
    spec = load_pipeline(write(tmp_path, MINIMAL), registry, overrides, environ={})
    assert spec.settings.queue.batches == 8
    assert spec.settings.queue.bytes == 1024 * 1024
    assert spec.settings.batch_size == 256
    assert spec.logging.level == "debug"


def test_override_values_are_yaml(tmp_path: Path) -> None:
    data = overridden(
        tmp_path, "inputs.0.loop=3", "inputs.0.realtime=true", "inputs.0.bpf_filter=", "outputs.0.x={a: 1}"
    )
    assert data["inputs"] == [
        {"type": "pcap", "files": ["a.pcap"], "loop": 3, "realtime": True, "bpf_filter": ""}
    ]
    assert data["outputs"] == [{"type": "stdout", "x": {"a": 1}}]
    assert overridden(tmp_path, "inputs.0.bpf_filter=[tcp")["inputs"][0]["bpf_filter"] == "[tcp"


def test_override_appends_a_new_list_item(tmp_path: Path, registry: Registry) -> None:
    overrides = ["inputs.1.type=pcap", "inputs.1.id=second", "inputs.1.files=b.pcap"]
    spec = load_pipeline(write(tmp_path, MINIMAL), registry, overrides, environ={})
    assert [(stage.id, stage.config.files) for stage in spec.inputs] == [
        ("pcap", ["a.pcap"]),
        ("second", ["b.pcap"]),
    ]


def test_override_creates_a_list_that_did_not_exist(tmp_path: Path) -> None:
    data = overridden(tmp_path, "inputs.0.type=pcap", "inputs.0.files=x", text="outputs: [{type: stdout}]\n")
    assert data["inputs"] == [{"type": "pcap", "files": "x"}]


def test_override_fills_a_null_section(tmp_path: Path) -> None:
    data = overridden(tmp_path, "pipeline.queue.batches=2", text=MINIMAL + "pipeline:\n")
    assert data["pipeline"] == {"queue": {"batches": 2}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "inputs.2.files=x",
            "command line (-E inputs.2.files=x): inputs.2: position 2 is past the end of a list of 1",
        ),
        (
            "inputs.x.files=x",
            "command line (-E inputs.x.files=x): inputs.x: inputs is a list; use a position number",
        ),
        (
            "inputs.0.type.x=1",
            "command line (-E inputs.0.type.x=1): inputs.0.type.x: inputs.0.type is not a mapping",
        ),
        ("noequals", "command line (-E noequals): expected -E path.to.key=value"),
        ("=3", "command line (-E =3): expected -E path.to.key=value"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, message: str) -> None:
    document = load_document(write(tmp_path, MINIMAL), environ={})
    assert config_errors(apply_overrides, document, [override]) == [message]


def test_every_bad_override_is_reported(tmp_path: Path) -> None:
    document = load_document(write(tmp_path, MINIMAL), environ={})
    assert config_errors(apply_overrides, document, ["a", "inputs.5.x=1", "pipeline.workers=1"]) == [
        "command line (-E a): expected -E path.to.key=value",
        "command line (-E inputs.5.x=1): inputs.5: position 5 is past the end of a list of 1",
    ]


def test_invalid_override_value_is_located_on_the_command_line(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, MINIMAL)
    assert config_errors(
        load_pipeline, path, registry, ["inputs.0.loop=abc", "pipeline.queue.bytes=lots"]
    ) == [
        "command line (-E inputs.0.loop=abc): inputs.0.loop: expected an integer, got 'abc'",
        "command line (-E pipeline.queue.bytes=lots): pipeline.queue.bytes: "
        "expected a size such as 10MB or 64KiB, got 'lots'",
    ]


def test_errors_in_a_stage_the_override_created_name_the_override(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, MINIMAL)
    assert config_errors(load_pipeline, path, registry, ["inputs.1.files=b.pcap"]) == [
        "command line (-E inputs.1.files=b.pcap): inputs.1: missing required key 'type' (the input plugin)"
    ]
    assert config_errors(load_pipeline, path, registry, ["inputs.1.type=pcap"]) == [
        "command line (-E inputs.1.type=pcap): inputs.1: give exactly one of files or device"
    ]


def test_override_keeps_file_locations_of_what_it_did_not_create(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, MINIMAL.replace("    files: [a.pcap]\n", ""))
    assert config_errors(load_pipeline, path, registry, ["inputs.0.loop=2"]) == [
        f"{path}:2:5: inputs.0: give exactly one of files or device"
    ]


def test_override_errors_inside_an_existing_stage(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, MINIMAL)
    assert config_errors(load_pipeline, path, registry, ["inputs.0.type=pcapp"]) == [
        "command line (-E inputs.0.type=pcapp): inputs.0.type: unknown input type 'pcapp' "
        f"(did you mean 'pcap'?); known inputs: {', '.join(registry.names('input'))}"
    ]
    assert config_errors(load_pipeline, path, registry, ["inputs.0.snap=1", "inputs.0.files=[]"]) == [
        "command line (-E inputs.0.files=[]): inputs.0.files: expected at least 1 item(s)",
        "command line (-E inputs.0.snap=1): inputs.0.snap: unknown option (did you mean 'snaplen'?)",
    ]


# -- validation ------------------------------------------------------------------------------------


def test_valid_pipeline_spec(tmp_path: Path, registry: Registry) -> None:
    text = MINIMAL + textwrap.dedent(
        """\
        pipeline:
          batch_size: 128
          queue: {batches: 4, bytes: 64KiB}
          shutdown_timeout: 500ms
        logging: {level: warning, format: json}
        metrics: {period: 1m, http: "127.0.0.1:9100"}
        """
    )
    path = write(tmp_path, text)
    spec = load_pipeline(path, registry, environ={})
    assert spec.path == path
    assert [(s.kind, s.type, s.id) for s in spec.stages()] == [
        ("input", "pcap", "pcap"),
        ("decoder", "ip", "ip"),
        ("decoder", "tcp", "tcp"),
        ("decoder", "protocol", "protocol"),
        ("output", "stdout", "stdout"),
    ]
    assert spec.inputs[0].location == Location(str(path), 2, 5)
    assert spec.inputs[0].config.files == ["a.pcap"]
    assert spec.inputs[0].config.loop == 1
    assert spec.outputs[0].config.on_full == "block"
    assert spec.outputs[0].config.backoff.max == 60.0
    assert spec.settings.batch_size == 128
    assert spec.settings.queue.batches == 4
    assert spec.settings.queue.bytes == 65536
    assert spec.settings.shutdown_timeout == 0.5
    assert spec.settings.workers == 1
    assert (spec.logging.level, spec.logging.format) == ("warning", "json")
    assert (spec.metrics.period, spec.metrics.http) == (60.0, "127.0.0.1:9100")
    assert spec.plugins == []


def test_default_ids_number_repeated_types(tmp_path: Path, registry: Registry) -> None:
    text = "inputs:\n  - {type: pcap, files: a}\n  - {type: pcap, files: b}\noutputs: [{type: stdout}]\n"
    spec = load_pipeline(write(tmp_path, text), registry, environ={})
    assert [stage.id for stage in spec.inputs] == ["pcap#0", "pcap#1"]


def test_errors_come_in_file_order(tmp_path: Path, registry: Registry) -> None:
    text = """\
    outputs:
      - type: stdout
        codec: xml
    pipeline:
      workers: 0
    inputs:
      - type: pcap
        loop: -1
    """
    path = write(tmp_path, text)
    assert config_errors(load_pipeline, path, registry, environ={}) == [
        f"{path}:3:5: outputs.0.codec: expected one of json, pretty; got 'xml'",
        f"{path}:5:3: pipeline.workers: must be >= 1, got 0",
        f"{path}:8:5: inputs.0.loop: must be >= 0, got -1",
    ]


def test_workers_need_decoders(tmp_path: Path, registry: Registry) -> None:
    assert (
        load_pipeline(write(tmp_path, MINIMAL + "pipeline:\n  workers: 2\n"), registry).settings.workers == 2
    )
    path = write(tmp_path, MINIMAL + "decoders: []\npipeline:\n  workers: 2\n")
    assert config_errors(load_pipeline, path, registry, environ={}) == [
        f"{path}:8:3: pipeline.workers: worker processes decode packets, and this pipeline has no decoders "
        "(decoders: []); set 1"
    ]


@pytest.mark.parametrize("key", ["inputs", "outputs"])
@pytest.mark.parametrize("empty", ["", "[]", "null"])
def test_empty_required_sections(tmp_path: Path, registry: Registry, key: str, empty: str) -> None:
    document = load_document(write(tmp_path, MINIMAL), environ={})
    document.data[key] = load_document(write(tmp_path, f"x: {empty}\n"), environ={}).data["x"]
    kind = key[:-1]
    assert config_errors(validate_pipeline, document, registry) == [
        f"{document.file}:{1 if key == 'inputs' else 4}:1: {key}: at least one {kind} is needed"
    ]


def test_sections_must_be_mappings(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, MINIMAL + "pipeline: 4\nlogging: [debug]\nplugins: mine.py\n")
    assert config_errors(load_pipeline, path, registry, environ={}) == [
        f"{path}:8:1: plugins: expected a list of module paths or names",
        f"{path}:6:1: pipeline: expected a mapping",
        f"{path}:7:1: logging: expected a mapping",
    ]


def test_no_decoders_send_packets_which_stdout_cannot_take(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, MINIMAL + "decoders: []\n")
    assert config_errors(load_pipeline, path, registry, environ={}) == [
        f"{path}:5:5: outputs.0.type: output 'stdout' cannot take the raw packets that decoders: [] sends "
        "to the outputs; outputs that can: file with codec pcap, kafka with codec pycapa"
    ]


def test_local_plugin_is_loaded_before_its_stages_are_validated(tmp_path: Path, registry: Registry) -> None:
    (tmp_path / "tagger.py").write_text(tagger_source("tagger_for_config_test"))
    text = MINIMAL + "processors:\n  - type: tagger_for_config_test\n    count: 2\nplugins: [tagger.py]\n"
    local = Registry.default()
    spec = load_pipeline(write(tmp_path, text), local, environ={})
    assert [(s.type, s.config.count) for s in spec.processors] == [("tagger_for_config_test", 2)]
    assert spec.plugins == ["tagger.py"]
    assert local.get("processor", "tagger_for_config_test").provider.package == "(local)"
