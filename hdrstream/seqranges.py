"""Sets of frame seqs kept as ranges, so a gap of a million frames costs two integers.

Lost frames come in runs (a worker's chunk, a camera outage, a stream cut short), and a
forged or corrupt seq must not be able to make a receiver enumerate billions of numbers.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class SeqRanges:
    """Disjoint half-open ranges ``[start, end)`` of seqs, sorted, merged when they touch."""

    def __init__(self, seqs: Iterable[int] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for s in seqs:
            self.add(s)

    def add_range(self, start: int, end: int) -> None:
        """Add every seq in ``[start, end)``."""
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)  # first range that ends at or after start
        j = bisect.bisect_right(self._starts, end)  # ranges from i to j-1 touch [start, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def add(self, seq: int) -> None:
        self.add_range(seq, seq + 1)

    def discard(self, seq: int) -> bool:
        """Remove ``seq``; True if it was there."""
        i = bisect.bisect_right(self._starts, seq) - 1
        if i < 0 or seq >= self._ends[i]:
            return False
        start, end = self._starts[i], self._ends[i]
        pieces = [(a, b) for a, b in ((start, seq), (seq + 1, end)) if b > a]
        self._starts[i:i + 1] = [a for a, _ in pieces]
        self._ends[i:i + 1] = [b for _, b in pieces]
        return True

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect.bisect_right(self._starts, seq) - 1
        return i >= 0 and seq < self._ends[i]

    def __len__(self) -> int:
        """How many seqs (not ranges)."""
        return sum(e - s for s, e in zip(self._starts, self._ends))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self) -> Iterator[int]:
        for s, e in zip(self._starts, self._ends):
            yield from range(s, e)

    def ranges(self) -> list[list[int]]:
        """``[[first, last], …]``, both ends included: how report.json lists them."""
        return [[s, e - 1] for s, e in zip(self._starts, self._ends)]

    def overlap(self, other: SeqRanges) -> int:
        """How many seqs are in both."""
        n, i, j = 0, 0, 0
        while i < len(self._starts) and j < len(other._starts):
            lo = max(self._starts[i], other._starts[j])
            hi = min(self._ends[i], other._ends[j])
            n += max(0, hi - lo)
            if self._ends[i] < other._ends[j]:
                i += 1
            else:
                j += 1
        return n

    def minus(self, other: SeqRanges, start: int, end: int) -> SeqRanges:
        """The seqs of ``[start, end)`` that are in neither ``self`` nor ``other``, as ranges."""
        out = SeqRanges()
        cut = sorted((s, e) for r in (self, other) for s, e in zip(r._starts, r._ends) if e > start and s < end)
        pos = start
        for s, e in cut:
            if s > pos:
                out.add_range(pos, min(s, end))
            pos = max(pos, e)
        if pos < end:
            out.add_range(pos, end)
        return out
