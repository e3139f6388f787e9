"""Where flowpipe's time goes, per stage: ``python benchmarks/profile.py [--case NAME] [--packets N]``.

Runs one benchmark pipeline (``run.py``'s, default ``flowpipe-full`` on the whole corpus; ``--packets``
takes the corpus's first N packets instead) under py-spy (a sampling profiler, from the peers
environment that ``run.py`` installs), counting only the samples of the thread that holds the GIL
(``--gil``): flowpipe's threads share one core's worth of Python, so those samples are where the
time goes. Each sample is charged to the stage of its innermost frame in flowpipe's code (frames of
the standard library and other packages count for the flowpipe function that called them: the
``ipaddress`` calls of the HTTP analyzer count for the HTTP analyzer); samples outside the
pipeline's threads are start-up, configuration and the end-of-run summary. Prints markdown
tables: per stage, per thread, and the functions with the most samples of their own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from cases import CACHE, DECODERS, OUTPUT_EVENTS, PEERS, RAW_CLIENTS, prepared
from run import ensure_peers

STAGES = (
    ("plugins/inputs/", "pcap read (input thread)"),
    ("bench_plugins.py", "benchmark input / sink"),
    ("flowpipe/queues.py", "queues (put/get, batch sizes)"),
    ("plugins/decoders/protocols/http.py", "analyzer: http"),
    ("plugins/decoders/protocols/dns.py", "analyzer: dns"),
    ("plugins/decoders/protocols/tls", "analyzer: tls"),
    ("plugins/decoders/protocols/x509.py", "analyzer: tls"),
    ("plugins/decoders/protocols/smtp", "analyzer: smtp"),
    ("plugins/decoders/protocols/", "analyzer: other"),
    ("flowpipe/transactions.py", "transactions (correlation, common fields)"),
    ("flowpipe/analyzer.py", "analyzer base (stream buffers)"),
    ("plugins/decoders/protocol.py", "protocol decoder (routing, detection)"),
    ("plugins/decoders/tcp.py", "tcp reassembly"),
    ("plugins/decoders/reassembly.py", "tcp reassembly"),
    ("plugins/decoders/seq.py", "tcp reassembly"),
    ("plugins/decoders/flows.py", "flows (table, records)"),
    ("plugins/decoders/community_id.py", "flows (table, records)"),
    ("plugins/decoders/", "ip decode (link, ip, transport headers)"),
    ("flowpipe/codecs.py", "JSON encoding (orjson)"),
    ("plugins/outputs/file.py", "file output (write)"),
    ("plugins/outputs/kafka.py", "kafka output"),
    ("plugins/outputs/", "bulk output (opensearch)"),
    ("flowpipe/pipeline.py", "pipeline (threads, hand-over)"),
    ("flowpipe/metrics.py", "counters"),
)
"""(path fragment, stage): the first match for a sample's innermost matching frame decides."""
HELPERS = ("flowpipe/event.py", "flowpipe/stage.py")
"""flowpipe modules whose time counts for their caller (format_timestamp, Processor.apply...)."""
THREADS = (
    ("Pipeline._work", "worker (decoders, processors)"),
    ("Pipeline._read", "input"),
    ("_OutputRunner.run", "output"),
)


MAIN_THREAD = "main thread: start-up (imports, configuration), open, summary"


def stage_of(frames: list[str]) -> str:
    """The stage of a sample of one of the pipeline's threads."""
    for frame in reversed(frames):
        location = frame.rpartition("(")[2]
        if any(helper in location for helper in HELPERS):
            continue
        for fragment, stage in STAGES:
            if fragment in location:
                return stage
    return "other"


def thread_of(frames: list[str]) -> str:
    for marker, name in THREADS:
        if any(frame.startswith(marker + " ") for frame in frames):
            return name
    return MAIN_THREAD


def analyse(raw: Path, rate: int) -> str:
    stages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = thread_of(frames)
        threads[thread] += count
        stages[stage_of(frames) if thread != MAIN_THREAD else MAIN_THREAD] += count
        own[frames[-1]] += count
    if not total:
        return "no samples"

    def table(title: str, counts: Counter[str], limit: int | None = None) -> list[str]:
        rows = [f"| {title} | samples | share | seconds |", "| --- | ---: | ---: | ---: |"]
        rows += [
            f"| {name} | {count:,} | {100 * count / total:.1f}% | {count / rate:.1f} |"
            for name, count in counts.most_common(limit)
        ]
        return rows

    lines = [
        f"{total:,} samples with the GIL held, at {rate} per second ({total / rate:.1f} s of Python).",
        "",
    ]
    lines += [*table("stage", stages), "", *table("thread", threads), ""]
    lines += table("function (own samples, line)", own, 25)
    return "\n".join(lines)


def slice_corpus(corpus: Path, packets: int, target: Path) -> Path:
    """The first ``packets`` records of a classic pcap file."""
    with corpus.open("rb") as source, target.open("wb") as out:
        header = source.read(24)
        order = "little" if header[:4] == b"\xd4\xc3\xb2\xa1" else "big"
        out.write(header)
        for _ in range(packets):
            record = source.read(16)
            if len(record) < 16:
                break
            out.write(record + source.read(int.from_bytes(record[8:12], order)))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case",
        default="flowpipe-full",
        choices=[*DECODERS, *(name for name in OUTPUT_EVENTS if name not in RAW_CLIENTS)],
    )
    parser.add_argument("--packets", type=int, help="profile the first N packets only (default: all)")
    parser.add_argument("--corpus", type=Path, default=CACHE / "corpus.pcap")
    parser.add_argument("--rate", type=int, default=100, help="samples per second (default 100)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks in this file")
    args = parser.parse_args()
    ensure_peers(lambda message: print(message, file=sys.stderr))
    py_spy = PEERS / "bin" / "py-spy"
    if not py_spy.exists():
        print(f"py-spy is not installed in {PEERS}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fpb-profile-") as folder:
        work = Path(folder)
        corpus = args.corpus.expanduser().resolve()
        if args.packets:
            corpus = slice_corpus(corpus, args.packets, work / "slice.pcap")
        raw = args.raw or work / "stacks.txt"
        with prepared(args.case, corpus, work) as config:
            command = [
                str(py_spy), "record", "--gil", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--",
                sys.executable, "-m", "flowpipe", "run", "-c", str(config), "--no-progress",
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True)
        summary = [line for line in result.stderr.splitlines() if line.startswith("flowpipe: finished")]
        if result.returncode != 0 or not raw.exists():
            print(result.stderr[-3000:], file=sys.stderr)
            return 1
        print(
            f"Profile of {args.case} on {corpus.name}"
            + (f" ({args.packets:,} packets)" if args.packets else "")
        )
        print(summary[0] if summary else "", end="\n\n")
        print(analyse(raw, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
