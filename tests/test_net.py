"""infer.net: the coarse-to-fine network — shapes, gradients, sizes, mask, weights files, checks.

Tiny widths and 32×32 inputs on CPU; the full-width model is only constructed (for its
parameter count), never run.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from infer.mask import well_exposed_mask as np_well_exposed_mask
from infer.net import HDRNet, NetConfig, WeightsError, count_parameters, load_weights, read_metadata, save_weights
from infer.net.coarse import CoarseNet
from infer.net.flow import flow_warp
from infer.net.ops import exposure_match, ldr_to_hdr, mu_law, pad_to_multiple, well_exposed_mask
from infer.net.refine import RefineFeatures

CYCLES = {2: (1.0, 8.0), 3: (1.0, 4.0, 16.0)}
SIZE = 32


def window(exposures: int, batch: int = 2, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random LDR window and its exposures; batch element b starts the cycle at phase b."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * exposures + 1
    cycle = CYCLES[exposures]
    ldr = torch.rand(batch, n, 3, size, size, generator=g)
    expo = torch.tensor([[cycle[(j + b) % exposures] for j in range(n)] for b in range(batch)])
    return ldr, expo


def make_net(exposures: int, width: float = 0.25, seed: int = 0) -> HDRNet:
    torch.manual_seed(seed)
    return HDRNet(NetConfig(exposures=exposures, width=width))


def mu_l1(out: dict[str, torch.Tensor], seed: int = 1) -> torch.Tensor:
    target = torch.rand(out["hdr"].shape, generator=torch.Generator().manual_seed(seed))
    return (mu_law(out["hdr"]) - mu_law(target)).abs().mean()


@pytest.fixture(scope="module", params=[2, 3], ids=["2exp", "3exp"])
def net(request) -> HDRNet:
    return make_net(request.param).eval()


# -- config ---------------------------------------------------------------------------------


class TestNetConfig:
    def test_frames(self):
        assert (NetConfig(exposures=2).frames, NetConfig(exposures=2).coarse_frames) == (5, 3)
        assert (NetConfig(exposures=3).frames, NetConfig(exposures=3).coarse_frames) == (7, 5)

    @pytest.mark.parametrize("kwargs", [{"exposures": 4}, {"width": 0.0}, {"deform_groups": 0}])
    def test_rejects_bad_values(self, kwargs):
        with pytest.raises(ValueError):
            NetConfig(**kwargs)

    def test_json_round_trip(self):
        cfg = NetConfig(exposures=3, width=0.5, deform_groups=4, refine_mulaw_input=False)
        assert NetConfig.from_json(cfg.to_json()) == cfg
        with pytest.raises(ValueError):
            NetConfig.from_json(json.dumps({"exposures": 2, "depth": 3}))


# -- forward ---------------------------------------------------------------------------------


def test_forward_shapes_and_range(net):
    ldr, expo = window(net.cfg.exposures)
    with torch.no_grad():
        out = net(ldr, expo)
    b = ldr.shape[0]
    assert out["hdr"].shape == (b, 3, SIZE, SIZE)
    assert out["refine"].shape == (b, 3, SIZE, SIZE)
    assert out["mask"].shape == (b, 3, SIZE, SIZE)
    assert out["coarse"].shape == (b, 3, 3, SIZE, SIZE)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
        assert value.min() >= 0 and value.max() <= 1 + 1e-5, key


def test_final_is_mask_blend_of_coarse_and_refine(net):
    ldr, expo = window(net.cfg.exposures)
    with torch.no_grad():
        out = net(ldr, expo)
    m = out["mask"]
    torch.testing.assert_close(out["hdr"], m * out["coarse"][:, 1] + (1 - m) * out["refine"])


def test_without_mask_blend_the_final_is_refinenets_everywhere():
    """mask_blend=False: RefineNet's output over well-exposed pixels too, and a zero mask so
    the refine loss is averaged over every pixel; same parameters, so weights carry over."""
    blended = make_net(2).eval()
    net = HDRNet(NetConfig(exposures=2, width=0.25, mask_blend=False)).eval()
    net.load_state_dict(blended.state_dict())
    ldr, expo = window(2)
    with torch.no_grad():
        out, ref = net(ldr, expo), blended(ldr, expo)
    assert ref["mask"].mean() > 0.3  # the blend would have kept the coarse HDR somewhere
    torch.testing.assert_close(out["hdr"], ref["refine"])
    assert out["mask"].abs().max() == 0

def test_stages_compose_to_forward(net):
    """coarse_forward per window + refine_forward (with or without cached features) = forward."""
    ldr, expo = window(net.cfg.exposures)
    n, half = net.cfg.frames, net.cfg.coarse_frames // 2
    i = n // 2
    with torch.no_grad():
        full = net(ldr, expo)
        coarse3 = torch.stack(
            [net.coarse_forward(ldr[:, j - half : j + half + 1], expo[:, j - half : j + half + 1]) for j in (i - 1, i, i + 1)],
            dim=1,
        )
        expo3 = expo[:, i - 1 : i + 2]
        staged = net.refine_forward(coarse3, ldr[:, i], expo3)
        # a stream: features of one frame at a time, stacked
        per_frame = [net.features(coarse3[:, k : k + 1], expo3[:, k : k + 1], expo_window=expo3) for k in range(3)]
        cached = net.refine_forward(coarse3, ldr[:, i], expo3, feats=RefineFeatures.stack(per_frame))
    torch.testing.assert_close(coarse3, full["coarse"], atol=1e-5, rtol=1e-4)
    for key in ("hdr", "refine", "mask"):
        torch.testing.assert_close(staged[key], full[key], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cached[key], full[key], atol=1e-5, rtol=1e-4)


def test_coarse_net_with_given_flows_and_aux():
    torch.manual_seed(0)
    coarse = CoarseNet(exposures=2, width=0.25)
    ldr, expo = window(2)
    ldr_c, expo_c = ldr[:, 1:4], expo[:, 1:4]
    flows = torch.zeros(2, 2, 2, SIZE, SIZE)
    with torch.no_grad():
        aux = coarse(ldr_c, expo_c, flows=flows, return_aux=True)
    assert aux["weights"].shape == (2, 5, 3, SIZE, SIZE)
    torch.testing.assert_close(aux["weights"].sum(dim=1), torch.ones(2, 3, SIZE, SIZE), atol=1e-4, rtol=0)
    # zero flow: the warped neighbours are the neighbours, so the blend uses only real pixels
    hdrs = ldr_to_hdr(ldr_c, expo_c)
    assert (aux["hdr"] <= hdrs.amax(dim=1) + 1e-6).all() and (aux["hdr"] >= hdrs.amin(dim=1) - 1e-6).all()


def render(hdr: torch.Tensor, t: float) -> torch.Tensor:
    """Noise-free gamma-2.2 LDR of a linear scene exposed for t (clipped)."""
    return (hdr * t).clamp(0.0, 1.0).pow(1.0 / 2.2)


def scene_window(times: tuple[float, ...], ghost: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A static scene spanning 1e-4..1 seen at ``times`` (centre in the middle); with ``ghost``
    a bright object sits in every neighbour but not in the centre."""
    g = torch.Generator().manual_seed(3)
    hdr = torch.exp(torch.empty(1, 3, SIZE, SIZE).uniform_(math.log(1e-4), 0.0, generator=g))
    frames = []
    for j, t in enumerate(times):
        scene = hdr.clone()
        if ghost and j != len(times) // 2:
            scene[..., 8:20, 8:20] = 0.05
        frames.append(render(scene, t))
    return torch.stack(frames, dim=1), torch.tensor([times]), hdr


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "brightest"])
@pytest.mark.parametrize("times", [(8.0, 1.0, 8.0), (1.0, 8.0, 1.0), (4.0, 16.0, 1.0, 4.0, 16.0)])
def test_untrained_coarse_with_prior_merges_like_the_classical_merge(times, per_channel):
    """The weight prior: unsaturated long exposures dominate, clipped pixels come from the
    shortest frame, so a static, noise-free scene comes back almost exactly before training."""
    torch.manual_seed(0)
    ldr, expo, hdr = scene_window(times)
    flows = torch.zeros(1, len(times) - 1, 2, SIZE, SIZE)
    plain = CoarseNet(exposures=(len(times) + 1) // 2, width=0.25)
    prior = CoarseNet(exposures=(len(times) + 1) // 2, width=0.25, weight_prior=True,
                      prior_per_channel=per_channel)
    with torch.no_grad():
        err_prior = (mu_law(prior(ldr, expo, flows)) - mu_law(hdr)).abs().max()
        err_plain = (mu_law(plain(ldr, expo, flows)) - mu_law(hdr)).abs().max()
    assert err_prior < 0.02 < err_plain, (err_prior, err_plain)


def test_per_channel_prior_keeps_the_references_unclipped_channels():
    """A long reference whose red alone is clipped: per channel, green and blue keep the
    reference's full weight (its cleanest data) and only red goes to the short frames; by its
    brightest channel all three would."""
    from infer.net.ops import merge_prior

    ldr = torch.full((1, 3, 3, 4, 4), 0.5)
    ldr[:, 0, 0] = 1.0  # the reference (first, t = 8): red clipped
    ldr[:, 1:] = 0.5 * (1 / 8) ** (1 / 2.2)  # the short frames agree with it
    ldr[:, 1:, 0] = 1.0 * (1 / 8) ** (1 / 2.2)
    expo = torch.tensor([[8.0, 1.0, 1.0]])
    per_channel, brightest = merge_prior(ldr, expo, per_channel=True), merge_prior(ldr, expo)
    assert per_channel.shape == (1, 3, 3, 4, 4) and brightest.shape == (1, 3, 1, 4, 4)
    assert per_channel[0, 0, 1:].min() > 7.9 and per_channel[0, 0, 0].max() < 1e-2
    assert brightest[0, 0].max() < 1e-2
    assert per_channel[0, 1:].min() > 0.9  # the short frames keep their weight in every channel


def test_untrained_coarse_with_prior_rejects_a_ghost():
    """An object only the neighbours see is not blended in: there the centre is kept."""
    torch.manual_seed(0)
    ldr, expo, hdr = scene_window((8.0, 1.0, 8.0), ghost=True)
    coarse = CoarseNet(exposures=2, width=0.25, weight_prior=True)
    with torch.no_grad():
        out = coarse(ldr, expo, torch.zeros(1, 2, 2, SIZE, SIZE))
    centre = ldr_to_hdr(ldr[:, 1], expo[:, 1])
    box = (..., slice(10, 18), slice(10, 18))
    blended = (centre + 8.0 * 0.05) / 9.0  # what an SNR-weighted merge that kept the ghost gives
    err = (mu_law(out[box]) - mu_law(centre[box])).abs().mean()
    err_blended = (mu_law(blended[box]) - mu_law(centre[box])).abs().mean()
    assert err < 0.25 * err_blended, (err, err_blended)


def test_coarse_reads_a_neighbour_unwarped_behind_a_clipped_reference_where_its_flow_is_wrong():
    """Where the reference is clipped the flow is inferred, not measured; flows that drag a
    dark object over the bright background (here: 12 px off) must not darken the shipped
    three-exposure CoarseNet's blend there: with ``unwarped_behind_clip`` the unwarped
    neighbours, which agree with the clip, give the background's radiance."""
    h, w = 32, 64
    x = torch.arange(w, dtype=torch.float32).expand(h, w)
    radiance = (0.15 + 0.03 * torch.sin(x / 5.0))[None] * torch.tensor([1.0, 0.85, 0.7])[:, None, None]
    radiance[:, 8:24, 30:50] = torch.tensor([0.004, 0.005, 0.006])[:, None, None]  # dark, in every frame

    def window(expo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scene's gamma-2.2 frames at these exposures (1, n, 3, H, W), and flows 12 px off."""
        flows = torch.zeros(1, expo.shape[1] - 1, 2, h, w)
        flows[:, :, 0] = 12.0
        return (radiance[None, None] * expo[..., None, None, None]).clamp(0, 1).pow(1 / 2.2), flows

    expo = torch.tensor([[1.0, 4.0, 16.0, 4.0, 1.0]])
    ldr, flows = window(expo)
    band = (..., slice(8, 24), slice(18, 30))  # clipped background the misplaced object lands on
    assert bool((ldr[0, 2][band].amax(0) >= 0.97).all())
    nbrs = [0, 1, 3, 4]
    warped = flow_warp(ldr[0, nbrs], flows[0]).unsqueeze(0)
    read = CoarseNet._unwarped_behind_clip(ldr[:, 2], warped, ldr[:, nbrs], expo[:, 2], expo[:, nbrs])
    assert torch.equal(read[band], ldr[:, nbrs][band])  # the background, unwarped
    seen = (..., slice(8, 24), slice(42, 50))  # the object, which the reference sees unclipped
    assert torch.equal(read[seen], warped[seen])
    from infer.netrecon import default_weights

    coarse = load_weights(default_weights(3)).coarse
    if coarse.frames == 7:  # the reference's own exposure at i ± 3 too, clipped where it is
        expo = torch.cat((expo[:, 2:3], expo, expo[:, 2:3]), dim=1)
        ldr, flows = window(expo)
    ratio = {}
    for on in (False, True):
        coarse.unwarped_behind_clip = on
        with torch.no_grad():
            ratio[on] = (coarse(ldr, expo, flows)[0][band] / radiance[band]).mean().item()
    assert abs(ratio[True] - 1.0) < 0.002 and ratio[False] < ratio[True], ratio  # without: 1 % too dark


def test_untrained_residual_refine_returns_the_coarse_hdr():
    """RefineNet as a μ-law correction starts at the centre's coarse HDR; the paper's sigmoid
    output starts near 0.5 everywhere."""
    from infer.net.refine import RefineNet

    torch.manual_seed(0)
    coarse3 = torch.exp(torch.empty(2, 3, 3, SIZE, SIZE).uniform_(math.log(1e-4), 0.0))
    expo3 = torch.tensor([[8.0, 1.0, 8.0], [1.0, 8.0, 1.0]])
    with torch.no_grad():
        residual = RefineNet(width=0.25, residual=True)(coarse3, expo3)
        plain = RefineNet(width=0.25)(coarse3, expo3)
    assert (mu_law(residual) - mu_law(coarse3[:, 1])).abs().max() < 0.02
    assert (mu_law(plain) - mu_law(coarse3[:, 1])).abs().mean() > 0.1


# -- gradients -------------------------------------------------------------------------------


def is_offset_branch(name: str) -> bool:
    """PCD layers whose only path to the loss runs through the zero-initialised conv_offset."""
    return ".align." in name and "offset_conv" in name


@pytest.mark.parametrize("exposures", [2, 3])
def test_gradients_reach_every_parameter(exposures):
    net = make_net(exposures)
    ldr, expo = window(exposures)
    mu_l1(net(ldr, expo)).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), name
        if is_offset_branch(name):
            continue  # zero until conv_offset has moved: checked after one step below
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient"
    assert all(p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "conv_offset" in n)

    # One optimiser step moves the zero-initialised offset convs; then every layer learns.
    torch.optim.SGD(net.parameters(), lr=1e-2).step()
    net.zero_grad()
    mu_l1(net(ldr, expo)).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"parameters without gradient after one step: {dead}"


# -- size ------------------------------------------------------------------------------------


def test_parameter_count_matches_the_paper_scale(capsys):
    counts = {}
    for exposures in (2, 3):
        net = HDRNet(NetConfig(exposures=exposures, width=1.0))
        counts[exposures] = {
            "flow": count_parameters(net.coarse.flow),
            "weight": count_parameters(net.coarse.weight),
            "refine": count_parameters(net.refine),
            "total": count_parameters(net),
        }
    with capsys.disabled():
        print(f"\nparameters at width 1.0: {counts}")
    two = counts[2]
    assert abs(two["total"] - 6.4e6) / 6.4e6 < 0.05
    assert abs(two["flow"] - 0.9e6) / 0.9e6 < 0.05
    assert abs(two["weight"] - 2.5e6) / 2.5e6 < 0.10
    assert abs(two["refine"] - 3.0e6) / 3.0e6 < 0.05
    assert counts[3]["total"] > two["total"]  # wider flow input and more images to blend


def test_width_scales_every_part():
    small, big = HDRNet(NetConfig(width=0.25)), HDRNet(NetConfig(width=0.5))
    for part in ("coarse.flow", "coarse.weight", "refine"):
        assert count_parameters(small.get_submodule(part)) < count_parameters(big.get_submodule(part)) / 2.5, part


# -- mask and ops ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exposures, ref",
    [((1.0, 8.0, 1.0), 1), ((8.0, 1.0, 8.0), 1), ((1.0, 4.0, 16.0), 1), ((4.0, 16.0, 1.0), 1), ((16.0, 1.0, 4.0), 1),
     ((2.0, 2.0, 2.0), 1), ((1.0, 8.0, 1.0, 8.0, 1.0), 2)],
)
def test_mask_equals_numpy_mask(exposures, ref):
    rng = np.random.default_rng(3)
    L = rng.random((2, 3, 17, 19), dtype=np.float32)
    L[0, :, :2] = np.float32([[0.0], [1.0]])  # exact ends
    expo = torch.tensor([exposures, exposures])
    got = well_exposed_mask(torch.from_numpy(L), expo, ref).numpy()
    for b in range(2):
        want = np_well_exposed_mask(L[b].transpose(1, 2, 0), list(exposures), ref)
        np.testing.assert_allclose(got[b].transpose(1, 2, 0), want, atol=1e-6)


