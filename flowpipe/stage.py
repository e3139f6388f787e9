"""Base classes of the pipeline stages that plugins provide.

A stage class declares its options (``options``), receives them validated in ``self.config`` and
its runtime surroundings in ``self.context``. Construction must be cheap and side-effect free;
resources are acquired in :meth:`Stage.open` and released in :meth:`Stage.close`.

Call order, for every stage: ``__init__`` -> ``open`` -> (work) -> ``close``. Each stage runs in
exactly one thread (inputs and outputs in their own, decoders and processors in the worker), so
a stage needs no locking of its own state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Protocol

from .conditions import Condition
from .errors import StartupError
from .event import Event
from .metrics import Counters, RateLimitedLog
from .options import Choice, Duration, Option, OptionError, Struct
from .packet import PacketBatch

__all__ = [
    "Checkpoint",
    "Decoder",
    "Input",
    "InputProgress",
    "Output",
    "Processor",
    "Splitter",
    "Stage",
    "StageContext",
    "close_stages",
    "open_stage",
]

log = logging.getLogger("flowpipe.stage")


def open_stage(stage: Stage) -> None:
    """Open ``stage``; any failure becomes a :class:`~flowpipe.errors.StartupError` naming it."""
    try:
        stage.open()
    except StartupError:
        raise
    except Exception as error:
        raise StartupError(f"{stage.kind} {stage.context.id!r} failed to start: {error}") from error


def close_stages(stages: list[Stage]) -> None:
    """Close ``stages``, last first, logging but not raising their errors."""
    for stage in reversed(stages):
        try:
            stage.close()
        except Exception:
            log.exception("%s %r failed to close", stage.kind, stage.context.id)


@dataclass
class StageContext:
    """What the pipeline gives a stage besides its options."""

    id: str
    """The stage's id (the ``id:`` in the pipeline file, or its type with a position)."""
    counters: Counters
    """This stage's ledger: count ``in``/``out`` and every drop by reason here."""
    base_dir: Path = field(default_factory=Path.cwd)
    """The folder of the pipeline file; relative paths in options are taken from it."""
    batch_size: int = 256
    """How many items an input should put in one batch."""
    failures: list[str] = field(default_factory=list)
    """Runtime failures reported with :meth:`fail`; any makes the run exit with status 1."""
    registry: Any = None
    """The plugin registry, for stages built from other plugins (the ``protocol`` decoder)."""

    def __post_init__(self) -> None:
        self.log = logging.getLogger(f"flowpipe.{self.id}")
        self.errors = RateLimitedLog(self.log)

    def fail(self, message: str) -> None:
        """Report a failure that does not stop the pipeline but makes it exit with status 1."""
        self.failures.append(message)
        self.log.error("%s", message)

    def resolve_path(self, path: str | Path) -> Path:
        """``path`` taken relative to the pipeline file's folder (``~`` expanded)."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else self.base_dir / candidate


class Stage:
    """Base of every stage: declared options, validated config, context, open/close."""

    kind: ClassVar[str] = ""
    """``input``, ``decoder``, ``analyzer``, ``processor`` or ``output``."""
    options: ClassVar[tuple[Option, ...]] = ()
    """The options this stage accepts, besides ``type`` and ``id`` (and its kind's common ones)."""
    common_options: ClassVar[tuple[Option, ...]] = ()
    """Options every stage of this kind accepts; the pipeline, not the stage, acts on them."""

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def all_options(cls) -> tuple[Option, ...]:
        """The stage's own options followed by its kind's common options."""
        return cls.options + cls.common_options

    @classmethod
    def schema(cls, registry: Any) -> tuple[Option, ...]:
        """The options a pipeline file may give this stage, as validated.

        :meth:`all_options` unless they depend on other plugins in ``registry`` (the ``protocol``
        decoder has one section per installed analyzer).
        """
        return cls.all_options()

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        """Check rules that span options (one of two required, ranges that must nest...).

        Called with the converted options after each was validated on its own; return one
        :class:`~flowpipe.options.OptionError` per problem, with the key path it concerns.
        """
        return []

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring: a one-line description for listings."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def open(self) -> None:
        """Acquire resources. Raise :class:`~flowpipe.errors.StartupError` with one clear line."""

    def close(self) -> None:
        """Release resources. Called once, even after a failure in another stage."""


@dataclass
class InputProgress:
    """How far an input is, for the progress bar: units done of a known total (or None)."""

    packets: int
    done_bytes: int
    total_bytes: int | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Yielded by :meth:`Input.read` after some batches, to learn when they were shipped.

    ``token`` stands for everything the input yielded before it (a source's read positions).
    The pipeline calls :meth:`Input.acknowledge` with it once every output has shipped, or
    counted as dropped or rejected, every event the worker made of those batches.
    """

    token: Any


class Input(Stage):
    """Produces batches of packets (:class:`~flowpipe.packet.PacketBatch`) or of events.

    :meth:`read` runs in the input's own thread and yields batches until the source ends or
    :attr:`stopping` is set; it must check :attr:`stopping` at least every ``batch_size`` items or
    every half second. A live input that has no packets for a while yields an empty
    ``PacketBatch`` with ``clock`` set to the current time, about once a second, so that timeouts
    still expire. A problem that ends one source but not the run (a truncated file) is
    reported with ``self.context.fail``; one that prevents starting raises ``StartupError`` from
    :meth:`open`.

    An input that must not lose what it read (a queue it commits to, as Kafka) yields a
    :class:`Checkpoint` after batches and commits in :meth:`acknowledge`: at least once.
    """

    kind = "input"
    produces: ClassVar[str] = "packets"
    """``packets`` (PacketBatch, for decoders) or ``events`` (lists of events, for processors)."""

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self.stopping = threading.Event()

    @classmethod
    def makes(cls, config: SimpleNamespace) -> str:
        """What an input with these options produces: :attr:`produces`, unless an option decides
        (the ``kafka`` input's ``codec``)."""
        return cls.produces

    def read(self) -> Iterator[PacketBatch | list[Event] | Checkpoint]:
        """Yield batches (and checkpoints) until the source is exhausted or :attr:`stopping` is set."""
        raise NotImplementedError

    def acknowledge(self, token: Any) -> None:
        """Everything yielded before the :class:`Checkpoint` holding ``token`` was shipped.

        Called from the outputs' threads, perhaps two at once and not in order, and not for
        every checkpoint: an acknowledgement covers every earlier checkpoint of this input.
        Keep it short and thread-safe (record the token; commit from :meth:`read`'s thread).
        Never called for what followed a batch the pipeline gave up on at its shutdown timeout.
        """

    def stop(self) -> None:
        """Ask :meth:`read` to end soon (called from another thread, e.g. on SIGINT)."""
        self.stopping.set()

    def progress(self) -> InputProgress | None:
        """Progress for the terminal's progress bar, or None where the total is unknown."""
        return None


class Decoder(Stage):
    """Turns what the previous stage forwards into events and into items for the next decoder.

    Decoders form a chain in the worker (for example ``ip -> tcp -> protocol``). Each receives
    the previous decoder's forwarded batch (the first one receives PacketBatch objects), appends
    finished events to ``events`` and returns the batch the next decoder consumes, or None.
    """

    kind = "decoder"
    consumes: ClassVar[str] = "packets"
    """What this decoder takes: ``packets`` for the first in a chain, else a previous one's ``produces``."""
    produces: ClassVar[str] = ""
    """What :meth:`decode` forwards to a following decoder (empty: nothing)."""
    default_order: ClassVar[int | None] = None
    """Position in the default chain used when a pipeline has no ``decoders`` section (None: not in it)."""

    downstream: bool = False
    """Set by the pipeline: whether a later decoder consumes what this one forwards."""

    def decode(self, batch: Any, events: list[Event]) -> Any:
        """Decode one batch; append events to ``events``; return the forwarded batch or None."""
        raise NotImplementedError

    def flush(self, events: list[Event]) -> Any:
        """End of input: finish everything in flight into ``events``; return a last forwarded batch."""
        return None

    def advance(self, now: float, events: list[Event]) -> Any:
        """Time passed without packets (a live input idles): expire what timed out by ``now``.

        Append events for what expired and return a batch to forward, or None. Decoders must
        also expire by the packets' own timestamps in :meth:`decode`: time comes from the
        packets, and this call only stands in for packets that did not come.
        """
        return None

    def splitter(self, ways: int, link_type: int) -> Splitter | None:
        """For ``pipeline.workers``, asked of the first decoder of a chain: a :class:`Splitter`
        that shares frames of ``link_type`` between ``ways`` worker processes so that each gets
        whole flows; None (the default) when this decoder cannot."""
        return None


class Splitter(Protocol):
    """Shares packets out between the worker processes (see :meth:`Decoder.splitter`)."""

    def split(self, batch: PacketBatch) -> list[PacketBatch]:
        """One batch per worker (empty ones included), each flow whole in one of them."""
        ...

    def release(self) -> list[PacketBatch]:
        """End of input: one batch per worker of what the splitter still holds."""
        ...


class Processor(Stage):
    """Enriches, changes or filters events, a batch at a time, in the worker.

    The pipeline calls :meth:`apply`, which honours the common ``when:`` option and calls
    :meth:`process`. A processor that drops events counts each as ``dropped.<reason>`` in
    ``self.context.counters``, so that ``in`` = ``out`` + drops.
    """

    kind = "processor"
    common_options = (
        Option(
            "when",
            Condition(),
            None,
            "process only the events for which this condition holds; the others pass unchanged",
        ),
    )

    def apply(self, events: list[Event]) -> list[Event]:
        """The batch after this processor: :meth:`process` on the events ``when`` selects.

        Without ``when`` every event goes through :meth:`process` in one call. With it, each run
        of consecutive selected events goes through :meth:`process` on its own and its result
        takes the run's place, so the batch keeps its order.
        """
        when = self.config.when
        if when is None:
            return self.process(events)
        result: list[Event] = []
        run: list[Event] = []
        for event in events:
            if when(event):
                run.append(event)
                continue
            if run:
                result.extend(self.process(run))
                run = []
            result.append(event)
        if not run:
            return result
        if not result:  # every event selected
            return self.process(run)
        result.extend(self.process(run))
        return result

    def process(self, events: list[Event]) -> list[Event]:
        """Return the events to pass on (the same list, changed in place, or a new one)."""
        raise NotImplementedError


class Output(Stage):
    """Ships events (or raw packets). Runs in its own thread, fed through its own bounded queue.

    :meth:`write` delivers one batch or raises :class:`~flowpipe.errors.OutputError`. The pipeline
    retries retryable errors with exponential backoff (``backoff.init`` to ``backoff.max``) and
    never drops events silently: a batch still undelivered at shutdown is counted as
    ``dropped.undelivered``. Events are shared between outputs: never modify them.

    A pipeline with ``decoders: []`` sends its packet inputs' :class:`~flowpipe.packet.PacketBatch`
    objects to the outputs instead of events (shared too, counted in packets); the configuration
    check lets only an output whose :meth:`takes` includes ``packets`` be part of it.
    """

    kind = "output"
    accepts: ClassVar[tuple[str, ...]] = ("events",)
    """What :meth:`write` can take: ``events`` (lists of events) and/or ``packets`` (PacketBatch)."""
    packet_codecs: ClassVar[tuple[str, ...]] = ()
    """Values of the ``codec`` option that write packets: with one of them the output takes
    packets only, with any other codec events only."""
    common_options = (
        Option(
            "on_full",
            Choice("block", "drop"),
            "block",
            "when this output's queue is full: block the pipeline (backpressure) or drop and count",
        ),
        Option(
            "backoff",
            Struct(
                Option("init", Duration(), "1s", "first wait after a failed write"),
                Option("max", Duration(), "60s", "longest wait between retries"),
            ),
            description="retry timing after a failed write (doubles each time, with jitter)",
        ),
    )

    @classmethod
    def takes(cls, config: SimpleNamespace) -> tuple[str, ...]:
        """What this output takes with these options: :attr:`accepts`, narrowed by a packet codec."""
        if not cls.packet_codecs:
            return cls.accepts
        if getattr(config, "codec", None) in cls.packet_codecs:
            return ("packets",)
        return tuple(kind for kind in cls.accepts if kind != "packets")

    def write(self, events: list[Event] | PacketBatch) -> int | None:
        """Deliver ``events``; raise OutputError when they were not (all) delivered.

        Return None, or how many of ``events`` were refused for good (sent to a dead-letter
        file, say): they count as ``dropped.rejected``, the others as delivered. A partial
        failure worth retrying raises ``OutputError(remaining=[...], rejected=N)``. An output
        that takes packets gets a PacketBatch instead of a list (its ``remaining`` is a
        PacketBatch too).
        """
        raise NotImplementedError

    def batching(self) -> tuple[int, float]:
        """``(events, seconds)``: join queued batches into writes of up to ``events`` events, waiting
        at most ``seconds`` for more once a batch is there (a bulk API's size and flush interval).
        ``(0, 0.0)``, the default: one write per batch."""
        return (0, 0.0)

    def flush(self) -> None:
        """Push out anything buffered (called when the queue runs empty, before an input's checkpoint
        behind what was written is passed on, and at shutdown)."""
