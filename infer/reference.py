"""The "reference only" baseline: what a single frame knows, H = L_ref^2.2 / t_ref.

Every other method has to beat this; it also shows what the camera alone would give.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infer.method import check_window, to_hdr


class ReferenceReconstructor:
    name = "reference"

    def reconstruct(self, frames: np.ndarray, exposures: Sequence[float], ref: int) -> np.ndarray:
        check_window(frames, exposures, ref)
        return to_hdr(frames[ref], exposures[ref])
