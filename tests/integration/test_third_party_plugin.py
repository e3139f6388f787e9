"""A third-party plugin package, pip-installed next to flowpipe, works with no change to flowpipe.

``tests/fixtures/flowpipe-example`` is built into a wheel and installed into the session's venv
beside flowpipe's own wheel (see ``conftest.py``). Its processor and output are listed with their
package and version, show their options, and run inside a pipeline that reads a capture. Two
more packages show the failures: ``flowpipe-conflict`` claims the output name ``stdout`` that
flowpipe already provides, and ``flowpipe-broken`` cannot be imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from captures import tcp_frame, udp_frame, write_pcap

import flowpipe

if TYPE_CHECKING:
    from conftest import WheelEnv

pytestmark = pytest.mark.slow

FLOWS = [
    ("192.0.2.10", 40000, "198.51.100.1", 53, "udp"),
    ("198.51.100.1", 53, "192.0.2.10", 40000, "udp"),
    ("192.0.2.10", 40001, "198.51.100.2", 80, "tcp"),
    ("198.51.100.2", 80, "192.0.2.10", 40001, "tcp"),
    ("2001:db8::1", 50000, "2001:db8::2", 443, "tcp"),
    ("2001:db8::3", 123, "2001:db8::4", 123, "udp"),
]
"""One packet per tuple: source ip, source port, destination ip, destination port, transport."""


def _capture(path: Path) -> Path:
    builders = {"udp": udp_frame, "tcp": tcp_frame}
    return write_pcap(
        path,
        [
            (1_700_000_000 + index, builders[transport](src, dst, sport, dport, b"x" * index))
            for index, (src, sport, dst, dport, transport) in enumerate(FLOWS)
        ],
    )


def _pipeline(folder: Path, output: str) -> Path:
    _capture(folder / "capture.pcap")
    path = folder / "pipeline.yml"
    path.write_text(
        "inputs:\n"
        "  - type: pcap\n"
        "    files: [capture.pcap]\n"
        "decoders:\n"
        "  - type: ip\n"
        "    flows: {enabled: false}\n"
        "processors:\n"
        "  - type: example_tag\n"
        "    field: labels.plugin\n"
        "    value: flowpipe-example\n"
        f"outputs:\n{output}",
        encoding="utf-8",
    )
    return path


def test_plugins_lists_the_example_package(wheel_env: WheelEnv, plugin_table) -> None:
    result = wheel_env.run("plugins")

    assert (result.returncode, result.stderr) == (0, "")
    assert [row for row in plugin_table(result.stdout) if row[2] != "flowpipe"] == [
        (
            "processor",
            "example_tag",
            "flowpipe-example",
            "1.2.3",
            "Set one field to a fixed value on every event.",
        ),
        (
            "output",
            "example_count",
            "flowpipe-example",
            "1.2.3",
            "Count the events received and write the total to a file on close.",
        ),
    ]


def test_plugins_shows_the_example_processor_options(wheel_env: WheelEnv) -> None:
    result = wheel_env.run("plugins", "example_tag")

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "processor 'example_tag' from package flowpipe-example 1.2.3 (plugin 'example')\n"
        "\n"
        "Set one field to a fixed value on every event.\n"
        "\n"
        "OPTION  TYPE       DEFAULT         DESCRIPTION\n"
        "field   string     labels.example  dotted path of the field to set\n"
        "value   string     (required)      the value to set\n"
        "when    condition  null            process only the events for which this condition holds; "
        "the others pass unchanged\n"
    )


def test_example_processor_and_output_run_in_a_pipeline(wheel_env: WheelEnv, tmp_path: Path) -> None:
    pipeline = _pipeline(
        tmp_path,
        "  - type: stdout\n  - type: example_count\n    path: count.txt\n",
    )

    result = wheel_env.run("run", "-c", pipeline, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [
        (
            event["source"]["ip"],
            event["source"]["port"],
            event["destination"]["ip"],
            event["destination"]["port"],
            event["network"]["transport"],
        )
        for event in events
    ] == FLOWS
    assert [event["labels"] for event in events] == [{"plugin": "flowpipe-example"}] * len(FLOWS)
    assert (tmp_path / "count.txt").read_text(encoding="utf-8") == f"{len(FLOWS)}\n"
    assert f"events shipped: stdout {len(FLOWS)}, example_count {len(FLOWS)}" in result.stderr


def test_options_of_a_third_party_stage_are_validated(wheel_env: WheelEnv, tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, "  - type: stdout\n")
    pipeline.write_text(pipeline.read_text(encoding="utf-8").replace("field:", "feild:"), encoding="utf-8")

    result = wheel_env.run("check", "-c", pipeline, cwd=tmp_path)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"flowpipe: {pipeline}:9:5: processors.0.feild: unknown option (did you mean 'field'?)\n"
    )


CONFLICT = (
    f"flowpipe: output 'stdout' is claimed by two plugins: package flowpipe {flowpipe.__version__} "
    "(plugin 'stdout') and package flowpipe-conflict 0.9.0 (plugin 'conflict'); uninstall one of them\n"
)


@pytest.mark.parametrize("command", [["plugins"], ["plugins", "stdout"], ["check", "-c", "pipeline.yml"]])
def test_two_packages_claiming_one_name_is_an_error_naming_both(
    wheel_env: WheelEnv, tmp_path: Path, command: list[str]
) -> None:
    _pipeline(tmp_path, "  - type: stdout\n")

    result = wheel_env.run(*command, cwd=tmp_path, with_plugins=["flowpipe-conflict"])

    assert (result.returncode, result.stdout, result.stderr) == (2, "", CONFLICT)


def test_a_plugin_package_that_fails_to_import_is_named(wheel_env: WheelEnv) -> None:
    result = wheel_env.run("plugins", with_plugins=["flowpipe-broken"])

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "flowpipe: cannot load package flowpipe-broken 0.0.1 (plugin 'broken') (flowpipe_broken): "
        "ModuleNotFoundError: No module named 'flowpipe_broken_missing_dependency'\n"
    )
