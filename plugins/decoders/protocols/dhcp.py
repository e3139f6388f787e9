"""The ``dhcpv4`` analyzer: every DHCPv4 (BOOTP) message as an event, with Packetbeat's fields.

As Packetbeat's dhcpv4, each message is published alone, when it is seen: one event per
DISCOVER, OFFER, REQUEST, ACK, ... DHCP is not pairwise request/response: a broadcast DISCOVER
may get several OFFERs (one per server), clients retransmit with the same transaction ID,
RELEASE and DECLINE get no answer and relays forward copies, so pairing messages would report
false errors; and dashboards built on Packetbeat count messages by ``dhcpv4.option.message_type``.
The sender of a BOOTREQUEST is its event's client, the receiver of a BOOTREPLY its event's client.
Messages that report a failure, NAK (the server refuses) and DECLINE (the client refuses the
address offered), have ``status: Error``; all others ``OK``.

The parts, as in every analyzer:

1. options: only the common ones (ports 67 and 68 by default); ``transaction_timeout``,
   ``max_pending``, ``max_message_size``, ``send_request`` and ``send_response`` have no effect;
2. the parser (:func:`parse_message`): a UDP payload -> a :class:`~flowpipe.Message` whose
   ``fields["dhcpv4"]`` is the event's ``dhcpv4`` object. It reads the fixed header, the options
   (RFC 2132), the ``file`` and ``sname`` fields as more options when option 52 (overload) says
   so (RFC 2131 4.1, in the order options, file, sname), and concatenates options split in parts
   (RFC 3396). A message shorter than its fixed header, without the DHCP magic cookie or with an
   op code other than 1 or 2 is dropped (``dropped.dhcpv4.truncated``, ``.bad_magic_cookie``,
   ``.bad_op_code``); options that run past the end of their field, or whose value has the
   wrong size, are skipped with a note (counted as ``dhcpv4.malformed_options``);
3. transactions: none to pair; each message is published alone
   (:meth:`~flowpipe.Transactions.publish_alone`), so it has the common fields;
4. publishing (:func:`fill_event`): the ``dhcpv4`` object, and ``related.ip`` extended with the
   client, assigned and relay addresses.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from flowpipe import AppPacket, Event, Message, Transactions, UdpAnalyzer, hookimpl

__all__ = ["DhcpV4Analyzer", "MalformedDhcpError", "fill_event", "parse_message"]

HEADER = struct.Struct("!BBBBIHH4s4s4s4s")
"""op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr."""
CHADDR, SNAME, FILE, COOKIE, OPTIONS = 28, 44, 108, 236, 240
"""Offsets of the client hardware address, server name, boot file name, magic cookie, options."""
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
PAD, END = 0, 255
OVERLOAD, MESSAGE_TYPE = 52, 53
OVERLOAD_FILE, OVERLOAD_SNAME = 1, 2
NAK, DECLINE = 6, 4
ZERO_ADDRESS = bytes(4)
_U16 = struct.Struct("!H").unpack
_U32 = struct.Struct("!I").unpack
_I32 = struct.Struct("!i").unpack

# fmt: off
MESSAGE_TYPES = (
    "none", "discover", "offer", "request", "decline", "ack", "nak", "release", "inform", "forcerenew",
    "leasequery", "leaseunassigned", "leaseunknown", "leaseactive", "bulkleasequeary", "leasequerydone",
    "activeleasequery", "leasequerystatus", "tls",
)
"""DHCP message types by number, as Packetbeat writes them (lower case); 0 is no type."""
HARDWARE_TYPES = (
    "Invalid", "Ethernet", "Experimental Ethernet", "Amateur Radio AX.25", "Proteon ProNET Token Ring",
    "Chaos", "IEEE 802", "ARCNET", "Hyperchannel", "Lanstar", "Autonet Short Address", "LocalTalk",
    "LocalNet", "Ultra link", "SMDS", "Frame Relay", "ATM", "HDLC", "Fibre Channel", "ATM 2", "Serial Line",
    "ATM 3", "MIL-STD-188-220", "Metricom", "IEEE 1394.1995", "MAPOS", "Twinaxial", "EUI-64", "HIPARP",
    "IP and ARP over ISO 7816-3", "ARPSec", "IPsec tunnel", "Infiniband",
    "CAI, TIA-102 Project 125 Common Air Interface", "Wiegand Interface", "Pure IP",
)
"""ARP hardware types by number (IANA), as Packetbeat names them; ``Invalid`` for unknown ones."""
OPTION_NAMES = dict(enumerate((
    "Pad", "Subnet Mask", "Time Offset", "Router", "Time Server", "Name Server", "Domain Name Server",
    "Log Server", "Quote Server", "LPR Server", "Impress Server", "Resource Location Server", "Host Name",
    "Boot File Size", "Merit Dump File", "Domain Name", "Swap Server", "Root Path", "Extensions Path",
    "IP Forwarding enable/disable", "Non-local Source Routing enable/disable", "Policy Filter",
    "Maximum Datagram Reassembly Size", "Default IP Time-to-live", "Path MTU Aging Timeout",
    "Path MTU Plateau Table", "Interface MTU", "All Subnets Are Local", "Broadcast Address",
    "Perform Mask Discovery", "Mask Supplier", "Perform Router Discovery", "Router Solicitation Address",
    "Static Routing Table", "Trailer Encapsulation", "ARP Cache Timeout", "Ethernet Encapsulation",
    "Default TCP TTL", "TCP Keepalive Interval", "TCP Keepalive Garbage",
    "Network Information Service Domain", "Network Information Servers", "NTP Servers",
    "Vendor Specific Information", "NetBIOS over TCP/IP Name Server",
    "NetBIOS over TCP/IP Datagram Distribution Server", "NetBIOS over TCP/IP Node Type",
    "NetBIOS over TCP/IP Scope", "X Window System Font Server", "X Window System Display Manager",
    "Requested IP Address", "IP Addresses Lease Time", "Option Overload", "DHCP Message Type",
    "Server Identifier", "Parameter Request List", "Message", "Maximum DHCP Message Size",
    "Renew Time Value", "Rebinding Time Value", "Class Identifier", "Client identifier",
    "NetWare/IP Domain Name", "NetWare/IP Information", "Network Information Service+ Domain",
    "Network Information Service+ Servers", "TFTP Server Name", "Bootfile Name", "Mobile IP Home Agent",
    "SMTP Server", "POP Server", "NNTP Server", "Default WWW Server", "Default Finger Server",
    "Default IRC Server", "StreetTalk Server", "StreetTalk Directory Assistance Server",
    "User Class Information", "SLP DIrectory Agent", "SLP Service Scope", "Rapid Commit", "FQDN",
    "Relay Agent Information", "Internet Storage Name Service",
)))
"""DHCP option names by code, as Packetbeat writes ``parameter_request_list``: codes 0 to 83 ..."""
OPTION_NAMES.update({
    85: "NDS Servers", 86: "NDS Tree Name", 87: "NDS Context", 88: "BCMCS Controller Domain Name List",
    89: "BCMCS Controller IPv4 Address List", 90: "Authentication", 91: "Client Last Transaction Time",
    92: "Associated IP", 93: "Client System Architecture Type", 94: "Client Network Interface Identifier",
    95: "LDAP", 97: "Client Machine Identifier", 98: "OpenGroup's User Authentication", 99: "GEOCONF_CIVIC",
    100: "IEEE 1003.1 TZ String", 101: "Reference to the TZ Database",
    108: "Number of seconds that DHCPv4 should be disabled",
    109: "DHCPv4 over DHCPv6 Softwire Source Address Option", 112: "NetInfo Parent Server Address",
    113: "NetInfo Parent Server Tag", 114: "URL", 116: "Auto-Configure", 117: "Name Service Search",
    118: "Subnet Selection", 119: "DNS Domain Search List", 120: "SIP Servers",
    121: "Classless Static Route", 122: "CCC, CableLabs Client Configuration", 123: "GeoConf",
    124: "Vendor-Identifying Vendor Class", 125: "Vendor-Identifying Vendor-Specific",
    128: "TFTP Server IP Address", 129: "Call Server IP Address", 130: "Discrimination String",
    131: "RemoteStatistics Server IP Address", 132: "802.1P VLAN ID", 133: "802.1Q L2 Priority",
    134: "Diffserv Code Point", 135: "HTTP Proxy for phone-specific applications",
    136: "PANA Authentication Agent", 137: "LoST Server", 138: "CAPWAP Access Controller Addresses",
    139: "OPTION-IPv4_Address-MoS", 140: "OPTION-IPv4_FQDN-MoS",
    141: "SIP UA Configuration Service Domains", 142: "OPTION-IPv4_Address-ANDSF",
    143: "OPTION-IPv6_Address-ANDSF", 144: "Geospatial Location with Uncertainty",
    145: "Forcerenew Nonce Capable", 146: "Information for selecting RDNSS",
    147: "The name of the peer DOTS agent", 148: "IPv4 addresses of peer DOTS agent(s)",
    150: "TFTP Server Address", 151: "Status Code", 152: "Base Time", 153: "Start Time of State",
    154: "Query Start Time", 155: "Query End Time", 156: "DHCP Staet", 157: "Data Source",
    158: "PCP server IP addresses", 159: "DHCPv4 Port Parameters",
    161: "Manufacturer Usage Description URL", 162: "Encrypted DNS Server", 175: "Etherboot",
    176: "IP Telephone", 177: "Etherboot / PacketCable and CableHome", 208: "PXELinux Magic String",
    209: "PXELinux Config File", 210: "PXELinux Path Prefix", 211: "PXELinux Reboot Time",
    212: "OPTION_6RD", 213: "OPTION_V4_ACCESS_DOMAIN", 220: "Subnet Allocation",
    221: "Virtual Subnet Selection", 255: "End",
})
"""... and the assigned codes above them; other codes are ``unknown (N)``."""
# fmt: on


class MalformedDhcpError(ValueError):
    """The payload is not a DHCPv4 message; ``reason`` names the drop counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_message(data: bytes, timestamp: float, from_client: bool, size: int) -> Message:
    """A UDP payload -> a Message with ``fields["dhcpv4"]`` (the event's object), ``fields["op"]``
    (1 BOOTREQUEST, 2 BOOTREPLY) and ``fields["related"]`` (addresses for ``related.ip``).

    ``size``: the payload's length on the wire (``data`` may be cut by the capture). Problems with
    options are ``notes``. Raises :class:`MalformedDhcpError` when the payload is not a DHCPv4
    message.
    """
    if len(data) < OPTIONS:
        raise MalformedDhcpError("truncated")
    if data[COOKIE:OPTIONS] != MAGIC_COOKIE:
        raise MalformedDhcpError("bad_magic_cookie")
    op, hardware_type, hardware_length, hops, xid, seconds, flags, ciaddr, yiaddr, siaddr, giaddr = (
        HEADER.unpack_from(data)
    )
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedDhcpError("bad_op_code")
    notes: list[str] = []
    options: dict[int, bytes] = {}
    _read_options(data, OPTIONS, len(data), options, notes, "options")
    overload = _overload(options.get(OVERLOAD), notes)  # only the options field may say it (RFC 2131 4.1)
    if overload & OVERLOAD_FILE:
        _read_options(data, FILE, COOKIE, options, notes, "file")
    if overload & OVERLOAD_SNAME:
        _read_options(data, SNAME, FILE, options, notes, "sname")
    dhcp: dict[str, Any] = {
        "op_code": "bootrequest" if op == BOOTREQUEST else "bootreply",
        "hardware_type": HARDWARE_TYPES[hardware_type] if hardware_type < len(HARDWARE_TYPES) else "Invalid",
        "hops": hops,
        "transaction_id": f"0x{xid:08x}",
        "seconds": seconds,
        "flags": "broadcast" if flags & 0x8000 else "unicast",
    }
    if hardware_length:
        dhcp["client_mac"] = data[CHADDR : CHADDR + min(hardware_length, 16)].hex(":")
    related = []
    for name, address in (
        ("client_ip", ciaddr),
        ("assigned_ip", yiaddr),
        ("server_ip", siaddr),
        ("relay_ip", giaddr),
    ):
        if address != ZERO_ADDRESS:
            dhcp[name] = socket.inet_ntoa(address)
            if name != "server_ip":
                related.append(dhcp[name])
    if not overload & OVERLOAD_SNAME:
        server_name = _c_string(data[SNAME:FILE])
        if server_name:
            dhcp["server_name"] = server_name
    if not overload & OVERLOAD_FILE:
        boot_file_name = _c_string(data[FILE:COOKIE])
        if boot_file_name:
            dhcp["boot_file_name"] = boot_file_name
    decoded = _decode_options(options, notes)
    if decoded:
        dhcp["option"] = decoded
    message_type = options.get(MESSAGE_TYPE, b"")
    return Message(
        timestamp=timestamp,
        from_client=from_client,
        size=size,
        fields={"dhcpv4": dhcp, "op": op, "related": related},
        notes=notes,
        error=message_type in (bytes((NAK,)), bytes((DECLINE,))),
    )


