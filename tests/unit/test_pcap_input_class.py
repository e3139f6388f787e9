"""The pcap input class on real captures: files and patterns, link types, batches, progress,
realtime pacing, stop requests, damaged files."""

from __future__ import annotations

import io
import struct
import threading
import time
from pathlib import Path

import pytest
from captures import tcp_frame, udp_frame, write_pcap, write_pcapng

from flowpipe import PacketBatch, StageContext, StartupError
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace
from flowpipe.plugins.inputs.pcap import PcapInput
from flowpipe.progress import ProgressBar

T0 = 1_700_000_000.0


def make_input(tmp_path: Path, batch_size: int = 256, **values: object) -> PcapInput:
    """An opened pcap input with ``values`` as its options, files relative to ``tmp_path``."""
    context = StageContext(
        id="pcap", counters=Counters("pcap", "input"), base_dir=tmp_path, batch_size=batch_size
    )
    stage = PcapInput(build_namespace(PcapInput.all_options(), values), context)
    stage.open()
    return stage


def read_all(stage: PcapInput) -> list[PacketBatch]:
    return list(stage.read())


def flatten(batches: list[PacketBatch]) -> list[tuple[float, bytes, int, int, str]]:
    return [
        (timestamp, frame, wire_length, batch.link_type, batch.source)
        for batch in batches
        for timestamp, frame, wire_length in zip(
            batch.timestamps, batch.frames, batch.wire_lengths, strict=True
        )
    ]


def numbered(count: int, size: int = 60, step: float = 1.0) -> list[tuple[float, bytes]]:
    """``count`` frames of ``size`` bytes, each filled with its index, ``step`` seconds apart."""
    return [(T0 + index * step, bytes([index % 256]) * size) for index in range(count)]


# -- files and patterns --------------------------------------------------------------------------


def test_patterns_expand_in_name_order_and_files_in_the_given_order(tmp_path: Path) -> None:
    for name in ("b.pcap", "a.pcap", "c.pcapng", "z.pcap"):
        write_pcap(tmp_path / name, numbered(1))
    (tmp_path / "d.pcap").mkdir()  # a directory matching the pattern is not a file to read
    (tmp_path / "deep" / "er").mkdir(parents=True)
    write_pcap(tmp_path / "deep" / "er" / "y.pcap", numbered(1))
    stage = make_input(tmp_path, files=["z.pcap", "*.pcap*", "a.pcap", "**/y.pcap"])
    assert stage.paths == [
        tmp_path / name for name in ("z.pcap", "a.pcap", "b.pcap", "c.pcapng", "deep/er/y.pcap")
    ]


def test_missing_file_and_unmatched_pattern_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as missing:
        make_input(tmp_path, files=["nope.pcap"])
    assert str(missing.value) == f"pcap input 'pcap': no such file: {tmp_path / 'nope.pcap'}"
    with pytest.raises(StartupError) as unmatched:
        make_input(tmp_path, files=["captures/*.pcap"])
    assert str(unmatched.value) == "pcap input 'pcap': no file matches 'captures/*.pcap'"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file, not a capture"),
        (
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "not a readable pcap or pcapng file: unknown file format",
        ),
        (
            b"\xd4\xc3\xb2\xa1\x02\x00",
            "not a readable pcap or pcapng file: "
            "truncated dump file; tried to read 24 file header bytes, only got 2",
        ),
    ],
    ids=["empty", "not_a_capture", "cut_file_header"],
)
def test_files_libpcap_cannot_open_fail_at_start(tmp_path: Path, content: bytes, reason: str) -> None:
    write_pcap(tmp_path / "good.pcap", numbered(1))
    (tmp_path / "bad.pcap").write_bytes(content)
    with pytest.raises(StartupError) as error:
        make_input(tmp_path, files=["good.pcap", "bad.pcap"])
    assert str(error.value) == f"pcap input 'pcap': {tmp_path / 'bad.pcap'}: {reason}"


def test_bad_bpf_filter_fails_at_start(tmp_path: Path) -> None:
    write_pcap(tmp_path / "eth.pcap", numbered(1))
    write_pcap(tmp_path / "raw.pcap", numbered(1), linktype=101)
    with pytest.raises(StartupError) as syntax:
        make_input(tmp_path, files=["eth.pcap"], bpf_filter="tcp port")
    assert str(syntax.value) == (
        f"pcap input 'pcap': {tmp_path / 'eth.pcap'}: bpf_filter 'tcp port': "
        "can't parse filter expression: syntax error"
    )
    with pytest.raises(StartupError) as link_type:  # valid syntax, but not for raw IP
        make_input(tmp_path, files=["eth.pcap", "raw.pcap"], bpf_filter="ether host 02:00:00:00:00:01")
    assert str(link_type.value) == (
        f"pcap input 'pcap': {tmp_path / 'raw.pcap'}: bpf_filter 'ether host 02:00:00:00:00:01': "
        "ethernet addresses supported only on ethernet/FDDI/token ring/802.11/ATM LANE/Fibre Channel"
    )


