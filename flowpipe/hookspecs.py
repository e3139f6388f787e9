"""Every hook a flowpipe plugin can implement, in one place.

A plugin is a module (or object) with functions marked ``@flowpipe.hookimpl``. Built-in plugins
are registered exactly as third-party ones: through the ``flowpipe`` entry-point group.

Contribution hooks (``flowpipe_add_*``) are *collected*: every plugin's result is gathered, and a
name claimed by two plugins is an error that names both. They are called once, when the registry
is built, and must not have side effects beyond returning their mapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .analyzer import Analyzer
    from .commands import Command
    from .pipeline import Pipeline
    from .stage import Decoder, Input, Output, Processor
    from .summary import Summary

hookspec = pluggy.HookspecMarker("flowpipe")


# -- stages --------------------------------------------------------------------------------------


@hookspec
def flowpipe_add_inputs() -> dict[str, type[Input]]:
    """Return input classes by type name (the ``type:`` of an ``inputs:`` entry).

    Collected from every plugin. Must not open devices or files: that happens in ``Input.open``.
    """


@hookspec
def flowpipe_add_decoders() -> dict[str, type[Decoder]]:
    """Return decoder classes by type name (the ``type:`` of a ``decoders:`` entry).

    Collected from every plugin.
    """


@hookspec
def flowpipe_add_analyzers() -> dict[str, type[Analyzer]]:
    """Return application-protocol analyzer classes by protocol name (``http``, ``dns``, ...).

    Collected from every plugin; used by the ``protocol`` decoder.
    """


@hookspec
def flowpipe_add_processors() -> dict[str, type[Processor]]:
    """Return processor classes by type name (the ``type:`` of a ``processors:`` entry).

    Collected from every plugin.
    """


@hookspec
def flowpipe_add_outputs() -> dict[str, type[Output]]:
    """Return output classes by type name (the ``type:`` of an ``outputs:`` entry).

    Collected from every plugin. Must not connect anywhere: that happens in ``Output.open``.
    """


# -- command line --------------------------------------------------------------------------------


@hookspec
def flowpipe_add_commands() -> dict[str, type[Command]]:
    """Return ``flowpipe`` subcommands by name. Collected from every plugin."""


# -- pipeline lifecycle --------------------------------------------------------------------------


@hookspec
def flowpipe_pipeline_started(pipeline: Pipeline) -> None:
    """Called once every stage is open and the pipeline threads run.

    Called for every plugin; must return quickly and must not raise.
    """


@hookspec
def flowpipe_pipeline_stopped(pipeline: Pipeline, summary: Summary) -> None:
    """Called after the pipeline drained and every stage closed, before the summary is printed.

    Called for every plugin; must not raise.
    """


KIND_HOOKS: dict[str, str] = {
    "input": "flowpipe_add_inputs",
    "decoder": "flowpipe_add_decoders",
    "analyzer": "flowpipe_add_analyzers",
    "processor": "flowpipe_add_processors",
    "output": "flowpipe_add_outputs",
    "command": "flowpipe_add_commands",
}
"""The contribution hook of each kind of plugin."""

__all__ = ["KIND_HOOKS", "hookspec"]
