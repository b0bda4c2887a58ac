"""infer.denoise: the noise estimate from the window itself, and the filter against it."""
from __future__ import annotations

import numpy as np
import pytest

from capture.sim import SimCamera, SimConfig
from hdrstream.quality import psnr_mu
from infer.classical import ClassicalConfig, ClassicalReconstructor
from infer.denoise import denoise, reference_noise
from infer.method import window_frames
from infer.netrecon import default_weights
from infer.stage import InferStage
from preprocess.stage import PreprocessConfig, Preprocessor


def shot_noisy(lin: np.ndarray, full_well: float, rng: np.random.Generator) -> np.ndarray:
    """A frame of linear signal ``lin`` (1 = full well) with Poisson shot noise, as gamma values."""
    return (rng.poisson(lin * full_well) / full_well).clip(0, 1).astype(np.float32) ** np.float32(1 / 2.2)


def scene(h: int = 96, w: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    lin = 0.05 + 0.6 * x / w + 0.1 * np.sin(y / 7.0) ** 2
    return np.repeat(lin[..., None], 3, axis=2) * np.float32([1.0, 0.9, 0.7])


@pytest.mark.parametrize("full_well", [1000.0, 3000.0, 10000.0])
def test_the_noise_estimate_finds_the_full_well_despite_motion(full_well):
    rng = np.random.default_rng(1)
    lin = scene()
    a, b = shot_noisy(lin, full_well, rng), shot_noisy(lin, full_well, rng)
    b[20:50, 30:70] = np.float32(0.5)  # something moved into one of them: not noise
    frames = np.stack([a, shot_noisy(lin * 4, full_well, rng).clip(0, 1), b])
    sigma = reference_noise(frames, [1.0, 4.0, 1.0], 0)
    expected = 1.0 / (2.0 * np.sqrt(full_well))  # shot noise in sqrt(linear) units
    assert sigma == pytest.approx(expected, rel=0.12)


def test_no_estimate_without_a_frame_of_the_reference_exposure():
    frames = np.full((3, 64, 64, 3), 0.5, np.float32)
    assert reference_noise(frames, [1.0, 4.0, 16.0], 1) is None


@pytest.mark.parametrize("local", [True, False])
def test_noise_free_frames_are_left_unfiltered_not_turned_to_nan(local):
    """Rendered (noise-free) frames: the reference and its same-exposure partner agree to the
    code wherever nothing moves, so there is no noise to measure. The merge must come out
    as it went in (a zero strength once divided every pixel by zero: an all-NaN frame)."""
    lin = scene()
    L = lambda t: (np.clip(lin * t, 0, 1) ** np.float32(1 / 2.2) * 255).round().astype(np.float32) / 255  # noqa: E731
    frames = np.stack([L(1.0), L(4.0), L(16.0), L(1.0), L(4.0), L(16.0), L(1.0)])
    frames[6, 10:30, 10:40] = 0.3  # something moved: a few pixels differ, most are equal
    assert reference_noise(frames, [1, 4, 16, 1, 4, 16, 1], 3) is None
    plain = ClassicalReconstructor(ClassicalConfig(denoise=0.0)).reconstruct(frames, [1, 4, 16, 1, 4, 16, 1], 3)
    out = ClassicalReconstructor(ClassicalConfig(denoise_local=local)).reconstruct(frames, [1, 4, 16, 1, 4, 16, 1], 3)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, plain)
    y = np.sqrt(lin)  # a strength map with zeros filters nothing there rather than making NaN
    assert np.isfinite(denoise(lin, 1.0, np.zeros(lin.shape[:2], np.float32))).all()
    np.testing.assert_allclose(denoise(lin, 1.0, np.zeros(lin.shape[:2], np.float32)), y * y, rtol=1e-5)


def test_the_filter_removes_noise_and_keeps_an_edge():
    rng = np.random.default_rng(2)
    truth = np.full((64, 64, 3), 0.04, np.float32)
    truth[:, 32:] = 0.4  # a step of 10x
    sigma = 1.0 / (2.0 * np.sqrt(2000.0))
    noisy = (rng.poisson(truth * 2000.0) / 2000.0).astype(np.float32)
    out = denoise(noisy, 1.0, 3.0 * sigma)
    assert np.abs(out - truth).mean() < 0.6 * np.abs(noisy - truth).mean()
    # the edge stays where it is and as high: the columns beside it keep their level
    np.testing.assert_allclose(out[:, 30].mean(), 0.04, rtol=0.05)
    np.testing.assert_allclose(out[:, 33].mean(), 0.4, rtol=0.05)
    assert denoise(noisy, 1.0, 0.0) is noisy


