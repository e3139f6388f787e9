"""The dhcpv4 analyzer: header fields, every option Packetbeat reports, overload, malformed input.

Messages are packed by hand (one with dpkt.dhcp) so that every byte is under the test's control,
and decoded by the real pipeline (``pcap -> ip -> tcp -> protocol``).
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

import dpkt
from analyzers import transactions
from captures import ethernet, ip_packet, udp, udp_frame

from flowpipe.plugins.decoders.protocols.dhcp import MalformedDhcpError, parse_message

START = 1_700_000_000.0
MAC = bytes.fromhex("020000fa0001")
XID = 0x952B894F


def option(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def ip(address: str) -> bytes:
    return socket.inet_aton(address)


def dhcp(
    op: int = 1,
    options: bytes = option(53, b"\x01"),
    *,
    htype: int = 1,
    hlen: int = 6,
    hops: int = 0,
    xid: int = XID,
    secs: int = 0,
    flags: int = 0,
    ciaddr: str = "0.0.0.0",
    yiaddr: str = "0.0.0.0",
    siaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    chaddr: bytes = MAC,
    sname: bytes = b"",
    file: bytes = b"",
    cookie: bytes = b"\x63\x82\x53\x63",
    end: bytes = b"\xff",
) -> bytes:
    """A DHCPv4 message: the fixed header, the magic cookie, ``options`` and ``end``."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ip(ciaddr),
        ip(yiaddr),
        ip(siaddr),
        ip(giaddr),
        chaddr,
        sname,
        file,
    )
    return header + cookie + options + end


def from_client(message: bytes, src: str = "0.0.0.0", dst: str = "255.255.255.255") -> bytes:
    return udp_frame(src, dst, 68, 67, message)


def from_server(message: bytes, src: str = "192.0.2.2", dst: str = "192.0.2.100") -> bytes:
    return udp_frame(src, dst, 67, 68, message)


def dhcp_events(tmp_path: Path, *frames: bytes, **options: object):
    return transactions(
        tmp_path,
        [(START + index, frame) for index, frame in enumerate(frames)],
        {"dhcpv4": options} if options else None,
    )


DISCOVER_OPTIONS = (
    option(53, b"\x01")
    + option(61, b"\x01" + MAC)
    + option(57, struct.pack("!H", 576))
    + option(60, b"udhcp 1.35.0")
    + option(12, b"fp-sample-cli")
    + option(55, bytes((1, 3, 6, 12, 15, 28, 42)))
)
OFFER_OPTIONS = (
    option(53, b"\x02")
    + option(54, ip("192.0.2.2"))
    + option(51, struct.pack("!I", 3600))
    + option(58, struct.pack("!I", 1800))
    + option(59, struct.pack("!I", 3150))
    + option(1, ip("255.255.255.0"))
    + option(28, ip("192.0.2.255"))
    + option(3, ip("192.0.2.2"))
    + option(6, ip("192.0.2.2"))
    + option(15, b"example.test")
)


