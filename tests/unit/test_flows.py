"""Flow records of the ``ip`` decoder on crafted conversations: exact counts per direction, TCP
states and end reasons, client/server choice, reuse after close, period reports, timeouts on
capture time, eviction, VLANs, ICMP and other protocols, tunnels."""

from __future__ import annotations

import socket
from typing import Any

import dpkt
from captures import (
    LINKTYPE_ETHERNET,
    ethernet,
    gre,
    icmp,
    icmp6,
    ip_packet,
    ip_raw,
    tcp,
    tcp_frame,
    udp,
    udp_frame,
    vxlan,
)

from flowpipe import PacketBatch, StageContext
from flowpipe.event import Event
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace, validate_options
from flowpipe.plugins.decoders.community_id import community_id
from flowpipe.plugins.decoders.flows import LINGER, conn_state
from flowpipe.plugins.decoders.ip import IpDecoder
from flowpipe.plugins.decoders.transport import Flow, TransportPacket

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SYN, ACK, FIN, RST, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH
A, B = "1.2.3.4", "5.6.7.8"  # the Community ID spec's example endpoints
TCP_ID = "1:wCb3OG7yAFWelaUydu0D+125CLM="  # spec: TCP 1.2.3.4:1122 <-> 5.6.7.8:3344, seed 0
UDP_ID = "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="  # spec: UDP 1.2.3.4:1122 <-> 5.6.7.8:3344
REQUEST = b"GET / HTTP/1.0\r\n\r\n"  # 18 bytes
RESPONSE = b"HTTP/1.0 200 OK\r\n\r\nhi!!"  # 23 bytes
FLOW_EVENT = {"dataset": "flow", "kind": "event", "category": ["network"], "type": ["connection"]}


def make_decoder(downstream: bool = False, **options: Any) -> IpDecoder:
    """An ``ip`` decoder built as the pipeline builds it; ``downstream``: a decoder follows."""
    assert validate_options(IpDecoder.options, options) == []
    config = build_namespace(IpDecoder.options, options)
    assert IpDecoder.check_config(config) == []
    decoder = IpDecoder(config, StageContext("ip", Counters("ip", "decoder")))
    decoder.downstream = downstream
    return decoder


def feed(
    decoder: IpDecoder, packets: list[tuple[float, bytes]], link_type: int = LINKTYPE_ETHERNET
) -> tuple[list[Event], list[TransportPacket]]:
    """Decode ``packets`` one batch per packet: the events and the forwarded packets."""
    events: list[Event] = []
    forwarded: list[TransportPacket] = []
    for timestamp, frame in packets:
        batch = PacketBatch(link_type, "test")
        batch.append(timestamp, frame, len(frame))
        forwarded.extend(decoder.decode(batch, events) or [])
    return events, forwarded


def records(events: list[Event]) -> list[Event]:
    return [event for event in events if event["event"]["dataset"] == "flow"]


def run(packets: list[tuple[float, bytes]], **options: Any) -> list[Event]:
    """Flow records of ``packets`` (a decoder follows the ``ip`` decoder), end of input included."""
    decoder = make_decoder(downstream=True, **options)
    events, _ = feed(decoder, packets)
    decoder.flush(events)
    return records(events)


def summary(record: Event) -> tuple:
    """(client, server, client packets/bytes, server packets/bytes, state, end reason, final)."""
    source, destination, flow = record["source"], record["destination"], record["flow"]
    return (
        f"{source['ip']}:{source.get('port')}",
        f"{destination['ip']}:{destination.get('port')}",
        (source["packets"], source["bytes"]),
        (destination["packets"], destination["bytes"]),
        flow.get("state"),
        flow.get("end_reason"),
        flow["final"],
    )


