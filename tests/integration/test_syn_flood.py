"""A SYN flood of 1,000,000 connections through the real CLI: the caps keep memory bounded.

``flowpipe run`` reads a capture of 1,000,000 TCP SYNs, each from its own source address and port
to one server, through the ``ip`` and ``tcp`` decoders with ``flows.max_flows`` and
``max_connections`` of 50,000, and writes the flow records to stdout. The test checks:

- the ledger: 1,000,000 flows, 950,000 of them evicted by each decoder (``flows_evicted``,
  ``dropped.max_connections``, ``closed.evicted``), 50,000 closed at the end of the input;
- every flow's final record, in order: the first 950,000 SYNs' flows ``evicted``, the last 50,000
  ``end_of_input``, each with state ``S0`` and one packet of 54 bytes from the client;
- the peak RSS of the process (its ``ru_maxrss``, see :data:`MEASURE`) against a bound made of the
  baseline (the same pipeline on 1,000 SYNs) and a budget per cap: :data:`FLOW_BUDGET` per flow
  of ``max_flows`` (the flow, and its final record and JSON text when the end of the input flushes
  them all at once) and :data:`CONNECTION_BUDGET` per connection of ``max_connections`` (the
  connection, and the evicted flow the ``tcp`` decoder remembers as closed);
- that the caps are what holds memory down: a tenth of the flood with caps of 1,000,000 already
  exceeds that bound.

The capture is packed with one ``struct`` call per packet (classic pcap, big-endian, so record
header and frame are one format), with valid IPv4 and TCP checksums summed incrementally.
Timestamps are 5 µs apart: the flood lasts 5 s of capture time, under every timeout and the flow
report period, so only the caps end flows before the end of the input.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from summary_lines import parse_summary

FLOOD = 1_000_000
CAP = 50_000
UNCAPPED = 1_000_000
"""The caps of the comparison run: more than it has connections."""
COMPARISON = 150_000
"""SYNs of the comparison run: three times the caps, enough to pass the bound without them."""
BASELINE = 1_000
"""SYNs of the run that measures the baseline (interpreter, libraries, queues)."""
FLOW_BUDGET = 4096
"""Peak bytes allowed per flow of ``flows.max_flows`` (measured: about 800 for the flow, 1,200 for
its final record and 560 for its JSON line, plus allocator slack)."""
CONNECTION_BUDGET = 3072
"""Peak bytes allowed per connection of ``max_connections`` (measured: about 500 for the
connection, 750 for the evicted flow remembered as closed, plus allocator slack)."""
RUN_TIMEOUT = 600
"""Seconds after which a run is killed (the flood takes about two minutes on an idle machine)."""

T0 = 1_700_000_000
STEP_US = 5
SERVER = 0xC6336401  # 198.51.100.1
SERVER_PORT = 80
FIRST_CLIENT = 0x0A000001  # 10.0.0.1, then one address more per SYN
ISN = 0x10000000
FRAME_LENGTH = 54
MAC_SERVER, MAC_CLIENT = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")

MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as file:
    file.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Runs a command (``argv[2:]``) and writes its peak RSS in KiB and the CPU seconds it used to the
file ``argv[1]``.

A child's ``ru_maxrss`` includes the peak of the process it was forked from (Linux keeps the
larger of the two across ``exec``), so flowpipe is forked from this small interpreter rather
than from pytest."""

_RECORD = struct.Struct("!IIII 6s6sH BBHHHBBHII HHIIBBHHH")
"""A pcap record header (big-endian file), then Ethernet, IPv4 and TCP headers."""
_IP_CONSTANT = 0x4500 + 40 + 0x4000 + (64 << 8 | 6) + (SERVER >> 16) + (SERVER & 0xFFFF)
"""The one's complement sum of the IPv4 header's fields that are the same in every SYN."""
_TCP_CONSTANT = (SERVER >> 16) + (SERVER & 0xFFFF) + 6 + 20 + SERVER_PORT + 0x5002 + 64240
"""Likewise for the TCP checksum: pseudo-header and header fields other than source and sequence."""


