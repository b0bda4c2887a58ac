"""Procedural HDR worlds, user HDR images as worlds, and the foreground object sprites."""
import math

import numpy as np
import pytest

from capture.scene import BRIGHT_REF, fbm, load_world, object_sprite, procedural_world
from hdrstream.hdrio import write_exr


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_procedural_world_spans_over_16_stops_in_colour(seed):
    world = procedural_world(240, 400, seed, view=(180, 320))
    assert world.dtype == np.float32 and world.shape == (240, 400, 3)
    assert np.isfinite(world).all() and world.min() > 0
    assert math.log2(world.max() / world.min()) >= 16
    assert np.median(world.max(axis=2) / world.min(axis=2)) > 1.15  # not grey
    # lamps clip, but only a sliver of the world is that bright
    assert (world.max(axis=2) > 50 * np.median(world)).mean() < 0.01


def test_procedural_world_is_deterministic_by_seed():
    a = procedural_world(96, 160, 7)
    assert np.array_equal(a, procedural_world(96, 160, 7))
    assert not np.array_equal(a, procedural_world(96, 160, 8))


def test_procedural_world_has_smooth_regions_and_fine_detail():
    world = procedural_world(360, 640, 1)
    log = np.log2(world.mean(axis=2))
    step = np.abs(np.diff(log, axis=1))
    assert np.median(step) < 0.1  # most neighbours are alike (large smooth surfaces)
    assert (step > 1.0).mean() > 0.002  # but there are plenty of sharp edges


def test_fbm_is_normalised_noise():
    n = fbm(200, 300, np.random.default_rng(0), channels=2, coarse_px=64)
    assert n.shape == (200, 300, 2)
    assert np.allclose(n.mean(axis=(0, 1)), 0, atol=0.1) and np.allclose(n.std(axis=(0, 1)), 1, atol=0.15)
    assert fbm(50, 60, np.random.default_rng(0)).shape == (50, 60)


def test_load_world_rescales_and_cleans_user_images(tmp_path):
    img = np.full((40, 60, 3), 0.5, np.float32)
    img[0, 0] = np.nan
    img[1, 1] = -3
    write_exr(tmp_path / "a.exr", img, half=False)
    world = load_world(tmp_path / "a.exr")
    assert np.isfinite(world).all() and world.min() >= 0
    assert np.percentile(world.max(axis=2), 99.5) == pytest.approx(BRIGHT_REF)
    with pytest.raises(FileNotFoundError):
        load_world(tmp_path / "missing.exr")
    write_exr(tmp_path / "black.exr", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="black"):
        load_world(tmp_path / "black.exr")


def test_object_sprite_is_premultiplied_with_a_soft_edge():
    sprite = object_sprite(48, np.random.default_rng(3))
    assert sprite.shape == (48, 48, 4) and sprite.dtype == np.float32
    alpha = sprite[..., 3]
    assert alpha.max() == pytest.approx(1.0) and alpha.min() == 0.0
    assert ((alpha > 0) & (alpha < 1)).any()  # anti-aliased
    assert np.all(sprite[..., :3][alpha == 0] == 0)  # premultiplied
