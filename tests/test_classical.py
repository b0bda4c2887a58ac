"""infer: reconstructors, the well-exposed mask, the classical merge and the infer stage."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from hdrstream.frame import Frame, decode, encode
from hdrstream.quality import psnr_mu
from infer.classical import ClassicalConfig, ClassicalReconstructor
from infer.mask import high_ramp, low_ramp, well_exposed_mask
from infer.reconstructor import make_reconstructor
from infer.reference import ReferenceReconstructor
from infer.stage import InferStage
from preprocess.stage import PreprocessConfig, Preprocessor


def hdr_scene(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Static radiance (per unit exposure) spanning ~2^-9 .. 2^1: needs every exposure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    logr = -9 + 10 * x / (w - 1) + 0.5 * np.sin(y / 3.0) + 0.3 * rng.random((h, w))
    return (2.0 ** logr)[..., None] * np.float32([1.0, 0.8, 0.6])


def render(H: np.ndarray, t: float) -> np.ndarray:
    return np.clip(H * t, 0.0, 1.0) ** np.float32(1 / 2.2)


# -- mask -------------------------------------------------------------------------------

def test_mask_ramps():
    L = np.float32([0.0, 0.075, 0.15, 0.5, 0.9, 0.95, 1.0])
    np.testing.assert_allclose(low_ramp(L), [0, 0.25, 1, 1, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(high_ramp(L), [1, 1, 1, 1, 1, 0.25, 0], atol=1e-5)


def test_mask_role_follows_the_reference_exposure():
    L = np.full((2, 2, 3), 0.95, np.float32)
    L[0, 0] = 0.075
    low = well_exposed_mask(L, [1.0, 8.0, 1.0], 0)  # lowest exposure: dark is bad
    high = well_exposed_mask(L, [1.0, 8.0, 1.0], 1)  # highest: bright is bad
    mid = well_exposed_mask(L, [1.0, 4.0, 16.0], 1)  # middle: both
    assert low.shape == L.shape
    assert low[0, 0, 0] == pytest.approx(0.25) and low[1, 1, 0] == pytest.approx(1.0)
    assert high[0, 0, 0] == pytest.approx(1.0) and high[1, 1, 0] == pytest.approx(0.25, abs=1e-5)
    assert mid[0, 0, 0] == pytest.approx(0.25) and mid[1, 1, 0] == pytest.approx(0.25, abs=1e-5)


def test_mask_per_channel_or_max():
    L = np.float32([[[0.95, 0.5, 0.5]]])
    per = well_exposed_mask(L, [1.0, 8.0], 1)
    mx = well_exposed_mask(L, [1.0, 8.0], 1, reduce="max")
    np.testing.assert_allclose(per[0, 0], [0.25, 1, 1], atol=1e-5)
    assert mx.shape == (1, 1, 1) and mx[0, 0, 0] == pytest.approx(0.25, abs=1e-5)


# -- factory and reference ----------------------------------------------------------------

def test_make_reconstructor():
    assert make_reconstructor("classical").name == "classical"
    assert make_reconstructor("reference").name == "reference"
    with pytest.raises(ValueError, match="classical"):
        make_reconstructor("magic")
    assert make_reconstructor("net").name == "net"  # the shipped weights (infer/weights/)
    assert make_reconstructor("coarse").name == "coarse"


def test_reference_is_the_reference_frame_alone():
    L = np.random.default_rng(0).random((3, 4, 5, 3)).astype(np.float32)
    out = ReferenceReconstructor().reconstruct(L, [1.0, 8.0, 1.0], 1)
    np.testing.assert_allclose(out, L[1] ** 2.2 / 8.0, rtol=1e-5)


def test_bad_window_is_a_clear_error():
    rec = ClassicalReconstructor()
    with pytest.raises(ValueError, match="exposures"):
        rec.reconstruct(np.zeros((3, 4, 4, 3), np.float32), [1.0, 8.0], 1)
    with pytest.raises(ValueError, match="reference index"):
        rec.reconstruct(np.zeros((3, 4, 4, 3), np.float32), [1.0, 8.0, 1.0], 3)


# -- classical ----------------------------------------------------------------------------

def test_neighbours():
    assert ClassicalReconstructor.neighbours([1, 8, 1, 8, 1], 2) == [1, 3]
    assert ClassicalReconstructor.neighbours([1, 4, 16, 1, 4, 16, 1], 3) == [2, 1, 4, 5]
    assert ClassicalReconstructor.neighbours([1, 8, 1, 8, 1], 2, same_exposure=True) == [1, 0, 3, 4]


@pytest.mark.parametrize("exps", [(1.0, 8.0), (1.0, 4.0, 16.0)])
def test_static_noiseless_scene_is_recovered(exps):
    H = hdr_scene()
    k = len(exps)
    seq_exps = [exps[i % len(exps)] for i in range(2 * k + 1)]
    frames = np.stack([render(H, t) for t in seq_exps])
    for ref in (k - 1, k):  # short and long (or middle) references
        out = ClassicalReconstructor().reconstruct(frames, seq_exps, ref)
        assert out.shape == H.shape and out.dtype == np.float32
        seen = H * min(exps) < 0.97  # below the shortest exposure's clipping
        rel = np.abs(out - H)[seen] / H[seen]
        assert np.median(rel) < 1e-4 and rel.max() < 0.02
        assert psnr_mu(out, H, min(exps)) > 60


def test_two_exposure_cycles_also_merge_the_reference_exposure():
    """Static noisy 1:8 frames: the nearest frames of the reference's exposure average the
    reference's noise away, so the default (auto) beats the merge without them: by far for
    long references, whose well-exposed pixels had nothing else to average with, a little
    for short ones (the long neighbours already dominate them). Three-exposure cycles keep
    the merge without them."""
    rng = np.random.default_rng(0)
    H = hdr_scene(48, 64) * np.float32(0.05)  # mostly well exposed in the long frames
    exps = [1.0, 8.0, 1.0, 8.0, 1.0, 8.0]
    clean = [render(H, t) for t in exps]
    noisy = np.stack([np.clip(c + rng.normal(0, 0.01, c.shape).astype(np.float32), 0, 1) for c in clean])
    for ref in (2, 3):  # short and long references
        w = noisy[ref - 2:ref + 3]
        plain = ClassicalConfig(denoise=0.0)  # the merge itself, not its noise filter (tests/test_denoise.py)
        auto = ClassicalReconstructor(plain).reconstruct(w, exps[ref - 2:ref + 3], 2)
        without = ClassicalReconstructor(replace(plain, same_exposure=False)).reconstruct(w, exps[ref - 2:ref + 3], 2)
        gain = psnr_mu(auto, H, 1.0) - psnr_mu(without, H, 1.0)
        assert gain > (2.0 if ref == 3 else 0.1), f"reference {ref}: {gain:+.2f} dB"
    three = np.stack([render(H, t) for t in [1.0, 4.0, 16.0] * 3])[:7]
    e3 = [1.0, 4.0, 16.0, 1.0, 4.0, 16.0, 1.0]
    np.testing.assert_array_equal(
        ClassicalReconstructor().reconstruct(three, e3, 3),
        ClassicalReconstructor(ClassicalConfig(same_exposure=False, keep_reference="longest")).reconstruct(three, e3, 3))


def test_saturated_everywhere_falls_back_to_clipped_short_value():
    frames = np.ones((3, 8, 8, 3), np.float32)
    out = ClassicalReconstructor().reconstruct(frames, [1.0, 8.0, 1.0], 1)
    np.testing.assert_allclose(out, 1.0, rtol=1e-3)  # the short frames' clipped value


# -- infer stage --------------------------------------------------------------------------

def window(exps=(1.0, 8.0), seq=3) -> Frame:
    H = hdr_scene(16, 24)
    seq_exps = [exps[i % len(exps)] * 1e-3 for i in range(2 * len(exps) + 1)]
    data = np.stack([render(H * 1e3, t) for t in seq_exps]).astype(np.float32)
    return Frame("window", "cam", seq, 123, seq_exps[len(exps)], 1.5, "RGBf32", data, set=1,
                 meta={"stem": "img_03", "ref": len(exps), "exposures": seq_exps, "seqs": list(range(len(seq_exps))),
                       "t_min": 1e-3, "timing": {"capture": 0.01, "preprocess": 0.02}})


def test_infer_stage_emits_main_method_first():
    stage = InferStage("classical", compare=["reference", "classical"])
    out = stage.process(window())
    assert [f.meta["method"] for f in out] == ["classical", "reference"]
    for f in out:
        assert f.kind == "hdr" and f.pixel_format == "RGBf32" and f.data.shape == (16, 24, 3)
        assert (f.seq, f.t_ns, f.stream, f.set, f.gain_db) == (3, 123, "cam", 1, 1.5)
        assert f.meta["stem"] == "img_03" and f.meta["t_min"] == 1e-3
        assert f.meta["timing"]["preprocess"] == 0.02 and f.meta["timing"]["infer"] > 0
        back = decode(encode(f))
        np.testing.assert_array_equal(back.data, f.data)
    assert stage.finish() == []


def test_infer_stage_ignores_other_messages(caplog):
    stage = InferStage("reference")
    frame = Frame("frame", "cam", 0, 0, 1e-3, 0.0, "RGB8", np.zeros((2, 2, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        assert stage.process(frame) == []
    assert stage.ignored == 1 and "ignores" in caplog.text


def test_unknown_method_fails_at_construction():
    with pytest.raises(ValueError, match="unknown reconstruction method"):
        InferStage("classical", compare=["nope"])


# -- the honest quality test --------------------------------------------------------------

@pytest.mark.parametrize("exposures", [2, 3])
def test_classical_beats_reference_on_simulated_motion(exposures):
    """Frames -> Preprocessor -> InferStage on the simulated camera (camera shake and a
    moving object): classical must beat the reference frame alone by >= 3 dB PSNR-μ."""
    sim = pytest.importorskip("capture.sim")
    cam = sim.SimCamera(sim.SimConfig(width=192, height=128, frames=8, exposures=exposures, seed=3))
    pre, infer = Preprocessor(PreprocessConfig()), InferStage("classical", compare=["reference"])
    scores: dict[str, list[float]] = {"classical": [], "reference": []}
    windows = [w for f in cam.frames() for w in pre.process(f)] + pre.finish()
    assert len(windows) == 8
    for w in windows:
        for hdr in infer.process(w):
            scores[hdr.meta["method"]].append(psnr_mu(hdr.data, cam.ground_truth(w.seq), hdr.meta["t_min"]))
    classical, reference = np.mean(scores["classical"]), np.mean(scores["reference"])
    assert classical >= reference + 3.0, f"classical {classical:.2f} dB vs reference {reference:.2f} dB"


def test_infer_stage_accepts_received_read_only_windows():
    w = decode(encode(window((1.0, 4.0, 16.0))))
    assert not w.data.flags.writeable
    out = InferStage("classical").process(w)
    assert len(out) == 1 and np.isfinite(out[0].data).all()


@pytest.mark.parametrize("exps", [[1.0, 8.0], [1.0, 4.0, 16.0]])
def test_confidence_is_high_where_static_and_low_where_something_moved(exps):
    H = hdr_scene()
    k = len(exps)
    seq_exps = [exps[i % len(exps)] for i in range(2 * k + 1)]
    frames = np.stack([render(H, t) for t in seq_exps])
    moved = frames.copy()
    moved[k + 1, 10:30, 20:40] = moved[k + 1, 10:30, 20:40][::-1, ::-1]  # a neighbour's patch changes
    rec = ClassicalReconstructor()
    for f in (frames, moved):
        merged, conf = rec.reconstruct_with_confidence(f, seq_exps, k)
        assert np.array_equal(merged, rec.reconstruct(f, seq_exps, k))  # the same merge, bit for bit
        assert conf.shape == H.shape[:2] and conf.dtype == np.float32 and 0 <= conf.min() and conf.max() <= 1
    _, static = rec.reconstruct_with_confidence(frames, seq_exps, k)
    _, dynamic = rec.reconstruct_with_confidence(moved, seq_exps, k)
    unclipped = frames[k].max(axis=2) < 0.8
    assert np.median(static[unclipped]) > 0.9
    assert np.median(dynamic[14:26, 24:36][unclipped[14:26, 24:36]]) < 0.2
    assert np.median(dynamic[:, 50:][unclipped[:, 50:]]) > 0.9  # away from the change


@pytest.mark.parametrize("exps", [[1.0, 8.0], [1.0, 4.0, 16.0]])
def test_the_agreement_cue_tells_motion_from_clipping(exps):
    """The agreement alone is the confidence without the reference's roll-off: high over a
    static clipped area (where the confidence is 0), low where a neighbour changed."""
    H = hdr_scene()
    k = len(exps)
    seq_exps = [exps[i % len(exps)] for i in range(2 * k + 1)]
    frames = np.stack([render(H, t) for t in seq_exps])
    moved = frames.copy()
    moved[k + 1, 10:30, 20:40] = moved[k + 1, 10:30, 20:40][::-1, ::-1]
    rec = ClassicalReconstructor()
    merged, conf, agree, _ = rec.reconstruct_with_cues(frames, seq_exps, k)
    assert np.array_equal(merged, rec.reconstruct(frames, seq_exps, k))
    assert np.array_equal(conf, rec.reconstruct_with_confidence(frames, seq_exps, k)[1])
    assert np.all(conf <= agree + 1e-7)
    clipped = frames[k].max(axis=2) >= 0.99
    assert clipped.any() and conf[clipped].max() < 0.05 and np.median(agree[clipped]) > 0.9
    _, _, agree_moved, _ = rec.reconstruct_with_cues(moved, seq_exps, k)
    assert np.median(agree_moved[14:26, 24:36]) < 0.2


def test_behind_a_clipped_reference_a_neighbour_is_read_unwarped_where_its_flow_is_wrong(monkeypatch):
    """Where the reference is clipped its flow is inferred, not measured; an inference that
    drags a dark object over the bright background (here: every flow 12 px off) must not
    darken the merge to the clip level: the unwarped neighbours, which agree with the clip,
    give the background's radiance."""
    from infer import classical

    h, w = 64, 96
    x = np.mgrid[0:h, 0:w][1].astype(np.float32)
    H = (0.15 + 0.03 * np.sin(x / 5.0))[..., None] * np.float32([1.0, 0.85, 0.7])  # clips at 16 only
    H[16:48, 40:70] = np.float32([0.004, 0.005, 0.006])  # a dark object, where it is in every frame
    exps = [1.0, 4.0, 16.0, 1.0, 4.0]
    frames = np.stack([render(H, t) for t in exps]).astype(np.float32)

    def off_by_12(self, j):
        f = np.zeros((self.size[1], self.size[0], 2), np.float32)
        f[..., 0] = 12.0
        return f

    monkeypatch.setattr(classical._Flows, "_flow_to", off_by_12)
    band = np.zeros((h, w), bool)
    band[16:48, 28:40] = True  # the clipped background the misplaced object lands on
    assert np.all(frames[2][band].max(axis=1) >= 0.97)
    ratio = {v: ClassicalReconstructor(ClassicalConfig(unwarped_behind_clip=v, denoise=0.0))
             .reconstruct(frames, exps, 2)[band] / H[band] for v in (False, True)}
    assert np.abs(ratio[True] - 1.0).max() < 0.02
    assert ratio[False].mean() < 0.6  # without it: the clip level and the object, far too dark


