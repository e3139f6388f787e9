"""``flowpipe new-plugin``: names checked, the skeleton written, existing folders refused, and the
generated analyzers (TCP and UDP) working when loaded into a real pipeline in this process.

Building, installing and running the generated package's own tests is the slow integration
test ``tests/integration/test_new_plugin.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from analyzers import transactions
from captures import tcp_conversation, udp_frame

from flowpipe import __version__
from flowpipe.cli import main
from flowpipe.scaffold import ScaffoldError, Skeleton, validate_name, write_skeleton

CLIENT = ("192.0.2.1", 40000)
SERVER = ("192.0.2.2", 9999)
FILES = [
    "README.md",
    "flowpipe_myproto/__init__.py",
    "flowpipe_myproto/analyzer.py",
    "pipeline.yml",
    "pyproject.toml",
    "tests/test_myproto.py",
]
BAD_NAME = (
    "invalid plugin name {!r}: use a lowercase identifier of at most 40 characters (letters, digits, "
    "single underscores between words; starting with a letter), e.g. myproto"
)


def _files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def _new_plugin(
    capsys: pytest.CaptureFixture[str],
    output: Path,
    *extra: str,
    kind: str = "analyzer",
    name: str = "myproto",
) -> tuple[int, str, str]:
    """Run ``flowpipe new-plugin``; return its exit status, stdout and stderr."""
    status = main(["new-plugin", "--kind", kind, "--name", name, "--output", str(output), *extra])
    out, err = capsys.readouterr()
    return status, out, err


# -- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["myproto", "my_proto", "http2", "a", "x" * 40])
def test_lowercase_identifiers_are_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["MyProto", "my-proto", "2proto", "_proto", "proto_", "my__proto", "my proto", "", "x" * 41, "é"]
)
def test_other_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(ScaffoldError) as raised:
        validate_name(name)

    assert str(raised.value) == BAD_NAME.format(name)
    assert raised.value.exit_status == 2


def test_a_name_in_use_is_refused_naming_its_provider(tmp_path: Path, capsys) -> None:
    status, out, err = _new_plugin(capsys, tmp_path, name="echo")

    assert (status, out) == (2, "")
    assert err == (
        f"flowpipe: 'echo' is already provided by package flowpipe {__version__} (plugin 'echo'); "
        "choose another name\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_invalid_name_on_the_command_line_is_one_line(tmp_path: Path, capsys) -> None:
    status, out, err = _new_plugin(capsys, tmp_path, name="My-Proto")

    assert (status, out, err) == (2, "", f"flowpipe: {BAD_NAME.format('My-Proto')}\n")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ScaffoldError, match=r"^--transport sctp: use one of tcp, udp$"):
        Skeleton("analyzer", "myproto", "sctp")


@pytest.mark.parametrize("kind", ["processor", "output", "input", "decoder"])
def test_kinds_other_than_analyzer_are_refused(tmp_path: Path, capsys, kind: str) -> None:
    status, out, err = _new_plugin(capsys, tmp_path, kind=kind, name="mine")

    assert (status, out, err) == (2, "", f"flowpipe: --kind {kind}: only analyzer is supported\n")
    assert list(tmp_path.iterdir()) == []


# -- the files ---------------------------------------------------------------------------------------


def test_the_skeleton_is_written_with_its_entry_point(tmp_path: Path, capsys) -> None:
    status, out, err = _new_plugin(capsys, tmp_path)

    folder = tmp_path / "flowpipe-myproto"
    assert (status, err) == (0, "")
    assert out == (
        f"wrote {folder}/: pyproject.toml, README.md, pipeline.yml, flowpipe_myproto/__init__.py, "
        "flowpipe_myproto/analyzer.py, tests/test_myproto.py\n"
        f"next: cd {folder} && pip install -e '.[test]' && pytest  (and read README.md)\n"
    )
    assert _files(folder) == FILES
    project = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert (project["name"], project["dependencies"]) == ("flowpipe-myproto", [f"flowpipe>={__version__}"])
    assert project["entry-points"] == {"flowpipe": {"myproto": "flowpipe_myproto.analyzer"}}
    analyzer = (folder / "flowpipe_myproto" / "analyzer.py").read_text(encoding="utf-8")
    assert "class MyprotoAnalyzer(TcpAnalyzer):" in analyzer
    assert "default_ports = (9999,)" in analyzer
    pipeline = yaml.safe_load((folder / "pipeline.yml").read_text(encoding="utf-8"))
    assert pipeline["decoders"][2] == {
        "type": "protocol",
        "protocols": {
            "myproto": {"ports": [9999], "error_prefix": "ERR", "send_request": False, "send_response": False}
        },
    }


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_every_placeholder_is_filled_and_the_python_compiles(tmp_path: Path, transport: str) -> None:
    folder, written = write_skeleton(Skeleton("analyzer", "my_proto", transport), tmp_path)

    assert folder == tmp_path / "flowpipe-my-proto"
    assert _files(folder) == sorted(path.relative_to(folder).as_posix() for path in written)
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert "{{" not in text and "}}" not in text, path
        if path.suffix == ".py":
            compile(text, str(path), "exec")
    base = "UdpAnalyzer" if transport == "udp" else "TcpAnalyzer"
    assert f"class MyProtoAnalyzer({base}):" in (folder / "flowpipe_my_proto" / "analyzer.py").read_text()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_the_generated_code_is_ruff_clean(tmp_path: Path, transport: str) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    folder, _ = write_skeleton(Skeleton("analyzer", "myproto", transport), tmp_path)

    for command in ([ruff, "check", "--no-cache", "."], [ruff, "format", "--check", "--no-cache", "."]):
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_an_existing_folder_is_refused(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "flowpipe-myproto"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep\n")

    status, out, err = _new_plugin(capsys, tmp_path)

    assert (status, out) == (2, "")
    assert err == f"flowpipe: {folder} already exists; remove it, choose another --output, or use --force\n"
    assert _files(folder) == ["mine.txt"]


def test_force_overwrites_the_generated_files_and_keeps_the_others(tmp_path: Path, capsys) -> None:
    folder, _ = write_skeleton(Skeleton("analyzer", "myproto"), tmp_path)
    analyzer = folder / "flowpipe_myproto" / "analyzer.py"
    original = analyzer.read_text(encoding="utf-8")
    analyzer.write_text("changed\n")
    (folder / "mine.txt").write_text("keep\n")

    status, _, err = _new_plugin(capsys, tmp_path, "--transport", "udp", "--force")

    assert (status, err) == (0, "")
    assert _files(folder) == sorted([*FILES, "mine.txt"])
    assert (folder / "mine.txt").read_text() == "keep\n"
    assert analyzer.read_text(encoding="utf-8") != original
    assert "class MyprotoAnalyzer(UdpAnalyzer):" in analyzer.read_text(encoding="utf-8")


def test_an_unwritable_output_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")

    status, out, err = _new_plugin(capsys, tmp_path / "file")

    assert (status, out) == (1, "")
    assert err == f"flowpipe: cannot write {tmp_path / 'file' / 'flowpipe-myproto'}: Not a directory\n"


# -- the generated analyzers, loaded as local plugins into a real pipeline -------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The generated analyzer module of each transport (a path a pipeline file can name)."""
    root = tmp_path_factory.mktemp("generated")
    paths = {}
    for transport in ("tcp", "udp"):
        folder, _ = write_skeleton(Skeleton("analyzer", "myproto", transport), root / transport)
        paths[transport] = str(folder / "flowpipe_myproto" / "analyzer.py")
    return paths


