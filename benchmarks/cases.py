"""What the benchmark measures: the cases, the pipelines they run, and how one run is measured.

Each case is a function of a :class:`Bench` (the corpus, a work folder) returning a
:class:`Measured`: a program forked from ``measure.py`` (wall time, CPU time, peak RSS), with what
it counted. :func:`prepared` writes the pipeline file of a flowpipe case and starts the server it
writes to; ``profile_stages.py`` runs the same pipelines under a profiler.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_servers

HERE = Path(__file__).resolve().parent
CACHE = Path("~/.cache/flowpipe-bench").expanduser()
PEERS = CACHE / "peers"
PEER_PACKAGES = ("nfstream", "py-spy")
RUN_TIMEOUT = 1200
SAMPLE_EVENTS = 2_000
OUTPUT_EVENTS = {
    "output-file": 1_000_000,
    "output-kafka": 500_000,
    "kafka-raw": 500_000,
    "output-elasticsearch": 10_000,
    "elasticsearch-raw": 5_000,
    "output-bulk-sink": 200_000,
}
"""Events per output case (osmem indexes a few hundred of these events a second on this machine)."""
RAW_CLIENTS = ("kafka-raw", "elasticsearch-raw")
"""Output cases without flowpipe: the client library alone against the same server (its ceiling)."""
IDLE_CONNECTIONS = 100_000
TSHARK_FIELDS = (
    "frame.time_epoch", "ip.src", "ipv6.src", "tcp.srcport", "udp.srcport", "ip.dst", "ipv6.dst",
    "tcp.dstport", "udp.dstport",
    "http.request.method", "http.request.uri", "http.host", "http.response.code",
    "dns.id", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.a", "dns.aaaa",
    "tls.handshake.type", "tls.handshake.extensions_server_name", "tls.handshake.version",
    "smtp.req.command", "smtp.req.parameter", "smtp.response.code",
)  # fmt: skip
"""What flowpipe's analyzers report of each protocol, as tshark fields (one row per packet)."""
NFSTREAM = """
import sys
import nfstream
streamer = nfstream.NFStreamer(source=sys.argv[1], n_meters=1, statistical_analysis=False)
print(streamer.to_csv(path=sys.argv[2]))
"""
PCAPY_LOOP = """
import sys
import pcapy
reader = pcapy.open_offline(sys.argv[1])
packets = size = 0
while True:
    header, frame = reader.next()
    if header is None:
        break
    packets += 1
    size += len(frame)
print(packets, size)
"""
SUMMARY = re.compile(r"^flowpipe: finished in ([\d.]+) s: ([\d,]+) packets read")
STAGE_LINE = re.compile(r"^  (input|decoder|processor|queue|output)\s+(\S+)\s+(.*)$")
FILE_OUTPUT = "  - type: file\n    path: {path}\n    rotate_every: 0\n    append: false\n"
PIPELINE = """inputs:
{inputs}decoders: {decoders}
outputs:
{outputs}plugins: [{plugins}]
metrics: {{period: 0}}
pipeline: {{shutdown_timeout: 10m, workers: {workers}}}
"""
PCAP_INPUT = "  - type: pcap\n    files: [{corpus}]\n"
DECODERS = {
    "flowpipe-read": "[]",
    "flowpipe-ip": "[{type: ip}, {type: bench_sink}]",
    "flowpipe-ip-tcp": "[{type: ip}, {type: tcp}]",
    "flowpipe-full": "[{type: ip}, {type: tcp}, {type: protocol}]",
    "flowpipe-full-2w": "[{type: ip}, {type: tcp}, {type: protocol}]",
}
WORKERS = {"flowpipe-full-2w": 2}
"""``pipeline.workers`` of the cases that run more than one decoding process."""
PACKET_CASES = (
    "pcapy",
    "flowpipe-read",
    "flowpipe-ip",
    "flowpipe-ip-tcp",
    "flowpipe-full",
    "flowpipe-full-2w",
    "tshark",
    "nfstream",
)
GROUPS = {
    "packets": PACKET_CASES,
    "memory": ("idle-memory",),
    "outputs": tuple(OUTPUT_EVENTS),
}
DESCRIPTIONS = {
    "pcapy": "pcapy-ng read loop (Python reader ceiling)",
    "flowpipe-read": "flowpipe: pcap input only -> discard",
    "flowpipe-ip": "flowpipe: ip + flows -> file",
    "flowpipe-ip-tcp": "flowpipe: ip + tcp + flows -> file",
    "flowpipe-full": "flowpipe: ip + tcp + protocol + flows -> file",
    "flowpipe-full-2w": "the same with pipeline.workers: 2",
    "tshark": "tshark -T fields (HTTP, DNS, TLS, SMTP fields) -> file",
    "nfstream": "nfstream (nDPI) flows, 1 meter -> CSV",
    "output-file": "file (NDJSON, no rotation)",
    "output-kafka": "kafka -> local Tansu (acks all, idempotent)",
    "output-elasticsearch": "opensearch -> local osmem-server (bulk of 1,600)",
    "output-bulk-sink": "opensearch -> bulk sink that stores nothing (the output's own ceiling; no target)",
    "kafka-raw": "confluent-kafka producer alone -> Tansu (the broker's ceiling; no target)",
    "elasticsearch-raw": "opensearch-py helpers.bulk alone -> osmem (the server's ceiling; no target)",
}


