"""The "reference only" baseline: what a single frame knows, H = L_ref^2.2 / t_ref.

Every other method has to beat this; it also shows what the camera alone would give.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from hdrstream.geometry import is_identity, warp
from infer.method import check_window, to_hdr


class ReferenceReconstructor:
    name = "reference"
    folds_warps = True  # it reads the reference alone, which preprocess never moves

    def reconstruct(self, frames: np.ndarray, exposures: Sequence[float], ref: int,
                    warps: Sequence[Sequence[float]] | None = None) -> np.ndarray:
        check_window(frames, exposures, ref)
        L = np.asarray(frames[ref], np.float32)
        if warps is not None:
            if len(warps) != len(exposures):
                raise ValueError(f"{len(warps)} warps for a window of {len(exposures)} frames")
            M = np.asarray(warps[ref], np.float64).reshape(2, 3)
            if not is_identity(M):  # as infer.method.apply_warps would have resampled it
                L = warp(L, M, L.shape, interpolation=cv2.INTER_CUBIC)
        return to_hdr(L, exposures[ref])