def conversation(
    client: str = A, server: str = B, client_port: int = 1122, server_port: int = 3344, start: float = T0
) -> list[tuple[float, bytes]]:
    """A whole TCP connection: handshake, a request and a response, FINs from both sides, the
    last ACK (8 packets; the client sends 234 bytes in 4 frames, the server 239 in 4)."""

    def c(offset: float, flags: int, seq: int, ack: int, data: bytes = b"") -> tuple[float, bytes]:
        return start + offset, tcp_frame(
            client, server, client_port, server_port, data, flags=flags, seq=seq, ack=ack
        )

    def s(offset: float, flags: int, seq: int, ack: int, data: bytes = b"") -> tuple[float, bytes]:
        return start + offset, tcp_frame(
            server, client, server_port, client_port, data, flags=flags, seq=seq, ack=ack
        )

    return [
        c(0.000, SYN, 100, 0),
        s(0.010, SYN | ACK, 300, 101),
        c(0.020, ACK, 101, 301),
        c(0.030, PSH | ACK, 101, 301, REQUEST),
        s(0.050, PSH | ACK, 301, 119, RESPONSE),
        s(0.060, FIN | ACK, 324, 119),
        c(0.070, FIN | ACK, 119, 325),
        s(0.080, ACK, 325, 120),
    ]


# -- TCP ---------------------------------------------------------------------------------------


def test_tcp_conversation_is_one_final_record_with_exact_counts() -> None:
    assert run(conversation()) == [
        {
            "@timestamp": "2023-11-14T22:13:20.080Z",
            "event": {
                **FLOW_EVENT,
                "start": "2023-11-14T22:13:20.000Z",
                "end": "2023-11-14T22:13:20.080Z",
                "duration": 80_000_000,
            },
            "flow": {"id": "768f81833f76fb0f", "final": True, "state": "SF", "end_reason": "fin"},
            "network": {
                "type": "ipv4",
                "transport": "tcp",
                "iana_number": "6",
                "community_id": TCP_ID,
                "packets": 8,
                "bytes": 473,
            },
            "source": {"ip": A, "port": 1122, "packets": 4, "bytes": 234},
            "destination": {"ip": B, "port": 3344, "packets": 4, "bytes": 239},
        }
    ]


def test_closed_flow_ends_linger_seconds_after_the_last_fin_is_acknowledged() -> None:
    decoder = make_decoder()
    events, _ = feed(decoder, conversation())
    closed = T0 + 0.080
    decoder.advance(closed + LINGER - 0.01, events)
    assert records(events) == []
    decoder.advance(closed + LINGER, events)
    assert [summary(record) for record in records(events)] == [
        (f"{A}:1122", f"{B}:3344", (4, 234), (4, 239), "SF", "fin", True)
    ]
    assert decoder.flows.flows == {}


def test_packets_after_close_count_in_the_closed_flow_while_it_lingers() -> None:
    """... and leave its state as it was when it closed."""
    late_rst = (T0 + 4.0, tcp_frame(A, B, 1122, 3344, flags=RST, seq=120))
    assert [summary(record) for record in run([*conversation(), late_rst])] == [
        (f"{A}:1122", f"{B}:3344", (5, 288), (4, 239), "SF", "fin", True)
    ]


def test_syn_on_a_closed_flow_starts_a_new_flow() -> None:
    first = conversation()
    second = [
        (T0 + 1.0, tcp_frame(A, B, 1122, 3344, flags=SYN, seq=9000)),
        (T0 + 1.5, tcp_frame(A, B, 1122, 3344, flags=SYN, seq=9000)),
    ]
    decoder = make_decoder(downstream=True)
    events, forwarded = feed(decoder, [*first, *second])
    assert [summary(record) for record in records(events)] == [
        (f"{A}:1122", f"{B}:3344", (4, 234), (4, 239), "SF", "fin", True)
    ]
    decoder.flush(events)
    ended, reused = records(events)
    assert summary(reused) == (f"{A}:1122", f"{B}:3344", (2, 108), (0, 0), "S0", "end_of_input", True)
    assert ended["flow"]["id"] != reused["flow"]["id"]
    assert ended["network"]["community_id"] == reused["network"]["community_id"] == TCP_ID
    assert reused["event"]["start"] == "2023-11-14T22:13:21.000Z"
    flows = [packet.flow for packet in forwarded]
    assert flows[7] is flows[0] and flows[8] is not flows[0] and flows[9] is flows[8]


