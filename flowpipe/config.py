"""Pipeline files: YAML -> a validated :class:`PipelineSpec`.

Loading keeps the file, line and column of every key, so each error names where it is:
``pipeline.yml:12:5: inputs.0.snaplen: expected an integer, got 'abc'``. Key paths are dotted,
with list positions as numbers, the same form ``-E`` overrides use.

Order of work: parse YAML (syntax errors, duplicate keys) -> substitute ``${VAR}`` and
``${VAR:default}`` in string values -> apply ``-E path=value`` overrides -> load local plugins ->
validate every section and stage against its declared options.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from .errors import ConfigError, PluginError
from .options import (
    ByteSize,
    Choice,
    Duration,
    Int,
    Option,
    OptionError,
    Str,
    Struct,
    build_namespace,
    validate_options,
)
from .registry import PluginInfo, Registry
from .stage import Decoder
from .suggest import did_you_mean

__all__ = [
    "Document",
    "Location",
    "PipelineSpec",
    "StageSpec",
    "apply_overrides",
    "load_document",
    "load_pipeline",
    "validate_pipeline",
]

KeyPath = tuple[str | int, ...]

PIPELINE_OPTIONS = (
    Option("batch_size", Int(1, 65536), 256, "items per batch read by inputs"),
    Option(
        "queue",
        Struct(
            Option("batches", Int(1), 64, "capacity of each queue in batches"),
            Option("bytes", ByteSize(), "64MiB", "capacity of each queue in bytes"),
        ),
        description="bounds of every queue between stages",
    ),
    Option("workers", Int(1), 1, "decoding processes, each owning the flows a symmetric hash gives it"),
    Option(
        "shutdown_timeout",
        Duration(),
        "30s",
        "longest wait, once inputs ended or a signal came, for queues to drain and outputs to flush",
    ),
)
LOGGING_OPTIONS = (
    Option("level", Choice("debug", "info", "warning", "error"), "info", "least severe level logged"),
    Option("format", Choice("text", "json"), "text", "log line format on stderr"),
)
METRICS_OPTIONS = (
    Option("period", Duration(), "30s", "log all counters every period (0 turns it off)"),
    Option("http", Str(), None, "host:port to serve Prometheus metrics on /metrics (off when null)"),
)
SECTIONS = {
    "pipeline": PIPELINE_OPTIONS,
    "logging": LOGGING_OPTIONS,
    "metrics": METRICS_OPTIONS,
}
STAGE_LISTS = {"inputs": "input", "decoders": "decoder", "processors": "processor", "outputs": "output"}
TOP_LEVEL = ("inputs", "decoders", "processors", "outputs", "pipeline", "plugins", "logging", "metrics")


def format_path(path: KeyPath) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file position, or a command-line override (line 0)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        if self.line == 0:
            return f"command line ({self.file})"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class Document:
    """Plain data parsed from YAML, with the location of every key path."""

    file: str
    data: Any
    locations: dict[KeyPath, Location] = field(default_factory=dict)

    def locate(self, path: KeyPath) -> Location:
        """The location of ``path``, or of its nearest ancestor that has one."""
        while path:
            if path in self.locations:
                return self.locations[path]
            path = path[:-1]
        return self.locations.get((), Location(self.file, 1, 1))

    def error(self, path: KeyPath, message: str) -> str:
        return f"{self.locate(path)}: {format_path(path)}: {message}"


# -- parsing -------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::((?:%\{[^}]*\}|[^}])*))?\}")
"""``${NAME}``, ``${NAME:default}`` (a default may hold ``%{...}`` format references) and ``$${`` escapes."""
_PLAIN_SCALARS = (int, float, bool, type(None))


def _substitute(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        missing.append(name)
        return match.group(0)

    return _VARIABLE.sub(replace, text), missing


class _Builder:
    """Turns a composed YAML node tree into plain data, recording locations and errors."""

    def __init__(self, file: str, loader: yaml.SafeLoader, environ: Mapping[str, str]) -> None:
        self.file = file
        self.loader = loader
        self.environ = environ
        self.locations: dict[KeyPath, Location] = {}
        self.errors: list[str] = []

    def location(self, node: yaml.Node) -> Location:
        mark = node.start_mark
        return Location(self.file, mark.line + 1, mark.column + 1)

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.locations.setdefault(path, self.location(node))
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # merge keys (<<)
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    self.errors.append(
                        f"{self.location(key_node)}: {format_path(path)}: keys must be scalars"
                    )
                    continue
                key = str(key)
                if key in result:
                    self.errors.append(
                        f"{self.location(key_node)}: {format_path((*path, key))}: duplicate key"
                    )
                self.locations[(*path, key)] = self.location(key_node)
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str) and "$" in value:
            value = self.expand(value, node, path)
        return value

    def expand(self, value: str, node: yaml.ScalarNode, path: KeyPath) -> Any:
        expanded, missing = _substitute(value, self.environ)
        for name in missing:
            self.errors.append(
                f"{self.location(node)}: {format_path(path)}: environment variable {name} is not set "
                f"(write ${{{name}:default}} for a default)"
            )
        whole_reference = _VARIABLE.fullmatch(value) is not None and not value.startswith("$$")
        if whole_reference and node.style is None and expanded:
            try:
                typed = yaml.safe_load(expanded)
            except yaml.YAMLError:  # not YAML on its own (e.g. "[" or "a: b: c"): keep the text
                return expanded
            if isinstance(typed, _PLAIN_SCALARS):
                return typed
        return expanded


def load_document(path: str | Path, environ: Mapping[str, str] | None = None) -> Document:
    """Parse a YAML pipeline file, substituting environment variables in string values."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{file}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{file}: not UTF-8 text (byte {error.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        builder = _Builder(file, loader, os.environ if environ is None else environ)
        data = builder.build(node, ()) if node is not None else {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        problem = error.problem or error.context
        start = error.context_mark
        if error.problem and error.context and start is not None:  # e.g. where an unclosed quote began
            problem += f" ({error.context} at line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: invalid YAML: {error}") from None
    finally:
        loader.dispose()
    if builder.errors:
        raise ConfigError(builder.errors)
    return Document(file, data, builder.locations)


# -- command-line overrides ----------------------------------------------------------------------


def _record_locations(document: Document, path: KeyPath, value: Any, location: Location) -> None:
    document.locations[path] = location
    if isinstance(value, dict):
        for key, item in value.items():
            _record_locations(document, (*path, key), item, location)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _record_locations(document, (*path, index), item, location)


def apply_overrides(document: Document, overrides: list[str]) -> None:
    """Apply ``-E path.to.key=value`` overrides (values parsed as YAML), as Beats do."""
    errors: list[str] = []
    for override in overrides:
        key, sep, text = override.partition("=")
        location = Location(f"-E {override}", 0, 0)
        if not sep or not key.strip():
            errors.append(f"{location}: expected -E path.to.key=value")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        path: KeyPath = tuple(int(part) if part.isdigit() else part for part in key.strip().split("."))
        if not isinstance(document.data, dict):
            document.data = {}
        problem = _set_path(document.data, path, value)
        if problem:
            errors.append(f"{location}: {problem}")
            continue
        _record_locations(document, path, value, location)
        for depth in range(1, len(path)):  # mappings and list items the override created
            document.locations.setdefault(path[:depth], location)
    if errors:
        raise ConfigError(errors)


def _set_path(root: dict[str, Any], path: KeyPath, value: Any) -> str | None:
    node: Any = root
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        here = format_path(path[: depth + 1])
        empty_child: Any = {} if last or not isinstance(path[depth + 1], int) else []
        if isinstance(node, dict):
            key = str(part)
            if last:
                node[key] = value
            else:
                if node.get(key) is None:  # missing or null: create it; any other scalar is in the way
                    node[key] = empty_child
                node = node[key]
        elif isinstance(node, list):
            if not isinstance(part, int):
                return f"{here}: {format_path(path[:depth])} is a list; use a position number"
            if part > len(node):
                return f"{here}: position {part} is past the end of a list of {len(node)}"
            if part == len(node):
                node.append(value if last else empty_child)
            elif last:
                node[part] = value
            elif node[part] is None:
                node[part] = empty_child
            node = node[part]
        else:
            return f"{here}: {format_path(path[:depth])} is not a mapping"
    return None


# -- validation ----------------------------------------------------------------------------------


@dataclass
class StageSpec:
    """One validated stage of a pipeline."""

    kind: str
    type: str
    id: str
    info: PluginInfo
    config: SimpleNamespace
    location: Location

    def create(self, context: Any) -> Any:
        """Instantiate the stage class with its validated options."""
        return self.info.cls(self.config, context)


@dataclass
class PipelineSpec:
    """A validated pipeline: stages in order, core settings, and where it came from."""

    path: Path
    inputs: list[StageSpec]
    decoders: list[StageSpec]
    processors: list[StageSpec]
    outputs: list[StageSpec]
    settings: SimpleNamespace
    logging: SimpleNamespace
    metrics: SimpleNamespace
    plugins: list[str]

    def stages(self) -> Iterator[StageSpec]:
        yield from self.inputs
        yield from self.decoders
        yield from self.processors
        yield from self.outputs


def _section(document: Document, name: str, errors: list[str]) -> SimpleNamespace:
    options = SECTIONS[name]
    values = document.data.get(name)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        errors.append(document.error((name,), "expected a mapping"))
        values = {}
    problems = validate_options(options, values)
    for problem in problems:
        errors.append(document.error((name, *problem.path), problem.message))
    if problems:
        return build_namespace(options, {})
    return build_namespace(options, values)


def _stage_list(
    document: Document, key: str, registry: Registry, errors: list[str]
) -> list[StageSpec] | None:
    kind = STAGE_LISTS[key]
    entries = document.data.get(key)
    if entries is None:
        return None
    if not isinstance(entries, list):
        errors.append(document.error((key,), f"expected a list of {kind}s, each with a 'type'"))
        return []
    specs: list[StageSpec] = []
    ids: dict[str, KeyPath] = {}
    type_counts: dict[str, int] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry.get("id") is None:
            type_counts[entry["type"]] = type_counts.get(entry["type"], 0) + 1
    for index, entry in enumerate(entries):
        path: KeyPath = (key, index)
        if not isinstance(entry, dict):
            errors.append(document.error(path, f"expected a mapping with a 'type' key, got {entry!r}"))
            continue
        type_name = entry.get("type")
        if type_name is None:
            errors.append(document.error(path, f"missing required key 'type' (the {kind} plugin)"))
            continue
        if not isinstance(type_name, str):
            errors.append(document.error((*path, "type"), f"expected a plugin name, got {type_name!r}"))
            continue
        info = registry.get(kind, type_name)
        if info is None:
            known = registry.names(kind)
            hint = did_you_mean(type_name, known)
            listing = f"; known {kind}s: {', '.join(known)}" if known else ""
            errors.append(
                document.error((*path, "type"), f"unknown {kind} type {type_name!r}{hint}{listing}")
            )
            continue
        stage_id = entry.get("id")
        if stage_id is None:
            stage_id = type_name if type_counts[type_name] == 1 else f"{type_name}#{index}"
        elif not isinstance(stage_id, str) or not stage_id:
            errors.append(document.error((*path, "id"), "expected a non-empty string"))
            continue
        if stage_id in ids:
            errors.append(
                document.error(
                    (*path, "id"), f"id {stage_id!r} is already used by {format_path(ids[stage_id])}"
                )
            )
            continue
        ids[stage_id] = path
        options = info.cls.schema(registry)
        values = {k: v for k, v in entry.items() if k not in ("type", "id")}
        problems = validate_options(options, values)
        for problem in problems:
            errors.append(document.error((*path, *problem.path), problem.message))
        if problems:
            continue
        try:
            config = build_namespace(options, values)
        except OptionError as problem:  # a Struct converter found more than validation did
            errors.append(document.error((*path, *problem.path), problem.message))
            continue
        problems = info.cls.check_config(config)
        for problem in problems:
            errors.append(document.error((*path, *problem.path), problem.message))
        if problems:
            continue
        specs.append(StageSpec(kind, type_name, stage_id, info, config, document.locate(path)))
    return specs


def _default_decoders(registry: Registry, document: Document) -> list[StageSpec]:
    infos = [registry.get("decoder", name) for name in registry.names("decoder")]
    ordered = sorted(
        (info for info in infos if info is not None and info.cls.default_order is not None),
        key=lambda info: info.cls.default_order,
    )
    location = Location(document.file, 1, 1)
    return [
        StageSpec(
            "decoder", info.name, info.name, info, build_namespace(info.cls.schema(registry), {}), location
        )
        for info in ordered
    ]


def _check_workers(document: Document, decoders: list[StageSpec], errors: list[str]) -> None:
    """Worker processes need decoders, the first of which can share packets out between them."""
    if not decoders:
        errors.append(
            document.error(
                ("pipeline", "workers"),
                "worker processes decode packets, and this pipeline has no decoders (decoders: []); set 1",
            )
        )
        return
    first = decoders[0]
    if first.info.cls.splitter is Decoder.splitter:
        errors.append(
            document.error(
                ("pipeline", "workers"),
                f"the first decoder, {first.type!r}, cannot share packets out between worker processes "
                "(it has no splitter); set 1",
            )
        )


def _check_decoder_chain(document: Document, decoders: list[StageSpec], errors: list[str]) -> None:
    offered = "packets"
    previous = "the inputs"
    for index, spec in enumerate(decoders):
        consumes = spec.info.cls.consumes
        if consumes != offered:
            errors.append(
                document.error(
                    ("decoders", index, "type"),
                    f"decoder {spec.type!r} consumes {consumes!r} but {previous} "
                    f"produce{'s' if index else ''} {offered or 'nothing'!r}",
                )
            )
            return
        offered = spec.info.cls.produces
        previous = f"decoder {spec.type!r}"


def _packet_outputs(registry: Registry) -> str:
    """The outputs (and codecs) that take packets, for error messages."""
    found = []
    for name in registry.names("output"):
        info = registry.get("output", name)
        if info is None or "packets" not in info.cls.accepts:
            continue
        codecs = info.cls.packet_codecs
        found.append(f"{name} with codec {' or '.join(codecs)}" if codecs else name)
    return ", ".join(found) or "none installed"


def _check_output_items(
    document: Document,
    registry: Registry,
    stage_lists: dict[str, list[StageSpec] | None],
    decoders: list[StageSpec],
    errors: list[str],
) -> None:
    """With ``decoders: []`` packet inputs send raw packets to the outputs: no processor may be
    configured then, and every output must take packets; an output that takes packets only (a
    packet codec) must not be given events."""
    inputs = stage_lists["inputs"] or []
    packets = not decoders and any(spec.info.cls.makes(spec.config) == "packets" for spec in inputs)
    events = bool(decoders) or any(spec.info.cls.makes(spec.config) != "packets" for spec in inputs)
    if packets and stage_lists["processors"]:
        errors.append(
            document.error(
                ("processors",),
                "processors take events, but with decoders: [] the packet inputs send raw packets "
                "to the outputs (remove the processors, or add decoders)",
            )
        )
    for index, spec in enumerate(stage_lists["outputs"] or []):
        cls = spec.info.cls
        takes = cls.takes(spec.config)
        codec = getattr(spec.config, "codec", None)
        path = ("outputs", index, "codec" if ("outputs", index, "codec") in document.locations else "type")
        described = f"output {spec.id!r}"
        if "packets" in cls.accepts and codec is not None:
            described += f" with codec {codec!r}"
        if packets and "packets" not in takes:
            errors.append(
                document.error(
                    path,
                    f"{described} cannot take the raw packets that decoders: [] sends to the outputs; "
                    f"outputs that can: {_packet_outputs(registry)}",
                )
            )
        elif events and "events" not in takes:
            errors.append(
                document.error(
                    path,
                    f"{described} takes packets, not events: give the pipeline decoders: [] "
                    "to send its packet inputs' raw packets to the outputs",
                )
            )


def validate_pipeline(document: Document, registry: Registry) -> PipelineSpec:
    """Validate a parsed document against the registry; raise ConfigError listing every problem."""
    data = document.data
    if data is None:
        data = document.data = {}
    if not isinstance(data, dict):
        raise ConfigError(document.error((), "expected a mapping with 'inputs' and 'outputs'"))
    errors: list[str] = []
    for key in data:
        if key not in TOP_LEVEL:
            hint = did_you_mean(key, TOP_LEVEL, known="keys")
            errors.append(document.error((key,), f"unknown top-level key{hint}"))

    plugins = data.get("plugins") or []
    base_dir = Path(document.file).resolve().parent
    if not isinstance(plugins, list) or not all(isinstance(item, str) for item in plugins):
        errors.append(document.error(("plugins",), "expected a list of module paths or names"))
        plugins = []
    plugin_errors = []
    for index, plugin in enumerate(plugins):
        try:
            registry.load_local([plugin], base_dir)
        except PluginError as error:
            plugin_errors.append(document.error(("plugins", index), str(error)))
    if plugin_errors:  # stages of a plugin that failed to load would each add a misleading "unknown type"
        raise ConfigError(errors + plugin_errors)

    sections: dict[str, SimpleNamespace] = {}
    stage_lists: dict[str, list[StageSpec] | None] = {}
    position = {key: index for index, key in enumerate(data)}
    try:  # in file order, so errors come out in file order
        for name in sorted((*SECTIONS, *STAGE_LISTS), key=lambda name: position.get(name, -1)):
            if name in SECTIONS:
                sections[name] = _section(document, name, errors)
            else:
                stage_lists[name] = _stage_list(document, name, registry, errors)
    except PluginError as error:
        raise ConfigError(str(error)) from error

    for required in ("inputs", "outputs"):
        if required not in data:
            errors.append(document.error((), f"missing required section '{required}'"))
        elif data[required] is None or data[required] == []:
            errors.append(document.error((required,), f"at least one {STAGE_LISTS[required]} is needed"))

    decoders = stage_lists["decoders"]
    if decoders is None:
        decoders = _default_decoders(registry, document)
    _check_decoder_chain(document, decoders, errors)
    if sections["pipeline"].workers > 1:
        _check_workers(document, decoders, errors)
    if not errors:
        _check_output_items(document, registry, stage_lists, decoders, errors)
    if errors:
        raise ConfigError(errors)
    return PipelineSpec(
        path=Path(document.file),
        inputs=stage_lists["inputs"] or [],
        decoders=decoders,
        processors=stage_lists["processors"] or [],
        outputs=stage_lists["outputs"] or [],
        settings=sections["pipeline"],
        logging=sections["logging"],
        metrics=sections["metrics"],
        plugins=plugins,
    )


def load_pipeline(
    path: str | Path,
    registry: Registry,
    overrides: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PipelineSpec:
    """Parse, substitute, override and validate a pipeline file."""
    document = load_document(path, environ)
    apply_overrides(document, overrides or [])
    return validate_pipeline(document, registry)
