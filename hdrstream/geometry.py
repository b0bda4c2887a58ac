"""2x3 affine transforms of images: the global alignment that preprocess estimates and that
either preprocess or the reconstructor applies (a window may carry its frames unwarped,
with the transforms in its meta, so a method can fold them into a resampling it does
anyway). One implementation, so both places produce the same pixels.
"""
from __future__ import annotations

import cv2
import numpy as np

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def is_identity(M: np.ndarray, tol: float = 1e-9) -> bool:
    return bool(np.allclose(M, IDENTITY, atol=tol))


def warp(img: np.ndarray, M: np.ndarray, shape: tuple[int, ...], out: np.ndarray | None = None,
         interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resample ``img`` into the frame where ``M`` maps it (output size ``shape[:2]``).

    Borders replicate the nearest edge pixel: the HDR merge later down-weights them where
    they disagree with the reference, which is better than black that reads as "dark".
    """
    h, w = shape[:2]
    if is_identity(M) and img.shape[:2] == (h, w):
        if out is None:
            return img
        out[...] = img
        return out
    res = cv2.warpAffine(img, np.asarray(M, np.float64), (w, h), dst=out, flags=interpolation,
                         borderMode=cv2.BORDER_REPLICATE)
    if interpolation != cv2.INTER_LINEAR:  # cubic overshoots at edges
        np.clip(res, 0.0, 1.0, out=res)
    return res


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 transform applying ``inner`` first, then ``outer``."""
    return (_h(outer) @ _h(inner))[:2]


def invert(M: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(M, np.float64))


def scaled(M: np.ndarray, s: float) -> np.ndarray:
    """``M`` for images resized by ``s`` (pixel centres kept: x' = s(x + 0.5) - 0.5)."""
    S = np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5]])
    return compose(S, compose(M, invert(S)))


def _h(M: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(M, np.float64), [0.0, 0.0, 1.0]])