def test_syn_with_fin_does_not_start_a_new_flow() -> None:
    packets = [
        (T0, tcp_frame(A, B, 1122, 3344, flags=SYN, seq=1)),
        (T0 + 0.1, tcp_frame(B, A, 3344, 1122, flags=RST | ACK, seq=0, ack=2)),
        (T0 + 0.2, tcp_frame(A, B, 1122, 3344, flags=SYN | FIN, seq=1)),
    ]
    assert [summary(record) for record in run(packets)] == [
        (f"{A}:1122", f"{B}:3344", (2, 108), (1, 54), "REJ", "rst", True)
    ]


def test_mid_stream_pickup_makes_the_higher_port_the_client() -> None:
    packets = [
        (T0, tcp_frame(B, A, 80, 40000, RESPONSE, flags=PSH | ACK, seq=5000, ack=700)),
        (T0 + 0.5, tcp_frame(A, B, 40000, 80, flags=ACK, seq=700, ack=5023)),
    ]
    assert [summary(record) for record in run(packets)] == [
        (f"{A}:40000", f"{B}:80", (1, 54), (1, 77), "OTH", "end_of_input", True)
    ]


def test_first_sender_is_the_client_when_ports_are_equal() -> None:
    packets = [
        (T0, tcp_frame(B, A, 179, 179, flags=ACK, seq=1)),
        (T0 + 1, tcp_frame(A, B, 179, 179, flags=ACK)),
    ]
    assert summary(run(packets)[0])[:2] == (f"{B}:179", f"{A}:179")


def test_receiver_of_a_syn_ack_is_the_client_whatever_the_ports() -> None:
    packets = [
        (T0, tcp_frame(B, A, 50000, 80, flags=SYN | ACK, seq=300, ack=101)),
        (T0 + 0.01, tcp_frame(A, B, 80, 50000, flags=ACK, seq=101, ack=301)),
    ]
    assert [summary(record) for record in run(packets)] == [
        (f"{A}:80", f"{B}:50000", (1, 54), (1, 54), "OTH", "end_of_input", True)
    ]


def test_rst_from_client_after_handshake() -> None:
    packets = [
        *conversation()[:4],
        (T0 + 0.04, tcp_frame(A, B, 1122, 3344, flags=RST | ACK, seq=119, ack=301)),
    ]
    assert [summary(record) for record in run(packets)] == [
        (f"{A}:1122", f"{B}:3344", (4, 234), (1, 54), "RSTO", "rst", True)
    ]


def test_rst_from_server_after_handshake() -> None:
    packets = [*conversation()[:4], (T0 + 0.04, tcp_frame(B, A, 3344, 1122, flags=RST, seq=301))]
    assert summary(run(packets)[0])[4:6] == ("RSTR", "rst")


def test_syn_answered_by_rst_is_rejected() -> None:
    packets = [
        (T0, tcp_frame(A, B, 1122, 3344, flags=SYN, seq=100)),
        (T0 + 0.001, tcp_frame(B, A, 3344, 1122, flags=RST | ACK, ack=101)),
    ]
    assert [summary(record) for record in run(packets)] == [
        (f"{A}:1122", f"{B}:3344", (1, 54), (1, 54), "REJ", "rst", True)
    ]


def test_a_connection_closed_at_capture_time_zero_lingers_and_ends() -> None:
    packets = [
        (0.0, tcp_frame(A, B, 1122, 3344, flags=SYN, seq=100)),
        (0.0, tcp_frame(B, A, 3344, 1122, flags=RST | ACK, ack=101)),
        (10.0, udp_frame(A, B, 5000, 53)),
    ]
    decoder = make_decoder(downstream=True)
    events, _ = feed(decoder, packets)
    assert [summary(record)[4:] for record in records(events)] == [("REJ", "rst", True)]


