"""FlowSplitter: how the router of ``pipeline.workers`` shares packets out, fragments included."""

from __future__ import annotations

import pytest
from captures import ethernet, ip_fragment, tcp_frame, udp, udp_frame

from flowpipe.packet import PacketBatch
from flowpipe.plugins.decoders.flowhash import FlowSplitter, flow_hash

WAYS = 4


def batch_of(frames: list[bytes], start: float = 100.0) -> PacketBatch:
    batch = PacketBatch(1, "test")
    for index, frame in enumerate(frames):
        batch.append(start + index / 1000, frame, len(frame) + 4)
    return batch


def where(parts: list[PacketBatch]) -> dict[bytes, int]:
    """Each frame -> the index of the part that got it."""
    return {frame: index for index, part in enumerate(parts) for frame in part.frames}


def flows_on_every_way(count: int) -> list[tuple[str, int]]:
    """Client (address, port) pairs of UDP flows to 192.0.2.53:53, at least one per way."""
    seen: dict[int, tuple[str, int]] = {}
    port = 40000
    while len(seen) < count:
        way = flow_hash(udp_frame("10.0.0.1", "192.0.2.53", port, 53)) % count
        seen.setdefault(way, ("10.0.0.1", port))
        port += 1
    return list(seen.values())


def test_both_directions_of_a_flow_go_to_the_way_of_its_hash_in_order_with_their_columns() -> None:
    frames = []
    for address, port in flows_on_every_way(WAYS):
        frames.append(udp_frame(address, "192.0.2.53", port, 53, b"query"))
        frames.append(udp_frame("192.0.2.53", address, 53, port, b"answer"))
    frames.append(tcp_frame("10.0.0.9", "192.0.2.80", 5555, 80, b"GET"))
    batch = batch_of(frames)
    parts = FlowSplitter(WAYS).split(batch)

    tcp_way = flow_hash(frames[-1]) % WAYS
    assert [len(part) for part in parts] == [3 if way == tcp_way else 2 for way in range(WAYS)]
    for frame, way in where(parts).items():
        assert way == flow_hash(frame) % WAYS
    for part in parts:
        assert part.link_type == 1 and part.source == "test"
        assert part.timestamps == sorted(part.timestamps)
        assert part.wire_lengths == [len(frame) + 4 for frame in part.frames]
        assert part.nbytes == sum(map(len, part.frames))
        originals = {
            frame: timestamp for timestamp, frame in zip(batch.timestamps, batch.frames, strict=True)
        }
        assert part.timestamps == [originals[frame] for frame in part.frames]


def fragments(client: tuple[str, int], identification: int) -> list[bytes]:
    """A UDP datagram of 64 bytes of data to 192.0.2.53:53 in three fragments, first to last."""
    datagram = bytes(udp(client[1], 53, bytes(range(64))))
    return [
        ethernet(
            ip_fragment(
                client[0], "192.0.2.53", 17, datagram[start : start + 24], start, start < 48, identification
            )
        )
        for start in (0, 24, 48)
    ]


@pytest.mark.parametrize("order", ["in order", "last first", "first last"])
def test_the_fragments_of_a_datagram_go_where_the_unfragmented_packets_of_its_flow_go(order: str) -> None:
    splitter = FlowSplitter(WAYS)
    for identification, client in enumerate(flows_on_every_way(WAYS), start=1):
        way = flow_hash(udp_frame(client[0], "192.0.2.53", client[1], 53)) % WAYS
        pieces = fragments(client, identification)
        if order == "last first":
            pieces.reverse()
        elif order == "first last":
            pieces = [*pieces[1:], pieces[0]]
        parts = splitter.split(batch_of([udp_frame("192.0.2.53", client[0], 53, client[1], b"x"), *pieces]))
        assert {frame: way for frame in pieces} == {frame: where(parts)[frame] for frame in pieces}


def test_a_later_fragment_follows_its_first_fragment_across_batches() -> None:
    splitter = FlowSplitter(WAYS)
    client = next(
        c for c in flows_on_every_way(WAYS) if flow_hash(udp_frame(c[0], "192.0.2.53", c[1], 53)) % WAYS
    )
    first, *later = fragments(client, 7)
    way = flow_hash(udp_frame(client[0], "192.0.2.53", client[1], 53)) % WAYS
    assert where(splitter.split(batch_of([first])))[first] == way
    assert {where(splitter.split(batch_of([frame])))[frame] for frame in later} == {way}


def test_a_fragment_whose_first_fragment_does_not_come_goes_by_its_addresses_after_the_hold() -> None:
    _first, middle, last = fragments(("10.0.0.1", 40000), 9)
    splitter = FlowSplitter(WAYS, hold=1.0)
    assert where(splitter.split(batch_of([middle, last], start=100.0))) == {}  # held
    other = udp_frame("10.0.0.7", "192.0.2.53", 1234, 53)
    assert set(where(splitter.split(batch_of([other], start=100.9)))) == {other}  # still held
    parts = splitter.split(batch_of([other], start=101.1))
    assert where(parts) == {
        middle: flow_hash(middle) % WAYS,
        last: flow_hash(middle) % WAYS,
        other: where(parts)[other],
    }
    assert parts[flow_hash(middle) % WAYS].frames[:2] == [middle, last]  # before the batch's own frames


def test_release_lets_every_held_fragment_go_and_the_holding_is_bounded() -> None:
    splitter = FlowSplitter(WAYS, max_held=4)
    clients = flows_on_every_way(WAYS)
    datagrams = [fragments(client, number) for number, client in enumerate(clients[:3], start=1)]
    held = [piece for pieces in datagrams for piece in pieces[1:]]  # six later fragments
    parts = splitter.split(batch_of(held))
    assert list(where(parts)) == datagrams[0][1:]  # past four held, the oldest datagram goes
    assert splitter._held_count == 4
    released = splitter.release()
    assert sorted(where(released)) == sorted(held[2:])
    assert all(part.link_type == 1 for part in released) and splitter._held_count == 0


def test_the_memory_of_datagrams_is_bounded_oldest_forgotten_first() -> None:
    splitter = FlowSplitter(WAYS, max_datagrams=2)
    clients = flows_on_every_way(WAYS)
    datagrams = [fragments(client, number) for number, client in enumerate(clients[:3], start=1)]
    splitter.split(batch_of([pieces[0] for pieces in datagrams]))  # three first fragments
    assert len(splitter._datagrams) == 2
    oldest_middle = datagrams[0][1]
    assert where(splitter.split(batch_of([oldest_middle]))) == {}  # forgotten: held again
    for pieces, client in zip(datagrams[1:], clients[1:3], strict=True):
        way = flow_hash(udp_frame(client[0], "192.0.2.53", client[1], 53)) % WAYS
        assert where(splitter.split(batch_of([pieces[1]])))[pieces[1]] == way


def test_frames_without_ip_and_unreadable_frames_are_routed_not_lost() -> None:
    arp = ethernet(b"\x00" * 28, ethertype=0x0806)
    parts = FlowSplitter(WAYS).split(batch_of([arp, b"\x01\x02", b""]))
    assert sorted(frame for part in parts for frame in part.frames) == sorted([arp, b"\x01\x02", b""])
    assert where(parts)[b""] == 0 and where(parts)[arp] == flow_hash(arp) % WAYS