def test_ops_known_values():
    L = torch.full((1, 3, 2, 2), 0.5)
    torch.testing.assert_close(ldr_to_hdr(L, torch.tensor([8.0])), torch.full_like(L, 0.5**2.2 / 8))
    matched = exposure_match(L, torch.tensor([1.0]), torch.tensor([8.0]))
    torch.testing.assert_close(matched, torch.full_like(L, min(1.0, 0.5 * 8 ** (1 / 2.2))))
    torch.testing.assert_close(mu_law(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    padded, (h, w) = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8) and (h, w) == (5, 7)
    torch.testing.assert_close(padded[..., :h, :w], x)


def test_flow_warp_shifts_by_integer_flow():
    x = torch.arange(30, dtype=torch.float32).view(1, 1, 5, 6)
    flow = torch.zeros(1, 2, 5, 6)
    torch.testing.assert_close(flow_warp(x, flow), x)
    flow[:, 0] = 1.0  # sample one pixel to the right; border padding repeats the last column
    want = torch.cat((x[..., 1:], x[..., -1:]), dim=-1)
    torch.testing.assert_close(flow_warp(x, flow), want)


# -- weights files ------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, net):
    path = save_weights(net, tmp_path / "net.safetensors", meta={"steps": 12, "data": "procedural"})
    n = count_parameters(net)
    size = path.stat().st_size
    assert 2 * n < size < 2 * n + 64 * 1024, "fp16 file: 2 bytes per parameter plus a small header"

    cfg, meta = read_metadata(path)
    assert cfg == net.cfg and meta == {"steps": 12, "data": "procedural"}
    loaded = load_weights(path)
    assert not loaded.training and loaded.meta == meta
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ldr, expo = window(net.cfg.exposures)
    with torch.no_grad():
        a, b = net(ldr, expo), loaded(ldr, expo)
    for key in a:
        torch.testing.assert_close(mu_law(b[key]), mu_law(a[key]), atol=2e-3, rtol=0)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.safetensors")

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(WeightsError):
        load_weights(corrupt)

    from safetensors.torch import save_file

    net = make_net(2, width=0.125)
    tensors = {k: v.half() for k, v in net.state_dict().items()}
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, str(foreign), metadata={"format": "something.else"})
    with pytest.raises(WeightsError, match="not an HDRNet"):
        load_weights(foreign)

    mismatched = tmp_path / "mismatched.safetensors"
    wrong_cfg = NetConfig(exposures=2, width=0.25).to_json()
    save_file(tensors, str(mismatched), metadata={"format": "hdrstream.hdrnet", "format_version": "1", "config": wrong_cfg, "meta": "{}"})
    with pytest.raises(WeightsError, match="do not match"):
        load_weights(mismatched)


