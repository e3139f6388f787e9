"""`flowpipe run` reading captures with the pcap input, events on stdout (codec json).

Covers pcap and pcapng, glob patterns, bpf_filter, loop, realtime pacing, damaged and unreadable
files (what is delivered, the exact byte offset, the exit status) and the progress bar.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from captures import tcp_frame, udp_frame, write_pcap, write_pcapng

T0 = 1_700_000_000.0
PACKETS = [
    (T0 + 0.25, tcp_frame("192.0.2.1", "198.51.100.7", 40001, 80, b"GET / HTTP/1.1\r\n\r\n")),
    (T0 + 0.5, udp_frame("192.0.2.2", "198.51.100.53", 53001, 53, b"\x12\x34query")),
    (T0 + 0.75, tcp_frame("2001:db8::1", "2001:db8::2", 40002, 443)),
    (T0 + 1.25, udp_frame("2001:db8::3", "2001:db8::4", 53002, 5353, b"mdns")),
]
EXPECTED = [
    ("2023-11-14T22:13:20.250Z", "192.0.2.1", 40001, "198.51.100.7", 80, "tcp", "ipv4"),
    ("2023-11-14T22:13:20.500Z", "192.0.2.2", 53001, "198.51.100.53", 53, "udp", "ipv4"),
    ("2023-11-14T22:13:20.750Z", "2001:db8::1", 40002, "2001:db8::2", 443, "tcp", "ipv6"),
    ("2023-11-14T22:13:21.250Z", "2001:db8::3", 53002, "2001:db8::4", 5353, "udp", "ipv6"),
]
SUMMARY_ELAPSED = re.compile(r"^flowpipe: finished in (\d+\.\d+) s:", re.MULTILINE)


@dataclass
class Run:
    status: int
    events: list[dict[str, Any]]
    stderr: str

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """Each event's timestamp, endpoints and network type, in output order."""
        return [
            (
                event["@timestamp"],
                event["source"]["ip"],
                event["source"].get("port"),
                event["destination"]["ip"],
                event["destination"].get("port"),
                event["network"]["transport"],
                event["network"]["type"],
            )
            for event in self.events
        ]

    @property
    def elapsed(self) -> float:
        """The run time the end-of-run summary reports."""
        match = SUMMARY_ELAPSED.search(self.stderr)
        assert match, self.stderr
        return float(match.group(1))


def pipeline(folder: Path, **pcap: Any) -> Path:
    """A pipeline file in ``folder``: one pcap input with ``pcap`` options, events to stdout."""
    path = folder / "pipeline.yml"
    document = {
        "inputs": [{"type": "pcap", **pcap}],
        "decoders": [
            {"type": "ip", "flows": {"enabled": False}}
        ],  # per-packet events: what these tests count
        "outputs": [{"type": "stdout", "codec": "json"}],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run(folder: Path, *arguments: str, **pcap: Any) -> Run:
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(pipeline(folder, **pcap)), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    events = [json.loads(line) for line in result.stdout.splitlines()]
    return Run(result.returncode, events, result.stderr)


def test_pcap_and_pcapng_give_identical_events(tmp_path: Path) -> None:
    write_pcap(tmp_path / "capture.pcap", PACKETS)
    write_pcapng(tmp_path / "capture.pcapng", PACKETS)
    from_pcap = run(tmp_path, files=["capture.pcap"])
    from_pcapng = run(tmp_path, files=["capture.pcapng"])
    assert (from_pcap.status, from_pcapng.status) == (0, 0)
    assert from_pcap.rows == EXPECTED
    assert from_pcapng.events == from_pcap.events


def test_files_in_the_given_order_and_patterns_in_name_order(tmp_path: Path) -> None:
    captures = tmp_path / "captures"
    captures.mkdir()
    ports = {"cap-2.pcap": 2, "cap-10.pcapng": 10, "cap-1.pcap": 1, "first.pcap": 0}  # one packet each
    for name, port in ports.items():
        writer = write_pcapng if name.endswith(".pcapng") else write_pcap
        writer(captures / name, [(T0, udp_frame("192.0.2.1", "192.0.2.2", port, 53))])
    result = run(tmp_path, files=["captures/first.pcap", "captures/cap-*"])
    assert result.status == 0, result.stderr
    assert [event["source"]["port"] for event in result.events] == [0, 1, 10, 2]


def test_bpf_filter_keeps_exactly_the_matching_packets(tmp_path: Path) -> None:
    write_pcap(tmp_path / "capture.pcap", PACKETS)
    udp = run(tmp_path, files=["capture.pcap"], bpf_filter="udp")
    assert udp.status == 0, udp.stderr
    assert udp.rows == [EXPECTED[1], EXPECTED[3]]
    https = run(tmp_path, files=["capture.pcap"], bpf_filter="ip6 and tcp dst port 443")
    assert https.rows == [EXPECTED[2]]


def test_bad_bpf_filter_is_a_start_up_error(tmp_path: Path) -> None:
    write_pcap(tmp_path / "capture.pcap", PACKETS)
    result = run(tmp_path, files=["capture.pcap"], bpf_filter="tcp port")
    assert (result.status, result.events) == (1, [])
    assert result.stderr == (
        f"flowpipe: pcap input 'pcap': {tmp_path / 'capture.pcap'}: bpf_filter 'tcp port': "
        "can't parse filter expression: syntax error\n"
    )


def test_missing_file_is_a_start_up_error(tmp_path: Path) -> None:
    write_pcap(tmp_path / "capture.pcap", PACKETS)
    result = run(tmp_path, files=["capture.pcap", "missing.pcap"])
    assert (result.status, result.events) == (1, [])
    assert result.stderr == f"flowpipe: pcap input 'pcap': no such file: {tmp_path / 'missing.pcap'}\n"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file, not a capture"),
        (b"just some text, no capture\n" * 4, "not a readable pcap or pcapng file: unknown file format"),
    ],
    ids=["zero_bytes", "not_a_capture"],
)
def test_unreadable_file_is_a_start_up_error(tmp_path: Path, content: bytes, reason: str) -> None:
    write_pcap(tmp_path / "good.pcap", PACKETS)
    (tmp_path / "bad.pcap").write_bytes(content)
    result = run(tmp_path, files=["good.pcap", "bad.pcap"])
    assert (result.status, result.events) == (1, [])  # nothing is read: it fails before starting
    assert result.stderr == f"flowpipe: pcap input 'pcap': {tmp_path / 'bad.pcap'}: {reason}\n"


