"""EXR output: where each method's frames go, and making payloads safe for half float.

Layout (design §3): the main method writes ``OUT/<stem>.exr``; a comparison method
writes ``OUT/<method>/<stem>.exr``. Files are half-float linear RGB written atomically
through :func:`hdrstream.hdrio.write_exr`, so readers never see a partial file.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from hdrstream import hdrio

HALF_MAX = 65504.0
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def safe_name(name: str) -> bool:
    """True if ``name`` can be used as one path component (no separators, not hidden)."""
    return bool(_SAFE_NAME.fullmatch(name)) and name not in (".", "..")


def to_half(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W, 3) float → contiguous float16 copy, plus how many values had to be repaired.

    NaN becomes 0, −inf and negatives 0 (radiance is not negative), +inf and anything
    above the half-float maximum 65504; otherwise they would be stored as inf/NaN and
    poison every downstream average.
    """
    src = np.asarray(rgb)
    bad = 0
    if not np.isfinite(src).all():
        bad = int(src.size - np.count_nonzero(np.isfinite(src)))
        src = np.nan_to_num(src, nan=0.0, posinf=HALF_MAX, neginf=0.0)
    if src.dtype != np.float32 or src.ndim < 2:  # rare: NumPy's cast rounds from the source type once
        out = np.empty(src.shape, np.float16)
        np.clip(src, 0.0, HALF_MAX, out=out, casting="unsafe")
        return out, bad
    # OpenCV's clip and cast: bit for bit NumPy's (round to nearest even, subnormals kept)
    # in half its time. One channel, as OpenCV's scalar operations on several channels
    # apply the scalar to the first channel only.
    flat = np.ascontiguousarray(src).reshape(src.shape[0], -1)
    clipped = cv2.min(cv2.max(flat, 0.0), HALF_MAX)
    return cv2.add(clipped, 0.0, dtype=cv2.CV_16F).reshape(src.shape), bad


class ExrWriter:
    """Writes one frame per call into the folder layout above."""

    def __init__(self, out_dir: str | Path, main_method: str) -> None:
        self.out_dir = Path(out_dir)
        self.main_method = main_method

    def dir_for(self, method: str) -> Path:
        return self.out_dir if method == self.main_method else self.out_dir / method

    def path_for(self, method: str, stem: str) -> Path:
        return self.dir_for(method) / f"{stem}.exr"

    def write(self, method: str, stem: str, rgb16: np.ndarray) -> Path:
        return hdrio.write_exr(self.path_for(method, stem), rgb16, half=True)
