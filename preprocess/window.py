"""Which frames make up the window of a reference frame, with the stream's gaps and ends.

Kept free of pixels so the bookkeeping (exposure cycle, padding) is easy to test. A
window for reference seq r has slots r-k … r+k. A slot whose frame exists uses it; a
slot before the first frame, after the last, or on a lost seq is padded with the nearest
available frame *of the same position in the exposure cycle*, so a window always has the
exposure pattern the reconstructor expects (design §3, "edges included").
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

EXPOSURE_TOL = 0.02  # relative: exposures closer than this are the same cycle position


@dataclass
class CycleInfo:
    """What has been learned about the exposure cycle so far."""

    length: int | None  # frames per cycle; None until a position repeats
    phase: dict[int, int]  # seq % length -> class
    exposures: dict[int, float]  # class -> exposure time (first seen)

    @property
    def t_min(self) -> float:
        return min(self.exposures.values())


class ExposureCycle:
    """Learns the alternating-exposure cycle from the frames' ``set`` or exposure times.

    A frame's *class* is its ``set`` header when the camera sends one, else the index of
    its exposure among the distinct exposures seen (2 % tolerance). The cycle length is
    the smallest n ≥ (number of classes) for which every frame seen so far has the class
    of ``seq % n``; that is robust to frames lost before the cycle first repeats.
    """

    def __init__(self) -> None:
        self._seen: list[tuple[int, int]] = []  # (seq, class) until the length is known
        self._exposures: dict[int, float] = {}
        self.length: int | None = None
        self.phase: dict[int, int] = {}

    def classify(self, exposure_s: float, set_: int | None) -> int:
        if set_ is not None:
            return int(set_)
        for cls, t in self._exposures.items():
            if abs(exposure_s - t) <= EXPOSURE_TOL * max(t, exposure_s):
                return cls
        return max(self._exposures, default=-1) + 1

    def observe(self, seq: int, exposure_s: float, set_: int | None) -> int:
        """Record one frame; returns its class."""
        cls = self.classify(exposure_s, set_)
        self._exposures.setdefault(cls, exposure_s)
        if self.length is None:
            repeat = any(c == cls for _, c in self._seen)
            self._seen.append((seq, cls))
            if repeat:
                self._settle(len(self._exposures))
        else:
            old = self.phase.get(seq % self.length)
            if old is not None and old != cls:
                log.warning("frame %d breaks the exposure cycle (class %s, expected %s)", seq, cls, old)
            self.phase[seq % self.length] = cls
        return cls

    def close(self) -> None:
        """End of stream: settle the cycle length from what was seen, if still open."""
        if self.length is None and self._seen:
            self._settle(len(self._exposures))

    def _settle(self, n_classes: int) -> None:
        span = self._seen[-1][0] - self._seen[0][0] + 1
        for n in range(max(1, n_classes), max(n_classes, span) + 1):
            phase: dict[int, int] = {}
            if all(phase.setdefault(s % n, c) == c for s, c in self._seen):
                break
        self.length, self.phase = n, phase
        self._seen = []

    def info(self) -> CycleInfo:
        return CycleInfo(self.length, dict(self.phase), dict(self._exposures))


def auto_k(cycle_length: int) -> int:
    """Frames each side of the reference: 2 for two exposures (5 frames), 3 for three (7)."""
    return max(1, cycle_length)


def plan_window(
    ref: int, k: int, available: dict[int, int], cycle: CycleInfo
) -> list[int]:
    """Source seq for each of the 2k+1 slots of the window of ``ref``.

    Args:
        ref: seq of the reference (must be in ``available``).
        k: frames each side.
        available: seq -> class of the frames that can be used.
        cycle: the learned exposure cycle (length and phase known).
    """
    if ref not in available:
        raise KeyError(f"reference frame {ref} is not available")
    out = []
    for x in range(ref - k, ref + k + 1):
        out.append(x if x in available else _pad(x, ref, available, cycle))
    return out


def _pad(x: int, ref: int, available: dict[int, int], cycle: CycleInfo) -> int:
    want = cycle.phase.get(x % cycle.length) if cycle.length else None
    pool: Iterable[int] = [s for s, c in available.items() if c == want]
    if not pool:  # this position of the cycle never arrived: nearest frame of any kind
        pool = available
    # nearest to the missing slot; ties go to the frame closer to the reference in time.
    return min(pool, key=lambda s: (abs(s - x), abs(s - ref), s))
