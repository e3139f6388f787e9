"""The ``file`` output: NDJSON content, codecs, date patterns, rotation, gzip, start-up and write errors."""

from __future__ import annotations

import calendar
import gzip
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from flowpipe import OutputError, StageContext, StartupError
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.outputs.file import FileOutput

MARCH_5_2024 = calendar.timegm((2024, 3, 5, 7, 8, 9))


def make_output(base_dir: Path, **options: Any) -> FileOutput:
    """A file output configured as a pipeline file would configure it (options validated)."""
    assert validate_options(FileOutput.all_options(), options) == []
    config = build_namespace(FileOutput.all_options(), options)
    return FileOutput(config, StageContext("file", Counters("file", "output"), base_dir=base_dir))


def make_events(start: int, count: int) -> list[dict[str, Any]]:
    """Events whose JSON lines all have the same length (two-digit ``n``)."""
    return [
        {"@timestamp": "2024-03-05T07:08:09.000Z", "n": n, "source": {"ip": "10.0.0.1", "port": 40000 + n}}
        for n in range(10 + start, 10 + start + count)
    ]


def ndjson(events: list[dict[str, Any]]) -> bytes:
    """The expected NDJSON, built independently of flowpipe's codec."""
    return "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in events).encode()


def test_writes_one_json_line_per_event(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="events.ndjson")
    output.open()
    output.write(make_events(0, 3))
    output.write(make_events(3, 2))
    output.close()
    assert (tmp_path / "events.ndjson").read_bytes() == ndjson(make_events(0, 5))


def test_pretty_codec_indents_each_event(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="events.json", codec="pretty")
    output.open()
    output.write(make_events(0, 2))
    output.close()
    expected = "".join(json.dumps(event, indent=2) + "\n" for event in make_events(0, 2))
    assert (tmp_path / "events.json").read_text() == expected


def test_relative_path_is_taken_from_the_pipeline_folder_and_parents_are_created(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="out/deep/events.ndjson")
    output.open()
    output.write(make_events(0, 1))
    output.close()
    assert (tmp_path / "out" / "deep" / "events.ndjson").read_bytes() == ndjson(make_events(0, 1))


def test_flush_hands_buffered_data_to_the_os(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="events.ndjson", flush_interval="1h")
    output.open()
    output.write(make_events(0, 2))
    assert (tmp_path / "events.ndjson").read_bytes() == b""
    output.flush()
    assert (tmp_path / "events.ndjson").read_bytes() == ndjson(make_events(0, 2))
    output.close()


def test_date_pattern_names_the_file_from_utc_time(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="logs/%{+yyyy.MM.dd}/ev-%{+HH}h%{+mm}m%{+ss}s-%{+yy}-100%.ndjson")
    output.clock = lambda: MARCH_5_2024
    output.open()
    output.write(make_events(0, 2))
    output.close()
    assert [path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.ndjson")] == [
        "logs/2024.03.05/ev-07h08m09s-24-100%.ndjson"
    ]
    assert (tmp_path / "logs/2024.03.05/ev-07h08m09s-24-100%.ndjson").read_bytes() == ndjson(
        make_events(0, 2)
    )


def test_date_change_moves_output_to_the_new_file(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="events-%{+yyyy.MM.dd}.ndjson")
    output.clock = lambda: MARCH_5_2024
    output.open()
    output.write(make_events(0, 2))
    output.clock = lambda: MARCH_5_2024 + 86400
    output.write(make_events(2, 3))
    output.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "events-2024.03.05.ndjson",
        "events-2024.03.06.ndjson",
    ]
    assert (tmp_path / "events-2024.03.05.ndjson").read_bytes() == ndjson(make_events(0, 2))
    assert (tmp_path / "events-2024.03.06.ndjson").read_bytes() == ndjson(make_events(2, 3))


def test_unsupported_date_token_is_a_configuration_error(tmp_path: Path) -> None:
    errors = validate_options(FileOutput.all_options(), {"path": "events-%{+YYYY.MM}.ndjson"})
    assert [(error.path, error.message) for error in errors] == [
        (("path",), "unsupported date token 'YYYY' in '%{+YYYY.MM}' (use yyyy, yy, MM, dd, HH, mm, ss)")
    ]