def test_a_discover_is_an_event_with_its_sender_as_client(tmp_path: Path) -> None:
    message = dhcp(1, DISCOVER_OPTIONS)
    events = dhcp_events(tmp_path, from_client(message))
    assert list(events) == [
        {
            "@timestamp": "2023-11-14T22:13:20.000Z",
            "type": "dhcpv4",
            "status": "OK",
            "event": {
                "dataset": "dhcpv4",
                "kind": "event",
                "category": ["network"],
                "type": ["connection", "protocol"],
                "start": "2023-11-14T22:13:20.000Z",
                "end": "2023-11-14T22:13:20.000Z",
            },
            "network": {
                "type": "ipv4",
                "transport": "udp",
                "protocol": "dhcpv4",
                "bytes": len(message),
                # as Packetbeat's test of the same 0.0.0.0:68 -> 255.255.255.255:67 message
                "community_id": "1:t9O1j0qj71O4wJM7gnaHtgmfev8=",
            },
            "source": {"ip": "0.0.0.0", "port": 68, "bytes": len(message)},
            "destination": {"ip": "255.255.255.255", "port": 67, "bytes": 0},
            "client": {"ip": "0.0.0.0", "port": 68, "bytes": len(message)},
            "server": {"ip": "255.255.255.255", "port": 67, "bytes": 0},
            "related": {"ip": ["0.0.0.0", "255.255.255.255"]},
            "dhcpv4": {
                "op_code": "bootrequest",
                "hardware_type": "Ethernet",
                "hops": 0,
                "transaction_id": "0x952b894f",
                "seconds": 0,
                "flags": "unicast",
                "client_mac": "02:00:00:fa:00:01",
                "option": {
                    "message_type": "discover",
                    "parameter_request_list": [
                        "Subnet Mask",
                        "Router",
                        "Domain Name Server",
                        "Host Name",
                        "Domain Name",
                        "Broadcast Address",
                        "NTP Servers",
                    ],
                    "max_dhcp_message_size": 576,
                    "class_identifier": "udhcp 1.35.0",
                    "hostname": "fp-sample-cli",
                },
            },
        }
    ]
    assert events.counters["dhcpv4.transactions"] == 1


def test_an_offer_is_an_event_with_its_receiver_as_client(tmp_path: Path) -> None:
    message = dhcp(2, OFFER_OPTIONS, yiaddr="192.0.2.100", siaddr="192.0.2.2")
    (event,) = dhcp_events(tmp_path, from_server(message))
    assert (event["status"], event["event"]["type"], "notes" in event) == (
        "OK",
        ["connection", "protocol"],
        False,
    )
    assert (event["client"], event["server"]) == (
        {"ip": "192.0.2.100", "port": 68, "bytes": 0},
        {"ip": "192.0.2.2", "port": 67, "bytes": len(message)},
    )
    assert event["related"] == {"ip": ["192.0.2.100", "192.0.2.2"]}
    assert event["dhcpv4"] == {
        "op_code": "bootreply",
        "hardware_type": "Ethernet",
        "hops": 0,
        "transaction_id": "0x952b894f",
        "seconds": 0,
        "flags": "unicast",
        "client_mac": "02:00:00:fa:00:01",
        "assigned_ip": "192.0.2.100",
        "server_ip": "192.0.2.2",
        "option": {
            "message_type": "offer",
            "server_identifier": "192.0.2.2",
            "broadcast_address": "192.0.2.255",
            "domain_name": "example.test",
            "dns_servers": ["192.0.2.2"],
            "subnet_mask": "255.255.255.0",
            "router": ["192.0.2.2"],
            "ip_address_lease_time_sec": 3600,
            "renewal_time_sec": 1800,
            "rebinding_time_sec": 3150,
        },
    }