def _read_options(
    data: bytes, start: int, end: int, options: dict[int, bytes], notes: list[str], field: str
) -> None:
    """Add the options in ``data[start:end]`` (the ``field`` named) to ``options``; a value split
    over several instances of one option is concatenated (RFC 3396)."""
    position = start
    while position < end:
        code = data[position]
        if code == PAD:
            position += 1
            continue
        if code == END:
            return
        if position + 1 >= end:
            notes.append(f"option {code} at the end of the {field} field has no length")
            return
        value_start = position + 2
        value_end = value_start + data[position + 1]
        if value_end > end:
            notes.append(
                f"option {code} in the {field} field runs past its end "
                f"({data[position + 1]} bytes announced, {end - value_start} left)"
            )
            return
        value = data[value_start:value_end]
        options[code] = options[code] + value if code in options else value
        position = value_end


def _overload(value: bytes | None, notes: list[str]) -> int:
    """The fields that option 52 says hold options (OVERLOAD_FILE, OVERLOAD_SNAME bits), or 0."""
    if value is None:
        return 0
    if len(value) != 1 or not 1 <= value[0] <= 3:
        notes.append(f"option 52 (Option Overload) is malformed: {value.hex() or 'empty'}")
        return 0
    return value[0]


def _c_string(value: bytes) -> str:
    end = value.find(b"\x00")
    return (value if end < 0 else value[:end]).decode("utf-8", "replace")


