"""A fresh virtual environment with flowpipe installed from its built wheel, once per session.

Building wheels and creating a venv take seconds, so the packaging and third-party plugin tests
share one :class:`WheelEnv`, made in two rounds of commands that run in parallel:

1. ``pip wheel --no-deps`` builds flowpipe's wheel from a copy of its top-level files and Python
   packages (so no ``build/`` or ``*.egg-info`` is left in the source tree), and the wheels of
   the plugin packages under ``tests/fixtures/`` from copies of them, while
   ``python -m venv --without-pip`` creates the environment;
2. this process's pip installs the flowpipe and ``flowpipe-example`` wheels into the venv
   (``pip --python VENV install``; dependencies come from the package index), as a user installs
   a plugin next to flowpipe, and ``flowpipe-conflict`` and ``flowpipe-broken`` into directories
   of their own (``--target``): a test puts one of those on ``PYTHONPATH`` to have it installed
   next to flowpipe without changing the venv the other tests share.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
PLUGIN_PACKAGES = ("flowpipe-example", "flowpipe-conflict", "flowpipe-broken")
"""Plugin distributions under tests/fixtures/ (directory name = distribution name)."""
SIDE_INSTALLS = ("flowpipe-conflict", "flowpipe-broken")
"""Plugins installed into their own directory, for the tests that need them on the path."""
SETUP_TIMEOUT = 600
RUN_TIMEOUT = 120
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


@dataclass
class WheelEnv:
    """A venv holding flowpipe and flowpipe-example installed from wheels built this session."""

    root: Path
    """A scratch directory of the session; commands run here, away from the source tree."""
    venv: Path
    wheels: dict[str, Path]
    """The built wheel of each distribution: ``flowpipe`` and the plugin packages."""
    side_installs: dict[str, Path]
    """Distribution name -> the ``pip install --target`` directory holding it."""

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def flowpipe(self) -> Path:
        """The installed ``flowpipe`` console script."""
        return self.venv / "bin" / "flowpipe"

    @property
    def site_packages(self) -> Path:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return self.venv / "lib" / version / "site-packages"

    def run(
        self, *args: str | Path, cwd: Path | None = None, with_plugins: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run ``flowpipe ARGS`` from the venv, optionally with side-installed plugin packages."""
        return self.execute([self.flowpipe, *args], cwd=cwd, with_plugins=with_plugins)

    def execute(
        self, command: Sequence[str | Path], cwd: Path | None = None, with_plugins: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run any command with the venv's environment (no PYTHONPATH but the chosen plugins)."""
        env = clean_environment()
        if with_plugins:
            env["PYTHONPATH"] = os.pathsep.join(str(self.side_installs[name]) for name in with_plugins)
        return subprocess.run(
            [str(part) for part in command],
            cwd=cwd or self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )


def clean_environment() -> dict[str, str]:
    """This process's environment without anything that would point Python at other code."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")
    }


def _run_all(*commands: list[str | Path], cwd: Path) -> None:
    """Run commands in parallel, printing when each had ended; fail showing the output of failures."""
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [str(part) for part in command],
            cwd=cwd,
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in commands
    ]
    failures = []
    for command, process in zip(commands, processes, strict=True):
        output, _ = process.communicate(timeout=SETUP_TIMEOUT)
        command_line = " ".join(str(part) for part in command)
        print(f"[{time.monotonic() - started:5.1f} s] {command_line}")
        if process.returncode != 0:
            failures.append(f"{command_line}\n  exited with {process.returncode}:\n{output}")
    if failures:
        pytest.fail("setting up the wheel venv failed:\n" + "\n".join(failures), pytrace=False)


def _copy_project(destination: Path) -> Path:
    """Copy what a build of flowpipe reads: top-level files and top-level Python packages."""
    destination.mkdir()
    for entry in REPO.iterdir():
        if entry.is_file():
            shutil.copy2(entry, destination / entry.name)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            shutil.copytree(entry, destination / entry.name, ignore=_IGNORE)
    return destination


@pytest.fixture(scope="session")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> WheelEnv:
    """flowpipe and flowpipe-example pip-installed from freshly built wheels into a fresh venv."""
    root = tmp_path_factory.mktemp("wheel-env")
    sources = root / "sources"
    sources.mkdir()
    flowpipe_source = _copy_project(sources / "flowpipe")
    plugin_sources = [
        shutil.copytree(FIXTURES / name, sources / name, ignore=_IGNORE) for name in PLUGIN_PACKAGES
    ]
    wheelhouse = root / "wheels"
    pip = [sys.executable, "-m", "pip"]
    env = WheelEnv(root, root / "venv", {}, {name: root / "site" / name for name in SIDE_INSTALLS})
    _run_all(
        [*pip, "wheel", "--no-deps", "-q", "-w", wheelhouse, flowpipe_source],
        [*pip, "wheel", "--no-deps", "-q", "-w", wheelhouse, *plugin_sources],
        [sys.executable, "-m", "venv", "--without-pip", env.venv],
        cwd=root,
    )
    for name in ("flowpipe", *PLUGIN_PACKAGES):
        env.wheels[name] = _only(wheelhouse.glob(f"{name.replace('-', '_')}-*.whl"))
    _run_all(
        [
            *pip,
            "--python",
            env.python,
            "install",
            "-q",
            env.wheels["flowpipe"],
            env.wheels["flowpipe-example"],
        ],
        *(
            [*pip, "install", "-q", "--no-deps", "--target", env.side_installs[name], env.wheels[name]]
            for name in SIDE_INSTALLS
        ),
        cwd=root,
    )
    return env


def _only(paths: Iterable[Path]) -> Path:
    found = sorted(paths)
    assert len(found) == 1, f"expected exactly one wheel, found {found}"
    return found[0]


PluginRow = tuple[str, str, str, str, str]
"""One row of ``flowpipe plugins``: kind, name, package, version, description."""


def parse_plugin_table(text: str) -> list[PluginRow]:
    """The rows of a ``flowpipe plugins`` listing, cut at the columns its header line sets."""
    header, *lines = text.splitlines()
    starts = [header.index(title) for title in ("KIND", "NAME", "PACKAGE", "VERSION", "DESCRIPTION")]
    assert starts[0] == 0, f"unexpected header {header!r}"
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [tuple(line[start:end].strip() for start, end in bounds) for line in lines]


@pytest.fixture(scope="session")
def plugin_table() -> Callable[[str], list[PluginRow]]:
    """:func:`parse_plugin_table`, for the tests of this folder."""
    return parse_plugin_table
