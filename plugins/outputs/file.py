"""The ``file`` output: events as NDJSON (or raw packets as pcap) in a file, with date-named paths,
rotation and gzip.

``path`` may contain Logstash-style date patterns such as ``events-%{+yyyy.MM.dd}.ndjson`` (Joda
tokens ``yyyy yy MM dd HH mm ss``), filled from the current UTC time; when the rendered name
changes, the output moves on to the new file. Rotation follows Filebeat's file output: when the
current file would grow past ``rotate_every`` bytes it becomes ``path.1``, ``path.1`` becomes
``path.2`` and so on, keeping ``number_of_files`` files in all. With ``gzip: true`` the content is
gzip-compressed but the name is used as given (put ``.gz`` in ``path`` if you want the suffix);
each file is a complete gzip stream once closed, and appending to one adds a new gzip member.

A failed write (disk full, I/O error) closes the file and is retried by the pipeline, which
reopens it; a file deleted or moved away while open is recreated at ``path`` on the next write.

``codec: pcap`` writes the raw packets of a pipeline with ``decoders: []`` as a classic libpcap
file (little-endian, microsecond timestamps, snapshot length 262144): the global header once at
the start of every file (each rotated file is a complete capture), then one record per packet
with its capture time in seconds and microseconds, its captured length and its length on the
wire. A pcap file has one link type: a file takes the link type of the first batch written to it,
and later batches of another link type (capture files of different link types read by one
input) are rejected: counted as ``dropped.rejected`` and logged. A frame longer than the snapshot
length is cut to it (counter ``truncated``; its wire length is kept), and a packet whose time
does not fit a pcap record (before 1970 or after 2106) is rejected. Appending (``append: true``)
to an existing file requires it to be such a pcap file: its link type is then the file's.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import gzip
import os
import re
import struct
import time
from pathlib import Path
from stat import S_ISREG
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
    PacketBatch,
    StartupError,
    Str,
    hookimpl,
)
from flowpipe.codecs import encode_records

_DATE_PATTERN = re.compile(r"%\{\+([^}]*)\}")
_JODA_TOKEN = re.compile(r"([A-Za-z])\1*")
_JODA_TO_STRFTIME = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}
_BUFFER_SIZE = 1 << 20

PCAP_SNAPLEN = 262144
"""The snapshot length in the header of pcap files: libpcap's largest, what it reads without complaint."""
_PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
_PCAP_HEADER = struct.Struct("<IHHiIII")
"""magic, version 2.4, time zone offset, timestamp accuracy, snapshot length, link type."""
_PCAP_RECORD = struct.Struct("<IIII").pack
"""seconds, microseconds, captured length, length on the wire."""
_LINKTYPES = {12: 101}
"""libpcap's DLT_ values that differ from the LINKTYPE_ values files hold (DLT_RAW: LINKTYPE_RAW)."""


def pcap_header(link_type: int) -> bytes:
    """The global header of a pcap file holding frames of ``link_type`` (a LINKTYPE_ value)."""
    return _PCAP_HEADER.pack(_PCAP_MAGIC, 2, 4, 0, 0, PCAP_SNAPLEN, link_type)


def pcap_records(batch: PacketBatch) -> tuple[list[bytes], int, int]:
    """``batch`` as pcap records (header and frame, one bytes object per packet), how many frames
    were cut to :data:`PCAP_SNAPLEN`, and how many packets were left out (time out of range)."""
    records = []
    truncated = out_of_range = 0
    for timestamp, frame, wire_length in zip(
        batch.timestamps, batch.frames, batch.wire_lengths, strict=False
    ):
        seconds, microseconds = divmod(round(timestamp * 1_000_000), 1_000_000)
        if not 0 <= seconds <= 0xFFFFFFFF:
            out_of_range += 1
            continue
        if len(frame) > PCAP_SNAPLEN:
            frame = frame[:PCAP_SNAPLEN]
            truncated += 1
        caplen = len(frame)
        records.append(_PCAP_RECORD(seconds, microseconds, caplen, max(wire_length, caplen)) + frame)
    return records, truncated, out_of_range


