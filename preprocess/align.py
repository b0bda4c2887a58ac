"""Global similarity alignment between two differently exposed frames (design §4).

The darker frame is first brought to the brighter one's exposure, so both saturate in
the same places and features look alike. A coarse estimate comes from ORB + RANSAC on a
downscaled copy (robust to large shifts, cheap); it is refined to sub-pixel accuracy by
tracking corners with pyramidal Lucas-Kanade from the coarse prediction, then a second
RANSAC fit. Anything doubtful falls back to the identity with a warning: a missed
camera shake costs a little ghosting, a wild warp destroys the frame.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from hdrstream.geometry import IDENTITY, compose, invert, is_identity, warp  # noqa: F401 (preprocess's API)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignConfig:
    """Knobs of :func:`estimate_similarity`; the defaults suit 720p–4K machine vision."""

    coarse_px: int = 512  # long side of the image the coarse ORB search runs on
    refine_px: int = 800  # ... and the Lucas-Kanade refinement (accuracy scales with it)
    orb_features: int = 500
    corners: int = 400  # Lucas-Kanade refinement points
    min_inliers: int = 15
    min_inlier_ratio: float = 0.25
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_rotation_deg: float = 10.0
    max_shift_frac: float = 0.15  # of width (x) and height (y)


def grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (H, W) float image -> float32 (H, W) luma-ish grey."""
    img = np.asarray(img, np.float32)
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img


def exposure_match(
    src_L: np.ndarray, dst_L: np.ndarray, t_src: float, t_dst: float
) -> tuple[np.ndarray, np.ndarray]:
    """Both as uint8 grey at the brighter exposure: clip(L·(t_bright/t_dark)^(1/2.2), 0, 1)."""
    a, b = grey(src_L), grey(dst_L)
    if t_src < t_dst:
        a = a * np.float32((t_dst / t_src) ** (1 / 2.2))
    elif t_dst < t_src:
        b = b * np.float32((t_src / t_dst) ** (1 / 2.2))
    return _u8(a), _u8(b)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def estimate_similarity(
    src_L: np.ndarray,
    dst_L: np.ndarray,
    t_src: float,
    t_dst: float,
    cfg: AlignConfig = AlignConfig(),
) -> tuple[np.ndarray, bool]:
    """Similarity (rotation, uniform scale, translation) mapping ``src`` pixels onto ``dst``.

    Args:
        src_L, dst_L: (H, W, 3) or (H, W) gamma-2.2 images in [0, 1], same size.
        t_src, t_dst: their exposure times in seconds.

    Returns:
        ``(M, ok)``: M is 2x3 float64 with ``dst_xy = M @ [x, y, 1]``; on failure the
        identity and ``ok=False`` (a warning says why).
    """
    if src_L.shape[:2] != dst_L.shape[:2]:
        raise ValueError(f"frames differ in size: {src_L.shape[:2]} vs {dst_L.shape[:2]}")
    a, b = exposure_match(src_L, dst_L, t_src, t_dst)
    s = min(1.0, cfg.refine_px / max(a.shape))
    if s < 1.0:  # both steps run on copies at most refine_px wide; M is rescaled at the end
        a, b = _resize(a, s), _resize(b, s)
    coarse, why = _coarse_orb(a, b, cfg)
    if coarse is None:
        return _fail(why)
    M, why = _refine_lk(a, b, coarse, cfg)
    if M is None:
        return _fail(why)
    M = _unscale(M, s)
    why = _implausible(M, src_L.shape, cfg)
    if why:
        return _fail(why)
    return M, True


def _fail(why: str) -> tuple[np.ndarray, bool]:
    log.warning("global alignment failed (%s); using the identity", why)
    return IDENTITY.copy(), False


