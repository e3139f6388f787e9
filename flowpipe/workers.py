"""Worker processes: ``pipeline.workers: N`` decodes on N cores, each process owning its flows.

::

    input thread --> [input queue] --> router thread --(a pipe per worker)--> worker process i:
        decoders -> processors --(a pipe back)--> collector thread --> [output queues] --> outputs

The router splits every batch of packets between the workers with the first decoder's
:meth:`~flowpipe.stage.Decoder.splitter` (the ``ip`` decoder's: a symmetric flow hash; both
directions of a connection, and the fragments of a datagram, go to one worker), so each worker
sees whole flows and makes the events a single process would make of them. Batches of events
(inputs that read events) go to the workers in turn, through their processors. Inputs and
outputs stay in the main process.

Time: a worker sees its own packets' timestamps, and the router also tells a worker that got no
packet of a batch the batch's latest capture time (at most once a second of capture time), so
its flows, connections and transactions expire as they would in one process.

Checkpoints of inputs (acknowledgements) are sent to every worker behind the packets before
them; the collector passes one to the output queues once every worker has sent it back, that is
once all the events of what came before it are queued for the outputs.

Workers are forked when the pipeline opens, before any output or input is opened and before the
pipeline's threads start, so they inherit the built (not yet opened) decoders and processors and
open their own. A worker ignores SIGINT (the main process coordinates the stop) and ends when
its pipe from the main process ends. Its counters come back about twice a second and at the end;
the main process shows their sums under each decoder's and processor's name.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import signal
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from .decoding import DecodingChain
from .errors import StartupError
from .event import Event
from .metrics import Counters
from .packet import PacketBatch
from .queues import Marker
from .stage import Decoder, Processor, Splitter, Stage, close_stages, open_stage

__all__ = ["WorkerLostError", "WorkerPool"]

log = logging.getLogger("flowpipe.workers")

# Messages are tuples whose first item says what they are.
PACKETS = 0
"""main -> worker: ``(PACKETS, link_type, source, clock, timestamps, frames, wire_lengths)``."""
EVENTS = 1
"""both ways: ``(EVENTS, events)``."""
MARK = 2
"""both ways: ``(MARK, number)``: a checkpoint, sent back once what came before it is shipped."""
END = 3
"""main -> worker: ``(END,)``: flush the decoders, report, exit."""
READY = 4
"""worker -> main: ``(READY, error)``: the worker's stages opened (error None) or failed to."""
COUNTERS = 5
"""worker -> main: ``(COUNTERS, [(values, gauges) of each decoder, processor, and the worker])``."""
DONE = 6
"""worker -> main: ``(DONE, failures)``: the last message."""

CLOCK_STEP = 1.0
"""Capture seconds between two clock messages to a worker that gets no packets."""
PIPE_SIZE = 1 << 20
"""Bytes each pipe to and from a worker holds."""
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
COUNTERS_PERIOD = 0.5
"""Wall seconds between two reports of a worker's counters."""


class WorkerLostError(Exception):
    """A worker process ended without finishing (killed, or crashed)."""


