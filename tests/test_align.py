"""Global similarity alignment across exposures (preprocess.align)."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from preprocess.align import IDENTITY, compose, estimate_similarity, invert, warp

H, W = 160, 240


def textured_radiance(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Multi-scale texture with a ~250:1 radiance range, (h, w, 3)."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((h, w), np.float32)
    for s in (3, 12, 48):
        n = rng.random((h // s + 2, w // s + 2)).astype(np.float32)
        acc += cv2.resize(n, (w + 2 * s, h + 2 * s), interpolation=cv2.INTER_CUBIC)[:h, :w]
    acc = (acc - acc.min()) / (acc.max() - acc.min())
    return (0.004 * 2 ** (acc * 8))[..., None] * np.float32([1.0, 0.9, 0.7])


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    M = cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), angle_deg, scale)
    M[:, 2] += (tx, ty)
    return M


def pair(M: np.ndarray, t_src: float, t_dst: float, noise: float = 2e-3, seed: int = 0):
    """(src_L, dst_L): the same world seen through ``M`` (src pixel -> dst pixel) at two exposures."""
    rng = np.random.default_rng(seed)
    world = textured_radiance(H + 80, W + 80, seed)
    crop = np.float64([[1, 0, -40], [0, 1, -40]])  # world -> src pixels
    src = cv2.warpAffine(world, crop, (W, H))
    dst = cv2.warpAffine(world, compose(M, crop), (W, H))

    def ldr(rad, t):
        lin = rad * t + rng.normal(0, noise, rad.shape).astype(np.float32)
        return np.clip(lin, 0, 1) ** (1 / 2.2)

    return ldr(src, t_src), ldr(dst, t_dst)


def corner_error(M_true: np.ndarray, M_est: np.ndarray) -> float:
    corners = np.float64([[0, 0, 1], [W - 1, 0, 1], [0, H - 1, 1], [W - 1, H - 1, 1]]).T
    return float(np.abs(M_true @ corners - M_est @ corners).max())


@pytest.mark.parametrize("t_src,t_dst", [(1.0, 8.0), (8.0, 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_similarity_across_exposures(t_src, t_dst, seed):
    M = similarity(2.0, 1.02, 4.3, -2.6)
    src, dst = pair(M, t_src, t_dst, seed=seed)
    M_est, ok = estimate_similarity(src, dst, t_src, t_dst)
    assert ok
    assert M_est.shape == (2, 3) and M_est.dtype == np.float64
    assert corner_error(M, M_est) < 0.5


def test_recovers_identity():
    src, dst = pair(IDENTITY, 1.0, 8.0)
    M_est, ok = estimate_similarity(src, dst, 1.0, 8.0)
    assert ok and corner_error(IDENTITY, M_est) < 0.3


def test_flat_frames_give_identity_and_warning(caplog):
    flat = np.full((H, W, 3), 0.4, np.float32)
    with caplog.at_level(logging.WARNING, logger="preprocess.align"):
        M, ok = estimate_similarity(flat, flat * 0.5, 8.0, 1.0)
    assert not ok
    np.testing.assert_array_equal(M, IDENTITY)
    assert "global alignment failed" in caplog.text


def test_implausible_motion_gives_identity(caplog):
    M = similarity(35.0, 1.0, 0.0, 0.0)  # far more roll than a camera shake
    src, dst = pair(M, 1.0, 1.0, noise=0.0)
    with caplog.at_level(logging.WARNING, logger="preprocess.align"):
        M_est, ok = estimate_similarity(src, dst, 1.0, 1.0)
    assert not ok
    np.testing.assert_array_equal(M_est, IDENTITY)
    assert "global alignment failed" in caplog.text


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        estimate_similarity(np.zeros((8, 8, 3)), np.zeros((8, 10, 3)), 1.0, 1.0)


def test_warp_inverts_the_motion():
    M = similarity(1.5, 1.01, 3.0, 1.0)
    src, dst = pair(M, 1.0, 1.0, noise=0.0)
    back = warp(dst, invert(M), dst.shape)
    inner = (slice(20, H - 20), slice(20, W - 20))
    assert np.abs(back[inner] - src[inner]).mean() < 0.01
    assert warp(src, IDENTITY, src.shape) is src
    np.testing.assert_allclose(compose(invert(M), M), IDENTITY, atol=1e-12)
