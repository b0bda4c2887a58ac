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


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def psnr_mu(pred: np.ndarray, gt: np.ndarray, t_min: float) -> float:
    return psnr(mu_law(normalise(pred, t_min)), mu_law(normalise(gt, t_min)))


def psnr_l(pred: np.ndarray, gt: np.ndarray, t_min: float) -> float:
    return psnr(normalise(pred, t_min), normalise(gt, t_min))


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