# -- what a batch carries ------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [write_pcap, write_pcapng])
@pytest.mark.parametrize(
    ("linktype", "dlt"),
    [(1, 1), (0, 0), (101, 12), (113, 113), (147, 147), (228, 228), (276, 276)],
    ids=["ethernet", "null", "raw_is_dlt_12", "linux_sll", "user0", "ipv4", "linux_sll2"],
)
def test_every_link_type_is_read_as_libpcap_reports_it(
    tmp_path: Path, writer, linktype: int, dlt: int
) -> None:
    packets = [(T0 + 0.5, b"\x45" + bytes(40)), (T0 + 1.25, b"any bytes at all")]
    path = writer(tmp_path / "capture", packets, linktype=linktype)
    assert flatten(read_all(make_input(tmp_path, files=["capture"]))) == [
        (T0 + 0.5, b"\x45" + bytes(40), 41, dlt, str(path)),
        (T0 + 1.25, b"any bytes at all", 16, dlt, str(path)),
    ]


def test_nanosecond_pcap_is_read_with_microsecond_precision(tmp_path: Path) -> None:
    write_pcap(tmp_path / "nano.pcap", [(T0 + 0.123456789, b"x" * 20)], nano=True)
    [batch] = read_all(make_input(tmp_path, files=["nano.pcap"]))
    assert batch.timestamps == [pytest.approx(T0 + 0.123456, abs=1e-7)]


def test_wire_length_is_the_original_length_of_a_cut_frame(tmp_path: Path) -> None:
    data = bytearray(write_pcap(tmp_path / "cut.pcap", [(T0, b"y" * 96)]).read_bytes())
    struct.pack_into("<I", data, 24 + 12, 1514)  # the record's original length
    (tmp_path / "cut.pcap").write_bytes(data)
    [batch] = read_all(make_input(tmp_path, files=["cut.pcap"]))
    assert (batch.frames, batch.wire_lengths, batch.nbytes) == ([b"y" * 96], [1514], 96)


def test_batches_hold_at_most_batch_size_packets(tmp_path: Path) -> None:
    write_pcap(tmp_path / "ten.pcap", numbered(10, size=50))
    batches = read_all(make_input(tmp_path, batch_size=4, files=["ten.pcap"]))
    assert [(len(batch), batch.nbytes) for batch in batches] == [(4, 200), (4, 200), (2, 100)]
    assert [frame[0] for batch in batches for frame in batch.frames] == list(range(10))


def test_pcap_and_pcapng_give_the_same_packets(tmp_path: Path) -> None:
    packets = [
        (T0 + 0.000001, tcp_frame("192.0.2.1", "198.51.100.2", 40000, 80, b"GET /")),
        (T0 + 0.5, udp_frame("2001:db8::1", "2001:db8::2", 5353, 53, b"query")),
    ]
    write_pcap(tmp_path / "a.pcap", packets)
    write_pcapng(tmp_path / "a.pcapng", packets)
    from_pcap = [row[:4] for row in flatten(read_all(make_input(tmp_path, files=["a.pcap"])))]
    from_pcapng = [row[:4] for row in flatten(read_all(make_input(tmp_path, files=["a.pcapng"])))]
    assert from_pcap == from_pcapng
    assert [row[1] for row in from_pcap] == [frame for _, frame in packets]


def test_bpf_filter_keeps_the_matching_packets(tmp_path: Path) -> None:
    packets = [
        (T0, tcp_frame("192.0.2.1", "198.51.100.2", 40000, 80)),
        (T0 + 1, udp_frame("192.0.2.1", "198.51.100.2", 40001, 53)),
        (T0 + 2, tcp_frame("192.0.2.1", "198.51.100.2", 40002, 443)),
        (T0 + 3, tcp_frame("198.51.100.2", "192.0.2.1", 80, 40000)),
    ]
    write_pcap(tmp_path / "mixed.pcap", packets)
    stage = make_input(tmp_path, files=["mixed.pcap"], bpf_filter="tcp port 80")
    assert [row[0] for row in flatten(read_all(stage))] == [T0, T0 + 3]
    assert stage.packets == 2


