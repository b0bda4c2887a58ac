"""What every reconstruction method is and shares: the interface, the window check, H = L^2.2 / t.

A reconstructor sees one window: N frames already globally aligned to the reference,
as gamma-2.2 values L in [0, 1], and returns the reference's linear HDR H = L^2.2 / t.
The methods import this module; the factory (:mod:`infer.reconstructor`) imports the methods.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # autocast of the network methods


class Reconstructor(Protocol):
    name: str

    def reconstruct(self, frames: np.ndarray, exposures: Sequence[float], ref: int) -> np.ndarray:
        """frames (N, H, W, 3) float32 L in [0, 1]; returns float32 (H, W, 3) H = lin / t."""
        ...


def check_window(frames: np.ndarray, exposures: Sequence[float], ref: int) -> None:
    """Raise ValueError unless the arguments describe a valid window."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3), got {frames.shape}")
    if len(exposures) != frames.shape[0]:
        raise ValueError(f"{len(exposures)} exposures for {frames.shape[0]} frames")
    if not 0 <= ref < frames.shape[0]:
        raise ValueError(f"reference index {ref} outside a window of {frames.shape[0]}")
    if min(exposures) <= 0:
        raise ValueError(f"exposures must be positive, got {list(exposures)}")


def to_hdr(L: np.ndarray, t: float) -> np.ndarray:
    """Gamma-2.2 values -> linear radiance per second, H = L^2.2 / t (float32)."""
    out = cv2.pow(np.asarray(L, np.float32), 2.2)
    out *= np.float32(1.0 / t)
    return out