def test_every_option_packetbeat_reports(tmp_path: Path) -> None:
    options = (
        option(53, b"\x05")
        + option(55, bytes((1, 2, 3, 4, 6, 42, 121, 249, 252)))
        + option(50, ip("192.0.2.100"))
        + option(54, ip("192.0.2.2"))
        + option(28, ip("192.0.2.255"))
        + option(57, struct.pack("!H", 1500))
        + option(60, b"MSFT 5.0")
        + option(15, b"example.test")
        + option(6, ip("192.0.2.53") + ip("198.51.100.53"))
        + option(124, struct.pack("!IB", 12, 6) + bytes.fromhex("deadbeef0000") + struct.pack("!IB", 4491, 0))
        + option(1, ip("255.255.255.0"))
        + option(2, struct.pack("!i", -18000))
        + option(3, ip("192.0.2.1") + ip("192.0.2.254"))
        + option(4, ip("192.0.2.37"))
        + option(42, ip("192.0.2.123") + ip("198.51.100.123"))
        + option(12, b"client-7\x00")
        + option(51, struct.pack("!I", 86400))
        + option(56, b"all good")
        + option(58, struct.pack("!I", 43200))
        + option(59, struct.pack("!I", 75600))
        + option(67, b"pxelinux.0\x00")
    )
    (event,) = dhcp_events(tmp_path, from_server(dhcp(2, options)))
    assert event["dhcpv4"]["option"] == {
        "message_type": "ack",
        "parameter_request_list": [
            "Subnet Mask",
            "Time Offset",
            "Router",
            "Time Server",
            "Domain Name Server",
            "NTP Servers",
            "Classless Static Route",
            "unknown (249)",
            "unknown (252)",
        ],
        "requested_ip_address": "192.0.2.100",
        "server_identifier": "192.0.2.2",
        "broadcast_address": "192.0.2.255",
        "max_dhcp_message_size": 1500,
        "class_identifier": "MSFT 5.0",
        "domain_name": "example.test",
        "dns_servers": ["192.0.2.53", "198.51.100.53"],
        "vendor_identifying_options": [{"id": 12, "data": "deadbeef0000"}, {"id": 4491, "data": ""}],
        "subnet_mask": "255.255.255.0",
        "utc_time_offset_sec": -18000,
        "router": ["192.0.2.1", "192.0.2.254"],
        "time_servers": ["192.0.2.37"],
        "ntp_servers": ["192.0.2.123", "198.51.100.123"],
        "hostname": "client-7",
        "ip_address_lease_time_sec": 86400,
        "message": "all good",
        "renewal_time_sec": 43200,
        "rebinding_time_sec": 75600,
        "boot_file_name": "pxelinux.0",
    }
    assert "notes" not in event


def test_header_fields(tmp_path: Path) -> None:
    message = dhcp(
        1,
        option(53, b"\x03"),
        htype=6,
        hops=2,
        secs=17,
        flags=0x8000,
        ciaddr="192.0.2.100",
        giaddr="198.51.100.1",
        sname=b"boot-server\x00junk",
        file=b"/boot/image",
    )
    frame = udp_frame("198.51.100.1", "192.0.2.2", 67, 67, message)  # relayed
    (event,) = dhcp_events(tmp_path, frame)
    dhcp_fields = event["dhcpv4"]
    del dhcp_fields["option"]
    assert dhcp_fields == {
        "op_code": "bootrequest",
        "hardware_type": "IEEE 802",
        "hops": 2,
        "transaction_id": "0x952b894f",
        "seconds": 17,
        "flags": "broadcast",
        "client_mac": "02:00:00:fa:00:01",
        "client_ip": "192.0.2.100",
        "relay_ip": "198.51.100.1",
        "server_name": "boot-server",
        "boot_file_name": "/boot/image",
    }
    assert (event["client"]["ip"], event["server"]["ip"]) == ("198.51.100.1", "192.0.2.2")
    assert event["related"] == {"ip": ["198.51.100.1", "192.0.2.2", "192.0.2.100"]}


def test_a_reply_from_server_port_to_server_port_has_the_relay_as_client(tmp_path: Path) -> None:
    reply = dhcp(2, option(53, b"\x05"), yiaddr="192.0.2.100", giaddr="198.51.100.1")
    (event,) = dhcp_events(tmp_path, udp_frame("192.0.2.2", "198.51.100.1", 67, 67, reply))
    assert (event["client"]["ip"], event["server"]["ip"], event["server"]["bytes"]) == (
        "198.51.100.1",
        "192.0.2.2",
        len(reply),
    )


def test_hardware_address_length_and_type_edges(tmp_path: Path) -> None:
    events = dhcp_events(
        tmp_path,
        from_client(dhcp(htype=200, hlen=0)),
        from_client(dhcp(hlen=20, chaddr=bytes(range(1, 17)))),
        from_client(dhcp(htype=0, hlen=2)),
    )
    assert [(event["dhcpv4"]["hardware_type"], event["dhcpv4"].get("client_mac")) for event in events] == [
        ("Invalid", None),
        ("Ethernet", "01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10"),
        ("Invalid", "02:00"),
    ]


