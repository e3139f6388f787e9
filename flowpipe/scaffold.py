"""``flowpipe new-plugin``: write an installable package skeleton for a third-party plugin.

As Packetbeat's ``create_tcp_protocol.py`` does for its analyzers, :func:`write_skeleton` renders
the templates under ``flowpipe/templates/<kind>/`` into a new folder ``flowpipe-<name>/``: a
``pyproject.toml`` declaring the plugin in the ``flowpipe`` entry-point group, the plugin module,
a test that runs ``flowpipe run`` on captures it builds, an example ``pipeline.yml`` and a README
saying where each part goes.

Templates are text files with ``{{field}}`` placeholders (:meth:`Skeleton.values`). Each kind
has files common to every variant at the top of its folder and one folder per variant (the
transport of an analyzer) holding the variant's code templates, read whole, and its Markdown
fragments (``*.md.tmpl``), which fill the placeholder named after them in the common files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from . import __version__
from .errors import EXIT_CONFIG, FlowpipeError

__all__ = [
    "DEFAULT_PORT",
    "KINDS",
    "TRANSPORTS",
    "ScaffoldError",
    "Skeleton",
    "render",
    "validate_name",
    "write_skeleton",
]

KINDS = ("analyzer",)
"""The plugin kinds ``new-plugin`` generates."""
TRANSPORTS = ("tcp", "udp")
DEFAULT_PORT = 9999
"""The port the generated analyzer claims by default."""
NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
"""A lowercase identifier: words of letters and digits joined by single underscores."""
MAX_NAME_LENGTH = 40
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
TEMPLATE_SUFFIX = ".tmpl"
FRAGMENT_SUFFIX = ".md" + TEMPLATE_SUFFIX

LAYOUT: dict[str, tuple[tuple[str, str], ...]] = {
    "analyzer": (
        ("pyproject.toml", "pyproject.toml"),
        ("README.md", "README.md"),
        ("pipeline.yml", "pipeline.yml"),
        ("{{module}}/__init__.py", "__init__.py"),
        ("{{module}}/analyzer.py", "{{transport}}/analyzer.py"),
        ("tests/test_{{name}}.py", "{{transport}}/test.py"),
    ),
}
"""Per kind: (file of the generated package, its template under ``templates/<kind>/``)."""


class ScaffoldError(FlowpipeError):
    """The skeleton cannot be written as asked (a bad name, an existing folder): exit status 2."""

    exit_status = EXIT_CONFIG


def validate_name(name: str, taken: Mapping[str, str] | None = None) -> str:
    """Return ``name`` if it can name a new plugin, else raise :class:`ScaffoldError`.

    ``taken`` maps the names already in use for the kind to who provides them.
    """
    if len(name) > MAX_NAME_LENGTH or not NAME.fullmatch(name):
        raise ScaffoldError(
            f"invalid plugin name {name!r}: use a lowercase identifier of at most {MAX_NAME_LENGTH} "
            "characters (letters, digits, single underscores between words; starting with a letter), "
            "e.g. myproto"
        )
    if taken and name in taken:
        raise ScaffoldError(f"{name!r} is already provided by {taken[name]}; choose another name")
    return name


@dataclass(frozen=True)
class Skeleton:
    """What to generate: a plugin of ``kind`` called ``name`` (an analyzer over ``transport``)."""

    kind: str
    name: str
    transport: str = "tcp"
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ScaffoldError(f"--kind {self.kind}: only {' and '.join(KINDS)} is supported")
        if self.transport not in TRANSPORTS:
            raise ScaffoldError(f"--transport {self.transport}: use one of {', '.join(TRANSPORTS)}")
        validate_name(self.name)

    @property
    def distribution(self) -> str:
        """The package's distribution name, also the folder it is written to."""
        return "flowpipe-" + self.name.replace("_", "-")

    @property
    def module(self) -> str:
        """The package's import name."""
        return "flowpipe_" + self.name

    def values(self) -> dict[str, str]:
        """What the templates' placeholders stand for."""
        values = {
            "name": self.name,
            "distribution": self.distribution,
            "module": self.module,
            "class_name": "".join(word.capitalize() for word in self.name.split("_")),
            "transport": self.transport,
            "transport_upper": self.transport.upper(),
            "port": str(self.port),
            "flowpipe_version": __version__,
        }
        for entry in (_templates(self.kind) / self.transport).iterdir():
            if entry.name.endswith(FRAGMENT_SUFFIX):
                fragment = render(entry.read_text(encoding="utf-8"), values).rstrip("\n")
                values[entry.name.removesuffix(FRAGMENT_SUFFIX)] = fragment
        return values

    def files(self) -> dict[str, str]:
        """The generated package: path relative to its folder -> content."""
        values = self.values()
        folder = _templates(self.kind)
        return {
            render(target, values): render(
                (folder / (render(template, values) + TEMPLATE_SUFFIX)).read_text(encoding="utf-8"), values
            )
            for target, template in LAYOUT[self.kind]
        }


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with every ``{{field}}`` replaced by ``values[field]`` (KeyError if unknown)."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def write_skeleton(skeleton: Skeleton, output: Path, force: bool = False) -> tuple[Path, list[Path]]:
    """Write ``skeleton`` into ``output/<distribution>/``; return that folder and the files written.

    An existing folder is refused (:class:`ScaffoldError`) unless ``force``, which overwrites the
    generated files and leaves any other file in the folder alone.
    """
    folder = output / skeleton.distribution
    if (folder.exists() or folder.is_symlink()) and not force:
        raise ScaffoldError(f"{folder} already exists; remove it, choose another --output, or use --force")
    files = skeleton.files()  # everything rendered before anything is written
    written = []
    try:
        for relative, text in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as error:
        raise FlowpipeError(f"cannot write {error.filename or folder}: {error.strerror or error}") from None
    return folder, written


def _templates(kind: str) -> Traversable:
    return resources.files(__package__) / "templates" / kind
