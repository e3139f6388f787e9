"""`flowpipe run` with a `file` output: one NDJSON event per packet; an unwritable path stops start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from captures import tcp_frame, udp_frame, write_pcap

PACKETS = [
    (1_700_000_000.0, tcp_frame("192.0.2.1", "198.51.100.7", 40001, 80, b"GET / HTTP/1.1\r\n\r\n")),
    (1_700_000_000.5, udp_frame("192.0.2.2", "198.51.100.53", 53001, 53, b"\x12\x34query")),
    (1_700_000_001.0, tcp_frame("2001:db8::1", "2001:db8::2", 40002, 443)),
    (1_700_000_001.5, udp_frame("2001:db8::3", "2001:db8::4", 53002, 5353, b"mdns")),
]
EXPECTED = [
    ("192.0.2.1", 40001, "198.51.100.7", 80, "tcp", "ipv4"),
    ("192.0.2.2", 53001, "198.51.100.53", 53, "udp", "ipv4"),
    ("2001:db8::1", 40002, "2001:db8::2", 443, "tcp", "ipv6"),
    ("2001:db8::3", 53002, "2001:db8::4", 5353, "udp", "ipv6"),
]


def run_pipeline(folder: Path, output_path: str) -> subprocess.CompletedProcess[str]:
    write_pcap(folder / "capture.pcap", PACKETS)
    (folder / "pipeline.yml").write_text(
        "inputs:\n"
        "  - type: pcap\n"
        "    files: [capture.pcap]\n"
        "decoders:\n"
        "  - type: ip\n"
        "    flows: {enabled: false}\n"
        "outputs:\n"
        "  - type: file\n"
        f"    path: {output_path}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(folder / "pipeline.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_file_output_has_one_event_per_packet(tmp_path: Path) -> None:
    result = run_pipeline(tmp_path, "out/events.ndjson")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "out" / "events.ndjson").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [
        (
            event["source"]["ip"],
            event["source"]["port"],
            event["destination"]["ip"],
            event["destination"]["port"],
            event["network"]["transport"],
            event["network"]["type"],
        )
        for event in events
    ] == EXPECTED
    assert [event["@timestamp"] for event in events] == [
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:13:20.500Z",
        "2023-11-14T22:13:21.000Z",
        "2023-11-14T22:13:21.500Z",
    ]


def test_unwritable_file_output_fails_before_reading(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a regular file, not a folder")
    result = run_pipeline(tmp_path, "blocker/events.ndjson")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"flowpipe: cannot write {tmp_path}/blocker/events.ndjson: {tmp_path}/blocker is not a directory"
    ]
