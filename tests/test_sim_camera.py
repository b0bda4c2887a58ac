"""The simulated camera: payload layouts, exposure schedule, ground truth, noise, motion."""
import math
import time

import cv2
import numpy as np
import pytest

from capture.motion import Wave
from capture.sensor import Sensor, bayer_channels, mosaic
from capture.sim import SimCamera, SimConfig
from hdrstream.crf import CRF, save_crf
from hdrstream.frame import decode, encode
from hdrstream.hdrio import read_exr, write_exr

SMALL = dict(width=96, height=64, frames=4)


def camera(**kw) -> SimCamera:
    return SimCamera(SimConfig(**{**SMALL, **kw}))


def linearise(code: np.ndarray, white: float) -> np.ndarray:
    return (code.astype(np.float64) / white) ** 2.2


@pytest.mark.parametrize("fmt, shape, dtype, white", [
    ("RGB8", (64, 96, 3), np.uint8, 255),
    ("BayerRG8", (64, 96), np.uint8, 255),
    ("BayerRG12", (64, 96), np.uint16, 4095),
])
def test_payload_layout_and_protocol_round_trip(fmt, shape, dtype, white):
    frames = list(camera(pixel_format=fmt).frames())
    assert len(frames) == 4
    for f in frames:
        assert f.kind == "frame" and f.pixel_format == fmt
        assert f.data.shape == shape and f.data.dtype == dtype
        assert f.data.max() <= white
        back = decode(encode(f))  # the protocol's validator accepts it
        assert np.array_equal(back.data, f.data) and back.meta["stem"] == f.stem
    if white == 4095:
        assert max(int(f.data.max()) for f in frames) > 255  # really 12-bit codes


@pytest.mark.parametrize("exposures, ratios", [(2, (1, 8)), (3, (1, 4, 16))])
def test_default_exposure_cycle(exposures, ratios):
    cam = camera(exposures=exposures, frames=7)
    cycle = cam.exposure_cycle
    assert len(cycle) == exposures and cycle[0] == min(cycle)
    assert np.allclose(np.array(cycle) / cycle[0], ratios)
    assert max(cycle) <= 1 / 30 + 1e-12
    for i, f in enumerate(cam.frames()):
        assert (f.seq, f.set, f.stem, f.t_ns) == (i, i % exposures, f"{i:06d}", int(i * 1e9 / 30))
        assert f.exposure_s == cycle[i % exposures]
        assert f.stream == "sim" and f.gain_db == cam.gain_db


def test_custom_ratios_and_procedural_exposures_in_the_ms_range():
    cam = camera(ratios=(2, 6))
    assert np.allclose(np.array(cam.exposure_cycle) / cam.exposure_cycle[0], (1, 3))
    for seed in range(3):
        t_short = camera(seed=seed, width=320, height=180).exposure_cycle[0]
        assert 1e-4 < t_short < 4e-3


def test_gain_makes_up_for_exposure_capped_by_the_frame_rate():
    slow = camera(fps=30)
    fast = camera(fps=2000)  # 1/2000 s per frame cannot hold 8 x the short exposure
    assert slow.gain_db == 0.0
    assert max(fast.exposure_cycle) <= 1 / 2000 + 1e-12
    assert fast.gain_db > 0 and next(fast.frames()).gain_db == fast.gain_db
    # ground truth includes the gain: same scene, brighter by exactly the gain
    assert np.allclose(fast.ground_truth(0), slow.ground_truth(0) * fast.gain, rtol=1e-5)
    # and an ideal camera at that gain records H_gt * t
    ideal = camera(fps=2000, noise=False)
    f = next(ideal.frames())
    lin = np.clip(ideal.ground_truth(0) * f.exposure_s, 0, 1)
    assert np.abs(f.data - 255 * lin ** (1 / 2.2)).max() <= 0.51


def test_same_seed_same_frames_other_seed_other_frames():
    a, b, c = camera(seed=5), camera(seed=5), camera(seed=6)
    fa, fb, fc = list(a.frames()), list(b.frames()), list(c.frames())
    assert all(np.array_equal(x.data, y.data) for x, y in zip(fa, fb))
    assert np.array_equal(a.ground_truth(3), b.ground_truth(3))
    assert not np.array_equal(fa[0].data, fc[0].data)
    # any frame can be re-rendered out of order, identically
    assert np.array_equal(a.capture(2), fa[2].data)