def test_unanswered_syn_and_open_connection_states() -> None:
    assert summary(run(conversation()[:1])[0])[4:6] == ("S0", "end_of_input")
    assert summary(run(conversation()[:5])[0])[4:6] == ("S1", "end_of_input")
    assert summary(run(conversation()[:6])[0])[4:6] == ("S3", "end_of_input")  # server FIN only


def test_fin_not_acknowledged_does_not_close() -> None:
    """Both FINs but the last ACK lost: the flow goes on until it times out."""
    packets = conversation()[:7]
    decoder = make_decoder()
    events, _ = feed(decoder, packets)
    decoder.advance(T0 + 0.07 + LINGER + 1, events)
    assert records(events) == []
    decoder.advance(T0 + 0.07 + 30, events)
    assert [summary(record)[4:] for record in records(events)] == [("SF", "timeout", True)]


def test_zeek_states_from_flags() -> None:
    any_, syn, fin, rst, data = 0x200, SYN, FIN, RST, 0x100
    assert conn_state(any_ | syn, 0) == "S0"
    assert conn_state(any_ | syn | rst, 0) == "RSTOS0"
    assert conn_state(0, any_ | syn | ACK | rst) == "RSTRH"
    assert conn_state(any_ | syn | fin, 0) == "SH"
    assert conn_state(0, any_ | syn | ACK | fin) == "SHR"
    assert conn_state(any_ | syn | fin, any_ | syn) == "S2"
    assert conn_state(any_ | syn | rst, any_ | syn | rst) == "REJ"
    assert conn_state(any_ | syn | rst | data, any_ | syn | rst) == "RSTR"
    assert conn_state(any_ | rst, any_) == "OTH"
    assert conn_state(any_ | fin, any_ | fin) == "SF"


# -- UDP, ICMP, other protocols -----------------------------------------------------------------


def test_udp_exchange_is_one_flow_that_times_out() -> None:
    packets = [
        (T0, udp_frame(A, B, 1122, 3344, b"q" * 10)),
        (T0 + 0.2, udp_frame(B, A, 3344, 1122, b"r" * 30)),
        (T0 + 31.0, udp_frame("192.0.2.1", "192.0.2.2", 5000, 53)),
    ]
    decoder = make_decoder(downstream=True)
    events, _ = feed(decoder, packets)
    assert records(events) == [
        {
            "@timestamp": "2023-11-14T22:13:20.200Z",
            "event": {
                **FLOW_EVENT,
                "start": "2023-11-14T22:13:20.000Z",
                "end": "2023-11-14T22:13:20.200Z",
                "duration": 200_000_000,
            },
            "flow": {"id": records(events)[0]["flow"]["id"], "final": True, "end_reason": "timeout"},
            "network": {
                "type": "ipv4",
                "transport": "udp",
                "iana_number": "17",
                "community_id": UDP_ID,
                "packets": 2,
                "bytes": 124,
            },
            "source": {"ip": B, "port": 3344, "packets": 1, "bytes": 72},
            "destination": {"ip": A, "port": 1122, "packets": 1, "bytes": 52},
        }
    ]


def test_icmp_echo_request_and_reply_share_a_flow_and_errors_have_their_own() -> None:
    packets = [
        (T0, ethernet(ip_packet(A, B, icmp(8)))),
        (T0 + 0.01, ethernet(ip_packet(B, A, icmp(0)))),
        (T0 + 0.02, ethernet(ip_packet(B, A, icmp(3, 1, bytes(32))))),
        (T0 + 0.03, ethernet(ip_packet(A, B, icmp(8)))),
    ]
    unreachable, echo = run(packets)  # in order of last activity
    assert summary(echo) == (f"{A}:None", f"{B}:None", (2, 84), (1, 42), None, "end_of_input", True)
    assert (echo["icmp"], echo["network"]["community_id"], echo["network"]["transport"]) == (
        {"type": 8, "code": 0},
        "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=",  # spec: ICMP echo 1.2.3.4 -> 5.6.7.8
        "icmp",
    )
    assert summary(unreachable)[:4] == (f"{B}:None", f"{A}:None", (1, 70), (0, 0))
    assert unreachable["icmp"] == {"type": 3, "code": 1}
    sender, receiver = socket.inet_aton(B), socket.inet_aton(A)  # one-way: the sender comes first
    assert unreachable["network"]["community_id"] == community_id(sender, receiver, 1, 3, 1, one_way=True)
    assert unreachable["network"]["community_id"] != community_id(receiver, sender, 1, 3, 1, one_way=True)


