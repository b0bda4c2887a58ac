"""The validation splits: the dynamic one really holds fast large objects and channel-wise clipping."""
import numpy as np
import pytest

from capture.sim import SimCamera, SimConfig
from preprocess.stage import PreprocessConfig, Preprocessor
from training.data import dynamic_validation_set
from training.splits import SEED0, SPLITS, regions, split_config

BASE = SimConfig(width=256, height=144, frames=7, exposures=2, pixel_format="RGB8")


def test_splits_use_their_own_seeds_and_reject_unknown_names():
    seeds = {s: {split_config(s, i, BASE).seed for i in range(8)} for s in SPLITS}
    assert not seeds["static"] & seeds["dynamic"]
    assert split_config("static", 3, BASE) == SimConfig(**{**BASE.__dict__, "seed": SEED0["static"] + 3})
    with pytest.raises(ValueError, match="unknown split"):
        split_config("hard", 0, BASE)


def test_occluder_speed_scales_the_objects_motion_in_pixels():
    def travel(speed: float) -> float:
        cam = SimCamera(SimConfig(width=256, height=144, frames=2, occluders=1, occluder_speed=speed, seed=5))
        (occ,) = cam.occluders
        a, b = (np.array(occ.path.pose(t * occ.speed)[:2]) for t in (0.0, 1 / 30))
        return float(np.linalg.norm(b - a))

    assert travel(2.0) == pytest.approx(2 * travel(1.0), rel=0.05)
    assert travel(0.0) == 0.0


def test_the_sun_clips_the_long_exposure_red_first_over_a_large_area():
    cam = SimCamera(split_config("dynamic", 0, BASE))
    long = cam.capture(1)  # cycle (short, long): frame 1 is long
    clipped = long >= 250
    assert clipped.any(axis=2).mean() > 0.03  # large clipped areas, not a lamp
    assert clipped[..., 0].mean() > clipped[..., 2].mean()  # warm: red clips before blue
    assert (clipped.any(axis=2) & ~clipped.all(axis=2)).mean() > 0.01  # partly clipped pixels


def test_sun_needs_the_procedural_world(tmp_path):
    with pytest.raises(ValueError, match="procedural"):
        SimConfig(scene=str(tmp_path / "x.exr"), sun=True)


def test_regions_partition_the_frame_and_motion_covers_the_objects():
    cam = SimCamera(split_config("dynamic", 1, BASE))
    pre = Preprocessor(PreprocessConfig())
    windows = [w for f in cam.frames() for w in pre.process(f)]
    m = regions(cam, windows[-1])
    total = m["motion"].astype(int) + m["clipped"] + m["rest"]
    assert (total == 1).all()
    assert (m["motion"] >= (cam.occluder_alpha(windows[-1].seq) > 0.5)).all()
    assert (m["motion_clipped"] <= m["motion"]).all()


def test_dynamic_validation_set_is_cached_and_scores_classical_by_region(tmp_path):
    data = dynamic_validation_set(2, size=2, crop=64, cache_dir=tmp_path, per_sequence=2)
    assert data["ldr"].shape == (2, 5, 3, 64, 64) and data["regions"].shape == (2, 3, 64, 64)
    assert (data["regions"].sum(1) == 1).all()
    assert data["classical_regions"].shape == (2, 6) and np.isfinite(data["classical"].numpy()).all()
    again = dynamic_validation_set(2, size=2, crop=64, cache_dir=tmp_path, per_sequence=2)
    assert list(tmp_path.glob("val-dynamic-*.pt")) and (again["ldr"] == data["ldr"]).all()


def test_dynamic_validation_set_has_every_reference_exposure(tmp_path):
    # every other window of a two-exposure sequence has the same reference exposure: the set
    # must not pick checkpoints on short references alone
    data = dynamic_validation_set(2, size=4, crop=64, cache_dir=tmp_path, per_sequence=4)
    centre = data["expo"][:, data["expo"].shape[1] // 2]
    assert set(centre.tolist()) == set(data["expo"][0].tolist())
