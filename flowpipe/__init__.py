"""flowpipe: a plugin-based packet sniffer and event processor.

This module is the public API for plugin authors::

    from flowpipe import hookimpl, Input, Decoder, Processor, Output, Option, Int, Str

    @hookimpl
    def flowpipe_add_processors():
        return {"my_processor": MyProcessor}
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("flowpipe")
"""Marks a function in a plugin module as a flowpipe hook implementation."""

from .errors import ConfigError, OutputError, PluginError, StartupError  # noqa: E402
from .event import Event, delete_field, format_timestamp, get_field, has_field, set_field  # noqa: E402
from .options import (  # noqa: E402
    AnyValue,
    Bool,
    ByteSize,
    Choice,
    Duration,
    Float,
    Int,
    ListOf,
    MapOf,
    Option,
    OptionError,
    Str,
    Struct,
)
from .packet import Packet, PacketBatch  # noqa: E402
from .stage import Analyzer, Decoder, Input, InputProgress, Output, Processor, Stage, StageContext  # noqa: E402

__all__ = [
    "Analyzer",
    "AnyValue",
    "Bool",
    "ByteSize",
    "Choice",
    "ConfigError",
    "Decoder",
    "Duration",
    "Event",
    "Float",
    "Input",
    "InputProgress",
    "Int",
    "ListOf",
    "MapOf",
    "Option",
    "OptionError",
    "Output",
    "OutputError",
    "Packet",
    "PacketBatch",
    "PluginError",
    "Processor",
    "Stage",
    "StageContext",
    "StartupError",
    "Str",
    "Struct",
    "__version__",
    "delete_field",
    "format_timestamp",
    "get_field",
    "has_field",
    "hookimpl",
    "set_field",
]