def test_a_flow_not_made_by_the_ip_decoder_has_no_ids() -> None:
    flow = Flow(("test",), 6, "ipv4", "192.0.2.1", 40000, "198.51.100.2", 80, T0)
    assert (flow.community_id, flow.id) == ("", "")


def test_icmp_reply_seen_first_makes_its_receiver_the_client() -> None:
    packets = [(T0, ethernet(ip_packet(B, A, icmp(0)))), (T0 + 1, ethernet(ip_packet(A, B, icmp(8))))]
    [echo] = run(packets)
    assert summary(echo)[:4] == (f"{A}:None", f"{B}:None", (1, 42), (1, 42))
    assert echo["icmp"] == {"type": 0, "code": 0}


def test_icmpv6_echo_has_the_spec_community_id() -> None:
    v6a, v6b = "fe80:1:203:405:607:809:a0b:c0d", "fe80:1011:1213:1415:1617:1819:1a1b:1c1d"
    packets = [
        (T0, ethernet(ip_packet(v6a, v6b, icmp6(128)))),
        (T0 + 1, ethernet(ip_packet(v6b, v6a, icmp6(129)))),
    ]
    [echo] = run(packets)
    assert (echo["network"]["community_id"], echo["network"]["transport"], echo["network"]["packets"]) == (
        "1:0bf7hyMJUwt3fMED7z8LIfRpBeo=",
        "ipv6-icmp",
        2,
    )


def test_other_protocols_are_keyed_on_addresses() -> None:
    rsvp = 46
    packets = [
        (T0, ethernet(ip_raw(A, B, rsvp, bytes(16)))),
        (T0 + 1, ethernet(ip_raw(B, A, rsvp, bytes(24)))),
        (T0 + 2, ethernet(ip_raw(A, B, rsvp, bytes(16)))),
    ]
    [record] = run(packets)
    assert summary(record) == (f"{A}:None", f"{B}:None", (2, 100), (1, 58), None, "end_of_input", True)
    assert (record["network"]["transport"], record["network"]["community_id"]) == (
        "46",
        "1:ikv3kmf89luf73WPz1jOs49S768=",  # spec: RSVP 1.2.3.4 <-> 5.6.7.8
    )


def test_later_fragments_count_in_a_flow_of_their_addresses() -> None:
    datagram = bytes(udp(1122, 3344, bytes(100)))
    first = dpkt.ip.IP(src=bytes((1, 2, 3, 4)), dst=bytes((5, 6, 7, 8)), p=17, id=7, mf=1, data=datagram[:48])
    later = dpkt.ip.IP(src=first.src, dst=first.dst, p=17, id=7, offset=6, data=datagram[48:])
    decoder = make_decoder(downstream=True, defrag={"enabled": False})
    events, forwarded = feed(decoder, [(T0, ethernet(first)), (T0 + 0.001, ethernet(later))])
    decoder.flush(events)
    assert forwarded == []
    assert decoder.context.counters.drops() == {"fragment": 2}
    ported, portless = records(events)
    assert summary(ported)[:4] == (f"{B}:3344", f"{A}:1122", (0, 0), (1, 82))
    assert summary(portless)[:4] == (f"{A}:None", f"{B}:None", (1, 94), (0, 0))
    assert portless["network"]["transport"] == "udp"


# -- time: periods, timeouts, eviction ----------------------------------------------------------


