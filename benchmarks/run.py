"""flowpipe's benchmark: the same corpus through flowpipe and its peers, output throughput, targets.

Usage (from the repository, with flowpipe's environment; the corpus is built first if missing)::

    .venv/bin/python benchmarks/run.py [--runs N] [--only CASE,...] [--corpus PATH] [--markdown FILE]

Every measured program is started from ``measure.py`` (wall time, CPU time, peak RSS of that
process alone). Each case runs ``--runs`` times (default 3), rounds interleaved, and the table
shows medians. Packets/s and MB/s are the corpus's packets and bytes over the program's wall
time, start-up included, for flowpipe and its peers alike. Output throughput is events over the
pipeline's own running time (the ``finished in`` of flowpipe's summary: open and start-up
excluded). Results go to stdout (markdown) and to ``~/.cache/flowpipe-bench/results/``.

Cases (``--only`` takes names or the groups ``packets``, ``memory``, ``outputs``):

- ``pcapy``: a bare pcapy-ng read loop, the ceiling for a Python reader;
- ``flowpipe-read``: the pcap input alone (``decoders: []``, a ``discard`` output);
- ``flowpipe-ip``: ``ip`` (flow records, TCP/UDP packets forwarded to a ``bench_sink``) -> file;
- ``flowpipe-ip-tcp``: ``ip`` + ``tcp`` -> file (flow records);
- ``flowpipe-full``: ``ip`` + ``tcp`` + ``protocol`` (every analyzer) -> file: the headline;
- ``tshark``: ``tshark -T fields`` with the same HTTP, DNS, TLS and SMTP fields -> file;
- ``nfstream``: nfstream (nDPI) flows, one meter process -> CSV file;
- ``idle-memory``: bytes per idle tracked connection (``idle_memory.py``);
- ``output-file``, ``output-kafka``, ``output-elasticsearch``: pre-built events (a sample of the
  full pipeline's) through the file output, the kafka output to a local Tansu broker, and the
  opensearch output to a local osmem-server;
- ``kafka-raw``, ``elasticsearch-raw``: the same events sent by the client library alone
  (``raw_clients.py``), no flowpipe: what the server takes at most (no target);
- ``output-bulk-sink``: the opensearch output to a server that accepts every bulk request at once
  and stores nothing: the output's own ceiling (no target).

nfstream and py-spy are installed into their own virtual environment, ``~/.cache/flowpipe-bench/
peers`` (nfstream pins numpy and pandas versions flowpipe does not need). The cases are defined in
``cases.py``, the report (medians, targets, tables) in ``report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cases import (
    CACHE,
    CASES,
    GROUPS,
    HERE,
    PACKET_CASES,
    PEER_PACKAGES,
    PEERS,
    Bench,
    Measured,
    UnavailableError,
)
from report import machine, render, summarise, targets


def ensure_corpus(corpus: Path, log: Callable[[str], None]) -> None:
    if corpus.exists():
        return
    log(f"no corpus at {corpus}: building it (benchmarks/corpus.py, a few minutes)")
    subprocess.run([sys.executable, str(HERE / "corpus.py"), "--output", str(corpus)], check=True)


def ensure_peers(log: Callable[[str], None]) -> None:
    """A virtual environment with nfstream and py-spy (left as it is when it has them)."""
    python = PEERS / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([python, "-c", "import nfstream"], capture_output=True).returncode == 0
    ):
        return
    log(f"installing {', '.join(PEER_PACKAGES)} into {PEERS}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS)], check=True)
    result = subprocess.run(
        [python, "-m", "pip", "install", "-q", *PEER_PACKAGES], capture_output=True, text=True
    )
    if result.returncode != 0:
        log(f"could not install the peers: {result.stderr.strip()[-500:]}")


def corpus_packets(corpus: Path) -> int:
    manifest = corpus.with_suffix(".json")
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        if recorded.get("bytes") == corpus.stat().st_size:
            return int(recorded["packets"])
    count = 0
    with corpus.open("rb") as stream:
        order = "little" if stream.read(24)[:4] == b"\xd4\xc3\xb2\xa1" else "big"
        while record := stream.read(16):
            stream.seek(int.from_bytes(record[8:12], order), os.SEEK_CUR)
            count += 1
    return count


def selected(only: str | None) -> list[str]:
    if not only:
        return list(CASES)
    names: list[str] = []
    for part in only.split(","):
        part = part.strip()
        if part in GROUPS:
            names += GROUPS[part]
        elif part in CASES:
            names.append(part)
        else:
            raise SystemExit(f"unknown case {part!r}; cases: {', '.join(CASES)}; groups: {', '.join(GROUPS)}")
    return [name for name in CASES if name in names]


def rounds(names: list[str], runs: int) -> Iterator[tuple[int, str]]:
    for index in range(runs):
        for name in names:
            yield index, name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each case; the table shows medians")
    parser.add_argument("--only", help="comma-separated cases or groups (packets, memory, outputs)")
    parser.add_argument("--corpus", type=Path, default=CACHE / "corpus.pcap", help="default %(default)s")
    parser.add_argument("--markdown", type=Path, help="also write the report (markdown) to this file")
    parser.add_argument("--keep", action="store_true", help=f"keep the work folder ({CACHE / 'work'})")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    corpus = args.corpus.expanduser().resolve()
    ensure_corpus(corpus, log)
    names = selected(args.only)
    if "nfstream" in names:
        ensure_peers(log)
    work = CACHE / "work"
    shutil.rmtree(work, ignore_errors=True)
    bench = Bench(corpus, work, corpus_packets(corpus), corpus.stat().st_size, log)
    started, load_start = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()[0]
    measured: dict[str, list[Measured]] = {}
    unavailable: dict[str, str] = {}
    for index, name in rounds(names, args.runs):
        if name in unavailable:
            continue
        log(f"run {index + 1}/{args.runs}: {name} (load {os.getloadavg()[0]:.2f})")
        try:
            result = CASES[name](bench)
        except UnavailableError as reason:
            unavailable[name] = f"not run: {reason}"
            log(f"{name}: not run: {reason}")
            continue
        except RuntimeError as error:  # a run that failed or hung: the others still run
            unavailable[name] = f"failed: {str(error).splitlines()[0]} (see {work / name})"
            log(f"{name}: {error}")
            continue
        measured.setdefault(name, []).append(result)
        if result.packets is not None and name in PACKET_CASES and result.packets != bench.corpus_packets:
            log(f"warning: {name} read {result.packets:,} packets of {bench.corpus_packets:,}")
        rss = result.peak_rss_bytes / 2**20
        log(f"{name}: {result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU, peak RSS {rss:.0f} MB")
    report = {
        "started": started,
        "runs": args.runs,
        "load": (load_start, os.getloadavg()[0]),
        "corpus": {"path": str(corpus), "packets": bench.corpus_packets, "bytes": bench.corpus_bytes},
        "machine": machine(),
        "rows": {name: summarise(bench, name, runs) for name, runs in measured.items()},
        "unavailable": unavailable,
    }
    report["targets"] = targets(report["rows"])
    text = render(report)
    results = CACHE / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / f"{stamp}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (results / f"{stamp}.md").write_text(text + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    print(text)
    if not args.keep and not any(reason.startswith("failed") for reason in unavailable.values()):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
