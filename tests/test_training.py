"""training/: synthesised windows, losses, the stage loop, checkpoints and export (CPU, tiny)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from infer.net.model import load_weights
from training import config as config_mod
from training import sources
from training.config import VAL_SEED_BASE, DataConfig, LossConfig, TrainConfig
from training.data import SampleMaker, WindowStream, collate, validation_set, worker_context
from training.losses import coarse_loss, mu_law, perceptual, refine_l1, ssim, stage_loss
from training.loop import Trainer, main
from training.sources import load_photos

CROP = 32
KINDS = ["procedural", "sim"] + (["photo"] if load_photos() else [])


def small_data(**kw) -> DataConfig:
    return DataConfig(**{"crop": CROP, "pool": 2, "reuse": 4, "object_speed_px": 4.0, **kw})


def quiet(kind: str) -> DataConfig:
    """No noise, no Bayer, no tone perturbation: L follows from the ground truth exactly."""
    return small_data(sources={kind: 1.0}, gauss_sigma=0.0, sensor_noise_prob=0.0, bayer_prob=0.0, tone_prob=0.0)


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(stage="coarse", exposures=2, width=0.125, steps=3, batch_size=2, workers=0, threads=2,
                val_size=0, val_dynamic=0, val_crop=CROP, val_batch=2, log_every=1, ckpt_every=100, ckpt_every_min=0.0,
                progress=False, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                data=small_data())
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def log_records(path, kind="train"):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


# -- data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("exposures", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_sample_shapes_and_ranges(exposures, kind):
    n = 2 * exposures + 1
    s = SampleMaker(small_data(sources={kind: 1.0}), exposures, seed=1)(0)
    assert set(s) == {"ldr", "expo", "gt", "gt_ref"}
    assert s["ldr"].shape == (n, 3, CROP, CROP) and s["ldr"].dtype == torch.float32
    assert s["expo"].shape == (n,) and s["gt"].shape == (3, 3, CROP, CROP) and s["gt_ref"].shape == (3, CROP, CROP)
    assert 0 <= s["ldr"].min() and s["ldr"].max() <= 1 and 0 <= s["gt"].min() and s["gt"].max() <= 1
    assert torch.equal(s["gt_ref"], s["gt"][1])
    assert float(s["expo"].min()) == 1.0 and len(set(s["expo"].tolist())) == exposures
    # alternating: frame k and k + exposures share an exposure
    assert torch.equal(s["expo"][:-exposures], s["expo"][exposures:])


@pytest.mark.parametrize("exposures", [2, 3])
def test_reference_phase_varies(exposures):
    maker = SampleMaker(small_data(), exposures, seed=3)
    ranks = set()
    for i in range(24):
        expo = maker(i)["expo"]
        ranks.add(sorted(set(expo.tolist())).index(float(expo[exposures])))
    assert ranks == set(range(exposures))  # short, long (and middle) references all occur


@pytest.mark.parametrize("kind", KINDS)
def test_ground_truth_matches_ldr_where_not_clipped(kind):
    maker = SampleMaker(quiet(kind), 2, seed=5)
    for i in range(3):
        s = maker(i)
        L = s["ldr"][1:4].numpy()  # frames i-1, i, i+1
        e = s["expo"][1:4].numpy()[:, None, None, None]
        expected = np.clip(s["gt"].numpy() * e, 0, 1) ** (1 / 2.2)
        ok = L < 0.99  # not saturated
        assert ok.mean() > 0.3
        np.testing.assert_allclose(L[ok], expected[ok], atol=0.6 / 255)


def test_training_works_without_scikit_image(monkeypatch, caplog):
    monkeypatch.setattr(sources, "skimage_data_dir", lambda: None)
    load_photos.cache_clear()
    try:
        maker = SampleMaker(small_data(), 2, seed=0)  # photo source weighted but unavailable
        assert "photo" not in maker.kinds and maker(0)["ldr"].shape == (5, 3, CROP, CROP)
        assert "scikit-image is not installed" in caplog.text
    finally:
        load_photos.cache_clear()


def test_samples_are_deterministic_by_seed_and_index():
    a = SampleMaker(small_data(), 2, seed=7)
    b = SampleMaker(small_data(), 2, seed=7)
    for i in (5, 0, 3):  # any order, fresh caches
        sa, sb = a(i), b(i)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a(1)["ldr"], a(2)["ldr"])
    assert not torch.equal(a(1)["ldr"], SampleMaker(small_data(), 2, seed=8)(1)["ldr"])


@pytest.mark.parametrize("exposures", [2, 3])
def test_edge_windows_are_padded_as_preprocess_pads_a_streams_ends(exposures):
    from capture.sim import SimCamera, SimConfig
    from preprocess.stage import PreprocessConfig, Preprocessor
    from training.data import edge_slots, frames_for

    frames = 8
    cam = SimCamera(SimConfig(width=96, height=64, frames=frames, exposures=exposures, noise=False))
    pre = Preprocessor(PreprocessConfig())
    windows = [w for f in cam.frames() for w in pre.process(f)] + list(pre.finish())
    n = frames_for(exposures)
    c = n // 2
    for w in windows:
        seqs, ref = w.meta["seqs"], w.seq
        k = len(seqs) // 2
        if ref < c:
            slots = edge_slots(n, exposures, ref)
        elif ref > frames - 1 - c:
            slots = edge_slots(n, exposures, frames - 1 - ref, end=True)
        else:
            continue
        assert [s - ref + c for s in seqs] == slots[c - k:c + k + 1], (ref, seqs)
    sample = SampleMaker(replace(small_data(), edge_prob=1.0), exposures, seed=0)(0)["ldr"]

    def repeats(ldr: torch.Tensor) -> bool:
        return any(torch.equal(ldr[i], ldr[j]) for i in range(n) for j in range(i))

    assert repeats(sample) and not repeats(SampleMaker(small_data(), exposures, seed=0)(0)["ldr"])


def test_stream_is_the_same_with_workers_and_resumes_at_a_step():
    def batches(workers, start, count):
        stream = WindowStream(small_data(), 2, seed=0, batch_size=2, start_step=start)
        loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=workers, collate_fn=collate,
                                             multiprocessing_context=worker_context() if workers else None)
        it = iter(loader)
        return [next(it)["ldr"] for _ in range(count)]

    ref = batches(0, 0, 3)
    assert all(torch.equal(x, y) for x, y in zip(ref, batches(2, 0, 3)))
    assert torch.equal(ref[2], batches(0, 2, 1)[0])


def test_validation_set_is_disjoint_from_training(tmp_path):
    train = SampleMaker(small_data(), 2, seed=0)
    val = SampleMaker(small_data(), 2, seed=VAL_SEED_BASE, split="val")
    assert all(train.scene(train.scene_id(i)).seed < VAL_SEED_BASE for i in range(40))
    assert all(val.scene(j).seed >= VAL_SEED_BASE for j in range(4))
    assert {val.scene(j).kind for j in range(4)} == {"procedural", "sim"}  # no photographs
    with pytest.raises(ValueError):
        SampleMaker(small_data(), 2, seed=5, split="val")
    data = validation_set(small_data(), 2, size=4, crop=CROP, cache_dir=tmp_path)
    again = validation_set(small_data(), 2, size=4, crop=CROP, cache_dir=tmp_path)  # from the cache
    assert data["ldr"].shape == (4, 5, 3, CROP, CROP) and torch.equal(data["ldr"], again["ldr"])
    assert data["classical"].shape == (4,) and torch.isfinite(data["classical"]).all()
    torch.testing.assert_close(again["classical"], data["classical"])
    cached = torch.load(next(tmp_path.glob("val-*.pt")), weights_only=True)
    assert "classical" not in cached  # today's classical scores them, not the one that made the cache
    assert {float(e[2]) == float(e.min()) for e in data["expo"]} == {True, False}  # short and long refs


def test_a_change_to_the_flows_invalidates_the_cached_validation_sets(monkeypatch):
    """The cached windows hold DIS flows: a set cached before the flow settings changed must
    be made again, not validate a network on flows it no longer gets."""
    from infer.classical import ClassicalConfig, ClassicalReconstructor
    from training import data as data_mod

    before = data_mod.validation_key(small_data(), 2, 4, CROP, VAL_SEED_BASE, flows=True)
    assert data_mod.validation_key(small_data(), 2, 4, CROP, VAL_SEED_BASE, flows=False) != before

    class OtherFlows(data_mod.WindowFlows):
        def __init__(self) -> None:
            super().__init__(ClassicalReconstructor(ClassicalConfig(pair_flow_dark=False)))

    monkeypatch.setattr(data_mod, "WindowFlows", OtherFlows)
    assert data_mod.validation_key(small_data(), 2, 4, CROP, VAL_SEED_BASE, flows=True) != before


# -- losses --------------------------------------------------------------------------------


def test_mu_law_endpoints_and_clamp():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    assert torch.allclose(mu_law(x), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_losses_zero_for_perfect_prediction_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 3, 32, 32, generator=g)
    mask = torch.rand(2, 3, 32, 32, generator=g)
    assert coarse_loss(gt, gt) == 0 and refine_l1(gt[:, 1], gt[:, 1], mask) == 0
    assert perceptual(gt[:, 1], gt[:, 1]).abs() < 1e-6 and perceptual(gt[:, 1], gt[:, 1], "grad") == 0
    noisy = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    assert coarse_loss(noisy, gt) > 0 and refine_l1(noisy[:, 1], gt[:, 1], mask) > 0
    assert perceptual(noisy[:, 1], gt[:, 1]) > 0 and ssim(noisy[:, 1], gt[:, 1]) < 1
    out = {"coarse": noisy, "hdr": noisy[:, 1], "mask": mask}
    batch = {"gt": gt, "gt_ref": gt[:, 1]}
    total, terms = stage_loss("e2e", out, batch, LossConfig())
    assert set(terms) == {"coarse", "refine", "perceptual"} and float(total) == pytest.approx(sum(terms.values()))


def test_refine_loss_is_normalised_by_the_badly_exposed_area():
    gt = torch.zeros(1, 3, 8, 8)
    pred = gt.clone()
    pred[..., :2, :] = 1.0  # 2 of 8 rows wrong by a full μ-law unit
    mask = torch.ones(1, 3, 8, 8)
    mask[..., :4, :] = 0.0  # 4 rows badly exposed
    assert float(refine_l1(pred, gt, mask)) == pytest.approx((3 * 2 * 8) / (3 * 4 * 8))
    assert float(refine_l1(pred, gt, torch.ones_like(mask))) == pytest.approx(3 * 2 * 8)  # at least 1 pixel


def test_the_linear_term_weighs_a_highlight_error_more_than_the_mu_law():
    """A 10 % error costs the μ-law about as much in a shadow as in a highlight; the linear
    term weighs the highlight's hundreds of times more, as PSNR-L and ColorVideoVDP do."""
    from training.losses import linear_l1
    gt = torch.full((1, 3, 8, 8), 0.0005)
    gt[..., :, 4:] = 0.8
    dark, bright = gt.clone(), gt.clone()
    dark[..., :, :4] *= 1.1
    bright[..., :, 4:] *= 1.1
    mu = lambda p: float((mu_law(p) - mu_law(gt)).abs().mean())  # noqa: E731
    assert mu(bright) < 2 * mu(dark) and float(linear_l1(bright, gt)) > 100 * float(linear_l1(dark, gt))
    out, batch = {"hdr": bright}, {"gt_ref": gt}
    total, terms = stage_loss("gate", out, batch, LossConfig(linear=2.0))
    assert set(terms) == {"gate", "linear"} and terms["linear"] == pytest.approx(2 * float(linear_l1(bright, gt)))
    assert set(stage_loss("gate", out, batch, LossConfig())[1]) == {"gate"}  # off by default: the paper's loss


