"""`flowpipe run` through the ``ip`` decoder: good packets become events, malformed ones are
counted by reason in the summary, and the run still succeeds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from captures import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    ethernet,
    icmp,
    ip_packet,
    ipv6_fragment_header,
    ipv6_options_header,
    ipv6_packet,
    linux_sll,
    linux_sll2,
    loopback,
    tcp,
    tcp_frame,
    udp,
    udp_frame,
    write_pcap,
)

V4_A, V4_B = "192.0.2.10", "203.0.113.20"
V6_A, V6_B = "2001:db8::a", "2001:db8::b"
GOOD = [
    (tcp_frame(V4_A, V4_B, 41000, 80, b"GET / HTTP/1.1\r\n\r\n"), (V4_A, 41000, V4_B, 80, "tcp", "ipv4")),
    (udp_frame(V6_A, V6_B, 53000, 53, b"query"), (V6_A, 53000, V6_B, 53, "udp", "ipv6")),
    (ethernet(ip_packet(V4_A, V4_B, icmp(8))), (V4_A, None, V4_B, None, "icmp", "ipv4")),
    (
        ethernet(ip_packet(V4_B, V4_A, tcp(443, 41001)), vlans=[10]),
        (V4_B, 443, V4_A, 41001, "tcp", "ipv4"),
    ),
    (
        ethernet(ip_packet(V6_B, V6_A, udp(123, 123)), vlans=[100, 200]),
        (V6_B, 123, V6_A, 123, "udp", "ipv6"),
    ),
    (
        ethernet(
            ipv6_packet(V6_A, V6_B, 0, ipv6_options_header(44) + ipv6_fragment_header(17, 1448) + bytes(64))
        ),
        (V6_A, None, V6_B, None, "udp", "ipv6"),
    ),
]
GOOD_FRAME = GOOD[0][0]
MALFORMED = [
    GOOD_FRAME[:10],  # truncated Ethernet header
    ethernet(bytes(28), ethertype=0x0806),  # ARP: not IP
    GOOD_FRAME[:30],  # truncated IPv4 header
    GOOD_FRAME[:14] + b"\x65" + GOOD_FRAME[15:],  # version 6 in an IPv4 header
    GOOD_FRAME[:36],  # two bytes of TCP: no ports
    ethernet(ipv6_packet(V6_A, V6_B, 0, ipv6_options_header(17, 24)[:16])),  # options header cut
    GOOD_FRAME[:12],  # truncated Ethernet header
]
DECODER_DROPS = (
    "dropped 7 (malformed.bad_ipv4_version 1, malformed.truncated_ethernet 2, "
    "malformed.truncated_ipv4 1, malformed.truncated_ipv6_extension 1, malformed.truncated_tcp 1, "
    "not_ip 1)"
)


def run(
    folder: Path, packets: list[tuple[float, bytes]], linktype: int = 1
) -> subprocess.CompletedProcess[str]:
    """Write ``packets`` to a capture and run the pcap -> ip -> stdout pipeline: the ``ip`` decoder
    alone, without flow records nor defragmentation, emits one event per packet."""
    write_pcap(folder / "capture.pcap", packets, linktype=linktype)
    (folder / "pipeline.yml").write_text(
        "inputs:\n  - type: pcap\n    files: [capture.pcap]\n"
        "decoders:\n  - type: ip\n    flows: {enabled: false}\n    defrag: {enabled: false}\n"
        "outputs:\n  - type: stdout\n    codec: json\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(folder / "pipeline.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def endpoints(event: dict) -> tuple:
    source, destination, network = event["source"], event["destination"], event["network"]
    return (
        source["ip"],
        source.get("port"),
        destination["ip"],
        destination.get("port"),
        network["transport"],
        network["type"],
    )


def test_malformed_packets_are_counted_and_the_rest_shipped(tmp_path: Path) -> None:
    frames = [frame for pair in zip([f for f, _ in GOOD], MALFORMED, strict=False) for frame in pair]
    frames.append(MALFORMED[-1])
    packets = [(1_700_000_000 + index * 0.25, frame) for index, frame in enumerate(frames)]
    result = run(tmp_path, packets)

    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [endpoints(event) for event in events] == [expected for _, expected in GOOD]
    assert [event["@timestamp"] for event in events] == [
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:13:20.500Z",
        "2023-11-14T22:13:21.000Z",
        "2023-11-14T22:13:21.500Z",
        "2023-11-14T22:13:22.000Z",
        "2023-11-14T22:13:22.500Z",
    ]
    assert events[2]["icmp"] == {"type": 8, "code": 0}
    assert events[3]["network"]["vlan"] == {"id": "10"}
    assert (events[4]["network"]["vlan"], events[4]["network"]["inner"]) == (
        {"id": "100"},
        {"vlan": {"id": "200"}},
    )

    summary = result.stderr.splitlines()
    assert "13 packets read" in summary[0]
    assert "events shipped: stdout 6; dropped 7; decode errors 6" in summary[0]
    decoder = [line for line in summary if line.split()[:2] == ["decoder", "ip"]]
    assert len(decoder) == 1
    assert decoder[0].split()[2:6] == ["in", "13", "out", "6"]
    assert decoder[0].endswith(DECODER_DROPS)


IPV4_TCP = ip_packet(V4_A, V4_B, tcp(41000, 80))
IPV6_UDP = ip_packet(V6_A, V6_B, udp(53000, 53))


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (LINKTYPE_LINUX_SLL, linux_sll),
        (LINKTYPE_LINUX_SLL2, linux_sll2),
        (LINKTYPE_RAW, bytes),
        (LINKTYPE_NULL, loopback),
        (LINKTYPE_LOOP, lambda packet: loopback(packet, byteorder="big")),
    ],
    ids=["linux-sll", "linux-sll2", "raw", "null", "loop"],
)
def test_link_types_from_capture_files(tmp_path: Path, linktype: int, frame: Callable) -> None:
    result = run(tmp_path, [(1.0, frame(IPV4_TCP)), (2.0, frame(IPV6_UDP))], linktype)
    assert result.returncode == 0, result.stderr
    assert [endpoints(json.loads(line)) for line in result.stdout.splitlines()] == [
        (V4_A, 41000, V4_B, 80, "tcp", "ipv4"),
        (V6_A, 53000, V6_B, 53, "udp", "ipv6"),
    ]