def test_a_dark_reference_takes_the_motion_of_its_neighbours_clean_pair():
    """A ×1 reference between ×4 and ×16 frames, an object moving 2 px a frame: brightened
    16×, the reference's noise hides the object's texture from the flow, while the ×16 (and
    ×4) frames on either side of it show the motion clearly. With ``pair_flow_dark`` the
    flows to every neighbour find the object's true displacement to within a pixel, and
    the merge there is closer to the truth."""
    import cv2

    h, w, v = 96, 160, 2
    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    bg = 0.01 + 0.04 * (bg - bg.min()) / (bg.max() - bg.min())
    tex = cv2.GaussianBlur(rng.random((48, 48)).astype(np.float32), (0, 0), 3.0)
    tex = 0.005 + 0.05 * (tex - tex.min()) / (tex.max() - tex.min())
    exps = [4.0, 16.0, 1.0, 4.0, 16.0]

    def radiance(k: int) -> np.ndarray:
        H = bg[..., None] * np.float32([1.0, 0.9, 0.8])
        x0 = 40 + v * (k - 2)
        H[24:72, x0:x0 + 48] = tex[..., None] * np.float32([0.8, 1.0, 0.9])
        return H

    frames = np.stack([np.round(np.clip(render(radiance(k), t) + rng.normal(0, 0.04 if t == 1.0 else 0.004, (h, w, 3)),
                                        0, 1) * 255) / 255 for k, t in enumerate(exps)]).astype(np.float32)
    inner = (slice(30, 66), slice(48, 80))  # inside the object in every frame
    want = [-2 * v, -v, v, 2 * v]  # ref(p) = frame_j(p + f): the object was to the left before
    err = {}
    for on in (False, True):
        flows = ClassicalReconstructor(ClassicalConfig(pair_flow_dark=on)).flows(frames, exps, 2)
        err[on] = [float(np.abs(flows[k][inner][..., 0] - want[k]).mean()) for k in range(4)]
    assert max(err[True]) < 1.1 and all(a < 0.5 * b for a, b in zip(err[True], err[False])), err
    merged = {on: psnr_mu(ClassicalReconstructor(ClassicalConfig(pair_flow_dark=on, denoise=0.0))
                          .reconstruct(frames, exps, 2)[inner], radiance(2)[inner], 1.0) for on in (False, True)}
    assert merged[True] > merged[False] + 0.2, merged


