"""`flowpipe run` capturing live on a veth device in a network namespace, with real traffic.

Each test gets two fresh namespaces joined by a veth pair (client 192.0.2.1, server 192.0.2.2;
see tests/netns.py) and runs ``ip netns exec CLIENT python -m flowpipe run`` capturing the
client's end, with the ``ip`` decoder alone and a file output; tests check its per-packet events
(``event.dataset: packet``; flow records are left out: they are not what is tested here). Traffic
comes from real programs: ping, curl against ``python3 -m http.server``, a UDP sender. The run
ends with SIGINT once the events are written. Tests are skipped only where the machine forbids
network namespaces (or a program they run is missing).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import (
    UDP_SENDER,
    LiveRun,
    assert_events_of_capture,
    check,
    epoch,
    http_and_udp_traffic,
    icmp_rows,
)
from netns import VethPair, require_programs, veth_pair
from summary_lines import parse_summary

METRICS_PORT = 9464


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with veth_pair() as created:
        yield created


@pytest.mark.slow
def test_ping_is_captured_as_three_echo_requests_and_three_replies(tmp_path: Path, pair: VethPair) -> None:
    require_programs("ping", "curl")
    client, server = pair.client, pair.server
    started = time.time()
    run = LiveRun(
        tmp_path,
        client,
        {"device": client.device},
        metrics={"period": "300ms", "http": f"127.0.0.1:{METRICS_PORT}"},
    )
    run.wait_until_capturing()
    client.run("ping", "-c", "3", "-i", "0.2", "-W", "2", server.address)
    run.wait_for_events(6)
    kernel_received = 'flowpipe_items_total{kind="input",id="pcap",counter="kernel_received"} '
    metrics: list[str] = []

    def counted() -> bool:  # the kernel's counters are read once a second
        metrics[:] = client.run("curl", "-sf", f"http://127.0.0.1:{METRICS_PORT}/metrics").stdout.splitlines()
        return any(line.startswith(kernel_received) and not line.endswith(" 0") for line in metrics)

    run.wait_for(counted, "kernel_received on the metrics endpoint")
    assert run.stop() == 0, run.stderr
    ended = time.time()

    events = run.events()
    assert (
        icmp_rows(events)
        == [
            (client.address, server.address, 8, 0, 98),
            (server.address, client.address, 0, 0, 98),
        ]
        * 3
    )
    assert {(event["network"]["type"], event["network"]["transport"]) for event in events} == {
        ("ipv4", "icmp")
    }
    assert all(started < epoch(event) < ended for event in events)
    assert [epoch(event) for event in events] == sorted(epoch(event) for event in events)

    summary = parse_summary(run.stderr)
    captured = summary[("input", "pcap")]
    not_ip = summary[("decoder", "ip")].get("dropped.not_ip", 0)  # ARP
    assert captured == {
        "out": 6 + not_ip,
        "bytes": 6 * 98 + 42 * not_ip,
        "kernel_received": 6 + not_ip,
        "dropped.interface": 0,
        "dropped.kernel": 0,
    }
    periodic = [line for line in run.stderr.splitlines() if "flowpipe.metrics: metrics:" in line]
    assert periodic and "dropped.interface=0 dropped.kernel=0 kernel_received=" in periodic[-1]
    assert 'flowpipe_dropped_total{kind="input",id="pcap",reason="kernel"} 0' in metrics
    assert 'flowpipe_dropped_total{kind="input",id="pcap",reason="interface"} 0' in metrics
    assert f"{kernel_received}{6 + not_ip}" in metrics


@pytest.mark.slow
def test_http_and_udp_traffic_gives_the_events_of_tcpdumps_capture(tmp_path: Path, pair: VethPair) -> None:
    """The live events equal those flowpipe makes of tcpdump's capture of the same traffic."""
    run, reference = http_and_udp_traffic(tmp_path, pair, "pcap", {"device": pair.client.device})
    assert_events_of_capture(tmp_path, pair, run, reference)


@pytest.mark.slow
def test_bpf_filter_keeps_only_the_matching_packets_live(tmp_path: Path, pair: VethPair) -> None:
    require_programs("ping")
    client, server = pair.client, pair.server
    run = LiveRun(tmp_path, client, {"device": client.device, "bpf_filter": "udp dst port 5353"})
    run.wait_until_capturing()
    client.run("ping", "-c", "2", "-i", "0.2", server.address)
    client.run(sys.executable, "-c", UDP_SENDER.replace("5353", "5354"), client.address, server.address)
    client.run(sys.executable, "-c", UDP_SENDER, client.address, server.address)
    run.wait_for_events(3)
    time.sleep(0.3)  # time for a packet the filter let through wrongly
    assert run.stop() == 0, run.stderr

    assert [(event["destination"]["port"], event["network"]["bytes"]) for event in run.events()] == [
        (5353, 52),
        (5353, 62),
        (5353, 72),
    ]
    captured = parse_summary(run.stderr)[("input", "pcap")]
    assert (captured["out"], captured["kernel_received"]) == (3, 3)


