"""``flowpipe check -c FILE``: broken pipeline files give one exact message each and exit status 2.

Every message has the form ``flowpipe: FILE:LINE:COLUMN: KEY.PATH: problem`` (or
``command line (-E ...)`` in place of the file position for a value set with ``-E``). ``check``
validates the configuration only: it never opens inputs or outputs, so the capture files named
in a pipeline need not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from plugin_sources import tagger_source

from flowpipe.registry import Registry

REPO = Path(__file__).resolve().parents[2]
VALID = """\
inputs:
  - type: pcap
    files: [missing.pcap]
outputs:
  - type: stdout
"""
UNSET = "FLOWPIPE_TEST_UNSET"
REGISTRY = Registry.default()


def check(
    cwd: Path, text: str | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Write ``text`` (dedented) to ``cwd/pipeline.yml`` and run ``flowpipe check -c pipeline.yml``."""
    if text is not None:
        (cwd / "pipeline.yml").write_text(textwrap.dedent(text))
    environ = {key: value for key, value in os.environ.items() if not key.startswith("FLOWPIPE_TEST_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", "check", "-c", "pipeline.yml", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_config_errors(result: subprocess.CompletedProcess[str], *messages: str) -> None:
    assert result.stderr.splitlines() == [f"flowpipe: {message}" for message in messages]
    assert result.stdout == ""
    assert result.returncode == 2


def known(kind: str) -> str:
    return ", ".join(REGISTRY.names(kind))


BROKEN = [
    pytest.param(
        """\
        inputs:
          - type: pcap
            files: [a.pcap
        outputs:
          - type: stdout
        """,
        (),
        [
            "pipeline.yml:4:8: invalid YAML: expected ',' or ']', but got ':' "
            "(while parsing a flow sequence at line 3, column 12)"
        ],
        id="yaml-syntax",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcap
            files: "a.pcap
        outputs:
          - type: stdout
        """,
        (),
        [
            "pipeline.yml:6:1: invalid YAML: found unexpected end of stream "
            "(while scanning a quoted scalar at line 3, column 12)"
        ],
        id="yaml-unclosed-quote",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcap
           files: [a.pcap]
        """,
        (),
        [
            "pipeline.yml:3:4: invalid YAML: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block collection at line 2, column 3)"
        ],
        id="yaml-indentation",
    ),
    pytest.param(
        VALID + "output:\n  - type: stdout\nsnaplen: 100\n",
        (),
        [
            "pipeline.yml:6:1: output: unknown top-level key (did you mean 'outputs'?)",
            "pipeline.yml:8:1: snaplen: unknown top-level key; known keys: "
            "inputs, decoders, processors, outputs, pipeline, plugins, logging, metrics",
        ],
        id="unknown-top-level-key",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcap
            files: [a.pcap]
            workers: 4
            bpf_fliter: tcp
        outputs:
          - type: stdout
            codecs: json
        """,
        (),
        [
            "pipeline.yml:4:5: inputs.0.workers: unknown option; known options: <pcap options>",
            "pipeline.yml:5:5: inputs.0.bpf_fliter: unknown option (did you mean 'bpf_filter'?)",
            "pipeline.yml:8:5: outputs.0.codecs: unknown option (did you mean 'codec'?)",
        ],
        id="unknown-option",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcap
            files: [a.pcap]
            loop: three
            realtime: [true]
            speed: 0
        outputs:
          - type: stdout
        """,
        (),
        [
            "pipeline.yml:4:5: inputs.0.loop: expected an integer, got 'three'",
            "pipeline.yml:5:5: inputs.0.realtime: expected true or false, got a list",
            "pipeline.yml:6:5: inputs.0.speed: must be > 0, got 0",
        ],
        id="wrong-type",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcap
            files: [a.pcap]
        outputs:
          - type: file
            codec: json
        """,
        (),
        ["pipeline.yml:5:5: outputs.0.path: missing required option"],
        id="missing-required-option",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcap
            files: []
        outputs:
          - type: stdout
        """,
        (),
        ["pipeline.yml:3:5: inputs.0.files: expected at least 1 item(s)"],
        id="empty-required-list",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcapp
            files: [a.pcap]
        outputs:
          - type: stdot
        """,
        (),
        [
            "pipeline.yml:2:5: inputs.0.type: unknown input type 'pcapp' (did you mean 'pcap'?); "
            "known inputs: <inputs>",
            "pipeline.yml:5:5: outputs.0.type: unknown output type 'stdot' (did you mean 'stdout'?); "
            "known outputs: <outputs>",
        ],
        id="unknown-plugin-type",
    ),
    pytest.param(
        """\
        inputs:
          - files: [a.pcap]
          - type: [pcap]
          - pcap
        outputs:
          - type: stdout
        """,
        (),
        [
            "pipeline.yml:2:5: inputs.0: missing required key 'type' (the input plugin)",
            "pipeline.yml:3:5: inputs.1.type: expected a plugin name, got ['pcap']",
            "pipeline.yml:4:5: inputs.2: expected a mapping with a 'type' key, got 'pcap'",
        ],
        id="missing-or-bad-type",
    ),
    pytest.param(
        """\
        inputs:
          type: pcap
          files: [a.pcap]
        outputs:
          - type: stdout
        """,
        (),
        ["pipeline.yml:1:1: inputs: expected a list of inputs, each with a 'type'"],
        id="inputs-not-a-list",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcap
            id: capture
            files: [a.pcap]
          - type: pcap
            id: capture
            files: [b.pcap]
        outputs:
          - type: stdout
        """,
        (),
        ["pipeline.yml:6:5: inputs.1.id: id 'capture' is already used by inputs.0"],
        id="duplicate-stage-id",
    ),
    pytest.param(
        """\
        inputs:
          - type: pcap
            files: [a.pcap]
            files: [b.pcap]
        outputs:
          - type: stdout
        pipeline:
          queue: {batches: 4, batches: 8}
        """,
        (),
        [
            "pipeline.yml:4:5: inputs.0.files: duplicate key",
            "pipeline.yml:8:23: pipeline.queue.batches: duplicate key",
        ],
        id="duplicate-key",
    ),
    pytest.param(
        f"""\
        inputs:
          - type: pcap
            files: ${{{UNSET}}}
            loop: ${{{UNSET}_LOOPS:1}}
        outputs:
          - type: stdout
        """,
        (),
        [
            f"pipeline.yml:3:12: inputs.0.files: environment variable {UNSET} is not set "
            f"(write ${{{UNSET}:default}} for a default)"
        ],
        id="unset-env-var",
    ),
    pytest.param(
        VALID
        + "pipeline:\n"
        + "  shutdown_timeout: 10x\n"
        + "  batch_size: 0\n"
        + "  queue:\n"
        + "    batches: many\n"
        + "    bytes: lots\n"
        + "metrics:\n"
        + "  period: soon\n",
        (),
        [
            "pipeline.yml:7:3: pipeline.shutdown_timeout: "
            "expected a duration such as 10s or 500ms, got '10x'",
            "pipeline.yml:8:3: pipeline.batch_size: must be >= 1, got 0",
            "pipeline.yml:10:5: pipeline.queue.batches: expected an integer, got 'many'",
            "pipeline.yml:11:5: pipeline.queue.bytes: expected a size such as 10MB or 64KiB, got 'lots'",
            "pipeline.yml:13:3: metrics.period: expected a duration such as 10s or 500ms, got 'soon'",
        ],
        id="bad-duration-and-size",
    ),
    pytest.param(
        VALID + "decoders: []\npipeline:\n  workers: 4\n",
        (),
        [
            "pipeline.yml:8:3: pipeline.workers: worker processes decode packets, and this pipeline has "
            "no decoders (decoders: []); set 1"
        ],
        id="workers",
    ),
    pytest.param(
        VALID,
        ("-E", "inputs.2.files=x.pcap", "-E", "inputs.0.files.x=a", "-E", "verbose"),
        [
            "command line (-E inputs.2.files=x.pcap): inputs.2: position 2 is past the end of a list of 1",
            "command line (-E inputs.0.files.x=a): inputs.0.files.x: inputs.0.files is a list; "
            "use a position number",
            "command line (-E verbose): expected -E path.to.key=value",
        ],
        id="bad-override-path",
    ),
    pytest.param(
        VALID,
        ("-E", "inputs.0.file=x.pcap", "-E", "inputs.0.loop=forever", "-E", "outputs.0.backoff.max=1y"),
        [
            "command line (-E inputs.0.file=x.pcap): inputs.0.file: unknown option (did you mean 'files'?)",
            "command line (-E inputs.0.loop=forever): inputs.0.loop: expected an integer, got 'forever'",
            "command line (-E outputs.0.backoff.max=1y): outputs.0.backoff.max: "
            "expected a duration such as 10s or 500ms, got '1y'",
        ],
        id="bad-override-value",
    ),
    pytest.param(
        "plugins: [plugins/nope.py]\n" + VALID,
        (),
        ["pipeline.yml:1:11: plugins.0: local plugin 'plugins/nope.py': no such file <cwd>/plugins/nope.py"],
        id="local-plugin-missing",
    ),
    pytest.param(
        VALID + "logging:\n  level: verbose\n  format: xml\n",
        (),
        [
            "pipeline.yml:7:3: logging.level: expected one of debug, info, warning, error; got 'verbose'",
            "pipeline.yml:8:3: logging.format: expected one of text, json; got 'xml'",
        ],
        id="logging-invalid-choice",
    ),
    pytest.param(
        "inputs:\n  - type: pcap\n    files: a.pcap\noutputs: []\n",
        (),
        ["pipeline.yml:4:1: outputs: at least one output is needed"],
        id="empty-outputs",
    ),
    pytest.param(
        "inputs:\n  - type: pcap\n    files: a.pcap\noutputs:\n",
        (),
        ["pipeline.yml:4:1: outputs: at least one output is needed"],
        id="null-outputs",
    ),
    pytest.param(
        "# nothing yet\n",
        (),
        [
            "pipeline.yml:1:1: (top level): missing required section 'inputs'",
            "pipeline.yml:1:1: (top level): missing required section 'outputs'",
        ],
        id="empty-file",
    ),
    pytest.param(
        "- type: pcap\n",
        (),
        ["pipeline.yml:1:1: (top level): expected a mapping with 'inputs' and 'outputs'"],
        id="top-level-not-a-mapping",
    ),
    pytest.param(
        VALID
        + "  - type: stdout\n"
        + "    on_full: discard\n"
        + "    backoff:\n"
        + "      init: 1x\n"
        + "      mux: 5m\n",
        (),
        [
            "pipeline.yml:7:5: outputs.1.on_full: expected one of block, drop; got 'discard'",
            "pipeline.yml:9:7: outputs.1.backoff.init: expected a duration such as 10s or 500ms, got '1x'",
            "pipeline.yml:10:7: outputs.1.backoff.mux: unknown option (did you mean 'max'?)",
        ],
        id="nested-section-errors",
    ),
]


@pytest.mark.parametrize(("text", "args", "messages"), BROKEN)
def test_broken_config(tmp_path: Path, text: str, args: tuple[str, ...], messages: list[str]) -> None:
    result = check(tmp_path, text, *args)
    cwd = tmp_path.resolve()
    placeholders = {
        "<inputs>": known("input"),
        "<outputs>": known("output"),
        "<pcap options>": ", ".join(
            option.name for option in REGISTRY.get("input", "pcap").cls.all_options()
        ),
        "<cwd>": str(cwd),
    }
    expected = []
    for message in messages:
        for placeholder, value in placeholders.items():
            message = message.replace(placeholder, value)
        expected.append(message)
    assert_config_errors(result, *expected)


def test_several_errors_in_one_file_are_all_reported_in_file_order(tmp_path: Path) -> None:
    text = """\
    inputz: []
    inputs:
      - type: pcap
        files: [a.pcap]
        loop: -1
      - type: pcapp
    outputs:
      - type: stdout
        codec: xml
    pipeline:
      shutdown_timeout: later
      queue: {batches: 0, bytes: lots}
    logging: {level: loud}
    """
    assert_config_errors(
        check(tmp_path, text),
        "pipeline.yml:1:1: inputz: unknown top-level key (did you mean 'inputs'?)",
        "pipeline.yml:5:5: inputs.0.loop: must be >= 0, got -1",
        f"pipeline.yml:6:5: inputs.1.type: unknown input type 'pcapp' (did you mean 'pcap'?); "
        f"known inputs: {known('input')}",
        "pipeline.yml:9:5: outputs.0.codec: expected one of json, pretty; got 'xml'",
        "pipeline.yml:11:3: pipeline.shutdown_timeout: expected a duration such as 10s or 500ms, got 'later'",
        "pipeline.yml:12:11: pipeline.queue.batches: must be >= 1, got 0",
        "pipeline.yml:12:23: pipeline.queue.bytes: expected a size such as 10MB or 64KiB, got 'lots'",
        "pipeline.yml:13:11: logging.level: expected one of debug, info, warning, error; got 'loud'",
    )


def test_missing_config_file(tmp_path: Path) -> None:
    assert_config_errors(check(tmp_path, None), "pipeline.yml: no such file")


def test_valid_config_does_not_open_inputs(tmp_path: Path) -> None:
    """``check`` validates configuration only: a missing or garbage capture file is not read."""
    (tmp_path / "garbage.pcap").write_bytes(b"not a capture")
    text = VALID.replace("[missing.pcap]", "[missing.pcap, garbage.pcap]")
    result = check(tmp_path, text)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "pipeline.yml: OK (1 inputs, 3 decoders, 0 processors, 1 outputs)\n"


def test_valid_config_counts_every_stage(tmp_path: Path) -> None:
    text = """\
    inputs:
      - {type: pcap, files: a.pcap}
      - {type: pcap, files: b.pcap}
    decoders:
      - type: ip
    outputs:
      - {type: stdout, id: one}
      - {type: stdout, id: two, codec: pretty, on_full: drop, backoff: {init: 100ms, max: 1m}}
    pipeline: {batch_size: 64, queue: {batches: 4, bytes: 16MiB}, workers: 1, shutdown_timeout: 5s}
    logging: {level: debug, format: json}
    metrics: {period: 0}
    """
    result = check(tmp_path, text)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "pipeline.yml: OK (2 inputs, 1 decoders, 0 processors, 2 outputs)\n"


def test_env_substitution_feeds_validation(tmp_path: Path) -> None:
    text = """\
    inputs:
      - type: pcap
        files: ${FLOWPIPE_TEST_CAPTURE:default.pcap}
        loop: ${FLOWPIPE_TEST_LOOPS}
    outputs:
      - type: stdout
    """
    ok = check(tmp_path, text, env={"FLOWPIPE_TEST_LOOPS": "3"})
    assert (ok.returncode, ok.stdout, ok.stderr) == (
        0,
        "pipeline.yml: OK (1 inputs, 3 decoders, 0 processors, 1 outputs)\n",
        "",
    )
    assert_config_errors(
        check(tmp_path, None, env={"FLOWPIPE_TEST_LOOPS": "-2"}),
        "pipeline.yml:4:5: inputs.0.loop: must be >= 0, got -2",
    )
    assert_config_errors(
        check(tmp_path, None),
        "pipeline.yml:4:11: inputs.0.loop: environment variable FLOWPIPE_TEST_LOOPS is not set "
        "(write ${FLOWPIPE_TEST_LOOPS:default} for a default)",
    )


def test_overrides_make_a_config_valid(tmp_path: Path) -> None:
    text = "inputs:\n  - type: pcap\noutputs: [{type: stdout}]\npipeline:\n"
    assert_config_errors(
        check(tmp_path, text), "pipeline.yml:2:5: inputs.0: give exactly one of files or device"
    )
    result = check(
        tmp_path,
        None,
        "-E",
        "inputs.0.files=[a.pcap, b.pcap]",
        "-E",
        "pipeline.queue.batches=8",
        "-E",
        "outputs.1.type=stdout",
        "-E",
        "outputs.1.codec=pretty",
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "pipeline.yml: OK (1 inputs, 3 decoders, 0 processors, 2 outputs)\n"


def test_local_plugin_stage_is_validated(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "tagger.py").write_text(tagger_source())
    text = VALID + "processors:\n  - type: tagger\n    count: 0\nplugins: [plugins/tagger.py]\n"
    assert_config_errors(check(tmp_path, text), "pipeline.yml:8:5: processors.0.count: must be >= 1, got 0")
    result = check(tmp_path, text.replace("count: 0", "count: 2"))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "pipeline.yml: OK (1 inputs, 3 decoders, 1 processors, 1 outputs)\n"


def test_shipped_pipeline_is_valid() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("pipeline.yml: OK (1 inputs, ")