def test_denoising_the_merge_helps_on_the_simulated_camera_and_leaves_the_gate_input_alone():
    from capture.sim import SimCamera, SimConfig
    from preprocess.stage import PreprocessConfig, Preprocessor

    cam = SimCamera(SimConfig(width=192, height=128, frames=7, exposures=2, seed=4, full_well_e=3000.0))
    pre = Preprocessor(PreprocessConfig())
    windows = [w for f in cam.frames() for w in pre.process(f)] + pre.finish()
    plain, filtered = ClassicalReconstructor(ClassicalConfig(denoise=0.0)), ClassicalReconstructor()
    gains = []
    for w in windows[2:-2]:  # whole windows: the first ones hold no other frame of the reference's exposure
        frames, exps, ref = np.asarray(w.data), w.meta["exposures"], w.meta["ref"]
        gt, t_min = cam.ground_truth(w.seq), min(exps)
        gains.append(psnr_mu(filtered.reconstruct(frames, exps, ref), gt, t_min)
                     - psnr_mu(plain.reconstruct(frames, exps, ref), gt, t_min))
        np.testing.assert_array_equal(filtered.reconstruct_with_confidence(frames, exps, ref)[0],
                                      plain.reconstruct_with_confidence(frames, exps, ref)[0])
    assert np.mean(gains) > 0.3 and min(gains) > 0.0, gains


def test_denoise_settings_are_checked():
    with pytest.raises(ValueError, match="denoise"):
        ClassicalConfig(denoise=-1.0)
    with pytest.raises(ValueError, match="odd"):
        ClassicalConfig(denoise=2.0, denoise_px=4)


def test_the_network_is_filtered_like_the_classical_merge():
    """The shipped network's output gets the same filter (after its classical gate), so the
    two methods compare like for like; on the simulated camera it brings it closer to the truth."""
    from capture.sim import SimCamera, SimConfig
    from infer.netrecon import NetReconstructor, default_weights
    from preprocess.stage import PreprocessConfig, Preprocessor

    if not default_weights(2).is_file():
        pytest.skip("no shipped 2-exposure weights")
    cam = SimCamera(SimConfig(width=128, height=96, frames=7, exposures=2, seed=6, full_well_e=3000.0))
    pre = Preprocessor(PreprocessConfig())
    w = [w for f in cam.frames() for w in pre.process(f)][2]  # a whole window: it holds i-2 and i+2
    frames, exps, ref = np.asarray(w.data), w.meta["exposures"], w.meta["ref"]
    gt, t_min = cam.ground_truth(w.seq), min(exps)
    raw = NetReconstructor("net", device="cpu", denoise=False).reconstruct(frames, exps, ref)
    filtered = NetReconstructor("net", device="cpu").reconstruct(frames, exps, ref)
    assert psnr_mu(filtered, gt, t_min) > psnr_mu(raw, gt, t_min) + 0.3


def test_the_filter_can_be_turned_off_for_every_method():
    from infer.reconstructor import make_reconstructor

    assert make_reconstructor("classical").cfg.denoise > 0
    assert make_reconstructor("classical", denoise=False).cfg.denoise == 0
    assert make_reconstructor("net", denoise=False).denoise is False
    stage = InferStage("classical", compare=["net"], denoise=False)
    assert stage.methods[0].cfg.denoise == 0 and stage.methods[1].denoise is False


def test_the_estimate_reads_an_unwarped_neighbour_through_its_transform():
    """Deferred windows (frames not yet warped): the neighbour is read where its transform
    puts the reference's pixels; a shifted frame read without it would look like motion."""
    rng = np.random.default_rng(3)
    lin = scene(96, 160)
    a, b = shot_noisy(lin, 3000.0, rng), shot_noisy(lin, 3000.0, rng)
    moved = np.roll(b, (2, 5), axis=(0, 1))  # frame j as it came off the camera
    M = np.array([[1.0, 0.0, -5.0], [0.0, 1.0, -2.0]])  # maps its pixels onto the reference's
    frames = np.stack([a, shot_noisy(lin * 4, 3000.0, rng).clip(0, 1), moved])
    ident = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    sigma = reference_noise(frames, [1.0, 4.0, 1.0], 0, [None, None, M])
    assert sigma == pytest.approx(1.0 / (2.0 * np.sqrt(3000.0)), rel=0.12)
    assert reference_noise(frames, [1.0, 4.0, 1.0], 0, [None, None, ident]) > 1.3 * sigma


def test_a_noise_map_filters_as_the_scalar_where_it_is_constant_and_harder_where_higher():
    rng = np.random.default_rng(4)
    truth = np.full((48, 64, 3), 0.1, np.float32)
    noisy = (rng.poisson(truth * 1000.0) / 1000.0).astype(np.float32)
    sigma = 1.0 / (2.0 * np.sqrt(1000.0))
    flat = np.full((48, 64), 2.0 * sigma, np.float32)
    np.testing.assert_allclose(denoise(noisy, 1.0, flat), denoise(noisy, 1.0, 2.0 * sigma), rtol=2e-3)
    harder = flat.copy()
    harder[:, 32:] *= 4.0  # fewer frames merged there: more noise left, more filtering
    out = denoise(noisy, 1.0, harder)
    assert np.abs(out[:, 36:] - truth[:, 36:]).mean() < np.abs(denoise(noisy, 1.0, flat)[:, 36:] - truth[:, 36:]).mean()