def test_long_flows_get_cumulative_reports_every_period() -> None:
    packets = [(T0 + second, udp_frame(A, B, 5000, 53, b"x")) for second in range(26)]
    packets.insert(10, (T0 + 9.5, udp_frame("192.0.2.1", B, 6000, 53)))
    decoder = make_decoder(downstream=True, flows={"period": "10s"})
    events, _ = feed(decoder, packets)
    decoder.flush(events)
    long_flow = f"{A}:5000"
    assert [
        (summary(record)[0], summary(record)[2], record["event"]["end"]) for record in records(events)
    ] == [
        (long_flow, (10, 430), "2023-11-14T22:13:29.000Z"),  # at 22:13:30
        ("192.0.2.1:6000", (1, 42), "2023-11-14T22:13:29.500Z"),  # at 22:13:40, a period old
        (long_flow, (20, 860), "2023-11-14T22:13:39.000Z"),
        ("192.0.2.1:6000", (1, 42), "2023-11-14T22:13:29.500Z"),  # end of input
        (long_flow, (26, 1118), "2023-11-14T22:13:45.000Z"),
    ]
    assert [record["flow"]["final"] for record in records(events)] == [False, False, False, True, True]
    assert len({record["flow"]["id"] for record in records(events)}) == 2
    assert "end_reason" not in records(events)[0]["flow"]


def test_period_zero_gives_final_records_only() -> None:
    packets = [(T0 + second, udp_frame(A, B, 5000, 53)) for second in range(26)]
    assert [summary(record)[2] for record in run(packets, flows={"period": 0})] == [(26, 1092)]


def test_timeout_expires_on_packets_of_other_flows() -> None:
    decoder = make_decoder(flows={"enabled": True, "period": 0})
    packets = [
        (T0, udp_frame(A, B, 5000, 53)),
        (T0 + 1, udp_frame(A, B, 5000, 53)),
        (T0 + 20, udp_frame(B, A, 7000, 7000)),
        (T0 + 31.5, udp_frame(B, A, 7000, 7000)),
    ]
    events, _ = feed(decoder, packets)
    assert [event["event"]["dataset"] for event in events] == ["packet", "packet", "packet", "flow", "packet"]
    assert summary(events[3])[2:6] == ((2, 84), (0, 0), None, "timeout")
    assert events[3]["event"]["end"] == "2023-11-14T22:13:21.000Z"


def test_timeout_expires_on_advance_without_packets() -> None:
    decoder = make_decoder(flows={"timeout": "5s", "period": 0})
    events, _ = feed(decoder, [(T0, udp_frame(A, B, 5000, 53))])
    decoder.advance(T0 + 4.9, events)
    assert records(events) == []
    decoder.advance(T0 + 5.0, events)
    assert [summary(record)[5] for record in records(events)] == ["timeout"]
    assert decoder.flows.flows == {}


def test_idle_gap_longer_than_the_timeout_splits_a_flow() -> None:
    packets = [(T0, udp_frame(A, B, 5000, 53)), (T0 + 40, udp_frame(A, B, 5000, 53))]
    assert [(summary(record)[2], summary(record)[5]) for record in run(packets)] == [
        ((1, 42), "timeout"),
        ((1, 42), "end_of_input"),
    ]


def test_max_flows_evicts_the_least_recently_active_flow() -> None:
    packets = [
        (T0, udp_frame(A, B, 1001, 53)),
        (T0 + 0.1, udp_frame(A, B, 1002, 53)),
        (T0 + 0.2, udp_frame(A, B, 1001, 53)),
        (T0 + 0.3, udp_frame(A, B, 1003, 53)),
    ]
    decoder = make_decoder(downstream=True, flows={"max_flows": 2})
    events, _ = feed(decoder, packets)
    assert [(summary(record)[0], summary(record)[5]) for record in records(events)] == [
        (f"{A}:1002", "evicted")
    ]
    decoder.flush(events)
    assert [(summary(record)[0], summary(record)[2]) for record in records(events)[1:]] == [
        (f"{A}:1001", (2, 84)),
        (f"{A}:1003", (1, 42)),
    ]
    assert decoder.context.counters.values == {"flows": 3, "flows_evicted": 1}


