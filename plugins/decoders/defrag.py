"""IPv4 and IPv6 defragmentation, bounded in memory, on capture time.

:class:`Defragmenter` takes each fragment's payload (the bytes after the IPv4 header, or after the
IPv6 fragment header) at its byte offset in the original datagram's payload, and returns the whole
payload once the last missing fragment arrives. The caller reads the headers, builds the key and
converts the 13-bit offset field to bytes (``field << 3``); everything else happens here.

Policy, and where it differs from a host's stack (Linux's ``ip_fragment.c``/``reassembly.c``):

- **Overlaps: first copy wins, per byte.** Bytes once held never change; a later fragment adds
  only the bytes nobody sent before. A fragment that only repeats held bytes, unchanged, is a
  ``duplicate``; one that overlaps held bytes in any other way (different bytes, or partly new
  bytes) is an ``overlap`` (RFC 5722's word). Linux (and RFC 5722 for IPv6) drops the whole
  datagram on a partial overlap; a monitor keeps what it saw first and counts the overlap, so an
  evasion attempt is visible in the counters rather than silently erasing the datagram.
- **The end, too: first copy wins.** The first last fragment (MF clear) fixes the payload's
  length. A later last fragment with another end, or any fragment reaching past the known end, or a
  last fragment ending before bytes already held, is dropped as ``bad_end``; the datagram keeps
  what it had (Linux drops the whole datagram: a forged fragment could then erase a real one).
- **Malformed fragments are dropped alone**, the datagram stays: a fragment other than the last
  whose length is not a positive multiple of 8 (``bad_length``: RFC 8200 section 4.5 says to
  discard that fragment, as Linux does for IPv6; Linux trims such IPv4 fragments instead, RFC 791
  only makes them impossible to send), and one ending past 65,535 bytes (``too_long``: the
  16-bit length fields cannot describe it, the "ping of death"). The IPv4 total length also counts
  the header, so a caller that wants the exact IPv4 bound checks ``header + len(payload)`` on the
  result.
- An **atomic fragment** (offset 0, MF clear: RFC 6946) is returned at once, untouched, and does
  not disturb a datagram being reassembled under the same key.
- **Timeouts run on capture time.** A datagram's clock starts with its first fragment and is not
  restarted by later ones (as Linux). :meth:`Defragmenter.expire` drops datagrams more than
  ``timeout`` seconds old (counted as ``timeout``); a fragment arriving for a datagram already
  that old drops it the same way and starts afresh, so results do not depend on how often
  ``expire`` is called.

Caps, each counted when it bites:

- ``max_fragments``: pieces held per datagram (a fragment is held as one piece per hole it
  fills; duplicates and fully overlapped fragments hold nothing). A fragment that would exceed it
  drops the whole datagram (``too_many_fragments``), as FreeBSD's ``maxfragsperpacket`` does.
- ``max_datagrams``: datagrams in reassembly. A fragment that would start one more evicts the
  oldest first (``too_many_datagrams``).
- ``max_bytes``: memory held, counted as :attr:`Defragmenter.held_bytes`: every byte of payload
  plus a fixed charge per piece (:data:`FRAGMENT_OVERHEAD`) and per datagram
  (:data:`DATAGRAM_OVERHEAD`) for the Python objects that hold them, so floods of tiny fragments
  are bounded as truly as large ones (measured on CPython 3.11: about 700 bytes per datagram keyed
  by IPv6 addresses sliced from frames, about 90 per 8-byte piece). A fragment that would exceed
  it evicts the oldest datagrams until it fits (``too_many_bytes``, one per datagram evicted); if
  that evicts the fragment's own datagram, the fragment goes with it.

"Oldest" is the order datagrams started in, which is capture order: ``expire`` stops at the first
datagram young enough to keep, so it costs nothing while nothing is due. (Timestamps that run
backwards in a capture delay the expiry of the datagrams behind a younger one, never forever.)

Counters (:attr:`Defragmenter.counters`, names only present once counted) are per datagram for
``reassembled``, ``timeout``, ``too_many_fragments``, ``too_many_datagrams`` and ``too_many_bytes``,
and per fragment for ``duplicate``, ``overlap``, ``bad_length``, ``bad_end`` and ``too_long``.

Fragments may be handed over as memoryviews into a reused frame buffer: the bytes kept are copied.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Hashable

__all__ = [
    "DATAGRAM_OVERHEAD",
    "FRAGMENT_OVERHEAD",
    "MAX_PAYLOAD",
    "MIN_MAX_BYTES",
    "Defragmenter",
]

MAX_PAYLOAD = 65535
"""The largest payload the 16-bit IPv4 total length or IPv6 payload length can describe."""
FRAGMENT_OVERHEAD = 96
"""Bytes charged per piece held besides its payload: its bytes object, offset and list slots."""
DATAGRAM_OVERHEAD = 768
"""Bytes charged per datagram held: its record, lists, table entry and the caller's key."""
MIN_MAX_BYTES = 128 * 1024
"""The smallest ``max_bytes``: room for the largest fragment of a new datagram, overheads included."""