def test_clipped_motion_weight_counts_moving_pixels_behind_a_clipped_reference_more():
    """Of the moving pixels, those where the reference is clipped in a channel count
    ``clipped_weight`` more; a clipped reference where nothing moves, or a moving pixel the
    reference sees, gets no more than the motion weight."""
    from training.losses import motion_weights
    gt = torch.full((1, 3, 3, 8, 8), 0.2)
    gt[:, 0, :, :, :4] = 0.6  # something moves over the four left columns in frame i-1
    ldr_ref = torch.full((1, 3, 8, 8), 0.5)
    ldr_ref[:, 0, :, ::2] = 1.0  # red clipped in every other column
    w = motion_weights(gt, 2.0, ldr_ref, 5.0)
    assert torch.all(w[..., 0:4:2] == 8.0) and torch.all(w[..., 1:4:2] == 3.0)  # moving: clipped, not
    assert torch.all(w[..., 4::2] == 1.0) and torch.all(w[..., 5::2] == 1.0)  # static, clipped or not
    assert torch.equal(motion_weights(gt, 2.0, ldr_ref, 0.0), motion_weights(gt, 2.0))
    w_only = motion_weights(gt, 0.0, ldr_ref, 5.0)  # the extra weight alone
    assert torch.all(w_only[..., 0:4:2] == 6.0) and torch.all(w_only[..., 1::2] == 1.0)