def test_memory_stays_under_max_flows_in_a_syn_flood() -> None:
    packets = [
        (T0 + n * 1e-4, tcp_frame(f"10.0.{n // 250}.{n % 250}", B, 1024 + n, 80, flags=SYN))
        for n in range(3000)
    ]
    decoder = make_decoder(downstream=True, flows={"max_flows": 100})
    feed(decoder, packets)
    assert len(decoder.flows.flows) == 100
    assert decoder.context.counters.get("flows_evicted") == 2900


# -- keys: VLANs, tunnels ----------------------------------------------------------------------


def test_same_tuple_on_two_vlans_is_two_flows() -> None:
    segment = ip_packet(A, B, tcp(1122, 3344, flags=ACK))
    packets = [
        (T0, ethernet(segment, vlans=[10])),
        (T0 + 1, ethernet(segment, vlans=[20])),
        (T0 + 2, ethernet(segment, vlans=[10])),
        (T0 + 3, ethernet(segment, vlans=[100, 200])),
    ]
    vlan20, vlan10, qinq = run(packets)  # in order of last activity
    assert (vlan10["network"]["vlan"], vlan10["network"]["packets"]) == ({"id": "10"}, 2)
    assert (vlan20["network"]["vlan"], vlan20["network"]["packets"]) == ({"id": "20"}, 1)
    assert (qinq["network"]["vlan"], qinq["network"]["inner"]) == ({"id": "100"}, {"vlan": {"id": "200"}})
    assert len({record["flow"]["id"] for record in (vlan10, vlan20, qinq)}) == 3
    assert {record["network"]["community_id"] for record in (vlan10, vlan20, qinq)} == {TCP_ID}


def test_gre_inner_flow() -> None:
    outer_a, outer_b = "10.0.0.1", "10.0.0.2"
    packets = [
        (
            T0,
            ethernet(ip_raw(outer_a, outer_b, 47, gre(ip_packet(A, B, tcp(1122, 3344, flags=SYN)), 0x0800))),
        ),
        (
            T0 + 1,
            ethernet(
                ip_raw(
                    outer_b,
                    outer_a,
                    47,
                    gre(ip_packet(B, A, tcp(3344, 1122, flags=SYN | ACK)), 0x0800, key=5),
                )
            ),
        ),
    ]
    [record] = run(packets)
    assert summary(record)[:5] == (f"{A}:1122", f"{B}:3344", (1, 78), (1, 82), "S1")
    assert record["network"]["community_id"] == TCP_ID


def test_vxlan_inner_flow_with_inner_vlan() -> None:
    inner = ethernet(ip_packet(A, B, udp(1122, 3344, b"x" * 8)), vlans=[30])
    outer = ethernet(ip_packet("10.0.0.1", "10.0.0.2", udp(49152, 4789, vxlan(inner, 77))), vlans=[5])
    [record] = run([(T0, outer)])
    assert summary(record)[:4] == (f"{B}:3344", f"{A}:1122", (0, 0), (1, len(outer)))
    assert (record["network"]["vlan"], record["network"]["inner"]) == ({"id": "5"}, {"vlan": {"id": "30"}})
    assert record["network"]["community_id"] == UDP_ID


def test_vxlan_on_other_ports_or_without_a_valid_vni_stays_udp() -> None:
    inner = ethernet(ip_packet(A, B, udp(1122, 3344)))
    packets = [
        (T0, ethernet(ip_packet("10.0.0.1", "10.0.0.2", udp(49152, 4789, vxlan(inner, 77, valid=False))))),
        (T0 + 1, ethernet(ip_packet("10.0.0.1", "10.0.0.2", udp(49153, 8472, vxlan(inner, 77))))),
    ]
    assert [summary(record)[:2] for record in run(packets)] == [
        ("10.0.0.1:49152", "10.0.0.2:4789"),
        ("10.0.0.1:49153", "10.0.0.2:8472"),
    ]
    assert [summary(record)[:2] for record in run(packets[1:], vxlan_ports=[8472])] == [
        (f"{B}:3344", f"{A}:1122")
    ]
