"""flowpipe's own subcommands (run, check, plugins, new-plugin), contributed through the plugin hook.

They are registered as the plugin ``commands`` of the ``flowpipe`` entry-point group, the same
way a third-party package adds a subcommand.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, TextIO

from . import hookimpl
from .config import PipelineSpec, load_pipeline
from .errors import EXIT_CONFIG, EXIT_OK
from .logs import configure_logging
from .metrics import MetricsServer
from .pipeline import Pipeline
from .progress import ProgressBar
from .registry import KINDS, Registry
from .scaffold import TRANSPORTS, Skeleton, validate_name, write_skeleton

__all__ = ["CheckCommand", "Command", "NewPluginCommand", "PluginsCommand", "RunCommand"]

DEFAULT_CONFIG = "pipeline.yml"


class Command:
    """A ``flowpipe`` subcommand: declares its arguments, then runs with the parsed ones."""

    help: ClassVar[str] = ""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments to its parser."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit status."""
        raise NotImplementedError


def _pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"pipeline file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "-E",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. -E inputs.0.files=x.pcap (repeatable)",
    )


def _load(registry: Registry, args: argparse.Namespace) -> PipelineSpec:
    return load_pipeline(args.config, registry, args.overrides)


class CheckCommand(Command):
    help = "validate a pipeline file without running it"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        _pipeline_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        spec = _load(self.registry, args)
        counts = ", ".join(
            f"{len(stages)} {name}"
            for name, stages in (
                ("inputs", spec.inputs),
                ("decoders", spec.decoders),
                ("processors", spec.processors),
                ("outputs", spec.outputs),
            )
        )
        print(f"{args.config}: OK ({counts})")
        return EXIT_OK


class RunCommand(Command):
    help = "run a pipeline until its inputs end or a signal stops it"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        _pipeline_arguments(parser)
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="show a progress bar (default: when stderr is a terminal)",
        )

    def run(self, args: argparse.Namespace) -> int:
        spec = _load(self.registry, args)
        configure_logging(spec.logging.level, spec.logging.format)
        pipeline = Pipeline(spec, self.registry)
        show_progress = sys.stderr.isatty() if args.progress is None else args.progress
        progress = ProgressBar(sys.stderr, pipeline.inputs) if show_progress else None
        metrics_server = (
            MetricsServer(spec.metrics.http, pipeline.all_counters) if spec.metrics.http else None
        )
        periodic = _PeriodicMetrics(pipeline, spec.metrics.period)
        _install_signal_handlers(pipeline, progress)

        def tick() -> None:
            if progress is not None:
                progress.update()
            periodic.tick()

        if metrics_server is not None:
            metrics_server.start()
            logging.getLogger("flowpipe").info("metrics on http://%s/metrics", spec.metrics.http)
        _tune_garbage_collection()
        try:
            summary = pipeline.run(tick)
        finally:
            if progress is not None:
                progress.finish()
            if metrics_server is not None:
                metrics_server.stop()
        print(summary.render(), file=sys.stderr)
        return summary.exit_status


