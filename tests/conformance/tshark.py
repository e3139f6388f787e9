"""Ground truth from tshark: conversation statistics and followed TCP streams of a capture."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

Endpoint = tuple[str, int]

_CONVERSATION = re.compile(
    r"^(?P<a>\S+):(?P<a_port>\d+)\s+<->\s+(?P<b>\S+):(?P<b_port>\d+)\s+"
    r"(?P<to_a_frames>\d+)\s+(?P<to_a_bytes>[\d,]+)\s+(?P<to_a_unit>\S+)\s+"
    r"(?P<to_b_frames>\d+)\s+(?P<to_b_bytes>[\d,]+)\s+(?P<to_b_unit>\S+)"
)
_UNITS = {"bytes": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}
_NODE = re.compile(r"^Node ([01]): (.*):(\d+)$")
_FOLLOW_SEPARATOR = "=" * 67


def available() -> bool:
    return shutil.which("tshark") is not None


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
