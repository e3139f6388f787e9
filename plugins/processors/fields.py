"""Field processors, as Beats has them: ``drop_fields``, ``add_fields``, ``add_tags`` and ``rename``.

Fields are dotted paths into nested events (``http.request.method``). Each processor changes the
events in place and passes every event on; what it could not do is counted (``missing``,
``failed``) and never raised.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from flowpipe import (
    AnyValue,
    Bool,
    Event,
    ListOf,
    MapOf,
    Option,
    OptionError,
    Processor,
    StageContext,
    Str,
    Struct,
    delete_field,
    get_field,
    hookimpl,
    set_field,
)
from flowpipe.event import get_path
from flowpipe.options import FieldPath

__all__ = ["AddFields", "AddTags", "DropFields", "Rename"]

_MISSING: Any = object()


class DropFields(Processor):
    """Remove fields from events (any but ``@timestamp``)."""

    options = (
        Option(
            "fields",
            ListOf(FieldPath(), min_items=1),
            required=True,
            description="the fields to remove (dotted paths; a mapping goes with everything in it)",
        ),
        Option("ignore_missing", Bool(), False, "true: a field an event lacks is not counted as missing"),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        return [
            OptionError("@timestamp cannot be dropped", ("fields", index))
            for index, field in enumerate(config.fields)
            if field == "@timestamp"
        ]

    def process(self, events: list[Event]) -> list[Event]:
        fields = self.config.fields
        missing = 0
        for event in events:
            for field in fields:
                if not delete_field(event, field):
                    missing += 1
        if missing and not self.config.ignore_missing:
            self.context.counters.add("missing", missing)
        return events


# -- add_fields ----------------------------------------------------------------------------------


def _expand(fields: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """``fields`` with dotted keys turned into nested mappings (``{a.b: 1}`` -> ``{a: {b: 1}}``)."""
    tree: dict[str, Any] = {}
    for key, value in fields.items():
        where = (*path, str(key))
        parts = str(key).split(".")
        if any(not part for part in parts):
            raise OptionError(f"invalid field name {key!r}: expected dotted names such as labels.env", where)
        if isinstance(value, Mapping):
            value = _expand(value, where)
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OptionError(f"{key!r} is inside a field that already has a value", where)
        existing = node.get(parts[-1], _MISSING)
        if existing is _MISSING:
            node[parts[-1]] = value
        elif isinstance(existing, dict) and isinstance(value, dict):
            _merge(existing, value)
        else:
            raise OptionError(f"field {key!r} is given twice", where)
    return tree


def _merge(target: dict[str, Any], tree: dict[str, Any]) -> None:
    """Add ``tree`` to ``target``: mappings are merged, other values replace what was there."""
    for key, value in tree.items():
        if type(value) is dict:
            existing = target.get(key)
            if type(existing) is dict:
                _merge(existing, value)
            else:
                target[key] = copy.deepcopy(value)
        elif type(value) is list:
            target[key] = copy.deepcopy(value)  # each event gets its own
        else:
            target[key] = value


class AddFields(Processor):
    """Add fields with fixed values (under ``fields`` unless ``target`` says otherwise, as in Beats)."""

    options = (
        Option(
            "fields",
            MapOf(AnyValue()),
            required=True,
            description="the fields and their values; nested mappings and dotted keys alike",
        ),
        Option("target", FieldPath(root=True), "fields", 'where the fields go ("" for the top of the event)'),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        if not config.fields:
            return [OptionError("expected at least one field", ("fields",))]
        try:
            _expand(config.fields, ("fields",))
        except OptionError as error:
            return [error]
        return []

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        tree = _expand(config.fields, ("fields",))
        for part in reversed(config.target.split(".") if config.target else []):
            tree = {part: tree}
        self.tree = tree
        """What is merged into every event, from its top."""

    def process(self, events: list[Event]) -> list[Event]:
        tree = self.tree
        for event in events:
            _merge(event, tree)
        return events


class AddTags(Processor):
    """Add tags to a list field (``tags`` unless ``target`` says otherwise), each tag once."""

    options = (
        Option("tags", ListOf(Str(nonempty=True), min_items=1), required=True, description="the tags to add"),
        Option("target", FieldPath(), "tags", "the list field that receives the tags"),
    )

    def process(self, events: list[Event]) -> list[Event]:
        tags = list(dict.fromkeys(self.config.tags))
        target = self.config.target
        failed = 0
        for event in events:
            existing = get_field(event, target, _MISSING)
            if existing is _MISSING or existing is None:
                set_field(event, target, list(tags))
            elif isinstance(existing, list):
                existing.extend([tag for tag in tags if tag not in existing])
            elif isinstance(existing, str):
                set_field(event, target, [existing, *(tag for tag in tags if tag != existing)])
            else:
                failed += 1
        if failed:
            self.context.counters.add("failed", failed)
        return events


# -- rename --------------------------------------------------------------------------------------

Undo = list[tuple[Any, ...]]
"""What to reverse: ``(container, key)`` added, ``(parent, key, value, position)`` removed."""


def _find(event: Event, parts: tuple[str, ...]) -> Any:
    return get_path(event, parts, _MISSING)


def _rename_field(
    event: Event, source: tuple[str, ...], target: tuple[str, ...], ignore_missing: bool, undo: Undo
) -> str | None:
    """Move the value at ``source`` to ``target``; return the problem, or None when done."""
    if _find(event, target) is not _MISSING:
        return f"target field {'.'.join(target)!r} already exists: drop or rename it first"
    parent = _find(event, source[:-1])
    key = source[-1]
    if not isinstance(parent, dict) or key not in parent:
        return None if ignore_missing else f"field {'.'.join(source)!r} is missing"
    position = list(parent).index(key)
    value = parent.pop(key)  # first, so that a may become a.b
    undo.append((parent, key, value, position))
    node = event
    for depth, part in enumerate(target[:-1]):
        child = node.get(part, _MISSING)
        if child is _MISSING:
            child = node[part] = {}
            undo.append((node, part))
        elif not isinstance(child, dict):
            blocking = ".".join(target[: depth + 1])
            return f"cannot rename to {'.'.join(target)!r}: {blocking!r} is not an object"
        node = child
    node[target[-1]] = value
    undo.append((node, target[-1]))
    return None


def _undo(undo: Undo) -> None:
    """Reverse the changes in ``undo``, last first; removed keys go back to their old position."""
    for entry in reversed(undo):
        if len(entry) == 2:
            container, key = entry
            del container[key]
            continue
        parent, key, value, position = entry
        if position >= len(parent):
            parent[key] = value
        else:
            items = list(parent.items())
            items.insert(position, (key, value))
            parent.clear()
            parent.update(items)
    undo.clear()


class Rename(Processor):
    """Rename fields, in the order listed; a target field that exists already is an error."""

    options = (
        Option(
            "fields",
            ListOf(
                Struct(
                    Option("from", FieldPath(), required=True, description="the field to rename"),
                    Option("to", FieldPath(), required=True, description="its new name"),
                ),
                min_items=1,
            ),
            required=True,
            description="the renames, a list of {from: ..., to: ...}",
        ),
        Option("ignore_missing", Bool(), False, "true: a missing 'from' field is not an error"),
        Option(
            "fail_on_error",
            Bool(),
            True,
            "on an error, undo all renames of the event and set error.message; "
            "false: skip the failed rename and go on",
        ),
    )

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self.renames = [
            (tuple(getattr(item, "from").split(".")), tuple(item.to.split("."))) for item in config.fields
        ]

    def process(self, events: list[Event]) -> list[Event]:
        failed = sum(1 for event in events if self._rename(event))
        if failed:
            self.context.counters.add("failed", failed)
        return events

    def _rename(self, event: Event) -> bool:
        """Apply the renames to one event; return whether one failed."""
        done: Undo = []
        step: Undo = []
        failed = False
        for source, target in self.renames:
            problem = _rename_field(event, source, target, self.config.ignore_missing, step)
            if problem is None:
                done.extend(step)
                step.clear()
                continue
            _undo(step)
            failed = True
            if self.config.fail_on_error:
                _undo(done)
                set_field(event, "error.message", f"rename failed: {problem}")
                break
        return failed


@hookimpl
def flowpipe_add_processors() -> dict[str, type[Processor]]:
    return {"drop_fields": DropFields, "add_fields": AddFields, "add_tags": AddTags, "rename": Rename}