MALFORMED: Any = object()
"""What an option decoder returns for a value of the wrong shape (None: a value left out)."""


def _text(value: bytes) -> str | None:
    return value.decode("utf-8", "replace") or None


def _name(value: bytes) -> str | None:
    """A name that some clients end with NULs."""
    return value.rstrip(b"\x00").decode("utf-8", "replace") or None


def _address(value: bytes) -> Any:
    return socket.inet_ntoa(value) if len(value) == 4 else MALFORMED


def _addresses(value: bytes) -> Any:
    if not value or len(value) % 4:
        return MALFORMED
    return [socket.inet_ntoa(value[start : start + 4]) for start in range(0, len(value), 4)]


def _u16(value: bytes) -> Any:
    return _U16(value)[0] if len(value) == 2 else MALFORMED


def _seconds(value: bytes) -> Any:
    """A time in seconds (unsigned 32 bits); 0 is left out, as Packetbeat does."""
    if len(value) != 4:
        return MALFORMED
    return _U32(value)[0] or None


def _time_offset(value: bytes) -> Any:
    return _I32(value)[0] if len(value) == 4 else MALFORMED


def _message_type(value: bytes) -> Any:
    if len(value) != 1:
        return MALFORMED
    number = value[0]
    if number == 0:
        return None
    return MESSAGE_TYPES[number] if number < len(MESSAGE_TYPES) else f"unknown ({number})"


