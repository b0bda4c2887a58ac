"""The DIS flows that the DIS-flow CoarseNet (design §4) aligns with.

One helper for inference, training and the benchmarks, so that all three feed the network
exactly the same flows: those of the classical merge, exposure-matched, in the network's
channel-first layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infer.classical import ClassicalReconstructor


class WindowFlows:
    """Reference→neighbour DIS flows of CoarseNet windows, ``ref(p) ≈ frame_j(p + f(p))``.

    Args:
        classical: whose flows they are (its settings choose them); the default merge when None.
    """

    def __init__(self, classical: ClassicalReconstructor | None = None) -> None:
        self.classical = classical if classical is not None else ClassicalReconstructor()

    def __call__(self, frames: np.ndarray, exposures: Sequence[float], centre: int, size: int) -> np.ndarray:
        """Flows (size - 1, 2, h, w) float32, in pixels, of the ``size`` frames centred on
        ``centre`` of ``frames`` (n, h, w, 3), neighbours in window order."""
        half = size // 2
        lo, hi = centre - half, centre + half + 1
        if size < 2 or lo < 0 or hi > len(frames):
            raise ValueError(f"a CoarseNet window of {size} frames centred on {centre} does not fit {len(frames)} frames")
        flows = self.classical.flows(np.ascontiguousarray(frames[lo:hi]), [float(t) for t in exposures[lo:hi]], half)
        return np.ascontiguousarray(flows.transpose(0, 3, 1, 2))