def _checksum(total: int) -> int:
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def client(index: int) -> tuple[str, int]:
    """Source address and port of SYN number ``index``."""
    return socket.inet_ntoa((FIRST_CLIENT + index).to_bytes(4, "big")), 1024 + index % 64000


def write_syn_flood(path: Path, count: int) -> Path:
    """A classic pcap file of ``count`` SYNs to ``198.51.100.1:80``, each from another client."""
    output = bytearray(struct.pack("!IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    base = len(output)
    size = _RECORD.size
    output.extend(bytes(size * count))
    pack_into = _RECORD.pack_into
    for index in range(count):
        source = FIRST_CLIENT + index
        port = 1024 + index % 64000
        seq = (ISN + index * 7919) & 0xFFFFFFFF
        address_sum = (source >> 16) + (source & 0xFFFF)
        micros = index * STEP_US
        pack_into(
            output,
            base + index * size,
            T0 + micros // 1_000_000,
            micros % 1_000_000,
            FRAME_LENGTH,
            FRAME_LENGTH,
            MAC_SERVER,
            MAC_CLIENT,
            0x0800,
            0x45,
            0,
            40,
            0,
            0x4000,  # don't fragment
            64,
            6,
            _checksum(_IP_CONSTANT + address_sum),
            source,
            SERVER,
            port,
            SERVER_PORT,
            seq,
            0,
            0x50,
            0x02,  # SYN
            64240,
            _checksum(_TCP_CONSTANT + address_sum + port + (seq >> 16) + (seq & 0xFFFF)),
            0,
        )
    path.write_bytes(output)
    return path


@dataclass
class FloodRun:
    """What one ``flowpipe run`` over a SYN flood gave."""

    returncode: int
    stderr: str
    seconds: float
    peak_rss: int
    """Bytes: the process's ``ru_maxrss``."""
    cpu_seconds: float = 0.0
    records: int = 0
    end_reasons: Counter[str] = field(default_factory=Counter)
    mismatches: list[tuple[int, tuple[object, ...]]] = field(default_factory=list)
    """(index, what the record said) of the first records that are not the expected final
    record of SYN number ``index``'s flow."""

    @property
    def summary(self) -> dict[tuple[str, str], dict[str, int]]:
        return parse_summary(self.stderr)


def run_flood(folder: Path, syns: int, cap: int) -> FloodRun:
    """``flowpipe run`` over a flood of ``syns`` SYNs with both caps at ``cap``, checking each record
    as it comes."""
    capture = write_syn_flood(folder / "flood.pcap", syns)
    pipeline = folder / "pipeline.yml"
    pipeline.write_text(
        f"inputs:\n  - type: pcap\n    files: [{capture.name}]\n"
        "decoders:\n"
        f"  - type: ip\n    flows: {{max_flows: {cap}}}\n"
        f"  - type: tcp\n    max_connections: {cap}\n    max_memory: 16MiB\n"
        "outputs:\n  - type: stdout\n    codec: json\n"
    )
    peak_file = folder / "peak-rss.txt"
    started = time.monotonic()
    flowpipe = (sys.executable, "-m", "flowpipe", "run", "-c", str(pipeline), "--no-progress")
    with (folder / "stderr.txt").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-S", "-c", MEASURE, str(peak_file), *flowpipe],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=folder,
            start_new_session=True,
        )
    watchdog = threading.Timer(RUN_TIMEOUT, os.killpg, (process.pid, signal.SIGKILL))
    watchdog.start()
    run = FloodRun(0, "", 0.0, 0)
    evicted = max(0, syns - cap)
    assert process.stdout is not None
    for index, line in enumerate(process.stdout):
        record = orjson.loads(line)
        reason = record["flow"]["end_reason"]
        run.end_reasons[reason] += 1
        source, destination = record["source"], record["destination"]
        seen = (
            record["event"]["dataset"],
            record["flow"]["final"],
            record["flow"]["state"],
            reason,
            source["ip"],
            source["port"],
            source["packets"],
            source["bytes"],
            destination["ip"],
            destination["port"],
            destination["packets"],
        )
        address, port = client(index)
        expected = (
            "flow",
            True,
            "S0",
            "evicted" if index < evicted else "end_of_input",
            address,
            port,
            1,
            FRAME_LENGTH,
            "198.51.100.1",
            SERVER_PORT,
            0,
        )
        if seen != expected and len(run.mismatches) < 5:
            run.mismatches.append((index, seen))
        run.records += 1
    run.returncode = process.wait()
    watchdog.cancel()
    run.seconds = time.monotonic() - started
    if peak_file.exists():  # not when killed
        peak, cpu = peak_file.read_text().split()
        run.peak_rss, run.cpu_seconds = int(peak) * 1024, float(cpu)
    run.stderr = (folder / "stderr.txt").read_text()
    capture.unlink()
    return run


def mib(size: float) -> str:
    return f"{size / 2**20:.0f} MiB"


def test_the_generated_flood_is_what_tshark_reads(tmp_path: Path) -> None:
    """The packing is right: tshark decodes SYNs from the expected clients with good checksums."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (Debian package tshark)")
    capture = write_syn_flood(tmp_path / "flood.pcap", 2_000)
    result = subprocess.run(
        [
            tshark,
            *("-r", str(capture), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"),
            *("-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.srcport"),
            *("-e", "tcp.flags", "-e", "ip.checksum.status", "-e", "tcp.checksum.status"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 2_000
    assert {(row[3], row[4], row[5]) for row in rows} == {("0x0002", "1", "1")}  # SYN; checksums good
    for index in (0, 1, 1_999):
        assert (float(rows[index][0]), rows[index][1], int(rows[index][2])) == (
            pytest.approx(T0 + index * STEP_US / 1e6, abs=1e-6),
            *client(index),
        )


@pytest.mark.slow
def test_a_million_connection_syn_flood_stays_under_the_caps_memory_bound(tmp_path: Path) -> None:
    baseline = run_flood(tmp_path, BASELINE, CAP)
    assert baseline.returncode == 0, baseline.stderr
    assert (baseline.records, baseline.mismatches) == (BASELINE, [])
    bound = baseline.peak_rss + CAP * (FLOW_BUDGET + CONNECTION_BUDGET)

    flood = run_flood(tmp_path, FLOOD, CAP)
    print(
        f"\nSYN flood: {FLOOD:,} SYNs with caps of {CAP:,} in {flood.seconds:.1f} s "
        f"({FLOOD / flood.seconds:,.0f} packets/s; {flood.cpu_seconds:.1f} s of CPU); "
        f"peak RSS {mib(flood.peak_rss)}, bound {mib(bound)} "
        f"(baseline {mib(baseline.peak_rss)} on {BASELINE:,} SYNs)"
    )
    assert flood.returncode == 0, flood.stderr
    summary = flood.summary
    evicted = FLOOD - CAP
    assert summary[("decoder", "ip")] == {
        "in": FLOOD,
        "out": 2 * FLOOD,  # every SYN forwarded to tcp, and every flow's final record
        "flows": FLOOD,
        "flows_evicted": evicted,
    }
    assert summary[("decoder", "tcp")] == {
        "in": FLOOD,
        "out": FLOOD,  # one CLOSED per connection
        "closed.evicted": evicted,
        "closed.end_of_input": CAP,
        "dropped.max_connections": evicted,
    }
    assert summary[("output", "stdout")] == {"in": FLOOD, "out": FLOOD}
    assert flood.records == FLOOD
    assert flood.end_reasons == {"evicted": evicted, "end_of_input": CAP}
    assert flood.mismatches == []
    assert flood.peak_rss < bound

    comparison = run_flood(tmp_path, COMPARISON, UNCAPPED)
    print(
        f"without caps: {COMPARISON:,} SYNs in {comparison.seconds:.1f} s, "
        f"peak RSS {mib(comparison.peak_rss)}"
    )
    assert comparison.returncode == 0, comparison.stderr
    assert (comparison.records, comparison.mismatches) == (COMPARISON, [])
    assert comparison.end_reasons == {"end_of_input": COMPARISON}
    assert comparison.peak_rss > bound