def test_motion_weight_makes_an_error_where_things_move_cost_more():
    """Where the neighbours' ground truth differs from the reference's, an error counts 1 + k
    times; off (the default) the loss is the paper's unweighted L1."""
    from training.losses import motion_weights
    gt = torch.full((1, 3, 3, 8, 8), 0.2)
    gt[:, 0, :, :, :2] = 0.6  # something moves over the two left columns in frame i-1
    w = motion_weights(gt, 3.0)
    assert w.shape == (1, 1, 8, 8) and torch.all(w[..., :2] == 4.0) and torch.all(w[..., 2:] == 1.0)
    assert motion_weights(gt, 0.0) is None
    static_err, moving_err = gt[:, 1].clone(), gt[:, 1].clone()
    static_err[..., 4:6] *= 1.5
    moving_err[..., :2] *= 1.5
    out = lambda p: {"hdr": p, "coarse": gt[:, 1:2]}  # noqa: E731
    batch = {"gt": gt, "gt_ref": gt[:, 1]}
    plain = [stage_loss("gate", out(p), batch, LossConfig())[0] for p in (static_err, moving_err)]
    weighted = [stage_loss("gate", out(p), batch, LossConfig(motion_weight=3.0))[0] for p in (static_err, moving_err)]
    assert plain[0] == pytest.approx(float(plain[1]))  # same error, same cost
    assert weighted[1] > 2 * weighted[0]


