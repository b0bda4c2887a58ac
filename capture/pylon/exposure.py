"""The alternating-exposure cycle, given in microseconds or as stops around a base.

Cameras take exposure in µs, people often think in stops; both spellings end here as
one tuple of µs in cycle order, so everything downstream sees a single form.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

CYCLE_LENGTHS = (2, 3)
DEFAULT_CYCLE_US = (1000.0, 8000.0)
MIN_RATIO = 1.02  # exposures closer than 2 % are one class to preprocess.window.ExposureCycle


def numbers(value: str | Sequence[float], what: str) -> tuple[float, ...]:
    """'1000,8000' or a sequence → floats; ValueError naming ``what`` for anything else."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        try:
            x = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {item!r} is not a number (expected e.g. '1000,8000')") from None
        if not math.isfinite(x):
            raise ValueError(f"{what}: {item!r} is not finite")
        out.append(x)
    return tuple(out)


def parse_cycle(
    exposures_us: str | Sequence[float] | None = None,
    base_us: float | None = None,
    stops: str | Sequence[float] | None = None,
) -> tuple[float, ...]:
    """Exposure times in µs, in cycle order.

    Either ``exposures_us`` ("1000,8000") or ``base_us`` plus ``stops`` ("-1.5,+1.5":
    ``base · 2^stop`` each); neither gives :data:`DEFAULT_CYCLE_US`.
    """
    if base_us is not None or stops is not None:
        if exposures_us is not None:
            raise ValueError("give the exposure cycle either as exposures_us or as base_us + stops, not both")
        if base_us is None or stops is None:
            raise ValueError("base_us and stops go together (e.g. base_us=2000, stops='-1.5,+1.5')")
        if not (math.isfinite(base_us) and base_us > 0):
            raise ValueError(f"base_us must be a positive number of microseconds, got {base_us}")
        cycle = tuple(base_us * 2.0 ** s for s in numbers(stops, "stops"))
    elif exposures_us is not None:
        cycle = numbers(exposures_us, "exposures_us")
    else:
        cycle = DEFAULT_CYCLE_US
    check_cycle(cycle)
    return cycle


def check_cycle(cycle_us: Sequence[float]) -> None:
    """Raise ValueError unless the cycle has 2 or 3 positive, distinguishable exposures."""
    if len(cycle_us) not in CYCLE_LENGTHS:
        raise ValueError(f"the exposure cycle needs 2 or 3 exposures, got {len(cycle_us)}: {tuple(cycle_us)}")
    if any(not (math.isfinite(t) and t > 0) for t in cycle_us):
        raise ValueError(f"exposures must be positive microseconds, got {tuple(cycle_us)}")
    ordered = sorted(cycle_us)
    for a, b in zip(ordered, ordered[1:]):
        if b < a * MIN_RATIO:
            raise ValueError(
                f"exposures {a:g} µs and {b:g} µs are too close to tell apart (need >= 2 % difference)"
            )
