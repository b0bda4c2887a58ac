"""Well-exposed mask of the reference frame (paper eq. 5, Fig. 5; design §4).

M = 1 where the reference alone is trustworthy and falls smoothly to 0 where it is too
dark (lowest exposure of the window: (L/0.15)² below 0.15) or too bright (highest
exposure: ((1-L)/0.1)² above 0.9). A middle exposure (three exposures) must satisfy both,
so the two ramps multiply; so does a window with a single exposure.

Computed per channel, as in the paper's public code, so the learned methods' final blend
(H = M·H_coarse + (1-M)·H_refine) matches how they are trained. ``reduce="max"`` gives
one value per pixel from the brightest channel instead (a pixel with one clipped
channel has a wrong colour, so the classical merge may prefer to replace it whole).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOW, HIGH = 0.15, 0.9
EXPOSURE_TOL = 0.02


def low_ramp(L: np.ndarray) -> np.ndarray:
    """1 for L ≥ 0.15, (L/0.15)² below."""
    return np.square(np.clip(L / np.float32(LOW), 0.0, 1.0))


def high_ramp(L: np.ndarray) -> np.ndarray:
    """1 for L ≤ 0.9, ((1-L)/0.1)² above, 0 at L = 1."""
    return np.square(np.clip((1.0 - L) / np.float32(1.0 - HIGH), 0.0, 1.0))


def exposure_role(exposures: Sequence[float], ref: int) -> tuple[bool, bool]:
    """(is lowest, is highest) exposure of the window, with a 2 % tolerance."""
    t = exposures[ref]
    lowest = t <= min(exposures) * (1 + EXPOSURE_TOL)
    highest = t >= max(exposures) * (1 - EXPOSURE_TOL)
    return lowest, highest


def well_exposed_mask(L_ref: np.ndarray, exposures: Sequence[float], ref: int, reduce: str = "none") -> np.ndarray:
    """Mask in [0, 1], float32, shaped like ``L_ref`` ((H, W, 3); (H, W, 1) with reduce="max")."""
    L = np.asarray(L_ref, np.float32)
    if reduce == "max":
        L = L.max(axis=-1, keepdims=True)
    elif reduce != "none":
        raise ValueError(f"reduce must be 'none' or 'max', got {reduce!r}")
    lowest, highest = exposure_role(exposures, ref)
    if lowest and not highest:
        return low_ramp(L)
    if highest and not lowest:
        return high_ramp(L)
    return low_ramp(L) * high_ramp(L)
