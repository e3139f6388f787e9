"""Source text of small local plugins that tests write next to a pipeline file."""

from __future__ import annotations

import textwrap


def tagger_source(name: str = "tagger", doc: str = "Add tags.") -> str:
    """A plugin module whose processor ``name`` has one option, ``count`` (integer >= 1, default 1)."""
    docstring = textwrap.indent(doc, "    ").lstrip()
    return (
        "from flowpipe import Int, Option, Processor, hookimpl\n\n\n"
        "class Tagger(Processor):\n"
        f'    """{docstring}"""\n\n'
        '    options = (Option("count", Int(1), 1, "how many tags"),)\n\n'
        "    def process(self, events):\n"
        "        return events\n\n\n"
        "@hookimpl\n"
        "def flowpipe_add_processors():\n"
        f'    return {{"{name}": Tagger}}\n'
    )