@pytest.mark.slow
def test_device_any_captures_linux_cooked_frames(tmp_path: Path, pair: VethPair) -> None:
    require_programs("ping")
    client, server = pair.client, pair.server
    run = LiveRun(tmp_path, client, {"device": "any", "bpf_filter": "icmp"})
    run.wait_until_capturing()
    client.run("ping", "-c", "2", "-i", "0.2", server.address)
    run.wait_for_events(4)
    time.sleep(0.3)  # a packet seen twice would come now
    assert run.stop() == 0, run.stderr

    assert "capturing on device 'any' (link type 113)" in run.stderr
    assert (
        icmp_rows(run.events())
        == [
            (client.address, server.address, 8, 0, 100),  # 84-byte packets after a 16-byte cooked header
            (server.address, client.address, 0, 0, 100),
        ]
        * 2
    )


def test_a_missing_device_fails_at_start_with_one_line(tmp_path: Path, pair: VethPair) -> None:
    run = LiveRun(tmp_path, pair.client, {"device": "fpnosuch0"})
    assert run.wait() == 1
    assert run.stderr.splitlines() == [
        "flowpipe: pcap input 'pcap': device 'fpnosuch0': cannot capture: no such device"
    ]
    assert not run.output.exists() or run.output.read_text() == ""


def test_capturing_without_cap_net_raw_fails_at_start_with_one_line(tmp_path: Path, pair: VethPair) -> None:
    require_programs("setpriv")
    side = pair.client
    without_cap_net_raw = ("setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw")  # files stay readable
    run = LiveRun(tmp_path, side, {"device": side.device}, prefix=without_cap_net_raw)
    assert run.wait() == 1
    assert run.stderr.splitlines() == [
        f"flowpipe: pcap input 'pcap': device {side.device!r}: cannot capture: "
        "permission denied (live capture needs root or the CAP_NET_RAW capability)"
    ]


def test_a_device_deleted_while_capturing_ends_the_run_with_status_1(tmp_path: Path, pair: VethPair) -> None:
    require_programs("ping")
    client, server = pair.client, pair.server
    run = LiveRun(tmp_path, client, {"device": client.device, "bpf_filter": "icmp"})
    run.wait_until_capturing()
    client.run("ping", "-c", "1", server.address)
    run.wait_for_events(2)
    client.run("ip", "link", "delete", client.device)
    assert run.wait() == 1
    failure = f"pcap input 'pcap': device {client.device!r}: The interface went down"
    assert f"  FAILED: {failure}" in run.stderr.splitlines()
    assert len(run.events()) == 2


# -- configuration: flowpipe check ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        pytest.param(
            """\
            inputs:
              - type: pcap
                bpf_filter: tcp
            decoders: [{type: ip}]
            outputs: [{type: stdout}]
            """,
            ["pipeline.yml:2:5: inputs.0: give exactly one of files or device"],
            id="neither",
        ),
        pytest.param(
            """\
            inputs:
              - type: pcap
                files: [a.pcap]
                device: eth0
            decoders: [{type: ip}]
            outputs: [{type: stdout}]
            """,
            ["pipeline.yml:4:5: inputs.0.device: give exactly one of files or device"],
            id="both",
        ),
        pytest.param(
            """\
            inputs:
              - type: pcap
                files: [a.pcap]
                snaplen: 96
                immediate: false
            decoders: [{type: ip}]
            outputs: [{type: stdout}]
            """,
            [
                "pipeline.yml:4:5: inputs.0.snaplen: applies to live capture (device) only",
                "pipeline.yml:5:5: inputs.0.immediate: applies to live capture (device) only",
            ],
            id="live-options-with-files",
        ),
        pytest.param(
            """\
            inputs:
              - type: pcap
                device: any
                snaplen: 0
            decoders: [{type: ip}]
            outputs: [{type: stdout}]
            """,
            ["pipeline.yml:4:5: inputs.0.snaplen: must be >= 1, got 0"],
            id="snaplen-range",
        ),
        pytest.param(
            """\
            inputs:
              - type: pcap
                device: any
                loop: 0
                timeout: 0ms
            decoders: [{type: ip}]
            outputs: [{type: stdout}]
            """,
            [
                "pipeline.yml:4:5: inputs.0.loop: applies to files only",
                "pipeline.yml:5:5: inputs.0.timeout: must be at least 1ms, got 0s",
            ],
            id="file-options-and-zero-timeout-with-device",
        ),
        pytest.param(
            """\
            inputs:
              - type: pcap
                device: any
                buffer_size: 2GiB
            decoders: [{type: ip}]
            outputs: [{type: stdout}]
            """,
            [
                "pipeline.yml:4:5: inputs.0.buffer_size: "
                "must be less than 2GiB (libpcap's limit), got 2147483648"
            ],
            id="buffer-size-limit",
        ),
    ],
)
def test_check_reports_the_source_options_at_their_place(
    tmp_path: Path, text: str, errors: list[str]
) -> None:
    result = check(tmp_path, text)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"flowpipe: {error}" for error in errors]


def test_check_accepts_a_live_capture(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        """\
        inputs:
          - type: pcap
            device: eth0
            snaplen: 1514
            promiscuous: false
            buffer_size: 64MiB
            immediate: false
            timeout: 250ms
            bpf_filter: tcp port 80
        decoders: [{type: ip}]
        outputs: [{type: stdout}]
        """,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "pipeline.yml: OK (1 inputs, 1 decoders, 0 processors, 1 outputs)\n"
