"""Live capture for the ``pcap`` input: packets from a network device, read through libpcap.

:class:`LiveCapture` opens and activates the device when it is made, so that a missing device, a
permission problem or a bad filter fails at start with one line naming the device. Its
:meth:`LiveCapture.read` then runs in the input's thread until told to stop:

- the handle is non-blocking and the thread waits in ``poll()`` on libpcap's descriptor, never
  longer than :data:`STOP_CHECK`, so a stop request is seen within that time;
- a batch leaves when it holds ``batch_size`` packets, or ``timeout`` after its first packet
  came, so that live events are not held back by quiet traffic;
- while no packet comes, an empty batch with ``clock`` set to the wall-clock time leaves every
  :data:`IDLE_CLOCK` seconds, so decoders can expire what timed out;
- the kernel's counters (``pcap_stats``) are read every :data:`STATS_PERIOD` seconds and at
  :meth:`LiveCapture.close`: ``kernel_received`` (packets the capture socket received, as libpcap
  reports them), ``dropped.kernel`` (dropped because the capture buffer was full) and
  ``dropped.interface`` (dropped by the network interface or its driver, where reported).

Immediate mode: this libpcap binding cannot call ``pcap_set_immediate_mode``. On Linux, libpcap
hands packets over when the kernel closes a block of its ring buffer: when the block is full or
when the capture's timeout ends. ``immediate: true`` sets that timeout to 1 ms, so each packet is
handed over at once (as immediate mode does); ``immediate: false`` lets the kernel gather packets
for up to ``timeout`` first (fewer wake-ups, more latency).
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pcapy

from flowpipe import PacketBatch, StageContext, StartupError

from .libpcap import fill_batch

__all__ = ["IDLE_CLOCK", "STATS_PERIOD", "STOP_CHECK", "LiveCapture"]

STOP_CHECK = 0.25
"""Longest wait in ``poll()`` (seconds): how soon a stop request is seen."""
IDLE_CLOCK = 1.0
"""Seconds without a batch after which an empty batch carries the clock."""
STATS_PERIOD = 1.0
"""Seconds between two readings of the kernel's counters."""
IMMEDIATE_TIMEOUT_MS = 1
"""The kernel buffer timeout (ms) that stands for immediate mode."""
UINT32 = 1 << 32
"""libpcap's counters are 32-bit and wrap around."""

ACTIVATE_ERRORS = {  # pcap_activate() status -> what it means
    -1: "libpcap could not open it (PCAP_ERROR)",
    -5: "no such device",
    -8: "permission denied (live capture needs root or the CAP_NET_RAW capability)",
    -9: "the device is not up",
    -11: "permission denied for promiscuous mode (set promiscuous: false)",
}
ACTIVATE_WARNINGS = {
    2: "promiscuous mode is not supported; capturing without it",
}


