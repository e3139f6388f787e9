"""``flowpipe new-plugin`` as a plugin author uses it: generate, pip install, test, list.

The installed wheel's ``flowpipe new-plugin`` (so the templates ship in the wheel) writes a TCP
and a UDP analyzer package. Both are pip-installed into a directory of their own (``--target``)
and put on ``PYTHONPATH`` next to the session's wheel venv, which the other tests share and which
stays unchanged; pytest is installed the same way. The generated packages' own tests then pass
with the venv's Python, and ``flowpipe plugins`` lists both analyzers with their packages.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import WheelEnv

pytestmark = pytest.mark.slow

PACKAGES = {"flowpipe-myproto": ("myproto", "tcp"), "flowpipe-myproto-udp": ("myproto_udp", "udp")}
"""The generated distributions: analyzer name and transport."""
ON_PATH = [*PACKAGES, "pytest"]
"""The side installs (``WheelEnv.side_installs``) the tests put on ``PYTHONPATH``."""


@pytest.fixture(scope="module")
def generated(wheel_env: WheelEnv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding the generated packages, installed as side installs of ``wheel_env``."""
    root = tmp_path_factory.mktemp("new-plugin")
    for name, transport in PACKAGES.values():
        result = wheel_env.run(
            "new-plugin", "--kind", "analyzer", "--name", name, "--transport", transport, "--output", root
        )
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
    installs = {name: root / "site" / name for name in (*PACKAGES, "pytest")}
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    commands = [[*pip, "--no-deps", "--target", installs[name], root / name] for name in PACKAGES]
    commands.append([*pip, "--target", installs["pytest"], "pytest"])
    with ThreadPoolExecutor(len(commands)) as pool:  # builds and downloads, in parallel
        for result in pool.map(wheel_env.execute, commands):
            assert result.returncode == 0, result.stdout + result.stderr
    wheel_env.side_installs.update(installs)
    return root


def test_flowpipe_plugins_lists_the_generated_analyzers(
    wheel_env: WheelEnv, generated: Path, plugin_table
) -> None:
    result = wheel_env.run("plugins", with_plugins=ON_PATH)

    assert (result.returncode, result.stderr) == (0, "")
    assert [row for row in plugin_table(result.stdout) if row[2] in PACKAGES] == [
        (
            "analyzer",
            "myproto",
            "flowpipe-myproto",
            "0.1.0",
            "The myproto protocol: request lines answered by OK or error lines.",
        ),
        (
            "analyzer",
            "myproto_udp",
            "flowpipe-myproto-udp",
            "0.1.0",
            "The myproto_udp protocol: request datagrams answered by OK or error datagrams.",
        ),
    ]


@pytest.mark.parametrize(("package", "tests"), [("flowpipe-myproto", 4), ("flowpipe-myproto-udp", 3)])
def test_the_generated_tests_pass(wheel_env: WheelEnv, generated: Path, package: str, tests: int) -> None:
    folder = generated / package
    command = [wheel_env.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", folder]

    result = wheel_env.execute(command, cwd=folder, with_plugins=ON_PATH)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{tests} passed" in result.stdout.splitlines()[-1]
