"""The pcap input capturing live on a veth device: batches, clock batches, stop, kernel counters.

Frames are sent with a raw (AF_PACKET) socket into the peer end of a veth pair, so the capture
sees exactly the frames a test sends; the namespaces keep the links otherwise quiet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from live import Reader, frames, sender
from netns import VethPair, in_namespace, veth_pair

from flowpipe import StageContext, StartupError
from flowpipe.metrics import Counters
from flowpipe.options import build_namespace
from flowpipe.plugins.inputs.pcap import PcapInput


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with veth_pair() as created:
        yield created


def open_input(pair: VethPair, batch_size: int = 256, **values: object) -> PcapInput:
    """A pcap input opened in the client namespace, on its veth device unless ``values`` say otherwise."""
    context = StageContext(id="live", counters=Counters("live", "input"), batch_size=batch_size)
    options = {"device": pair.client.device, **values}
    stage = PcapInput(build_namespace(PcapInput.all_options(), options), context)
    in_namespace(pair.client.namespace, stage.open)
    return stage


def test_a_quiet_device_yields_a_clock_batch_about_once_a_second_and_stops_at_once(pair: VethPair) -> None:
    stage = open_input(pair)
    wall_start = time.time()
    reader = Reader(stage)
    time.sleep(2.6)
    stopped_in = reader.stop()
    wall_end = time.time()
    stage.close()

    assert stopped_in < 0.5
    assert [(len(batch), batch.link_type, batch.source) for _, batch in reader.batches] == [
        (0, 1, pair.client.device),
        (0, 1, pair.client.device),
    ]
    clocks = [batch.clock for _, batch in reader.batches]
    assert wall_start + 0.9 < clocks[0] < clocks[1] < wall_end
    left = [at - reader.started for at, _ in reader.batches]
    assert 0.95 < left[0] < 1.35 and 0.95 < left[1] - left[0] < 1.35
    assert stage.progress() is None


def test_packets_leave_within_the_timeout_in_one_batch_with_their_capture_times(pair: VethPair) -> None:
    stage = open_input(pair, timeout="150ms")
    reader = Reader(stage)
    sent = frames(3, size=20)
    wire = sender(pair.server)
    before = time.time()
    for frame in sent:
        wire.send(frame)
    after = time.time()
    sent_at = time.monotonic()
    reader.wait_until(lambda: reader.frames() == sent)
    reader.stop()
    stage.close()

    [(left_at, batch)] = reader.batches
    assert 0.14 < left_at - sent_at < 0.4  # held for the timeout, waiting for more packets
    assert batch.clock is None
    assert (batch.wire_lengths, batch.nbytes) == ([len(frame) for frame in sent], sum(map(len, sent)))
    assert all(before - 0.001 <= stamp <= after + 0.001 for stamp in batch.timestamps)
    assert batch.timestamps == sorted(batch.timestamps)


def test_a_full_batch_leaves_at_once_and_batches_keep_the_order(pair: VethPair) -> None:
    stage = open_input(pair, batch_size=4, timeout="1s")
    reader = Reader(stage)
    sent = frames(10)
    wire = sender(pair.server)
    for frame in sent:
        wire.send(frame)
    sent_at = time.monotonic()
    reader.wait_until(lambda: len(reader.frames()) == 10, timeout=3.0)
    reader.stop()
    stage.close()

    assert [len(batch) for _, batch in reader.batches] == [4, 4, 2]
    assert reader.frames() == sent
    first, second, last = (at - sent_at for at, _ in reader.batches)
    assert first < 0.2 and second < 0.2  # full: not held for the 1 s timeout
    assert 0.9 < last < 1.5  # partly filled: held for it


@pytest.mark.parametrize(("immediate", "fast"), [(True, True), (False, False)], ids=["immediate", "buffered"])
def test_immediate_hands_each_packet_over_as_it_comes(pair: VethPair, immediate: bool, fast: bool) -> None:
    """batch_size 1: a packet leaves as soon as the kernel hands it over.

    Buffered, the kernel hands packets over when its 1 s timeout ends: of three packets sent 0.3 s
    apart at least one then waits 0.4 s or more, whatever the phase of the kernel's timer.
    """
    stage = open_input(pair, batch_size=1, immediate=immediate, timeout="1s")
    reader = Reader(stage)
    wire = sender(pair.server)
    sent_at = []
    for frame in frames(3):
        sent_at.append(time.monotonic())
        wire.send(frame)
        time.sleep(0.3)
    reader.wait_until(lambda: len(reader.frames()) == 3, timeout=3.0)
    reader.stop()
    stage.close()

    latencies = [left - sent for (left, _), sent in zip(reader.batches, sent_at, strict=True)]
    assert (max(latencies) < 0.1) is fast, latencies


def test_snaplen_cuts_frames_and_the_wire_length_stays(pair: VethPair) -> None:
    stage = open_input(pair, snaplen=64)
    reader = Reader(stage)
    [frame] = frames(1, size=300)
    sender(pair.server).send(frame)
    reader.wait_until(lambda: len(reader.frames()) == 1)
    reader.stop()
    stage.close()
    [(_, batch)] = reader.batches
    assert (batch.frames, batch.wire_lengths, batch.nbytes) == ([frame[:64]], [len(frame)], 64)


def test_bpf_filter_keeps_only_the_matching_packets(pair: VethPair) -> None:
    stage = open_input(pair, bpf_filter="udp dst port 6001 or udp dst port 6003")
    reader = Reader(stage)
    sent = frames(5)
    wire = sender(pair.server)
    for frame in sent:
        wire.send(frame)
    reader.wait_until(lambda: len(reader.frames()) == 2)
    time.sleep(0.3)  # time for a packet the filter let through wrongly
    reader.stop()
    stage.close()
    assert reader.frames() == [sent[1], sent[3]]
    assert stage.context.counters.get("kernel_received") == 2


def test_kernel_drops_are_counted_periodically_and_at_close(pair: VethPair) -> None:
    stage = open_input(pair, buffer_size="64KiB")
    sent = frames(3000, size=100)
    wire = sender(pair.server)
    for frame in sent:  # nothing reads yet: the small kernel buffer overflows
        wire.send(frame)
    reader = Reader(stage)
    counters = stage.context.counters
    reader.wait_until(lambda: counters.get("kernel_received") > 0, timeout=3.0)  # read within 1 s
    delivered = reader.frames()
    assert counters.values == {
        "kernel_received": 3000,
        "dropped.kernel": 3000 - len(delivered),
        "dropped.interface": 0,
    }
    assert 0 < len(delivered) < 1000
    assert delivered == [frame for frame in sent if frame in set(delivered)]  # in order, none made up

    wire.send(sent[0])
    reader.wait_until(lambda: len(reader.frames()) == len(delivered) + 1)
    reader.stop()
    stage.close()  # the last reading
    assert counters.get("kernel_received") == 3001
    stage.close()  # a second close changes nothing
    assert counters.get("kernel_received") == 3001


def test_counters_are_there_from_the_start(pair: VethPair) -> None:
    stage = open_input(pair)
    assert stage.context.counters.values == {
        "kernel_received": 0,
        "dropped.kernel": 0,
        "dropped.interface": 0,
    }
    stage.close()


def test_a_missing_device_fails_at_start_naming_it(pair: VethPair) -> None:
    with pytest.raises(StartupError) as error:
        open_input(pair, device="fpnosuch0")
    assert str(error.value) == "pcap input 'live': device 'fpnosuch0': cannot capture: no such device"


def test_a_bad_filter_fails_at_start_naming_the_device(pair: VethPair) -> None:
    with pytest.raises(StartupError) as error:
        open_input(pair, bpf_filter="udp port")
    assert str(error.value) == (
        f"pcap input 'live': device {pair.client.device!r}: bpf_filter 'udp port': "
        "can't parse filter expression: syntax error"
    )


def test_a_device_that_goes_away_ends_the_reading_with_a_failure(pair: VethPair) -> None:
    stage = open_input(pair)
    reader = Reader(stage)
    sent = frames(2)
    wire = sender(pair.server)
    for frame in sent:
        wire.send(frame)
    reader.wait_until(lambda: reader.frames() == sent)
    pair.client.run("ip", "link", "delete", pair.client.device)
    reader.thread.join(2.0)
    assert not reader.thread.is_alive()
    stage.close()
    assert stage.context.failures == [
        f"pcap input 'live': device {pair.client.device!r}: The interface went down"
    ]