def test_noiseless_frames_linearise_to_ground_truth_times_exposure():
    cam = camera(noise=False, width=160, height=96, frames=6)
    for f in cam.frames():
        gt = cam.ground_truth(f.seq)
        code = f.data.astype(np.float64)
        expected = 255 * np.clip(gt * f.exposure_s, 0, 1) ** (1 / 2.2)
        assert np.abs(code - expected).max() <= 0.5 + 1e-3  # rounding, nothing else
        ok = (code > 5) & (code < 250)  # not clipped, not in the steep toe
        assert ok.mean() > 0.5
        # the linearised pixel / t brackets H_gt within half a code step either side
        lo = linearise(code - 0.5, 255) / f.exposure_s
        hi = linearise(code + 0.5, 255) / f.exposure_s
        tol = 1e-5 * gt
        assert np.all((gt >= lo - tol) & (gt <= hi + tol) | ~ok)
        h = linearise(code, 255) / f.exposure_s
        assert np.median(np.abs(h - gt)[ok] / gt[ok]) < 0.01


def test_bayer_sites_see_their_own_colour():
    cam = camera(noise=False, pixel_format="BayerRG12", width=160, height=96)
    f = next(cam.frames())
    gt = cam.ground_truth(0)
    lin = linearise(f.data, 4095) / f.exposure_s
    for (dy, dx), c in np.ndenumerate(np.array([[0, 1], [1, 2]])):  # R G / G B
        site, truth = lin[dy::2, dx::2], gt[dy::2, dx::2]
        ok = (f.data[dy::2, dx::2] > 100) & (f.data[dy::2, dx::2] < 4000)
        assert ok.mean() > 0.3
        assert np.allclose(site[ok], truth[..., c][ok], rtol=0.01, atol=1e-3)
        others = [k for k in range(3) if k != c]
        # it is not some other channel (the scene is colourful enough to tell)
        assert all(np.median(np.abs(site[ok] - truth[..., k][ok]) / truth[..., c][ok]) > 0.02 for k in others)
    assert bayer_channels("RG").tolist() == [[0, 1], [1, 2]]
    assert bayer_channels("BG").tolist() == [[2, 1], [1, 0]]


def test_what_the_camera_sees_spans_over_16_stops():
    gt = camera(width=320, height=180).ground_truth(0)
    assert math.log2(gt.max() / gt.min()) >= 16


def test_crf_file_is_applied_per_channel(tmp_path):
    """A tabulated CRF reaches each channel (and each Bayer site) through its own curve."""
    x = np.linspace(0, 1, 4096)
    save_crf(tmp_path / "crf.json", np.stack([x**2.2, x, x**2.2]))  # G is linear
    for fmt, white in (("RGB8", 255), ("BayerRG12", 4095)):
        cam = camera(noise=False, pixel_format=fmt, crf=str(tmp_path / "crf.json"))
        f = next(cam.frames())
        lin = np.clip(cam.ground_truth(0) * f.exposure_s, 0, 1)
        code = np.stack([lin[..., 0] ** (1 / 2.2), lin[..., 1], lin[..., 2] ** (1 / 2.2)], -1) * white
        if fmt.startswith("Bayer"):
            code = mosaic(code)
        assert np.abs(f.data - code).max() <= 0.6


def test_occluder_moves_against_the_background():
    cam = camera(motion=0.0, occluders=1, width=160, height=96)
    a0, a1 = cam.occluder_alpha(0), cam.occluder_alpha(8)
    assert a0.max() > 0.99 and a1.max() > 0.99
    g0, g1 = cam.ground_truth(0), cam.ground_truth(8)
    clear = (a0 == 0) & (a1 == 0)
    assert np.array_equal(g0[clear], g1[clear])  # static camera: the background is still
    assert not np.allclose(g0[~clear], g1[~clear])

    def centroid(a):
        ys, xs = np.nonzero(a > 0.5)
        return np.array([xs.mean(), ys.mean()])

    assert np.linalg.norm(centroid(a1) - centroid(a0)) > 2.0

    # with camera motion the object's motion is not the camera's: the camera path maps the
    # object's frame-0 position somewhere else than where it is in frame 8
    moving = camera(motion=1.0, occluders=1, width=160, height=96)
    c0, c8 = centroid(moving.occluder_alpha(0)), centroid(moving.occluder_alpha(8))
    m0, m8 = moving.path.matrix(0.0), moving.path.matrix(8 / 30)
    world = m0 @ np.r_[c0, 1]
    predicted = np.linalg.solve(m8[:, :2], world - m8[:, 2])
    assert np.linalg.norm(predicted - c8) > 2.0
    assert not np.allclose(m0, m8)  # and the camera did move


def test_gt_dir_gets_one_float_exr_per_frame(tmp_path):
    cam = SimCamera(SimConfig(**SMALL), gt_dir=tmp_path / "gt")
    stems = [f.stem for f in cam.frames()]
    assert sorted(p.stem for p in (tmp_path / "gt").glob("*.exr")) == stems
    assert np.array_equal(read_exr(tmp_path / "gt" / "000002.exr"), cam.ground_truth(2))


