"""Build the benchmark corpus: real programs talking across a veth pair, captured with tcpdump.

Usage (as root; about a million packets, a few minutes)::

    .venv/bin/python benchmarks/corpus.py [--output PATH] [--force] [--scale S]

The capture is written once to ``~/.cache/flowpipe-bench/corpus.pcap`` (``--output``); a second
run keeps it unless ``--force``. Beside it, ``corpus.json`` records what made it: every scenario
with its client's own count of requests, queries or sessions, the programs' versions, tcpdump's
packet statistics, and the packet count of the file. ``--scale`` multiplies every scenario's
volume (``0.02`` makes a small corpus to try the recipe quickly).

Two network namespaces (client and server) are joined by a veth pair with fixed MACs and static
neighbour entries (no ARP, no neighbour discovery), IPv4 192.0.2.1/.2 and IPv6 2001:db8::1/::2,
checksum and segmentation offloads off (every frame on the wire is at most the MTU and carries
correct checksums). tcpdump captures on the client's end. The scenarios, in order:

============== ==================================== ===============================================
scenario       server                               client
============== ==================================== ===============================================
http-keepalive nginx (1 worker), port 80            wrk, 16 keep-alive connections, 4 paths
http-close     nginx                                wrk with ``Connection: close`` (a connection per
                                                    request)
http-ipv6      nginx on [2001:db8::2]:80            wrk, 8 keep-alive connections
dns            dnsmasq, local zone example.test     dnsperf (UDP), 8 names x 5 types, IPv4 and IPv6
tls-s_time     openssl s_server -WWW, port 443      openssl s_time -new (TLS 1.2, then TLS 1.3)
tls-sni        openssl s_server -WWW                Python ssl, SNI and ALPN (clients.py)
smtp           python -m aiosmtpd, port 25          Python smtplib sessions (clients.py)
============== ==================================== ===============================================

Programs: Debian's ``nginx-light wrk dnsperf dnsmasq-base tcpdump openssl iproute2 ethtool`` and
the ``aiosmtpd`` Python package (flowpipe's ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

DEFAULT_OUTPUT = Path("~/.cache/flowpipe-bench/corpus.pcap").expanduser()
HERE = Path(__file__).resolve().parent
CLIENT_V4, SERVER_V4 = "192.0.2.1", "192.0.2.2"
CLIENT_V6, SERVER_V6 = "2001:db8::1", "2001:db8::2"
CLIENT_MAC, SERVER_MAC = "02:00:00:fb:00:01", "02:00:00:fb:00:02"
TLS_NAME = "www.example.com"
CAPTURE_FILTER = f"host {SERVER_V4} or host {SERVER_V6}"
PROGRAMS = {
    "nginx": "nginx-light",
    "wrk": "wrk",
    "dnsperf": "dnsperf",
    "dnsmasq": "dnsmasq-base",
    "tcpdump": "tcpdump",
    "openssl": "openssl",
    "ip": "iproute2",
    "ethtool": "ethtool",
    "ss": "iproute2",
}
DNS_NAMES = ("www", "mail", "api", "cdn", "static", "login", "missing", "")
DNS_TYPES = ("A", "AAAA", "MX", "TXT", "A")
WRK_SCRIPT = """
local limit = tonumber(os.getenv("BENCH_REQUESTS"))
local marker = os.getenv("BENCH_MARKER")
local paths = {"/", "/about.txt", "/16k.bin", "/missing.html", "/api/items?page=2"}
local sent, done = 0, 0
request = function()
  sent = sent + 1
  return wrk.format(nil, paths[(sent % #paths) + 1])
end
response = function(status, headers, body)
  done = done + 1
  if done == limit then
    local file = io.open(marker, "w")
    file:write(done)
    file:close()
    wrk.thread:stop()
  end
end
"""
"""Rotates over five paths (nginx answers 680, 42 and 16,384 bytes, then 404 twice); after the
``BENCH_REQUESTS``-th response it writes ``BENCH_MARKER`` and stops the thread (the builder then
ends wrk with SIGINT: wrk itself would wait out its ``-d`` duration)."""


@dataclass(frozen=True)
class Scale:
    """Volumes of the scenarios (at ``--scale 1``: about a million packets in all)."""

    factor: float

    def __call__(self, amount: int) -> int:
        return max(1, round(amount * self.factor))


def log(message: str) -> None:
    print(f"[corpus] {message}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


class Namespaces:
    """The client and server namespaces and the veth pair between them."""

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.client, self.server = f"fpb-cli-{token}", f"fpb-srv-{token}"
        self.client_device, self.server_device = f"fpbc{token}", f"fpbs{token}"

    def in_client(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.client, *args]

    def in_server(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.server, *args]

    def create(self) -> None:
        run("ip", "netns", "add", self.client)
        run("ip", "netns", "add", self.server)
        run(
            "ip", "link", "add", self.client_device, "address", CLIENT_MAC, "netns", self.client, "type",
            "veth", "peer", "name", self.server_device, "address", SERVER_MAC, "netns", self.server,
        )  # fmt: skip
        sides = (
            (self.client, self.client_device, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, SERVER_MAC),
            (self.server, self.server_device, SERVER_V4, SERVER_V6, CLIENT_V4, CLIENT_V6, CLIENT_MAC),
        )
        for namespace, device, v4, v6, peer_v4, peer_v6, peer_mac in sides:
            inside = ("ip", "netns", "exec", namespace)
            run("ip", "-n", namespace, "link", "set", "lo", "up")
            run("ip", "-n", namespace, "link", "set", device, "addrgenmode", "none")
            run(*inside, "sysctl", "-qw", f"net.ipv6.conf.{device}.router_solicitations=0")
            for feature in ("tx", "tso", "gso", "gro"):  # frames of at most the MTU, correct checksums
                run(*inside, "ethtool", "-K", device, feature, "off", check=False)
            run("ip", "-n", namespace, "addr", "add", f"{v4}/24", "dev", device)
            run("ip", "-n", namespace, "addr", "add", f"{v6}/64", "dev", device, "nodad")
            run("ip", "-n", namespace, "link", "set", device, "up")
            for peer in (peer_v4, peer_v6):
                run("ip", "-n", namespace, "neigh", "replace", peer, "lladdr", peer_mac, "nud", "permanent",
                    "dev", device)  # fmt: skip
        offloads = run(*self.in_client("ethtool", "-k", self.client_device)).stdout
        if "tcp-segmentation-offload: on" in offloads:
            raise RuntimeError("TSO could not be turned off on the veth pair: frames would exceed the MTU")

    def delete(self) -> None:
        for namespace in (self.client, self.server):
            run("ip", "netns", "del", namespace, check=False)


class Processes:
    """Background programs, ended (SIGTERM, then SIGKILL) when the build ends."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_file = (self.work / f"{name}.log").open("wb")
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
        finally:
            if process in self.running:
                self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process, timeout=5)


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def listening(namespaces: Namespaces, kind: str, address: str, port: int) -> bool:
    """Whether the server namespace has a socket bound to ``address:port`` (``kind``: t or u)."""
    result = run(*namespaces.in_server("ss", f"-Hn{kind}l", f"src [{address}]:{port}"), check=False)
    return bool(result.stdout.strip())


def write_files(work: Path) -> Path:
    """The web root, nginx's configuration, the TLS certificate and the wrk script; the web root."""
    www = work / "www"
    (www / "api").mkdir(parents=True)
    (www / "index.html").write_text(
        "<!DOCTYPE html>\n<html><head><title>flowpipe benchmark</title></head>\n<body>\n"
        + "<p>flowpipe benchmark page served by nginx inside a network namespace.</p>\n" * 8
        + "</body></html>\n"
    )
    (www / "about.txt").write_text("flowpipe benchmark: a small text resource\n")
    (www / "16k.bin").write_bytes(bytes(range(256)) * 64)
    (work / "nginx.conf").write_text(
        f"""
user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    types {{ text/html html; text/plain txt; }}
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen {SERVER_V4}:80 reuseport backlog=4096;
        listen [{SERVER_V6}]:80 backlog=4096;
        root {www};
        location / {{ try_files $uri $uri/index.html =404; }}
    }}
}}
"""
    )
    run(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(work / "tls.key"), "-out", str(work / "tls.crt"), "-days", "3650",
        "-subj", f"/O=flowpipe benchmark/CN={TLS_NAME}", "-addext", f"subjectAltName=DNS:{TLS_NAME}",
    )  # fmt: skip
    (work / "wrk.lua").write_text(WRK_SCRIPT)
    queries = [f"{name + '.' if name else ''}example.test {kind}" for name in DNS_NAMES for kind in DNS_TYPES]
    (work / "queries.txt").write_text("\n".join(queries) + "\n")
    return www


def start_servers(namespaces: Namespaces, processes: Processes, work: Path, www: Path) -> None:
    srv = namespaces.in_server
    processes.start("nginx", srv("nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"))
    records = [
        f"--host-record={name}.example.test,192.0.2.{80 + index},2001:db8::{80 + index:x}"
        for index, name in enumerate(DNS_NAMES[:-2])
    ]
    processes.start(
        "dnsmasq",
        srv(
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", f"--pid-file={work}/dnsmasq.pid",
            "--user=root", "--group=root", "--no-resolv", "--no-hosts", "--bind-interfaces",
            f"--listen-address={SERVER_V4}", f"--listen-address={SERVER_V6}", "--except-interface=lo",
            "--port=53", "--local=/example.test/", "--cache-size=10000",
            *records,
            "--mx-host=example.test,mail.example.test,10",
            "--txt-record=example.test,v=spf1 mx -all",
            "--txt-record=www.example.test,flowpipe benchmark",
        ),
    )  # fmt: skip
    processes.start(
        "s_server",
        srv(
            "sh", "-c", f'cd "{www}" && exec openssl s_server -accept {SERVER_V4}:443 -cert "{work}/tls.crt" '
            f'-key "{work}/tls.key" -WWW -alpn http/1.1 -quiet',
        ),
    )  # fmt: skip
    processes.start("aiosmtpd", srv(sys.executable, "-m", "aiosmtpd", "-n", "-l", f"{SERVER_V4}:25"))
    for kind, address, port in (
        ("t", SERVER_V4, 80),
        ("t", SERVER_V6, 80),
        ("u", SERVER_V4, 53),
        ("u", SERVER_V6, 53),
        ("t", SERVER_V4, 443),
        ("t", SERVER_V4, 25),
    ):
        wait_until(f"a server on {address} port {port}", partial(listening, namespaces, kind, address, port))


@contextmanager
def capturing(namespaces: Namespaces, processes: Processes, path: Path) -> Iterator[dict[str, int]]:
    """tcpdump on the client's veth end, writing ``path``; yields the statistics it reports at its end."""
    stats: dict[str, int] = {}
    tcpdump = processes.start(
        "tcpdump",
        namespaces.in_client(
            "tcpdump", "-i", namespaces.client_device, "-n", "-s", "0", "-B", "262144", "--immediate-mode",
            "-Z", "root", "-w", str(path), CAPTURE_FILTER,
        ),
    )  # fmt: skip
    log_path = processes.work / "tcpdump.log"
    wait_until("tcpdump", lambda: path.exists() and "listening on" in log_path.read_text())
    try:
        yield stats
    finally:
        time.sleep(1.0)  # the last FINs and ACKs
        processes.stop(tcpdump, signal.SIGINT, timeout=30)
        for line in log_path.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0].isdigit() and words[1] == "packets":
                stats[" ".join(words[2:])] = int(words[0])


def wrk(namespaces: Namespaces, work: Path, name: str, url: str, requests: int, connections: int,
        *extra: str) -> dict[str, object]:  # fmt: skip
    """Run wrk until ``requests`` responses came back; return what it reported."""
    marker = work / f"{name}.done"
    env = {**os.environ, "BENCH_REQUESTS": str(requests), "BENCH_MARKER": str(marker)}
    command = namespaces.in_client(
        "wrk", "-t", "1", "-c", str(connections), "-d", "600s", "--timeout", "5s",
        "-s", str(work / "wrk.lua"), *extra, url,
    )  # fmt: skip
    output = work / f"{name}.out"
    with output.open("wb") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(f"wrk {name}", lambda: marker.exists() or process.poll() is not None, timeout=600)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    report = output.read_text()
    summary = next((line.strip() for line in report.splitlines() if "requests in" in line), "")
    errors = next((line.strip() for line in report.splitlines() if "errors" in line.lower()), "")
    return {"requests": requests, "wrk": summary, "errors": errors}


def dnsperf(namespaces: Namespaces, work: Path, server: str, rounds: int) -> dict[str, object]:
    """dnsperf over UDP: ``rounds`` passes over the query file, at most 20,000 queries/s."""
    result = run(
        *namespaces.in_client(
            "dnsperf", "-s", server, "-d", str(work / "queries.txt"), "-n", str(rounds), "-c", "4",
            "-q", "64", "-Q", "20000", "-t", "2",
        ),
        timeout=600,
    )  # fmt: skip
    numbers = {}
    for line in result.stdout.splitlines():
        label, _, value = line.strip().partition(":")
        if label in ("Queries sent", "Queries completed", "Queries lost"):
            numbers[label.lower().replace(" ", "_")] = int(value.split()[0])
    return numbers


def s_time(namespaces: Namespaces, version: str, seconds: int) -> dict[str, object]:
    """``openssl s_time -new`` for ``seconds``: full handshakes, each fetching /index.html."""
    result = run(
        *namespaces.in_client(
            "openssl", "s_time", "-connect", f"{SERVER_V4}:443", "-new", version, "-time", str(seconds),
            "-www", "/index.html",
        ),
        timeout=seconds + 60,
    )  # fmt: skip
    line = next((line for line in result.stdout.splitlines() if "connections in" in line), "")
    return {"handshakes": int(line.split()[0]) if line else 0, "s_time": line.strip()}


def python_client(namespaces: Namespaces, *args: str) -> int:
    result = run(*namespaces.in_client(sys.executable, str(HERE / "clients.py"), *args), timeout=900)
    return int(result.stdout.split()[-1])


def run_scenarios(namespaces: Namespaces, work: Path, scale: Scale) -> dict[str, dict[str, object]]:
    scenarios: dict[str, dict[str, object]] = {}

    def timed(name: str, action: Callable[[], dict[str, object]]) -> None:
        started = time.monotonic()
        log(f"{name} ...")
        outcome = action()
        outcome["seconds"] = round(time.monotonic() - started, 1)
        scenarios[name] = outcome
        log(f"{name}: {outcome}")

    base4, base6 = f"http://{SERVER_V4}", f"http://[{SERVER_V6}]"
    timed("http-keepalive", lambda: wrk(namespaces, work, "keepalive", base4, scale(80_000), 16))
    timed(
        "http-close",
        lambda: wrk(namespaces, work, "close", base4, scale(22_000), 4, "-H", "Connection: close"),
    )
    timed("http-ipv6", lambda: wrk(namespaces, work, "ipv6", base6, scale(20_000), 8))
    rounds = scale(1_000)  # 40 queries a round
    timed("dns", lambda: dnsperf(namespaces, work, SERVER_V4, rounds))
    timed("dns-ipv6", lambda: dnsperf(namespaces, work, SERVER_V6, max(1, rounds // 4)))
    seconds = max(1, round(6 * scale.factor))
    timed("tls-s_time-1.2", lambda: s_time(namespaces, "-tls1_2", seconds))
    timed("tls-s_time-1.3", lambda: s_time(namespaces, "-tls1_3", seconds))
    timed(
        "tls-sni",
        lambda: {
            "handshakes": python_client(namespaces, "tls", SERVER_V4, "443", str(scale(2_000)), TLS_NAME)
        },
    )
    timed("smtp", lambda: {"sessions": python_client(namespaces, "smtp", SERVER_V4, "25", str(scale(1_500)))})
    return scenarios


def versions() -> dict[str, str]:
    found = {}
    for name, command in (
        ("nginx", ["nginx", "-v"]),
        ("wrk", ["wrk", "-v"]),
        ("dnsperf", ["dnsperf", "-h"]),
        ("dnsmasq", ["dnsmasq", "--version"]),
        ("openssl", ["openssl", "version"]),
        ("tcpdump", ["tcpdump", "--version"]),
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        lines = (result.stdout + result.stderr).strip().splitlines()
        named = (line for line in lines if line.lower().startswith(name))
        found[name] = next(named, next((line for line in lines if "ersion" in line), ""))
    return found


def composition(path: Path) -> dict[str, int]:
    """Packets of a classic Ethernet pcap file by IP version, transport and server port (the lower
    port), e.g. ``ipv4 tcp/80``; ``total`` counts every record."""
    counts: dict[str, int] = {}
    with path.open("rb") as stream:
        header = stream.read(24)
        order = "little" if header[:4] == b"\xd4\xc3\xb2\xa1" else "big"
        while (record := stream.read(16)) and len(record) == 16:
            frame = stream.read(int.from_bytes(record[8:12], order))
            ethertype = frame[12:14]
            if ethertype == b"\x08\x00":
                version, protocol, start = "ipv4", frame[23], 14 + (frame[14] & 0x0F) * 4
            elif ethertype == b"\x86\xdd":
                version, protocol, start = "ipv6", frame[20], 54
            else:
                version, protocol, start = "other", -1, 0
            name = {6: "tcp", 17: "udp"}.get(protocol, "other")
            if name != "other":
                ports = struct.unpack_from("!HH", frame, start)
                name += f"/{min(ports)}"
            key = f"{version} {name}"
            counts[key] = counts.get(key, 0) + 1
    return {"total": sum(counts.values()), **dict(sorted(counts.items(), key=lambda item: -item[1]))}


def build(output: Path, scale: Scale) -> dict[str, object]:
    """Capture the scenarios into ``output``; return the manifest (also written as corpus.json)."""
    missing = [
        f"{name} (Debian: {package})" for name, package in PROGRAMS.items() if shutil.which(name) is None
    ]
    if missing:
        raise RuntimeError("missing programs: " + ", ".join(missing))
    if subprocess.run([sys.executable, "-c", "import aiosmtpd"], capture_output=True).returncode:
        raise RuntimeError(f"aiosmtpd is not importable by {sys.executable} (pip install aiosmtpd)")
    namespaces = Namespaces()
    started = time.monotonic()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fpb-corpus-")))
        work.chmod(0o755)
        processes = Processes(work)
        stack.callback(namespaces.delete)
        stack.callback(processes.stop_all)
        namespaces.create()
        www = write_files(work)
        start_servers(namespaces, processes, work, www)
        capture = work / "corpus.pcap"
        with capturing(namespaces, processes, capture) as tcpdump_stats:
            scenarios = run_scenarios(namespaces, work, scale)
        log(f"tcpdump: {tcpdump_stats}")
        if tcpdump_stats.get("dropped by kernel", 0):
            log("warning: tcpdump reports packets dropped by the kernel; the corpus has holes")
        packets = composition(capture)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(capture, output)
    manifest: dict[str, object] = {
        "file": str(output),
        "packets": packets["total"],
        "composition": packets,
        "bytes": output.stat().st_size,
        "scale": scale.factor,
        "built": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "build_seconds": round(time.monotonic() - started, 1),
        "scenarios": scenarios,
        "tcpdump": tcpdump_stats,
        "programs": versions(),
    }
    output.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default {DEFAULT_OUTPUT}")
    parser.add_argument("--force", action="store_true", help="build again even if the file exists")
    parser.add_argument("--scale", type=float, default=1.0, help="volume factor (1: about 1M packets)")
    args = parser.parse_args(argv)
    output = args.output.expanduser().resolve()
    if output.exists() and not args.force:
        log(f"{output} exists (use --force to build it again)")
        return 0
    if os.geteuid() != 0:
        log("run as root: network namespaces and tcpdump need it")
        return 1
    manifest = build(output, Scale(args.scale))
    log(f"wrote {output}: {manifest['packets']:,} packets, {manifest['bytes']:,} bytes "
        f"in {manifest['build_seconds']} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