class LiveCapture:
    """An activated, non-blocking libpcap capture on one device (see the module docstring).

    ``config`` holds the ``pcap`` input's options: ``device``, ``snaplen``, ``promiscuous``,
    ``buffer_size``, ``immediate``, ``timeout`` and ``bpf_filter``. Raises
    :class:`~flowpipe.StartupError` when the capture cannot start.
    """

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        self.device: str = config.device
        self.context = context
        self.hold = config.timeout
        self.where = f"pcap input {context.id!r}: device {self.device!r}"
        self._lock = threading.Lock()  # close() may come from another thread than read()
        self._stats = (0, 0, 0)
        self._handle = self._activate(config)
        self.link_type: int = self._handle.datalink()
        counters = context.counters  # shown from the start, zero until the kernel counts
        counters.add("kernel_received", 0)
        counters.drop("kernel", 0)
        counters.drop("interface", 0)
        context.log.info("capturing on device %r (link type %d)", self.device, self.link_type)

    def _activate(self, config: SimpleNamespace) -> Any:  # a pcapy Reader: pcapy does not export the type
        try:
            handle = pcapy.create(self.device)
        except pcapy.PcapError as error:
            raise StartupError(f"{self.where}: {error}") from None
        handle.set_snaplen(config.snaplen)
        handle.set_promisc(config.promiscuous)
        handle.set_buffer_size(config.buffer_size)
        kernel_timeout = IMMEDIATE_TIMEOUT_MS if config.immediate else max(1, round(config.timeout * 1000))
        handle.set_timeout(kernel_timeout)
        status = handle.activate()
        if status < 0:
            handle.close()
            reason = ACTIVATE_ERRORS.get(status, f"libpcap error {status}")
            raise StartupError(f"{self.where}: cannot capture: {reason}")
        if status > 0:
            self.context.log.warning(
                "%s: %s", self.where, ACTIVATE_WARNINGS.get(status, f"libpcap warning {status}")
            )
        if config.bpf_filter:
            try:
                handle.setfilter(config.bpf_filter)
            except pcapy.PcapError as error:
                handle.close()
                raise StartupError(f"{self.where}: bpf_filter {config.bpf_filter!r}: {error}") from None
        handle.setnonblock(True)
        return handle

    def read(self, stopping: threading.Event) -> Iterator[PacketBatch]:
        """Yield batches of captured packets, and empty clock batches while idle, until ``stopping``.

        A capture error (the device went down or away) is reported with ``context.fail`` and
        ends the reading, after the packets read before it are yielded.
        """
        with self._lock:
            if self._handle is None:
                return
            descriptor = self._handle.getfd()
        poller = select.poll()
        poller.register(descriptor, select.POLLIN)
        wait = poller.poll
        batch_size = self.context.batch_size
        now = time.monotonic()
        next_stats = now + STATS_PERIOD
        last_out = now  # when the last batch, of packets or of clock, left
        batch = PacketBatch(self.link_type, self.device)
        held_since = 0.0  # when the batch's first packet came
        while not stopping.is_set():
            due = held_since + self.hold if batch.frames else last_out + IDLE_CLOCK
            wait(_millis(min(due, next_stats) - now))
            with self._lock:
                if self._handle is None:
                    return
                before = len(batch.frames)
                error = fill_batch(self._handle, batch, batch_size - len(batch.frames))
                now = time.monotonic()
                if now >= next_stats:
                    self._count_stats()
                    next_stats = now + STATS_PERIOD
            if error is not None:
                self.context.fail(f"{self.where}: {error}")
                break
            if not before and batch.frames:
                held_since = now
            if len(batch.frames) >= batch_size or (batch.frames and now >= held_since + self.hold):
                yield _sized(batch)
                batch = PacketBatch(self.link_type, self.device)
                last_out = now = time.monotonic()
            elif not batch.frames and now >= last_out + IDLE_CLOCK:
                yield PacketBatch(self.link_type, self.device, clock=time.time())
                last_out = now = time.monotonic()
        if batch.frames:
            yield _sized(batch)

    def _count_stats(self) -> None:
        """Add what the kernel counted since the last reading to the input's counters."""
        try:
            stats = self._handle.stats()
        except pcapy.PcapError:  # the device went away; its last counts are already in
            return
        received, dropped, interface = (
            (current - previous) % UINT32 for current, previous in zip(stats, self._stats, strict=True)
        )
        self._stats = stats
        counters = self.context.counters
        counters.add("kernel_received", received)
        counters.drop("kernel", dropped)
        counters.drop("interface", interface)

    def close(self) -> None:
        """Read the kernel's counters a last time and close the capture (once; safe from any thread)."""
        with self._lock:
            if self._handle is None:
                return
            self._count_stats()
            self._handle.close()
            self._handle = None


def _sized(batch: PacketBatch) -> PacketBatch:
    """``batch`` with its byte count set."""
    batch.nbytes = sum(map(len, batch.frames))
    return batch


def _millis(seconds: float) -> int:
    """A ``poll()`` timeout: ``seconds`` in whole milliseconds (rounded up), at most :data:`STOP_CHECK`."""
    return max(0, min(int(seconds * 1000) + 1, int(STOP_CHECK * 1000)))