REASSEMBLED = "reassembled"
TIMEOUT = "timeout"
DUPLICATE = "duplicate"
OVERLAP = "overlap"
TOO_MANY_FRAGMENTS = "too_many_fragments"
TOO_MANY_DATAGRAMS = "too_many_datagrams"
TOO_MANY_BYTES = "too_many_bytes"
BAD_LENGTH = "bad_length"
BAD_END = "bad_end"
TOO_LONG = "too_long"


class _Datagram:
    """One datagram in reassembly: held pieces as parallel sorted lists, never overlapping."""

    __slots__ = ("charge", "datas", "end", "size", "start", "starts")

    def __init__(self, start: float) -> None:
        self.start = start
        """Capture time of the first fragment."""
        self.end = -1
        """The payload's length once the last fragment fixed it, else -1."""
        self.size = 0
        """Payload bytes held."""
        self.charge = 0
        """What this datagram counts towards ``held_bytes``."""
        self.starts: list[int] = []
        self.datas: list[bytes] = []


class Defragmenter:
    """Reassembles IPv4 and IPv6 datagrams from fragments, bounded in memory.

    One instance serves every datagram of a decoder; it is not thread-safe (a decoder runs in one
    thread). Call :meth:`add` for every fragment and :meth:`expire` with the capture clock now
    and then (per batch, and when a live input idles); ``expire(math.inf)`` drops everything
    still pending at the end of the input (counted as ``timeout``). Merge :attr:`counters` into
    the stage's ledger and clear it whenever convenient.
    """

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        max_datagrams: int = 4096,
        max_fragments: int = 64,
        max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        """Raise ValueError, naming the option, for a value outside its range."""
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if max_datagrams < 1:
            raise ValueError(f"max_datagrams must be >= 1, got {max_datagrams}")
        if max_fragments < 1:
            raise ValueError(f"max_fragments must be >= 1, got {max_fragments}")
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be >= {MIN_MAX_BYTES}, got {max_bytes}")
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_fragments = max_fragments
        self.max_bytes = max_bytes
        self.counters: dict[str, int] = {}
        """Events by name (see the module's docstring); a name appears when first counted."""
        self._datagrams: OrderedDict[Hashable, _Datagram] = OrderedDict()
        self._held = 0
        self.kept = False
        """Whether the fragment of the last :meth:`add` was kept: it completed its datagram, is held,
        or was atomic. False when it was dropped (malformed, or with its datagram by a cap)."""
        self.started = False
        """Whether the fragment of the last :meth:`add` started a datagram: none was held under its
        key, or the one held had timed out (and was dropped)."""

    @property
    def held_bytes(self) -> int:
        """Memory charged to the datagrams held: payload plus fixed overheads; <= ``max_bytes``."""
        return self._held

    def __len__(self) -> int:
        """Datagrams in reassembly."""
        return len(self._datagrams)

    def __contains__(self, key: Hashable) -> bool:
        """Whether a datagram with ``key`` is in reassembly."""
        return key in self._datagrams

    def add(
        self, key: Hashable, timestamp: float, offset: int, more_fragments: bool, data: bytes | memoryview
    ) -> bytes | None:
        """Add one fragment's payload at byte ``offset`` of its datagram's payload.

        Return the whole payload when this fragment completes it, else None. ``key`` identifies
        the datagram: (source, destination, identification, protocol) for IPv4, (source,
        destination, identification) for IPv6; the caller builds it. ``offset`` is in bytes (the
        header's field times 8), ``timestamp`` the fragment's capture time in seconds. Never
        raises for any offset in 0..65535 and any data. :attr:`kept` and :attr:`started` then tell
        what became of the fragment.
        """
        self.kept = self.started = False
        length = len(data)
        end = offset + length
        if end > MAX_PAYLOAD:
            return self._count(TOO_LONG)
        if more_fragments:
            if not length or length & 7:
                return self._count(BAD_LENGTH)
        elif not offset:
            self.kept = True
            return bytes(data)
        table = self._datagrams
        datagram = table.get(key)
        if datagram is not None and timestamp - datagram.start > self.timeout:
            del table[key]
            self._held -= datagram.charge
            self._count(TIMEOUT)
            datagram = None
        if datagram is None:
            if len(table) >= self.max_datagrams:
                self._held -= table.popitem(last=False)[1].charge
                self._count(TOO_MANY_DATAGRAMS)
            datagram = _Datagram(timestamp)
            need = DATAGRAM_OVERHEAD
            is_new = True
        else:
            need = 0
            is_new = False
        starts = datagram.starts
        datas = datagram.datas
        count = len(starts)
        tail = starts[-1] + len(datas[-1]) if count else 0
        known_end = datagram.end
        if more_fragments:
            if 0 <= known_end < end:
                return self._count(BAD_END)
        elif end < tail or 0 <= known_end != end:
            return self._count(BAD_END)

        run_starts = covered = None
        if not length:  # an empty last fragment: it only fixes the end
            added = added_bytes = 0
        elif offset >= tail:  # the common case: after everything held
            added = 1
            added_bytes = length
        else:
            first, last, run_starts, run_datas, added_bytes, covered = _fill(starts, datas, offset, data)
            added = len(run_starts) - (last - first)
        if added:
            if count + added > self.max_fragments:
                if not is_new:
                    del table[key]
                    self._held -= datagram.charge
                return self._count(TOO_MANY_FRAGMENTS)
            need += added_bytes + added * FRAGMENT_OVERHEAD
        if self._held + need > self.max_bytes and not self._make_room(need, datagram):
            return None
        self.kept = True
        self.started = is_new
        if covered:
            if added or any(
                datas[index][start - starts[index] : stop - starts[index]]
                != data[start - offset : stop - offset]
                for index, start, stop in covered
            ):
                self._count(OVERLAP)
            else:
                self._count(DUPLICATE)
        if run_starts is not None:
            starts[first:last] = run_starts
            datas[first:last] = run_datas
        elif added:
            starts.append(offset)
            datas.append(bytes(data))
        datagram.size += added_bytes
        if not more_fragments:
            datagram.end = end
        datagram.charge += need
        self._held += need
        if datagram.size == datagram.end:
            if not is_new:
                del table[key]
            self._held -= datagram.charge
            self._count(REASSEMBLED)
            return b"".join(datas)
        if is_new:
            table[key] = datagram
        return None

    def expire(self, now: float) -> int:
        """Drop the datagrams whose first fragment is more than ``timeout`` before ``now``.

        ``now`` is capture time; return how many were dropped (also counted as ``timeout``).
        """
        timeout = self.timeout
        stale = []
        for key, datagram in self._datagrams.items():
            if now - datagram.start <= timeout:
                break
            stale.append(key)
        if stale:
            table = self._datagrams
            for key in stale:
                self._held -= table.pop(key).charge
            self._count(TIMEOUT, len(stale))
        return len(stale)

    def _make_room(self, need: int, datagram: _Datagram) -> bool:
        """Evict the oldest datagrams until ``need`` more bytes fit; False if ``datagram`` went."""
        table = self._datagrams
        evicted = 0
        kept = True
        while table and self._held + need > self.max_bytes:
            oldest = table.popitem(last=False)[1]
            self._held -= oldest.charge
            evicted += 1
            if oldest is datagram:
                kept = False
                break
        if evicted:
            self._count(TOO_MANY_BYTES, evicted)
        return kept

    def _count(self, name: str, amount: int = 1) -> None:
        counters = self.counters
        counters[name] = counters.get(name, 0) + amount


