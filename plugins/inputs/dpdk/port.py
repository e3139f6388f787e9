"""One DPDK port behind the binding: the EAL, the port's set-up, bursts into batches, its counters.

:class:`DpdkPort` initialises DPDK's EAL with the given arguments, opens one ethdev port and
starts it. The EAL exists once per process (DPDK's rule): a process has at most one open
:class:`DpdkPort`, and the EAL cannot start again once it was cleaned up. A port is used from one
thread at a time; :meth:`DpdkPort.receive` and :meth:`DpdkPort.close` may come from different
threads (a lock keeps them apart).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowpipe import PacketBatch

from .binding import load

__all__ = ["SNAPLEN", "DpdkError", "DpdkPort", "PortStats"]

SNAPLEN = 262144
"""Bytes kept of each packet (the pcap input's largest snapshot length); the wire length is kept whole."""
ERROR_ROOM = 512
NAME_ROOM = 128
PortStats = tuple[int, int, int, int]
"""``rte_eth_stats``: ipackets, imissed, ierrors, rx_nombuf."""


class DpdkError(Exception):
    """DPDK refused to start; the message is one line."""


class DpdkPort:
    """An initialised EAL with one started port (see the module docstring).

    ``eal_args`` are the EAL's arguments (without the program name); ``file_prefix`` is the
    ``--file-prefix`` flowpipe chose itself, if it did: the EAL's runtime folder of that name is
    removed at :meth:`close`. Raises :class:`DpdkError` (or the binding's ``BindingError``).
    """

    def __init__(
        self,
        eal_args: list[str],
        file_prefix: str | None,
        port: int,
        rx_queues: int,
        rx_descriptors: int,
        mempool_size: int,
        mempool_cache: int,
        promiscuous: bool,
        burst_size: int,
    ) -> None:
        self._lib = load()
        self.port = port
        self._lock = threading.Lock()
        self._open = False
        self._file_prefix = file_prefix
        self._runtime_dir: str | None = None
        self._init_eal(eal_args)
        try:
            self._open_port(rx_queues, rx_descriptors, mempool_size, mempool_cache, promiscuous)
        except DpdkError:
            self.close()
            raise
        self.pcap_timestamps = bool(self._lib.fpd_port_pcap_timestamps(port))
        self.driver = self._text(self._lib.fpd_port_driver)
        """The port's driver, e.g. ``net_pcap``."""
        self.device = self._text(self._lib.fpd_port_name)
        """The port's device, e.g. ``net_pcap0`` or a PCI address."""
        # Received packets land here: data one after the other, then per packet its lengths and time.
        self._data = mmap.mmap(-1, burst_size * SNAPLEN)  # anonymous: only the pages written take memory
        self._caplens = bytearray(4 * burst_size)
        self._wirelens = bytearray(4 * burst_size)
        self._times = bytearray(8 * burst_size)
        self._areas = [
            (ctypes.c_char * len(area)).from_buffer(area)
            for area in (self._data, self._caplens, self._wirelens, self._times)
        ]
        self._pointers = [ctypes.addressof(area) for area in self._areas]
        self._data_view = memoryview(self._data)
        self._caplen_view = memoryview(self._caplens).cast("I")
        self._wirelen_view = memoryview(self._wirelens).cast("I")
        self._time_view = memoryview(self._times).cast("d")
        self._stats = (ctypes.c_uint64 * 4)()

    def _init_eal(self, eal_args: list[str]) -> None:
        arguments = [b"flowpipe", *(os.fsencode(argument) for argument in eal_args)]
        argv = (ctypes.c_char_p * (len(arguments) + 1))(*arguments, None)
        error = ctypes.create_string_buffer(ERROR_ROOM)
        affinity = os.sched_getaffinity(0)
        status = self._lib.fpd_eal_init(len(arguments), argv, error, ERROR_ROOM)
        # The EAL pins the calling thread to its main lcore; the pipeline's threads start from this
        # one and must keep every CPU the process had.
        os.sched_setaffinity(0, affinity)
        if status == -errno.EALREADY:
            raise DpdkError("DPDK's EAL is already initialised in this process (one dpdk input per pipeline)")
        if status < 0:
            self._remove_runtime_dir()
            raise DpdkError(f"{error.value.decode(errors='replace')} (DPDK's log above says why)")
        self._runtime_dir = os.fsdecode(self._lib.fpd_runtime_dir())

    def _open_port(
        self, rx_queues: int, rx_descriptors: int, mempool_size: int, mempool_cache: int, promiscuous: bool
    ) -> None:
        count = self._lib.fpd_port_count()
        if count == 0:
            raise DpdkError(
                "DPDK found no port: give a vdev, or bind a NIC to a DPDK driver (and drop --no-pci)"
            )
        error = ctypes.create_string_buffer(ERROR_ROOM)
        self._open = True  # from here on close() releases the port, even half set up
        status = self._lib.fpd_port_open(
            self.port,
            rx_queues,
            rx_descriptors,
            mempool_size,
            mempool_cache,
            int(promiscuous),
            error,
            ERROR_ROOM,
        )
        if status < 0:
            raise DpdkError(f"port {self.port}: {error.value.decode(errors='replace')}")

    def _text(self, function: Callable[[int, Any, int], int]) -> str:
        """What ``function`` (``fpd_port_driver`` or ``fpd_port_name``) writes about the port."""
        text = ctypes.create_string_buffer(NAME_ROOM)
        return text.value.decode(errors="replace") if function(self.port, text, NAME_ROOM) == 0 else "?"

    def register_thread(self) -> bool:
        """Make the calling thread an EAL thread so the mempool cache serves it; False if none is left."""
        return self._lib.fpd_thread_register() >= 0

    def receive(self, queue: int, batch: PacketBatch, limit: int) -> int | None:
        """Append up to ``limit`` (at most ``burst_size``) packets of ``queue`` to ``batch``.

        Returns how many came, or None once the port is closed. ``batch.nbytes`` is kept up to date.
        """
        data, caplens, wirelens, times = self._pointers
        with self._lock:
            if not self._open:
                return None
            count = self._lib.fpd_rx_burst(self.port, queue, limit, data, SNAPLEN, caplens, wirelens, times)
        if count <= 0:
            return None if count < 0 else 0
        lengths = self._caplen_view[:count].tolist()
        total = sum(lengths)
        blob = bytes(self._data_view[:total])
        frames = batch.frames
        offset = 0
        for length in lengths:
            end = offset + length
            frames.append(blob[offset:end])
            offset = end
        batch.wire_lengths.extend(self._wirelen_view[:count].tolist())
        batch.timestamps.extend(self._time_view[:count].tolist())
        batch.nbytes += total
        return count

    def stats(self) -> PortStats | None:
        """The port's counters since it started, or None once it is closed."""
        with self._lock:
            if not self._open or self._lib.fpd_port_stats(self.port, self._stats) < 0:
                return None
            ipackets, imissed, ierrors, rx_nombuf = self._stats
        return ipackets, imissed, ierrors, rx_nombuf

    def close(self) -> None:
        """Stop and close the port and clean up the EAL (once; safe from any thread)."""
        with self._lock:
            if self._open:
                self._lib.fpd_port_close(self.port)
                self._open = False
            self._cleanup()

    def _cleanup(self) -> None:
        if self._runtime_dir is not None:
            self._lib.fpd_eal_cleanup()
            self._remove_runtime_dir()
            self._runtime_dir = None

    def _remove_runtime_dir(self) -> None:
        """Remove the EAL's runtime folder when it is the one of flowpipe's own file prefix."""
        if self._file_prefix is None:
            return
        folder = Path(os.fsdecode(self._lib.fpd_runtime_dir()))
        if folder.name == self._file_prefix:
            shutil.rmtree(folder, ignore_errors=True)
