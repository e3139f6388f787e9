"""Spelling hints for error messages: "did you mean ...?"."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: str, choices: Iterable[str], *, known: str = "") -> str:
    """A hint to append to an error about ``word``.

    `` (did you mean 'x'?)`` for the closest of ``choices``; without a close one, and when
    ``known`` names what the choices are, ``; known <known>: a, b``; else an empty string.
    """
    names = list(choices)
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known {known}: {', '.join(names)}" if known and names else ""
