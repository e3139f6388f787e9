"""Flow records through the real CLI: ``flowpipe run`` with the ``ip`` decoder alone (per-packet
events and flow records), with flow records off, and followed by a decoder that consumes what
the ``ip`` decoder forwards (a local plugin that turns each forwarded packet into an event)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dpkt
from captures import ethernet, icmp, ip_fragment, ip_packet, tcp_frame, udp, udp_frame, write_pcap

T0 = 1_700_000_000.0
CLIENT, SERVER = "192.0.2.10", "198.51.100.20"
SYN, ACK, FIN, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
PACKETS = [
    (T0, tcp_frame(CLIENT, SERVER, 41000, 80, flags=SYN, seq=10)),
    (T0 + 0.01, tcp_frame(SERVER, CLIENT, 80, 41000, flags=SYN | ACK, seq=50, ack=11)),
    (
        T0 + 0.02,
        tcp_frame(CLIENT, SERVER, 41000, 80, b"GET / HTTP/1.0\r\n\r\n", flags=PSH | ACK, seq=11, ack=51),
    ),
    (T0 + 0.03, udp_frame(CLIENT, SERVER, 53000, 53, b"query")),
    (
        T0 + 0.04,
        tcp_frame(SERVER, CLIENT, 80, 41000, b"HTTP/1.0 200 OK\r\n\r\n", flags=PSH | ACK, seq=51, ack=29),
    ),
    (T0 + 0.05, udp_frame(SERVER, CLIENT, 53, 53000, b"answer!")),
    (T0 + 0.06, tcp_frame(SERVER, CLIENT, 80, 41000, flags=FIN | ACK, seq=70, ack=29)),
    (T0 + 0.07, tcp_frame(CLIENT, SERVER, 41000, 80, flags=FIN | ACK, seq=29, ack=71)),
    (T0 + 0.08, tcp_frame(SERVER, CLIENT, 80, 41000, flags=ACK, seq=71, ack=30)),
    (T0 + 0.09, ethernet(ip_packet(CLIENT, SERVER, icmp(8)))),
]
FLOWS = [  # (client, server, client packets/bytes, server packets/bytes, state, end reason), by last packet
    (f"{CLIENT}:53000", f"{SERVER}:53", (1, 47), (1, 49), None, "end_of_input"),
    (f"{CLIENT}:41000", f"{SERVER}:80", (3, 180), (4, 235), "SF", "fin"),
    (f"{CLIENT}:None", f"{SERVER}:None", (1, 42), (0, 0), None, "end_of_input"),
]
RECORDER = '''
"""Records each packet the ip decoder forwards as an event."""
from flowpipe import Decoder, hookimpl


class Recorder(Decoder):
    """One event per forwarded packet."""

    consumes = "transport"

    def decode(self, batch, events):
        for packet in batch:
            events.append({
                "event": {"dataset": "forwarded"},
                "flow_id": packet.flow.id,
                "from_client": packet.from_client,
                "payload": packet.payload.decode("latin-1"),
                "flags": packet.flags,
            })


@hookimpl
def flowpipe_add_decoders():
    return {"recorder": Recorder}
'''


def run(
    folder: Path, decoders: str, plugins: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """Run pcap -> ``decoders`` -> stdout over :data:`PACKETS`; the result and the events."""
    write_pcap(folder / "capture.pcap", PACKETS)
    pipeline = folder / "pipeline.yml"
    pipeline.write_text(
        plugins
        + "inputs:\n  - type: pcap\n    files: [capture.pcap]\n"
        + "decoders:\n"
        + decoders
        + "outputs:\n  - type: stdout\n    codec: json\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", str(pipeline)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result, [json.loads(line) for line in result.stdout.splitlines()]


def flow_summary(record: dict) -> tuple:
    source, destination, flow = record["source"], record["destination"], record["flow"]
    return (
        f"{source['ip']}:{source.get('port')}",
        f"{destination['ip']}:{destination.get('port')}",
        (source["packets"], source["bytes"]),
        (destination["packets"], destination["bytes"]),
        flow.get("state"),
        flow["end_reason"],
    )


def decoder_line(result: subprocess.CompletedProcess[str], name: str) -> str:
    [line] = [line for line in result.stderr.splitlines() if line.split()[:2] == ["decoder", name]]
    return line


def test_ip_decoder_alone_emits_packet_events_and_flow_records(tmp_path: Path) -> None:
    result, events = run(tmp_path, "  - type: ip\n")
    datasets = [event["event"]["dataset"] for event in events]
    assert datasets == ["packet"] * len(PACKETS) + ["flow"] * 3
    records = events[len(PACKETS) :]
    assert [flow_summary(record) for record in records] == FLOWS
    assert all(record["flow"]["final"] for record in records)
    assert records[1]["event"]["duration"] == 80_000_000
    assert records[2]["icmp"] == {"type": 8, "code": 0}
    assert [record["network"]["community_id"][:2] for record in records] == ["1:"] * 3
    assert decoder_line(result, "ip").split()[2:8] == ["in", "10", "out", "13", "flows", "3"]


def test_flow_records_can_be_turned_off(tmp_path: Path) -> None:
    result, events = run(tmp_path, "  - type: ip\n    flows: {enabled: false}\n")
    assert [event["event"]["dataset"] for event in events] == ["packet"] * len(PACKETS)
    assert decoder_line(result, "ip").split()[2:] == ["in", "10", "out", "10"]


def test_a_following_decoder_gets_the_tcp_udp_and_icmp_packets(tmp_path: Path) -> None:
    (tmp_path / "recorder.py").write_text(RECORDER)
    result, events = run(
        tmp_path,
        "  - type: ip\n    flows: {period: 0}\n  - type: recorder\n",
        plugins="plugins: [recorder.py]\n",
    )
    forwarded = [event for event in events if event["event"]["dataset"] == "forwarded"]
    records = [event for event in events if event["event"]["dataset"] == "flow"]
    assert [event["event"]["dataset"] for event in events].count("packet") == 0
    assert [flow_summary(record) for record in records] == FLOWS
    tcp_id, udp_id, icmp_id = records[1]["flow"]["id"], records[0]["flow"]["id"], records[2]["flow"]["id"]
    assert [
        (event["flow_id"], event["from_client"], event["payload"], event["flags"]) for event in forwarded
    ] == [
        (tcp_id, True, "", SYN),
        (tcp_id, False, "", SYN | ACK),
        (tcp_id, True, "GET / HTTP/1.0\r\n\r\n", PSH | ACK),
        (udp_id, True, "query", 0),
        (tcp_id, False, "HTTP/1.0 200 OK\r\n\r\n", PSH | ACK),
        (udp_id, False, "answer!", 0),
        (tcp_id, False, "", FIN | ACK),
        (tcp_id, True, "", FIN | ACK),
        (tcp_id, False, "", ACK),
        (icmp_id, True, "\x08\x00\xf7\xfd\x00\x01\x00\x01", 0),  # from the ICMP header on
    ]
    assert decoder_line(result, "ip").split()[2:8] == ["in", "10", "out", "13", "flows", "3"]
    assert decoder_line(result, "recorder").split()[2:6] == ["in", "10", "out", "10"]


def check(folder: Path, flows: str) -> subprocess.CompletedProcess[str]:
    """``flowpipe check`` of a pipeline whose ``ip`` decoder has the ``flows`` section ``flows``."""
    (folder / "pipeline.yml").write_text(
        "inputs:\n  - type: pcap\n    files: [capture.pcap]\n"
        f"decoders:\n  - type: ip\n    flows:\n{flows}"
        "outputs:\n  - type: stdout\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "flowpipe", "check", "-c", "pipeline.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
    )


def test_flow_options_are_checked(tmp_path: Path) -> None:
    result = check(tmp_path, "      max_flow: 10\n")
    assert (result.returncode, result.stderr) == (
        2,
        "flowpipe: pipeline.yml:7:7: decoders.0.flows.max_flow: unknown option (did you mean 'max_flows'?)\n",
    )
    result = check(tmp_path, "      timeout: 0\n")
    assert (result.returncode, result.stderr) == (
        2,
        "flowpipe: pipeline.yml:7:7: decoders.0.flows.timeout: must be more than 0\n",
    )
    result = check(tmp_path, "      period: 1m\n      max_flows: 1000\n")
    assert (result.returncode, result.stderr) == (0, "")


def test_fragmented_udp_is_one_event_counted_in_its_flow(tmp_path: Path) -> None:
    datagram = bytes(udp(5353, 53, b"q" * 1000))  # 1008 bytes: fragments at 0, 512 (last)
    fragments = [
        (T0, ethernet(ip_fragment(CLIENT, SERVER, 17, datagram[512:], 512, False, 7))),
        (T0 + 0.1, ethernet(ip_fragment(CLIENT, SERVER, 17, datagram[:512], 0, True, 7))),
        (T0 + 0.2, ethernet(ip_fragment(CLIENT, SERVER, 17, datagram[:256], 0, True, 8))),  # never completed
    ]
    write_pcap(tmp_path / "capture.pcap", fragments)
    (tmp_path / "pipeline.yml").write_text(
        "inputs:\n  - type: pcap\n    files: [capture.pcap]\n"
        "decoders:\n  - type: ip\n    defrag: {timeout: 10s}\n"
        "outputs:\n  - type: stdout\n    codec: json\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "run", "-c", "pipeline.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    packet, record = [json.loads(line) for line in result.stdout.splitlines()]
    assert (packet["@timestamp"], packet["network"], packet["source"], packet["destination"]) == (
        "2023-11-14T22:13:20.100Z",
        {"type": "ipv4", "transport": "udp", "iana_number": "17", "bytes": 530 + 546, "packets": 2},
        {"ip": CLIENT, "port": 5353},
        {"ip": SERVER, "port": 53},
    )
    assert flow_summary(record) == (f"{CLIENT}:5353", f"{SERVER}:53", (2, 1076), (0, 0), None, "end_of_input")
    assert decoder_line(result, "ip").split()[2:] == [
        "in",
        "3",
        "out",
        "2",
        "defrag.held",
        "2",
        "defrag.reassembled",
        "1",
        "flows",
        "1",
        "dropped",
        "1",
        "(defrag.timeout",
        "1)",
    ]


def test_defrag_max_bytes_is_checked(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yml").write_text(
        "inputs:\n  - type: pcap\n    files: [capture.pcap]\n"
        "decoders:\n  - type: ip\n    defrag:\n      max_bytes: 64KiB\n"
        "outputs:\n  - type: stdout\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowpipe", "check", "-c", "pipeline.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert (result.returncode, result.stderr) == (
        2,
        "flowpipe: pipeline.yml:7:7: decoders.0.defrag.max_bytes: must be at least 128KiB (131072 bytes), "
        "got 65536\n",
    )