@pytest.mark.parametrize("batch_size", [10, 3, 1])
def test_rotation_by_size_keeps_number_of_files(tmp_path: Path, batch_size: int) -> None:
    events = make_events(0, 10)
    line = len(ndjson(events[:1]))
    output = make_output(tmp_path, path="events.ndjson", rotate_every=3 * line, number_of_files=3)
    output.open()
    for start in range(0, len(events), batch_size):
        output.write(events[start : start + batch_size])
    output.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "events.ndjson",
        "events.ndjson.1",
        "events.ndjson.2",
    ]
    assert (tmp_path / "events.ndjson.2").read_bytes() == ndjson(events[3:6])
    assert (tmp_path / "events.ndjson.1").read_bytes() == ndjson(events[6:9])
    assert (tmp_path / "events.ndjson").read_bytes() == ndjson(events[9:])


def test_rotation_deletes_leftovers_beyond_number_of_files(tmp_path: Path) -> None:
    for name in ("events.ndjson.1", "events.ndjson.5", "events.ndjson.old"):
        (tmp_path / name).write_text(name)
    line = len(ndjson(make_events(0, 1)))
    output = make_output(tmp_path, path="events.ndjson", rotate_every=line, number_of_files=2)
    output.open()
    output.write(make_events(0, 2))
    output.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "events.ndjson",
        "events.ndjson.1",
        "events.ndjson.old",
    ]
    assert (tmp_path / "events.ndjson.1").read_bytes() == ndjson(make_events(0, 1))
    assert (tmp_path / "events.ndjson").read_bytes() == ndjson(make_events(1, 1))


def test_single_file_rotation_starts_it_afresh(tmp_path: Path) -> None:
    line = len(ndjson(make_events(0, 1)))
    output = make_output(tmp_path, path="events.ndjson", rotate_every=2 * line, number_of_files=1)
    output.open()
    output.write(make_events(0, 5))
    output.close()
    assert [path.name for path in tmp_path.iterdir()] == ["events.ndjson"]
    assert (tmp_path / "events.ndjson").read_bytes() == ndjson(make_events(4, 1))


def test_rotate_every_zero_never_rotates(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="events.ndjson", rotate_every=0)
    output.open()
    output.write(make_events(0, 50))
    output.close()
    assert [path.name for path in tmp_path.iterdir()] == ["events.ndjson"]
    assert (tmp_path / "events.ndjson").read_bytes() == ndjson(make_events(0, 50))


def test_append_keeps_and_truncate_replaces_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "kept.ndjson").write_bytes(b"old\n")
    (tmp_path / "fresh.ndjson").write_bytes(b"old\n")
    for name, append in (("kept.ndjson", True), ("fresh.ndjson", False)):
        output = make_output(tmp_path, path=name, append=append)
        output.open()
        output.write(make_events(0, 1))
        output.close()
    assert (tmp_path / "kept.ndjson").read_bytes() == b"old\n" + ndjson(make_events(0, 1))
    assert (tmp_path / "fresh.ndjson").read_bytes() == ndjson(make_events(0, 1))


def test_gzip_output_decompresses_to_the_exact_ndjson(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="events.ndjson.gz", gzip=True, flush_interval=0)
    output.open()
    output.write(make_events(0, 3))
    output.flush()
    output.write(make_events(3, 4))
    output.close()
    data = (tmp_path / "events.ndjson.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert gzip.decompress(data) == ndjson(make_events(0, 7))


def test_gzip_append_adds_a_member_that_gzip_reads(tmp_path: Path) -> None:
    for start in (0, 2):
        output = make_output(tmp_path, path="events.gz", gzip=True)
        output.open()
        output.write(make_events(start, 2))
        output.close()
    with gzip.open(tmp_path / "events.gz", "rb") as file:
        assert file.read() == ndjson(make_events(0, 4))


def test_gzip_files_are_complete_after_rotation(tmp_path: Path) -> None:
    events = make_events(0, 7)
    line = len(ndjson(events[:1]))
    output = make_output(tmp_path, path="events.gz", gzip=True, rotate_every=2 * line, number_of_files=5)
    output.open()
    output.write(events)
    output.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "events.gz",
        "events.gz.1",
        "events.gz.2",
        "events.gz.3",
    ]
    contents = []
    for name in ("events.gz.3", "events.gz.2", "events.gz.1", "events.gz"):
        with gzip.open(tmp_path / name, "rb") as file:
            contents.append(file.read())
    assert contents == [ndjson(events[0:2]), ndjson(events[2:4]), ndjson(events[4:6]), ndjson(events[6:])]


