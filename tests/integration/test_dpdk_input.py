"""`flowpipe run` with the dpdk input, through DPDK's own virtual devices (no NIC, no hugepages).

The EAL runs with the input's default arguments (``-l 0 --no-huge -m 256 --no-pci``, and a
``--file-prefix`` of flowpipe's own). A ``net_pcap`` vdev replays a capture file, handing over
each packet's capture time, so the events must equal those of the ``pcap`` input on the same file,
timestamps included; a ``net_af_packet`` vdev on a veth end captures real traffic (curl against
http.server), compared with tcpdump's capture of the same traffic (timestamps are the input's wall
clock there, so they are compared within a tolerance).

Tests that need DPDK are skipped when it is not installed (``apt-get install dpdk libdpdk-dev
pkg-config gcc``) or when its EAL cannot start on the machine; the tests of what happens without
DPDK run everywhere. The C binding is built once, into a scratch cache folder, for the whole module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dpkt
import pytest
import yaml
from captures import tcp_conversation, udp_frame, write_pcap
from live import epoch, events_of_file, http_and_udp_traffic, timeless
from netns import veth_pair
from summary_lines import parse_summary

if TYPE_CHECKING:
    from conftest import WheelEnv

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "sample.pcap"
INSTALL = "apt-get install dpdk libdpdk-dev pkg-config gcc (Debian/Ubuntu)"
HINT = f"the dpdk input needs DPDK's development files, pkg-config and a C compiler: {INSTALL}"
T0 = 1_700_000_000.0
IDLE = "300ms"
"""``stop_when_idle`` of replays: net_pcap reads a file in milliseconds."""


@dataclass
class Run:
    status: int
    events: list[dict[str, Any]]
    stderr: str
    pid: int

    @property
    def input_counters(self) -> dict[str, int]:
        """The summary line of the run's (only) input."""
        (counters,) = [values for (kind, _), values in parse_summary(self.stderr).items() if kind == "input"]
        return counters


