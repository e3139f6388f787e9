"""flowpipe as a user gets it: the wheel built from this tree, installed into a fresh venv.

The wheel must ship every file of ``flowpipe/`` and of ``plugins/`` (mapped to
``flowpipe/plugins/``), install no top-level ``plugins`` package, declare the console script and
the built-in plugins exactly as ``pyproject.toml`` does, and ``flowpipe plugins`` run from the
venv must list every built-in plugin.
"""

from __future__ import annotations

import configparser
import importlib
import re
import sys
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flowpipe.registry import Provider, Registry

if TYPE_CHECKING:
    from conftest import PluginRow, WheelEnv

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# pyproject.toml takes the version from flowpipe.__version__ (one source of truth)
VERSION = re.search(r'^__version__ = "([^"]+)"', (REPO / "flowpipe/__init__.py").read_text(), re.M).group(1)
DIST_INFO = f"flowpipe-{VERSION}.dist-info"


def _source_files(folder: Path, prefix: str) -> set[str]:
    return {
        f"{prefix}/{path.relative_to(folder).as_posix()}"
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _wheel_names(env: WheelEnv) -> set[str]:
    with zipfile.ZipFile(env.wheels["flowpipe"]) as wheel:
        return set(wheel.namelist())


def _wheel_text(env: WheelEnv, name: str) -> str:
    with zipfile.ZipFile(env.wheels["flowpipe"]) as wheel:
        return wheel.read(f"{DIST_INFO}/{name}").decode("utf-8")


def test_wheel_ships_plugins_under_the_flowpipe_namespace(wheel_env: WheelEnv) -> None:
    names = _wheel_names(wheel_env)

    assert {name.split("/")[0] for name in names} == {"flowpipe", DIST_INFO}
    shipped = {name for name in names if not name.startswith(f"{DIST_INFO}/")}
    expected = _source_files(REPO / "flowpipe", "flowpipe") | _source_files(
        REPO / "plugins", "flowpipe/plugins"
    )
    assert sorted(expected - shipped) == [], "files of the source tree missing from the wheel"
    assert sorted(shipped - expected) == [], "files in the wheel that the source tree does not have"
    assert {
        "flowpipe/plugins/__init__.py",
        "flowpipe/plugins/inputs/pcap.py",
        "flowpipe/plugins/decoders/ip.py",
        "flowpipe/plugins/outputs/stdout.py",
    } <= shipped


def test_wheel_metadata_matches_pyproject(wheel_env: WheelEnv) -> None:
    metadata = HeaderParser().parsestr(_wheel_text(wheel_env, "METADATA"))
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.optionxform = str
    entry_points.read_string(_wheel_text(wheel_env, "entry_points.txt"))

    assert (metadata["Name"], metadata["Version"], metadata["Requires-Python"]) == (
        "flowpipe",
        VERSION,
        ">=3.11",
    )
    assert dict(entry_points["console_scripts"]) == {"flowpipe": "flowpipe.cli:main"}
    assert dict(entry_points["flowpipe"]) == PYPROJECT["project"]["entry-points"]["flowpipe"]
    assert {"commands", "pcap", "ip", "stdout"} <= set(entry_points["flowpipe"])


def test_venv_has_flowpipe_plugins_and_no_top_level_plugins(wheel_env: WheelEnv) -> None:
    probe = (
        "import importlib.util, flowpipe, flowpipe.plugins.outputs.stdout as stdout; "
        "print(importlib.util.find_spec('plugins')); print(flowpipe.__file__); print(stdout.__file__)"
    )
    result = wheel_env.execute([wheel_env.python, "-c", probe])

    assert result.returncode == 0, result.stderr
    site = wheel_env.site_packages
    assert result.stdout.splitlines() == [
        "None",
        str(site / "flowpipe" / "__init__.py"),
        str(site / "flowpipe" / "plugins" / "outputs" / "stdout.py"),
    ]
    assert not (site / "plugins").exists()
    assert sorted(path.name for path in site.iterdir() if path.name.startswith("flowpipe")) == [
        "flowpipe",
        DIST_INFO,
        "flowpipe_example",
        "flowpipe_example-1.2.3.dist-info",
    ]


def _builtin_rows() -> list[PluginRow]:
    """What ``flowpipe plugins`` must list for flowpipe: the pyproject entry points, loaded here."""
    registry = Registry()
    for name, module in PYPROJECT["project"]["entry-points"]["flowpipe"].items():
        registry.register(importlib.import_module(module), name, Provider(name, "flowpipe", VERSION))
    return [
        (info.kind, info.name, "flowpipe", VERSION, info.cls.summary())
        for info in registry.all()
        if info.kind != "command"
    ]


def test_flowpipe_plugins_from_the_venv_lists_every_builtin(wheel_env: WheelEnv, plugin_table) -> None:
    result = wheel_env.run("plugins")

    assert (result.returncode, result.stderr) == (0, "")
    rows = plugin_table(result.stdout)
    builtins = _builtin_rows()
    assert [row for row in rows if row[2] == "flowpipe"] == builtins
    assert {row[2] for row in rows} == {"flowpipe", "flowpipe-example"}
    assert {row[:4] for row in builtins} >= {
        ("input", "pcap", "flowpipe", VERSION),
        ("decoder", "ip", "flowpipe", VERSION),
        ("output", "stdout", "flowpipe", VERSION),
    }


def test_console_script_reports_the_version(wheel_env: WheelEnv) -> None:
    result = wheel_env.run("--version")

    assert (result.returncode, result.stdout, result.stderr) == (0, f"flowpipe {VERSION}\n", "")


def test_module_entry_point_runs_from_the_venv(wheel_env: WheelEnv) -> None:
    installed = wheel_env.execute([wheel_env.python, "-m", "flowpipe", "plugins", "stdout"])
    here = wheel_env.execute([sys.executable, "-m", "flowpipe", "plugins", "stdout"])

    assert (installed.returncode, installed.stderr) == (0, "")
    assert installed.stdout.startswith(f"output 'stdout' from package flowpipe {VERSION} (plugin 'stdout')\n")
    assert installed.stdout == here.stdout