def _gradient_scene(h=120, w=200) -> np.ndarray:
    x = np.linspace(0, 1, w, dtype=np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 2.0 ** (12 * x - 6)  # 12 stops left to right, red brightest
    img[..., 1] = img[..., 0] * 0.5
    img[..., 2] = img[..., 0] * 0.25
    return img


@pytest.mark.parametrize("suffix", [".exr", ".hdr"])
def test_hdr_image_as_scene(tmp_path, suffix):
    path = tmp_path / f"scene{suffix}"
    img = _gradient_scene()
    if suffix == ".exr":
        write_exr(path, img, half=False)
    else:
        assert cv2.imwrite(str(path), img[..., ::-1].copy())
    cam = camera(scene=str(path), occluders=0, motion=0.0, noise=False)
    gt = cam.ground_truth(0)
    assert gt.shape == (64, 96, 3)
    # the image's own content: brighter to the right, R > G > B in the same ratios
    assert gt[:, -5:].mean() > 100 * gt[:, :5].mean()
    assert np.allclose(gt[..., 1] / gt[..., 0], 0.5, rtol=0.03)
    assert np.allclose(gt[..., 2] / gt[..., 0], 0.25, rtol=0.03)
    f = next(cam.frames())
    assert f.data.shape == (64, 96, 3) and 0 < f.data.mean() < 255
    moving = camera(scene=str(path), motion=1.0, frames=3)
    assert [f.seq for f in moving.frames()] == [0, 1, 2]


@pytest.mark.parametrize("kw, err, match", [
    (dict(pixel_format="BayerRG8", width=95), ValueError, "even"),
    (dict(pixel_format="BayerRG12", height=63), ValueError, "even"),
    (dict(ratios=(1, 4, 16)), ValueError, "exposures"),
    (dict(exposures=4), ValueError, "2 or 3"),
    (dict(ratios=(8, 1)), ValueError, "shortest"),
    (dict(pixel_format="RGB9"), ValueError, "unknown pixel format"),
    (dict(pixel_format="RGBf32"), ValueError, "cannot produce"),
    (dict(scene="/nonexistent/scene.exr"), FileNotFoundError, "scene"),
    (dict(fps=0), ValueError, "fps"),
    (dict(crf="/nonexistent/crf.json"), FileNotFoundError, "CRF"),
])
def test_bad_config_is_a_clear_error(kw, err, match):
    with pytest.raises(err, match=match):
        SimConfig(**{**SMALL, **kw})


def test_shot_and_read_noise_statistics():
    sensor = Sensor("BayerRG12", CRF(gamma=1.0), full_well_e=10000.0, read_noise_e=3.0)
    rng = np.random.default_rng(0)
    for electrons in (5.0, 2000.0):  # Poisson branch, Gaussian branch
        h = np.full((200, 200, 3), electrons / 10000.0 / 0.01, np.float32)  # at t = 10 ms
        lin = sensor.linear(h, 0.01, 1.0, rng) * 10000.0
        assert abs(lin.mean() - electrons) < 0.05 * electrons
        assert lin.var() == pytest.approx(electrons + 9.0, rel=0.05)
    # gain amplifies the noise of the (fewer) collected electrons: same lin, 4x the variance
    h = np.full((200, 200, 3), 0.2 / 0.01, np.float32)
    base = sensor.linear(h, 0.01, 1.0, rng).var()
    pushed = sensor.linear(h, 0.01, 4.0, rng).var()
    assert pushed == pytest.approx(4 * base, rel=0.1)


def test_mosaic_layout():
    rgb = np.zeros((4, 6, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1, 2, 3
    assert mosaic(rgb, "RG")[:2, :2].tolist() == [[1, 2], [2, 3]]
    with pytest.raises(ValueError, match="even"):
        mosaic(rgb[:3])


def test_wave_is_bounded_and_paced():
    w = Wave.random(np.random.default_rng(1), rms_speed=10.0, freq_hz=(0.2, 0.4))
    t = np.linspace(0, 60, 6001)
    v = np.array([w(x) for x in t])
    assert np.abs(v).max() <= w.bound + 1e-9
    speed = np.diff(v) / np.diff(t)
    assert np.sqrt(np.mean(speed**2)) == pytest.approx(10.0, rel=0.25)


def test_realtime_paces_frames_and_close_stops_the_stream():
    cam = camera(realtime=True, fps=50, frames=5)
    t0 = time.monotonic()
    assert len(list(cam.frames())) == 5
    assert time.monotonic() - t0 >= 4 / 50 - 1e-3
    cam = camera(frames=10)
    it = cam.frames()
    next(it)
    cam.close()
    assert list(it) == []


def test_an_outage_skips_the_frames_of_its_duration_and_names_them():
    from capture.sim import SimCamera, SimConfig

    cam = SimCamera(SimConfig(width=32, height=24, frames=20, fps=10.0, outage=(0.5, 0.8)))
    assert [f.seq for f in cam.frames()] == [0, 1, 2, 3, 4, *range(13, 20)]
    assert cam.source_gaps == [[5, 12]]