def start(folder: Path, document: dict[str, Any], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``flowpipe run`` of ``document`` written to ``folder/pipeline.yml``, events to stdout (json)."""
    config = folder / "pipeline.yml"
    config.write_text(yaml.safe_dump({"outputs": [{"type": "stdout", "codec": "json"}], **document}))
    return subprocess.Popen(
        [sys.executable, "-m", "flowpipe", "run", "--no-progress", "-c", str(config)],
        cwd="/",  # relative paths must be taken from the pipeline file's folder
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> Run:
    stdout, stderr = process.communicate(timeout=120)
    return Run(process.returncode, [json.loads(line) for line in stdout.splitlines()], stderr, process.pid)


def flowpipe(folder: Path, document: dict[str, Any], env: dict[str, str] | None = None) -> Run:
    return finish(start(folder, document, env))


def pcap_events(
    folder: Path, capture: Path, decoders: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """What the pcap input makes of ``capture``."""
    document: dict[str, Any] = {"inputs": [{"type": "pcap", "files": [str(capture)]}]}
    if decoders is not None:
        document["decoders"] = decoders
    run = flowpipe(folder, document)
    assert run.status == 0, run.stderr
    return run.events


def dpdk_installed() -> bool:
    if shutil.which("pkg-config") is None or shutil.which(os.environ.get("CC") or "cc") is None:
        return False
    return subprocess.run(["pkg-config", "--exists", "libdpdk"], check=False).returncode == 0


@pytest.fixture(scope="module")
def binding_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XDG cache folder holding the binding, built once here for the tests of this module."""
    if not dpdk_installed():
        pytest.skip(f"DPDK is not installed: {INSTALL}")
    cache = tmp_path_factory.mktemp("xdg-cache")
    build = subprocess.run(
        [sys.executable, "-c", "from flowpipe.plugins.inputs.dpdk.binding import load; load()"],
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert len(list((cache / "flowpipe" / "dpdk").glob("flowpipe_dpdk-*.so"))) == 1
    return cache


@pytest.fixture
def dpdk_env(binding_cache: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(binding_cache)}


def run_dpdk(
    folder: Path, env: dict[str, str], options: dict[str, Any], decoders: list[dict[str, Any]] | None = None
) -> Run:
    """``flowpipe run`` with one dpdk input; the test is skipped if DPDK's EAL cannot start here."""
    document: dict[str, Any] = {"inputs": [{"type": "dpdk", **options}]}
    if decoders is not None:
        document["decoders"] = decoders
    run = flowpipe(folder, document, env)
    if run.status != 0 and "EAL initialisation failed" in run.stderr:
        pytest.skip(f"DPDK's EAL cannot start on this machine:\n{run.stderr}")
    assert run.status == 0, run.stderr
    return run


def eal_runtime_base() -> Path:
    """Where the EAL puts the runtime folders of its file prefixes (DPDK 22.11's rule)."""
    if os.geteuid() == 0:
        return Path("/var/run/dpdk")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "dpdk"


def packet_count(capture: Path) -> int:
    with capture.open("rb") as file:
        return sum(1 for _ in dpkt.pcap.Reader(file))


def test_sample_capture_gives_exactly_the_events_of_the_pcap_input(
    tmp_path: Path, dpdk_env: dict[str, str]
) -> None:
    """Real traffic (HTTP, DNS, TLS, SMTP, DHCP, ICMP...) through the default decoder chain."""
    reference = pcap_events(tmp_path, SAMPLE)
    run = run_dpdk(tmp_path, dpdk_env, {"vdev": [f"net_pcap0,rx_pcap={SAMPLE}"], "stop_when_idle": IDLE})
    assert run.events == reference
    assert len(reference) == 47
    packets = packet_count(SAMPLE)
    assert run.input_counters == {
        "out": packets,
        "bytes": SAMPLE.stat().st_size - 24 - 16 * packets,  # the file less its headers
        "ipackets": packets,
        "dropped.ierrors": 0,
        "dropped.imissed": 0,
        "dropped.rx_nombuf": 0,
    }
    assert "capturing on device 'net_pcap0' (DPDK port 0, driver net_pcap, 1 receive queue(s); " in run.stderr
    assert "timestamps: capture times of the pcap file)" in run.stderr
    assert list(eal_runtime_base().glob(f"flowpipe-{run.pid}-*")) == []  # the EAL's runtime folder is gone


def test_jumbo_frames_and_nanosecond_timestamps_match_the_pcap_input(
    tmp_path: Path, dpdk_env: dict[str, str]
) -> None:
    """A 9,000-byte frame spans several mbufs; nanosecond times are cut to microseconds by both inputs."""
    frames = tcp_conversation(
        ("192.0.2.1", 40000),
        ("192.0.2.2", 7),
        [(True, b"ping\n"), (False, b"ping\n")],
        start=T0 + 0.123456789,
    )
    jumbo = udp_frame("192.0.2.1", "192.0.2.2", 5000, 6000, bytes(range(256)) * 35)
    frames.append((T0 + 1.000000999, jumbo))
    frames.append((T0 + 2.5, udp_frame("2001:db8::1", "2001:db8::2", 5001, 53, b"\x12\x34")))
    capture = write_pcap(tmp_path / "capture.pcap", frames, nano=True)
    decoders = [{"type": "ip"}, {"type": "tcp"}, {"type": "protocol"}]
    reference = pcap_events(tmp_path, capture, decoders)
    run = run_dpdk(
        tmp_path, dpdk_env, {"vdev": ["net_pcap0,rx_pcap=capture.pcap"], "stop_when_idle": IDLE}, decoders
    )
    assert run.events == reference
    (echo,) = [event for event in run.events if event.get("type") == "echo"]
    assert echo["@timestamp"] == "2023-11-14T22:13:20.126Z"  # the request, 3 packets after the first
    (jumbo_flow,) = [
        event
        for event in run.events
        if event["event"]["dataset"] == "flow" and event["destination"].get("port") == 5000
    ]
    assert jumbo_flow["network"]["bytes"] == len(jumbo) == 9002
    assert jumbo_flow["event"]["start"] == "2023-11-14T22:13:21.000Z"
    assert run.input_counters["ipackets"] == run.input_counters["out"] == len(frames)


def test_two_receive_queues_read_one_file_each(tmp_path: Path, dpdk_env: dict[str, str]) -> None:
    first = [(T0 + index, udp_frame("192.0.2.1", "192.0.2.2", 1000 + index, 53)) for index in range(40)]
    second = [
        (T0 + index + 0.5, udp_frame("192.0.2.3", "192.0.2.4", 2000 + index, 53)) for index in range(40)
    ]
    write_pcap(tmp_path / "first.pcap", first)
    write_pcap(tmp_path / "second.pcap", second)
    run = run_dpdk(
        tmp_path,
        dpdk_env,
        {
            "vdev": ["net_pcap0,rx_pcap=first.pcap,rx_pcap=second.pcap"],
            "rx_queues": 2,
            "burst_size": 8,
            "stop_when_idle": IDLE,
        },
        [{"type": "ip", "flows": {"enabled": False}}],
    )
    seen = sorted((epoch(event), event["source"]["port"]) for event in run.events)
    assert seen == sorted(
        [(T0 + index, 1000 + index) for index in range(40)]
        + [(T0 + index + 0.5, 2000 + index) for index in range(40)]
    )
    assert run.input_counters["ipackets"] == 80


def test_an_endless_replay_stops_on_sigint_with_every_packet_accounted_for(
    tmp_path: Path, dpdk_env: dict[str, str]
) -> None:
    """net_pcap's infinite_rx replays the file forever (without its timestamps: wall clock then)."""
    config = tmp_path / "pipeline.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "inputs": [{"type": "dpdk", "vdev": [f"net_pcap0,rx_pcap={SAMPLE},infinite_rx=1"]}],
                "decoders": [{"type": "ip", "flows": {"enabled": False}}],
                "outputs": [{"type": "file", "path": str(tmp_path / "events.ndjson"), "rotate_every": 0}],
            }
        )
    )
    stderr_path = tmp_path / "stderr.txt"
    started = time.time()
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowpipe", "run", "--no-progress", "-c", str(config)],
            env=dpdk_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while "capturing on device" not in stderr_path.read_text():
            assert process.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, stderr_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    stderr = stderr_path.read_text()
    if "EAL initialisation failed" in stderr:
        pytest.skip(f"DPDK's EAL cannot start on this machine:\n{stderr}")
    (counters,) = [values for (kind, _), values in parse_summary(stderr).items() if kind == "input"]
    events = [json.loads(line) for line in (tmp_path / "events.ndjson").read_text().splitlines()]
    assert counters["out"] > packet_count(SAMPLE)  # more than one round of the file
    assert counters["ipackets"] == counters["out"] == len(events)
    assert started - 1 < min(map(epoch, events)) <= max(map(epoch, events)) < time.time() + 1


