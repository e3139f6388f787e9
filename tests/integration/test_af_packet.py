"""The af_packet input on a veth pair in network namespaces, with real traffic and exact frames.

Each test gets two fresh namespaces joined by a veth pair (client 192.0.2.1, server 192.0.2.2; see
tests/netns.py). ``flowpipe run`` tests capture the client's end with the ``ip`` decoder alone and
a file output (tests/live.py: LiveRun), with traffic from real programs (curl against http.server,
ping, UDP senders and an echo server). The input's own tests open it in the client namespace in
this process and read it in a thread (tests/live.py: Reader), with exact frames put on the wire by
raw sockets. Tests are skipped only where the machine forbids network namespaces (or a program they
run is missing).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from captures import ethernet, ip_packet, udp, udp_frame
from live import (
    UDP_SENDER,
    LiveRun,
    Reader,
    assert_events_of_capture,
    check,
    events_of_file,
    frames,
    http_and_udp_traffic,
    icmp_rows,
    sender,
    tcpdump_capturing,
    timeless,
)
from netns import Side, VethPair, in_namespace, require_programs, veth_pair
from summary_lines import parse_summary

from flowpipe import StageContext, StartupError
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace
from flowpipe.plugins.inputs.af_packet import AfPacketInput

AF_PACKET = "af_packet"
METRICS_PORT = 9465


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with veth_pair() as created:
        yield created


def open_input(pair: VethPair, batch_size: int = 256, name: str = "afp", **values: object) -> AfPacketInput:
    """An af_packet input opened in the client namespace, on its veth end unless ``values`` say otherwise."""
    context = StageContext(id=name, counters=Counters(name, "input"), batch_size=batch_size)
    options = {"device": pair.client.device, **values}
    stage = AfPacketInput(build_namespace(AfPacketInput.all_options(), options), context)
    in_namespace(pair.client.namespace, stage.open)
    return stage


def link_details(side: Side) -> str:
    return side.run("ip", "-d", "link", "show", side.device).stdout


# -- flowpipe run: real traffic ------------------------------------------------------------------


@pytest.mark.slow
def test_http_and_udp_traffic_gives_the_events_of_tcpdumps_capture(tmp_path: Path, pair: VethPair) -> None:
    """The events equal those flowpipe makes of tcpdump's capture of the same traffic."""
    run, reference = http_and_udp_traffic(tmp_path, pair, AF_PACKET, {"device": pair.client.device})
    assert_events_of_capture(tmp_path, pair, run, reference)
    summary = parse_summary(run.stderr)
    captured = summary[("input", AF_PACKET)]
    not_ip = summary[("decoder", "ip")].get("dropped.not_ip", 0)  # ARP
    assert captured["out"] == captured["kernel_received"] == len(run.events()) + not_ip
    assert (captured["dropped.kernel"], captured["kernel_freeze_count"]) == (0, 0)


@pytest.mark.slow
def test_bpf_filter_keeps_only_the_matching_packets(tmp_path: Path, pair: VethPair) -> None:
    require_programs("ping")
    client, server = pair.client, pair.server
    run = LiveRun(
        tmp_path, client, {"device": client.device, "bpf_filter": "udp dst port 5353"}, input_type=AF_PACKET
    )
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
    captured = parse_summary(run.stderr)[("input", AF_PACKET)]
    assert (captured["out"], captured["kernel_received"]) == (3, 3)


def add_vlan(side: Side, address: str, vlan: int = 42) -> str:
    """A VLAN sub-interface of ``side``'s veth end with ``address``/24; its name."""
    device = f"{side.device}.{vlan}"
    add = side.command(
        "ip", "link", "add", "link", side.device, "name", device, "type", "vlan", "id", str(vlan)
    )
    result = subprocess.run(add, capture_output=True, text=True, timeout=30)
    if "Unknown device type" in result.stderr:
        pytest.skip(
            "this kernel has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q, module 8021q); "
            "test_the_outer_vlan_tag_comes_back_exactly_where_it_was covers the tag's re-insertion"
        )
    assert result.returncode == 0, f"{' '.join(add)} failed: {result.stderr}"
    side.run("ip", "addr", "add", f"{address}/24", "dev", device)
    side.run("ip", "link", "set", device, "up")
    return device