# -- windows with their global warps deferred to the reconstructor ---------------------------------


def _windows(defer: bool, fmt: str = "RGB8", seed: int = 3):
    from capture.sim import SimCamera, SimConfig

    cam = SimCamera(SimConfig(width=160, height=96, frames=9, pixel_format=fmt, seed=seed, motion=2.0))
    frames = list(cam.frames())
    pre = Preprocessor(PreprocessConfig(defer_warp=defer))
    return [w for f in frames for w in pre.process(f)] + list(pre.finish()), cam


def test_deferred_warps_give_other_methods_the_same_pixels_as_warping_in_preprocess():
    """apply_warps is preprocess's own warp: the network and the reference see identical windows."""
    from infer.method import apply_warps, window_frames

    warped, _ = _windows(defer=False)
    deferred, _ = _windows(defer=True)
    assert any(not np.allclose(w.meta["warps"], [1, 0, 0, 0, 1, 0]) for w in warped)  # the camera moved
    for a, b in zip(warped, deferred, strict=True):
        assert a.meta["warped"] is True and b.meta["warped"] is False
        np.testing.assert_array_equal(apply_warps(window_frames(b), b.meta["warps"], b.meta["warp_interpolation"]),
                                      a.data)


@pytest.mark.parametrize("fmt", ["RGB8", "BayerRG8"])
def test_folding_the_warp_into_the_flow_keeps_the_classical_output(fmt):
    """One resampling instead of two (a speed trick) keeps the quality: the mean PSNR-μ against
    ground truth within 0.1 dB of the two-step path, no frame more than 0.4 dB off. (At this
    tiny size the borders, which the two paths replicate differently, weigh much more than at
    512x288, where the validation splits moved by -0.03 to +0.06 dB.)"""
    warped, cam = _windows(defer=False, fmt=fmt)
    deferred, _ = _windows(defer=True, fmt=fmt)
    stage = InferStage("classical")
    t_min = min(cam.exposure_cycle)
    old, new = [], []
    for a, b in zip(warped, deferred, strict=True):
        gt = cam.render(a.seq)
        old.append(psnr_mu(stage.process(a)[0].data, gt, t_min))
        new.append(psnr_mu(stage.process(b)[0].data, gt, t_min))
    assert max(abs(x - y) for x, y in zip(old, new)) < 0.4, (old, new)
    assert abs(np.mean(old) - np.mean(new)) < 0.1


