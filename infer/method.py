"""What every reconstruction method is and shares: the interface, the window check, H = L^2.2 / t.

A reconstructor sees one window: N frames globally aligned to the reference, as gamma-2.2
values L in [0, 1], and returns the reference's linear HDR H = L^2.2 / t. A window may come
with its frames unwarped and their transforms beside them (``apply_warps`` aligns them; a
method with ``folds_warps`` takes them as they are).
The methods import this module; the factory (:mod:`infer.reconstructor`) imports the methods.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from hdrstream.frame import Frame
from hdrstream.geometry import warp
from hdrstream.pixfmt import pixel_format, unit_values

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


def window_frames(window: Frame) -> np.ndarray:
    """A window's frames as float32 gamma-2.2 values (N, H, W, 3), whatever crossed the wire:
    float32 or float16 values, or the frames' own integer codes (``RGB8``, ``RGB12``, ...),
    read with the helper preprocess decoded them with, so the values are the same bit for
    bit. Unwarped windows stay unwarped (``apply_warps``)."""
    fmt = pixel_format(window.pixel_format)
    data = np.asarray(window.data)
    if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.dtype(fmt.dtype):
        raise ValueError(f"a {fmt.name} window needs (N, H, W, 3) {fmt.dtype}, got {data.shape} {data.dtype}")
    if fmt.is_float:
        return np.asarray(data, np.float32)
    return unit_values(data, fmt.white)


def apply_warps(frames: np.ndarray, warps: Sequence[Sequence[float]], interpolation: str = "cubic") -> np.ndarray:
    """The window as preprocess would have warped it: each frame resampled by its 2x3
    (the same code, so the same pixels); float32 (N, H, W, 3)."""
    if len(warps) != frames.shape[0]:
        raise ValueError(f"{len(warps)} warps for a window of {frames.shape[0]} frames")
    flag = cv2.INTER_CUBIC if interpolation == "cubic" else cv2.INTER_LINEAR
    out = np.empty(frames.shape, np.float32)
    for i, M in enumerate(warps):
        warp(np.asarray(frames[i], np.float32), np.asarray(M, np.float64).reshape(2, 3), frames.shape[1:3],
             out=out[i], interpolation=flag)
    return out
