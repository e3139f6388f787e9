"""The ``dns`` analyzer: DNS over UDP and TCP as Packetbeat reports it (ECS ``dns.*`` fields).

One analyzer serves both transports (``transports = ("tcp", "udp")``): the ``protocol`` decoder
hands it UDP datagrams through :meth:`DnsAnalyzer.parse_udp` and TCP streams through
:meth:`DnsAnalyzer.parse`, where each message is preceded by its 2-byte length (RFC 1035 4.2.2).
Its parts, each with one job:

1. options: ``include_authorities``, ``include_additionals`` (as Packetbeat) and
   ``public_suffix_list`` (the file that ``dns.question.registered_domain`` comes from);
2. the wire-format parser (:func:`parse_message`): header, question, records with their data
   decoded per type, EDNS; names with compression pointers that must point strictly backwards
   (no loops), at most :data:`MAX_POINTERS` of them, labels of at most 63 and names of at most
   255 octets. A message that breaks the format is counted (``dropped.dns.malformed``) and
   skipped; one cut short (by the capture or ``max_message_size``) keeps what it has, noted;
3. TCP framing (:class:`TcpFramer`): messages split across segments or many per segment;
4. transactions: the shared helper pairs a query with the response of the same DNS id on the
   same flow (several may be outstanding, answered in any order);
5. publishing (:meth:`DnsAnalyzer.fill_event`): the response's view of the exchange (the query's
   when it went unanswered), plus Packetbeat's ``method``, ``query`` and ``resource``.

Names are printed without the trailing dot (``www.example.com``; the root is ``.``), as Packetbeat
does since it adopted ECS; bytes outside printable ASCII are escaped as ``\\DDD`` and ``.``,
``\\`` and ``"`` inside a label with a backslash.
"""

from __future__ import annotations

import base64
import functools
import re
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flowpipe import (
    AppPacket,
    Bool,
    Event,
    FlowInfo,
    Message,
    Option,
    StageContext,
    StartupError,
    Str,
    TcpAnalyzer,
    Transactions,
    hookimpl,
)

__all__ = [
    "DnsAnalyzer",
    "DnsMessage",
    "IncompleteError",
    "MalformedError",
    "Names",
    "PublicSuffixList",
    "TcpFramer",
    "parse_message",
    "read_name",
]

HEADER_SIZE = 12
MAX_NAME = 255
"""Octets of a name on the wire, length bytes and the final zero included (RFC 1035 2.3.4)."""
MAX_POINTERS = 64
"""Compression pointers followed in one name."""
MAX_UDP_WITHOUT_EDNS = 512
DEFAULT_PUBLIC_SUFFIX_LIST = "/usr/share/publicsuffix/public_suffix_list.dat"
"""Where Debian's package ``publicsuffix`` installs the list."""

QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
OPCODE_MASK, Z_BIT = 0x7800, 0x0040
DO_BIT = 0x8000
TYPE_A, TYPE_AAAA, TYPE_OPT = 1, 28, 41
CLASS_IN = 1

TYPES = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR", 10: "NULL",
    11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB",
    24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR", 36: "KX", 37: "CERT",
    39: "DNAME", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA",
    55: "HIP", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB",
    254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA", 32768: "TA", 32769: "DLV",
}  # fmt: skip
CLASSES = {1: "IN", 2: "CS", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO"}
RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
    17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG", 22: "BADTRUNC",
    23: "BADCOOKIE",
}  # fmt: skip
FLAG_NAMES = (("AA", AA), ("TC", TC), ("RD", RD), ("RA", RA), ("AD", AD), ("CD", CD))
FLAG_BITS = AA | TC | RD | RA | AD | CD

NOTE_QUESTION_MISMATCH = "the response's question differs from the query's"
NOTE_EDNS_MISSING = "the query used EDNS but the response does not"
NOTE_EDNS_UNEXPECTED = "the response uses EDNS but the query did not"
NOTE_UDP_TOO_LARGE = "UDP response larger than 512 bytes without EDNS"


def type_name(value: int) -> str:
    """The mnemonic of a record type (``TYPE65280`` for unassigned ones, as RFC 3597)."""
    return TYPES.get(value) or f"TYPE{value}"


def class_name(value: int) -> str:
    """The mnemonic of a class (``CLASS42`` for unassigned ones)."""
    return CLASSES.get(value) or f"CLASS{value}"


def rcode_name(value: int) -> str:
    """The mnemonic of a (possibly extended) response code."""
    return RCODES.get(value) or f"Unknown {value}"