class UnavailableError(Exception):
    """A case cannot run on this machine (a program or package is missing)."""


@dataclass
class Measured:
    """One run of one case."""

    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    packets: int | None = None
    events: int | None = None
    elapsed_s: float | None = None
    """flowpipe's own running time (its summary), where it matters (output throughput)."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    corpus: Path
    work: Path
    corpus_packets: int
    corpus_bytes: int
    log: Callable[[str], None]

    def measure(self, name: str, command: list[str], stdout: Path | None = None) -> tuple[Measured, str, str]:
        """Run ``command`` under measure.py; its measurement, stdout (unless sent to ``stdout``), stderr."""
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        numbers = folder / "measure.json"
        numbers.unlink(missing_ok=True)
        out_path = stdout or folder / "stdout.txt"
        with out_path.open("wb") as out, (folder / "stderr.txt").open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-S", str(HERE / "measure.py"), str(numbers), *command],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=folder, start_new_session=True,
            )  # fmt: skip
            try:
                process.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise RuntimeError(f"{name}: no end after {RUN_TIMEOUT} s") from None
        stderr = (folder / "stderr.txt").read_text(errors="replace")
        if process.returncode != 0 or not numbers.exists():
            raise RuntimeError(f"{name} failed (exit status {process.returncode}):\n{stderr[-3000:]}")
        result = json.loads(numbers.read_text())
        text = "" if stdout else out_path.read_text(errors="replace")
        return Measured(result["wall_s"], result["cpu_s"], result["peak_rss_bytes"]), text, stderr

    def flowpipe(self, name: str) -> Measured:
        """Run case ``name``'s pipeline (its servers started first); counters from its summary."""
        with prepared(name, self.corpus, self.work / name) as config:
            measured, _, stderr = self.measure(
                name, [sys.executable, "-m", "flowpipe", "run", "-c", str(config), "--no-progress"]
            )
        summary = parse_summary(stderr)
        measured.packets = summary["packets"]
        measured.elapsed_s = summary["elapsed"]
        stages = summary["stages"]
        measured.events = sum(
            values.get("out", 0) for (kind, _), values in stages.items() if kind == "output"
        )
        measured.extra["stages"] = {f"{kind} {owner}": values for (kind, owner), values in stages.items()}
        return measured


def serving(name: str, folder: Path) -> AbstractContextManager[str | None]:
    """The server case ``name`` writes to, started fresh (its address), or nothing to start."""
    if name in ("output-kafka", "kafka-raw"):
        return bench_servers.tansu(folder, "bench")
    if name in ("output-elasticsearch", "elasticsearch-raw"):
        return bench_servers.osmem(folder)
    if name == "output-bulk-sink":
        return bench_servers.bulk_sink()
    return nullcontext()


@contextmanager
def prepared(name: str, corpus: Path, folder: Path) -> Iterator[Path]:
    """The pipeline file of flowpipe case ``name`` in ``folder``, with the server it writes to
    running until the context ends."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with serving(name, folder) as address:
            if name in DECODERS:
                inputs, decoders = PCAP_INPUT.format(corpus=corpus), DECODERS[name]
            else:
                sample, count = sample_path(corpus), OUTPUT_EVENTS[name]
                inputs = f"  - type: bench_events\n    path: {sample}\n    count: {count}\n"
                decoders = "[]"
            if name == "flowpipe-read":
                output = "  - type: discard\n"
            elif name == "output-kafka":
                output = f"  - type: kafka\n    hosts: ['{address}']\n    topic: bench\n"
            elif name in ("output-elasticsearch", "output-bulk-sink"):
                output = f"  - type: opensearch\n    hosts: ['{address}']\n"
            else:
                output = FILE_OUTPUT.format(path=folder / "events.ndjson")
            config = folder / "pipeline.yml"
            plugins = HERE / "bench_plugins.py"
            config.write_text(
                PIPELINE.format(
                    inputs=inputs,
                    decoders=decoders,
                    outputs=output,
                    plugins=plugins,
                    workers=WORKERS.get(name, 1),
                )
            )
            yield config
    except bench_servers.ServerUnavailableError as error:
        raise UnavailableError(str(error)) from None


def parse_summary(stderr: str) -> dict[str, Any]:
    """flowpipe's end-of-run summary: running time, packets read, counters per stage."""
    elapsed = packets = None
    stages: dict[tuple[str, str], dict[str, int]] = {}
    for line in stderr.splitlines():
        if match := SUMMARY.match(line):
            elapsed, packets = float(match.group(1)), int(match.group(2).replace(",", ""))
        elif match := STAGE_LINE.match(line):
            kind, owner, rest = match.groups()
            rest = rest.split("  dropped ", 1)[0]
            stages[(kind, owner)] = {
                name: int(value.replace(",", "")) for name, value in re.findall(r"(\S+) +([\d,]+)", rest)
            }
    if elapsed is None:
        raise RuntimeError(f"no summary in flowpipe's output:\n{stderr[-3000:]}")
    return {"elapsed": elapsed, "packets": packets, "stages": stages}