def test_loop_reads_the_files_again(tmp_path: Path) -> None:
    write_pcap(tmp_path / "a.pcap", PACKETS[:2])
    write_pcapng(tmp_path / "b.pcapng", PACKETS[2:])
    result = run(tmp_path, files=["a.pcap", "b.pcapng"], loop=3)
    assert result.status == 0, result.stderr
    assert result.rows == EXPECTED * 3


def test_realtime_paces_by_capture_time_scaled_by_speed(tmp_path: Path) -> None:
    second = [(T0 + index * 0.25, frame) for index, (_, frame) in enumerate(PACKETS)]
    second.append((T0 + 1.0, PACKETS[0][1]))  # the capture spans 1.0 s
    write_pcap(tmp_path / "second.pcap", second)
    fast = run(tmp_path, files=["second.pcap"])
    paced = run(tmp_path, files=["second.pcap"], realtime=True, speed=4)
    assert (fast.status, paced.status) == (0, 0), paced.stderr
    assert paced.events == fast.events
    assert len(paced.events) == 5
    assert fast.elapsed < 0.2
    assert 0.25 <= paced.elapsed < 0.7


PCAP_RECORD = 16 + 60  # the damaged captures below hold 60-byte frames
EPB = 28 + 60 + 4


def damaged_capture(folder: Path, case: str) -> tuple[Path, int, int, str]:
    """A capture of six 60-byte frames damaged at its fourth packet record or block.

    Returns its path, the exact offset of the damage, the packets readable before it and
    libpcap's error."""
    frames = [
        (T0 + index, udp_frame("192.0.2.9", "192.0.2.10", 1000 + index, 53, bytes(18))) for index in range(6)
    ]
    assert {len(frame) for _, frame in frames} == {60}
    if case.startswith("pcapng"):
        data = write_pcapng(folder / f"{case}.pcapng", frames).read_bytes()
        offset = len(data) - 3 * EPB
        data, error = data[: offset + 40], "truncated pcapng dump file; tried to read 84 bytes, only got 32"
    else:
        data = write_pcap(folder / f"{case}.pcap", frames).read_bytes()
        offset = 24 + 3 * PCAP_RECORD
        data, error = {
            "cut_in_record_header": (data[: offset + 10], "tried to read 16 header bytes, only got 10"),
            "cut_in_packet_data": (data[: offset + 16 + 59], "tried to read 60 captured bytes, only got 59"),
            "absurd_caplen": (
                data[: offset + 8] + struct.pack("<I", 0xFFFFFFFF) + data[offset + 12 :],
                "invalid packet capture length 4294967295, bigger than snaplen of 65535",
            ),
        }[case]
        error = error if error.startswith("invalid") else f"truncated dump file; {error}"
    path = folder / f"{case}.{'pcapng' if case.startswith('pcapng') else 'pcap'}"
    path.write_bytes(data)
    return path, offset, 3, error