def opcode_name(value: int) -> str:
    """The mnemonic of an opcode."""
    return OPCODES.get(value) or f"Unknown {value}"


# -- names and strings ---------------------------------------------------------------------------


class MalformedError(Exception):
    """The message breaks the DNS wire format."""


class IncompleteError(MalformedError):
    """The message ends before what it announces (it was cut short)."""


_TEXT_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x7e]|["\\]')


def _escapes(special: str) -> tuple[str, ...]:
    table = [chr(byte) if 0x20 <= byte <= 0x7E else f"\\{byte:03d}" for byte in range(256)]
    for char in special:
        table[ord(char)] = "\\" + char
    table[9], table[10], table[13] = "\\t", "\\n", "\\r"
    return tuple(table)


_LABEL_ESCAPES = _escapes('."\\')
_TEXT_ESCAPES = _escapes('"\\')


def _label(raw: bytes) -> str:
    return "".join([_LABEL_ESCAPES[byte] for byte in raw])


def _text(raw: bytes) -> str:
    if _TEXT_NEEDS_ESCAPE.search(raw) is None:
        return raw.decode("ascii")
    return "".join([_TEXT_ESCAPES[byte] for byte in raw])


def _labels_text(raw: list[bytes]) -> str:
    """Labels as presentation text: joined with dots, special bytes escaped."""
    joined = b".".join(raw)
    if _TEXT_NEEDS_ESCAPE.search(joined) is None and joined.count(b".") == len(raw) - 1:
        return joined.decode("ascii")  # the common case: plain ASCII, no dot inside a label
    return ".".join([_label(label) for label in raw])


class Names:
    """Reads the names of one message, remembering each by its offset: compression pointers
    mostly point at names read before, which are then not decoded again."""

    __slots__ = ("data", "known")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.known: dict[int, tuple[str, int, int]] = {}
        """Offset -> (text, octets on the wire, pointers followed) of a name read there."""

    def read(self, offset: int) -> tuple[str, int]:
        """The name at ``offset`` and the offset just after it (see :func:`read_name`)."""
        data = self.data
        known = self.known
        labels: list[bytes] = []
        size = len(data)
        position = floor = offset
        after = -1
        wire = 1
        pointers = 0
        suffix = ""
        while True:
            if position >= size:
                raise IncompleteError("name runs past the message")
            length = data[position]
            if length == 0:
                position += 1
                break
            if length >= 0xC0:
                if position + 1 >= size:
                    raise IncompleteError("pointer runs past the message")
                target = ((length & 0x3F) << 8) | data[position + 1]
                if target >= floor or target < HEADER_SIZE:
                    raise MalformedError("compression pointer does not point backwards")
                pointers += 1
                if after < 0:
                    after = position + 2
                seen = known.get(target)
                if seen is not None:
                    suffix, octets, followed = seen
                    wire += octets - 1
                    pointers += followed
                    if wire > MAX_NAME:
                        raise MalformedError("name longer than 255 octets")
                    break
                if pointers > MAX_POINTERS:
                    raise MalformedError("too many compression pointers")
                position = floor = target
                continue
            if length > 63:
                raise MalformedError("unknown label type")
            start = position + 1
            position = start + length
            if position > size:
                raise IncompleteError("label runs past the message")
            wire += length + 1
            if wire > MAX_NAME:
                raise MalformedError("name longer than 255 octets")
            labels.append(data[start:position])
        if pointers > MAX_POINTERS:
            raise MalformedError("too many compression pointers")
        if labels:
            text = _labels_text(labels)
            if suffix and suffix != ".":
                text = f"{text}.{suffix}"
        else:
            text = suffix or "."
        known[offset] = (text, wire, pointers)
        return text, (after if after >= 0 else position)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` of message ``data`` and the offset just after it.

    Each compression pointer must point strictly before the labels read so far (so pointers
    cannot loop) and past the header; labels are at most 63 octets (other label types are
    malformed) and the whole name at most :data:`MAX_NAME`. Raises :class:`MalformedError` (or
    :class:`IncompleteError` when the name runs past the data).
    """
    return Names(data).read(offset)


def _strings(data: bytes, start: int, end: int) -> list[str]:
    """The character-strings (length byte, then bytes) filling ``data[start:end]`` exactly."""
    strings = []
    while start < end:
        stop = start + 1 + data[start]
        if stop > end:
            raise MalformedError("character-string runs past its record")
        strings.append(_text(data[start + 1 : stop]))
        start = stop
    return strings


def _string(data: bytes, start: int, end: int) -> tuple[str, int]:
    """One character-string at ``start`` and the offset after it."""
    if start >= end:
        raise MalformedError("character-string missing")
    stop = start + 1 + data[start]
    if stop > end:
        raise MalformedError("character-string runs past its record")
    return _text(data[start + 1 : stop]), stop


# -- record data ---------------------------------------------------------------------------------

Rdata = dict[str, Any]
"""A record's decoded data: ``data`` plus the type's other parts, in presentation order."""


def _fixed(start: int, end: int, size: int) -> None:
    if end - start < size:
        raise MalformedError("record data too short")


def _name_in(names: Names, start: int, end: int) -> tuple[str, int]:
    name, after = names.read(start)
    if after > end:
        raise MalformedError("name runs past its record")
    return name, after


def _address(family: int, size: int) -> Callable[[Names, int, int], Rdata]:
    def decode(names: Names, start: int, end: int) -> Rdata:
        if end - start != size:
            raise MalformedError("address of the wrong size")
        return {"data": socket.inet_ntop(family, names.data[start:end])}

    return decode


def _target(names: Names, start: int, end: int) -> Rdata:
    return {"data": _name_in(names, start, end)[0]}


def _mx(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    _fixed(start, end, 3)
    return {
        "preference": struct.unpack_from("!H", data, start)[0],
        "data": _name_in(names, start + 2, end)[0],
    }


def _soa(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    mname, offset = _name_in(names, start, end)
    rname, offset = _name_in(names, offset, end)
    _fixed(offset, end, 20)
    serial, refresh, retry, expire, minimum = struct.unpack_from("!5I", data, offset)
    return {
        "data": mname,
        "rname": rname,
        "serial": serial,
        "refresh": refresh,
        "retry": retry,
        "expire": expire,
        "minimum": minimum,
    }


def _srv(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    _fixed(start, end, 7)
    priority, weight, port = struct.unpack_from("!3H", data, start)
    return {"priority": priority, "weight": weight, "port": port, "data": _name_in(names, start + 6, end)[0]}


def _txt(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    return {"data": " ".join(_strings(data, start, end))}


def _hinfo(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    cpu, offset = _string(data, start, end)
    os, _ = _string(data, offset, end)
    return {"cpu": cpu, "os": os, "data": f"{cpu} {os}"}


def _naptr(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    _fixed(start, end, 4)
    order, preference = struct.unpack_from("!2H", data, start)
    flags, offset = _string(data, start + 4, end)
    service, offset = _string(data, offset, end)
    regexp, offset = _string(data, offset, end)
    return {
        "order": order,
        "preference": preference,
        "flags": flags,
        "service": service,
        "regexp": regexp,
        "data": _name_in(names, offset, end)[0],
    }


def _ds(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    _fixed(start, end, 4)
    key_tag, algorithm, digest_type = struct.unpack_from("!HBB", data, start)
    return {
        "key_tag": key_tag,
        "algorithm": algorithm,
        "digest_type": digest_type,
        "data": data[start + 4 : end].hex().upper(),
    }


def _dnskey(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    _fixed(start, end, 4)
    flags, protocol, algorithm = struct.unpack_from("!HBB", data, start)
    return {
        "flags": flags,
        "protocol": protocol,
        "algorithm": algorithm,
        "data": base64.b64encode(data[start + 4 : end]).decode("ascii"),
    }


def _timestamp(value: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(value))


def _rrsig(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    _fixed(start, end, 19)
    covered, algorithm, labels, original_ttl, expiration, inception, key_tag = struct.unpack_from(
        "!HBBIIIH", data, start
    )
    signer, offset = _name_in(names, start + 18, end)
    return {
        "type_covered": type_name(covered),
        "algorithm": algorithm,
        "labels": labels,
        "original_ttl": original_ttl,
        "expiration": _timestamp(expiration),
        "inception": _timestamp(inception),
        "key_tag": key_tag,
        "signer_name": signer,
        "data": base64.b64encode(data[offset:end]).decode("ascii"),
    }


def _type_bitmap(data: bytes, start: int, end: int) -> str:
    """The types of an NSEC type bitmap (RFC 4034 4.1.2), by name."""
    types = []
    while start < end:
        if end - start < 2:
            raise MalformedError("type bitmap window truncated")
        window, length = data[start], data[start + 1]
        start += 2
        if not 1 <= length <= 32 or start + length > end:
            raise MalformedError("type bitmap window of a bad length")
        for index in range(length):
            octet = data[start + index]
            for bit in range(8):
                if octet & (0x80 >> bit):
                    types.append(type_name(window * 256 + index * 8 + bit))
        start += length
    return " ".join(types)


def _nsec(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    following, offset = _name_in(names, start, end)
    return {"data": following, "type_bits": _type_bitmap(data, offset, end)}


def _caa(names: Names, start: int, end: int) -> Rdata:
    data = names.data
    _fixed(start, end, 2)
    flag, length = data[start], data[start + 1]
    if start + 2 + length > end:
        raise MalformedError("CAA tag runs past its record")
    return {
        "flag": flag,
        "tag": _text(data[start + 2 : start + 2 + length]),
        "data": _text(data[start + 2 + length : end]),
    }


DECODERS: dict[int, Callable[[Names, int, int], Rdata]] = {
    TYPE_A: _address(socket.AF_INET, 4),
    TYPE_AAAA: _address(socket.AF_INET6, 16),
    2: _target,  # NS
    5: _target,  # CNAME
    12: _target,  # PTR
    39: _target,  # DNAME
    6: _soa,
    15: _mx,
    33: _srv,
    16: _txt,
    99: _txt,  # SPF
    13: _hinfo,
    35: _naptr,
    43: _ds,
    59: _ds,  # CDS
    32769: _ds,  # DLV
    48: _dnskey,
    60: _dnskey,  # CDNSKEY
    46: _rrsig,
    47: _nsec,
    257: _caa,
}
"""Record data decoders by type; other types' data is shown as hex."""


def decode_rdata(rtype: int, rclass: int, names: Names, start: int, end: int) -> Rdata:
    """The data of one record (bytes ``start:end`` of the message); raises :class:`MalformedError`."""
    decoder = DECODERS.get(rtype)
    if decoder is None or (rtype == TYPE_A and rclass != CLASS_IN):
        return {"data": names.data[start:end].hex()}
    return decoder(names, start, end)


# -- messages ------------------------------------------------------------------------------------


class DnsMessage:
    """One parsed DNS message."""

    __slots__ = (
        "additionals",
        "additionals_count",
        "answers",
        "answers_count",
        "authorities",
        "authorities_count",
        "complete",
        "flags",
        "id",
        "opt",
        "question",
        "rcode",
    )

    def __init__(self, ident: int, flags: int) -> None:
        self.id = ident
        self.flags = flags
        """The header's flag word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE)."""
        self.rcode = flags & 0x000F
        """The response code, extended by the EDNS OPT record when there is one."""
        self.question: tuple[str, int, int] | None = None
        """The first question: name, type, class."""
        self.answers: list[dict[str, Any]] = []
        self.authorities: list[dict[str, Any]] = []
        """Decoded only when asked for (``include_authorities``)."""
        self.additionals: list[dict[str, Any]] = []
        """Decoded only when asked for (``include_additionals``); never the OPT record."""
        self.answers_count = 0
        self.authorities_count = 0
        self.additionals_count = 0
        """Counts of the records the header announces (the OPT record not included)."""
        self.opt: dict[str, Any] | None = None
        """The EDNS fields (``dns.opt``) when the message has an OPT record."""
        self.complete = True
        """False when the message was cut short and only its first records could be read."""

    @property
    def is_response(self) -> bool:
        return bool(self.flags & QR)

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11


def parse_message(
    data: bytes, authorities: bool = False, additionals: bool = False, cut: bool = False
) -> DnsMessage:
    """Parse the DNS message ``data``; decode the authority and additional records if asked.

    With ``cut`` (the message is known to be cut short), records that run past the end are left
    out and the message marked incomplete. Raises :class:`MalformedError` otherwise (also when the
    header or the question are incomplete).
    """
    if len(data) < HEADER_SIZE:
        raise IncompleteError("shorter than a DNS header")
    ident, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!6H", data)
    message = DnsMessage(ident, flags)
    names = Names(data)
    message.answers_count, message.authorities_count, message.additionals_count = ancount, nscount, arcount
    offset = HEADER_SIZE
    for index in range(qdcount):
        name, offset = names.read(offset)
        if offset + 4 > len(data):
            raise IncompleteError("question runs past the message")
        if index == 0:
            qtype, qclass = struct.unpack_from("!HH", data, offset)
            message.question = (name, qtype, qclass)
        offset += 4
    try:
        offset = _section(names, offset, ancount, message.answers, message, False)
        offset = _section(
            names, offset, nscount, message.authorities if authorities else None, message, False
        )
        _section(names, offset, arcount, message.additionals if additionals else None, message, True)
    except IncompleteError:
        if not cut:
            raise
        message.complete = False
    return message


def _section(
    names: Names,
    offset: int,
    count: int,
    records: list[dict[str, Any]] | None,
    message: DnsMessage,
    additional: bool,
) -> int:
    """Read ``count`` records from ``offset``, decoding them into ``records`` unless it is None.

    In the ``additional`` section, the first OPT record sets the message's EDNS fields."""
    data = names.data
    size = len(data)
    for _ in range(count):
        name, offset = names.read(offset)
        if offset + 10 > size:
            raise IncompleteError("record runs past the message")
        rtype, rclass, ttl, length = struct.unpack_from("!HHIH", data, offset)
        start = offset + 10
        offset = start + length
        if offset > size:
            raise IncompleteError("record data runs past the message")
        if rtype == TYPE_OPT and additional:
            if message.opt is None:
                _edns(message, name, rclass, ttl)
            continue
        if records is not None:
            record: dict[str, Any] = {
                "name": name,
                "type": type_name(rtype),
                "class": class_name(rclass),
                "ttl": ttl,
            }
            record.update(decode_rdata(rtype, rclass, names, start, offset))
            records.append(record)
    return offset


def _edns(message: DnsMessage, name: str, udp_size: int, ttl: int) -> None:
    """The OPT pseudo-record (RFC 6891): its TTL holds the extended rcode, version and DO bit."""
    if name != ".":
        raise MalformedError("OPT record not owned by the root")
    extended = (ttl >> 24) << 4
    message.rcode |= extended
    message.additionals_count -= 1
    message.opt = {
        "version": str((ttl >> 16) & 0xFF),
        "do": bool(ttl & DO_BIT),
        "ext_rcode": rcode_name(extended),
        "udp_size": udp_size,
    }


# -- text for send_request / send_response -------------------------------------------------------


def message_text(message: DnsMessage) -> str:
    """A dig-like text rendering of ``message`` (Packetbeat's ``request``/``response``)."""
    flags = message.flags
    names = ["qr"] if flags & QR else []
    names += [name.lower() for name, bit in FLAG_NAMES if flags & bit]
    lines = [
        f";; opcode: {opcode_name(message.opcode)}, status: {rcode_name(message.rcode)}, id: {message.id}",
        f";; flags: {' '.join(names)}; QUERY: {1 if message.question else 0}, "
        f"ANSWER: {message.answers_count}, AUTHORITY: {message.authorities_count}, "
        f"ADDITIONAL: {message.additionals_count}",
    ]
    if message.opt is not None:
        opt = message.opt
        lines.append(
            f";; EDNS: version: {opt['version']}, flags:{' do' if opt['do'] else ''}; udp: {opt['udp_size']}"
        )
    if message.question is not None:
        name, qtype, qclass = message.question
        lines += ["", ";; QUESTION SECTION:", f";{name}\t{class_name(qclass)}\t{type_name(qtype)}"]
    for title, records in (
        ("ANSWER", message.answers),
        ("AUTHORITY", message.authorities),
        ("ADDITIONAL", message.additionals),
    ):
        if records:
            lines += ["", f";; {title} SECTION:"]
            lines += [_record_text(record) for record in records]
    return "\n".join(lines) + "\n"


def _record_text(record: dict[str, Any]) -> str:
    parts = [f"{key} {value}" for key, value in record.items() if key not in _RECORD_HEADER]
    parts.append(str(record["data"]))
    return f"{record['name']}\t{record['ttl']}\t{record['class']}\t{record['type']}\t{', '.join(parts)}"


_RECORD_HEADER = frozenset(("name", "type", "class", "ttl", "data"))


# -- TCP framing -----------------------------------------------------------------------------------


class TcpFramer:
    """Splits one direction of a DNS-over-TCP stream into messages (RFC 1035 4.2.2, RFC 7766).

    :meth:`feed` returns ``(message, timestamp, length, cut)`` for each message it completes:
    the message bytes (at most ``limit`` of them), the capture time of its first byte, the length
    its prefix announced and how many bytes beyond ``limit`` were skipped.
    """

    __slots__ = ("buffer", "limit", "skip", "start")

    def __init__(self, limit: int) -> None:
        self.buffer = bytearray()
        self.limit = limit
        self.skip = 0
        """Bytes still to discard: the rest of a message longer than ``limit``."""
        self.start = 0.0

    def feed(self, data: bytes, timestamp: float) -> list[tuple[bytes, float, int, int]]:
        """Take the next bytes of the stream; return the messages they complete."""
        frames: list[tuple[bytes, float, int, int]] = []
        buffer = self.buffer
        position, end = 0, len(data)
        while position < end:
            if self.skip:
                skipped = min(self.skip, end - position)
                self.skip -= skipped
                position += skipped
                continue
            if not buffer:
                self.start = timestamp
                if end - position >= 2:  # fast path: a whole message inside ``data``
                    length = (data[position] << 8) | data[position + 1]
                    if length <= self.limit and position + 2 + length <= end:
                        frames.append((data[position + 2 : position + 2 + length], timestamp, length, 0))
                        position += 2 + length
                        continue
            if len(buffer) < 2:
                taken = min(2 - len(buffer), end - position)
                buffer += data[position : position + taken]
                position += taken
                if len(buffer) < 2:
                    break
            length = (buffer[0] << 8) | buffer[1]
            kept = min(length, self.limit)
            taken = min(2 + kept - len(buffer), end - position)
            buffer += data[position : position + taken]
            position += taken
            if len(buffer) == 2 + kept:
                frames.append((bytes(buffer[2:]), self.start, length, length - kept))
                buffer.clear()
                self.skip = length - kept
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message held."""
        return len(self.buffer)


class DnsState:
    """Per TCP connection: a framer for each direction."""

    __slots__ = ("client", "server")

    def __init__(self, limit: int) -> None:
        self.client = TcpFramer(limit)
        self.server = TcpFramer(limit)


# -- registered domains ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_suffix_list(path: str, mtime_ns: int, size: int) -> PublicSuffixList:
    return PublicSuffixList(Path(path).read_text("utf-8").splitlines())


KNOWN_NAMES = 4096
"""Names whose registered-domain fields a suffix list remembers (then it starts afresh)."""


class PublicSuffixList:
    """The rules of the Public Suffix List (publicsuffix.org) that name registered domains."""

    __slots__ = ("exceptions", "known", "rules", "wildcards")

    def __init__(self, lines: list[str]) -> None:
        self.known: dict[str, dict[str, str]] = {}
        """Name -> its :meth:`domain_fields` (names repeat), at most :data:`KNOWN_NAMES` of them."""
        self.rules: set[str] = set()
        self.wildcards: set[str] = set()
        """Parents of ``*.parent`` rules."""
        self.exceptions: set[str] = set()
        for line in lines:
            fields = line.split()
            if not fields or fields[0].startswith("//"):
                continue
            rule = ".".join(_ascii_label(label) for label in fields[0].lower().split("."))
            if rule.startswith("!"):
                self.exceptions.add(rule[1:])
            elif rule.startswith("*."):
                self.wildcards.add(rule[2:])
            else:
                self.rules.add(rule)

    @classmethod
    def load(cls, path: Path) -> PublicSuffixList:
        """Read the list in its published format (one rule a line, ``//`` comments).

        Parsed once per file version in a process (the lists are read-only once built).
        """
        stat = path.stat()
        return _load_suffix_list(str(path), stat.st_mtime_ns, stat.st_size)

    def split(self, name: str) -> tuple[int, int] | None:
        """Where the public suffix of ``name`` starts, counted in labels: ``(start, labels)``.

        None when ``name`` is itself a public suffix (it has no registered domain).
        """
        labels = name.lower().split(".")
        count = len(labels)
        start = count - 1  # the implicit rule "*": the last label alone
        for index in range(count):
            suffix = ".".join(labels[index:])
            if suffix in self.exceptions:
                start = index + 1
                break
            if suffix in self.rules or (
                index + 1 < count and ".".join(labels[index + 1 :]) in self.wildcards
            ):
                start = index
                break
        return (start, count) if start > 0 else None

    def domain_fields(self, name: str) -> dict[str, str]:
        """``registered_domain``, ``etld_plus_one``, ``top_level_domain`` and ``subdomain`` of ``name``.

        The dict is remembered and returned again for the same name: copy it, do not modify it.
        """
        known = self.known.get(name)
        if known is None:
            known = self._domain_fields(name)
            if len(self.known) >= KNOWN_NAMES:
                self.known.clear()
            self.known[name] = known
        return known

    def _domain_fields(self, name: str) -> dict[str, str]:
        if name == "." or not name:
            return {}
        found = self.split(name)
        if found is None:
            return {}
        start = found[0]
        labels = name.split(".")
        registered = ".".join(labels[start - 1 :])
        fields = {
            "registered_domain": registered,
            "etld_plus_one": registered,
            "top_level_domain": ".".join(labels[start:]),
        }
        if start > 1:
            fields["subdomain"] = ".".join(labels[: start - 1])
        return fields


def _ascii_label(label: str) -> str:
    """A list rule's label as it appears in DNS: internationalised labels in punycode."""
    if label.isascii():
        return label
    return "xn--" + label.encode("punycode").decode("ascii")


# -- the analyzer ----------------------------------------------------------------------------------


class DnsAnalyzer(TcpAnalyzer):
    """DNS over UDP and TCP: queries paired with responses by id, with Packetbeat's dns.* fields."""

    transports = ("tcp", "udp")
    default_ports = (53,)
    default_max_message_size = "64KiB"
    options = (
        Option("include_authorities", Bool(), False, "add the authority records as dns.authorities"),
        Option("include_additionals", Bool(), False, "add the additional records as dns.additionals"),
        Option(
            "public_suffix_list",
            Str(),
            DEFAULT_PUBLIC_SUFFIX_LIST,
            "Public Suffix List file for dns.question.registered_domain and friends; empty: none",
        ),
    )

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self.suffixes: PublicSuffixList | None = None
        self._authorities = bool(config.include_authorities or config.send_request or config.send_response)
        self._additionals = bool(config.include_additionals or config.send_request or config.send_response)

    def open(self) -> None:
        self.transactions = Transactions(self, self.fill_event)
        path_text = self.config.public_suffix_list
        if not path_text:
            return
        path = self.context.resolve_path(path_text)
        try:
            self.suffixes = PublicSuffixList.load(path)
        except OSError as error:
            if path_text != DEFAULT_PUBLIC_SUFFIX_LIST:
                raise StartupError(f"dns: cannot read public_suffix_list {path}: {error.strerror}") from None
            self.context.log.warning(
                "dns: no Public Suffix List at %s (Debian package publicsuffix): "
                "dns.question.registered_domain is left out",
                path,
            )

    @classmethod
    def detect(cls, data: bytes, from_client: bool) -> bool | None:
        """A DNS-over-TCP stream starts with a length, then a header with one question."""
        if len(data) < 2 + HEADER_SIZE + 1:
            return None
        length, _, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!7H", data)
        if length < HEADER_SIZE + 5 or qdcount != 1 or flags & (OPCODE_MASK | Z_BIT) or data[14] > 63:
            return False
        if not flags & QR:
            return ancount == 0 and nscount == 0 and arcount <= 2
        return (ancount + nscount + arcount) * 11 <= length - HEADER_SIZE - 5

    # -- the transports --------------------------------------------------------------------------

    def parse_udp(self, packet: AppPacket) -> None:
        """One datagram: one DNS message (cut short when the capture's snapshot length was hit)."""
        data = packet.data
        missing = packet.gap
        note = f"datagram truncated by the capture ({missing} bytes missing)" if missing else None
        size = len(data) + missing
        self._message(packet.flow, data, packet.timestamp, packet.from_client, "udp", size, note)

    def parse(self, packet: AppPacket, flow: FlowInfo, direction: int, state: DnsState | None) -> DnsState:
        if state is None:
            state = DnsState(self.config.max_message_size)
        from_client = packet.from_client
        framer = state.client if from_client else state.server
        for data, timestamp, length, cut in framer.feed(packet.data, packet.timestamp):
            if length < HEADER_SIZE:
                self.drop("malformed")
                continue
            note = f"message truncated at max_message_size ({framer.limit} bytes)" if cut else None
            self._message(flow, data, timestamp, from_client, "tcp", length, note)
        return state

    def on_close(self, flow: FlowInfo, state: DnsState | None) -> None:
        if state is not None and (state.client.pending or state.server.pending):
            self.drop("incomplete")
        self.transactions.close(flow)

    def expire(self, now: float) -> None:
        self.transactions.expire(now)

    def flush(self) -> None:
        self.transactions.flush()

    # -- messages into transactions --------------------------------------------------------------

    def _message(
        self,
        flow: FlowInfo,
        data: bytes,
        timestamp: float,
        from_client: bool,
        transport: str,
        size: int,
        note: str | None,
    ) -> None:
        try:
            parsed = parse_message(data, self._authorities, self._additionals, cut=note is not None)
        except MalformedError:
            self.drop("malformed")
            return
        response = parsed.is_response
        message = Message(
            timestamp=timestamp,
            from_client=from_client,
            size=size,
            fields={"dns": parsed, "transport": transport},
            error=response and parsed.rcode != 0,
        )
        if note is not None:
            message.notes.append(note)
        if (
            response
            and transport == "udp"
            and parsed.complete
            and parsed.opt is None
            and size > MAX_UDP_WITHOUT_EDNS
        ):
            message.notes.append(NOTE_UDP_TOO_LARGE)
        send = self.config.send_response if response else self.config.send_request
        if send:
            message.raw = message_text(parsed).encode()
        if response:
            self.transactions.response(flow, message, key=parsed.id)
        else:
            self.transactions.request(flow, message, key=parsed.id)

    # -- publishing ------------------------------------------------------------------------------

    def fill_event(self, event: Event, request: Message | None, response: Message | None) -> None:
        """Add the DNS fields of a transaction: the response's view, or the query's alone."""
        shown = response if response is not None else request
        assert shown is not None
        message: DnsMessage = shown.fields["dns"]
        asked: DnsMessage = (request if request is not None else shown).fields["dns"]
        event["method"] = opcode_name(asked.opcode)
        if asked.question is not None:
            name, qtype, qclass = asked.question
            event["query"] = f"class {class_name(qclass)}, type {type_name(qtype)}, {name}"
            event["resource"] = name
        dns = self._dns_fields(message, "answer" if response is not None else "query")
        event["dns"] = dns
        resolved = dns.get("resolved_ip")
        if resolved:
            related = event["related"]["ip"]
            related.extend(ip for ip in dict.fromkeys(resolved) if ip not in related)
        if request is not None and response is not None:
            notes = _pair_notes(request.fields["dns"], message)
            if notes:
                event.setdefault("notes", []).extend(notes)

    def _dns_fields(self, message: DnsMessage, kind: str) -> dict[str, Any]:
        flags, header_flags = _flag_fields(message.flags & FLAG_BITS)
        dns: dict[str, Any] = {
            "type": kind,
            "id": message.id,
            "op_code": opcode_name(message.opcode),
            "flags": flags.copy(),
            "response_code": rcode_name(message.rcode),
        }
        if message.opt is not None and message.opt["do"]:
            dns["header_flags"] = [*header_flags, "DO"]
        elif header_flags:
            dns["header_flags"] = header_flags.copy()
        if message.question is not None:
            name, qtype, qclass = message.question
            question = {"name": name, "type": type_name(qtype), "class": class_name(qclass)}
            if self.suffixes is not None:
                question.update(self.suffixes.domain_fields(name))
            dns["question"] = question
        if message.opt is not None:
            dns["opt"] = dict(message.opt)
        dns["answers_count"] = message.answers_count
        if message.answers:
            dns["answers"] = message.answers
            resolved = [
                answer["data"]
                for answer in message.answers
                if answer["type"] in ("A", "AAAA") and answer["class"] == "IN"
            ]
            if resolved:
                dns["resolved_ip"] = resolved
        dns["authorities_count"] = message.authorities_count
        if self.config.include_authorities and message.authorities:
            dns["authorities"] = message.authorities
        dns["additionals_count"] = message.additionals_count
        if self.config.include_additionals and message.additionals:
            dns["additionals"] = message.additionals
        return dns


_FLAG_FIELDS: dict[int, tuple[dict[str, bool], list[str]]] = {}


def _flag_fields(bits: int) -> tuple[dict[str, bool], list[str]]:
    """``dns.flags`` and the ``header_flags`` names (without DO) of the header's flag ``bits``.

    Remembered per combination (at most 64): callers copy them into their event."""
    fields = _FLAG_FIELDS.get(bits)
    if fields is None:
        flags = {
            "authoritative": bool(bits & AA),
            "truncated_response": bool(bits & TC),
            "recursion_desired": bool(bits & RD),
            "recursion_available": bool(bits & RA),
            "authentic_data": bool(bits & AD),
            "checking_disabled": bool(bits & CD),
        }
        fields = _FLAG_FIELDS[bits] = (flags, [name for name, bit in FLAG_NAMES if bits & bit])
    return fields


def _pair_notes(query: DnsMessage, response: DnsMessage) -> list[str]:
    notes = []
    asked, answered = query.question, response.question
    if asked is not None and answered is not None and _folded(asked) != _folded(answered):
        notes.append(NOTE_QUESTION_MISMATCH)
    if query.opt is not None and response.opt is None:
        notes.append(NOTE_EDNS_MISSING)
    elif query.opt is None and response.opt is not None:
        notes.append(NOTE_EDNS_UNEXPECTED)
    return notes


def _folded(question: tuple[str, int, int]) -> tuple[str, int, int]:
    """A question compared as DNS does: names without regard to ASCII case."""
    return question[0].lower(), question[1], question[2]


@hookimpl
def flowpipe_add_analyzers() -> dict[str, type[TcpAnalyzer]]:
    return {"dns": DnsAnalyzer}
