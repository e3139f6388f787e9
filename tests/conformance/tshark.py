"""Ground truth from tshark: conversation statistics and followed TCP streams of a capture, and
(through :class:`Sharkd`, Wireshark's dissection daemon) what the HTTP, DNS, TLS and SMTP
dissectors see in it."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Endpoint = tuple[str, int]

_CONVERSATION = re.compile(
    r"^(?P<a>\S+):(?P<a_port>\d+)\s+<->\s+(?P<b>\S+):(?P<b_port>\d+)\s+"
    r"(?P<to_a_frames>\d+)\s+(?P<to_a_bytes>[\d,]+)\s+(?P<to_a_unit>\S+)\s+"
    r"(?P<to_b_frames>\d+)\s+(?P<to_b_bytes>[\d,]+)\s+(?P<to_b_unit>\S+)"
)
_UNITS = {"bytes": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}
_NODE = re.compile(r"^Node ([01]): (.*):(\d+)$")
_FOLLOW_SEPARATOR = "=" * 67


def _tshark(pcap: Path, *args: str) -> str:
    result = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), *args], capture_output=True, text=True, timeout=300
    )
    return result.stdout


def _number(text: str) -> int:
    return int(text.replace(",", ""))


@dataclass(frozen=True)
class Size:
    """A byte count as tshark prints it: exact below 10 kB, else rounded to kB, MB, ..."""

    value: int
    unit: int

    def matches(self, exact: int) -> bool:
        return (
            self.value == exact
            if self.unit == 1
            else self.value in (exact // self.unit, round(exact / self.unit))
        )

    def __add__(self, other: Size) -> Size:
        """Rows tshark splits one 5-tuple into (port reuse) add up; a rounded part rounds the sum."""
        if self.unit == other.unit == 1:
            return Size(self.value + other.value, 1)
        unit = max(self.unit, other.unit)
        return Size(round((self.value * self.unit + other.value * other.unit) / unit), unit)

    def __repr__(self) -> str:
        return str(self.value) if self.unit == 1 else f"~{self.value}x{self.unit}"


@dataclass(frozen=True)
class Conversation:
    """One tshark conversation: frames and bytes each endpoint sent."""

    transport: str
    a: Endpoint
    b: Endpoint
    frames_from_a: int
    bytes_from_a: Size
    frames_from_b: int
    bytes_from_b: Size

    def key(self) -> tuple[str, frozenset[Endpoint]]:
        return self.transport, frozenset((self.a, self.b))

    def __add__(self, other: Conversation) -> Conversation:
        """The same 5-tuple in two rows (tshark splits on port reuse), as one conversation."""
        frames_b, bytes_b = other.sent_by(self.a)
        frames_a, bytes_a = other.sent_by(self.b)
        return Conversation(
            self.transport, self.a, self.b,
            self.frames_from_a + frames_b, self.bytes_from_a + bytes_b,
            self.frames_from_b + frames_a, self.bytes_from_b + bytes_a,
        )  # fmt: skip

    def sent_by(self, endpoint: Endpoint) -> tuple[int, Size]:
        """(frames, bytes) ``endpoint`` sent."""
        if endpoint == self.a:
            return self.frames_from_a, self.bytes_from_a
        return self.frames_from_b, self.bytes_from_b


def conversations(pcap: Path) -> list[Conversation]:
    """TCP and UDP conversations as ``tshark -z conv,tcp -z conv,udp`` counts them."""
    found: list[Conversation] = []
    transport = ""
    for line in _tshark(pcap, "-q", "-z", "conv,tcp", "-z", "conv,udp").splitlines():
        if line.endswith(" Conversations"):
            transport = line.split()[0].lower()
            continue
        match = _CONVERSATION.match(line)
        if match is None:
            continue
        found.append(
            Conversation(
                transport,
                (match["a"], int(match["a_port"])),
                (match["b"], int(match["b_port"])),
                frames_from_a=int(match["to_b_frames"]),
                bytes_from_a=Size(_number(match["to_b_bytes"]), _UNITS[match["to_b_unit"]]),
                frames_from_b=int(match["to_a_frames"]),
                bytes_from_b=Size(_number(match["to_a_bytes"]), _UNITS[match["to_a_unit"]]),
            )
        )
    return found


@dataclass
class FollowedStream:
    """The payload each node of one TCP stream sent, as ``tshark -z follow,tcp,raw`` gives it."""

    index: int
    nodes: tuple[Endpoint, Endpoint]
    sent: tuple[bytes, bytes]

    def sent_by(self, endpoint: Endpoint) -> bytes:
        return self.sent[0] if endpoint == self.nodes[0] else self.sent[1]


def tcp_stream_count(pcap: Path) -> int:
    indexes = _tshark(pcap, "-T", "fields", "-e", "tcp.stream", "-Y", "tcp").split()
    return max((int(index) for index in indexes), default=-1) + 1


def streams_with_losses(pcap: Path) -> set[int]:
    """TCP streams in which tshark itself sees lost or unseen segments."""
    output = _tshark(
        pcap,
        "-T", "fields", "-e", "tcp.stream",
        "-Y", "tcp.analysis.lost_segment or tcp.analysis.ack_lost_segment",
    )  # fmt: skip
    return {int(index) for index in output.split()}


def follow_tcp(pcap: Path, indexes: list[int]) -> list[FollowedStream]:
    """Follow the given TCP streams (one tshark run for all of them)."""
    if not indexes:
        return []
    args = ["-q"]
    for index in indexes:
        args += ["-z", f"follow,tcp,raw,{index}"]
    output = _tshark(pcap, *args)
    streams: list[FollowedStream] = []
    blocks = [block for block in output.split(_FOLLOW_SEPARATOR) if "Follow: tcp,raw" in block]
    for index, block in zip(indexes, blocks, strict=False):
        nodes: dict[int, Endpoint] = {}
        sent = [bytearray(), bytearray()]
        for line in block.splitlines():
            node = _NODE.match(line)
            if node:
                nodes[int(node[1])] = (node[2].strip("[]"), int(node[3]))  # IPv6 comes as [addr]
            elif re.fullmatch(r"\t?[0-9a-f]+", line):
                sent[1 if line.startswith("\t") else 0] += bytes.fromhex(line.strip())
        streams.append(FollowedStream(index, (nodes[0], nodes[1]), (bytes(sent[0]), bytes(sent[1]))))
    return streams


class Sharkd:
    """Wireshark's dissection daemon (``sharkd``, installed with tshark), for many captures in a row.

    Each tshark run registers every Wireshark dissector again (about half a second of CPU); one
    sharkd process loads capture after capture instead. Quirks of sharkd 4.0 handled here: the
    ``load`` of a damaged capture gets no answer (so each load is followed by a ``status``
    request, whose answer is awaited); the frames a display filter matched are cached by the
    filter's text across loads (so each query's filter is made unique); each load keeps about
    11 MB (so the process is restarted every :attr:`RESTART_EVERY` captures); a request takes at
    most :attr:`MAX_COLUMNS` columns.
    """

    RESTART_EVERY = 16
    MAX_COLUMNS = 32

    def __init__(self, preferences: dict[str, str]) -> None:
        """``preferences``: Wireshark preferences set in every process (``http.tcp.port``: ...)."""
        self.preferences = preferences
        self._process: subprocess.Popen[str] | None = None
        self._loads = 0
        self._id = 0

    def __enter__(self) -> Sharkd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            self._process.wait(timeout=60)
            self._process = None

    def load(self, pcap: Path) -> None:
        """Dissect ``pcap``: the capture that :meth:`frames` then queries."""
        if self._process is None or self._loads >= self.RESTART_EVERY:
            self._start()
        self._loads += 1
        self._send("load", file=str(pcap))
        self._call("status")

    def frames(self, display_filter: str, columns: list[str]) -> list[list[str]]:
        """Per frame matching ``display_filter``, the values of ``columns``: custom columns
        ``field:occurrence``, where occurrence 0 joins every occurrence with commas, 1 is the
        first, 2 the second, ... (an empty string where the frame has no such occurrence)."""
        if len(columns) > self.MAX_COLUMNS:
            raise ValueError(f"sharkd takes at most {self.MAX_COLUMNS} columns, not {len(columns)}")
        named = {f"column{index}": column for index, column in enumerate(columns)}
        unique = f"({display_filter}) && frame.number != {0xFFFFFFFF - self._id}"  # always true
        return [row["c"] for row in self._call("frames", filter=unique, **named)]

    def _start(self) -> None:
        self.close()
        self._process = subprocess.Popen(
            ["sharkd", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self._loads = 0
        for name, value in self.preferences.items():
            self._call("setconf", name=name, value=value)

    def _send(self, method: str, **params: str) -> int:
        assert self._process is not None and self._process.stdin is not None
        self._id += 1
        request = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return self._id

    def _call(self, method: str, **params: str) -> Any:
        ident = self._send(method, **params)
        assert self._process is not None and self._process.stdout is not None
        while True:
            line = self._process.stdout.readline()
            if not line:
                raise RuntimeError(f"sharkd exited while answering {method!r}")
            answer = json.loads(line) if line.startswith("{") else {}
            if answer.get("id") == ident:
                break
        if "error" in answer:
            raise RuntimeError(f"sharkd {method} {params}: {answer['error']['message']}")
        return answer["result"]


@dataclass(frozen=True)
class Sighting:
    """One value a program reported: what is compared (``key``), the ports of its packets, where."""

    key: tuple[str, ...]
    ports: frozenset[int]
    where: str


QR_RESPONSE = 0x8000
"""The QR bit of the DNS header flags: set in responses."""
_PLACE = ["frame.number:0", "tcp.stream:0", "udp.stream:0", "tcp.port:0", "udp.port:0"]
"""The columns that say where a value was seen, first in every query."""


def application_values(sharkd: Sharkd) -> dict[str, list[Sighting]]:
    """What Wireshark's dissectors see in the capture ``sharkd`` has loaded, by measure:
    ``http.request`` (method, request target), ``http.status`` (code of a final response: interim
    1xx responses other than 101 answer no request and are left out), ``dns.query`` (name and
    type of each question of a query), ``tls.sni`` (server name of a ClientHello over TCP),
    ``smtp.mail_from`` and ``smtp.rcpt_to`` (the address of each MAIL FROM / RCPT TO command)."""
    return {**_http(sharkd), **_dns(sharkd), **_tls(sharkd), **_smtp(sharkd)}


def _place(row: list[str]) -> tuple[frozenset[int], str]:
    frame, tcp_stream, udp_stream, tcp_ports, udp_ports = row[: len(_PLACE)]
    ports = frozenset(int(port) for port in f"{tcp_ports},{udp_ports}".split(",") if port)
    stream = f"tcp stream {tcp_stream}" if tcp_stream else f"udp stream {udp_stream}"
    return ports, f"frame {frame} ({stream})"


def _listed(column: str) -> list[str]:
    """The values of an occurrence-0 column of a field whose values hold no commas."""
    return column.split(",") if column else []


def _repeated(field: str, first: int) -> list[str]:
    """Columns for the occurrences of ``field`` (values that may hold commas), one column each,
    from the ``first`` column of the query to the last one sharkd allows."""
    return [f"{field}:{occurrence}" for occurrence in range(1, Sharkd.MAX_COLUMNS - first + 1)]


def _occurrences(row: list[str], first: int, count: int, where: str) -> list[str]:
    """The ``count`` values of the :func:`_repeated` columns starting at column ``first``."""
    if count > len(row) - first:
        raise ValueError(f"{where}: {count} occurrences, more than sharkd's columns can hold")
    return row[first : first + count]


def _http(sharkd: Sharkd) -> dict[str, list[Sighting]]:
    fixed = [*_PLACE, "http.request.method:0", "http.response.code:0"]
    rows = sharkd.frames(
        "tcp && (http.request || http.response)", fixed + _repeated("http.request.uri", len(fixed))
    )
    requests, statuses = [], []
    for row in rows:
        ports, where = _place(row)
        methods, codes = _listed(row[5]), _listed(row[6])
        targets = _occurrences(row, len(fixed), len(methods), where)
        requests += [
            Sighting((method, target), ports, where) for method, target in zip(methods, targets, strict=True)
        ]
        statuses += [Sighting((code,), ports, where) for code in codes if not _interim(int(code))]
    return {"http.request": requests, "http.status": statuses}


def _interim(code: int) -> bool:
    return 100 <= code < 200 and code != 101


def _dns(sharkd: Sharkd) -> dict[str, list[Sighting]]:
    fixed = [*_PLACE, "dns.flags:0", "dns.count.queries:0", "dns.qry.type:0"]
    rows = sharkd.frames("dns.flags.response == 0", fixed + _repeated("dns.qry.name", len(fixed)))
    queries = []
    for row in rows:
        ports, where = _place(row)
        flags, counts = _listed(row[5]), [int(count) for count in _listed(row[6])]
        types = [text.split(" (")[0] for text in _listed(row[7])]  # "A (Host Address)" -> "A"
        names = _occurrences(row, len(fixed), len(types), where)
        if len(flags) == 1:
            owners = flags * len(names)  # the questions of the frame's one message
        else:  # several messages (DNS over TCP): each has its count of questions
            owners = [flag for flag, count in zip(flags, counts, strict=True) for _ in range(count)]
            if len(owners) != len(names):
                raise ValueError(f"{where}: cannot tell which questions belong to which of its messages")
        queries += [
            Sighting((name, kind), ports, where)
            for flag, name, kind in zip(owners, names, types, strict=True)
            if not int(flag, 16) & QR_RESPONSE
        ]
    return {"dns.query": queries}


def _tls(sharkd: Sharkd) -> dict[str, list[Sighting]]:
    fixed = [*_PLACE, "tls.handshake.extensions_server_name_len:0"]
    names_column = _repeated("tls.handshake.extensions_server_name", len(fixed))
    rows = sharkd.frames("tcp && tls.handshake.type == 1", fixed + names_column)
    names = []
    for row in rows:
        ports, where = _place(row)
        values = _occurrences(row, len(fixed), len(_listed(row[5])), where)
        names += [Sighting((name,), ports, where) for name in values]
    return {"tls.sni": names}


_ENVELOPE = {"MAIL": ("FROM:", "smtp.mail_from"), "RCPT": ("TO:", "smtp.rcpt_to")}
"""SMTP command -> the prefix of its argument before the path, and the measure of the address."""


def _smtp(sharkd: Sharkd) -> dict[str, list[Sighting]]:
    fixed = [*_PLACE, "smtp.req.command:0"]
    rows = sharkd.frames("smtp.req.command", fixed + _repeated("smtp.command_line", len(fixed)))
    found: dict[str, list[Sighting]] = {"smtp.mail_from": [], "smtp.rcpt_to": []}
    for row in rows:
        ports, where = _place(row)
        for line in _occurrences(row, len(fixed), len(_listed(row[5])), where):
            command, _, argument = line.removesuffix("\\r\\n").partition(" ")  # the column escapes CRLF
            prefix, measure = _ENVELOPE.get(command.upper(), ("", ""))
            argument = argument.lstrip()
            if measure and argument[: len(prefix)].upper() == prefix:
                found[measure].append(Sighting((_mailbox(argument[len(prefix) :]),), ports, where))
    return found


def _mailbox(path: str) -> str:
    """The mailbox of a MAIL FROM / RCPT TO path (RFC 5321 4.1.2): between ``<`` and ``>`` (or up
    to the first space without them), a source route (``@relay:``) left out; ``""`` for ``<>``."""
    path = path.lstrip()
    if path.startswith("<"):
        end = path.find(">")
        mailbox = path[1:end] if end >= 0 else path[1:]
    else:
        mailbox = path.split(" ", 1)[0]
    if mailbox.startswith("@") and ":" in mailbox:
        mailbox = mailbox.split(":", 1)[1]
    return mailbox