def test_path_under_a_regular_file_fails_at_startup(tmp_path: Path) -> None:
    blocker = tmp_path / "x"
    blocker.write_text("a regular file")
    output = make_output(tmp_path, path="x/file.txt")
    with pytest.raises(StartupError) as caught:
        output.open()
    assert str(caught.value) == f"cannot write {blocker}/file.txt: {blocker} is not a directory"


def test_path_below_a_regular_file_fails_at_startup(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("a regular file")
    output = make_output(tmp_path, path="x/sub/file.txt")
    with pytest.raises(StartupError) as caught:
        output.open()
    assert str(caught.value) == f"cannot write {tmp_path}/x/sub/file.txt: Not a directory"


def test_path_that_is_a_directory_fails_at_startup(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    output = make_output(tmp_path, path="events")
    with pytest.raises(StartupError) as caught:
        output.open()
    assert str(caught.value) == f"cannot write {tmp_path}/events: Is a directory"


def test_deleted_file_is_recreated_on_the_next_write(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="events.ndjson", flush_interval=0)
    output.open()
    output.write(make_events(0, 2))
    (tmp_path / "events.ndjson").unlink()
    output.write(make_events(2, 1))
    output.close()
    assert [path.name for path in tmp_path.iterdir()] == ["events.ndjson"]
    assert (tmp_path / "events.ndjson").read_bytes() == ndjson(make_events(2, 1))


def test_moved_file_keeps_its_content_and_output_goes_to_a_new_file(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="events.ndjson", flush_interval=0)
    output.open()
    output.write(make_events(0, 2))
    (tmp_path / "events.ndjson").rename(tmp_path / "moved.ndjson")
    output.write(make_events(2, 1))
    output.close()
    assert (tmp_path / "moved.ndjson").read_bytes() == ndjson(make_events(0, 2))
    assert (tmp_path / "events.ndjson").read_bytes() == ndjson(make_events(2, 1))


def test_failed_write_is_retryable_and_the_retry_reopens_the_file(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="out/events.ndjson", flush_interval=0)
    output.open()
    output.write(make_events(0, 1))
    (tmp_path / "out" / "events.ndjson").unlink()
    (tmp_path / "out").rmdir()
    (tmp_path / "out").write_text("a file where the folder was")
    with pytest.raises(OutputError) as caught:
        output.write(make_events(1, 1))
    assert caught.value.retryable is True
    assert str(caught.value) == f"cannot write {tmp_path}/out/events.ndjson: File exists"
    (tmp_path / "out").unlink()
    output.write(make_events(1, 1))
    output.close()
    assert (tmp_path / "out" / "events.ndjson").read_bytes() == ndjson(make_events(1, 1))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_is_a_retryable_output_error(tmp_path: Path) -> None:
    output = make_output(tmp_path, path="/dev/full", flush_interval=0)
    output.open()
    for _ in range(2):  # the failed write closed the file; the retry reopens it and fails the same way
        with pytest.raises(OutputError) as caught:
            output.write(make_events(0, 1))
        assert caught.value.retryable is True
        assert str(caught.value) == "cannot write /dev/full: No space left on device"
    output.close()


def test_flush_error_is_an_output_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    output = make_output(tmp_path, path="/dev/full", flush_interval="1h")
    output.open()
    output.write(make_events(0, 1))
    with pytest.raises(OutputError) as caught:
        output.flush()
    assert str(caught.value) == "cannot flush /dev/full: No space left on device"
    output.close()


def test_a_path_that_is_no_regular_file_is_never_rotated(tmp_path: Path) -> None:
    """Writing to /dev/null, a FIFO or a terminal must not rename it (rotation is for files)."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    received = bytearray()

    def drain() -> None:
        with open(fifo, "rb") as reader:
            while chunk := reader.read(65536):
                received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    output = make_output(tmp_path, path="events.fifo", rotate_every="100B", flush_interval="0s")
    output.open()
    for start in range(0, 40, 4):
        output.write(make_events(start, 4))
    output.close()
    reader.join(10)
    assert bytes(received) == ndjson(make_events(0, 40))
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["events.fifo"]  # no events.fifo.1
