"""Reading a TPACKET_V3 ring: blocks and packet headers built with struct, laid out as the kernel does.

A block starts with ``struct tpacket_block_desc`` (48 bytes: version, offset_to_priv, block_status,
num_pkts, offset_to_first_pkt, blk_len, seq_num, first and last timestamps); each packet starts with
``struct tpacket3_hdr`` (48 bytes), followed by its ``struct sockaddr_ll`` and, at ``tp_mac``, its
bytes; ``tp_next_offset`` leads to the next packet, 16-byte aligned (<linux/if_packet.h>).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

import pytest
from captures import udp_frame

from flowpipe import PacketBatch
from flowpipe.plugins.inputs.af_packet import Ring, cooked_program

BLOCK_SIZE = 4096
USER = 1
KERNEL = 0
VLAN_VALID = 1 << 4
VLAN_TPID_VALID = 1 << 6
HOST, OUTGOING = 0, 4
ARPHRD_ETHER = 1
ETH_P_IP = b"\x08\x00"
MAC = 82  # where the kernel puts an Ethernet frame: TPACKET_ALIGN(68 + 16) - 14
NETWORK = 96  # and a packet without link header (SOCK_DGRAM)
FRAME = udp_frame("192.0.2.1", "192.0.2.2", 40000, 53, b"question")


@dataclass
class Captured:
    """One packet as the kernel writes it into a block."""

    data: bytes
    seconds: int = 1_700_000_000
    nanoseconds: int = 0
    wire_length: int | None = None  # tp_len: len(data) unless cut
    status: int = 0  # tp_status flags besides TP_STATUS_USER
    vlan_tci: int = 0
    vlan_tpid: int = 0
    mac: int = MAC
    pkttype: int = HOST
    ifindex: int = 2
    protocol: bytes = ETH_P_IP

    def bytes(self) -> bytes:
        header = struct.pack(
            "=IIIIIIHHIIHH8x",
            0,  # tp_next_offset, set by block()
            self.seconds,
            self.nanoseconds,
            len(self.data),
            len(self.data) if self.wire_length is None else self.wire_length,
            USER | self.status,
            self.mac,
            self.mac,  # tp_net: not read
            0,  # tp_rxhash
            self.vlan_tci,
            self.vlan_tpid,
            0,
        )
        address = struct.pack(
            "=H2siHBB8s", 17, self.protocol, self.ifindex, ARPHRD_ETHER, self.pkttype, 6, b"\x02" * 6
        )
        packet = header + address
        packet += bytes(self.mac - len(packet)) + self.data
        return packet + bytes(-len(packet) % 16)


def block(*packets: Captured, status: int = USER) -> bytes:
    """A block of ``packets`` handed over (``status``) by the kernel, BLOCK_SIZE bytes long."""
    first = 48
    body = bytearray()
    for index, captured in enumerate(packets):
        packet = bytearray(captured.bytes())
        if index + 1 < len(packets):
            struct.pack_into("=I", packet, 0, len(packet))
        body += packet
    header = struct.pack("=IIIIIIQIIII", 1, 0, status, len(packets), first, first + len(body), 7, 0, 0, 0, 0)
    data = header + body
    assert len(data) <= BLOCK_SIZE
    return data + bytes(BLOCK_SIZE - len(data))


def ring_of(*blocks: bytes) -> mmap.mmap:
    memory = mmap.mmap(-1, BLOCK_SIZE * len(blocks))
    memory[:] = b"".join(blocks)
    return memory


def status_of(memory: mmap.mmap, index: int) -> int:
    return struct.unpack_from("=I", memory, index * BLOCK_SIZE + 8)[0]


def read(ring: Ring, limit: int = 256) -> PacketBatch:
    batch = PacketBatch(1)
    ring.fill(batch, limit)
    return batch


def frames(count: int) -> list[bytes]:
    return [udp_frame("192.0.2.1", "192.0.2.2", 40000 + index, 53, bytes(index)) for index in range(count)]


def test_a_handed_over_block_gives_its_frames_times_and_wire_lengths_and_goes_back_to_the_kernel() -> None:
    sent = frames(3)
    memory = ring_of(
        block(
            Captured(sent[0], seconds=1_700_000_000, nanoseconds=5),
            Captured(sent[1], seconds=1_700_000_001, nanoseconds=250_000_000),
            Captured(sent[2][:20], seconds=1_700_000_002, nanoseconds=999_999_999, wire_length=len(sent[2])),
        ),
        block(status=KERNEL),
    )
    ring = Ring(memory, BLOCK_SIZE, 2)
    batch = read(ring)

    assert batch.frames == [sent[0], sent[1], sent[2][:20]]
    assert all(type(frame) is bytes for frame in batch.frames)
    assert batch.wire_lengths == [len(sent[0]), len(sent[1]), len(sent[2])]
    assert batch.timestamps == pytest.approx(
        [1_700_000_000.000000005, 1_700_000_001.25, 1_700_000_002.999999999], abs=1e-6
    )
    assert batch.timestamps[1] == 1_700_000_001.25
    assert (status_of(memory, 0), ring.block) == (KERNEL, 1)


def test_reading_stops_at_a_block_the_kernel_still_owns_and_goes_on_when_it_is_handed_over() -> None:
    sent = frames(3)
    second = block(Captured(sent[1]), Captured(sent[2]))
    memory = ring_of(block(Captured(sent[0])), block(status=KERNEL), block(status=KERNEL))
    ring = Ring(memory, BLOCK_SIZE, 3)

    assert read(ring).frames == [sent[0]]
    assert read(ring).frames == []
    memory[BLOCK_SIZE : 2 * BLOCK_SIZE] = second
    assert read(ring).frames == [sent[1], sent[2]]
    assert [status_of(memory, index) for index in range(3)] == [KERNEL, KERNEL, KERNEL]
    assert ring.block == 2


def test_a_block_read_in_parts_stays_ours_until_its_last_packet() -> None:
    sent = frames(5)
    memory = ring_of(block(*map(Captured, sent[:3])), block(*map(Captured, sent[3:])))
    ring = Ring(memory, BLOCK_SIZE, 2)

    assert read(ring, limit=2).frames == sent[:2]
    assert (status_of(memory, 0), ring.block) == (USER, 0)
    assert read(ring, limit=2).frames == sent[2:4]  # the rest of the first block, the start of the second
    assert (status_of(memory, 0), status_of(memory, 1), ring.block) == (KERNEL, USER, 1)
    assert read(ring, limit=2).frames == sent[4:]
    assert (status_of(memory, 1), ring.block) == (KERNEL, 0)


def test_after_the_last_block_comes_the_first_again() -> None:
    sent = frames(3)
    memory = ring_of(block(Captured(sent[0])), block(Captured(sent[1])))
    ring = Ring(memory, BLOCK_SIZE, 2)
    assert read(ring).frames == sent[:2]
    memory[:BLOCK_SIZE] = block(Captured(sent[2]))
    assert read(ring).frames == [sent[2]]
    assert ring.block == 1


def test_an_empty_block_handed_over_is_given_back() -> None:
    sent = frames(1)
    memory = ring_of(block(), block(Captured(sent[0])))
    ring = Ring(memory, BLOCK_SIZE, 2)
    assert read(ring).frames == sent
    assert (status_of(memory, 0), status_of(memory, 1)) == (KERNEL, KERNEL)


@pytest.mark.parametrize(
    ("status", "tpid", "tag"),
    [
        (VLAN_VALID | VLAN_TPID_VALID, 0x8100, b"\x81\x00\x00\x2a"),
        (VLAN_VALID | VLAN_TPID_VALID, 0x88A8, b"\x88\xa8\x00\x2a"),  # 802.1ad outer tag
        (VLAN_VALID, 0, b"\x81\x00\x00\x2a"),  # kernels that do not report the TPID: 802.1Q
    ],
    ids=["8021q", "8021ad", "no-tpid"],
)
def test_a_stripped_vlan_tag_goes_back_after_the_mac_addresses(status: int, tpid: int, tag: bytes) -> None:
    memory = ring_of(block(Captured(FRAME, status=status, vlan_tci=42, vlan_tpid=tpid)))
    batch = read(Ring(memory, BLOCK_SIZE, 1))
    assert batch.frames == [FRAME[:12] + tag + FRAME[12:]]
    assert batch.wire_lengths == [len(FRAME) + 4]


def test_the_vlan_tag_keeps_its_priority_bits_and_the_frame_keeps_snaplen() -> None:
    tci = 5 << 13 | 1 << 12 | 4094  # priority 5, drop eligible, VLAN 4094
    memory = ring_of(block(Captured(FRAME[:60], status=VLAN_VALID, vlan_tci=tci, wire_length=len(FRAME))))
    batch = read(Ring(memory, BLOCK_SIZE, 1, snaplen=60))
    assert batch.frames == [(FRAME[:12] + b"\x81\x00\xbf\xfe" + FRAME[12:])[:60]]
    assert batch.wire_lengths == [len(FRAME) + 4]


def test_without_the_vlan_flag_the_tci_field_is_ignored() -> None:
    memory = ring_of(block(Captured(FRAME, vlan_tci=42, vlan_tpid=0x8100)))
    assert read(Ring(memory, BLOCK_SIZE, 1)).frames == [FRAME]


def test_cooked_frames_get_a_linux_sll_header_from_the_packets_address() -> None:
    packet = FRAME[14:]  # SOCK_DGRAM: no link header
    memory = ring_of(
        block(
            Captured(packet, mac=NETWORK, pkttype=HOST, ifindex=2, nanoseconds=7),
            Captured(packet[:30], mac=NETWORK, pkttype=OUTGOING, ifindex=3, wire_length=len(packet)),
        )
    )
    batch = read(Ring(memory, BLOCK_SIZE, 1, cooked=True))
    header = b"\x00\x01" + b"\x00\x06" + b"\x02" * 6 + b"\x00\x00"  # ARPHRD_ETHER, 6-byte address
    assert batch.frames == [
        b"\x00\x00" + header + b"\x08\x00" + packet,
        b"\x00\x04" + header + b"\x08\x00" + packet[:30],
    ]
    assert batch.wire_lengths == [16 + len(packet), 16 + len(packet)]


def test_a_cooked_frame_carries_its_vlan_tag_between_header_and_protocol() -> None:
    packet = FRAME[14:]
    memory = ring_of(
        block(
            Captured(packet, mac=NETWORK, status=VLAN_VALID | VLAN_TPID_VALID, vlan_tci=42, vlan_tpid=0x8100)
        )
    )
    batch = read(Ring(memory, BLOCK_SIZE, 1, cooked=True, snaplen=40))
    sll = b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 6 + b"\x00\x00"
    assert batch.frames == [(sll + b"\x81\x00\x00\x2a" + b"\x08\x00" + packet)[:40]]
    assert batch.wire_lengths == [20 + len(packet)]


def test_cooked_reading_skips_the_outgoing_copy_on_the_loopback_device() -> None:
    packet = FRAME[14:]
    memory = ring_of(
        block(
            Captured(packet, mac=NETWORK, pkttype=OUTGOING, ifindex=1, seconds=1),
            Captured(packet, mac=NETWORK, pkttype=HOST, ifindex=1, seconds=2),
            Captured(packet, mac=NETWORK, pkttype=OUTGOING, ifindex=2, seconds=3),
        )
    )
    ring = Ring(memory, BLOCK_SIZE, 1, cooked=True, loopback=1)
    batch = read(ring)
    assert [frame[:2] for frame in batch.frames] == [b"\x00\x00", b"\x00\x04"]
    assert batch.timestamps == [2.0, 3.0]
    assert (ring.skipped, status_of(memory, 0)) == (1, KERNEL)


# -- bpf_filter on a SOCK_DGRAM socket --------------------------------------------------------------

SKF_AD_OFF = 0xFFFFF000
LDH_ABS, LDB_ABS, LDH_IND, LDX_MSH, JEQ, RET = 0x28, 0x30, 0x48, 0xB1, 0x15, 0x06


def test_loads_from_the_cooked_header_move_to_the_packet_or_to_ancillary_data() -> None:
    program = [
        (LDH_ABS, 0, 0, 14),  # the protocol
        (JEQ, 0, 6, 0x0800),
        (LDB_ABS, 0, 0, 16 + 9),  # IPv4 protocol
        (LDX_MSH, 0, 0, 16),  # IPv4 header length
        (LDH_IND, 0, 0, 16 + 2),  # destination port
        (LDH_ABS, 0, 0, 0),  # the packet type (inbound, outbound)
        (LDH_ABS, 0, 0, SKF_AD_OFF + 0x2C),  # already ancillary: stays
        (RET, 0, 0, 262144),
        (RET, 0, 0, 0),
    ]
    assert cooked_program(program) == [
        (LDH_ABS, 0, 0, SKF_AD_OFF + 0),
        (JEQ, 0, 6, 0x0800),
        (LDB_ABS, 0, 0, 9),
        (LDX_MSH, 0, 0, 0),
        (LDH_IND, 0, 0, 2),
        (LDH_ABS, 0, 0, SKF_AD_OFF + 4),
        (LDH_ABS, 0, 0, SKF_AD_OFF + 0x2C),
        (RET, 0, 0, 262144),
        (RET, 0, 0, 0),
    ]


def test_a_filter_on_other_cooked_header_fields_cannot_run_in_the_kernel() -> None:
    assert cooked_program([(LDH_ABS, 0, 0, 2), (RET, 0, 0, 0)]) is None  # the ARPHRD type