# -- input checks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net2() -> HDRNet:
    return make_net(2, width=0.125).eval()


class TestBadInputs:
    def test_wrong_frame_count(self, net2):
        ldr, expo = window(3)  # 7 frames for a 5-frame network
        with pytest.raises(ValueError, match=r"ldr must have shape \(\*, 5, 3, \*, \*\)"):
            net2(ldr, expo)

    def test_size_not_multiple(self, net2):
        ldr, expo = window(2, size=40)
        with pytest.raises(ValueError, match="multiples of 16"):
            net2(ldr, expo)

    def test_expo_shape(self, net2):
        ldr, expo = window(2)
        with pytest.raises(ValueError, match="expo"):
            net2(ldr, expo[:, :4])

    def test_stage_shapes(self, net2):
        ldr, expo = window(2)
        with pytest.raises(ValueError, match="coarse_forward"):
            net2.coarse_forward(ldr, expo)  # 5 frames instead of 3
        with pytest.raises(ValueError, match="coarse3"):
            net2.refine_forward(torch.rand(2, 2, 3, SIZE, SIZE), ldr[:, 2], expo[:, 1:4])
        with pytest.raises(ValueError, match="ldr_ref"):
            net2.refine_forward(torch.rand(2, 3, 3, SIZE, SIZE), ldr[:, 2, :, :16], expo[:, 1:4])
        with pytest.raises(ValueError, match="expo_window"):
            net2.features(torch.rand(2, 1, 3, SIZE, SIZE), expo[:, :1])


