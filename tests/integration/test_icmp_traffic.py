"""The icmp analyzer on real traffic: ping (IPv4 and IPv6) and a kernel's port unreachable, on lo.

The identifiers and sequence numbers the events must carry are read from the capture with dpkt,
independently of flowpipe.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import dpkt
import pytest
from analyzers import transactions
from sniff import free_port, sniffing


def ping(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("ping") is None:
        pytest.skip("this test needs 'ping' (Debian package iputils-ping), which is not installed")
    return subprocess.run(["ping", "-n", *args], capture_output=True, text=True, timeout=30)


def echo_requests(capture: Path) -> list[tuple[int, int, int]]:
    """(type, identifier, sequence) of every ICMP/ICMPv6 echo request and reply in ``capture``, in order."""
    found = []
    with capture.open("rb") as file:
        for _, frame in dpkt.pcap.Reader(file):
            packet = dpkt.ethernet.Ethernet(frame).data
            message = packet.data
            if isinstance(message, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6) and message.type in (8, 0, 128, 129):
                ident, seq = (
                    int.from_bytes(bytes(message)[4:6], "big"),
                    int.from_bytes(bytes(message)[6:8], "big"),
                )
                found.append((message.type, ident, seq))
    return found


def test_two_pings_on_loopback_are_two_ok_transactions(tmp_path: Path) -> None:
    with sniffing(tmp_path / "ping.pcap", "icmp") as capture:
        result = ping("-c", "2", "-i", "0.2", "-W", "2", "127.0.0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    seen = echo_requests(capture)
    assert [(icmp_type, seq) for icmp_type, _, seq in seen] == [(8, 1), (0, 1), (8, 2), (0, 2)]
    identifier = seen[0][1]
    assert {ident for _, ident, _ in seen} == {identifier}

    events = transactions(tmp_path, capture)
    assert [
        (
            event["status"],
            event["icmp"],
            event["client"],
            event["server"],
            event["network"]["transport"],
            event["path"],
        )
        for event in events
    ] == [
        (
            "OK",
            {
                "version": 4,
                "request": {"message": "EchoRequest", "type": 8, "code": 0, "id": identifier, "seq": seq},
                "response": {"message": "EchoReply", "type": 0, "code": 0, "id": identifier, "seq": seq},
            },
            {"ip": "127.0.0.1", "bytes": 64},
            {"ip": "127.0.0.1", "bytes": 64},
            "icmp",
            "127.0.0.1",
        )
        for seq in (1, 2)
    ]
    assert all(event["event"]["duration"] >= 0 for event in events)
    assert events.counters["icmp.transactions"] == 2


def test_ping6_on_loopback_is_one_ok_transaction(tmp_path: Path) -> None:
    with sniffing(tmp_path / "ping6.pcap", "icmp6 and (ip6[40] == 128 or ip6[40] == 129)") as capture:
        result = ping("-6", "-c", "1", "-W", "2", "::1")
    if result.returncode != 0:
        pytest.skip(f"IPv6 ping on lo does not work here: {(result.stdout + result.stderr).strip()}")
    seen = echo_requests(capture)
    assert [(icmp_type, seq) for icmp_type, _, seq in seen] == [(128, 1), (129, 1)]
    identifier = seen[0][1]

    (event,) = transactions(tmp_path, capture)
    assert event["status"] == "OK"
    assert event["network"]["type"] == "ipv6"
    assert event["network"]["transport"] == "ipv6-icmp"
    assert event["icmp"] == {
        "version": 6,
        "request": {"message": "EchoRequest", "type": 128, "code": 0, "id": identifier, "seq": 1},
        "response": {"message": "EchoReply", "type": 129, "code": 0, "id": identifier, "seq": 1},
    }
    assert (event["client"], event["server"]) == ({"ip": "::1", "bytes": 64}, {"ip": "::1", "bytes": 64})


def test_udp_to_a_closed_port_gives_a_port_unreachable_error(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    payload = b"is anybody there?"
    with (
        sniffing(tmp_path / "unreachable.pcap", "icmp") as capture,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        sender.sendto(payload, ("127.0.0.1", port))

    events = transactions(tmp_path, capture)
    (event,) = events
    quoted = 20 + 8 + len(payload)  # the IP header, UDP header and data of the datagram refused
    assert event["status"] == "Error"
    assert event["event"]["type"] == ["connection", "protocol", "error"]
    assert event["icmp"] == {
        "version": 4,
        "request": {"message": "DestinationUnreachable(Port)", "type": 3, "code": 3},
    }
    assert (event["client"], event["server"]) == (
        {"ip": "127.0.0.1", "bytes": 8 + quoted},
        {"ip": "127.0.0.1", "bytes": 0},
    )
    assert "notes" not in event