# -- progress ------------------------------------------------------------------------------------


def test_progress_follows_the_read_position_and_ends_at_the_file_size(tmp_path: Path) -> None:
    path = write_pcapng(tmp_path / "big.pcapng", numbered(300, size=1000))
    size = path.stat().st_size
    stage = make_input(tmp_path, batch_size=16, files=["big.pcapng"])
    assert (stage.progress().done_bytes, stage.progress().total_bytes) == (0, size)
    seen = []
    for batch in stage.read():
        report = stage.progress()
        seen.append((report.packets, report.done_bytes))
        assert report.total_bytes == size
        assert len(batch) <= 16
    packets, done = zip(*seen, strict=True)
    assert list(packets) == [min(16 * n, 300) for n in range(1, 20)]
    assert list(done) == sorted(done)
    assert done[0] < size / 10  # the read position, not a guess: the first batch is near the start
    assert stage.progress().done_bytes == size


def test_progress_over_loop_rounds(tmp_path: Path) -> None:
    size = write_pcap(tmp_path / "one.pcap", numbered(20)).stat().st_size
    stage = make_input(tmp_path, batch_size=8, files=["one.pcap"], loop=3)
    read_all(stage)
    report = stage.progress()
    assert (report.packets, report.done_bytes, report.total_bytes) == (60, 3 * size, 3 * size)


def test_endless_loop_has_no_total_and_stops_when_asked(tmp_path: Path) -> None:
    write_pcap(tmp_path / "one.pcap", numbered(5))
    stage = make_input(tmp_path, files=["one.pcap"], loop=0)
    reader = stage.read()
    rounds = [len(next(reader)) for _ in range(7)]
    stage.stop()
    assert rounds == [5] * 7
    assert list(reader) == []
    assert stage.progress().total_bytes is None
    assert stage.progress().packets == 35


def test_progress_bar_line_with_the_input_numbers(tmp_path: Path) -> None:
    size = write_pcap(tmp_path / "file.pcap", numbered(200, size=1000)).stat().st_size
    assert size == 24 + 200 * (16 + 1000)
    stage = make_input(tmp_path, batch_size=64, files=["file.pcap"], loop=3)
    bar = ProgressBar(io.StringIO(), [stage])
    bar.started = 100.0
    reader = stage.read()
    while stage.packets < 200:
        next(reader)
    assert (
        bar.line(102.0)
        == "[########................]  33%  200 packets  100/s  203.2 KB of 609.7 KB  ETA 0:00:04"
    )
    list(reader)
    assert (
        bar.line(106.0)
        == "[########################] 100%  600 packets  100/s  609.7 KB of 609.7 KB  ETA 0:00:00"
    )


# -- realtime ------------------------------------------------------------------------------------


def timed_read(stage: PcapInput) -> list[tuple[float, list[float]]]:
    """Each batch's delay after the first, with its packets' capture times relative to T0."""
    started = None
    pieces = []
    for batch in stage.read():
        now = time.monotonic()
        started = now if started is None else started
        pieces.append((now - started, [round(t - T0, 6) for t in batch.timestamps]))
    return pieces


def test_realtime_releases_each_packet_at_its_scaled_capture_time(tmp_path: Path) -> None:
    write_pcap(tmp_path / "second.pcap", [(T0 + offset, b"z" * 40) for offset in (0, 0, 0.2, 0.6, 0.6, 1.0)])
    pieces = timed_read(make_input(tmp_path, files=["second.pcap"], realtime=True, speed=4.0))
    assert [times for _, times in pieces] == [[0, 0], [0.2], [0.6, 0.6], [1.0]]
    for delay, times in pieces:
        assert times[0] / 4 - 0.005 <= delay < times[0] / 4 + 0.1