# -- the classical gate --------------------------------------------------------------------


def test_classical_gate_starts_halfway_and_blends_toward_the_classical_merge():
    from infer.net.gate import ClassicalGate

    torch.manual_seed(0)
    gate = ClassicalGate()
    b, h, w = 2, 20, 24
    hdr, classical = torch.rand(b, 3, h, w), torch.rand(b, 3, h, w)
    out, g = gate(hdr, classical, torch.rand(b, 1, h, w), torch.rand(b, 3, h, w))
    assert out.shape == hdr.shape and g.shape == (b, 1, h, w)
    assert torch.allclose(g, torch.full_like(g, 0.5), atol=0.02)  # an untrained gate: half and half
    assert torch.allclose(out, hdr + g * (classical - hdr))
    with pytest.raises(ValueError, match="confidence"):
        gate(hdr, classical, torch.rand(b, 3, h, w), torch.rand(b, 3, h, w))


def test_gated_network_round_trips_and_older_files_have_no_gate(tmp_path):
    net = HDRNet(NetConfig(exposures=2, width=0.125, classical_gate=True))
    path = save_weights(net, tmp_path / "gated.safetensors")
    back = load_weights(path)
    assert back.cfg.classical_gate and back.gate is not None
    assert NetConfig.from_json('{"exposures": 2}').classical_gate is False  # files written before the gate


