"""Quality figures of the paper's evaluation: PSNR-μ, PSNR-L and temporal flicker.

HDR values (H = lin/t) are normalised by the shortest exposure of the cycle, so 1.0 is
the brightest value the short exposure could record, and clipped to [0, 1] (design §4).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MU = 5000.0


def normalise(hdr: np.ndarray, t_min: float) -> np.ndarray:
    return np.clip(np.asarray(hdr, np.float32) * np.float32(t_min), 0.0, 1.0)


def mu_law(x: np.ndarray, mu: float = MU) -> np.ndarray:
    """The differentiable tone curve of the paper, eq. (1), on values in [0, 1]."""
    return np.log1p(mu * x) / np.log1p(mu)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0, mask: np.ndarray | None = None) -> float:
    """PSNR over every value, or over the pixels where ``mask`` (H, W) is true (NaN if none)."""
    err = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(np.mean(err))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def psnr_mu(pred: np.ndarray, gt: np.ndarray, t_min: float, mask: np.ndarray | None = None) -> float:
    return psnr(mu_law(normalise(pred, t_min)), mu_law(normalise(gt, t_min)), mask=mask)


def psnr_l(pred: np.ndarray, gt: np.ndarray, t_min: float, mask: np.ndarray | None = None) -> float:
    return psnr(normalise(pred, t_min), normalise(gt, t_min), mask=mask)


def mu_sq_error(pred: np.ndarray, gt: np.ndarray, t_min: float, mask: np.ndarray | None = None) -> tuple[float, int]:
    """(sum of squared μ-law errors, values summed) over the pixels where ``mask`` (H, W) is
    true: regions are scored by pooling these over frames, so a frame where a region is
    tiny (or exact) does not swing the mean."""
    err = (mu_law(normalise(pred, t_min)).astype(np.float64) - mu_law(normalise(gt, t_min))) ** 2
    if mask is not None:
        err = err[mask]
    return float(err.sum()), int(err.size)


def pooled_psnr(sse: float, count: int) -> float:
    """PSNR of pooled squared errors (peak 1); NaN when nothing was pooled."""
    if count == 0:
        return float("nan")
    return float("inf") if sse == 0 else 10.0 * float(np.log10(count / sse))


def flicker(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], t_min: float) -> list[float]:
    """mean |ΔT_pred − ΔT_gt| between consecutive frames, in the μ-law domain."""
    out = []
    prev = None
    for p, g in zip(preds, gts):
        cur = (mu_law(normalise(p, t_min)), mu_law(normalise(g, t_min)))
        if prev is not None:
            out.append(float(np.mean(np.abs((cur[0] - prev[0]) - (cur[1] - prev[1])))))
        prev = cur
    return out