def test_message_types_nak_and_decline_are_errors_and_nothing_waits_for_an_answer(tmp_path: Path) -> None:
    types = range(1, 10)
    frames = [
        from_server(dhcp(2, option(53, bytes((number,)))))
        if number in (2, 5, 6)
        else from_client(dhcp(1, option(53, bytes((number,)))))
        for number in types
    ]
    events = dhcp_events(tmp_path, *frames)
    assert [
        (event["dhcpv4"]["option"]["message_type"], event["status"], "error" in event["event"]["type"])
        for event in events
    ] == [
        ("discover", "OK", False),
        ("offer", "OK", False),
        ("request", "OK", False),
        ("decline", "Error", True),
        ("ack", "OK", False),
        ("nak", "Error", True),
        ("release", "OK", False),
        ("inform", "OK", False),
        ("forcerenew", "OK", False),
    ]
    assert not any("notes" in event for event in events)
    assert "dhcpv4.unmatched_requests" not in events.counters
    assert "dhcpv4.unmatched_responses" not in events.counters


def test_options_may_be_overloaded_into_the_file_and_sname_fields(tmp_path: Path) -> None:
    options = option(53, b"\x05") + option(52, b"\x03") + option(6, ip("192.0.2.53"))
    file = option(12, b"host-in-file") + option(6, ip("192.0.2.54")) + b"\xff"
    sname = option(15, b"in.sname") + option(6, ip("192.0.2.55")) + b"\xff"
    (event,) = dhcp_events(tmp_path, from_server(dhcp(2, options, file=file, sname=sname)))
    dhcp_fields = event["dhcpv4"]
    assert "server_name" not in dhcp_fields and "boot_file_name" not in dhcp_fields
    assert dhcp_fields["option"] == {
        "message_type": "ack",
        "domain_name": "in.sname",
        "dns_servers": ["192.0.2.53", "192.0.2.54", "192.0.2.55"],  # options, then file, then sname
        "hostname": "host-in-file",
    }
    assert "notes" not in event


def test_overload_of_file_only_leaves_sname_a_name(tmp_path: Path) -> None:
    options = option(53, b"\x05") + option(52, b"\x01")
    file = option(67, b"boot.efi") + b"\xff"
    (event,) = dhcp_events(tmp_path, from_server(dhcp(2, options, file=file, sname=b"tftp.example")))
    assert event["dhcpv4"]["server_name"] == "tftp.example"
    assert "boot_file_name" not in event["dhcpv4"]
    assert event["dhcpv4"]["option"] == {"message_type": "ack", "boot_file_name": "boot.efi"}


def test_without_overload_the_file_and_sname_fields_are_names(tmp_path: Path) -> None:
    options = option(53, b"\x05")
    file = option(12, b"not-an-option")
    (event,) = dhcp_events(tmp_path, from_server(dhcp(2, options, file=file)))
    assert event["dhcpv4"]["boot_file_name"] == "\x0c\rnot-an-option"
    assert event["dhcpv4"]["option"] == {"message_type": "ack"}


def test_an_option_split_in_parts_is_concatenated(tmp_path: Path) -> None:
    options = (
        option(53, b"\x01")
        + option(55, bytes((1, 3)))
        + option(12, b"long-")
        + option(55, bytes((6,)))
        + option(12, b"name")
    )
    (event,) = dhcp_events(tmp_path, from_client(dhcp(1, options)))
    assert event["dhcpv4"]["option"]["parameter_request_list"] == [
        "Subnet Mask",
        "Router",
        "Domain Name Server",
    ]
    assert event["dhcpv4"]["option"]["hostname"] == "long-name"


