"""The ``file`` output: events as NDJSON in a file, with date-named paths, rotation and gzip.

``path`` may contain Logstash-style date patterns such as ``events-%{+yyyy.MM.dd}.ndjson`` (Joda
tokens ``yyyy yy MM dd HH mm ss``), filled from the current UTC time; when the rendered name
changes, the output moves on to the new file. Rotation follows Filebeat's file output: when the
current file would grow past ``rotate_every`` bytes it becomes ``path.1``, ``path.1`` becomes
``path.2`` and so on, keeping ``number_of_files`` files in all. With ``gzip: true`` the content is
gzip-compressed but the name is used as given (put ``.gz`` in ``path`` if you want the suffix);
each file is a complete gzip stream once closed, and appending to one adds a new gzip member.

A failed write (disk full, I/O error) closes the file and is retried by the pipeline, which
reopens it; a file deleted or moved away while open is recreated at ``path`` on the next write.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import re
import time
from pathlib import Path
from typing import Any, BinaryIO

from flowpipe import (
    Bool,
    ByteSize,
    Choice,
    Duration,
    Event,
    Int,
    Option,
    OptionError,
    Output,
    OutputError,
    StartupError,
    Str,
    hookimpl,
)
from flowpipe.codecs import encode_batch

_DATE_PATTERN = re.compile(r"%\{\+([^}]*)\}")
_JODA_TOKEN = re.compile(r"([A-Za-z])\1*")
_JODA_TO_STRFTIME = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}
_BUFFER_SIZE = 1 << 20


def strftime_format(path: str) -> str:
    """``path`` as a ``time.strftime`` format: its ``%{+...}`` patterns translated, other ``%`` escaped.

    Raises OptionError on a Joda token other than yyyy, yy, MM, dd, HH, mm, ss.
    """

    def translate(pattern: re.Match[str]) -> str:
        def token(match: re.Match[str]) -> str:
            if match.group(0) not in _JODA_TO_STRFTIME:
                raise OptionError(
                    f"unsupported date token {match.group(0)!r} in {pattern.group(0)!r} "
                    "(use yyyy, yy, MM, dd, HH, mm, ss)"
                )
            return _JODA_TO_STRFTIME[match.group(0)]

        return _JODA_TOKEN.sub(token, pattern.group(1).replace("%", "%%"))

    parts = _DATE_PATTERN.split(path)  # literal, pattern, literal, pattern, ..., literal
    literals = [part.replace("%", "%%") for part in parts[::2]]
    patterns = [translate(match) for match in _DATE_PATTERN.finditer(path)]
    return "".join(literal + pattern for literal, pattern in zip(literals, [*patterns, ""], strict=True))


class DatedPath(Str):
    """A file path that may contain ``%{+...}`` date patterns, checked when the config is loaded."""

    name = "path (may contain %{+yyyy.MM.dd})"

    def convert(self, value: Any) -> str:
        text = super().convert(value)
        strftime_format(text)
        return text


def _numbered(path: Path, index: int) -> Path:
    """The name of the ``index``-th rotated file (``path`` itself for 0)."""
    return path.with_name(f"{path.name}.{index}") if index else path


class FileOutput(Output):
    """Write events to a file as NDJSON, with date patterns in the path, rotation and optional gzip."""

    options = (
        Option(
            "path",
            DatedPath(nonempty=True),
            required=True,
            description="file to write, relative to the pipeline file; may contain %{+yyyy.MM.dd} (UTC)",
        ),
        Option("codec", Choice("json", "pretty"), "json", "how each event is written"),
        Option(
            "rotate_every",
            ByteSize(),
            "10MiB",
            "rotate when the file would grow past this size (gzip: size before compression; 0 = never)",
        ),
        Option("number_of_files", Int(1, 1024), 7, "how many files rotation keeps, the current one included"),
        Option("gzip", Bool(), False, "gzip-compress the file (no .gz is added to the name)"),
        Option(
            "flush_interval",
            Duration(),
            "1s",
            "hand data to the OS at most this often while busy (always when idle and at shutdown)",
        ),
        Option("append", Bool(), True, "append to an existing file at start-up (false: truncate it)"),
    )

    clock = staticmethod(time.time)
    """The wall clock that date patterns in ``path`` are rendered from."""

    def open(self) -> None:
        template = str(self.context.resolve_path(self.config.path))
        self._format = strftime_format(template) if _DATE_PATTERN.search(template) else None
        self._fixed_path = Path(template)
        self._raw: BinaryIO | None = None
        self._file: BinaryIO | gzip.GzipFile | None = None
        path = self._current_path()
        try:
            self._open_file(path, "ab" if self.config.append else "wb")
        except FileExistsError as error:  # Path.mkdir: a parent "directory" is a regular file
            raise StartupError(f"cannot write {path}: {error.filename} is not a directory") from error
        except OSError as error:
            raise StartupError(f"cannot write {path}: {error.strerror or error}") from error

    def write(self, events: list[Event]) -> None:
        codec = self.config.codec
        data = encode_batch(events, codec)
        try:
            self._ensure_open()
            limit = self.config.rotate_every
            if limit and self._size + len(data) > limit:  # rotate between events, not inside a batch's bytes
                for event in events:
                    self._append(encode_batch([event], codec))
            else:
                self._append(data)
            if time.monotonic() >= self._flush_due:
                self._flush_file()
        except OSError as error:
            self._discard()
            raise OutputError(f"cannot write {self._path}: {error.strerror or error}") from error

    def flush(self) -> None:
        if self._file is None:
            return
        try:
            self._flush_file()
        except OSError as error:
            self._discard()
            raise OutputError(f"cannot flush {self._path}: {error.strerror or error}") from error

    def close(self) -> None:
        if self._file is not None:
            self._close_file()

    def _current_path(self) -> Path:
        if self._format is None:
            return self._fixed_path
        return Path(time.strftime(self._format, time.gmtime(self.clock())))

    def _ensure_open(self) -> None:
        """Open the file, or move to a new one when the date in its name changed or it was moved away."""
        path = self._current_path()
        if self._file is not None and (path != self._path or self._moved()):
            self._close_file()
        if self._file is None:
            self._open_file(path, "ab")

    def _moved(self) -> bool:
        try:
            stat = os.stat(self._path)
        except OSError:  # gone, or a folder on its path replaced
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def _open_file(self, path: Path, mode: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = open(path, mode, buffering=_BUFFER_SIZE)  # noqa: SIM115 (kept open until close/rotation)
        stat = os.fstat(raw.fileno())
        self._path, self._raw = path, raw
        self._identity, self._size = (stat.st_dev, stat.st_ino), stat.st_size
        self._file = gzip.GzipFile(fileobj=raw, mode="wb") if self.config.gzip else raw
        self._flush_due = time.monotonic() + self.config.flush_interval

    def _append(self, chunk: bytes) -> None:
        assert self._file is not None
        if self.config.rotate_every and self._size and self._size + len(chunk) > self.config.rotate_every:
            self._rotate()
        self._file.write(chunk)
        self._size += len(chunk)

    def _rotate(self) -> None:
        """path -> path.1 -> path.2 ...; files past ``number_of_files`` are deleted (Filebeat's scheme)."""
        path = self._path
        self._close_file()
        keep = self.config.number_of_files
        for old in path.parent.glob(f"{glob.escape(path.name)}.*"):  # also leftovers of a larger setting
            suffix = old.name[len(path.name) + 1 :]
            if suffix.isdigit() and int(suffix) >= keep - 1:
                old.unlink()
        for index in range(keep - 2, -1, -1):
            if (source := _numbered(path, index)).exists():
                source.rename(_numbered(path, index + 1))
        self._open_file(path, "wb")  # with number_of_files 1, this starts the only file afresh

    def _flush_file(self) -> None:
        assert self._file is not None
        self._file.flush()  # GzipFile.flush also flushes the file beneath it
        self._flush_due = time.monotonic() + self.config.flush_interval

    def _close_file(self) -> None:
        """Finish the gzip stream (if any) and close the file."""
        file, raw = self._file, self._raw
        self._file = self._raw = None
        assert file is not None and raw is not None
        try:
            file.close()  # a GzipFile writes its trailer to raw but leaves raw open
        finally:
            raw.close()

    def _discard(self) -> None:
        """Close after a failed write, ignoring further errors; the next write reopens the file."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._close_file()


@hookimpl
def flowpipe_add_outputs() -> dict[str, type[Output]]:
    return {"file": FileOutput}
