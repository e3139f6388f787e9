"""The benchmark's report: medians over the runs, the targets of issue 7, the markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from typing import Any

from cases import DESCRIPTIONS, OUTPUT_EVENTS, PACKET_CASES, PEERS, SAMPLE_EVENTS, Bench, Measured


def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version()}
    for name, command in (
        ("flowpipe", [sys.executable, "-c", "import flowpipe; print(flowpipe.__version__)"]),
        ("pcapy-ng", [sys.executable, "-c", "import importlib.metadata as m; print(m.version('pcapy-ng'))"]),
        ("tshark", ["tshark", "--version"]),
        ("nfstream", [str(PEERS / "bin" / "python"), "-c", "import nfstream; print(nfstream.__version__)"]),
    ):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            first = result.stdout.strip().splitlines()[0] if result.returncode == 0 else "-"
            versions[name] = first.split(" (Git")[0]  # tshark: "TShark (Wireshark) 4.0.17 (Git v4.0.17 ...)."
        except (OSError, IndexError):
            versions[name] = "-"
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "versions": versions}


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarise(bench: Bench, name: str, runs: list[Measured]) -> dict[str, Any]:
    """Medians over the runs of one case, with the rates."""
    row: dict[str, Any] = {
        "wall_s": median([run.wall_s for run in runs]),
        "cpu_s": median([run.cpu_s for run in runs]),
        "peak_rss_mb": median([run.peak_rss_bytes / 2**20 for run in runs]),
        "runs": len(runs),
    }
    if name in PACKET_CASES:
        row["packets_per_s"] = median([bench.corpus_packets / run.wall_s for run in runs])
        row["mb_per_s"] = median([bench.corpus_bytes / 1e6 / run.wall_s for run in runs])
        row["packets_read"] = runs[0].packets
        if runs[0].events is not None:
            row["events"] = runs[0].events
            row["events_per_s"] = median([run.events / run.wall_s for run in runs if run.events is not None])
    elif name in OUTPUT_EVENTS:
        row["events"] = runs[0].events
        row["elapsed_s"] = median([run.elapsed_s for run in runs])
        row["events_per_s"] = median(
            [run.events / run.elapsed_s for run in runs if run.events and run.elapsed_s]
        )
        row["sample_bytes_per_event"] = runs[0].extra.get("sample_bytes_per_event")
    elif name == "idle-memory":
        row["bytes_per_connection"] = median([run.extra["bytes_per_connection"] for run in runs])
        row["connections"] = runs[0].extra["connections"]
    row["extra"] = runs[0].extra
    return row


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def targets(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL/-) for each target of issue 7."""
    full = rows.get("flowpipe-full", {})
    pps = full.get("packets_per_s")

    def check(ok: bool | None) -> str:
        return "-" if ok is None else ("PASS" if ok else "FAIL")

    def ratio(peer: str) -> float | None:
        other = rows.get(peer, {}).get("packets_per_s")
        return pps / other if pps and other else None

    result = [
        (
            "full pipeline, 1 process: >= 250,000 packets/s",
            number(pps),
            check(pps >= 250_000 if pps else None),
        )
    ]
    for peer, factor in (("nfstream", 2), ("tshark", 15)):
        value = ratio(peer)
        result.append(
            (f"full pipeline >= {factor}x {peer}", "-" if value is None else f"{value:.2f}x",
             check(value >= factor if value is not None else None))
        )  # fmt: skip
    workers = rows.get("flowpipe-full-2w", {})
    speedup = workers["packets_per_s"] / pps if pps and workers.get("packets_per_s") else None
    same = workers.get("events") == full.get("events")
    result.append(("2 workers >= 1.7x 1 process",
                   "-" if speedup is None else f"{speedup:.2f}x ({'same' if same else 'DIFFERENT'} events)",
                   check(speedup >= 1.7 and same if speedup is not None else None)))  # fmt: skip
    peak = full.get("peak_rss_mb")
    result.append(("peak memory on the corpus <= 400 MB", f"{number(peak)} MB" if peak else "-",
                   check(peak <= 400 if peak else None)))  # fmt: skip
    idle = rows.get("idle-memory", {}).get("bytes_per_connection")
    result.append(("memory per idle tracked connection <= 1 KB", f"{number(idle)} B" if idle else "-",
                   check(idle <= 1024 if idle else None)))  # fmt: skip
    for name, label, goal in (
        ("output-file", "file output >= 300,000 events/s", 300_000),
        ("output-kafka", "Kafka output >= 200,000 events/s", 200_000),
        ("output-elasticsearch", "Elasticsearch bulk >= 50,000 events/s", 50_000),
    ):
        rate = rows.get(name, {}).get("events_per_s")
        result.append((label, number(rate), check(rate >= goal if rate else None)))
    return result


def render(report: dict[str, Any]) -> str:
    """The report as markdown: the context, the packet cases, the outputs, memory, the targets."""
    rows, corpus, info = report["rows"], report["corpus"], report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    lines = [
        f"Run {report['started']}, {report['runs']} run(s) per case (medians); corpus {corpus['path']}: "
        f"{corpus['packets']:,} packets, {corpus['bytes'] / 1e6:,.0f} MB.",
        f"Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}; {versions}. "
        f"Load average (1 min) at start {report['load'][0]:.2f}, at end {report['load'][1]:.2f}.",
    ]
    lines += packet_table(rows) + output_table(rows)
    if "idle-memory" in rows:
        row = rows["idle-memory"]
        lines += [
            "",
            f"Idle connections: {row['connections']:,} established TCP connections held by ip + tcp + "
            f"protocol: {number(row['bytes_per_connection'])} bytes each (RSS growth / connections).",
        ]
    lines += ["", "| target (issue 7) | measured | |", "| --- | ---: | --- |"]
    lines += [f"| {target} | {value} | {verdict} |" for target, value, verdict in targets(rows)]
    lines += [f"\n{name}: {reason}" for name, reason in report["unavailable"].items()]
    return "\n".join(lines)


def packet_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "| case | what | wall s | CPU s | packets/s | events | events/s | MB/s | peak RSS MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in (name for name in PACKET_CASES if name in rows):
        row = rows[name]
        cells = (
            name,
            DESCRIPTIONS[name],
            number(row["wall_s"], 1),
            number(row["cpu_s"], 1),
            number(row["packets_per_s"]),
            number(row.get("events")),
            number(row.get("events_per_s")),
            number(row["mb_per_s"], 1),
            number(row["peak_rss_mb"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    full = rows.get("flowpipe-full", {}).get("packets_per_s")
    ratios = [
        f"{peer} {full / rows[peer]['packets_per_s']:.2f}x"
        for peer in ("pcapy", "flowpipe-read", "nfstream", "tshark")
        if full and peer in rows
    ]
    if ratios:
        lines += ["", "flowpipe full pipeline, packets/s relative to: " + ", ".join(ratios) + "."]
    return lines


def output_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    names = [name for name in OUTPUT_EVENTS if name in rows]
    if not names:
        return []
    lines = [
        "",
        "| case | output | events | s | events/s | peak RSS MB |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        row = rows[name]
        cells = (
            name,
            DESCRIPTIONS[name],
            number(row["events"]),
            number(row["elapsed_s"], 2),
            number(row["events_per_s"]),
            number(row["peak_rss_mb"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    size = rows[names[0]].get("sample_bytes_per_event")
    lines += [
        "",
        f"Events: {SAMPLE_EVENTS:,} of the full pipeline's, {number(size)} bytes of JSON each on average.",
    ]
    return lines
