"""The ``pcap`` input: packets from pcap/pcapng files through libpcap (pcapy-ng).

Files are read as fast as possible by default; ``realtime: true`` paces them by their capture
timestamps (scaled by ``speed``), as Packetbeat's file replay does. ``loop`` replays the files.

A truncated or corrupt file ends that file, not the run: every packet before the damage is
delivered, the error names the file and the byte offset of the first damaged record, the next
file is read, and the run exits with status 1.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pcapy

from flowpipe import (
    Bool,
    Float,
    Input,
    InputProgress,
    Int,
    ListOf,
    Option,
    PacketBatch,
    StartupError,
    Str,
    hookimpl,
)

from .pcapfile import locate_damage

PCAP_RECORD_HEADER = 16
PCAP_FILE_HEADER = 24


class PcapInput(Input):
    """Read packets from pcap or pcapng files (a list of paths or glob patterns)."""

    options = (
        Option(
            "files",
            ListOf(Str(nonempty=True), min_items=1),
            required=True,
            description="capture files or glob patterns, read in the order given",
        ),
        Option("bpf_filter", Str(), None, "BPF filter expression applied while reading (tcpdump syntax)"),
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

    def open(self) -> None:
        self.paths = self._expand(self.config.files)
        self.total_bytes = sum(path.stat().st_size for path in self.paths)
        self.done_bytes = 0
        self.packets = 0
        for path in self.paths:  # fail at start, not half-way, on an unreadable file or bad filter
            self._open_reader(path).close()

    def _expand(self, patterns: list[str]) -> list[Path]:
        paths: list[Path] = []
        for pattern in patterns:
            resolved = self.context.resolve_path(pattern)
            if glob.has_magic(pattern):
                matches = sorted(Path(match) for match in glob.glob(str(resolved)))
                if not matches:
                    raise StartupError(f"pcap input {self.context.id!r}: no file matches {pattern!r}")
                paths.extend(matches)
            elif not resolved.is_file():
                raise StartupError(f"pcap input {self.context.id!r}: no such file: {resolved}")
            elif not os.access(resolved, os.R_OK):
                raise StartupError(f"pcap input {self.context.id!r}: permission denied: {resolved}")
            else:
                paths.append(resolved)
        return paths

    def _open_reader(self, path: Path) -> pcapy.Reader:
        try:
            reader = pcapy.open_offline(str(path))
        except pcapy.PcapError as error:
            raise StartupError(f"pcap input {self.context.id!r}: {path}: {error}") from None
        if self.config.bpf_filter:
            try:
                reader.setfilter(self.config.bpf_filter)
            except pcapy.PcapError as error:
                reader.close()
                raise StartupError(
                    f"pcap input {self.context.id!r}: bpf_filter {self.config.bpf_filter!r}: {error}"
                ) from None
        return reader

    def progress(self) -> InputProgress:
        return InputProgress(
            self.packets,
            self.done_bytes,
            self.total_bytes * max(self.config.loop, 1) if self.config.loop else None,
        )

    def read(self) -> Iterator[PacketBatch]:
        rounds = 0
        pacer = _Pacer(self.config.speed) if self.config.realtime else None
        while not self.stopping.is_set() and (self.config.loop == 0 or rounds < self.config.loop):
            rounds += 1
            for path in self.paths:
                if self.stopping.is_set():
                    return
                yield from self._read_file(path, pacer)

    def _read_file(self, path: Path, pacer: _Pacer | None) -> Iterator[PacketBatch]:
        reader = self._open_reader(path)
        link_type = reader.datalink()
        batch_size = self.context.batch_size
        stopping = self.stopping
        filtered = bool(self.config.bpf_filter)
        packets_in_file = 0
        offset = PCAP_FILE_HEADER
        source = str(path)
        try:
            while True:
                batch = PacketBatch(link_type, source)
                timestamps, frames, wire_lengths = batch.timestamps, batch.frames, batch.wire_lengths
                nbytes = 0
                try:
                    while len(frames) < batch_size:
                        header, frame = reader.next()
                        if header is None:
                            break
                        seconds, micros = header.getts()
                        timestamps.append(seconds + micros * 1e-6)
                        frames.append(frame)
                        wire_lengths.append(header.getlen())
                        nbytes += len(frame)
                except pcapy.PcapError as error:
                    batch.nbytes = nbytes
                    packets_in_file += len(frames)
                    yield from self._deliver(batch, pacer)
                    self._report_damage(
                        path,
                        packets_in_file,
                        filtered,
                        offset + nbytes + PCAP_RECORD_HEADER * len(frames),
                        error,
                    )
                    return
                batch.nbytes = nbytes
                packets_in_file += len(frames)
                offset += nbytes + PCAP_RECORD_HEADER * len(frames)
                self.done_bytes += nbytes + PCAP_RECORD_HEADER * len(frames)
                if frames:
                    yield from self._deliver(batch, pacer)
                if len(frames) < batch_size or stopping.is_set():
                    return
        finally:
            reader.close()

    def _deliver(self, batch: PacketBatch, pacer: _Pacer | None) -> Iterator[PacketBatch]:
        self.packets += len(batch)
        if pacer is None:
            yield batch
            return
        yield from pacer.pace(batch, self.stopping)

    def _report_damage(self, path: Path, good: int, filtered: bool, estimate: int, error: Exception) -> None:
        damage = locate_damage(path, good) if not filtered else None
        where = f"byte offset {damage}" if damage is not None else f"about byte offset {estimate}"
        self.context.fail(
            f"{path}: damaged capture at {where}, after {good} good packets: {error}; "
            f"the packets before it were processed"
        )


class _Pacer:
    """Splits batches so packets leave no earlier than their capture time allows."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.first_capture: float | None = None
        self.started = 0.0

    def pace(self, batch: PacketBatch, stopping: object) -> Iterator[PacketBatch]:
        if self.first_capture is None and batch.timestamps:
            self.first_capture = batch.timestamps[0]
            self.started = time.monotonic()
        start = 0
        count = len(batch)
        while start < count:
            due = self.started + (batch.timestamps[start] - self.first_capture) / self.speed
            wait = due - time.monotonic()
            if wait > 0:
                if stopping.wait(min(wait, 0.5)):  # type: ignore[attr-defined]
                    return
                continue
            end = start + 1
            now = time.monotonic()
            while (
                end < count
                and self.started + (batch.timestamps[end] - self.first_capture) / self.speed <= now
            ):
                end += 1
            piece = PacketBatch(batch.link_type, batch.source)
            piece.timestamps = batch.timestamps[start:end]
            piece.frames = batch.frames[start:end]
            piece.wire_lengths = batch.wire_lengths[start:end]
            piece.nbytes = sum(len(frame) for frame in piece.frames)
            yield piece
            start = end


@hookimpl
def flowpipe_add_inputs() -> dict[str, type[Input]]:
    return {"pcap": PcapInput}