def test_an_option_running_past_the_end_of_the_packet_is_noted_and_the_rest_kept(tmp_path: Path) -> None:
    options = option(53, b"\x01") + option(12, b"ok") + bytes((15, 40)) + b"short"
    events = dhcp_events(tmp_path, from_client(dhcp(1, options, end=b"")))
    (event,) = events
    assert event["status"] == "OK"
    assert event["dhcpv4"]["option"] == {"message_type": "discover", "hostname": "ok"}
    assert event["notes"] == ["option 15 in the options field runs past its end (40 bytes announced, 5 left)"]
    assert events.counters["dhcpv4.malformed_options"] == 1


def test_an_option_without_its_length_byte_is_noted(tmp_path: Path) -> None:
    (event,) = dhcp_events(tmp_path, from_client(dhcp(1, option(53, b"\x01") + b"\x0c", end=b"")))
    assert event["notes"] == ["option 12 at the end of the options field has no length"]
    assert event["dhcpv4"]["option"] == {"message_type": "discover"}


def test_options_in_an_overloaded_field_that_run_past_it_are_noted(tmp_path: Path) -> None:
    options = option(53, b"\x05") + option(52, b"\x02")
    sname = option(12, b"fine") + bytes((15, 200)) + b"x" * 50
    (event,) = dhcp_events(tmp_path, from_server(dhcp(2, options, sname=sname)))
    assert event["notes"] == ["option 15 in the sname field runs past its end (200 bytes announced, 56 left)"]
    assert event["dhcpv4"]["option"] == {"message_type": "ack", "hostname": "fine"}


def test_values_of_the_wrong_size_are_left_out_with_a_note(tmp_path: Path) -> None:
    options = (
        option(53, b"\x05\x05")
        + option(50, b"\xc0\x00\x02")
        + option(3, ip("192.0.2.1") + b"\x01\x02")
        + option(6, b"")
        + option(57, b"\x05")
        + option(51, b"\x00\x00\x0e")
        + option(2, b"\x00")
        + option(124, struct.pack("!IB", 12, 9) + b"abc")
        + option(52, b"\x07")
        + option(15, b"kept.example")
    )
    events = dhcp_events(tmp_path, from_server(dhcp(2, options, sname=b"srv")))
    (event,) = events
    assert event["dhcpv4"]["option"] == {"domain_name": "kept.example"}
    assert event["dhcpv4"]["server_name"] == "srv"  # a bad overload value overloads nothing
    assert event["notes"] == [
        "option 52 (Option Overload) is malformed: 07",
        "option 53 (DHCP Message Type) is malformed: 2 bytes",
        "option 50 (Requested IP Address) is malformed: 3 bytes",
        "option 57 (Maximum DHCP Message Size) is malformed: 1 bytes",
        "option 6 (Domain Name Server) is malformed: 0 bytes",
        "option 124 (Vendor-Identifying Vendor Class) is malformed: 8 bytes",
        "option 2 (Time Offset) is malformed: 1 bytes",
        "option 3 (Router) is malformed: 6 bytes",
        "option 51 (IP Addresses Lease Time) is malformed: 3 bytes",
    ]
    assert events.counters["dhcpv4.malformed_options"] == 1


def test_zero_times_and_empty_texts_are_left_out_as_packetbeat_does(tmp_path: Path) -> None:
    options = (
        option(53, b"\x00")
        + option(51, bytes(4))
        + option(58, bytes(4))
        + option(12, b"\x00\x00")
        + option(56, b"")
    )
    (event,) = dhcp_events(tmp_path, from_server(dhcp(2, options)))
    assert "option" not in event["dhcpv4"]
    assert "notes" not in event


