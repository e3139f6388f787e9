"""Builds the stage graph of a validated pipeline and runs it to the end.

Threads and queues::

    input thread(s) --batches--> [packet queue] --> worker thread: decoders -> processors
    worker --event batches--> [one queue per output] --> output thread (write, retry, flush)

With ``decoders: []`` the worker hands the packet batches themselves to the outputs. With
``pipeline.workers: N`` (N > 1) the worker thread becomes a router thread that splits the packets
between N decoding processes by flow, and a collector thread that queues their events for the
outputs (:mod:`flowpipe.workers`).

Acknowledgements (at least once): an input may yield a :class:`~flowpipe.stage.Checkpoint` after
batches. It travels as a marker behind those batches through the input queue; the worker, having
decoded and processed everything before it, puts it behind the resulting events in every output
queue; an output's thread passes it once everything before it was written (and flushed), or
counted as rejected, or dropped by ``on_full: drop``; when every output has passed it, the
input's ``acknowledge(token)`` is called. What the decoders still hold (open flows, pending
transactions) is not waited for: it becomes events later, at a timeout or the end of input. After
the shutdown timeout gave up on something, no acknowledgement is made any more.

End of input (or :meth:`Pipeline.request_stop`, on SIGINT/SIGTERM) drains every queue, flushes
the decoders (what is in flight becomes events), then the outputs, and closes every stage. If the
drain takes longer than ``pipeline.shutdown_timeout``, what is still queued, being written or
being retried is counted as ``dropped.undelivered`` and the run fails (exit status 1).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import PipelineSpec, StageSpec
from .decoding import DecodingChain
from .errors import OutputError, StartupError
from .event import Event
from .metrics import Counters
from .packet import PacketBatch
from .queues import END, BatchQueue, Marker
from .registry import Registry
from .stage import (
    Checkpoint,
    Decoder,
    Input,
    Output,
    Processor,
    Stage,
    StageContext,
    close_stages,
    open_stage,
)
from .summary import Summary
from .workers import WorkerLostError, WorkerPool

__all__ = ["Pipeline"]

log = logging.getLogger("flowpipe.pipeline")


class Pipeline:
    """A running instance of a :class:`~flowpipe.config.PipelineSpec`."""

    def __init__(self, spec: PipelineSpec, registry: Registry) -> None:
        self.spec = spec
        self.registry = registry
        self.failures: list[str] = []
        base_dir = spec.path.resolve().parent
        settings = spec.settings

        def build(stage_spec: StageSpec) -> Any:
            context = StageContext(
                id=stage_spec.id,
                counters=Counters(stage_spec.id, stage_spec.kind),
                base_dir=base_dir,
                batch_size=settings.batch_size,
                failures=self.failures,
                registry=registry,
            )
            return stage_spec.create(context)

        self.inputs: list[Input] = [build(s) for s in spec.inputs]
        self.decoders: list[Decoder] = [build(s) for s in spec.decoders]
        self.processors: list[Processor] = [build(s) for s in spec.processors]
        self.outputs: list[Output] = [build(s) for s in spec.outputs]
        for decoder, following in zip(self.decoders, [*self.decoders[1:], None], strict=False):
            decoder.downstream = following is not None

        queue_settings = settings.queue
        self.input_queue = BatchQueue(
            "inputs", queue_settings.batches, queue_settings.bytes, producers=len(self.inputs)
        )
        self.output_runners = [
            _OutputRunner(
                output,
                BatchQueue(
                    f"to-{output.context.id}",
                    queue_settings.batches,
                    queue_settings.bytes,
                    on_full=output.config.on_full,
                ),
            )
            for output in self.outputs
        ]
        self.worker_counters = Counters("worker", "worker")
        self.chain = DecodingChain(self.decoders, self.processors, self.worker_counters, self._ship)
        self.pool = (
            WorkerPool(settings.workers, self.decoders, self.processors, self.worker_counters)
            if settings.workers > 1  # the pipeline file's check: only with decoders
            else None
        )
        self.stop_requested = threading.Event()
        self.abort = threading.Event()
        self._threads: list[threading.Thread] = []
        self._opened: list[Stage] = []
        self._started_at = 0.0
        self._worker_lost = False

    # -- lifecycle -----------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        return [*self.inputs, *self.decoders, *self.processors, *self.outputs]

    def all_counters(self) -> list[Counters]:
        """Every stage's and queue's counters, in pipeline order."""
        return [
            *(stage.context.counters for stage in self.inputs),
            self.input_queue.counters,
            *(stage.context.counters for stage in (*self.decoders, *self.processors)),
            self.worker_counters,
            *(runner.queue.counters for runner in self.output_runners),
            *(stage.context.counters for stage in self.outputs),
        ]

    def open(self) -> None:
        """Open every stage, outputs first (an unwritable output fails before reading starts).

        With worker processes, they are forked first and open the decoders and processors
        themselves (here those only hold the sums of the workers' counters).
        """
        if self.pool is not None:
            self.pool.start()
            order = [*self.outputs, *self.inputs]
        else:
            order = [*self.outputs, *self.processors, *self.decoders, *self.inputs]
        for stage in order:
            try:
                open_stage(stage)
            except StartupError:
                self.close()
                raise
            self._opened.append(stage)

    def close(self) -> None:
        """Close every opened stage (inputs first), logging but not raising their errors."""
        close_stages(self._opened)
        self._opened.clear()
        if self.pool is not None:
            self.pool.join()

    def start(self) -> None:
        """Start the input, worker and output threads."""
        self._started_at = time.monotonic()
        for runner in self.output_runners:
            self._spawn(f"output-{runner.output.context.id}", runner.run, self.abort)
        if self.pool is None:
            self._spawn("worker", self._work)
        else:
            self._spawn("router", self._route)
            self._spawn("collector", self._collect)
        for stage in self.inputs:
            self._spawn(f"input-{stage.context.id}", self._read, stage)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def request_stop(self) -> None:
        """Stop reading inputs; what was read still drains through to the outputs."""
        if not self.stop_requested.is_set():
            self.stop_requested.set()
            for stage in self.inputs:
                stage.stop()

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def inputs_done(self) -> bool:
        return all(not thread.is_alive() for thread in self._threads if thread.name.startswith("input-"))

    def elapsed(self) -> float:
        return time.monotonic() - self._started_at if self._started_at else 0.0

    def wait(self, tick: Callable[[], None] | None = None, interval: float = 0.1) -> None:
        """Wait for the drain to complete, calling ``tick`` every ``interval`` seconds.

        The shutdown timeout counts from the moment inputs ended or a stop was requested.
        """
        deadline: float | None = None
        while self.running():
            if tick is not None:
                tick()
            if deadline is None and (self.stop_requested.is_set() or self.inputs_done()):
                deadline = time.monotonic() + self.spec.settings.shutdown_timeout
            if deadline is not None and time.monotonic() > deadline:
                self._give_up()
                return
            time.sleep(interval)

    def _give_up(self) -> None:
        self.abort.set()  # first, so the worker does not flush decoders into closing queues
        self.input_queue.close()
        if self.pool is not None:
            self.pool.terminate()
        for runner in self.output_runners:
            runner.queue.close()
            runner.abandon()
        for thread in self._threads:
            thread.join(1.0)
        undelivered = sum(counters.drops().get("undelivered", 0) for counters in self.all_counters())
        self.failures.append(
            f"shutdown timeout ({self.spec.settings.shutdown_timeout:g} s) reached: "
            f"{undelivered:,} queued or in-flight items were not delivered (dropped.undelivered)"
        )
        log.error("%s", self.failures[-1])

    def run(self, tick: Callable[[], None] | None = None) -> Summary:
        """Open, start, wait for the end, close; return the summary."""
        self.open()
        try:
            self.start()
            self.registry.hook.flowpipe_pipeline_started(pipeline=self)
            self.wait(tick)
        finally:
            self.close()
        summary = self.summary()
        self.registry.hook.flowpipe_pipeline_stopped(pipeline=self, summary=summary)
        return summary

    def summary(self) -> Summary:
        return Summary(
            elapsed=self.elapsed(),
            inputs=[stage.context.counters for stage in self.inputs],
            decoders=[stage.context.counters for stage in self.decoders],
            processors=[stage.context.counters for stage in self.processors],
            outputs=[stage.context.counters for stage in self.outputs],
            queues=[self.input_queue.counters, *(runner.queue.counters for runner in self.output_runners)],
            failures=list(self.failures),
        )

    # -- threads -------------------------------------------------------------------------------

    def _read(self, stage: Input) -> None:
        counters = stage.context.counters
        try:
            for batch in stage.read():
                if isinstance(batch, Checkpoint):
                    mark = _Mark(stage, batch.token, len(self.output_runners))
                    if not self.input_queue.put_marker(_Acknowledgements({stage: mark})):
                        break
                    continue
                if not batch and getattr(batch, "clock", None) is None:
                    continue
                counters.add("out", len(batch))
                if isinstance(batch, PacketBatch):
                    counters.add("bytes", batch.nbytes)
                if not self.input_queue.put(batch):
                    break
        except Exception as error:
            log.exception("input %r failed", stage.context.id)
            stage.context.fail(f"input {stage.context.id!r} failed: {type(error).__name__}: {error}")
        finally:
            self.input_queue.end()

    def _work(self) -> None:
        try:
            while True:
                batch = self.input_queue.get()
                if batch is END:
                    break
                if isinstance(batch, _Acknowledgements):  # what came before it is in the output queues
                    self._queue_marker(batch)
                elif not isinstance(batch, PacketBatch):
                    self.chain.events(batch)
                elif not self.decoders:  # decoders: []: the raw packets go to the outputs
                    if batch.frames:
                        self.worker_counters.add("out", len(batch))
                        self._ship(batch)
                else:
                    self.chain.packets(batch)
            if not self.abort.is_set():
                self.chain.flush()
        except Exception as error:  # a bug (e.g. a processor returning None): fail the run, don't hang it
            log.exception("worker failed")
            self.failures.append(f"worker failed: {type(error).__name__}: {error}")
            self.request_stop()
            self.input_queue.close()  # unblock the inputs; what is queued counts as undelivered
        finally:
            for runner in self.output_runners:
                runner.queue.end()

    def _ship(self, items: list[Event] | PacketBatch) -> None:
        """Hand a batch of events, or of raw packets, to every output's queue (shared, not copied)."""
        for runner in self.output_runners:
            runner.queue.put(items)

    def _queue_marker(self, marker: _Acknowledgements) -> None:
        """Put a copy of ``marker`` behind what is queued for each output (each passes its own)."""
        for runner in self.output_runners:
            runner.queue.put_marker(_Acknowledgements(dict(marker.marks)))

    def _route(self) -> None:
        """With worker processes: send what the inputs read to the workers."""
        pool = self.pool
        assert pool is not None
        try:
            while True:
                batch = self.input_queue.get()
                if batch is END:
                    break
                if isinstance(batch, _Acknowledgements):
                    pool.mark(batch)
                elif isinstance(batch, PacketBatch):
                    pool.packets(batch)
                else:
                    pool.events(batch)
            if not self.abort.is_set():
                pool.end()
        except WorkerLostError as error:
            self._lose_worker(error)

    def _collect(self) -> None:
        """With worker processes: queue their events for the outputs, and pass on checkpoints."""
        pool = self.pool
        assert pool is not None
        try:
            for item in pool.results():
                if isinstance(item, _Acknowledgements):  # every worker shipped what came before it
                    self._queue_marker(item)
                else:
                    self._ship(item)
        except WorkerLostError as error:
            self._lose_worker(error)
        finally:
            self.failures.extend(pool.failures)
            for runner in self.output_runners:
                runner.queue.end()

    def _lose_worker(self, error: WorkerLostError) -> None:
        """A worker process died: fail the run and stop the others; what they held is lost."""
        if self.abort.is_set() or self._worker_lost:  # the shutdown timeout killed it, or known
            return
        self._worker_lost = True
        self.failures.append(f"{error}: the run stops; what the workers held is lost")
        log.error("%s", self.failures[-1])
        self.request_stop()
        self.input_queue.close()
        assert self.pool is not None
        self.pool.terminate()


class _Mark:
    """One checkpoint of one input on its way through the outputs."""

    __slots__ = ("input", "lock", "token", "waiting")

    def __init__(self, stage: Input, token: Any, outputs: int) -> None:
        self.input = stage
        self.token = token
        self.waiting = outputs
        self.lock = threading.Lock()

    def passed(self) -> None:
        """One output has shipped everything before this checkpoint; the last one acknowledges it."""
        with self.lock:
            self.waiting -= 1
            if self.waiting:
                return
        try:
            self.input.acknowledge(self.token)
        except Exception:
            context = self.input.context
            context.errors.error(
                "acknowledge", "input %r failed to take an acknowledgement", context.id, exc_info=True
            )


class _Acknowledgements(Marker):
    """The marker of a queue: the latest checkpoint of each input that it stands for."""

    __slots__ = ("marks",)

    def __init__(self, marks: dict[Input, _Mark]) -> None:
        self.marks = marks

    def merge(self, later: Marker) -> None:
        assert isinstance(later, _Acknowledgements)
        self.marks.update(later.marks)  # a later checkpoint covers the earlier ones of its input

    def passed(self) -> None:
        for mark in self.marks.values():
            mark.passed()


class _OutputRunner:
    """Feeds one output from its queue: write with retries and backoff, flush when idle.

    Every batch taken counts ``in`` and, once settled, exactly one of ``out``, ``dropped.rejected``,
    ``dropped.output_error`` or ``dropped.undelivered``. :meth:`abandon` (shutdown timeout) settles
    the batch being written as undelivered from another thread; the lock makes sure a write that
    returns afterwards is not counted a second time.

    A marker (acknowledgements) is passed once what came before it is settled and the output was
    flushed after it; while flushing fails, markers wait for the next flush that succeeds.
    """

    def __init__(self, output: Output, queue: BatchQueue) -> None:
        self.output = output
        self.queue = queue
        self.counters = output.context.counters
        self._lock = threading.Lock()
        self._in_flight = 0
        self._abandoned = False
        self._waiting: list[_Acknowledgements] = []
        """Markers behind writes not yet delivered and flushed."""

    def abandon(self) -> None:
        """Stop counting outcomes: the batch still being written or retried is undelivered."""
        with self._lock:
            self._abandoned = True
            if self._in_flight:
                self.counters.drop("undelivered", self._in_flight)
                self._in_flight = 0

    def _begin(self, count: int) -> bool:
        with self._lock:
            self.counters.add("in", count)
            if self._abandoned:
                self.counters.drop("undelivered", count)
                return False
            self._in_flight = count
            return True

    def _settle(self, counter: str, count: int) -> None:
        with self._lock:
            if not self._abandoned:
                self.counters.add(counter, count)
            self._in_flight = 0

    def _progress(self, delivered: int, rejected: int) -> None:
        """Part of the batch in flight was delivered or rejected; the rest stays in flight."""
        with self._lock:
            if self._abandoned:
                return
            if delivered:
                self.counters.add("out", delivered)
            if rejected:
                self.counters.drop("rejected", rejected)
            self._in_flight -= delivered + rejected

    def run(self, abort: threading.Event) -> None:
        dirty = False
        limit, wait = self.output.batching()
        ended = False
        while not ended:
            batch = self.queue.get(timeout=0.0 if dirty else 0.5)
            if batch is None:
                if dirty:
                    dirty = not self._flush(abort)
                continue
            if batch is END:
                break
            if isinstance(batch, _Acknowledgements):
                self._waiting.append(batch)
                if dirty:
                    dirty = not self._flush(abort)
                else:
                    self._pass(abort)
                continue
            if limit and len(batch) < limit and not isinstance(batch, PacketBatch):  # packets: as they are
                batch, ended = self._gather(list(batch), limit, wait)
            self._deliver(batch, abort)
            dirty = True
            if self._waiting:  # markers gathered among the joined batches
                dirty = not self._flush(abort)
        if dirty and not abort.is_set():
            self._flush(abort)

    def _gather(self, events: list[Event], limit: int, wait: float) -> tuple[list[Event], bool]:
        """Join queued batches to ``events`` (up to ``limit`` events or ``wait`` s); whether END came."""
        deadline = time.monotonic() + wait
        while len(events) < limit:
            more = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            if more is None:
                return events, False
            if more is END:
                return events, True
            if isinstance(more, _Acknowledgements):  # passed once the joined write is delivered
                self._waiting.append(more)
                continue
            events.extend(more)
        return events, False

    def _flush(self, abort: threading.Event) -> bool:
        """Flush the output; on success pass the markers that waited for it."""
        try:
            self.output.flush()
        except Exception as error:
            self.counters.add("flush_errors")
            self.output.context.errors.error(
                "flush", "output %r failed to flush: %s", self.output.context.id, error
            )
            return False
        self._pass(abort)
        return True

    def _pass(self, abort: threading.Event) -> None:
        """The markers waiting are behind shipped items: pass them (not after a shutdown timeout,
        which may have given up on something before them)."""
        waiting, self._waiting = self._waiting, []
        if abort.is_set():
            return
        for marker in waiting:
            marker.passed()

    def _deliver(self, events: list[Event], abort: threading.Event) -> None:
        if not self._begin(len(events)):
            return
        backoff = self.output.config.backoff
        delay = backoff.init
        context = self.output.context
        while True:
            try:
                rejected = self.output.write(events) or 0
                self._progress(len(events) - rejected, rejected)
                return
            except OutputError as error:
                if not error.retryable:
                    self._settle("dropped.rejected", len(events))
                    context.errors.error(
                        "rejected", "output %r rejected %d events: %s", context.id, len(events), error
                    )
                    return
                if error.remaining is not None:
                    left = len(error.remaining)
                    self._progress(len(events) - left - error.rejected, error.rejected)
                    events = error.remaining
                    if not events:
                        return
                self.counters.add("retries")
                context.errors.warning(
                    "retry", "output %r failed (%s); retrying in %.1f s", context.id, error, delay
                )
            except Exception:
                self._settle("dropped.output_error", len(events))
                context.errors.error("bug", "output %r failed on a batch", context.id, exc_info=True)
                return
            if abort.wait(delay * random.uniform(0.8, 1.2)):
                self._settle("dropped.undelivered", len(events))
                return
            delay = min(max(delay * 2, 0.001), backoff.max)
