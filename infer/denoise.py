"""The noise a merge leaves, and an edge-preserving filter against it.

A merge averages the frames that agree with the reference, so where few do (a short
reference, clipped neighbours, anything that moves) it keeps most of the reference's shot
noise; on footage from a camera with a small full well that noise is most of the error.

Shot noise has a variance proportional to the signal, so in the square root of the
linear signal, y = sqrt(H·t_ref) (1.0 where the reference saturates), its standard
deviation is the same at every brightness: 1 / (2·sqrt(full well in electrons)). There
one filter strength fits the whole frame. The strength comes from the window itself, not
from a camera's data sheet: the reference and the nearest frame of its own exposure differ,
where nothing moves, by noise alone (a robust spread of their difference, outliers from
motion and misalignment trimmed), and averaging ``merged`` frames' worth of light divides
that by sqrt(merged). The filter is a bilateral one in y: it averages neighbouring pixels
whose difference noise explains, and leaves edges and texture that stand out of it.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from infer.mask import EXPOSURE_TOL

_VALID = (0.03, 0.9)  # gamma values the estimate trusts: above the darkest codes, below clipping
_SAMPLES = 60_000  # pixels the estimate reads at most (a regular grid)
_MIN_PIXELS = 300  # fewer usable ones than this: no estimate
_MIN_SIGMA = 1e-6  # a per-pixel strength floor (y units): a zero would divide by zero
_MAD_TO_SIGMA = 1.4826  # a Gaussian's standard deviation from its median absolute deviation


def reference_noise(frames: np.ndarray, exposures: Sequence[float], ref: int,
                    mats: Sequence[np.ndarray | None] | None = None) -> float | None:
    """Standard deviation of the reference's noise in y = sqrt(linear) units, from its
    difference to the nearest frame of the same exposure; None without such a frame or
    with too few pixels to tell. ``mats``: the frames' 2x3 onto the reference when they
    are not warped yet (that frame is then read at the nearest pixel: interpolating would
    average its noise away)."""
    t_ref = float(exposures[ref])
    same = [j for j in range(len(exposures)) if j != ref and abs(exposures[j] - t_ref) <= EXPOSURE_TOL * t_ref]
    h, w = frames.shape[1:3]
    step = max(1, int(np.sqrt(h * w / _SAMPLES)))  # a grid of ~_SAMPLES pixels is plenty for a spread
    a = np.ascontiguousarray(frames[ref][::step, ::step], np.float32)
    for j in sorted(same, key=lambda k: abs(k - ref)):
        b = _partner_grid(frames[j], None if mats is None else mats[j], step)
        # a window padded at a stream's start or end repeats the reference itself: a copy
        # differs by nothing, which would read as a noise-free camera and leave the filter off
        if not np.array_equal(a, b):
            break
    else:
        return None
    ok = _usable(a) & _usable(b)
    if ok.sum() < _MIN_PIXELS:
        return None
    d = np.power(a[ok], np.float32(1.1)) - np.power(b[ok], np.float32(1.1))  # y = L^1.1 = sqrt(L^2.2)
    d = d.ravel()
    d -= np.median(d)
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(d)))
    if spread <= 0.0:  # most pixels equal to the code: noise-free (rendered) frames, nothing to filter
        return None
    d = d[np.abs(d) < 3.0 * spread]  # motion and misalignment are not noise: trim, then look again
    if d.size < _MIN_PIXELS:
        return None
    # the spread of a difference of two frames is sqrt(2) times one frame's; the trim at 3σ
    # leaves a Gaussian's spread 1.4 % too low, close enough
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0)
    return sigma if sigma > 0.0 else None


def _partner_grid(frame: np.ndarray, M: np.ndarray | None, step: int) -> np.ndarray:
    """The reference's sampling grid read in its same-exposure partner; with ``M`` (its 2x3
    onto the reference) at the nearest pixel of its own."""
    if M is None:
        return np.ascontiguousarray(frame[::step, ::step], np.float32)
    h, w = frame.shape[:2]
    gy, gx = np.mgrid[0:h:step, 0:w:step].astype(np.float32)  # ref(p) = frame(M^-1 p)
    inv = cv2.invertAffineTransform(np.asarray(M, np.float64)).astype(np.float32)
    x = np.rint(inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]).astype(np.intp).clip(0, w - 1)
    y = np.rint(inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]).astype(np.intp).clip(0, h - 1)
    return np.asarray(frame, np.float32)[y, x]


def _usable(L: np.ndarray) -> np.ndarray:
    """(H, W): every channel within _VALID (elementwise: NumPy's reductions over a last axis
    of 3 are slow)."""
    m = (L > np.float32(_VALID[0])) & (L < np.float32(_VALID[1]))
    return m[..., 0] & m[..., 1] & m[..., 2]


def denoise(H: np.ndarray, t_ref: float, sigma: float | np.ndarray, px: int = 5) -> np.ndarray:
    """Bilateral filter of linear HDR ``H`` (per unit exposure) in y = sqrt(H·t_ref), its
    range ``sigma`` (y units; an (H, W) map: per pixel, by filtering y / sigma with range 1),
    over ``px`` × ``px`` pixels; a new float32 array."""
    if np.isscalar(sigma) and sigma <= 0:
        return H
    y = np.multiply(H, np.float32(t_ref), dtype=np.float32)
    np.maximum(y, np.float32(0.0), out=y)
    cv2.sqrt(y, dst=y)
    if np.isscalar(sigma):
        out = cv2.bilateralFilter(y, px, float(sigma), px / 2.0)
    else:
        s = np.maximum(np.asarray(sigma, np.float32), np.float32(_MIN_SIGMA))  # y / 0 would be NaN
        s3 = cv2.merge((s, s, s))
        cv2.divide(y, s3, dst=y)
        out = cv2.bilateralFilter(y, px, 1.0, px / 2.0)
        cv2.multiply(out, s3, dst=out)
    cv2.multiply(out, out, dst=out, scale=1.0 / t_ref)
    return out