def test_psnr_norm_is_each_samples_psnr_and_squares_a_ghost():
    """norm = "psnr" is minus each sample's PSNR-μ (dB/100), averaged over the batch, as
    validation scores; at the same L1, a concentrated error (a ghost) costs it more than
    the same total spread thin (noise), where the L1 sees no difference."""
    from hdrstream.quality import psnr_mu
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(2, 3, 16, 16, generator=g) * 0.2
    pred = (gt + 0.02 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    cfg = LossConfig(norm="psnr")
    term = stage_loss("gate", {"hdr": pred}, {"gt_ref": gt}, cfg)[1]["gate"]
    want = -sum(psnr_mu(pred[i].permute(1, 2, 0).numpy(), gt[i].permute(1, 2, 0).numpy(), 1.0) for i in range(2)) / 200
    assert term == pytest.approx(want, abs=1e-4)
    t = mu_law(gt)
    spread, ghost = t.clone(), t.clone()
    spread += 0.01  # every pixel 0.01 off in μ-law
    ghost[..., :4, :4] += 0.16  # 1/16 of the pixels 0.16 off: the same L1
    to_hdr = lambda m: ((1 + 5000.0) ** m - 1) / 5000.0  # noqa: E731  (inverse μ-law)
    losses = {n: [stage_loss("gate", {"hdr": to_hdr(x)}, {"gt_ref": gt}, LossConfig(norm=n))[0] for x in (spread, ghost)]
              for n in ("l1", "psnr")}
    assert float(losses["l1"][0]) == pytest.approx(float(losses["l1"][1]), rel=1e-3)
    assert float(losses["psnr"][1]) > float(losses["psnr"][0]) + 0.05  # > 5 dB worse
    with pytest.raises(ValueError, match="loss.norm"):
        LossConfig(norm="l2").validate()


def test_the_hue_term_sees_a_cast_in_a_partly_clipped_highlight_and_nothing_else():
    """Where the reference clips red but not green and blue, a cyan cast costs the hue term and
    a grey-level (gain) error does not; outside such pixels it is 0, and off by default."""
    gt = torch.full((1, 3, 8, 8), 0.3)
    gt[:, 0] = 0.6  # warm
    ldr = torch.full((1, 3, 3, 8, 8), 0.5)
    ldr[:, 1, 0, :4] = 1.0  # the reference's red clips in the top half
    cast, brighter = gt.clone(), gt * 1.3
    cast[:, 1:, :4] *= 1.5  # green and blue too high where red clipped: a cyan cast
    batch = {"gt_ref": gt, "ldr": ldr, "gt": gt[:, None].expand(1, 3, 3, 8, 8)}
    hue = lambda p, b=batch: stage_loss("gate", {"hdr": p}, b, LossConfig(hue=1.0))[1]["hue"]  # noqa: E731
    assert hue(cast) > 0.05 and hue(brighter) == pytest.approx(0.0, abs=1e-6) and hue(gt) == 0.0
    calm = {**batch, "ldr": torch.full((1, 3, 3, 8, 8), 0.5)}
    assert hue(cast, calm) == 0.0
    assert "hue" not in stage_loss("gate", {"hdr": cast}, batch, LossConfig())[1]


# -- the loop ------------------------------------------------------------------------------


def fixed_batch(exposures=2, size=2, flows=False, window=0):
    maker = SampleMaker(small_data(), exposures, seed=11, flows=flows, window=window)
    return collate([maker(i) for i in range(size)])


@pytest.mark.parametrize("stage", ["coarse", "e2e"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path, stage):
    trainer = Trainer(tiny_cfg(tmp_path, stage=stage, lr=2e-3))
    batch = fixed_batch()
    losses = [trainer.train_step(batch)[0] for _ in range(8)]
    assert trainer.step == 8 and all(np.isfinite(losses))
    assert min(losses[-3:]) < losses[0]


def test_grad_clip_bounds_a_steps_gradient_and_the_norm_is_reported(tmp_path):
    batch = fixed_batch()
    free = Trainer(tiny_cfg(tmp_path / "free", lr=2e-3))
    clipped = Trainer(tiny_cfg(tmp_path / "clipped", lr=2e-3, grad_clip=1e-4))
    _, terms = free.train_step(batch)
    _, clipped_terms = clipped.train_step(batch)
    assert terms["grad_norm"] > 1e-3 and clipped_terms["grad_norm"] == pytest.approx(terms["grad_norm"], rel=1e-4)
    after = torch.sqrt(sum((p.grad ** 2).sum() for p in clipped.params)).item()
    assert after == pytest.approx(1e-4, rel=1e-3)  # the step took the clipped gradient
    with pytest.raises(ValueError, match="grad_clip"):
        tiny_cfg(tmp_path, grad_clip=-1.0)


def test_refine_stage_freezes_coarsenet(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, stage="refine"))
    before = {k: v.clone() for k, v in trainer.model.coarse.state_dict().items()}
    trainer.train_step(fixed_batch())
    assert all(torch.equal(before[k], v) for k, v in trainer.model.coarse.state_dict().items())
    assert all(not p.requires_grad for p in trainer.model.coarse.parameters())


def test_refine_stage_from_a_coarse_run_takes_only_coarsenet(tmp_path):
    Trainer(tiny_cfg(tmp_path / "c", steps=1)).run()
    path = tmp_path / "c" / "run" / "last.safetensors"
    coarse_run = load_weights(path)
    refine = Trainer(tiny_cfg(tmp_path / "r", stage="refine", init=str(path), seed=1))
    got = refine.model.state_dict()
    for k, v in coarse_run.state_dict().items():
        if k.startswith("coarse."):
            assert torch.allclose(got[k], v), k
    # RefineNet keeps this run's initialisation (seed 1), not the coarse run's untrained one
    last = "refine.reconstruct.conv_last.weight"
    assert not torch.allclose(got[last], coarse_run.state_dict()[last])


@pytest.mark.parametrize("switch", ["mask_blend", "prior_per_channel", "unwarped_behind_clip"])
def test_a_network_fine_tunes_across_parameter_free_switches(tmp_path, switch):
    """--init weights trained with the mask blend, the brightest-channel prior or without the
    unwarped reading behind a clip into a run that flips one: same parameters, so all are
    taken; any other difference of architecture is refused."""
    Trainer(tiny_cfg(tmp_path / "a", stage="refine", steps=1)).run()
    path = tmp_path / "a" / "run" / "last.safetensors"
    flipped = {switch: not getattr(load_weights(path).cfg, switch)}
    tuned = Trainer(tiny_cfg(tmp_path / "b", stage="refine", init=str(path), seed=1, **flipped))
    assert getattr(tuned.model.cfg, switch) == flipped[switch]
    src = load_weights(path).state_dict()
    assert all(torch.equal(tuned.model.state_dict()[k], v) for k, v in src.items())
    with pytest.raises(ValueError, match="its network is"):
        Trainer(tiny_cfg(tmp_path / "c", stage="refine", init=str(path), weight_prior=False))


def test_checkpoint_resume_continues_with_the_identical_next_step(tmp_path):
    straight = tiny_cfg(tmp_path / "a", steps=3)
    Trainer(straight).run()
    first = tiny_cfg(tmp_path / "b", steps=2)
    Trainer(first).run()
    ckpt = tmp_path / "b" / "run" / "ckpt" / "last.pt"
    resumed = Trainer(replace(first, steps=3), resume=ckpt)
    assert resumed.step == 2
    resumed.run()
    a = log_records(tmp_path / "a" / "run" / "log.jsonl")
    b = log_records(tmp_path / "b" / "run" / "log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3]
    assert b[2]["loss"] == a[2]["loss"] and b[1]["loss"] == a[1]["loss"]


def test_cli_trains_validates_and_exports_loadable_weights(tmp_path):
    out = tmp_path / "run"
    rc = main(["--stage", "e2e", "--width", "0.125", "--steps", "2", "--batch-size", "1", "--crop", str(CROP),
               "--out", str(out), "--no-progress", "--workers", "0",
               "--set", f"val_crop={CROP}", "--set", "val_size=2", "--set", "val_dynamic=2", "--set", "val_every=1",
               "--set", f"cache_dir='{tmp_path / 'cache'}'", "--set", "data.pool=2"])
    assert rc == 0
    first, val = log_records(out / "log.jsonl", "val")
    assert "vs_best" not in first and np.isfinite(val["vs_best"]["delta"])  # step 2 against step 1, paired
    assert np.isfinite(val["psnr_mu_final"]) and np.isfinite(val["psnr_mu_classical"])
    dyn = val["dynamic"]  # the dynamic split's windows, scored by region; the metric weighs both sets
    assert dyn["windows"] == 2 and np.isfinite(dyn["net"]) and np.isfinite(dyn["classical"])
    assert set(dyn["regions"]) == {"motion", "clipped", "rest"}
    assert np.isclose(sum(r["fraction"] for r in dyn["regions"].values()), 1.0)
    assert np.isclose(val["metric"], 0.5 * (val["psnr_mu_final"] + dyn["net"]))
    model = load_weights(out / "best.safetensors")
    assert model.meta["stage"] == "e2e" and model.meta["steps"] == 2
    assert model.meta["validation"]["psnr_mu_final"] == val["psnr_mu_final"]
    assert (out / "last.safetensors").is_file() and (out / "ckpt" / "last.pt").is_file()
    b = fixed_batch(size=1)
    with torch.no_grad():
        hdr = model(b["ldr"], b["expo"])["hdr"]
    assert hdr.shape == (1, 3, CROP, CROP) and torch.isfinite(hdr).all()
    # a validated run resumes (its checkpoint holds the best scores as plain numbers: torch.load
    # with weights_only=True refuses NumPy scalars, which once made every validated run unresumable)
    rc = main(["--stage", "e2e", "--width", "0.125", "--steps", "3", "--batch-size", "1", "--crop", str(CROP),
               "--out", str(out), "--no-progress", "--workers", "0", "--resume", "auto",
               "--set", f"val_crop={CROP}", "--set", "val_size=2", "--set", "val_dynamic=2", "--set", "val_every=1",
               "--set", f"cache_dir='{tmp_path / 'cache'}'", "--set", "data.pool=2"])
    assert rc == 0 and [r["step"] for r in log_records(out / "log.jsonl", "val")][-1] == 3


# -- config --------------------------------------------------------------------------------


def test_shipped_configs_load_and_overrides_apply():
    for name in ("coarse2", "refine2", "e2e2", "coarse3", "refine3", "e2e3"):
        cfg = config_mod.load(name)
        assert cfg.stage == name[:-1] and cfg.exposures == int(name[-1])
    cfg = config_mod.load("coarse3", ["data.crop=64", "loss.perceptual=grad", "lr=5e-5", "stage=refine"])
    assert (cfg.data.crop, cfg.loss.perceptual, cfg.lr, cfg.stage) == (64, "grad", 5e-5, "refine")
    with pytest.raises(ValueError, match="unknown config key"):
        config_mod.load("coarse2", ["data.crops=64"])
    with pytest.raises(ValueError):
        config_mod.load("coarse2", ["data.crop=100"])  # not a multiple of 16


def test_hdrstream_train_starts_the_trainer_as_its_own_program(capfd):
    from deploy.cli import main as hdrstream

    assert hdrstream(["train", "--help"]) == 0
    assert "python -m training" in capfd.readouterr().out
    assert hdrstream(["train", "--stage", "nonsense"]) == 2  # the trainer's own exit status comes back


def test_gate_stage_trains_only_the_gate_from_a_network_without_one(tmp_path):
    from infer.net.model import HDRNet, NetConfig, save_weights

    torch.manual_seed(0)
    plain = HDRNet(NetConfig(exposures=2, width=0.125, prior_per_channel=True))
    src = save_weights(plain, tmp_path / "plain.safetensors", {"stage": "e2e"})
    trainer = Trainer(tiny_cfg(tmp_path, stage="gate", classical_gate=True, init=str(src), lr=1e-2))
    net_before = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith("gate.")}
    stored = load_weights(src).state_dict()  # fp16 on disk
    assert all(torch.equal(net_before[k], v) for k, v in stored.items())  # the network came over
    batch = fixed_batch()
    losses = [trainer.train_step(batch)[0] for _ in range(6)]
    assert all(np.isfinite(losses)) and min(losses[-2:]) < losses[0]
    after = trainer.model.state_dict()
    assert all(torch.equal(net_before[k], after[k]) for k in net_before)  # only the gate moved
    assert not torch.equal(after["gate.conv3.bias"], torch.zeros_like(after["gate.conv3.bias"]))
    with pytest.raises(ValueError, match="classical_gate"):
        tiny_cfg(tmp_path, stage="gate")


def test_without_refinenet_e2e_trains_coarsenet_and_the_gate_on_what_net_runs(tmp_path):
    """refine = false: the e2e stage runs CoarseNet on the reference's window and the gate,
    trains both (RefineNet untouched), and exports weights whose ``net`` stops at CoarseNet."""
    from infer.net.model import HDRNet, NetConfig, save_weights

    torch.manual_seed(0)
    shipped = HDRNet(NetConfig(exposures=2, width=0.125, prior_per_channel=True, classical_gate=True, refine=False))
    src = save_weights(shipped, tmp_path / "net.safetensors", {"stage": "gate"})
    trainer = Trainer(tiny_cfg(tmp_path, stage="e2e", classical_gate=True, refine=False, init=str(src), lr=2e-3,
                                 val_size=2))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = fixed_batch()
    out = trainer.forward(trainer.to_device(batch))
    flows = batch["flows"][:, 1] if "flows" in batch else None
    want = trainer.model.coarse_forward(batch["ldr"][:, 1:4], batch["expo"][:, 1:4], flows)
    assert out["coarse"].shape[1] == 1 and "gate" in out
    assert torch.allclose(out["coarse"][:, 0], want, atol=1e-6)
    losses = [trainer.train_step(batch)[0] for _ in range(6)]
    assert all(np.isfinite(losses)) and min(losses[-2:]) < losses[0]
    after = trainer.model.state_dict()
    moved = {k.split(".")[0] for k in after if not torch.equal(before[k], after[k])}
    assert moved == {"coarse", "gate"}
    val = trainer.validate()
    assert np.isfinite(val["metric"]) and val["psnr_mu_final"] is not None
    trainer.export(tmp_path / "out.safetensors", 1.0, val)
    assert load_weights(tmp_path / "out.safetensors").cfg.refine is False
    with pytest.raises(ValueError, match="refine = false"):
        tiny_cfg(tmp_path, stage="coarse", refine=False)


def test_paired_difference_tells_a_real_change_from_noise():
    from training.loop import paired_difference

    rng = np.random.default_rng(0)
    best = list(rng.normal(40.0, 2.0, 48) / 48)  # per-window scores, weighted to sum to the metric
    better = [b + 0.5 / 48 + rng.normal(0, 0.05) / 48 for b in best]
    noisy = [b + rng.normal(0, 0.5) / 48 for b in best]
    up, noise = paired_difference(better, best), paired_difference(noisy, best)
    assert abs(up["delta"] - 0.5) < 0.05 and up["delta"] > 5 * up["se"]
    assert abs(noise["delta"]) < 3 * noise["se"]
    assert np.isnan(paired_difference(better[:10], best)["delta"])


def test_the_moving_average_is_what_is_validated_and_exported_and_survives_a_resume(tmp_path):
    """ema = d: after a step the average is d·before + (1 − d)·after; validation and the
    exported weights use it, training goes on from the trained weights; a checkpoint keeps it."""
    cfg = tiny_cfg(tmp_path, stage="e2e", ema=0.9, lr=1e-2, val_size=2)
    trainer = Trainer(cfg)
    first = [p.detach().clone() for p in trainer.params]
    trainer.train_step(fixed_batch())
    trained = [p.detach().clone() for p in trainer.params]
    for e, a, b in zip(trainer.ema, first, trained):
        torch.testing.assert_close(e, 0.9 * a + 0.1 * b)
    assert any(not torch.equal(a, b) for a, b in zip(first, trained))
    with trainer.averaged():
        assert all(torch.equal(p, e) for p, e in zip(trainer.params, trainer.ema))
        trainer.export(tmp_path / "avg.safetensors", 1.0, None)
    assert all(torch.equal(p, t) for p, t in zip(trainer.params, trained))  # back to the trained weights
    exported = load_weights(tmp_path / "avg.safetensors").state_dict()
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    for n, e in zip(names, trainer.ema):
        torch.testing.assert_close(exported[n].float(), e, atol=1e-3, rtol=1e-3)  # fp16 on disk
    trainer.save_checkpoint(1.0)
    resumed = Trainer(cfg, resume=trainer.checkpoint_path())
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema, trainer.ema))
    with pytest.raises(ValueError, match="ema"):
        tiny_cfg(tmp_path, ema=1.0)