@pytest.mark.parametrize(
    "case", ["cut_in_record_header", "cut_in_packet_data", "absurd_caplen", "pcapng_cut_block"]
)
def test_damaged_file_delivers_what_precedes_the_damage_and_fails_the_run(tmp_path: Path, case: str) -> None:
    path, offset, readable, error = damaged_capture(tmp_path, case)
    write_pcap(tmp_path / "after.pcap", PACKETS)
    result = run(tmp_path, files=[path.name, "after.pcap"])
    assert result.status == 1
    assert [event["source"]["port"] for event in result.events[:readable]] == [1000, 1001, 1002]
    assert result.rows[readable:] == EXPECTED  # the next file is still read
    failure = (
        f"{path}: damaged capture at byte offset {offset}: {error}; packet records read before the damage: 3"
    )
    assert f"ERROR flowpipe.pcap: {failure}\n" in result.stderr
    assert result.stderr.endswith(f"  FAILED: {failure}\n")


def test_damaged_file_with_a_filter_reports_the_exact_offset(tmp_path: Path) -> None:
    path, offset, _, error = damaged_capture(tmp_path, "cut_in_packet_data")
    result = run(tmp_path, files=[path.name], bpf_filter="udp src port 1001")
    assert result.status == 1
    assert [event["source"]["port"] for event in result.events] == [1001]
    assert result.stderr.endswith(
        f"  FAILED: {path}: damaged capture at byte offset {offset}: {error}; "
        "packet records read before the damage: 3\n"
    )


def run_on_terminal(folder: Path, **pcap: Any) -> tuple[int, str]:
    """Run flowpipe with stderr on a pseudo-terminal (stdout to a file); return status and stderr."""
    main, terminal = os.openpty()
    with (folder / "events.json").open("wb") as events:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowpipe", "run", "-c", str(pipeline(folder, **pcap))],
            stdin=subprocess.DEVNULL,
            stdout=events,
            stderr=terminal,
        )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return process.wait(timeout=60), b"".join(chunks).decode()


def test_progress_bar_on_a_terminal_and_silence_elsewhere(tmp_path: Path) -> None:
    payload = bytes(150)
    spread = [
        (T0 + index * 0.2, udp_frame("192.0.2.1", "192.0.2.2", index, 53, payload)) for index in range(8)
    ]
    size = write_pcap(tmp_path / "capture.pcap", spread).stat().st_size
    status, terminal = run_on_terminal(tmp_path, files=["capture.pcap"], realtime=True)
    assert status == 0, terminal
    bars = re.findall(
        r"\r(\[[#.]{24}\] +\d+%  \d+ packets  \d+/s  [\d.]+ K?B of ([\d.]+ KB)  ETA \d+:\d\d:\d\d)\x1b\[K",
        terminal,
    )
    assert len(bars) >= 3, terminal
    assert {total for _, total in bars} == {f"{size / 1000:.1f} KB"}
    percents = [int(re.search(r"(\d+)%", bar).group(1)) for bar, _ in bars]
    assert percents == sorted(percents) and percents[0] < 50 < percents[-1]
    assert "\r\x1b[Kflowpipe: finished in" in terminal  # the bar is erased before the summary
    piped = run(tmp_path, files=["capture.pcap"])
    assert piped.status == 0
    assert "\r" not in piped.stderr and "ETA" not in piped.stderr


def test_sigint_ends_a_realtime_wait_at_once(tmp_path: Path) -> None:
    write_pcap(tmp_path / "gap.pcap", [PACKETS[0], (PACKETS[0][0] + 3600, PACKETS[1][1])])  # an hour apart
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowpipe",
            "run",
            "-c",
            str(pipeline(tmp_path, files=["gap.pcap"], realtime=True)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = process.stdout.readline()  # the first packet is out; the input now waits for the second
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=30)
    assert time.monotonic() - started < 3.0
    assert process.returncode == 0, stderr
    assert [json.loads(line)["source"]["port"] for line in [first, *stdout.splitlines()]] == [40001]