def _coarse_orb(a: np.ndarray, b: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray | None, str]:
    """ORB + cross-checked Hamming matches + RANSAC on a downscaled pair."""
    s = min(1.0, cfg.coarse_px / max(a.shape))
    if s < 1.0:
        a, b = _resize(a, s), _resize(b, s)
    orb = cv2.ORB_create(nfeatures=cfg.orb_features, edgeThreshold=15, patchSize=15, fastThreshold=8)
    ka, da = orb.detectAndCompute(a, None)
    kb, db = orb.detectAndCompute(b, None)
    if da is None or db is None or len(ka) < cfg.min_inliers or len(kb) < cfg.min_inliers:
        return None, f"too few features ({len(ka)}, {len(kb)})"
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    if len(matches) < cfg.min_inliers:
        return None, f"too few matches ({len(matches)})"
    pa = np.float32([ka[m.queryIdx].pt for m in matches])
    pb = np.float32([kb[m.trainIdx].pt for m in matches])
    M, inl = cv2.estimateAffinePartial2D(
        pa, pb, method=cv2.RANSAC, ransacReprojThreshold=2.0, maxIters=2000, confidence=0.995
    )
    n_in = 0 if inl is None else int(inl.sum())
    if M is None or n_in < cfg.min_inliers:
        return None, f"too few coarse inliers ({n_in} of {len(matches)})"
    return _unscale(M.astype(np.float64), s), ""


def _resize(img: np.ndarray, s: float) -> np.ndarray:
    size = (round(img.shape[1] * s), round(img.shape[0] * s))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _unscale(M: np.ndarray, s: float) -> np.ndarray:
    """A transform fitted on an image resized by ``s`` -> the same motion at full size.

    Pixel centres map as x_s = s·x + c with c = (s - 1)/2, so t = (t_s - c + A·c) / s.
    """
    if s == 1.0:
        return M
    c = np.full(2, (s - 1.0) / 2.0)
    out = M.copy()
    out[:, 2] = (M[:, 2] - c + M[:, :2] @ c) / s
    return out


def _refine_lk(
    a: np.ndarray, b: np.ndarray, coarse: np.ndarray, cfg: AlignConfig
) -> tuple[np.ndarray | None, str]:
    """Track corners of ``a`` into ``b`` from the coarse prediction; refit with RANSAC."""
    pts = cv2.goodFeaturesToTrack(a, cfg.corners, qualityLevel=0.01, minDistance=max(8, max(a.shape) // 60), blockSize=7)
    if pts is None or len(pts) < cfg.min_inliers:
        return coarse, ""  # keep the coarse fit rather than failing outright
    pred = cv2.transform(pts, coarse).astype(np.float32)
    found, st, _ = cv2.calcOpticalFlowPyrLK(
        a, b, pts, pred.copy(), winSize=(21, 21), maxLevel=2,
        criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01),
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
    )
    ok = st.ravel() == 1
    # Drop tracks that wandered far from the coarse prediction: occlusions, moving objects.
    ok &= np.linalg.norm((found - pred).reshape(-1, 2), axis=1) < 4.0
    if ok.sum() < cfg.min_inliers:
        return coarse, ""
    M, inl = cv2.estimateAffinePartial2D(
        pts[ok], found[ok], method=cv2.RANSAC, ransacReprojThreshold=1.0, maxIters=2000, confidence=0.995
    )
    n_in = 0 if inl is None else int(inl.sum())
    if M is None or n_in < max(cfg.min_inliers, cfg.min_inlier_ratio * ok.sum()):
        return None, f"refinement found {n_in} inliers of {int(ok.sum())} tracks"
    return M.astype(np.float64), ""


def _implausible(M: np.ndarray, shape: tuple[int, ...], cfg: AlignConfig) -> str:
    """Reason the similarity is not a camera shake we believe, or '' if it is fine."""
    if not np.all(np.isfinite(M)):
        return "non-finite transform"
    scale = math.hypot(M[0, 0], M[1, 0])
    rot = math.degrees(math.atan2(M[1, 0], M[0, 0]))
    h, w = shape[:2]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    dx = M[0, 0] * cx + M[0, 1] * cy + M[0, 2] - cx
    dy = M[1, 0] * cx + M[1, 1] * cy + M[1, 2] - cy
    lo, hi = cfg.scale_range
    if not lo <= scale <= hi:
        return f"implausible scale {scale:.3f}"
    if abs(rot) > cfg.max_rotation_deg:
        return f"implausible rotation {rot:.1f} deg"
    if abs(dx) > cfg.max_shift_frac * w or abs(dy) > cfg.max_shift_frac * h:
        return f"implausible shift ({dx:.0f}, {dy:.0f}) px"
    return ""