def test_a_fine_tuning_run_scores_its_starting_point_first(tmp_path):
    """With --init, step 0 is validated before any training: the best checkpoint starts as the
    network it came from, and the first trained checkpoint is compared with it, paired."""
    from infer.net.model import HDRNet, NetConfig, save_weights

    torch.manual_seed(0)
    src = save_weights(HDRNet(NetConfig(exposures=2, width=0.125, prior_per_channel=True)),
                       tmp_path / "start.safetensors", {"stage": "e2e"})
    Trainer(tiny_cfg(tmp_path, stage="e2e", init=str(src), steps=1, val_size=2, val_every=1)).run()
    start, first = log_records(tmp_path / "run" / "log.jsonl", "val")
    assert start["step"] == 0 and "vs_best" not in start
    assert first["step"] == 1 and np.isfinite(first["vs_best"]["delta"])
    assert load_weights(tmp_path / "run" / "best.safetensors").meta["steps"] in (0, 1)


def test_a_gate_learns_the_motion_cue_from_a_gate_without_it(tmp_path):
    """--init weights whose gate has no motion cue into a run with one: the cue's input
    channel starts at zero (the same blend as before), training moves it, and the exported
    network runs in the reconstructor."""
    from infer.net.model import HDRNet, NetConfig, save_weights
    from infer.netrecon import NetReconstructor

    torch.manual_seed(0)
    cfg = NetConfig(exposures=2, width=0.125, prior_per_channel=True, classical_gate=True, refine=False)
    src = save_weights(HDRNet(cfg), tmp_path / "net.safetensors", {"stage": "gate"})
    plain = Trainer(tiny_cfg(tmp_path / "a", stage="gate", classical_gate=True, refine=False, init=str(src)))
    cued = Trainer(tiny_cfg(tmp_path / "b", stage="gate", classical_gate=True, refine=False, init=str(src),
                            gate_motion_cue=True, lr=1e-2))
    w = cued.model.gate.conv1.weight
    assert w.shape[1] == plain.model.gate.conv1.weight.shape[1] + 1 and torch.count_nonzero(w[:, -1]) == 0
    batch = cued.to_device(fixed_batch())
    plain.model.eval(), cued.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(cued.forward(batch)["hdr"], plain.forward(batch)["hdr"])
    for _ in range(3):
        cued.train_step(fixed_batch())
    assert torch.count_nonzero(cued.model.gate.conv1.weight[:, -1]) > 0
    cued.export(tmp_path / "cued.safetensors", 1.0, None)
    net = load_weights(tmp_path / "cued.safetensors")
    assert net.cfg.gate_motion_cue and net.gate.motion_cue
    rec = NetReconstructor(weights={2: tmp_path / "cued.safetensors"})
    b = fixed_batch(size=1)
    frames = b["ldr"][0].permute(0, 2, 3, 1).numpy()
    hdr = rec.reconstruct(np.ascontiguousarray(frames), b["expo"][0].tolist(), 2)
    assert hdr.shape == (CROP, CROP, 3) and np.isfinite(hdr).all()


