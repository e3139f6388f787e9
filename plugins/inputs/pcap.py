"""The ``pcap`` input: packets from pcap and pcapng files, or captured live from a network
device, read through libpcap (pcapy-ng).

Give exactly one of ``files`` and ``device``. Options:

``files``
    Capture files or glob patterns (``*``, ``?``, ``[...]``, ``**`` for any depth), relative to
    the pipeline file. They are read in the order given; the files a pattern matches are read in
    name order. A file named twice is read once.
``device``
    Capture live from this network device (an interface name, or ``any`` for every interface,
    as Linux cooked frames). Live capture is described in :mod:`.live`; its options are
    ``snaplen``, ``promiscuous``, ``buffer_size``, ``immediate`` and ``timeout``.
``bpf_filter``
    A BPF filter in tcpdump syntax; only the packets it matches are read (or captured).
``realtime``
    ``false`` (the default) reads as fast as the pipeline takes packets. ``true`` paces packets by
    their capture timestamps, as they were captured: each file is replayed from its first packet,
    and files (and loop rounds) follow one another without a pause. A stop (SIGINT, SIGTERM) ends
    a wait at once.
``speed``
    With ``realtime``: the replay speed factor (``2.0`` replays in half the capture's time).
``loop``
    How many times to read the files (``0``: forever, until stopped).

``realtime``, ``speed`` and ``loop`` apply to files only; ``snaplen``, ``promiscuous``,
``buffer_size``, ``immediate`` and ``timeout`` to live capture only: setting one of them to other
than its default for the other source is a configuration error.

Any file, pcap (microsecond or nanosecond) or pcapng, of any link type libpcap reads is accepted;
each batch carries the link type libpcap reports for the file (its ``DLT_`` value, e.g. 12 for
raw IP). Timestamps have microsecond precision.

On a terminal, ``flowpipe run`` shows a progress bar from :meth:`PcapInput.progress` when
reading files: packets delivered, bytes read of the total (the files' sizes times ``loop``; no
total with ``loop: 0``), rate and ETA. Bytes read is the file's read position, so it is right for
pcapng and with ``bpf_filter`` too; with ``realtime`` it moves as the paced packets leave. Live
capture has no progress bar; its counters ``kernel_received``, ``dropped.kernel`` and
``dropped.interface`` (libpcap's ``pcap_stats``) are in the metrics and the summary instead.

Start-up errors (exit status 1, one line naming the file, nothing is read): no file matches a
pattern, a file is missing or unreadable, a file is not a capture (libpcap's "unknown file
format"; an empty file; a file cut inside its file header), or ``bpf_filter`` does not compile
(bad syntax, or not valid for a file's link type).

Live capture fails at start (exit status 1, one line naming the device) when the device does not
exist, capturing is not permitted, or ``bpf_filter`` does not compile. A device that goes down or
away while capturing ends the input and the run exits with status 1.

A truncated or corrupt file ends that file, not the run: every packet before the damage is
delivered and processed, then the failure is reported with the file and the byte offset where the
first unreadable record (pcap) or block (pcapng) starts, the next file is read, and the run exits
with status 1. With ``loop``, a damaged file is replayed up to its damage each round and reported
once.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from threading import Event
from types import SimpleNamespace
from typing import Any

import pcapy

from flowpipe import (
    Bool,
    ByteSize,
    Duration,
    Float,
    Input,
    InputProgress,
    Int,
    ListOf,
    Option,
    OptionError,
    PacketBatch,
    StartupError,
    Str,
    hookimpl,
)

from .libpcap import fill_batch
from .live import LiveCapture
from .pcapfile import MAX_SNAPLEN, locate_damage

GLOB_CHARACTERS = frozenset("*?[")
FILE_OPTIONS = frozenset(("realtime", "speed", "loop"))
LIVE_OPTIONS = frozenset(("snaplen", "promiscuous", "buffer_size", "immediate", "timeout"))
MAX_BUFFER_SIZE = (1 << 31) - 1


class PcapInput(Input):
    """Read packets from pcap or pcapng files, or capture them live from a network device."""

    options = (
        Option(
            "files",
            ListOf(Str(nonempty=True), min_items=1),
            None,
            "capture files or glob patterns, read in the order given (a pattern's in name order)",
        ),
        Option("device", Str(nonempty=True), None, "capture live from this network device, or any"),
        Option("bpf_filter", Str(), None, "BPF filter expression applied while reading (tcpdump syntax)"),
        Option("snaplen", Int(1, MAX_SNAPLEN), MAX_SNAPLEN, "live: bytes kept of each packet"),
        Option("promiscuous", Bool(), True, "live: put the device in promiscuous mode"),
        Option(
            "buffer_size",
            ByteSize(),
            "16MiB",
            "live: the kernel's capture buffer (0: libpcap's default, 2MiB)",
        ),
        Option(
            "immediate",
            Bool(),
            True,
            "live: hand each packet over as it comes (false: the kernel gathers them for timeout)",
        ),
        Option(
            "timeout",
            Duration(),
            "100ms",
            "live: longest a packet waits in a partly filled batch (and, immediate false, in the kernel)",
        ),
        Option(
            "realtime",
            Bool(),
            False,
            "pace packets by their capture timestamps instead of reading as fast as possible",
        ),
        Option(
            "speed",
            Float(0.0, exclusive_minimum=True),
            1.0,
            "with realtime: replay speed factor (2.0 = twice as fast)",
        ),
        Option("loop", Int(0), 1, "how many times to read the files (0 = forever)"),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        """Exactly one of files and device; no option of the other source; live limits."""
        if (config.files is None) == (config.device is None):
            where = () if config.files is None else ("device",)
            return [OptionError("give exactly one of files or device", where)]
        live = config.device is not None
        other, source = (FILE_OPTIONS, "files") if live else (LIVE_OPTIONS, "live capture (device)")
        problems = [
            OptionError(f"applies to {source} only", (option.name,))
            for option in cls.options
            if option.name in other and getattr(config, option.name) != option.default_value()
        ]
        if live and config.timeout < 0.001:
            problems.append(OptionError(f"must be at least 1ms, got {config.timeout:g}s", ("timeout",)))
        if live and config.buffer_size > MAX_BUFFER_SIZE:
            problems.append(
                OptionError(
                    f"must be less than 2GiB (libpcap's limit), got {config.buffer_size}", ("buffer_size",)
                )
            )
        return problems

    def open(self) -> None:
        self.live: LiveCapture | None = None
        if self.config.device is not None:
            self.live = LiveCapture(self.config, self.context)
            return
        self.paths = self._expand(self.config.files)
        self.sizes = [path.stat().st_size for path in self.paths]
        self.packets = 0  # delivered so far (those that pass bpf_filter)
        self.done_bytes = 0  # of the files, read so far over every loop round
        self.reported_files: set[Path] = set()  # damage is reported once per file, not per round
        for path in self.paths:  # fail at start, not half-way, on an unreadable file or bad filter
            self._open_reader(path).close()

    def _expand(self, patterns: Iterable[str]) -> list[Path]:
        paths: dict[Path, None] = {}  # ordered, without repeats
        for pattern in patterns:
            resolved = self.context.resolve_path(pattern)
            if GLOB_CHARACTERS.intersection(pattern):
                matches = sorted(
                    path for path in map(Path, glob.glob(str(resolved), recursive=True)) if path.is_file()
                )
                if not matches:
                    raise StartupError(f"pcap input {self.context.id!r}: no file matches {pattern!r}")
                paths.update(dict.fromkeys(matches))
            elif not resolved.is_file():
                raise StartupError(f"pcap input {self.context.id!r}: no such file: {resolved}")
            elif not os.access(resolved, os.R_OK):
                raise StartupError(f"pcap input {self.context.id!r}: permission denied: {resolved}")
            else:
                paths[resolved] = None
        return list(paths)

    def _open_reader(self, path: Path) -> Any:  # a pcapy Reader: pcapy does not export the type
        where = f"pcap input {self.context.id!r}: {path}"
        try:
            empty = path.stat().st_size == 0
        except OSError as error:  # gone since the patterns were expanded
            raise StartupError(f"{where}: {error.strerror}") from None
        if empty:
            raise StartupError(f"{where}: empty file, not a capture")
        try:
            reader = pcapy.open_offline(str(path))
        except pcapy.PcapError as error:
            raise StartupError(f"{where}: not a readable pcap or pcapng file: {error}") from None
        if self.config.bpf_filter:
            try:
                reader.setfilter(self.config.bpf_filter)
            except pcapy.PcapError as error:
                reader.close()
                raise StartupError(f"{where}: bpf_filter {self.config.bpf_filter!r}: {error}") from None
        return reader

    def close(self) -> None:
        if self.live is not None:
            self.live.close()

    def progress(self) -> InputProgress | None:
        if self.live is not None:
            return None
        total = sum(self.sizes) * self.config.loop if self.config.loop else None
        return InputProgress(self.packets, self.done_bytes, total)

    def read(self) -> Iterator[PacketBatch]:
        if self.live is not None:
            yield from self.live.read(self.stopping)
            return
        pacer = _Pacer(self.config.speed, self.stopping) if self.config.realtime else None
        rounds = 0
        while self.config.loop == 0 or rounds < self.config.loop:
            rounds += 1
            for path, size in zip(self.paths, self.sizes, strict=True):
                if self.stopping.is_set():
                    return
                finished_bytes = self.done_bytes
                yield from self._read_file(path, pacer, finished_bytes)
                self.done_bytes = finished_bytes + size

    def _read_file(self, path: Path, pacer: _Pacer | None, finished_bytes: int) -> Iterator[PacketBatch]:
        try:
            reader = self._open_reader(path)
        except StartupError as error:  # the file changed since open()
            self._report_once(path, str(error))
            return
        if pacer is not None:
            pacer.restart()
        link_type = reader.datalink()
        descriptor = reader.getfd()  # its read position (past libpcap's buffer) tells the progress
        batch_size = self.context.batch_size
        source = str(path)
        read_in_file = 0
        position = 0
        try:
            while True:
                batch = PacketBatch(link_type, source)
                damage = fill_batch(reader, batch, batch_size)
                count = len(batch.frames)
                read_in_file += count
                batch.nbytes = sum(map(len, batch.frames))
                batch_start, position = position, os.lseek(descriptor, 0, os.SEEK_CUR)
                if count:
                    yield from self._deliver(
                        batch, pacer, finished_bytes + batch_start, finished_bytes + position
                    )
                if damage is not None:
                    self._report_damage(path, read_in_file, damage)
                    return
                if count < batch_size or self.stopping.is_set():
                    return
        finally:
            reader.close()

    def _deliver(
        self, batch: PacketBatch, pacer: _Pacer | None, start_bytes: int, end_bytes: int
    ) -> Iterator[PacketBatch]:
        """Yield ``batch`` (paced in pieces with realtime) and count it for the progress bar.

        ``start_bytes`` and ``end_bytes`` are the read positions before and after the batch; a
        piece moves ``done_bytes`` between them in proportion to its packets.
        """
        delivered = 0
        for piece in (batch,) if pacer is None else pacer.pace(batch):
            delivered += len(piece)
            self.packets += len(piece)
            self.done_bytes = start_bytes + (end_bytes - start_bytes) * delivered // len(batch)
            yield piece

    def _report_damage(self, path: Path, read_in_file: int, error: pcapy.PcapError) -> None:
        if path in self.reported_files:
            return
        records = _readable_records(path) if self.config.bpf_filter else read_in_file
        self._report_once(
            path,
            f"{path}: damaged capture at byte offset {locate_damage(path, records)}: {error}; "
            f"packet records read before the damage: {records}",
        )

    def _report_once(self, path: Path, message: str) -> None:
        if path not in self.reported_files:
            self.reported_files.add(path)
            self.context.fail(message)


def _readable_records(path: Path) -> int:
    """How many packet records libpcap reads from ``path`` before it fails (no filter)."""
    reader = pcapy.open_offline(str(path))
    records = 0
    try:
        while reader.next()[0] is not None:
            records += 1
    except pcapy.PcapError:
        pass
    finally:
        reader.close()
    return records


class _Pacer:
    """Holds packets back until their capture time, scaled by ``speed``, has come (realtime).

    Time is anchored at the first packet after :meth:`restart`: that packet leaves at once, and a
    packet captured ``t`` seconds after it leaves ``t / speed`` seconds later. Packets whose time
    has already come (or that go back in time) leave at once, together in one batch. A wait ends
    as soon as ``stopping`` is set; what was not yet due is then not delivered.
    """

    def __init__(self, speed: float, stopping: Event) -> None:
        self.speed = speed
        self.stopping = stopping
        self.anchor: tuple[float, float] | None = None

    def restart(self) -> None:
        """Anchor time afresh at the next packet (a new file or loop round)."""
        self.anchor = None

    def pace(self, batch: PacketBatch) -> Iterator[PacketBatch]:
        """Yield ``batch`` in pieces, each as soon as all its packets are due."""
        timestamps = batch.timestamps
        if self.anchor is None:
            self.anchor = (timestamps[0], time.monotonic())
        first_capture, started = self.anchor
        start, count = 0, len(timestamps)
        while start < count:
            due_capture = first_capture + (time.monotonic() - started) * self.speed
            if timestamps[start] > due_capture:
                if self.stopping.wait((timestamps[start] - due_capture) / self.speed):
                    return
                continue
            end = start + 1
            while end < count and timestamps[end] <= due_capture:
                end += 1
            yield batch if end - start == count else _slice(batch, start, end)
            start = end


def _slice(batch: PacketBatch, start: int, end: int) -> PacketBatch:
    piece = PacketBatch(batch.link_type, batch.source)
    piece.timestamps = batch.timestamps[start:end]
    piece.frames = batch.frames[start:end]
    piece.wire_lengths = batch.wire_lengths[start:end]
    piece.nbytes = sum(map(len, piece.frames))
    return piece


@hookimpl
def flowpipe_add_inputs() -> dict[str, type[Input]]:
    return {"pcap": PcapInput}