def test_merge_prior_is_its_formula():
    """The prior computed in place (for speed) is still t·x²(3 − 2x)·(agreement + fallback)
    + fallback/t⁴ with x the saturation roll-off, here against NumPy (float64)."""
    import torch.nn.functional as F

    from infer.net.ops import FALLBACK, GHOST_TOL, SAT_END, SAT_START, merge_prior

    torch.manual_seed(1)
    ldr = torch.rand(1, 3, 3, 8, 10) * 1.05
    expo = torch.tensor([[8.0, 1.0, 1.0]])
    got = merge_prior(ldr, expo, per_channel=True).double().numpy()
    L = ldr.clamp(0, 1).double()
    t = expo.double()[..., None, None, None]
    x = ((SAT_END - L) / (SAT_END - SAT_START)).clamp(0, 1)
    grey = (L * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)[:, None, None]).sum(2, keepdim=True)
    bright = torch.maximum(t, t[:, :1])
    a = (grey[:, :1] * (bright / t[:, :1]) ** (1 / 2.2)).clamp(max=1)
    b = (grey * (bright / t) ** (1 / 2.2)).clamp(max=1)
    d = F.avg_pool2d((a - b).abs().flatten(0, 1), 3, 1, 1, count_include_pad=False).view_as(b)
    agree = torch.exp(-(d / (GHOST_TOL * (0.5 + 0.5 * (bright / torch.minimum(t, t[:, :1])) ** (1 / 2.2)))) ** 2)
    agree[:, 0] = 1.0
    want = (x * x * (3 - 2 * x) * t * (agree + FALLBACK) + FALLBACK / t**4).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["full", "half"])