def test_realtime_anchors_each_file_and_each_round_at_its_first_packet(tmp_path: Path) -> None:
    write_pcap(tmp_path / "a.pcap", [(T0, b"a"), (T0 + 0.4, b"a")])
    write_pcap(tmp_path / "b.pcap", [(T0 - 3600, b"b"), (T0 - 3600 + 0.4, b"b")])  # an hour earlier
    stage = make_input(tmp_path, batch_size=1, files=["a.pcap", "b.pcap"], realtime=True, speed=2.0, loop=2)
    delays = [delay for delay, _ in timed_read(stage)]
    assert len(delays) == 8
    for index, delay in enumerate(delays):  # 0.2 s per file: no catching up, no waiting for an hour
        assert 0.2 * ((index + 1) // 2) - 0.005 <= delay < 0.2 * ((index + 1) // 2) + 0.15


def test_realtime_progress_moves_with_the_delivered_packets(tmp_path: Path) -> None:
    size = write_pcap(tmp_path / "four.pcap", numbered(4, step=0.05)).stat().st_size
    stage = make_input(tmp_path, files=["four.pcap"], realtime=True)
    done = [stage.progress().done_bytes for _ in stage.read()]  # one batch, paced in 4 pieces
    assert done == [size * delivered // 4 for delivered in (1, 2, 3, 4)]


def test_stop_ends_a_realtime_wait_at_once(tmp_path: Path) -> None:
    write_pcap(tmp_path / "gap.pcap", [(T0, b"first"), (T0 + 3600, b"an hour later")])
    stage = make_input(tmp_path, files=["gap.pcap"], realtime=True)
    reader = stage.read()
    assert next(reader).frames == [b"first"]
    timer = threading.Timer(0.2, stage.stop)
    timer.start()
    started = time.monotonic()
    assert list(reader) == []
    assert 0.15 < time.monotonic() - started < 1.0
    assert stage.packets == 1


# -- damaged files -------------------------------------------------------------------------------


def cut_pcap(tmp_path: Path, name: str, packets: list[tuple[float, bytes]], keep: int, extra: int) -> Path:
    """A pcap of ``packets`` (60-byte frames) cut ``extra`` bytes into record ``keep + 1``."""
    data = write_pcap(tmp_path / name, packets).read_bytes()
    (tmp_path / name).write_bytes(data[: 24 + keep * 76 + extra])
    return tmp_path / name


def test_damaged_file_delivers_what_precedes_the_damage_then_the_next_file(tmp_path: Path) -> None:
    damaged = cut_pcap(tmp_path, "cut.pcap", numbered(10), keep=6, extra=20)
    write_pcap(tmp_path / "next.pcap", numbered(3))
    stage = make_input(tmp_path, batch_size=4, files=["cut.pcap", "next.pcap"])
    rows = flatten(read_all(stage))
    assert [(row[1][0], Path(row[4]).name) for row in rows] == [(n, "cut.pcap") for n in range(6)] + [
        (n, "next.pcap") for n in range(3)
    ]
    assert stage.context.failures == [
        f"{damaged}: damaged capture at byte offset {24 + 6 * 76}: truncated dump file; tried to read "
        "60 captured bytes, only got 4; packet records read before the damage: 6"
    ]


def test_damage_offset_is_exact_with_a_filter(tmp_path: Path) -> None:
    packets = [
        (T0 + n, tcp_frame("192.0.2.1", "192.0.2.2", 1000 + n, 80 if n % 3 == 0 else 25)) for n in range(9)
    ]
    data = write_pcap(tmp_path / "f.pcap", packets).read_bytes()
    offset = 24 + sum(16 + len(frame) for _, frame in packets[:7])
    (tmp_path / "f.pcap").write_bytes(data[: offset + 10])
    stage = make_input(tmp_path, files=["f.pcap"], bpf_filter="tcp port 80")
    assert [row[0] for row in flatten(read_all(stage))] == [T0, T0 + 3, T0 + 6]
    assert stage.context.failures == [
        f"{tmp_path / 'f.pcap'}: damaged capture at byte offset {offset}: truncated dump file; tried to "
        "read 16 header bytes, only got 10; packet records read before the damage: 7"
    ]


def test_damaged_file_in_a_loop_is_replayed_and_reported_once(tmp_path: Path) -> None:
    cut_pcap(tmp_path, "cut.pcap", numbered(4), keep=2, extra=30)
    stage = make_input(tmp_path, files=["cut.pcap"], loop=3)
    assert [row[1][0] for row in flatten(read_all(stage))] == [0, 1] * 3
    assert len(stage.context.failures) == 1


def test_files_broken_after_start_are_reported_and_the_next_one_read(tmp_path: Path) -> None:
    for name in ("a.pcap", "b.pcap", "c.pcap"):
        write_pcap(tmp_path / name, numbered(2))
    stage = make_input(tmp_path, files=["a.pcap", "b.pcap", "c.pcap"])
    (tmp_path / "a.pcap").write_bytes(b"overwritten with something else")
    (tmp_path / "b.pcap").unlink()
    assert [Path(row[4]).name for row in flatten(read_all(stage))] == ["c.pcap"] * 2
    assert stage.context.failures == [
        f"pcap input 'pcap': {tmp_path / 'a.pcap'}: not a readable pcap or pcapng file: unknown file format",
        f"pcap input 'pcap': {tmp_path / 'b.pcap'}: No such file or directory",
    ]
