"""Local plugins: modules named under ``plugins:`` in a pipeline file, found next to that file.

Both forms are covered: a ``.py`` path relative to the pipeline file and a dotted module name
imported from the pipeline file's folder. flowpipe runs from another directory, so neither is
found through the working directory. A plugin that cannot be loaded is a configuration error
(exit status 2) naming the plugin and where the pipeline file names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from captures import udp_frame, write_pcap

import flowpipe

PACKETS = 3


def _tag_plugin(processor: str, label: str) -> str:
    """Source of a plugin module whose processor ``processor`` sets ``labels.<label>``."""
    return (
        f'"""A local plugin: the processor {processor}."""\n'
        "from flowpipe import Option, Processor, Str, hookimpl, set_field\n\n\n"
        "class Tag(Processor):\n"
        f'    """Set labels.{label} on every event."""\n\n'
        f'    options = (Option("value", Str(), "{label}", "the value to set"),)\n\n'
        "    def process(self, events):\n"
        "        for event in events:\n"
        f'            set_field(event, "labels.{label}", self.config.value)\n'
        "        return events\n\n\n"
        "@hookimpl\n"
        "def flowpipe_add_processors():\n"
        f'    return {{"{processor}": Tag}}\n'
    )


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _pipeline(project: Path, plugins: list[str], processors: str = "") -> Path:
    write_pcap(
        project / "capture.pcap",
        [(1_700_000_000 + n, udp_frame("192.0.2.1", "192.0.2.2", 1000 + n, 53)) for n in range(PACKETS)],
    )
    return _write(
        project / "pipeline.yml",
        "plugins:\n"
        + "".join(f"  - {plugin}\n" for plugin in plugins)
        + "inputs:\n  - type: pcap\n    files: [capture.pcap]\n"
        + "decoders:\n  - type: ip\n    flows: {enabled: false}\n"
        + processors
        + "outputs:\n  - type: stdout\n",
    )


def _flowpipe(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A pipeline folder with a plugin by path (extra/path_tag.py) and one by module name."""
    folder = tmp_path / "project"
    _write(folder / "extra" / "path_tag.py", _tag_plugin("path_tag", "by_path"))
    _write(folder / "local_plugins" / "__init__.py", "")
    _write(folder / "local_plugins" / "module_tag.py", _tag_plugin("module_tag", "by_module"))
    return folder


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """The working directory of the flowpipe runs: not the pipeline file's folder."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


BOTH = ["extra/path_tag.py", "local_plugins.module_tag"]
BOTH_PROCESSORS = "processors:\n  - type: path_tag\n  - type: module_tag\n    value: set-in-pipeline\n"


def test_local_plugins_by_path_and_by_module_run_in_a_pipeline(project: Path, elsewhere: Path) -> None:
    pipeline = _pipeline(project, BOTH, BOTH_PROCESSORS)

    result = _flowpipe("run", "-c", pipeline, cwd=elsewhere)

    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [event["source"]["port"] for event in events] == [1000, 1001, 1002]
    assert [event["labels"] for event in events] == [
        {"by_path": "by_path", "by_module": "set-in-pipeline"}
    ] * PACKETS


def test_plugins_command_lists_local_plugins_of_a_pipeline(
    project: Path, elsewhere: Path, plugin_table
) -> None:
    pipeline = _pipeline(project, BOTH)

    listing = _flowpipe("plugins", "-c", pipeline, cwd=elsewhere)
    detail = _flowpipe("plugins", "-c", pipeline, "path_tag", cwd=elsewhere)

    assert (listing.returncode, listing.stderr) == (0, "")
    assert [row for row in plugin_table(listing.stdout) if row[2] == "(local)"] == [
        ("processor", "module_tag", "(local)", "", "Set labels.by_module on every event."),
        ("processor", "path_tag", "(local)", "", "Set labels.by_path on every event."),
    ]
    assert (detail.returncode, detail.stderr) == (0, "")
    assert detail.stdout == (
        "processor 'path_tag' from local plugin 'extra/path_tag.py'\n"
        "\n"
        "Set labels.by_path on every event.\n"
        "\n"
        "OPTION  TYPE       DEFAULT  DESCRIPTION\n"
        "value   string     by_path  the value to set\n"
        "when    condition  null     process only the events for which this condition holds; "
        "the others pass unchanged\n"
    )


BROKEN_PLUGINS = {
    "raises.py": 'raise RuntimeError("licence server unreachable")\n',
    "raises_module.py": 'raise RuntimeError("licence server unreachable")\n',
    "typo.py": "from flowpipe import hookimpl\n\n\n@hookimpl\ndef flowpipe_add_processor():\n    return {}\n",
}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("raises.py", "local plugin 'raises.py': RuntimeError: licence server unreachable"),
        ("raises_module", "local plugin 'raises_module': RuntimeError: licence server unreachable"),
        ("missing.py", "local plugin 'missing.py': no such file {project}/missing.py"),
        (
            "no_such_module",
            "local plugin 'no_such_module': ModuleNotFoundError: No module named 'no_such_module'",
        ),
        (
            "typo.py",
            "cannot register local plugin 'typo.py': "
            "unknown hook 'flowpipe_add_processor' (did you mean 'flowpipe_add_processors'?)",
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_a_local_plugin_that_cannot_load_is_a_config_error_naming_it(
    project: Path, elsewhere: Path, spec: str, message: str, command: str
) -> None:
    for name, source in BROKEN_PLUGINS.items():
        _write(project / name, source)
    pipeline = _pipeline(project, ["extra/path_tag.py", spec])

    result = _flowpipe(command, "-c", pipeline, cwd=elsewhere)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"flowpipe: {pipeline}:3:5: plugins.1: {message.format(project=project)}\n"


def test_a_local_plugin_returning_no_mapping_is_named(project: Path, elsewhere: Path) -> None:
    _write(
        project / "returns_list.py",
        'from flowpipe import hookimpl\n\n\n@hookimpl\ndef flowpipe_add_outputs():\n    return ["stdout"]\n',
    )
    pipeline = _pipeline(project, ["returns_list.py"])

    result = _flowpipe("check", "-c", pipeline, cwd=elsewhere)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "flowpipe: local plugin 'returns_list.py': flowpipe_add_outputs must return a dict of names "
        "to classes, got ['stdout']\n"
    )


def test_a_local_plugin_claiming_a_builtin_name_is_an_error_naming_both(
    project: Path, elsewhere: Path
) -> None:
    _write(
        project / "my_stdout.py",
        "from flowpipe import Output, hookimpl\n\n\n"
        "class Mine(Output):\n"
        '    """My own stdout."""\n\n\n'
        "@hookimpl\n"
        "def flowpipe_add_outputs():\n"
        '    return {"stdout": Mine}\n',
    )
    pipeline = _pipeline(project, ["my_stdout.py"])

    result = _flowpipe("check", "-c", pipeline, cwd=elsewhere)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"flowpipe: output 'stdout' is claimed by two plugins: package flowpipe {flowpipe.__version__} "
        "(plugin 'stdout') and local plugin 'my_stdout.py'; uninstall one of them\n"
    )


def test_stages_of_a_plugin_that_cannot_load_add_no_second_message(project: Path, elsewhere: Path) -> None:
    _write(project / "raises.py", BROKEN_PLUGINS["raises.py"])
    pipeline = _pipeline(project, ["raises.py"], processors="processors:\n  - type: raising_tag\n")

    result = _flowpipe("check", "-c", pipeline, cwd=elsewhere)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"flowpipe: {pipeline}:2:5: plugins.0: "
        "local plugin 'raises.py': RuntimeError: licence server unreachable\n"
    )
