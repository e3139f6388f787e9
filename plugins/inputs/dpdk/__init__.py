"""The ``dpdk`` input: packets polled from a DPDK port (a NIC bound to a DPDK driver, or a vdev).

The input initialises DPDK's EAL with ``eal_args`` (plus ``--vdev`` for each ``vdev`` and a
``--file-prefix`` of its own unless one is given), starts ``port`` with ``rx_queues`` receive
queues fed from a mempool of ``mempool_size`` mbufs, and polls the queues in turn from its
thread, ``burst_size`` packets at a time:

- a batch leaves when it holds ``batch_size`` packets or when a round over the queues found them
  empty (so a quiet port does not hold packets back);
- after an empty round the thread sleeps :data:`IDLE_SLEEP` rather than spin a CPU (and Python's
  lock) while nothing comes; while no packet comes an empty batch with ``clock`` leaves every
  :data:`IDLE_CLOCK` seconds, so decoders expire what timed out (not when the packets carry a
  file's capture times: a replay runs on the file's time, as the ``pcap`` input does);
- ``stop_when_idle``: the input ends after that long without a packet, as at the end of a file
  (DPDK does not tell when a ``net_pcap`` vdev has read all of its file);
- the port's ``rte_eth_stats`` are read every :data:`STATS_PERIOD` seconds and at the end:
  ``ipackets`` (packets the port received), ``dropped.imissed`` (dropped by the NIC: the receive
  ring was full), ``dropped.ierrors`` (erroneous packets) and ``dropped.rx_nombuf`` (no mbuf left
  in the pool).

Timestamps: a ``net_pcap`` vdev reading a file hands over each packet's capture time (microseconds,
through the mbuf's timestamp dynfield), so events equal those of the ``pcap`` input on the same
file. Other ports have no capture time DPDK can give portably: their packets carry the wall-clock
time of the burst that received them. Frames are Ethernet; each keeps at most
:data:`~.port.SNAPLEN` bytes and its full length on the wire.

DPDK is used through a small C binding built on first use (see :mod:`.binding`). Without DPDK's
development files, pkg-config or a C compiler the input fails at start with one line saying what
to install.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

from flowpipe import (
    Bool,
    Duration,
    Input,
    Int,
    ListOf,
    Option,
    OptionError,
    PacketBatch,
    StartupError,
    Str,
    hookimpl,
)
from flowpipe.packet import LINKTYPE_ETHERNET

from .binding import BindingError
from .port import DpdkError, DpdkPort, PortStats

__all__ = ["DEFAULT_EAL_ARGS", "IDLE_CLOCK", "IDLE_SLEEP", "STATS_PERIOD", "DpdkInput"]

DEFAULT_EAL_ARGS = ("-l", "0", "--no-huge", "-m", "256", "--no-pci", "--log-level=notice")
"""One core, 256 MiB of ordinary memory, no PCI scan: runs anywhere, NIC or not (a vdev is needed then)."""
IDLE_SLEEP = 0.001
"""Seconds slept after a round over the queues that brought nothing."""
IDLE_CLOCK = 1.0
"""Seconds without a batch after which an empty batch carries the clock."""
STATS_PERIOD = 1.0
"""Seconds between two readings of the port's counters."""
PCAP_FILE_KEYS = ("rx_pcap", "tx_pcap")
"""Keys of vdev arguments that name files: relative paths are taken from the pipeline file's folder."""