def test_the_merge_arithmetic_is_its_plain_numpy_formula():
    """The merge's speed tricks (OpenCV products with a 3-plane copy instead of NumPy's
    ``[..., None]`` broadcast, in-place arithmetic, the matched reference cached per window)
    keep the formulas: equal within 2e-6 relative (float32 rounding order)."""
    import cv2

    from infer.classical import _noise_gain, _planes3, _up

    rng = np.random.default_rng(5)
    rec = ClassicalReconstructor()
    cfg = rec.cfg
    L = rng.random((40, 60, 3), np.float32)
    x = np.clip((cfg.sat_end - L.max(axis=2)) / (cfg.sat_end - cfg.sat_start), 0, 1)
    np.testing.assert_allclose(rec._weight(L, 8.0), x * x * (3 - 2 * x) * 8.0**cfg.snr_power, rtol=2e-6, atol=1e-7)
    g_ref, g_j = rng.random((2, 40, 60), np.float32)
    a = np.minimum(g_ref * _up(8.0, 1.0), 1.0)
    b = np.minimum(g_j * _up(8.0, 8.0), 1.0)
    d = cv2.blur(np.abs(a - b), (cfg.ghost_blur_px, cfg.ghost_blur_px)) / (cfg.ghost_tol * _noise_gain(1.0, 8.0))
    refs: dict = {}
    for _ in range(2):  # the second call takes the cached reference
        np.testing.assert_allclose(rec._agreement(g_j, g_ref, 8.0, 1.0, refs), np.exp(-d * d), rtol=2e-6, atol=1e-7)
    w = rng.random((40, 60), np.float32)
    np.testing.assert_array_equal(cv2.multiply(L, _planes3(w)), L * w[..., None])


