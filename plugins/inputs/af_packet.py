"""The ``af_packet`` input: live capture on Linux through a memory-mapped TPACKET_V3 ring.

An AF_PACKET socket shares a ring of ``block_count`` blocks of ``block_size`` bytes with the
kernel. The kernel writes packets one after another into the block it has open and hands the
block over (sets ``TP_STATUS_USER`` in its header) when the block is full or ``block_timeout``
after it was opened; :class:`Ring` reads handed-over blocks in order, copies each packet's bytes
out (the only per-packet copy) and gives the block back (``TP_STATUS_KERNEL``). The thread waits in
``poll()`` on the socket, never longer than :data:`~.live.STOP_CHECK`.

Set up in :meth:`AfPacketInput.open`, in this order, so that no packet reaches the ring unfiltered
and nothing is captured before the socket is bound: socket (``SOCK_RAW`` on Ethernet and loopback
devices, ``SOCK_DGRAM`` elsewhere and on ``any``), ``PACKET_VERSION``, ``PACKET_RX_RING``, mmap,
``SO_ATTACH_FILTER``, bind to the device (``ETH_P_ALL``), ``PACKET_ADD_MEMBERSHIP`` (promiscuous),
``PACKET_FANOUT``. Any failure raises :class:`~flowpipe.StartupError` with one line naming the
device.

Frames are what libpcap gives for the same device:

- Ethernet devices (link type 1): the kernel strips the outer 802.1Q/802.1ad tag into the packet
  header (``tp_vlan_tci``, ``TP_STATUS_VLAN_VALID``); it is put back after the MAC addresses, and
  the wire length grows by its 4 bytes, as libpcap does;
- ``any`` and devices without Ethernet headers (link type 113, Linux cooked): a 16-byte SLL
  header is built from the ``sockaddr_ll`` the kernel stores with each packet (a stripped VLAN
  tag goes after it, before the protocol), and the wire length counts it. On ``any``, a packet
  sent on the loopback device is captured once (the incoming copy), as libpcap does; the outgoing
  copy counts as ``dropped.loopback_duplicate``.

``snaplen`` is applied in the kernel, by the filter's return value (a one-instruction filter when
no ``bpf_filter`` is given), and once more after a VLAN tag or cooked header was added.
``bpf_filter`` is compiled by libpcap (pcapy's ``compile``) for the frame's link type; on a
``SOCK_DGRAM`` socket the kernel filters packets without their link header, so loads from the
cooked header are moved as libpcap moves them (packet type and protocol to the kernel's
ancillary data, the rest down by 16 bytes); a filter reading other cooked header fields fails at
start. The kernel runs the filter before VLAN re-insertion: it sees VLAN-tagged packets without
their tag (``vlan`` primitives do not match, ``ip`` does).

Counters (the names the pcap input's live capture uses where they mean the same), read from
``PACKET_STATISTICS`` every :data:`~.live.STATS_PERIOD` seconds and at close:
``kernel_received`` (packets that passed the filter, dropped ones included), ``dropped.kernel``
(dropped because the ring was full) and ``kernel_freeze_count`` (times every block of the ring was
full, so that the kernel stopped writing until one was given back).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from types import SimpleNamespace

import pcapy

from flowpipe import (
    Bool,
    ByteSize,
    Choice,
    Duration,
    Input,
    Int,
    Option,
    OptionError,
    PacketBatch,
    StageContext,
    StartupError,
    Str,
    hookimpl,
)

from .live import IDLE_CLOCK, STATS_PERIOD, STOP_CHECK
from .pcapfile import MAX_SNAPLEN

__all__ = ["AfPacketInput", "Ring", "cooked_program"]

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113

# <linux/if_packet.h>, <linux/if_ether.h>, <linux/filter.h>, <linux/sockios.h>
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
ETH_P_8021Q = 0x8100
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
IFNAMSIZ = 16
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ETHERNET_HARDWARE = frozenset((ARPHRD_ETHER, ARPHRD_LOOPBACK))
"""Hardware types whose frames start with an Ethernet header (libpcap's DLT_EN10MB)."""

FANOUT_MODES = {"hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "random": 4, "qm": 5}
"""``fanout_mode`` -> PACKET_FANOUT_* type."""

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

BLOCK_STATUS = 8
"""Offset of ``block_status`` in ``struct tpacket_block_desc`` (after version, offset_to_priv)."""
BLOCK_HEADER = struct.Struct("=II")
"""``num_pkts``, ``offset_to_first_pkt``: at offset 12 of a block."""
STATUS = struct.Struct("=I")
PACKET_HEADER = struct.Struct("=IIIIIIH")
"""``struct tpacket3_hdr``: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac."""
VLAN_FIELDS = 32
"""Offset of ``tp_vlan_tci`` (u32), then ``tp_vlan_tpid`` (u16), in ``struct tpacket3_hdr``."""
VLAN = struct.Struct("=IH")
SOCKADDR_LL = 48
"""Offset of the packet's ``struct sockaddr_ll``: TPACKET_ALIGN(sizeof(struct tpacket3_hdr))."""
ADDRESS = struct.Struct("=H2siHBB8s")
"""``struct sockaddr_ll``: family, protocol (network order), ifindex, hatype, pkttype, halen, addr."""
VLAN_TAG = struct.Struct(">HH")
SLL_HEADER = struct.Struct(">HHH8s")
"""The cooked header without its protocol: packet type, ARPHRD type, address length, address."""
SLL_LENGTH = 16
MAC_ADDRESSES = 12
VLAN_TAG_LENGTH = 4
RING_REQUEST = struct.Struct("=7I")
"""``struct tpacket_req3``: block size, block count, frame size, frame count, retire timeout (ms),
size of the private area, feature request word."""
STATISTICS = struct.Struct("=III")
"""``struct tpacket_stats_v3``: tp_packets, tp_drops, tp_freeze_q_cnt."""

TPACKET_ALIGNMENT = 16
MIN_FRAME_SIZE = 80
"""TPACKET3_HDRLEN (68) rounded up to TPACKET_ALIGNMENT: the kernel's smallest frame."""
BLOCK_OVERHEAD = 144
"""Bytes of a block besides one packet's data: the block header (48) and the packet's header
with its sockaddr_ll, aligned (96). A block must hold ``snaplen + BLOCK_OVERHEAD`` bytes."""
MAX_BLOCK_TIMEOUT = 65.535
"""The kernel keeps the retire timeout in an unsigned short of milliseconds."""

# Classic BPF (<linux/filter.h>): moving loads from a cooked header the kernel does not see.
BPF_CLASS = 0x07
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_MODE = 0xE0
PACKET_LOADS = frozenset((0x20, 0x40, 0xA0))  # BPF_ABS, BPF_IND, BPF_MSH
SKF_AD_OFF = 0xFFFFF000  # -0x1000 as the unsigned k of an instruction
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SLL_PACKET_TYPE = 0
SLL_PROTOCOL = 14
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF

Instruction = tuple[int, int, int, int]
"""One classic BPF instruction: code, jump if true, jump if false, k."""


class Ring:
    """The blocks of a TPACKET_V3 receive ring, read in the order the kernel fills them.

    ``memory`` is the mapped ring (or any writable buffer laid out the same way, for tests):
    ``block_count`` blocks of ``block_size`` bytes. ``cooked`` builds Linux cooked (SLL) frames
    from each packet's ``sockaddr_ll`` (a ``SOCK_DGRAM`` socket); otherwise the frames are the
    captured bytes with a stripped VLAN tag put back after the MAC addresses. Frames longer than
    ``snaplen`` after that are cut. ``loopback`` (cooked only) is the loopback device's index: its
    outgoing packets are skipped and counted in :attr:`skipped`.

    A block is given back to the kernel as soon as its last packet was read; one read only in
    part (``limit``) stays ours until a later :meth:`fill` reads the rest.
    """

    def __init__(
        self,
        memory: mmap.mmap,
        block_size: int,
        block_count: int,
        *,
        cooked: bool = False,
        snaplen: int = MAX_SNAPLEN,
        loopback: int | None = None,
    ) -> None:
        self.memory = memory
        self.block_size = block_size
        self.block_count = block_count
        self.snaplen = snaplen
        self.loopback = loopback
        self.skipped = 0
        """Outgoing packets of the loopback device skipped so far (cooked only)."""
        self.block = 0
        """The block read next (or being read)."""
        self._left = 0  # packets of the current block not read yet
        self._offset = 0  # where the next of them starts
        self._read = self._read_cooked if cooked else self._read_ethernet

    def fill(self, batch: PacketBatch, limit: int) -> None:
        """Append the next packets, up to ``limit``, of the blocks the kernel handed over.

        Stops at the first block the kernel still owns. ``batch.nbytes`` is left to the caller.
        """
        memory = self.memory
        block_size = self.block_size
        room = limit
        while room > 0:
            if not self._left:
                base = self.block * block_size
                if not STATUS.unpack_from(memory, base + BLOCK_STATUS)[0] & TP_STATUS_USER:
                    return
                count, first = BLOCK_HEADER.unpack_from(memory, base + BLOCK_STATUS + 4)
                if not count:
                    self._release()
                    continue
                self._left, self._offset = count, base + first
            take = min(self._left, room)
            self._offset = self._read(memory, self._offset, take, batch)
            self._left -= take
            room -= take
            if not self._left:
                self._release()

    def _release(self) -> None:
        STATUS.pack_into(self.memory, self.block * self.block_size + BLOCK_STATUS, TP_STATUS_KERNEL)
        self.block = (self.block + 1) % self.block_count

    def _read_ethernet(self, memory: mmap.mmap, offset: int, count: int, batch: PacketBatch) -> int:
        """Read ``count`` packets from ``offset`` into ``batch``; return where the next starts."""
        header = PACKET_HEADER.unpack_from
        add_timestamp = batch.timestamps.append
        add_frame = batch.frames.append
        add_wire_length = batch.wire_lengths.append
        for _ in range(count):
            next_offset, seconds, nanoseconds, captured, length, status, mac = header(memory, offset)
            start = offset + mac
            if status & TP_STATUS_VLAN_VALID and captured >= MAC_ADDRESSES:
                tag = _vlan_tag(memory, offset, status)
                frame = (
                    memory[start : start + MAC_ADDRESSES]
                    + tag
                    + memory[start + MAC_ADDRESSES : start + captured]
                )
                if len(frame) > self.snaplen:
                    frame = frame[: self.snaplen]
                length += VLAN_TAG_LENGTH
            else:
                frame = memory[start : start + captured]
            add_timestamp(seconds + nanoseconds * 1e-9)
            add_frame(frame)
            add_wire_length(length)
            offset += next_offset
        return offset

    def _read_cooked(self, memory: mmap.mmap, offset: int, count: int, batch: PacketBatch) -> int:
        """As :meth:`_read_ethernet`, for packets without a link header: a cooked header first."""
        header = PACKET_HEADER.unpack_from
        address = ADDRESS.unpack_from
        sll_header = SLL_HEADER.pack
        add_timestamp = batch.timestamps.append
        add_frame = batch.frames.append
        add_wire_length = batch.wire_lengths.append
        loopback = self.loopback
        snaplen = self.snaplen
        for _ in range(count):
            next_offset, seconds, nanoseconds, captured, length, status, mac = header(memory, offset)
            _, protocol, index, hardware, packet_type, address_length, hardware_address = address(
                memory, offset + SOCKADDR_LL
            )
            if packet_type == PACKET_OUTGOING and index == loopback:
                self.skipped += 1
                offset += next_offset
                continue
            start = offset + mac
            head = sll_header(packet_type, hardware, address_length, hardware_address)
            if status & TP_STATUS_VLAN_VALID:
                head += _vlan_tag(memory, offset, status)
                length += VLAN_TAG_LENGTH
            frame = head + protocol + memory[start : start + captured]
            if len(frame) > snaplen:
                frame = frame[:snaplen]
            add_timestamp(seconds + nanoseconds * 1e-9)
            add_frame(frame)
            add_wire_length(length + SLL_LENGTH)
            offset += next_offset
        return offset


def _vlan_tag(memory: mmap.mmap, offset: int, status: int) -> bytes:
    """The 4-byte tag the kernel stripped from the packet whose header is at ``offset``."""
    tci, tpid = VLAN.unpack_from(memory, offset + VLAN_FIELDS)
    if not tpid and not status & TP_STATUS_VLAN_TPID_VALID:  # a kernel that does not report it
        tpid = ETH_P_8021Q
    return VLAN_TAG.pack(tpid, tci & 0xFFFF)


def cooked_program(program: list[Instruction]) -> list[Instruction] | None:
    """``program``, compiled for Linux cooked frames, as the kernel must run it on a ``SOCK_DGRAM``
    socket (packets without their link header); None if it reads a cooked header field other than
    the packet type and the protocol (libpcap then filters in user space; we refuse it)."""
    moved = []
    for code, true_jump, false_jump, k in program:
        if code & BPF_CLASS in (BPF_LD, BPF_LDX) and code & BPF_MODE in PACKET_LOADS and k < SKF_AD_OFF:
            if k >= SLL_LENGTH:
                k -= SLL_LENGTH
            elif k == SLL_PACKET_TYPE:
                k = SKF_AD_OFF + SKF_AD_PKTTYPE
            elif k == SLL_PROTOCOL:
                k = SKF_AD_OFF + SKF_AD_PROTOCOL
            else:
                return None
        moved.append((code, true_jump, false_jump, k))
    return moved


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


class _SockaddrLl(ctypes.Structure):
    _fields_ = (
        ("sll_family", ctypes.c_ushort),
        ("sll_protocol", ctypes.c_uint16),
        ("sll_ifindex", ctypes.c_int),
        ("sll_hatype", ctypes.c_ushort),
        ("sll_pkttype", ctypes.c_ubyte),
        ("sll_halen", ctypes.c_ubyte),
        ("sll_addr", ctypes.c_ubyte * 8),
    )


_LIBC = ctypes.CDLL(None, use_errno=True)


class AfPacketInput(Input):
    """Capture live from a network device on Linux through an AF_PACKET TPACKET_V3 ring."""

    options = (
        Option(
            "device",
            Str(nonempty=True),
            required=True,
            description="network device to capture on, or any (every device, Linux cooked frames)",
        ),
        Option("snaplen", Int(1, MAX_SNAPLEN), MAX_SNAPLEN, "bytes kept of each packet"),
        Option("promiscuous", Bool(), True, "put the device in promiscuous mode while capturing (not any)"),
        Option("bpf_filter", Str(), None, "BPF filter expression (tcpdump syntax), run in the kernel"),
        Option(
            "block_size",
            ByteSize(),
            "1MiB",
            "bytes of one ring block: a power of two, at least the page size, holding snaplen bytes",
        ),
        Option("block_count", Int(1), 16, "blocks in the ring (its memory: block_size x block_count)"),
        Option(
            "frame_size",
            ByteSize(),
            2048,
            "the ring's nominal frame size (a multiple of 16); TPACKET_V3 packs packets tightly",
        ),
        Option(
            "block_timeout",
            Duration(),
            "100ms",
            "longest the kernel keeps a block open before handing it over (1ms to 65s)",
        ),
        Option("fanout_group", Int(0, 0xFFFF), None, "share the device's packets among the group's sockets"),
        Option(
            "fanout_mode",
            Choice(*FANOUT_MODES),
            "hash",
            "with fanout_group: hash (by flow, both directions alike), lb, cpu, rollover, random, qm",
        ),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        """Ring geometry the kernel accepts; fanout_mode only with a group."""
        problems = []
        block_size = config.block_size
        if block_size < mmap.PAGESIZE or block_size & (block_size - 1):
            problems.append(
                OptionError(
                    f"must be a power of two and at least the page size ({mmap.PAGESIZE}), got {block_size}",
                    ("block_size",),
                )
            )
        elif block_size < config.snaplen + BLOCK_OVERHEAD:
            least = 1 << (config.snaplen + BLOCK_OVERHEAD - 1).bit_length()
            problems.append(
                OptionError(
                    f"must hold a packet of snaplen ({config.snaplen}) bytes and its headers: "
                    f"at least {least}, or lower snaplen",
                    ("block_size",),
                )
            )
        frame_size = config.frame_size
        if frame_size < MIN_FRAME_SIZE or frame_size % TPACKET_ALIGNMENT or frame_size > block_size:
            problems.append(
                OptionError(
                    f"must be a multiple of {TPACKET_ALIGNMENT} from {MIN_FRAME_SIZE} to block_size, "
                    f"got {frame_size}",
                    ("frame_size",),
                )
            )
        if not 0.001 <= config.block_timeout <= MAX_BLOCK_TIMEOUT:
            problems.append(
                OptionError(f"must be from 1ms to 65.535s, got {config.block_timeout:g}s", ("block_timeout",))
            )
        if config.fanout_group is None and config.fanout_mode != "hash":
            problems.append(OptionError("applies with fanout_group only", ("fanout_mode",)))
        return problems

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self.device: str = config.device
        self.where = f"af_packet input {context.id!r}: device {self.device!r}"
        self.link_type = LINKTYPE_ETHERNET
        self.ring: Ring | None = None
        self._lock = threading.Lock()  # close() may come from another thread than read()
        self._socket: socket.socket | None = None
        self._memory: mmap.mmap | None = None
        self._membership: bytes | None = None
        self._skipped = 0  # loopback duplicates counted so far

    def open(self) -> None:
        config = self.config
        if not hasattr(socket, "AF_PACKET"):
            raise self._cannot("AF_PACKET sockets exist on Linux only")
        any_device = self.device == "any"
        index, hardware = (0, None) if any_device else self._device()
        cooked = hardware not in ETHERNET_HARDWARE
        self.link_type = LINKTYPE_LINUX_SLL if cooked else LINKTYPE_ETHERNET
        program = self._program()
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM if cooked else socket.SOCK_RAW, 0)
        except PermissionError:
            raise self._cannot(
                "permission denied (capturing needs root or the CAP_NET_RAW capability)"
            ) from None
        except OSError as error:
            raise self._cannot(f"no AF_PACKET socket: {error.strerror}") from None
        self._socket = sock
        try:
            self._set_up(sock, index, program, loopback=hardware == ARPHRD_LOOPBACK)
        except BaseException:
            self.close()
            raise
        if config.promiscuous and any_device:
            self.context.log.warning(
                "%s: promiscuous mode is not supported on any; capturing without it", self.where
            )
        self.ring = Ring(
            self._memory,
            config.block_size,
            config.block_count,
            cooked=cooked,
            snaplen=config.snaplen,
            loopback=_loopback_index() if any_device else None,
        )
        counters = self.context.counters  # shown from the start, zero until the kernel counts
        counters.add("kernel_received", 0)
        counters.drop("kernel", 0)
        counters.add("kernel_freeze_count", 0)
        if any_device:
            counters.drop("loopback_duplicate", 0)
        fanout = (
            ""
            if config.fanout_group is None
            else f", fanout group {config.fanout_group} ({config.fanout_mode})"
        )
        self.context.log.info(
            "capturing on device %r (link type %d, TPACKET_V3 ring of %d blocks of %d bytes%s)",
            self.device,
            self.link_type,
            config.block_count,
            config.block_size,
            fanout,
        )

    def _cannot(self, reason: str) -> StartupError:
        return StartupError(f"{self.where}: cannot capture: {reason}")

    def _device(self) -> tuple[int, int]:
        """The device's interface index and hardware type (ARPHRD_*), in this network namespace."""
        found = _interface(self.device)
        if found is None:
            raise self._cannot("no such device")
        return found

    def _program(self) -> list[Instruction] | None:
        """The filter to attach: bpf_filter, or only the snaplen cut; None when neither is needed."""
        config = self.config
        if not config.bpf_filter and config.snaplen >= MAX_SNAPLEN:
            return None
        expression = config.bpf_filter or ""
        try:
            compiled = pcapy.compile(self.link_type, config.snaplen, expression, 1, PCAP_NETMASK_UNKNOWN)
        except pcapy.PcapError as error:
            raise StartupError(f"{self.where}: bpf_filter {expression!r}: {error}") from None
        program = compiled.get_bpf()
        if self.link_type != LINKTYPE_LINUX_SLL:
            return program
        moved = cooked_program(program)
        if moved is None:
            raise StartupError(
                f"{self.where}: bpf_filter {expression!r}: reads cooked header fields the kernel "
                "cannot filter on (only the packet type and the protocol)"
            )
        return moved

    def _set_up(
        self, sock: socket.socket, index: int, program: list[Instruction] | None, loopback: bool
    ) -> None:
        """Ring, filter, bind, promiscuous mode, fanout: in this order (see the module docstring)."""
        config = self.config
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        except OSError as error:
            raise self._cannot(f"no TPACKET_V3: {error.strerror}") from None
        frames = config.block_size // config.frame_size * config.block_count
        timeout = round(config.block_timeout * 1000)
        request = RING_REQUEST.pack(
            config.block_size, config.block_count, config.frame_size, frames, timeout, 0, 0
        )
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
            self._memory = mmap.mmap(
                sock.fileno(), config.block_size * config.block_count, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as error:
            raise self._cannot(
                f"no ring of {config.block_count} blocks of {config.block_size} bytes: {error.strerror}"
            ) from None
        if program is not None:
            fprog = _SockFprog(len(program), (_SockFilter * len(program))(*program))
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
            except OSError as error:
                raise StartupError(
                    f"{self.where}: bpf_filter {config.bpf_filter or ''!r}: "
                    f"the kernel refused it: {error.strerror}"
                ) from None
        if loopback:  # each packet once: the incoming copy
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        address = _SockaddrLl(
            sll_family=socket.AF_PACKET, sll_protocol=socket.htons(ETH_P_ALL), sll_ifindex=index
        )
        if _LIBC.bind(sock.fileno(), ctypes.byref(address), ctypes.sizeof(address)) != 0:
            raise self._cannot(f"bind: {os.strerror(ctypes.get_errno())}")
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ENETDOWN:
            raise self._cannot("the device is not up")
        if config.promiscuous and index:
            membership = struct.pack("=iHH8s", index, PACKET_MR_PROMISC, 0, b"")
            try:
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
            except OSError as error:
                raise self._cannot(f"promiscuous mode: {error.strerror}") from None
            self._membership = membership
        if config.fanout_group is not None:
            group, mode = config.fanout_group, config.fanout_mode
            try:
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group | FANOUT_MODES[mode] << 16)
            except OSError as error:
                hint = (
                    " (the group exists with another fanout_mode or on another device)"
                    if error.errno == errno.EINVAL
                    else ""
                )
                raise self._cannot(f"fanout_group {group} ({mode}): {error.strerror}{hint}") from None

    def read(self) -> Iterator[PacketBatch]:
        """Yield the packets of the blocks handed over, in batches of at most ``batch_size``.

        A batch leaves as soon as the blocks handed over are read (the kernel's ``block_timeout``
        is what holds packets back); while none comes, an empty batch with ``clock`` leaves every
        :data:`~.live.IDLE_CLOCK` seconds. When the device goes down or away, the blocks already
        written are read, the failure is reported with ``context.fail`` and the reading ends.
        """
        with self._lock:
            if self._socket is None or self.ring is None:
                return
            ring = self.ring
            poller = select.poll()
            poller.register(self._socket.fileno(), select.POLLIN)
        batch_size = self.context.batch_size
        now = time.monotonic()
        next_stats = now + STATS_PERIOD
        last_out = now  # when the last batch, of packets or of clock, left
        failure = None
        while not self.stopping.is_set():
            batch = PacketBatch(self.link_type, self.device)
            with self._lock:
                if self._socket is None:
                    return
                ring.fill(batch, batch_size)
                if ring.skipped != self._skipped:
                    self.context.counters.drop("loopback_duplicate", ring.skipped - self._skipped)
                    self._skipped = ring.skipped
                now = time.monotonic()
                if now >= next_stats:
                    self._count_stats(self._socket)
                    next_stats = now + STATS_PERIOD
            if batch.frames:
                batch.nbytes = sum(map(len, batch.frames))
                yield batch
                last_out = time.monotonic()
                continue  # more blocks may be waiting
            if failure is not None:
                self.context.fail(f"{self.where}: {failure}")
                return
            if now >= last_out + IDLE_CLOCK:
                yield PacketBatch(self.link_type, self.device, clock=time.time())
                last_out = now = time.monotonic()
            wait = min(last_out + IDLE_CLOCK, next_stats, now + STOP_CHECK) - now
            for _, events in poller.poll(max(0, int(wait * 1000) + 1)):
                if events & (select.POLLERR | select.POLLHUP):
                    failure = self._error()
            if failure is not None:  # the kernel hands its open block over after block_timeout
                self.stopping.wait(self.config.block_timeout + 0.05)

    def _error(self) -> str | None:
        """What went wrong with the socket (reading it clears it), or None."""
        with self._lock:
            if self._socket is None:
                return None
            number = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if number == errno.ENETDOWN:  # the socket's network namespace, whatever the thread's
                return (
                    "the device went down"
                    if _interface(self.device, self._socket)
                    else "the device went away"
                )
        return os.strerror(number) if number else None

    def _count_stats(self, sock: socket.socket) -> None:
        """Add what the kernel counted since the last reading (reading resets its counters)."""
        try:
            raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, STATISTICS.size)
        except OSError:
            return
        received, dropped, freezes = STATISTICS.unpack(raw)
        counters = self.context.counters
        counters.add("kernel_received", received)
        counters.drop("kernel", dropped)
        counters.add("kernel_freeze_count", freezes)

    def close(self) -> None:
        """Read the kernel's counters a last time, leave promiscuous mode, unmap the ring, close
        (once; safe from any thread)."""
        with self._lock:
            sock, self._socket = self._socket, None
            if sock is None:
                return
            if self.ring is not None:
                self._count_stats(sock)
            if self._membership is not None:
                try:
                    sock.setsockopt(SOL_PACKET, PACKET_DROP_MEMBERSHIP, self._membership)
                except OSError as error:
                    self.context.log.warning("%s: leaving promiscuous mode: %s", self.where, error.strerror)
                self._membership = None
            if self._memory is not None:
                self._memory.close()
                self._memory = None
            sock.close()


def _interface(name: str, probe: socket.socket | None = None) -> tuple[int, int] | None:
    """The index and hardware type (ARPHRD_*) of device ``name``, or None if there is no such device.

    Asked through ``probe``, in its network namespace, or through a new socket in the thread's.
    """
    encoded = name.encode()
    if len(encoded) >= IFNAMSIZ or b"\0" in encoded:
        return None
    request = struct.pack("=16s16x", encoded)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if probe is None else nullcontext(probe) as asked:
        try:
            index = struct.unpack_from("=i", fcntl.ioctl(asked, SIOCGIFINDEX, request), IFNAMSIZ)[0]
            hardware = struct.unpack_from("=H", fcntl.ioctl(asked, SIOCGIFHWADDR, request), IFNAMSIZ)[0]
        except OSError:
            return None
    return index, hardware


def _loopback_index() -> int | None:
    """The loopback device's index, whose outgoing copies ``any`` skips (None: no ``lo`` here)."""
    found = _interface("lo")
    return found[0] if found else None


@hookimpl
def flowpipe_add_inputs() -> dict[str, type[Input]]:
    return {"af_packet": AfPacketInput}