def _parameter_names(value: bytes) -> list[str] | None:
    return [OPTION_NAMES.get(code) or f"unknown ({code})" for code in value] or None


def _vendor_classes(value: bytes) -> Any:
    """Option 124 (RFC 3925): enterprise number (4 bytes), data length (1), data; repeated."""
    classes = []
    position = 0
    while position < len(value):
        data_start = position + 5
        if data_start > len(value) or data_start + value[position + 4] > len(value):
            return MALFORMED
        data_end = data_start + value[position + 4]
        classes.append(
            {"id": _U32(value[position : data_start - 1])[0], "data": value[data_start:data_end].hex()}
        )
        position = data_end
    return classes or None


OPTION_FIELDS: dict[int, tuple[str, Callable[[bytes], Any]]] = {
    MESSAGE_TYPE: ("message_type", _message_type),
    55: ("parameter_request_list", _parameter_names),
    50: ("requested_ip_address", _address),
    54: ("server_identifier", _address),
    28: ("broadcast_address", _address),
    57: ("max_dhcp_message_size", _u16),
    60: ("class_identifier", _text),
    15: ("domain_name", _text),
    6: ("dns_servers", _addresses),
    124: ("vendor_identifying_options", _vendor_classes),
    1: ("subnet_mask", _address),
    2: ("utc_time_offset_sec", _time_offset),
    3: ("router", _addresses),
    4: ("time_servers", _addresses),
    42: ("ntp_servers", _addresses),
    12: ("hostname", _name),
    51: ("ip_address_lease_time_sec", _seconds),
    56: ("message", _text),
    58: ("renewal_time_sec", _seconds),
    59: ("rebinding_time_sec", _seconds),
    67: ("boot_file_name", _name),
}
"""Option code -> (its field under ``dhcpv4.option``, its decoder), in Packetbeat's order."""