class DpdkInput(Input):
    """Poll packets from a DPDK port: a NIC bound to a DPDK driver, or a virtual device."""

    options = (
        Option(
            "eal_args",
            ListOf(Str(nonempty=True)),
            list(DEFAULT_EAL_ARGS),
            "arguments of DPDK's EAL (a --file-prefix of flowpipe's own is added unless one is given)",
        ),
        Option(
            "vdev",
            ListOf(Str(nonempty=True)),
            [],
            "virtual devices, each passed as --vdev=VALUE, e.g. net_pcap0,rx_pcap=capture.pcap",
        ),
        Option("port", Int(0, 65535), 0, "the DPDK port id to read"),
        Option(
            "rx_queues", Int(1, 1024), 1, "receive queues (RSS spreads flows over them where the NIC can)"
        ),
        Option("rx_descriptors", Int(1, 65535), 1024, "descriptors of each receive queue's ring"),
        Option("burst_size", Int(1, 1024), 32, "packets asked of a queue in one rte_eth_rx_burst"),
        Option("mempool_size", Int(1, (1 << 32) - 1), 8191, "mbufs in the receive pool (2^n - 1 is best)"),
        Option("mempool_cache", Int(0, 512), 256, "mbufs cached per core in front of the pool"),
        Option("promiscuous", Bool(), True, "put the port in promiscuous mode"),
        Option(
            "stop_when_idle",
            Duration(),
            None,
            "end the input after this long without a packet (for replays of vdev files); null: never",
        ),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        """The pool must feed every descriptor and a burst, and be large enough for its cache."""
        problems = []
        needed = config.rx_queues * config.rx_descriptors + config.burst_size
        if config.mempool_size < needed:
            problems.append(
                OptionError(
                    f"must be at least rx_queues x rx_descriptors + burst_size ({needed}), "
                    f"got {config.mempool_size}",
                    ("mempool_size",),
                )
            )
        if config.mempool_cache * 1.5 > config.mempool_size:
            problems.append(
                OptionError(
                    f"must be at most mempool_size / 1.5 (DPDK's rule), got {config.mempool_cache}",
                    ("mempool_cache",),
                )
            )
        if config.stop_when_idle is not None and config.stop_when_idle <= 0:
            problems.append(OptionError("must be more than 0 (or null: never)", ("stop_when_idle",)))
        return problems

    def open(self) -> None:
        self.where = f"dpdk input {self.context.id!r}"
        self.port: DpdkPort | None = None
        self._stats_lock = threading.Lock()
        self._stats: PortStats = (0, 0, 0, 0)
        eal_args, file_prefix = self._eal_arguments()
        config = self.config
        try:
            self.port = DpdkPort(
                eal_args,
                file_prefix,
                config.port,
                config.rx_queues,
                config.rx_descriptors,
                config.mempool_size,
                config.mempool_cache,
                config.promiscuous,
                config.burst_size,
            )
        except (BindingError, DpdkError) as error:
            raise StartupError(f"{self.where}: {error}") from None
        self._stats = self.port.stats() or self._stats  # a NIC's counters may not start at zero
        counters = self.context.counters  # shown from the start, zero until the port counts
        counters.add("ipackets", 0)
        for reason in ("imissed", "ierrors", "rx_nombuf"):
            counters.drop(reason, 0)
        self.context.log.info(
            "capturing on device %r (DPDK port %d, driver %s, %d receive queue(s); timestamps: %s)",
            self.port.device,
            config.port,
            self.port.driver,
            config.rx_queues,
            "capture times of the pcap file" if self.port.pcap_timestamps else "wall clock at reception",
        )

    def _eal_arguments(self) -> tuple[list[str], str | None]:
        """The EAL's arguments: ``eal_args``, a file prefix unless given, then the vdevs."""
        arguments = list(self.config.eal_args)
        file_prefix = None
        if not any(argument.split("=", 1)[0] == "--file-prefix" for argument in arguments):
            file_prefix = f"flowpipe-{os.getpid()}-{secrets.token_hex(3)}"
            arguments += ["--file-prefix", file_prefix]
        arguments += [f"--vdev={self._vdev(vdev)}" for vdev in self.config.vdev]
        return arguments, file_prefix

    def _vdev(self, vdev: str) -> str:
        """``vdev`` with the files it names resolved from the pipeline's folder; a missing rx_pcap fails."""
        name, *arguments = vdev.split(",")
        resolved = [name]
        for argument in arguments:
            key, _, value = argument.partition("=")
            if key in PCAP_FILE_KEYS and value:
                path = self.context.resolve_path(value)
                if key == "rx_pcap" and not path.is_file():
                    raise StartupError(f"{self.where}: vdev {name}: no such capture file: {path}")
                argument = f"{key}={path}"
            resolved.append(argument)
        return ",".join(resolved)

    def read(self) -> Iterator[PacketBatch]:
        port = self.port
        if port is None:
            return
        if not port.register_thread():
            self.context.log.debug("no EAL lcore left for the input's thread: the mempool cache is unused")
        queues = range(self.config.rx_queues)
        burst_size = self.config.burst_size
        batch_size = self.context.batch_size
        idle_limit = self.config.stop_when_idle
        source = f"dpdk port {self.config.port}"
        wall_clock = not port.pcap_timestamps  # a file's replay runs on its own time, as the pcap input
        now = time.monotonic()
        last_packet = last_out = now
        next_stats = now + STATS_PERIOD
        batch = PacketBatch(LINKTYPE_ETHERNET, source)
        try:
            while not self.stopping.is_set():
                received = 0
                for queue in queues:
                    count = port.receive(queue, batch, min(burst_size, batch_size - len(batch)))
                    if count is None:  # closed under us (shutdown)
                        return
                    received += count
                    if len(batch) >= batch_size:
                        break
                now = time.monotonic()
                if now >= next_stats:
                    self._count_stats()
                    next_stats = now + STATS_PERIOD
                if received and len(batch) < batch_size:
                    continue  # the queues may hold more: poll again before handing over
                if batch.frames:
                    yield batch
                    batch = PacketBatch(LINKTYPE_ETHERNET, source)
                    last_packet = last_out = time.monotonic()  # time spent blocked is not idleness
                    continue
                if idle_limit is not None and now - last_packet >= idle_limit:
                    self.context.log.info("no packet for %gs: the input ends (stop_when_idle)", idle_limit)
                    return
                if wall_clock and now - last_out >= IDLE_CLOCK:
                    yield PacketBatch(LINKTYPE_ETHERNET, source, clock=time.time())
                    last_out = time.monotonic()
                self.stopping.wait(IDLE_SLEEP)
            if batch.frames:
                yield batch
        finally:
            self._count_stats()

    def _count_stats(self) -> None:
        """Add what the port counted since the last reading to the input's counters."""
        with self._stats_lock:  # close() may read them while read() still runs
            if self.port is None or (stats := self.port.stats()) is None:
                return
            ipackets, imissed, ierrors, rx_nombuf = (
                current - previous for current, previous in zip(stats, self._stats, strict=True)
            )
            self._stats = stats
            counters = self.context.counters
            counters.add("ipackets", ipackets)
            counters.drop("imissed", imissed)
            counters.drop("ierrors", ierrors)
            counters.drop("rx_nombuf", rx_nombuf)

    def close(self) -> None:
        if self.port is not None:
            self._count_stats()
            self.port.close()


@hookimpl
def flowpipe_add_inputs() -> dict[str, type[Input]]:
    return {"dpdk": DpdkInput}