def test_the_reduced_live_mode_runs_the_merge_as_a_smaller_camera_would():
    """A window marked scale 0.5 is merged with its optical flow on a copy reduced as much
    as at full size (so the flow costs a quarter too), not at the reduced frame's own size."""
    from dataclasses import replace as dc_replace

    from capture.sim import SimCamera, SimConfig

    rec = ClassicalReconstructor()
    half = rec.at_scale(0.5)
    assert half.cfg.flow_max_px == rec.cfg.flow_max_px // 2 and rec.at_scale(0.5) is half and rec.at_scale(1) is rec
    cam = SimCamera(SimConfig(width=1024, height=576, frames=5, seed=4, motion=2.0))
    pre = Preprocessor(PreprocessConfig(scale=0.5))
    w = [x for f in cam.frames() for x in pre.process(f)][2]
    assert w.meta["scale"] == 0.5 and w.data.shape[1:3] == (288, 512)
    got = InferStage("classical").process(w)[0]
    frames, e, r = np.asarray(w.data), w.meta["exposures"], w.meta["ref"]
    np.testing.assert_array_equal(got.data, half.reconstruct(frames, e, r))
    assert not np.array_equal(got.data, rec.reconstruct(frames, e, r))  # 384-px flows, not 512
    assert got.meta["scale"] == 0.5
    unmarked = InferStage("classical").process(dc_replace(w, meta={k: v for k, v in w.meta.items() if k != "scale"}))
    np.testing.assert_array_equal(unmarked[0].data, rec.reconstruct(frames, e, r))


