"""The ``flowpipe`` command: subcommands come from plugins (flowpipe's own included)."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import EXIT_CONFIG, FlowpipeError
from .registry import Registry

__all__ = ["main"]

EXIT_BROKEN_PIPE = 141  # what a shell reports for a program ended by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Run ``flowpipe`` with ``argv``; return the exit status."""
    try:
        registry = Registry.default()
        commands = {
            name: info.cls(registry)
            for name, info in ((info.name, info) for info in registry.all() if info.kind == "command")
        }
    except FlowpipeError as error:
        print(f"flowpipe: {error}", file=sys.stderr)
        return error.exit_status
    parser = argparse.ArgumentParser(
        prog="flowpipe", description="Sniff packets, decode protocols, ship events."
    )
    parser.add_argument("--version", action="version", version=f"flowpipe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in sorted(commands.items()):
        command.configure(subparsers.add_parser(name, help=command.help, description=command.help))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        return commands[args.command].run(args)
    except FlowpipeError as error:
        for line in str(error).splitlines():
            print(f"flowpipe: {line}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `flowpipe plugins | head`: the reader left, say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