@pytest.mark.slow
def test_af_packet_vdev_on_a_veth_gives_the_events_of_tcpdumps_capture(
    tmp_path: Path, binding_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live traffic: the packets carry the wall-clock time of their burst, tcpdump's the kernel's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(binding_cache))
    with veth_pair() as pair:
        # One segment per frame: the af_packet vdev drops frames larger than an mbuf (2 KiB), which
        # is what the server's TCP segmentation offload hands to the veth otherwise.
        pair.server.run("ip", "link", "set", "dev", pair.server.device, "gso_max_segs", "1")
        run, reference = http_and_udp_traffic(
            tmp_path, pair, "dpdk", {"vdev": [f"net_af_packet0,iface={pair.client.device}"]}
        )
    assert_same_traffic(tmp_path, run.events(), reference)
    assert "driver net_af_packet" in run.stderr and "timestamps: wall clock at reception)" in run.stderr


def assert_same_traffic(tmp_path: Path, events: list[dict[str, Any]], reference: Path) -> None:
    """The events equal those of tcpdump's capture but for their times, which are close."""
    dumped = events_of_file(tmp_path, reference)
    assert [timeless(event) for event in events] == [timeless(event) for event in dumped]
    assert len([event for event in events if event["network"]["transport"] == "udp"]) == 3
    assert all(abs(epoch(live) - epoch(file)) < 0.25 for live, file in zip(events, dumped, strict=True))


def test_without_dpdk_the_input_fails_at_start_with_one_line(tmp_path: Path) -> None:
    """pkg-config pointed at an empty folder finds no libdpdk, as on a machine without DPDK."""
    (tmp_path / "no-pkgconfig").mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PKG_CONFIG_PATH"}
    env["PKG_CONFIG_LIBDIR"] = str(tmp_path / "no-pkgconfig")
    run = flowpipe(tmp_path, {"inputs": [{"type": "dpdk", "vdev": [f"net_pcap0,rx_pcap={SAMPLE}"]}]}, env)
    if shutil.which("pkg-config") is None:
        reason = "pkg-config is not installed, so DPDK cannot be found"
    else:
        reason = "DPDK is not installed (pkg-config finds no libdpdk)"
    assert (run.status, run.events) == (1, [])
    assert run.stderr.splitlines() == [f"flowpipe: dpdk input 'dpdk': {reason}; {HINT}"]


def test_without_a_c_compiler_the_input_fails_at_start_with_one_line(
    tmp_path: Path, binding_cache: Path
) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "empty-cache"), "CC": "/nonexistent/cc"}
    run = flowpipe(tmp_path, {"inputs": [{"type": "dpdk", "vdev": [f"net_pcap0,rx_pcap={SAMPLE}"]}]}, env)
    assert (run.status, run.events) == (1, [])
    assert run.stderr.splitlines() == [
        f"flowpipe: dpdk input 'dpdk': no C compiler (/nonexistent/cc) to build the DPDK binding; {HINT}"
    ]


def test_a_missing_vdev_capture_fails_at_start_naming_it(tmp_path: Path) -> None:
    """Checked before DPDK is touched, so this runs on machines without DPDK too."""
    run = flowpipe(tmp_path, {"inputs": [{"type": "dpdk", "vdev": ["net_pcap0,rx_pcap=captures/gone.pcap"]}]})
    assert (run.status, run.events) == (1, [])
    missing = tmp_path / "captures" / "gone.pcap"
    assert run.stderr.splitlines() == [
        f"flowpipe: dpdk input 'dpdk': vdev net_pcap0: no such capture file: {missing}"
    ]