def _tune_garbage_collection() -> None:
    """Fewer, cheaper cyclic collections for a run: what start-up made (modules, plugins,
    configuration) lives to the end, so it leaves the collector's scans (and is not copied into
    worker processes by the collector's writes); and the youngest generation is collected every
    100,000 allocations instead of 700: decoding allocates many short-lived objects and few
    cycles, and counting them costs 4-8 % of a full pipeline's CPU with the defaults (28 % in a
    SYN flood's flow table)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


class _PeriodicMetrics:
    """Logs every counter once per ``metrics.period`` (Beats' periodic metrics line)."""

    def __init__(self, pipeline: Pipeline, period: float) -> None:
        self.pipeline = pipeline
        self.period = period
        self.next_at = time.monotonic() + period
        self.log = logging.getLogger("flowpipe.metrics")

    def tick(self) -> None:
        if self.period <= 0 or time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.period
        parts = []
        for counters in self.pipeline.all_counters():
            values = " ".join(f"{name}={value}" for name, value in sorted(counters.snapshot().items()))
            if values:
                parts.append(f"{counters.kind}:{counters.owner}[{values}]")
        self.log.info("metrics: %s", " ".join(parts))


def _install_signal_handlers(pipeline: Pipeline, progress: ProgressBar | None) -> None:
    received: list[str] = []  # signals, not pipeline.stop_requested: a failing worker also stops

    def handle(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) > 1:  # os.write: the handler may interrupt a write to sys.stderr
            os.write(2, f"\nflowpipe: second {name}: exiting at once\n".encode())
            os._exit(128 + signum)
        if progress is not None:
            progress.finish()
        logging.getLogger("flowpipe").warning("%s received: stopping inputs, draining", name)
        pipeline.request_stop()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


class PluginsCommand(Command):
    help = "list plugins, or show one plugin's options"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", help="show this plugin's description and options")
        parser.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="also load the local plugins named in this pipeline file",
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.config:  # validating the file loads the local plugins it names
            _load(self.registry, argparse.Namespace(config=args.config, overrides=[]))
        if args.name:
            return self._show(args.name, sys.stdout)
        infos = [info for info in self.registry.all() if info.kind != "command"]
        rows = [("KIND", "NAME", "PACKAGE", "VERSION", "DESCRIPTION")]
        rows += [
            (info.kind, info.name, info.provider.package, info.provider.version, info.cls.summary())
            for info in infos
        ]
        _print_table(rows, sys.stdout)
        return EXIT_OK

    def _show(self, name: str, out: TextIO) -> int:
        infos = [info for info in self.registry.find(name) if info.kind != "command"]
        if not infos:
            known = sorted({info.name for info in self.registry.all() if info.kind != "command"})
            print(f"flowpipe: no plugin named {name!r}; known: {', '.join(known)}", file=sys.stderr)
            return EXIT_CONFIG
        for number, info in enumerate(infos):
            if number:
                print(file=out)
            print(f"{info.kind} {info.name!r} from {info.provider.describe()}", file=out)
            doc = (info.cls.__doc__ or "").strip()
            if doc:
                print(f"\n{inspect.cleandoc(doc)}", file=out)
            options = info.cls.all_options()
            if not options:
                print("\noptions: none besides type and id", file=out)
                continue
            print(file=out)
            rows = [("OPTION", "TYPE", "DEFAULT", "DESCRIPTION")]
            for option in options:
                rows.append((option.name, option.type.name, option.default_text, option.description))
                for nested in getattr(option.type, "options", ()):
                    rows.append(
                        (
                            f"{option.name}.{nested.name}",
                            nested.type.name,
                            nested.default_text,
                            nested.description,
                        )
                    )
            _print_table(rows, out)
        return EXIT_OK


def _print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]
        print("  ".join(cells).rstrip(), file=out)


class NewPluginCommand(Command):
    help = "write an installable package skeleton for a new plugin (an analyzer)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--kind", required=True, choices=[kind for kind in KINDS if kind != "command"], help="plugin kind"
        )
        parser.add_argument("--name", required=True, help="plugin name, a lowercase identifier (myproto)")
        parser.add_argument("--transport", choices=TRANSPORTS, default="tcp", help="analyzer transport (tcp)")
        parser.add_argument(
            "--output", type=Path, default=Path("."), metavar="DIR", help="write flowpipe-NAME/ here (.)"
        )
        parser.add_argument("--force", action="store_true", help="overwrite the files of an existing folder")

    def run(self, args: argparse.Namespace) -> int:
        taken = {
            info.name: info.provider.describe() for info in self.registry.all() if info.kind == args.kind
        }
        skeleton = Skeleton(args.kind, validate_name(args.name, taken), args.transport)
        folder, files = write_skeleton(skeleton, args.output, force=args.force)
        print(f"wrote {folder}/: {', '.join(str(path.relative_to(folder)) for path in files)}")
        print(f"next: cd {folder} && pip install -e '.[test]' && pytest  (and read README.md)")
        return EXIT_OK


@hookimpl
def flowpipe_add_commands() -> dict[str, type[Command]]:
    return {
        "run": RunCommand,
        "check": CheckCommand,
        "plugins": PluginsCommand,
        "new-plugin": NewPluginCommand,
    }