# -- cases ---------------------------------------------------------------------------------------


def pcapy_case(bench: Bench) -> Measured:
    measured, stdout, _ = bench.measure("pcapy", [sys.executable, "-c", PCAPY_LOOP, str(bench.corpus)])
    measured.packets = int(stdout.split()[0])
    return measured


def flowpipe_case(name: str) -> Callable[[Bench], Measured]:
    def run(bench: Bench) -> Measured:
        measured = bench.flowpipe(name)
        out = bench.work / name / "events.ndjson"
        if name == "flowpipe-full" and out.exists():
            measured.extra["datasets"] = keep_sample(out, sample_path(bench.corpus))
        out.unlink(missing_ok=True)
        return measured

    return run


def tshark_case(bench: Bench) -> Measured:
    tshark = shutil.which("tshark")
    if tshark is None:
        raise UnavailableError("tshark is not installed (Debian package tshark)")
    fields = [argument for name in TSHARK_FIELDS for argument in ("-e", name)]
    out = bench.work / "tshark" / "fields.tsv"
    (bench.work / "tshark").mkdir(parents=True, exist_ok=True)
    measured, _, _ = bench.measure(
        "tshark", [tshark, "-r", str(bench.corpus), "-n", "-T", "fields", *fields], out
    )
    with out.open("rb") as rows:
        measured.packets = sum(1 for _ in rows)
    out.unlink()
    return measured


def nfstream_case(bench: Bench) -> Measured:
    python = PEERS / "bin" / "python"
    if not python.exists():
        raise UnavailableError(f"nfstream is not installed in {PEERS}")
    out = bench.work / "nfstream" / "flows.csv"
    measured, stdout, _ = bench.measure(
        "nfstream", [str(python), "-c", NFSTREAM, str(bench.corpus), str(out)]
    )
    measured.events = int(stdout.split()[-1])
    measured.packets = bench.corpus_packets
    out.unlink(missing_ok=True)
    return measured


def idle_memory_case(bench: Bench) -> Measured:
    command = [sys.executable, str(HERE / "idle_memory.py"), "--connections", str(IDLE_CONNECTIONS),
               "--corpus", str(bench.corpus)]  # fmt: skip
    measured, stdout, _ = bench.measure("idle-memory", command)
    measured.extra.update(json.loads(stdout))
    return measured


def output_case(name: str) -> Callable[[Bench], Measured]:
    def run(bench: Bench) -> Measured:
        sample = sample_path(bench.corpus)
        if not sample.exists() or sample.stat().st_mtime < bench.corpus.stat().st_mtime:
            bench.log("making the sample of events (one full-pipeline run)")
            flowpipe_case("flowpipe-full")(bench)
        measured = raw_client(bench, name) if name in RAW_CLIENTS else flowpipe_case(name)(bench)
        measured.extra["sample_bytes_per_event"] = sample.stat().st_size / SAMPLE_EVENTS
        return measured

    return run


def raw_client(bench: Bench, name: str) -> Measured:
    folder = bench.work / name
    folder.mkdir(parents=True, exist_ok=True)
    count = str(OUTPUT_EVENTS[name])
    try:
        with serving(name, folder) as address:
            assert address is not None
            target = ["kafka", address, "bench"] if name == "kafka-raw" else ["opensearch", address]
            sample = sample_path(bench.corpus)
            command = [sys.executable, str(HERE / "raw_clients.py"), *target, str(sample), count]
            measured, stdout, _ = bench.measure(name, command)
    except bench_servers.ServerUnavailableError as error:
        raise UnavailableError(str(error)) from None
    result = json.loads(stdout)
    measured.events, measured.elapsed_s = result["events"], result["seconds"]
    return measured


def sample_path(corpus: Path) -> Path:
    """Where the output cases' events for ``corpus`` are kept: beside it."""
    return corpus.with_name(f"{corpus.stem}.events-sample.ndjson")


def keep_sample(path: Path, sample: Path) -> dict[str, int]:
    """Keep every n-th event of the full pipeline's output (``path``) in ``sample``, for the output
    cases; return the count of events per ``event.dataset``."""
    lines = path.read_bytes().splitlines()
    step = max(1, len(lines) // SAMPLE_EVENTS)
    sample.write_bytes(b"\n".join(lines[::step][:SAMPLE_EVENTS]) + b"\n")
    datasets: dict[str, int] = {}
    for line in lines:
        match = re.search(rb'"dataset":"([^"]+)"', line)
        name = match.group(1).decode() if match else "?"
        datasets[name] = datasets.get(name, 0) + 1
    return datasets


CASES: dict[str, Callable[[Bench], Measured]] = {
    "pcapy": pcapy_case,
    **{name: flowpipe_case(name) for name in DECODERS},
    "tshark": tshark_case,
    "nfstream": nfstream_case,
    "idle-memory": idle_memory_case,
    **{name: output_case(name) for name in OUTPUT_EVENTS},
}