def pcap_link_type(path: Path, compressed: bool) -> int:
    """The link type in the header of the pcap file at ``path``; OSError if it is not one this
    output can append to (little-endian, microsecond timestamps)."""
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as file:
            header = file.read(_PCAP_HEADER.size)
    except EOFError as error:  # a gzip stream cut short
        raise OSError(errno.EINVAL, f"not a complete gzip file: {error}") from error
    if len(header) == _PCAP_HEADER.size:
        magic, major, _minor, _zone, _accuracy, _snaplen, link_type = _PCAP_HEADER.unpack(header)
        if magic == _PCAP_MAGIC and major == 2:
            return link_type
    raise OSError(
        errno.EINVAL,
        "not a pcap file this output can append to (little-endian, microseconds); "
        "move it away or set append: false",
    )


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
    """Write events to a file as NDJSON (or packets as pcap), with date patterns, rotation and gzip."""

    accepts = ("events", "packets")
    packet_codecs = ("pcap",)

    options = (
        Option(
            "path",
            DatedPath(nonempty=True),
            required=True,
            description="file to write, relative to the pipeline file; may contain %{+yyyy.MM.dd} (UTC)",
        ),
        Option(
            "codec",
            Choice("json", "pretty", "pcap"),
            "json",
            "how each event is written; pcap: raw packets (decoders: []) as a pcap file",
        ),
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

    def write(self, events: list[Event] | PacketBatch) -> int | None:
        if isinstance(events, PacketBatch):
            return self._write_packets(events)
        records = encode_records(events, self.config.codec)
        size = sum(map(len, records))
        try:
            self._ensure_open()
            limit = self.config.rotate_every
            if limit and self._size + size > limit:  # rotate between events, not inside a batch's bytes
                for record in records:
                    self._append(record)
            else:  # joined: one write (the records and their join coexist only here)
                self._append(b"".join(records))
            if time.monotonic() >= self._flush_due:
                self._flush_file()
        except OSError as error:
            self._discard()
            raise OutputError(f"cannot write {self._path}: {error.strerror or error}") from error
        return None

    def _write_packets(self, batch: PacketBatch) -> int:
        """Append ``batch`` as pcap records; return how many packets were rejected."""
        link_type = _LINKTYPES.get(batch.link_type, batch.link_type)
        records, truncated, rejected = pcap_records(batch)
        if truncated:
            self.context.counters.add("truncated", truncated)
        if rejected:
            self.context.errors.error(
                "pcap_time",
                "file output %r: %d packets with a time outside a pcap record's range",
                self.context.id,
                rejected,
            )
        try:
            self._ensure_open()
            if self._link_type is not None and self._link_type != link_type:
                self.context.errors.error(
                    "pcap_link_type",
                    "file output %r: %d packets of link type %d rejected: %s holds link type %d",
                    self.context.id,
                    len(batch),
                    link_type,
                    self._path,
                    self._link_type,
                )
                return len(batch)
            data = b"".join(records)
            limit = self.config.rotate_every
            if limit and self._size + len(data) > limit:  # rotate between records
                for record in records:
                    self._append(record, link_type)
            elif data:
                self._append(data, link_type)
            if time.monotonic() >= self._flush_due:
                self._flush_file()
        except OSError as error:
            self._discard()
            raise OutputError(f"cannot write {self._path}: {error.strerror or error}") from error
        return rejected

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
        self._link_type: int | None = None
        """pcap: the link type of the open file (None until its header is written)."""
        if self.config.codec == "pcap" and mode == "ab" and path.exists() and path.stat().st_size:
            self._link_type = pcap_link_type(path, self.config.gzip)
        raw = open(path, mode, buffering=_BUFFER_SIZE)  # noqa: SIM115 (kept open until close/rotation)
        stat = os.fstat(raw.fileno())
        self._path, self._raw = path, raw
        self._identity, self._size = (stat.st_dev, stat.st_ino), stat.st_size
        self._rotates = bool(self.config.rotate_every) and S_ISREG(stat.st_mode)
        """Only a regular file rotates: /dev/null, a FIFO or a terminal is written as it is."""
        self._file = gzip.GzipFile(fileobj=raw, mode="wb") if self.config.gzip else raw
        self._flush_due = time.monotonic() + self.config.flush_interval

    def _append(self, chunk: bytes, link_type: int | None = None) -> None:
        """Write ``chunk``, rotating first if it would not fit; ``link_type``: pcap records, whose file
        starts with the global header."""
        assert self._file is not None
        if self._rotates and self._size and self._size + len(chunk) > self.config.rotate_every:
            self._rotate()
        if link_type is not None and self._link_type is None:
            chunk = pcap_header(link_type) + chunk
            self._link_type = link_type
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