@pytest.mark.slow
def test_vlan_traffic_on_the_parent_device_carries_its_tag_as_tcpdump_shows_it(
    tmp_path: Path, pair: VethPair
) -> None:
    """The kernel strips the tag (veth offloads it); the input puts it back as libpcap does."""
    require_programs("ping", "tcpdump")
    client, server = pair.client, pair.server
    add_vlan(client, "198.51.100.1")
    add_vlan(server, "198.51.100.2")
    reference = tmp_path / "tcpdump.pcap"
    with tcpdump_capturing(client, reference) as tcpdump_listening:
        run = LiveRun(tmp_path, client, {"device": client.device}, input_type=AF_PACKET)
        run.wait_until_capturing()
        run.wait_for(tcpdump_listening, "tcpdump to start")
        client.run("ping", "-c", "2", "-i", "0.2", "198.51.100.2")
        client.run(sys.executable, "-c", UDP_SENDER, "198.51.100.1", "198.51.100.2")
        run.wait_for(
            lambda: sum(event["network"]["transport"] == "udp" for event in run.events()) == 3,
            "the UDP events",
        )
        time.sleep(0.3)  # the ICMP port-unreachable answers to the datagrams
        assert run.stop() == 0, run.stderr

    events = run.events()
    assert [timeless(event) for event in events] == [
        timeless(event) for event in events_of_file(tmp_path, reference)
    ]
    assert {event["network"]["vlan"]["id"] for event in events} == {42}
    assert "inner" not in events[0]["network"]
    assert (
        icmp_rows(events[:4])
        == [
            ("198.51.100.1", "198.51.100.2", 8, 0, 102),  # 98 bytes and the 4-byte tag
            ("198.51.100.2", "198.51.100.1", 0, 0, 102),
        ]
        * 2
    )
    udp_rows = [
        (event["source"]["port"], event["destination"]["port"], event["network"]["bytes"])
        for event in events
        if event["network"]["transport"] == "udp"
    ]
    assert udp_rows == [(40000, 5353, 14 + 4 + 20 + 8 + size) for size in (10, 20, 30)]


ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], 7))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)
    """
)
ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys
    for port in range(41000, 41000 + int(sys.argv[3])):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.bind((sys.argv[1], port))
        for size in range(10, 14):
            sock.sendto(b"e" * size, (sys.argv[2], 7))
            assert sock.recv(2048) == b"e" * size
        sock.close()
    """
)
FLOWS = 24