def test_start_up_errors_of_dpdk_are_one_line(tmp_path: Path, dpdk_env: dict[str, str]) -> None:
    vdev = f"net_pcap0,rx_pcap={SAMPLE}"
    cases = {
        "port 3: no such port (DPDK has 1 port(s), numbered from 0)": {"vdev": [vdev], "port": 3},
        "port 0: its driver (net_pcap) has at most 1 receive queue(s), 2 asked": {
            "vdev": [vdev],
            "rx_queues": 2,
        },
        "DPDK found no port: give a vdev, or bind a NIC to a DPDK driver (and drop --no-pci)": {},
        "port 0: cannot create the mbuf pool (does it fit in the EAL's memory, -m?): "
        "Cannot allocate memory": {"vdev": [vdev], "mempool_size": 500_000},
    }
    started = {}
    for number, (expected, options) in enumerate(cases.items()):  # in parallel: EALs of their own
        folder = tmp_path / str(number)
        folder.mkdir()
        started[expected] = start(folder, {"inputs": [{"type": "dpdk", **options}]}, dpdk_env)
    for expected, process in started.items():
        run = finish(process)
        if "EAL initialisation failed" in run.stderr:
            pytest.skip(f"DPDK's EAL cannot start on this machine:\n{run.stderr}")
        assert (run.status, run.events) == (1, []), run.stderr
        ours = [line for line in run.stderr.splitlines() if line.startswith("flowpipe: ")]
        assert ours == [f"flowpipe: dpdk input 'dpdk': {expected}"]


def test_a_second_dpdk_input_in_one_process_fails_at_start(tmp_path: Path, dpdk_env: dict[str, str]) -> None:
    inputs = [
        {"type": "dpdk", "id": name, "vdev": [f"net_pcap0,rx_pcap={SAMPLE}"], "stop_when_idle": IDLE}
        for name in ("first", "second")
    ]
    run = flowpipe(tmp_path, {"inputs": inputs}, dpdk_env)
    if "capturing on device" not in run.stderr:
        pytest.skip(f"DPDK's EAL cannot start on this machine:\n{run.stderr}")
    assert (run.status, run.events) == (1, [])
    ours = [line for line in run.stderr.splitlines() if line.startswith("flowpipe: ")]
    assert ours == [
        "flowpipe: dpdk input 'second': DPDK's EAL is already initialised in this process "
        "(one dpdk input per pipeline)"
    ]


def test_pool_options_are_checked_with_the_pipeline(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yml").write_text(
        yaml.safe_dump(
            {
                "inputs": [
                    {
                        "type": "dpdk",
                        "rx_queues": 2,
                        "mempool_size": 700,
                        "mempool_cache": 512,
                        "stop_when_idle": 0,
                    }
                ],
                "outputs": [{"type": "stdout"}],
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "check", "-c", "pipeline.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    problems = [line.split(": ", 2)[2] for line in result.stderr.splitlines()]
    assert problems == [
        "inputs.0.mempool_size: must be at least rx_queues x rx_descriptors + burst_size (2080), got 700",
        "inputs.0.mempool_cache: must be at most mempool_size / 1.5 (DPDK's rule), got 512",
        "inputs.0.stop_when_idle: must be more than 0 (or null: never)",
    ]


@pytest.mark.slow
def test_the_installed_wheel_builds_the_binding_and_reads_a_capture(
    tmp_path: Path, wheel_env: WheelEnv, binding_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pip install flowpipe[dpdk]``: the C file ships in the wheel and builds from site-packages."""
    with zipfile.ZipFile(wheel_env.wheels["flowpipe"]) as wheel:
        metadata = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
        assert "Provides-Extra: dpdk" in wheel.read(metadata).decode().splitlines()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a build of its own
    config = tmp_path / "pipeline.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "inputs": [{"type": "dpdk", "vdev": [f"net_pcap0,rx_pcap={SAMPLE}"], "stop_when_idle": IDLE}],
                "outputs": [{"type": "stdout", "codec": "json"}],
            }
        )
    )
    run = wheel_env.run("run", "--no-progress", "-c", config)
    if run.returncode != 0 and "EAL initialisation failed" in run.stderr:
        pytest.skip(f"DPDK's EAL cannot start on this machine:\n{run.stderr}")
    assert run.returncode == 0, run.stderr
    assert [json.loads(line) for line in run.stdout.splitlines()] == pcap_events(tmp_path, SAMPLE)
    (built,) = (tmp_path / "cache" / "flowpipe" / "dpdk").glob("flowpipe_dpdk-*.so")
    assert built.name == next((binding_cache / "flowpipe" / "dpdk").glob("flowpipe_dpdk-*.so")).name