def _decode_options(options: dict[int, bytes], notes: list[str]) -> dict[str, Any]:
    """The ``dhcpv4.option`` object; a value of the wrong shape is left out with a note."""
    decoded: dict[str, Any] = {}
    for code, (name, decode) in OPTION_FIELDS.items():
        value = options.get(code)
        if value is None:
            continue
        result = decode(value)
        if result is MALFORMED:
            notes.append(f"option {code} ({OPTION_NAMES[code]}) is malformed: {len(value)} bytes")
        elif result is not None:
            decoded[name] = result
    return decoded


class DhcpV4Analyzer(UdpAnalyzer):
    """DHCPv4: every message as an event, with Packetbeat's dhcpv4 fields."""

    default_ports = (67, 68)

    def open(self) -> None:
        self.transactions = Transactions(self, fill_event)

    def parse_udp(self, packet: AppPacket) -> None:
        data = packet.data
        size = len(data) + packet.gap
        try:
            message = parse_message(data, packet.timestamp, packet.from_client, size)
        except MalformedDhcpError as malformed:
            self.drop(malformed.reason)
            return
        if message.notes:
            self.count("malformed_options")
        if size > len(data):
            message.notes.append(f"datagram truncated by the capture ({size - len(data)} bytes missing)")
        # every message stands alone: a BOOTREQUEST from its sender, a BOOTREPLY to its receiver
        self.transactions.publish_alone(packet.flow, message, answer=message.fields["op"] != BOOTREQUEST)


def fill_event(event: Event, request: Message | None, response: Message | None) -> None:
    """Add the ``dhcpv4`` object of the message (there is one) and its addresses to ``related.ip``."""
    message = request if request is not None else response
    assert message is not None
    event["dhcpv4"] = message.fields["dhcpv4"]
    addresses = event["related"]["ip"]
    for address in message.fields["related"]:
        if address not in addresses:
            addresses.append(address)


@hookimpl
def flowpipe_add_analyzers() -> dict[str, type[UdpAnalyzer]]:
    return {"dhcpv4": DhcpV4Analyzer}