@pytest.mark.slow
def test_two_inputs_in_a_fanout_group_share_the_packets_each_exactly_once(
    tmp_path: Path, pair: VethPair
) -> None:
    client, server = pair.client, pair.server
    echo = subprocess.Popen(
        server.command(sys.executable, "-c", ECHO_SERVER, server.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert echo.stdout is not None and echo.stdout.readline() == "ready\n"
        group = {"device": client.device, "fanout_group": 4242}
        run = LiveRun(tmp_path, client, [{"id": "a", **group}, {"id": "b", **group}], input_type=AF_PACKET)
        run.wait_until_capturing()
        client.run(sys.executable, "-c", ECHO_CLIENT, client.address, server.address, str(FLOWS))
        run.wait_for_events(FLOWS * 8)
        time.sleep(0.3)  # a packet delivered twice would come now
        assert run.stop() == 0, run.stderr
    finally:
        echo.kill()
        echo.wait(timeout=10)

    rows = Counter(
        (
            event["source"]["ip"],
            event["source"]["port"],
            event["destination"]["ip"],
            event["destination"]["port"],
            event["network"]["bytes"],
        )
        for event in run.events()
    )
    expected = Counter()
    for port in range(41000, 41000 + FLOWS):
        for size in range(10, 14):
            expected[(client.address, port, server.address, 7, 42 + size)] += 1
            expected[(server.address, 7, client.address, port, 42 + size)] += 1
    assert rows == expected
    summary = parse_summary(run.stderr)
    first, second = summary[("input", "a")], summary[("input", "b")]
    not_ip = summary[("decoder", "ip")].get("dropped.not_ip", 0)  # ARP
    assert first["out"] + second["out"] == FLOWS * 8 + not_ip
    assert first["out"] > 0 and second["out"] > 0
    assert (first["kernel_received"], second["kernel_received"]) == (first["out"], second["out"])
    assert "fanout group 4242 (hash)" in run.stderr


@pytest.mark.slow
def test_kernel_counters_are_in_the_summary_the_periodic_metrics_and_the_endpoint(
    tmp_path: Path, pair: VethPair
) -> None:
    require_programs("ping", "curl")
    client, server = pair.client, pair.server
    run = LiveRun(
        tmp_path,
        client,
        {"device": client.device},
        input_type=AF_PACKET,
        metrics={"period": "300ms", "http": f"127.0.0.1:{METRICS_PORT}"},
    )
    run.wait_until_capturing()
    client.run("ping", "-c", "3", "-i", "0.2", "-W", "2", server.address)
    run.wait_for_events(6)
    kernel_received = 'flowpipe_items_total{kind="input",id="af_packet",counter="kernel_received"} '
    metrics: list[str] = []

    def counted() -> bool:  # the kernel's counters are read once a second
        metrics[:] = client.run("curl", "-sf", f"http://127.0.0.1:{METRICS_PORT}/metrics").stdout.splitlines()
        return any(line.startswith(kernel_received) and not line.endswith(" 0") for line in metrics)

    run.wait_for(counted, "kernel_received on the metrics endpoint")
    assert run.stop() == 0, run.stderr

    assert (
        icmp_rows(run.events())
        == [
            (client.address, server.address, 8, 0, 98),
            (server.address, client.address, 0, 0, 98),
        ]
        * 3
    )
    summary = parse_summary(run.stderr)
    not_ip = summary[("decoder", "ip")].get("dropped.not_ip", 0)  # ARP
    assert summary[("input", AF_PACKET)] == {
        "out": 6 + not_ip,
        "bytes": 6 * 98 + 42 * not_ip,
        "kernel_received": 6 + not_ip,
        "kernel_freeze_count": 0,
        "dropped.kernel": 0,
    }
    periodic = [line for line in run.stderr.splitlines() if "flowpipe.metrics: metrics:" in line]
    assert periodic and "dropped.kernel=0 kernel_freeze_count=0 kernel_received=" in periodic[-1]
    assert 'flowpipe_dropped_total{kind="input",id="af_packet",reason="kernel"} 0' in metrics
    assert 'flowpipe_items_total{kind="input",id="af_packet",counter="kernel_freeze_count"} 0' in metrics
    assert f"{kernel_received}{6 + not_ip}" in metrics


@pytest.mark.slow
def test_device_any_captures_linux_cooked_frames(tmp_path: Path, pair: VethPair) -> None:
    require_programs("ping")
    client, server = pair.client, pair.server
    run = LiveRun(tmp_path, client, {"device": "any", "bpf_filter": "icmp"}, input_type=AF_PACKET)
    run.wait_until_capturing()
    client.run("ping", "-c", "2", "-i", "0.2", server.address)
    run.wait_for_events(4)
    time.sleep(0.3)  # a packet seen twice would come now
    assert run.stop() == 0, run.stderr

    assert "capturing on device 'any' (link type 113," in run.stderr
    assert "promiscuous mode is not supported on any; capturing without it" in run.stderr
    assert (
        icmp_rows(run.events())
        == [
            (client.address, server.address, 8, 0, 100),  # 84-byte packets after a 16-byte cooked header
            (server.address, client.address, 0, 0, 100),
        ]
        * 2
    )


def test_a_missing_device_fails_at_start_with_one_line(tmp_path: Path, pair: VethPair) -> None:
    run = LiveRun(tmp_path, pair.client, {"device": "fpnosuch0"}, input_type=AF_PACKET)
    assert run.wait() == 1
    assert run.stderr.splitlines() == [
        "flowpipe: af_packet input 'af_packet': device 'fpnosuch0': cannot capture: no such device"
    ]
    assert not run.output.exists() or run.output.read_text() == ""


def test_capturing_without_cap_net_raw_fails_at_start_with_one_line(tmp_path: Path, pair: VethPair) -> None:
    require_programs("setpriv")
    side = pair.client
    without_cap_net_raw = ("setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw")
    run = LiveRun(tmp_path, side, {"device": side.device}, prefix=without_cap_net_raw, input_type=AF_PACKET)
    assert run.wait() == 1
    assert run.stderr.splitlines() == [
        f"flowpipe: af_packet input 'af_packet': device {side.device!r}: cannot capture: "
        "permission denied (capturing needs root or the CAP_NET_RAW capability)"
    ]


def test_a_device_deleted_while_capturing_ends_the_run_with_status_1(tmp_path: Path, pair: VethPair) -> None:
    require_programs("ping")
    client, server = pair.client, pair.server
    run = LiveRun(tmp_path, client, {"device": client.device, "bpf_filter": "icmp"}, input_type=AF_PACKET)
    run.wait_until_capturing()
    client.run("ping", "-c", "1", server.address)
    run.wait_for_events(2)
    client.run("ip", "link", "delete", client.device)
    assert run.wait() == 1
    failure = f"af_packet input 'af_packet': device {client.device!r}: the device went away"
    assert f"  FAILED: {failure}" in run.stderr.splitlines()
    assert len(run.events()) == 2


# -- the input in this process: exact frames -------------------------------------------------------


def test_frames_come_with_their_capture_times_and_wire_lengths_and_the_counters_from_the_start(
    pair: VethPair,
) -> None:
    stage = open_input(pair)
    assert stage.context.counters.values == {
        "kernel_received": 0,
        "dropped.kernel": 0,
        "kernel_freeze_count": 0,
    }
    reader = Reader(stage)
    sent = frames(3, size=20)
    wire = sender(pair.server)
    before = time.time()
    for frame in sent:
        wire.send(frame)
    after = time.time()
    reader.wait_until(lambda: reader.frames() == sent)
    reader.stop()
    stage.close()

    [(_, batch)] = reader.batches
    assert (batch.link_type, batch.source, batch.clock) == (1, pair.client.device, None)
    assert (batch.wire_lengths, batch.nbytes) == ([len(frame) for frame in sent], sum(map(len, sent)))
    assert all(before - 0.001 <= stamp <= after + 0.001 for stamp in batch.timestamps)
    assert batch.timestamps == sorted(batch.timestamps)
    assert stage.context.counters.values == {
        "kernel_received": 3,
        "dropped.kernel": 0,
        "kernel_freeze_count": 0,
    }


def test_a_quiet_device_yields_a_clock_batch_about_once_a_second_and_stops_at_once(pair: VethPair) -> None:
    stage = open_input(pair)
    wall_start = time.time()
    reader = Reader(stage)
    time.sleep(2.6)
    stopped_in = reader.stop()
    wall_end = time.time()
    stage.close()

    assert stopped_in < 0.5
    assert [(len(batch), batch.link_type, batch.source) for _, batch in reader.batches] == [
        (0, 1, pair.client.device),
        (0, 1, pair.client.device),
    ]
    clocks = [batch.clock for _, batch in reader.batches]
    assert wall_start + 0.9 < clocks[0] < clocks[1] < wall_end
    left = [at - reader.started for at, _ in reader.batches]
    assert 0.95 < left[0] < 1.35 and 0.95 < left[1] - left[0] < 1.35


@pytest.mark.parametrize(("block_timeout", "least", "most"), [("10ms", 0.0, 0.1), ("300ms", 0.1, 0.6)])
def test_a_packet_leaves_when_the_kernel_hands_its_block_over(
    pair: VethPair, block_timeout: str, least: float, most: float
) -> None:
    """The block's retire timeout is what holds a packet back (the kernel's timer starts with the
    block, so a packet waits between nothing and the whole timeout)."""
    stage = open_input(pair, block_timeout=block_timeout)
    reader = Reader(stage)
    wire = sender(pair.server)
    waits = []
    for frame in frames(3):
        sent_at = time.monotonic()
        count = len(reader.frames())
        wire.send(frame)
        reader.wait_until(lambda count=count: len(reader.frames()) == count + 1)
        waits.append(reader.batches[-1][0] - sent_at)
    reader.stop()
    stage.close()
    assert least <= max(waits) < most, waits


def test_a_full_batch_leaves_at_once_and_batches_keep_the_order(pair: VethPair) -> None:
    stage = open_input(pair, batch_size=4)
    sent = frames(10)
    wire = sender(pair.server)
    for frame in sent:  # into one block, before reading starts
        wire.send(frame)
    time.sleep(0.05)  # the block is handed over
    reader = Reader(stage)
    reader.wait_until(lambda: len(reader.frames()) == 10)
    reader.stop()
    stage.close()
    assert [len(batch) for _, batch in reader.batches] == [4, 4, 2]
    assert reader.frames() == sent


def test_snaplen_cuts_frames_and_the_wire_length_stays(pair: VethPair) -> None:
    stage = open_input(pair, snaplen=64)
    reader = Reader(stage)
    [frame] = frames(1, size=300)
    sender(pair.server).send(frame)
    reader.wait_until(lambda: len(reader.frames()) == 1)
    reader.stop()
    stage.close()
    [(_, batch)] = reader.batches
    assert (batch.frames, batch.wire_lengths, batch.nbytes) == ([frame[:64]], [len(frame)], 64)


def test_bpf_filter_runs_in_the_kernel(pair: VethPair) -> None:
    stage = open_input(pair, bpf_filter="udp dst port 6001 or udp dst port 6003")
    reader = Reader(stage)
    sent = frames(5)
    wire = sender(pair.server)
    for frame in sent:
        wire.send(frame)
    reader.wait_until(lambda: len(reader.frames()) == 2)
    time.sleep(0.3)  # time for a packet the filter let through wrongly
    reader.stop()
    stage.close()
    assert reader.frames() == [sent[1], sent[3]]
    assert stage.context.counters.get("kernel_received") == 2  # the kernel counts what passed


@pytest.mark.parametrize("vlans", [[42], [100, 42]], ids=["802.1q", "qinq"])
def test_the_outer_vlan_tag_comes_back_exactly_where_it_was(pair: VethPair, vlans: list[int]) -> None:
    """The receiving kernel strips the outer tag (802.1Q, or 802.1ad in QinQ) into the packet's
    metadata, so a capture socket gets the frame without it; the input puts it back."""
    stage = open_input(pair)
    reader = Reader(stage)
    sent = [
        ethernet(ip_packet("192.0.2.2", "192.0.2.1", udp(5000, 6000, b"tagged" * size)), vlans=vlans)
        for size in (1, 2)
    ]
    wire = sender(pair.server)
    for frame in sent:
        wire.send(frame)
    reader.wait_until(lambda: len(reader.frames()) == 2)
    reader.stop()
    stage.close()
    assert reader.frames() == sent
    assert [wire_length for _, batch in reader.batches for wire_length in batch.wire_lengths] == list(
        map(len, sent)
    )


def test_fanout_hash_keeps_both_directions_of_each_flow_in_one_socket(pair: VethPair) -> None:
    first = open_input(pair, fanout_group=7, name="first")
    second = open_input(pair, fanout_group=7, name="second")
    readers = [Reader(first), Reader(second)]
    ports = range(42000, 42016)
    requests = {
        port: [udp_frame("192.0.2.1", "192.0.2.2", port, 53, b"q" * size) for size in (1, 2, 3)]
        for port in ports
    }
    replies = {
        port: [udp_frame("192.0.2.2", "192.0.2.1", 53, port, b"r" * size) for size in (1, 2, 3)]
        for port in ports
    }
    out, back = sender(pair.client), sender(pair.server)  # requests leave the client's end: outgoing there
    for port in ports:
        for frame in requests[port]:
            out.send(frame)
        for frame in replies[port]:
            back.send(frame)
    flows = {port: requests[port] + replies[port] for port in ports}
    total = sum(map(len, flows.values()))
    readers[0].wait_until(lambda: sum(len(reader.frames()) for reader in readers) >= total)
    time.sleep(0.3)  # a packet delivered twice would come now
    for reader in readers:
        reader.stop()
    first.close()
    second.close()

    captured = [reader.frames() for reader in readers]
    assert Counter(captured[0] + captured[1]) == Counter(frame for sent in flows.values() for frame in sent)
    owners = {
        port: {index for index, got in enumerate(captured) if set(sent) & set(got)}
        for port, sent in flows.items()
    }
    assert all(len(owner) == 1 for owner in owners.values()), owners
    assert {index for owner in owners.values() for index in owner} == {0, 1}  # both got flows
    assert [stage.context.counters.get("kernel_received") for stage in (first, second)] == list(
        map(len, captured)
    )


def test_kernel_drops_and_ring_freezes_are_counted_periodically_and_at_close(pair: VethPair) -> None:
    stage = open_input(pair, block_size="4KiB", block_count=2, snaplen=2048, frame_size=2048)
    sent = frames(3000, size=100)
    wire = sender(pair.server)
    for frame in sent:  # nothing reads yet: both blocks fill and the ring freezes
        wire.send(frame)
    reader = Reader(stage)
    counters = stage.context.counters
    reader.wait_until(lambda: counters.get("kernel_received") > 0, timeout=3.0)  # read within 1 s
    delivered = reader.frames()
    assert counters.values == {
        "kernel_received": 3000,
        "dropped.kernel": 3000 - len(delivered),
        "kernel_freeze_count": 1,
    }
    assert 0 < len(delivered) < 100
    assert delivered == sent[: len(delivered)]  # the first ones, in order: then the ring was full

    wire.send(sent[0])  # the kernel opens a block given back: the ring thaws
    reader.wait_until(lambda: len(reader.frames()) == len(delivered) + 1)
    reader.stop()
    stage.close()  # the last reading
    assert counters.values == {
        "kernel_received": 3001,
        "dropped.kernel": 3000 - len(delivered),
        "kernel_freeze_count": 1,
    }
    stage.close()  # a second close changes nothing
    assert counters.get("kernel_received") == 3001


def test_a_device_taken_down_ends_the_reading_after_what_was_captured(pair: VethPair) -> None:
    stage = open_input(pair, block_timeout="200ms")
    reader = Reader(stage)
    sent = frames(2)
    wire = sender(pair.server)
    for frame in sent:
        wire.send(frame)
    pair.client.run("ip", "link", "set", pair.client.device, "down")  # before the block is handed over
    reader.thread.join(3.0)
    assert not reader.thread.is_alive(), "read() did not end when the device went down"
    stage.close()
    assert reader.frames() == sent
    assert stage.context.failures == [
        f"af_packet input 'afp': device {pair.client.device!r}: the device went down"
    ]


def send_to_loopback(pair: VethPair) -> None:
    """One UDP datagram from 127.0.0.1 to itself, in the client namespace."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"to myself", ("127.0.0.1", 9))

    in_namespace(pair.client.namespace, send)


@pytest.mark.parametrize(
    ("device", "counts"),
    [
        ("lo", {"kernel_received": 1, "dropped.kernel": 0, "kernel_freeze_count": 0}),
        (
            "any",
            {
                "kernel_received": 2,
                "dropped.kernel": 0,
                "kernel_freeze_count": 0,
                "dropped.loopback_duplicate": 1,
            },
        ),
    ],
)
def test_a_packet_on_the_loopback_device_is_captured_once(
    pair: VethPair, device: str, counts: dict[str, int]
) -> None:
    """The kernel hands a loopback capture each packet twice, going out and coming in: the
    input keeps the incoming copy, as libpcap does."""
    stage = open_input(pair, device=device, bpf_filter="udp port 9")
    reader = Reader(stage)
    send_to_loopback(pair)
    reader.wait_until(lambda: len(reader.frames()) == 1)
    time.sleep(0.3)  # the second copy would come now
    reader.stop()
    stage.close()
    [(_, batch)] = reader.batches
    assert batch.link_type == (1 if device == "lo" else 113)
    assert batch.frames[0].endswith(b"to myself")
    assert stage.context.counters.values == counts


def test_promiscuous_mode_lasts_as_long_as_the_capture(pair: VethPair) -> None:
    client = pair.client
    assert "promiscuity 0 " in link_details(client)
    stage = open_input(pair)
    assert "promiscuity 1 " in link_details(client)
    stage.close()
    assert "promiscuity 0 " in link_details(client)
    stage = open_input(pair, promiscuous=False)
    assert "promiscuity 0 " in link_details(client)
    stage.close()


def test_start_up_errors_name_the_device_in_one_line(pair: VethPair) -> None:
    device = pair.client.device
    with pytest.raises(StartupError) as error:
        open_input(pair, bpf_filter="udp port")
    assert str(error.value) == (
        f"af_packet input 'afp': device {device!r}: bpf_filter 'udp port': "
        "can't parse filter expression: syntax error"
    )
    with pytest.raises(StartupError) as error:
        open_input(pair, device="any", bpf_filter="ether[2] = 1")
    assert str(error.value) == (
        "af_packet input 'afp': device 'any': bpf_filter 'ether[2] = 1': reads cooked header fields the "
        "kernel cannot filter on (only the packet type and the protocol)"
    )
    member = open_input(pair, fanout_group=9, fanout_mode="hash")
    with pytest.raises(StartupError) as error:
        open_input(pair, fanout_group=9, fanout_mode="lb", name="other")
    member.close()
    assert str(error.value) == (
        f"af_packet input 'other': device {device!r}: cannot capture: fanout_group 9 (lb): Invalid argument "
        "(the group exists with another fanout_mode or on another device)"
    )
    pair.client.run("ip", "link", "set", device, "down")
    with pytest.raises(StartupError) as error:
        open_input(pair)
    assert (
        str(error.value) == f"af_packet input 'afp': device {device!r}: cannot capture: the device is not up"
    )
    assert "promiscuity 0 " in link_details(pair.client)  # a failed start leaves nothing behind


# -- configuration: flowpipe check ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "errors"),
    [
        pytest.param(
            {"block_size": 3000},
            ["block_size: must be a power of two and at least the page size (4096), got 3000"],
            id="block-size",
        ),
        pytest.param(
            {"block_size": "64KiB"},
            [
                "block_size: must hold a packet of snaplen (262144) bytes and its headers: "
                "at least 524288, or lower snaplen"
            ],
            id="block-holds-snaplen",
        ),
        pytest.param(
            {"block_size": "4KiB", "snaplen": 1500, "frame_size": 100},
            ["frame_size: must be a multiple of 16 from 80 to block_size, got 100"],
            id="frame-size",
        ),
        pytest.param(
            {"block_timeout": "0ms", "fanout_mode": "lb"},
            [
                "block_timeout: must be from 1ms to 65.535s, got 0s",
                "fanout_mode: applies with fanout_group only",
            ],
            id="timeout-and-mode-without-group",
        ),
        pytest.param(
            {"fanout_group": 65536}, ["fanout_group: must be <= 65535, got 65536"], id="group-range"
        ),
    ],
)
def test_check_reports_ring_and_fanout_options_at_their_place(
    tmp_path: Path, options: dict[str, object], errors: list[str]
) -> None:
    pipeline = {
        "inputs": [{"type": "af_packet", "device": "eth0", **options}],
        "decoders": [{"type": "ip"}],
        "outputs": [{"type": "stdout"}],
    }
    result = check(tmp_path, yaml.safe_dump(pipeline, sort_keys=False))
    assert (result.returncode, result.stdout) == (2, "")
    where = [line.split(": ", 2)[2] for line in result.stderr.splitlines()]  # flowpipe: FILE:LINE:COLUMN: ...
    assert where == [f"inputs.0.{error}" for error in errors]


def test_check_accepts_an_af_packet_input(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        """\
        inputs:
          - type: af_packet
            device: eth0
            snaplen: 1514
            promiscuous: false
            bpf_filter: tcp port 80
            block_size: 4MiB
            block_count: 64
            frame_size: 2KiB
            block_timeout: 50ms
            fanout_group: 17
            fanout_mode: hash
        decoders: [{type: ip}]
        outputs: [{type: stdout}]
        """,
    )
    assert (result.returncode, result.stderr) == (0, "")