def _fields(events: list[dict]) -> list[tuple]:
    return [
        (
            event["status"],
            event["client"]["bytes"],
            event["server"]["bytes"],
            event["myproto"],
            event.get("notes"),
        )
        for event in events
    ]


def test_generated_tcp_parser_takes_lines_split_at_any_byte(tmp_path: Path, generated) -> None:
    requests, responses = b"GET color\r\nDEL size\r\n", b"OK blue\r\nERR no such key\r\n"
    frames = []
    for offset in range(1, len(requests)):
        client = (CLIENT[0], CLIENT[1] + offset)
        exchanges = [(True, requests[:offset]), (True, requests[offset:]), (False, responses)]
        frames += tcp_conversation(client, SERVER, exchanges, start=1_700_000_000 + offset)

    events = transactions(tmp_path, frames, {"myproto": {"ports": [9999]}}, plugins=[generated["tcp"]])

    assert _fields(events) == [
        ("OK", 11, 9, {"command": "GET", "request": "GET color", "response": "OK blue"}, None),
        ("Error", 10, 17, {"command": "DEL", "request": "DEL size", "response": "ERR no such key"}, None),
    ] * (len(requests) - 1)


def test_generated_tcp_parser_truncates_a_long_line_and_resumes_after_it(tmp_path: Path, generated) -> None:
    exchanges = [
        (True, b"GET 01"),
        (True, b"23456789"),  # the line passes max_message_size (8) here
        (True, b"abcdef"),  # the rest of the long line: skipped
        (True, b"\r\n\r\nDEL x\r\n"),  # its end, an empty line (counted), the next request
        (False, b"OK\r\nOK\r\n"),
    ]
    frames = tcp_conversation(CLIENT, SERVER, exchanges)

    events = transactions(
        tmp_path, frames, {"myproto": {"ports": [9999], "max_message_size": 8}}, plugins=[generated["tcp"]]
    )

    assert _fields(events) == [
        (
            "OK",
            14,
            4,
            {"command": "GET", "request": "GET 0123", "response": "OK"},
            ["message truncated at max_message_size (8 bytes)"],
        ),
        ("OK", 7, 4, {"command": "DEL", "request": "DEL x", "response": "OK"}, None),
    ]
    assert events.counters["dropped.myproto.empty_line"] == 1