def test_messages_that_are_not_dhcp_are_dropped_and_counted(tmp_path: Path) -> None:
    events = dhcp_events(
        tmp_path,
        from_client(dhcp()[:239]),
        from_client(dhcp(cookie=b"\x00\x00\x00\x00")),
        from_client(dhcp(op=3)),
        from_client(b""),
    )
    assert list(events) == []
    assert {name: value for name, value in events.counters.items() if name.startswith("dropped.dhcpv4")} == {
        "dropped.dhcpv4.truncated": 2,
        "dropped.dhcpv4.bad_magic_cookie": 1,
        "dropped.dhcpv4.bad_op_code": 1,
    }


def test_a_message_cut_by_the_capture_keeps_its_size_and_is_noted(tmp_path: Path) -> None:
    message = dhcp(1, DISCOVER_OPTIONS)
    frame = from_client(message)
    cut = frame[: len(frame) - len(message) + 240 + 10]  # the capture kept 10 bytes of options
    events = dhcp_events(tmp_path, cut)
    (event,) = events
    assert event["client"]["bytes"] == len(message)
    assert event["notes"] == [
        "option 61 in the options field runs past its end (7 bytes announced, 5 left)",
        f"datagram truncated by the capture ({len(message) - 250} bytes missing)",
    ]
    assert event["dhcpv4"]["option"] == {"message_type": "discover"}


def test_a_message_built_by_dpkt(tmp_path: Path) -> None:
    message = dpkt.dhcp.DHCP(
        op=dpkt.dhcp.DHCP_OP_REPLY,
        xid=0x3D1E,
        chaddr=bytes.fromhex("000b8201fc42"),
        yiaddr=int.from_bytes(ip("192.168.0.10"), "big"),
        opts=(
            (dpkt.dhcp.DHCP_OPT_MSGTYPE, bytes((dpkt.dhcp.DHCPACK,))),
            (dpkt.dhcp.DHCP_OPT_SERVER_ID, ip("192.168.0.1")),
            (dpkt.dhcp.DHCP_OPT_NETMASK, ip("255.255.255.0")),
        ),
    )
    frame = ethernet(ip_packet("192.168.0.1", "192.168.0.10", udp(67, 68, bytes(message))))
    (event,) = dhcp_events(tmp_path, frame)
    assert event["dhcpv4"] == {
        "op_code": "bootreply",
        "hardware_type": "Ethernet",
        "hops": 0,
        "transaction_id": "0x00003d1e",
        "seconds": 0,
        "flags": "unicast",
        "client_mac": "00:0b:82:01:fc:42",
        "assigned_ip": "192.168.0.10",
        "option": {"message_type": "ack", "server_identifier": "192.168.0.1", "subnet_mask": "255.255.255.0"},
    }


def test_other_ports_are_configurable(tmp_path: Path) -> None:
    frame = udp_frame("10.0.0.1", "10.0.0.2", 1068, 1067, dhcp())
    assert len(dhcp_events(tmp_path, frame)) == 0
    assert len(dhcp_events(tmp_path, frame, ports=[1067])) == 1


def test_parse_message_never_raises_on_damaged_input() -> None:
    """Every prefix and many random corruptions of the options parse, or raise MalformedDhcpError."""
    message = dhcp(
        2,
        OFFER_OPTIONS + option(52, b"\x03") + option(124, struct.pack("!IB", 1, 1) + b"x"),
        file=b"\x0c\x02ab\xff",
    )
    generator = random.Random(4)
    damaged = [message[:end] for end in range(len(message) + 1)]
    for _ in range(2000):
        corrupt = bytearray(message)
        for _ in range(generator.randint(1, 8)):
            corrupt[generator.randrange(240, len(corrupt))] = generator.randrange(256)
        damaged.append(bytes(corrupt))
    parsed = 0
    for data in damaged:
        try:
            result = parse_message(data, START, False, len(data))
        except MalformedDhcpError:
            continue
        parsed += 1
        assert result.fields["dhcpv4"]["transaction_id"] == "0x952b894f"
    assert parsed == 2000 + len(message) + 1 - 240  # all but the prefixes shorter than the header