def test_a_wider_network_starts_from_a_narrower_one_with_the_same_output(tmp_path):
    """--init width-0.125 weights into a width-0.25 run: every trained filter kept, the new
    channels silent, so the output at step 0 is the narrow network's; training then wakes
    the new channels. A part that cannot widen this way is refused, not reinitialised."""
    from infer.net.model import HDRNet, NetConfig, save_weights
    from training.widen import widen_state

    torch.manual_seed(0)
    cfg = NetConfig(exposures=2, width=0.125, flow="dis", prior_per_channel=True, classical_gate=True, refine=False)
    src = save_weights(HDRNet(cfg), tmp_path / "narrow.safetensors", {"stage": "e2e"})
    run = dict(stage="e2e", flow="dis", classical_gate=True, refine=False, init=str(src))
    narrow = Trainer(tiny_cfg(tmp_path / "a", **run))
    wide = Trainer(tiny_cfg(tmp_path / "b", **run, width=0.25, lr=1e-2))
    head = wide.model.coarse.weight
    assert head.enc1.weight.shape[0] == 2 * narrow.model.coarse.weight.enc1.weight.shape[0]
    batch = wide.to_device(fixed_batch(flows=True))
    narrow.model.eval(), wide.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(wide.forward(batch)["hdr"], narrow.forward(batch)["hdr"])
    n = narrow.model.coarse.weight.dec3.weight.shape[0]
    assert torch.count_nonzero(head.dec3.weight[:, n:head.up3.weight.shape[1]]) == 0  # reads no new channel yet
    for _ in range(3):
        wide.train_step(fixed_batch(flows=True))
    assert torch.count_nonzero(head.dec3.weight[:, n:head.up3.weight.shape[1]]) > 0
    learned = HDRNet(replace(cfg, flow="learned", width=0.125))
    with pytest.raises(ValueError, match="only CoarseNet's weight head widens"):
        widen_state(learned.state_dict(), HDRNet(replace(cfg, flow="learned", width=0.25)))


def test_a_wider_coarsenet_window_starts_from_the_narrow_network_and_trains(tmp_path):
    """coarse_window = 5 for two exposures: --init from three-frame weights keeps every trained
    image group in its place (silencing the new frames gives the narrow network's output
    exactly), the run trains on centre-only flows of five frames and exports weights whose
    RefineNet cannot run; a window that does not fit is refused."""
    from infer.net.model import HDRNet, NetConfig, save_weights
    from infer.window_flows import WindowFlows
    from training.data import coarse_flows
    from training.widen import extend_window

    torch.manual_seed(0)
    cfg = NetConfig(exposures=2, width=0.125, flow="dis", prior_per_channel=True, classical_gate=True, refine=False)
    narrow = HDRNet(cfg).eval()
    src = save_weights(narrow, tmp_path / "narrow.safetensors", {"stage": "e2e"})
    wide = HDRNet(replace(cfg, coarse_window=5)).eval()
    state = extend_window(narrow.state_dict(), wide, 3)
    for img in (1, 4, 5, 8):  # the far frames (warped, then unwarped), silenced
        state["coarse.weight.conv_last.bias"][3 * img:3 * img + 3] = -100.0
    wide.load_state_dict(state)
    batch, batch5 = fixed_batch(flows=True), fixed_batch(flows=True, window=5)
    assert batch5["flows"].shape[1:3] == (1, 4)  # only the centre's window fits in five frames
    L = batch["ldr"][0].permute(0, 2, 3, 1).numpy()
    f5 = coarse_flows(WindowFlows(), L, batch["expo"][0].numpy(), 5)
    np.testing.assert_array_equal(f5[0, 1:3], batch["flows"][0, 1].numpy())  # frames i±1: the same flows here
    with torch.no_grad():
        a = narrow.coarse_forward(batch["ldr"][:, 1:4], batch["expo"][:, 1:4], batch["flows"][:, 1])
        b = wide.coarse_forward(batch5["ldr"], batch5["expo"], batch5["flows"][:, 0])
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)

    run = dict(stage="e2e", flow="dis", classical_gate=True, refine=False, init=str(src), lr=2e-3, val_size=2)
    trainer = Trainer(tiny_cfg(tmp_path / "w", **run, coarse_window=5))
    assert trainer.model.coarse.weight.images == 9
    losses = [trainer.train_step(batch5)[0] for _ in range(2)]
    assert all(np.isfinite(losses))
    val = trainer.validate()
    assert np.isfinite(val["metric"])
    trainer.export(tmp_path / "w5.safetensors", 1.0, val)
    model = load_weights(tmp_path / "w5.safetensors")
    assert model.cfg.coarse_frames == 5 and not model.cfg.refine_fits
    for bad in (dict(coarse_window=4), dict(coarse_window=5, refine=True), dict(coarse_window=5, flow="learned")):
        with pytest.raises(ValueError, match="coarse_window"):
            NetConfig(**{**cfg.__dict__, **bad})