def test_the_local_noise_level_follows_how_many_frames_were_merged():
    from capture.sim import SimCamera, SimConfig
    from preprocess.stage import PreprocessConfig, Preprocessor

    cam = SimCamera(SimConfig(width=160, height=96, frames=7, exposures=2, seed=4, full_well_e=3000.0))
    pre = Preprocessor(PreprocessConfig())
    w = [w for f in cam.frames() for w in pre.process(f)][3]
    frames, exps, ref = np.asarray(w.data), w.meta["exposures"], w.meta["ref"]
    rec = ClassicalReconstructor(ClassicalConfig(denoise_local=True))
    _, _, _, noise = rec.reconstruct_with_cues(frames, exps, ref)
    assert noise.shape == frames.shape[1:3] and np.isfinite(noise).all() and noise.max() > noise.min() > 0
    gt, t_min = cam.ground_truth(w.seq), min(exps)
    plain = ClassicalReconstructor(ClassicalConfig(denoise=0.0)).reconstruct(frames, exps, ref)
    assert psnr_mu(rec.reconstruct(frames, exps, ref), gt, t_min) > psnr_mu(plain, gt, t_min)


def test_the_strength_reaches_every_method_from_the_command_line_and_the_deployment_file(tmp_path):
    import argparse

    from deploy.deployment import load
    from infer.reconstructor import add_network_args, denoise_option, make_reconstructor

    p = argparse.ArgumentParser()
    add_network_args(p)
    assert denoise_option(p.parse_args([])) is True
    assert denoise_option(p.parse_args(["--no-denoise"])) is False
    assert denoise_option(p.parse_args(["--denoise-strength", "6"])) == 6.0
    assert denoise_option(p.parse_args(["--no-denoise", "--denoise-strength", "6"])) is False
    classical, net = make_reconstructor("classical", denoise=6.0), make_reconstructor("net", denoise=6.0)
    assert classical.cfg.denoise == 6.0 and net.denoise is True and net.classical.cfg.denoise == 6.0
    assert make_reconstructor("net", denoise=0.0).denoise is False  # 0 is off
    assert make_reconstructor("classical").cfg.denoise == ClassicalConfig().denoise
    with pytest.raises(ValueError, match="denoise"):
        make_reconstructor("classical", denoise=-1.0)
    toml = tmp_path / "d.toml"
    toml.write_text("[infer]\ndenoise_strength = 6.5\n")
    stage = load(toml, env={}).infer_stage()
    assert stage.methods[0].cfg.denoise == 6.5
    toml.write_text("[infer]\ndenoise = false\ndenoise_strength = 6.5\n")
    assert load(toml, env={}).infer_stage().methods[0].cfg.denoise == 0
    assert p.parse_args(["--no-learned-denoise"]).no_learned_denoise and not p.parse_args([]).no_learned_denoise
    toml.write_text("[infer]\nmethod = 'net'\nlearned_denoise = false\n")
    assert load(toml, env={}).infer_stage().methods[0].learned_denoise is False
    assert make_reconstructor("net").learned_denoise is True


@pytest.mark.skipif(not default_weights(2).is_file(), reason="no shipped weights")
def test_without_the_learned_correction_the_network_ends_with_the_bilateral_filter_alone():
    from infer.netrecon import NetReconstructor

    rng = np.random.default_rng(4)
    frames = (rng.random((5, 48, 64, 3)) ** 2).astype(np.float32)
    expos = [0.001, 0.008] * 2 + [0.001]
    plain = NetReconstructor("net", device="cpu", learned_denoise=False)
    bilateral = NetReconstructor("net", device="cpu")
    bilateral.model(2).noise = None  # the same weights, no correction
    learned = NetReconstructor("net", device="cpu").reconstruct(frames, expos, 2)
    a, b = plain.reconstruct(frames, expos, 2), bilateral.reconstruct(frames, expos, 2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - learned).max() > 0


def test_a_window_padded_with_the_reference_itself_still_measures_its_noise():
    """At a stream's start the window is padded with copies of the reference; a copy differs
    by nothing, and taking it as the partner switched the filter off for the first frames."""
    rng = np.random.default_rng(3)
    lin = scene()
    ref, other = shot_noisy(lin, 3000.0, rng), shot_noisy(lin, 3000.0, rng)
    long = shot_noisy(lin * 8, 3000.0, rng).clip(0, 1)
    frames = np.stack([ref, long, ref, long, other])  # the copy and the real partner, both 2 away
    sigma = reference_noise(frames, [1.0, 8.0, 1.0, 8.0, 1.0], 2)
    assert sigma == pytest.approx(1.0 / (2.0 * np.sqrt(3000.0)), rel=0.12)
    assert reference_noise(frames[:3], [1.0, 8.0, 1.0], 2) is None  # nothing but the copy


def test_the_first_windows_of_a_stream_are_filtered_like_the_rest():
    cam = SimCamera(SimConfig(width=160, height=96, frames=8, exposures=3, full_well_e=3000.0))
    pre = Preprocessor(PreprocessConfig())
    windows = [w for f in cam.frames() for w in pre.process(f)] + list(pre.finish())
    sigmas = [reference_noise(window_frames(w), w.meta["exposures"], w.meta["ref"]) for w in windows]
    assert len(sigmas) == 8 and None not in sigmas
    assert max(sigmas) < 1.3 * min(sigmas)
