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

from .analyzer import (  # noqa: E402
    TO_CLIENT,
    TO_SERVER,
    Analyzer,
    AppPacket,
    FlowInfo,
    IcmpAnalyzer,
    StreamBuffer,
    TcpAnalyzer,
    UdpAnalyzer,
)
from .conditions import Condition, compile_condition  # noqa: E402
from .errors import ConfigError, OutputError, PluginError, StartupError  # noqa: E402
from .event import Event, delete_field, format_timestamp, get_field, has_field, set_field  # noqa: E402
from .options import (  # noqa: E402
    AnyValue,
    Bool,
    ByteSize,
    Choice,
    Duration,
    FieldPath,
    Float,
    Int,
    ListOf,
    MapOf,
    Option,
    OptionError,
    Ports,
    Str,
    Struct,
)
from .packet import Packet, PacketBatch  # noqa: E402
from .stage import (  # noqa: E402
    Checkpoint,
    Decoder,
    Input,
    InputProgress,
    Output,
    Processor,
    Splitter,
    Stage,
    StageContext,
)
from .transactions import Message, Transactions  # noqa: E402

__all__ = [
    "TO_CLIENT",
    "TO_SERVER",
    "Analyzer",
    "AnyValue",
    "AppPacket",
    "Bool",
    "ByteSize",
    "Checkpoint",
    "Choice",
    "Condition",
    "ConfigError",
    "Decoder",
    "Duration",
    "Event",
    "FieldPath",
    "Float",
    "FlowInfo",
    "IcmpAnalyzer",
    "Input",
    "InputProgress",
    "Int",
    "ListOf",
    "MapOf",
    "Message",
    "Option",
    "OptionError",
    "Output",
    "OutputError",
    "Packet",
    "PacketBatch",
    "PluginError",
    "Ports",
    "Processor",
    "Splitter",
    "Stage",
    "StageContext",
    "StartupError",
    "Str",
    "StreamBuffer",
    "Struct",
    "TcpAnalyzer",
    "Transactions",
    "UdpAnalyzer",
    "__version__",
    "compile_condition",
    "delete_field",
    "format_timestamp",
    "get_field",
    "has_field",
    "hookimpl",
    "set_field",
]
