"""Put one method's HDR frames back into seq order, with a bounded wait for losses.

Inference workers finish out of order; outputs (EXR numbering aside, the preview video
and flicker metrics) need seq order. A live stream cannot wait forever for a frame that
was dropped upstream, so once more than ``window`` frames are held the missing seq is
declared a gap and the stream moves on. A gap frame that turns up later is still
released (flagged late, out of order) and leaves the gap list; a seq seen twice is a
duplicate. Memory is bounded by ``window`` frames plus the gaps, kept as ranges.

Where a stream starts is not known up front: streams normally begin at ``first`` (0),
and release starts at once when that seq arrives; otherwise frames are held until the
window overflows (or the stream ends) and release starts at the lowest seq held.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hdrstream.seqranges import SeqRanges

T = TypeVar("T")


@dataclass
class Released(Generic[T]):
    seq: int
    item: T
    late: bool = False  # True: arrived after its seq was declared a gap (out of order)


@dataclass
class Reorderer(Generic[T]):
    """Seq-ordered release of items; ``push`` and ``flush`` return what may go out now."""

    window: int = 64
    first: int = 0  # the seq a stream is expected to start at
    _held: dict[int, T] = field(default_factory=dict, init=False, repr=False)
    _next: int | None = field(default=None, init=False, repr=False)
    _first: int | None = field(default=None, init=False, repr=False)  # first seq released
    _gaps: SeqRanges = field(default_factory=SeqRanges, init=False, repr=False)
    _early: set[int] = field(default_factory=set, init=False, repr=False)  # seen below _first
    duplicates: int = field(default=0, init=False)
    late: int = field(default=0, init=False)

    @property
    def gaps(self) -> SeqRanges:
        """Seqs declared lost, as ranges (memory does not grow with the size of a gap)."""
        return self._gaps

    @property
    def held(self) -> int:
        return len(self._held)

    def push(self, seq: int, item: T) -> list[Released[T]] | None:
        """Add one item; returns the items now releasable in order, or None for a duplicate."""
        if seq in self._held:
            self.duplicates += 1
            return None
        if self._next is None:  # not started: wait for `first` or a full window
            self._held[seq] = item
            if seq == self.first or len(self._held) > self.window:
                self._next = self._first = min(self._held)
                return self._drain() + self._overflow()
            return []
        assert self._first is not None
        if seq < self._next:
            # Below the release point: a frame we declared lost, one from before the
            # first frame we saw, or a repeat of something already released.
            if not self._gaps.discard(seq):
                if seq < self._first and seq not in self._early:
                    self._early.add(seq)
                else:
                    self.duplicates += 1
                    return None
            self.late += 1
            return [Released(seq, item, late=True)]
        self._held[seq] = item
        return self._drain() + self._overflow()

    def flush(self, end: int | None = None, start: int | None = None) -> list[Released[T]]:
        """Release everything held; seqs in [start, end) never seen become gaps."""
        out: list[Released[T]] = []
        if self._next is None and self._held:
            self._next = self._first = min(self._held)
        while self._held:
            out += self._skip_to(min(self._held))
        if self._next is None:  # nothing ever arrived
            if start is not None and end is not None:
                self._gaps.add_range(start, end)
            return out
        assert self._first is not None
        if end is not None and end > self._next:
            self._gaps.add_range(self._next, end)
            self._next = end
        if start is not None and start < self._first:
            for a, b in SeqRanges(self._early).minus(self._gaps, start, self._first).ranges():
                self._gaps.add_range(a, b + 1)
        return out

    def _overflow(self) -> list[Released[T]]:
        out: list[Released[T]] = []
        while len(self._held) > self.window:
            out += self._skip_to(min(self._held))
        return out

    def _skip_to(self, seq: int) -> list[Released[T]]:
        assert self._next is not None
        self._gaps.add_range(self._next, seq)
        self._next = seq
        return self._drain()

    def _drain(self) -> list[Released[T]]:
        out: list[Released[T]] = []
        assert self._next is not None
        while self._next in self._held:
            out.append(Released(self._next, self._held.pop(self._next)))
            self._next += 1
        return out