@pytest.mark.parametrize("flow_max_px", [768, 64])
def test_remapping_only_where_the_flow_moves_keeps_the_output_bit_for_bit(monkeypatch, flow_max_px):
    """The merge remaps a neighbour only inside the box where its (resized) flow is not zero,
    a speed trick: the output must equal remapping the whole frame, bit for bit, with the
    flow at full size (160 px) and resized from 64 px."""
    from infer import classical

    windows, _ = _windows(defer=False, seed=5)
    rec = ClassicalReconstructor(ClassicalConfig(flow_max_px=flow_max_px))
    seen: list[tuple[slice, slice] | None] = []
    boxed = classical._moved_box

    def spy(flow, full):
        seen.append(boxed(flow, full))
        return seen[-1]

    monkeypatch.setattr(classical, "_moved_box", spy)
    fast = [rec.reconstruct(w.data, w.meta["exposures"], w.meta["ref"]) for w in windows]
    h, w = windows[0].data.shape[1:3]
    assert any(b is None or (b[0].stop - b[0].start) * (b[1].stop - b[1].start) < h * w for b in seen)
    monkeypatch.setattr(classical, "_moved_box", lambda flow, full: (slice(0, full[0]), slice(0, full[1])))
    for win, got in zip(windows, fast, strict=True):
        np.testing.assert_array_equal(got, rec.reconstruct(win.data, win.meta["exposures"], win.meta["ref"]))
