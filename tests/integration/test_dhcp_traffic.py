"""The dhcpv4 analyzer on real traffic: busybox udhcpc gets a lease from dnsmasq across a veth pair.

dnsmasq serves DHCP (no DNS) in the server namespace, with a fixed lease for the client's MAC;
``udhcpc`` in the client namespace takes the lease and configures it (so that it can release it
from that address), and releases it when sent SIGUSR2: DISCOVER, OFFER, REQUEST, ACK, RELEASE.
tcpdump captures them inside the client namespace. The transaction ID and the parameter request list are
read from the capture with dpkt, independently of flowpipe.
"""

from __future__ import annotations

import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import dpkt
from analyzers import transactions
from netns import Side, in_namespace, require_programs, veth_pair
from sniff import sniffing

MAC = "02:00:00:fa:00:01"
LEASE = "192.0.2.100"
SERVER = "192.0.2.2"
HOSTNAME = "fp-test-client"
REQUESTED_NAMES = {
    1: "Subnet Mask",
    3: "Router",
    6: "Domain Name Server",
    12: "Host Name",
    15: "Domain Name",
    28: "Broadcast Address",
    42: "NTP Servers",
}
"""Names of the options udhcpc asks for by default."""
EVENT_SCRIPT = """#!/bin/sh
# udhcpc's event script: configure the lease (udhcpc releases it from its address), and say when
# the lease is bound and when it was released, in files next to this script.
case "$1" in
    bound) ip addr add "$ip/$mask" dev "$interface" && touch "$0.bound" ;;
    deconfig) [ ! -e "$0.bound" ] || touch "$0.released" ;;
esac
exit 0
"""


def start_dnsmasq(server: Side, folder: Path) -> subprocess.Popen[bytes]:
    """dnsmasq serving DHCP only on the server's veth, with a fixed lease for MAC; ready on return."""
    dnsmasq = subprocess.Popen(
        server.command(
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            f"--interface={server.device}",
            "--bind-interfaces",
            f"--dhcp-range={LEASE},192.0.2.149,255.255.255.0,1h",
            f"--dhcp-host={MAC},{LEASE}",
            "--dhcp-option=option:domain-name,example.test",
            "--dhcp-authoritative",
            "--no-ping",
            f"--dhcp-leasefile={folder / 'leases'}",
            f"--pid-file={folder / 'dnsmasq.pid'}",
            f"--log-facility={folder / 'dnsmasq.log'}",
            "--user=root",
            "--group=root",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not server.run("ss", "-Hlun", "sport = :67").stdout.strip():  # no packet on the wire
        assert dnsmasq.poll() is None, f"dnsmasq exited with {dnsmasq.returncode}"
        assert time.monotonic() < deadline, "dnsmasq did not listen on port 67 in 10 s"
        time.sleep(0.05)
    return dnsmasq


def wait_for(path: Path, what: str, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"udhcpc exited with {process.returncode} before the lease was {what}"
        assert time.monotonic() < deadline, f"the lease was not {what} in {timeout} s"
        time.sleep(0.02)


def request_list(capture: Path) -> tuple[int, list[int]]:
    """The transaction ID and the parameter request list of the capture's first DHCP message."""
    with capture.open("rb") as file:
        for _, frame in dpkt.pcap.Reader(file):
            message = dpkt.dhcp.DHCP(dpkt.ethernet.Ethernet(frame).data.data.data)
            return message.xid, list(dict(message.opts)[dpkt.dhcp.DHCP_OPT_PARAM_REQ])
    raise AssertionError("no DHCP message captured")


def test_udhcpc_gets_and_releases_a_lease_from_dnsmasq(tmp_path: Path) -> None:
    require_programs("dnsmasq", "busybox", "tcpdump", "ss")
    script = tmp_path / "udhcpc.sh"
    script.write_text(EVENT_SCRIPT)
    script.chmod(0o755)
    with veth_pair(server_address=SERVER) as pair:
        client, server = pair.client, pair.server
        client.run("ip", "link", "set", "dev", client.device, "address", MAC)
        dnsmasq = start_dnsmasq(server, tmp_path)
        try:
            with ExitStack() as stack:  # tcpdump starts in the client namespace, from a thread there
                capture = in_namespace(
                    client.namespace,
                    stack.enter_context,
                    sniffing(tmp_path / "dhcp.pcap", "udp and (port 67 or port 68)", client.device),
                )
                udhcpc = subprocess.Popen(
                    client.command(
                        "busybox", "udhcpc", "-i", client.device, "-f", "-n", "-t", "3", "-T", "1",
                        "-s", str(script), "-x", f"hostname:{HOSTNAME}",
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    wait_for(Path(f"{script}.bound"), "bound", udhcpc)
                    udhcpc.send_signal(signal.SIGUSR2)  # release the lease
                    wait_for(Path(f"{script}.released"), "released", udhcpc)
                finally:
                    udhcpc.terminate()
                    udhcpc.wait(timeout=10)
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
    xid, requested = request_list(capture)
    transaction_id = f"0x{xid:08x}"

    events = transactions(tmp_path, capture)
    assert [
        (
            event["dhcpv4"]["op_code"],
            event["dhcpv4"]["option"]["message_type"],
            event["status"],
            event["client"]["ip"],
            event["client"]["port"],
            event["server"]["ip"],
            event["server"]["port"],
            event["dhcpv4"]["client_mac"],
        )
        for event in events
    ] == [
        ("bootrequest", "discover", "OK", "0.0.0.0", 68, "255.255.255.255", 67, MAC),
        ("bootreply", "offer", "OK", LEASE, 68, SERVER, 67, MAC),
        ("bootrequest", "request", "OK", "0.0.0.0", 68, "255.255.255.255", 67, MAC),
        ("bootreply", "ack", "OK", LEASE, 68, SERVER, 67, MAC),
        ("bootrequest", "release", "OK", LEASE, 68, SERVER, 67, MAC),
    ]
    discover, offer, request, ack, release = events
    assert {event["dhcpv4"]["transaction_id"] for event in (discover, offer, request, ack)} == {
        transaction_id
    }
    assert not any("notes" in event for event in events)

    names = [REQUESTED_NAMES[code] for code in requested]
    assert discover["dhcpv4"]["option"]["parameter_request_list"] == names
    assert discover["dhcpv4"]["option"]["hostname"] == HOSTNAME
    assert discover["dhcpv4"]["option"]["class_identifier"].startswith("udhcp ")
    assert "assigned_ip" not in discover["dhcpv4"]

    server_options = {
        "server_identifier": SERVER,
        "ip_address_lease_time_sec": 3600,
        "renewal_time_sec": 1800,
        "rebinding_time_sec": 3150,
        "subnet_mask": "255.255.255.0",
        "broadcast_address": "192.0.2.255",
        "router": [SERVER],
        "domain_name": "example.test",
    }
    for reply in (offer, ack):
        assert reply["dhcpv4"]["assigned_ip"] == LEASE
        assert reply["dhcpv4"]["server_ip"] == SERVER
        assert {name: reply["dhcpv4"]["option"].get(name) for name in server_options} == server_options
        assert reply["related"]["ip"] == [LEASE, SERVER]
    assert ack["dhcpv4"]["option"]["hostname"] == HOSTNAME

    assert request["dhcpv4"]["option"]["requested_ip_address"] == LEASE
    assert request["dhcpv4"]["option"]["server_identifier"] == SERVER
    assert release["dhcpv4"]["client_ip"] == LEASE
    assert release["dhcpv4"]["option"]["server_identifier"] == SERVER
    assert events.counters["dhcpv4.transactions"] == 5