class WorkerPool:
    """N forked decoding processes, the router's and the collector's ends of their pipes.

    ``decoders``, ``processors`` and ``counters`` (the ``worker`` counters) are the main
    process's stages, built but not opened: each worker opens and runs its own copy, and their
    counters here become the sums of the workers'.
    """

    def __init__(
        self, count: int, decoders: list[Decoder], processors: list[Processor], counters: Counters
    ) -> None:
        self.count = count
        self.decoders = decoders
        self.processors = processors
        self.counters = counters
        self._splitters: dict[int, Splitter] = {}
        """The first decoder's splitter of each link type."""
        self._processes: list[Any] = []
        self._to_workers: list[Connection] = []
        self._from_workers: list[Connection] = []
        self._told = [float("-inf")] * count
        """The latest capture time each worker has been sent."""
        self._next_events = 0
        self._marks: dict[int, list[Any]] = {}
        """Checkpoints on their way through the workers: number -> [marker, workers yet to send it]."""
        self._next_mark = 0
        self._reports: list[list[tuple[dict[str, int], dict[str, Any]]]] = [[] for _ in range(count)]
        """Each worker's latest counters (values, gauges), in the order of :meth:`_stage_counters`."""
        self.failures: list[str] = []
        """The failures the workers reported (``context.fail``)."""

    def _stage_counters(self) -> list[Counters]:
        return [*(stage.context.counters for stage in (*self.decoders, *self.processors)), self.counters]

    # -- life cycle (main process) ---------------------------------------------------------------

    def start(self) -> None:
        """Fork the workers and wait until each has opened its stages.

        Raises :class:`~flowpipe.errors.StartupError` (after stopping them all) when one failed to.
        """
        context = multiprocessing.get_context("fork")
        sys.stdout.flush()  # a buffer inherited by the children would be written twice
        sys.stderr.flush()
        for index in range(self.count):
            inbound_reader, inbound_writer = context.Pipe(duplex=False)
            outbound_reader, outbound_writer = context.Pipe(duplex=False)
            process = context.Process(
                target=self._serve,
                args=(index, inbound_reader, outbound_writer),
                name=f"flowpipe-worker-{index}",
                daemon=True,
            )
            _widen(inbound_writer)
            _widen(outbound_reader)
            self._to_workers.append(inbound_writer)  # before the fork: the worker closes these ends
            self._from_workers.append(outbound_reader)
            process.start()
            inbound_reader.close()
            outbound_writer.close()
            self._processes.append(process)
        errors = []
        for index, connection in enumerate(self._from_workers):
            try:
                kind, error = connection.recv()
            except EOFError:
                kind, error = READY, f"worker {index} ended while starting"
            if kind != READY:
                error = f"worker {index} sent {kind!r} while starting"
            if error:
                errors.append(error)
        if errors:
            self.terminate()
            self.join()
            raise StartupError("; ".join(dict.fromkeys(errors)))  # each reason once

    def terminate(self) -> None:
        """Kill every worker now (shutdown timeout, or a worker lost): what they hold is lost."""
        for process in self._processes:
            if process.is_alive():
                process.kill()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the workers to exit (after DONE, or at the end of their pipe), kill the late;
        close the pipes."""
        for connection in self._to_workers:  # a worker still waiting for work sees its pipe end
            connection.close()
        deadline = time.monotonic() + timeout
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self._from_workers:
            connection.close()
        self._processes.clear()

    # -- router thread ---------------------------------------------------------------------------

    def packets(self, batch: PacketBatch) -> None:
        """Send each worker the frames of its flows (and the clock, to one that got none)."""
        if batch.clock is not None:  # a live input's clock while no packet comes: every worker hears it
            self._tell_time(batch.link_type, batch.source, batch.clock)
            return
        splitter = self._splitters.get(batch.link_type)
        if splitter is None:
            splitter = self.decoders[0].splitter(self.count, batch.link_type)
            if splitter is None:  # checked with the pipeline file; a decoder may still refuse a link type
                raise WorkerLostError(
                    f"decoder {self.decoders[0].context.id!r} cannot split link type {batch.link_type} "
                    "between worker processes"
                )
            self._splitters[batch.link_type] = splitter
            if len(self._splitters) == 1:  # every worker starts its clock (flow report periods) here
                self._tell_time(batch.link_type, batch.source, batch.timestamps[0])
        self._send_parts(splitter.split(batch), batch.source, batch.timestamps[-1])

    def _send_parts(self, parts: list[PacketBatch], source: str, latest: float) -> None:
        told = self._told
        for index, part in enumerate(parts):
            if part.frames:
                message = (
                    PACKETS,
                    part.link_type,
                    source,
                    None,
                    part.timestamps,
                    part.frames,
                    part.wire_lengths,
                )
                self._send(index, message)
                told[index] = max(told[index], part.timestamps[-1])
            elif latest >= told[index] + CLOCK_STEP:
                self._send(index, (PACKETS, part.link_type, source, latest, [], [], []))
                told[index] = latest

    def _tell_time(self, link_type: int, source: str, clock: float) -> None:
        """Every worker hears that capture time is ``clock``."""
        for index in range(self.count):
            self._send(index, (PACKETS, link_type, source, clock, [], [], []))
            self._told[index] = max(self._told[index], clock)

    def events(self, events: list[Event]) -> None:
        """Send a batch of events (from an input of events) to the next worker in turn."""
        self._send(self._next_events, (EVENTS, events))
        self._next_events = (self._next_events + 1) % self.count

    def mark(self, marker: Marker) -> None:
        """Send a checkpoint behind everything sent so far to every worker."""
        number = self._next_mark
        self._next_mark += 1
        self._marks[number] = [marker, self.count]
        for index in range(self.count):
            self._send(index, (MARK, number))

    def end(self) -> None:
        """No more input: held fragments go, the workers flush their decoders, report and exit."""
        for splitter in self._splitters.values():
            self._send_parts(splitter.release(), "", float("-inf"))
        for index in range(self.count):
            self._send(index, (END,))

    def _send(self, index: int, message: tuple) -> None:
        try:
            self._to_workers[index].send(message)
        except (OSError, ValueError) as error:  # a broken pipe: the worker is gone
            raise WorkerLostError(f"worker {index} is gone ({error})") from error

    # -- collector thread ------------------------------------------------------------------------

    def results(self) -> Iterator[list[Event] | Marker]:
        """Batches of events from the workers, and checkpoints that every worker has passed.

        Ends when every worker has sent DONE; raises :class:`WorkerLostError` when one ended before.
        """
        open_connections = {connection: index for index, connection in enumerate(self._from_workers)}
        while open_connections:
            for connection in wait(list(open_connections)):
                index = open_connections[connection]
                try:
                    message = connection.recv()
                except EOFError:
                    del open_connections[connection]
                    process = self._processes[index]
                    process.join(1.0)
                    raise WorkerLostError(
                        f"worker {index} ended unexpectedly (exit code {process.exitcode})"
                    ) from None
                kind = message[0]
                if kind == EVENTS:
                    yield message[1]
                elif kind == MARK:
                    waiting = self._marks[message[1]]
                    waiting[1] -= 1
                    if not waiting[1]:
                        del self._marks[message[1]]
                        yield waiting[0]
                elif kind == COUNTERS:
                    self._add_report(index, message[1])
                elif kind == DONE:
                    self.failures.extend(message[1])
                    del open_connections[connection]

    def _add_report(self, index: int, report: list[tuple[dict[str, int], dict[str, Any]]]) -> None:
        """Keep worker ``index``'s latest counters; the main process's counters become the sums
        (of gauges too, when they are numbers: what each worker holds adds up)."""
        self._reports[index] = report
        reports = [worker_report for worker_report in self._reports if worker_report]
        for position, counters in enumerate(self._stage_counters()):
            total = Counters(counters.owner, counters.kind)
            for worker_report in reports:
                worker_values, worker_gauges = worker_report[position]
                total.add_many(worker_values)
                for name, value in worker_gauges.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        value += total.gauges.get(name, 0)
                    total.gauges[name] = value
            counters.values, counters.gauges = total.values, total.gauges

    # -- in the worker process -------------------------------------------------------------------

    def _serve(self, index: int, inbound: Connection, outbound: Connection) -> None:
        """The worker process: open the stages, decode what comes, send back events and counters."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for connection in (*self._to_workers, *self._from_workers):
            connection.close()  # the main process's ends: its own pipe ends when the main closes it
        failures = self.decoders[0].context.failures  # the pipeline's list, shared by every stage
        already_failed = len(failures)
        opened: list[Stage] = []
        for stage in (*self.processors, *self.decoders):
            try:
                open_stage(stage)
            except StartupError as error:
                outbound.send((READY, str(error)))
                close_stages(opened)
                return
            opened.append(stage)
        outbound.send((READY, None))

        def ship(events: list[Event]) -> None:
            outbound.send((EVENTS, events))

        chain = DecodingChain(self.decoders, self.processors, self.counters, ship)
        report_at = time.monotonic() + COUNTERS_PERIOD
        try:
            while True:
                message = inbound.recv()
                kind = message[0]
                if kind == PACKETS:
                    _, link_type, source, clock, timestamps, frames, wire_lengths = message
                    batch = PacketBatch(link_type, source, clock)
                    batch.timestamps, batch.frames, batch.wire_lengths = timestamps, frames, wire_lengths
                    chain.packets(batch)
                elif kind == EVENTS:
                    chain.events(message[1])
                elif kind == MARK:
                    outbound.send(message)
                elif kind == END:
                    chain.flush()
                    break
                if time.monotonic() >= report_at:
                    outbound.send((COUNTERS, self._report()))
                    report_at = time.monotonic() + COUNTERS_PERIOD
        except EOFError:  # the main process is gone
            return
        finally:
            close_stages(opened)
        outbound.send((COUNTERS, self._report()))
        outbound.send((DONE, failures[already_failed:]))

    def _report(self) -> list[tuple[dict[str, int], dict[str, Any]]]:
        return [(dict(c.values), dict(c.gauges)) for c in self._stage_counters()]


def _widen(connection: Connection) -> None:
    """A pipe of PIPE_SIZE bytes instead of 64 KiB: a batch of frames goes in one write (Linux)."""
    with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size, unprivileged: the default
        fcntl.fcntl(connection.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