def test_generated_udp_analyzer_pairs_datagrams_by_flow(tmp_path: Path, generated) -> None:
    other = ("192.0.2.3", 40001)
    frames = [
        (1_700_000_000.00, udp_frame(CLIENT[0], SERVER[0], CLIENT[1], SERVER[1], b"GET a\n")),
        (1_700_000_000.01, udp_frame(other[0], SERVER[0], other[1], SERVER[1], b"GET b\n")),
        (1_700_000_000.02, udp_frame(SERVER[0], other[0], SERVER[1], other[1], b"OK b\n")),
        (1_700_000_000.03, udp_frame(SERVER[0], CLIENT[0], SERVER[1], CLIENT[1], b"ERR a\n")),
        (1_700_000_000.04, udp_frame(SERVER[0], CLIENT[0], SERVER[1], CLIENT[1], b"OK late\n")),
        (1_700_000_000.05, udp_frame(CLIENT[0], SERVER[0], CLIENT[1], SERVER[1], b"\r\n")),
    ]

    events = transactions(tmp_path, frames, {"myproto": {"ports": [9999]}}, plugins=[generated["udp"]])

    assert [(event["client"]["ip"], event["event"].get("duration")) for event in events] == [
        (other[0], 10_000_000),
        (CLIENT[0], 30_000_000),
        (CLIENT[0], None),
    ]
    assert _fields(events) == [
        ("OK", 6, 5, {"command": "GET", "request": "GET b", "response": "OK b"}, None),
        ("Error", 6, 6, {"command": "GET", "request": "GET a", "response": "ERR a"}, None),
        ("OK", 0, 8, {"response": "OK late"}, ["response without a request"]),
    ]
    assert events.counters["dropped.myproto.empty_datagram"] == 1