def test_motion_edges_start_silent_from_weights_without_them_then_train(tmp_path):
    """NetConfig.motion_edges: the cue is ~0 where a flow is smooth (a rotation) and high where
    it breaks; --init from weights without it gives the same output at step 0, training wakes
    the new inputs, and the exported weights run in the reconstructor."""
    from infer.net.model import HDRNet, NetConfig, save_weights
    from infer.net.ops import motion_edges
    from infer.netrecon import NetReconstructor

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    rotation = torch.stack((-(yy - 16) * 0.05, (xx - 16) * 0.05))[None, None]  # ~3° a frame
    step = torch.zeros(1, 1, 2, 32, 32)
    step[..., 0, :, 16:] = 12.0  # an object moving 12 px over a still background
    assert motion_edges(rotation).max() < 0.1
    edges = motion_edges(step)[0, 0]
    assert edges[:, 15:17].min() > 0.8 and edges[:, :14].max() == 0 and edges[:, 18:].max() == 0

    torch.manual_seed(0)
    cfg = NetConfig(exposures=2, width=0.125, flow="dis", prior_per_channel=True, classical_gate=True, refine=False)
    src = save_weights(HDRNet(cfg), tmp_path / "plain.safetensors", {"stage": "e2e"})
    run = dict(stage="e2e", flow="dis", classical_gate=True, refine=False, init=str(src), lr=1e-2, val_size=2)
    plain = Trainer(tiny_cfg(tmp_path / "a", **run))
    cued = Trainer(tiny_cfg(tmp_path / "b", **run, motion_edges=True))
    enc1 = cued.model.coarse.weight.enc1
    assert enc1.weight.shape[1] == plain.model.coarse.weight.enc1.weight.shape[1] + 2
    batch = cued.to_device(fixed_batch(flows=True))
    plain.model.eval(), cued.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(cued.forward(batch)["hdr"], plain.forward(batch)["hdr"])
    assert torch.count_nonzero(enc1.weight[:, -2:]) == 0
    for _ in range(3):
        cued.train_step(fixed_batch(flows=True))
    assert torch.count_nonzero(enc1.weight[:, -2:]) > 0
    cued.export(tmp_path / "cued.safetensors", 1.0, None)
    assert load_weights(tmp_path / "cued.safetensors").cfg.motion_edges
    rec = NetReconstructor(weights={2: tmp_path / "cued.safetensors"})
    b = fixed_batch(size=1)
    frames = np.ascontiguousarray(b["ldr"][0].permute(0, 2, 3, 1).numpy())
    hdr = rec.reconstruct(frames, b["expo"][0].tolist(), 2)
    assert hdr.shape == (CROP, CROP, 3) and np.isfinite(hdr).all()


def test_the_learned_noise_filter_starts_as_the_bilateral_one_and_trains_alone(tmp_path):
    """NetConfig.learned_denoise: from weights without it, `net` gives exactly what it gave
    (the bilateral filter; the correction starts at zero); the denoise stage then trains the
    correction and nothing else, and the reconstructor runs it (unfiltered with --no-denoise)."""
    from infer.net.model import HDRNet, NetConfig, save_weights
    from infer.netrecon import NetReconstructor

    torch.manual_seed(0)
    cfg = NetConfig(exposures=2, width=0.125, flow="dis", prior_per_channel=True, classical_gate=True, refine=False)
    src = save_weights(HDRNet(cfg), tmp_path / "plain.safetensors", {"stage": "e2e"})
    run = dict(flow="dis", classical_gate=True, refine=False, init=str(src), lr=1e-2, learned_denoise=True)
    trainer = Trainer(tiny_cfg(tmp_path / "d", stage="denoise", **run))
    trainer.export(tmp_path / "start.safetensors", 0.0, None)
    b = fixed_batch(size=1)
    frames = np.ascontiguousarray(b["ldr"][0].permute(0, 2, 3, 1).numpy())
    expo = b["expo"][0].tolist()
    outputs = {name: NetReconstructor(weights={2: tmp_path / f"{name}.safetensors"}).reconstruct(frames, expo, 2)
               for name in ("plain", "start")}
    np.testing.assert_allclose(outputs["start"], outputs["plain"], rtol=1e-5, atol=1e-7)

    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses = [trainer.train_step(fixed_batch(flows=True))[0] for _ in range(3)]
    assert all(np.isfinite(losses))
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("noise.") for k in changed)
    trainer.export(tmp_path / "trained.safetensors", 1.0, None)
    rec = NetReconstructor(weights={2: tmp_path / "trained.safetensors"})
    trained = rec.reconstruct(frames, expo, 2)
    assert trained.shape == outputs["plain"].shape and np.isfinite(trained).all()
    assert np.abs(trained - outputs["plain"]).max() > 0
    raw = NetReconstructor(weights={2: tmp_path / "trained.safetensors"}, denoise=False).reconstruct(frames, expo, 2)
    np.testing.assert_array_equal(raw, NetReconstructor(weights={2: src}, denoise=False).reconstruct(frames, expo, 2))
    with pytest.raises(ValueError, match="learned_denoise"):
        tiny_cfg(tmp_path / "x", stage="denoise", flow="dis")


