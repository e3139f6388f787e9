"""TCP sequence numbers: 32-bit counters that wrap, compared by signed distance (RFC 1982).

Every wrap-around of the ``tcp`` decoder goes through this module: a sequence number is turned
into a signed distance from a known one (:func:`seq_diff`) and from there into an unbounded
stream offset, on which the reassembler does all its arithmetic.
"""

from __future__ import annotations

__all__ = ["MASK", "seq_add", "seq_diff"]

MASK = 0xFFFFFFFF
"""Sequence numbers are taken modulo 2**32: ``(seq + n) & MASK``."""
_HALF = 0x80000000


def seq_add(seq: int, amount: int) -> int:
    """``seq`` moved by ``amount`` (which may be negative), wrapped to 32 bits."""
    return (seq + amount) & MASK


def seq_diff(seq: int, base: int) -> int:
    """``seq - base`` as a signed distance in [-2**31, 2**31): how far ``seq`` lies after ``base``."""
    return ((seq - base + _HALF) & MASK) - _HALF