def test_both_learned_noise_filters_start_as_the_bilateral_filter_at_any_size(arch):
    """infer.net.noise: either filter's last convolution starts at zero, so its output is the
    bilateral filter's exactly; sizes that are no multiple of its own are padded and cropped."""
    from infer.net.noise import noise_net

    torch.manual_seed(0)
    net = noise_net(arch, 0.25)
    filtered, noisy = torch.rand(2, 3, 37, 22), torch.rand(2, 3, 37, 22)
    sigma = torch.full((2, 1, 37, 22), 0.01)
    assert torch.equal(net(filtered, noisy, sigma), filtered)
    with torch.no_grad():
        net.last.weight.normal_(0, 0.1)
    out = net(filtered, noisy, sigma)
    assert out.shape == filtered.shape and not torch.equal(out, filtered)
    with pytest.raises(ValueError, match="denoise_arch"):
        NetConfig(learned_denoise=True, denoise_arch="quarter")


def test_the_half_resolution_filter_round_trips_and_older_files_read_as_full(tmp_path):
    cfg = NetConfig(exposures=2, width=0.125, flow="dis", classical_gate=True, refine=False, learned_denoise=True,
                    denoise_width=0.25, denoise_arch="half")
    net = HDRNet(cfg)
    with torch.no_grad():
        net.noise.last.weight.normal_()
    back = load_weights(save_weights(net, tmp_path / "half.safetensors", {}))
    assert back.cfg.denoise_arch == "half" and type(back.noise).__name__ == "HalfResNoiseNet"
    torch.testing.assert_close(back.noise.last.weight, net.noise.last.weight.half().float())
    old = json.loads(cfg.to_json())
    del old["denoise_arch"]  # a file from before the choice
    assert NetConfig.from_json(json.dumps(old)).denoise_arch == "full"