def _fill(
    starts: list[int], datas: list[bytes], offset: int, data: bytes | memoryview
) -> tuple[int, int, list[int], list[bytes], int, list[tuple[int, int, int]]]:
    """How a fragment that does not lie after every held piece fills the holes it spans.

    Return ``(first, last, run_starts, run_datas, added_bytes, covered)``: the held pieces
    ``first:last`` are to be replaced by the run (those pieces with the new ones, one per hole,
    in order), ``added_bytes`` is what the new pieces hold and ``covered`` lists the held bytes the
    fragment overlaps as (piece index, start, stop).
    """
    end = offset + len(data)
    count = len(starts)
    run_starts: list[int] = []
    run_datas: list[bytes] = []
    covered: list[tuple[int, int, int]] = []
    added_bytes = 0
    cursor = offset
    index = bisect_right(starts, offset) - 1
    if index >= 0:
        stop = starts[index] + len(datas[index])
        if stop > offset:
            cursor = min(stop, end)
            covered.append((index, offset, cursor))
    first = last = index + 1
    while last < count and starts[last] < end:
        piece_start = starts[last]
        piece = datas[last]
        if cursor < piece_start:
            run_starts.append(cursor)
            run_datas.append(bytes(data[cursor - offset : piece_start - offset]))
            added_bytes += piece_start - cursor
        run_starts.append(piece_start)
        run_datas.append(piece)
        cursor = min(piece_start + len(piece), end)
        covered.append((last, piece_start, cursor))
        last += 1
    if cursor < end:
        run_starts.append(cursor)
        run_datas.append(bytes(data[cursor - offset :]))
        added_bytes += end - cursor
    return first, last, run_starts, run_datas, added_bytes, covered
