"""``flowpipe plugins`` lists every plugin; ``flowpipe plugins NAME`` shows one plugin's options."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from plugin_sources import tagger_source

from flowpipe.registry import KINDS, Registry

VERSION = importlib.metadata.version("flowpipe")
REGISTRY = Registry.default()
WHEN = "process only the events for which this condition holds; the others pass unchanged"
PcapInput = REGISTRY.get("input", "pcap").cls
IpDecoder = REGISTRY.get("decoder", "ip").cls
StdoutOutput = REGISTRY.get("output", "stdout").cls
TAGGER = tagger_source(doc="Add tags to every event.\n\nLonger description.\n")


def flowpipe(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def parse_table(lines: list[str]) -> list[dict[str, str]]:
    """Rows of a table printed with left-aligned columns, as dicts keyed by the header's words."""
    header, *rows = lines
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    assert len(starts) == len(names)
    bounds = [*starts[1:], None]
    return [
        {name: row[start:end].strip() for name, start, end in zip(names, starts, bounds, strict=True)}
        for row in rows
    ]


def option_table(stdout: str) -> list[dict[str, str]]:
    lines = stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if line.split()[:2] == ["OPTION", "TYPE"])
    return parse_table(lines[start:])


def test_list_shows_kind_name_package_and_version(tmp_path: Path) -> None:
    result = flowpipe(tmp_path, "plugins")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PACKAGE", "VERSION", "DESCRIPTION"]
    rows = parse_table(lines)
    by_name = {(row["KIND"], row["NAME"]): row for row in rows}
    assert by_name[("input", "pcap")] == {
        "KIND": "input",
        "NAME": "pcap",
        "PACKAGE": "flowpipe",
        "VERSION": VERSION,
        "DESCRIPTION": PcapInput.summary(),
    }
    assert by_name[("decoder", "ip")] == {
        "KIND": "decoder",
        "NAME": "ip",
        "PACKAGE": "flowpipe",
        "VERSION": VERSION,
        "DESCRIPTION": IpDecoder.summary(),
    }
    assert by_name[("output", "stdout")] == {
        "KIND": "output",
        "NAME": "stdout",
        "PACKAGE": "flowpipe",
        "VERSION": VERSION,
        "DESCRIPTION": StdoutOutput.summary(),
    }
    assert PcapInput.summary() == (
        "Read packets from pcap or pcapng files, or capture them live from a network device."
    )


def test_list_has_every_registered_stage_once_in_kind_order(tmp_path: Path) -> None:
    rows = parse_table(flowpipe(tmp_path, "plugins").stdout.splitlines())
    listed = [(row["KIND"], row["NAME"]) for row in rows]
    expected = [(info.kind, info.name) for info in REGISTRY.all() if info.kind != "command"]
    assert listed == expected
    assert len(set(listed)) == len(listed)
    assert [KINDS.index(kind) for kind, _ in listed] == sorted(KINDS.index(kind) for kind, _ in listed)
    assert "command" not in {kind for kind, _ in listed}


def test_show_pcap_options(tmp_path: Path) -> None:
    result = flowpipe(tmp_path, "plugins", "pcap")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == f"input 'pcap' from package flowpipe {VERSION} (plugin 'pcap')"
    assert lines[2] == PcapInput.summary()
    rows = option_table(result.stdout)
    assert [row["OPTION"] for row in rows] == [option.name for option in PcapInput.all_options()]
    assert {row["OPTION"]: (row["TYPE"], row["DEFAULT"]) for row in rows} == {
        "files": ("list of string", "null"),
        "device": ("string", "null"),
        "bpf_filter": ("string", "null"),
        "snaplen": ("integer 1..262144", "262144"),
        "promiscuous": ("boolean", "true"),
        "buffer_size": ("byte size", "16MiB"),
        "immediate": ("boolean", "true"),
        "timeout": ("duration", "100ms"),
        "realtime": ("boolean", "false"),
        "speed": ("number > 0", "1.0"),
        "loop": ("integer >= 0", "1"),
    }
    assert [row["DESCRIPTION"] for row in rows] == [option.description for option in PcapInput.all_options()]
    assert all(row["DESCRIPTION"] for row in rows)


def test_show_output_includes_common_options(tmp_path: Path) -> None:
    result = flowpipe(tmp_path, "plugins", "stdout")
    assert (result.returncode, result.stderr) == (0, "")
    assert (
        result.stdout.splitlines()[0] == f"output 'stdout' from package flowpipe {VERSION} (plugin 'stdout')"
    )
    rows = {row["OPTION"]: row for row in option_table(result.stdout)}
    assert list(rows) == ["codec", "on_full", "backoff", "backoff.init", "backoff.max"]
    assert rows["codec"] == {
        "OPTION": "codec",
        "TYPE": "json | pretty",
        "DEFAULT": "json",
        "DESCRIPTION": "how each event is written",
    }
    assert (rows["on_full"]["TYPE"], rows["on_full"]["DEFAULT"]) == ("block | drop", "block")
    assert (rows["backoff"]["TYPE"], rows["backoff"]["DEFAULT"]) == ("mapping", "(section)")
    assert rows["backoff.init"] == {
        "OPTION": "backoff.init",
        "TYPE": "duration",
        "DEFAULT": "1s",
        "DESCRIPTION": "first wait after a failed write",
    }
    assert rows["backoff.max"] == {
        "OPTION": "backoff.max",
        "TYPE": "duration",
        "DEFAULT": "60s",
        "DESCRIPTION": "longest wait between retries",
    }