def test_the_denoise_stage_trains_from_a_cache_of_the_frozen_network(tmp_path):
    """training.denoise_cache: a chunk holds what the filter sees in a step of the live stream
    (the same loss on the same batch), a run from the cache trains the filter alone, a
    missing chunk is made again as it was, and no other stage takes a cache."""
    from training.config import LossConfig
    from training.cached_batches import load_cache
    from training.denoise_cache import make_cache
    from training.losses import stage_loss

    torch.manual_seed(0)
    run = dict(flow="dis", classical_gate=True, refine=False, learned_denoise=True, denoise_width=0.25, lr=1e-2,
               loss=LossConfig(norm="psnr", motion_weight=4.0, hue=0.5))
    trainer = Trainer(tiny_cfg(tmp_path / "m", stage="denoise", **run))
    with torch.no_grad():
        trainer.model.noise.last.weight.normal_(0, 0.1)  # a filter that does something
    make_cache(trainer, tmp_path / "cache", chunks=2, batches_per_chunk=1)
    data = load_cache(tmp_path / "cache")
    assert data["prefilter"].shape == (4, 3, CROP, CROP) and data["moved"].dtype == torch.bool

    assert trainer.step == 0
    live = trainer.to_device(next(iter(trainer.loader())))  # the stream's first batch
    cached = {k: v[:2].float() if v.dtype != torch.bool else v[:2] for k, v in data.items()}
    with torch.no_grad():
        got = stage_loss("denoise", trainer.forward(cached), cached, trainer.cfg.loss)[0]
        want = stage_loss("denoise", trainer.forward(live), live, trainer.cfg.loss)[0]
    torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-5)

    first = (tmp_path / "cache" / "chunk-0001.npz").read_bytes()
    (tmp_path / "cache" / "chunk-0001.npz").unlink()
    make_cache(Trainer(tiny_cfg(tmp_path / "m2", stage="denoise", **run)), tmp_path / "cache", 2, 1)
    again = load_cache(tmp_path / "cache")
    torch.testing.assert_close(again["gt_ref"], data["gt_ref"])  # the same stream, from chunk 1's step on
    assert (tmp_path / "cache" / "chunk-0001.npz").stat().st_size == len(first)

    cache = tmp_path / "cache"
    two = load_cache(f"{cache}, {cache}", max_chunks=1)  # several folders, the first chunk of each
    torch.testing.assert_close(two["gt_ref"], torch.cat([data["gt_ref"][:2]] * 2))
    other = tmp_path / "other"
    other.mkdir()
    np.savez(other / "chunk-0000.npz", **{k: np.zeros((1, 3, 8, 8), np.float16) for k in data})
    with pytest.raises(ValueError, match="shape"):
        load_cache(f"{cache},{other}")

    runner = Trainer(tiny_cfg(tmp_path / "r", stage="denoise", denoise_cache=str(cache), denoise_crop=16,
                              **run))
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.run()
    changed = {k for k, v in runner.model.state_dict().items() if not torch.equal(before[k], v)}
    assert runner.step == 3 and changed and all(k.startswith("noise.") for k in changed)
    with pytest.raises(ValueError, match="denoise_cache"):
        tiny_cfg(tmp_path / "x", stage="e2e", denoise_cache=str(tmp_path / "cache"), **{**run, "loss": LossConfig()})


def test_e2e_passes_the_final_gradient_straight_through_the_noise_filter(tmp_path):
    """With the filter in an e2e run, the network before it learns from the error the filter
    leaves, as if the filter were the identity (its true gradient lands on a few black pixels)."""
    run = dict(flow="dis", classical_gate=True, refine=False, learned_denoise=True, denoise_width=0.25)
    trainer = Trainer(tiny_cfg(tmp_path, stage="e2e", **run))
    with torch.no_grad():
        trainer.model.noise.last.weight.normal_(0, 0.1)
    b = fixed_batch(size=2, flows=True)
    _, _, _, sigma = trainer.classical_inputs(b["ldr"], b["expo"])
    hdr = (torch.rand(2, 3, CROP, CROP) * 2).requires_grad_(True)
    t_ref = b["expo"][:, 1].float()
    out = trainer._learned_denoise(hdr, t_ref, sigma)
    weight = torch.rand_like(out)
    (out * weight).sum().backward()
    torch.testing.assert_close(hdr.grad, weight)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.noise.parameters())


def test_a_noise_filter_grafts_onto_another_network(tmp_path):
    """training.graft: the three-exposure network gets the filter a two-exposure run trained,
    tensor for tensor, keeping its own weights; a donor without a filter is refused."""
    from infer.net.model import HDRNet, NetConfig, save_weights
    from training.graft import graft_noise

    torch.manual_seed(0)
    base = dict(width=0.125, flow="dis", classical_gate=True, refine=False)
    donor = HDRNet(NetConfig(exposures=2, learned_denoise=True, denoise_width=0.25, **base))
    with torch.no_grad():
        donor.noise.last.weight.normal_()
    three = HDRNet(NetConfig(exposures=3, **base))
    save_weights(donor, tmp_path / "donor.safetensors", {"stage": "denoise", "steps": 7})
    save_weights(three, tmp_path / "three.safetensors", {"stage": "e2e"})
    out = graft_noise(tmp_path / "donor.safetensors", tmp_path / "three.safetensors", tmp_path / "out.safetensors")
    got = load_weights(out)
    assert got.cfg.exposures == 3 and got.cfg.learned_denoise and got.cfg.denoise_width == 0.25
    ref = {**{f"noise.{k}": v for k, v in donor.noise.state_dict().items()}, **three.state_dict()}
    for k, v in got.state_dict().items():
        torch.testing.assert_close(v, ref[k].half().float(), msg=k)
    assert got.meta["noise_filter_from"]["steps"] == 7
    with pytest.raises(ValueError, match="no learned noise filter"):
        graft_noise(tmp_path / "three.safetensors", tmp_path / "three.safetensors", tmp_path / "x.safetensors")


def test_a_run_with_another_noise_filter_starts_it_fresh_and_keeps_the_rest(tmp_path):
    """--init from weights whose learned filter has another shape (denoise_arch, denoise_width):
    every other tensor is taken, the filter starts as the bilateral filter (zero correction)."""
    from infer.net.model import HDRNet, NetConfig, save_weights

    torch.manual_seed(0)
    base = dict(width=0.125, flow="dis", classical_gate=True, refine=False, learned_denoise=True)
    src = HDRNet(NetConfig(exposures=2, denoise_width=0.25, **base))
    with torch.no_grad():
        src.noise.last.weight.normal_()
    path = save_weights(src, tmp_path / "full.safetensors", {"stage": "denoise"})
    trainer = Trainer(tiny_cfg(tmp_path, stage="denoise", init=str(path), denoise_width=0.25, denoise_arch="half",
                               **base))
    assert type(trainer.model.noise).__name__ == "HalfResNoiseNet"
    assert not trainer.model.noise.last.weight.any()
    got = trainer.model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("noise."):
            torch.testing.assert_close(got[k], v.half().float(), msg=k)