def test_show_plugin_without_options(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text(
        "from flowpipe import Decoder, hookimpl\n\n\n"
        "class Plain(Decoder):\n"
        '    """Pass packets on."""\n\n'
        "    def decode(self, batch, events):\n"
        "        return batch\n\n\n"
        "@hookimpl\n"
        "def flowpipe_add_decoders():\n"
        '    return {"plain": Plain}\n'
    )
    (tmp_path / "pipeline.yml").write_text(
        "plugins: [plain.py]\ninputs: [{type: pcap, files: [x.pcap]}]\noutputs: [{type: stdout}]\n"
    )
    result = flowpipe(tmp_path, "plugins", "-c", "pipeline.yml", "plain")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == "decoder 'plain' from local plugin 'plain.py'"
    assert lines[-1] == "options: none besides type and id"


def test_unknown_plugin_lists_known_names(tmp_path: Path) -> None:
    result = flowpipe(tmp_path, "plugins", "nosuch")
    known = sorted({info.name for info in REGISTRY.all() if info.kind != "command"})
    assert {"ip", "pcap", "stdout"} <= set(known)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"flowpipe: no plugin named 'nosuch'; known: {', '.join(known)}\n"


def test_commands_are_not_plugins_to_show(tmp_path: Path) -> None:
    result = flowpipe(tmp_path, "plugins", "check")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("flowpipe: no plugin named 'check'; known: ")


@pytest.fixture
def local_plugin_pipeline(tmp_path: Path) -> Path:
    (tmp_path / "tagger.py").write_text(TAGGER)
    (tmp_path / "pipeline.yml").write_text(
        textwrap.dedent(
            """\
            plugins: [tagger.py]
            inputs:
              - {type: pcap, files: a.pcap}
            processors:
              - type: tagger
            outputs:
              - type: stdout
            """
        )
    )
    return tmp_path / "pipeline.yml"


def test_list_with_local_plugins_of_a_pipeline(local_plugin_pipeline: Path) -> None:
    cwd = local_plugin_pipeline.parent
    without = parse_table(flowpipe(cwd, "plugins").stdout.splitlines())
    assert "tagger" not in {row["NAME"] for row in without}
    result = flowpipe(cwd, "plugins", "-c", "pipeline.yml")
    assert (result.returncode, result.stderr) == (0, "")
    rows = parse_table(result.stdout.splitlines())
    assert [row for row in rows if row["NAME"] == "tagger"] == [
        {
            "KIND": "processor",
            "NAME": "tagger",
            "PACKAGE": "(local)",
            "VERSION": "",
            "DESCRIPTION": "Add tags to every event.",
        }
    ]


def test_show_local_plugin(local_plugin_pipeline: Path) -> None:
    result = flowpipe(local_plugin_pipeline.parent, "plugins", "tagger", "-c", "pipeline.yml")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "processor 'tagger' from local plugin 'tagger.py'",
        "",
        "Add tags to every event.",
        "",
        "Longer description.",
    ]
    assert option_table(result.stdout) == [
        {"OPTION": "count", "TYPE": "integer >= 1", "DEFAULT": "1", "DESCRIPTION": "how many tags"},
        {"OPTION": "when", "TYPE": "condition", "DEFAULT": "null", "DESCRIPTION": WHEN},
    ]


def test_list_with_an_invalid_pipeline_reports_its_errors(local_plugin_pipeline: Path) -> None:
    local_plugin_pipeline.write_text(local_plugin_pipeline.read_text().replace("tagger.py", "tager.py"))
    result = flowpipe(local_plugin_pipeline.parent, "plugins", "-c", "pipeline.yml")
    cwd = local_plugin_pipeline.parent.resolve()
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"flowpipe: pipeline.yml:1:11: plugins.0: local plugin 'tager.py': no such file {cwd}/tager.py",
    ]


def test_a_reader_that_leaves_early_ends_the_listing_quietly(tmp_path: Path) -> None:
    listing = subprocess.Popen(
        [sys.executable, "-m", "flowpipe", "plugins", "ip"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.close()  # like `| head -0`: nobody reads
    stderr = listing.stderr.read().decode()
    assert (listing.wait(timeout=30), stderr) == (141, "")
