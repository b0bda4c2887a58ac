"""The network behind the reconstructor interface: windowed vs streaming, padding, errors."""
import numpy as np
import pytest
import torch

from infer.net.model import HDRNet, NetConfig, save_weights
from infer.netrecon import NetReconstructor, default_weights

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    paths = {}
    for n in (2, 3):
        path = tmp_path_factory.mktemp("w") / f"tiny-{n}.safetensors"
        save_weights(HDRNet(NetConfig(exposures=n, width=0.125)).eval(), path, {"summary": "random init"})
        paths[n] = path
    return paths


def stream_of(n_frames: int, exposures: int, h=20, w=36, seed=0):
    rng = np.random.default_rng(seed)
    cycle = [0.001, 0.008] if exposures == 2 else [0.001, 0.004, 0.016]
    frames = rng.random((n_frames, h, w, 3)).astype(np.float32)
    return frames, [cycle[i % exposures] for i in range(n_frames)]


def windows(frames, expos, k):
    """Windows as preprocess makes them: same-exposure padding at the ends, identity warps."""
    n, c = len(frames), len(set(expos))
    for i in range(n):
        seqs = []
        for p in range(i - k, i + k + 1):
            while p < 0:
                p += c
            while p >= n:
                p -= c
            seqs.append(p)
        yield i, np.stack([frames[s] for s in seqs]), [expos[s] for s in seqs], seqs


@pytest.mark.parametrize("exposures,k", [(2, 2), (3, 3)])
@pytest.mark.parametrize("method", ["net", "coarse"])
def test_streaming_equals_windowed_frame_for_frame(weights, exposures, k, method):
    frames, expos = stream_of(9, exposures)
    windowed = NetReconstructor(method, weights, device="cpu", stream=False)
    streaming = NetReconstructor(method, weights, device="cpu")
    for i, win, ex, seqs in windows(frames, expos, k):
        a = windowed.reconstruct(win, ex, k)
        b = streaming.reconstruct_stream(win, ex, k, seqs, [IDENTITY] * len(seqs))
        assert a.shape == (20, 36, 3) and np.isfinite(a).all()  # odd size: padded to 16s, cropped back
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * a.max(), err_msg=f"frame {i}")
    # once per frame, plus the padded edge windows (windowed inference runs 3 per frame)
    assert streaming.coarse_runs <= len(frames) + 2 * k
    if method == "net":  # RefineNet's feature extractor likewise
        assert 0 < streaming.feature_runs <= len(frames) + 2 * k
    assert windowed.coarse_runs == 0  # the windowed path does not touch the cache


@pytest.mark.parametrize("method", ["net", "coarse"])
def test_streaming_never_resamples_the_centre_with_a_moving_camera(weights, method):
    """With non-identity warps the cached coarse HDR of the centre would need a bilinear
    resampling, which blurs the output where the mask keeps it; it is recomputed instead.
    CoarseNet alone then equals windowed inference exactly; the full network differs from it
    only through its (resampled) neighbours."""
    frames, expos = stream_of(9, 2, seed=3)
    shift = [1.0, 0.0, 0.7, 0.0, 1.0, -0.4]  # every frame moved by a sub-pixel shift
    windowed = NetReconstructor(method, weights, device="cpu", stream=False)
    streaming = NetReconstructor(method, weights, device="cpu")
    for i, win, ex, seqs in windows(frames, expos, 2):
        warps = [IDENTITY if j == 2 else shift for j in range(len(seqs))]
        a = windowed.reconstruct(win, ex, 2)
        b = streaming.reconstruct_stream(win, ex, 2, seqs, warps)
        if method == "coarse":
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * a.max(), err_msg=f"frame {i}")
        else:
            assert np.isfinite(b).all() and b.shape == a.shape


def test_output_is_in_units_of_the_given_exposures(weights):
    frames, expos = stream_of(5, 2, seed=1)
    rec = NetReconstructor("net", weights, device="cpu", denoise=False)  # the network itself
    h1 = rec.reconstruct(frames, expos, 2)
    h2 = rec.reconstruct(frames, [t * 2 for t in expos], 2)  # twice the exposure: half the radiance
    np.testing.assert_allclose(h2, h1 / 2, rtol=1e-4)


def test_missing_weights_and_bad_windows_are_clear_errors(weights, tmp_path):
    frames, expos = stream_of(5, 2)
    with pytest.raises(FileNotFoundError, match="no trained weights for 2 exposures"):
        NetReconstructor("net", {2: tmp_path / "none.safetensors", 3: weights[3]}).reconstruct(frames, expos, 2)
    with pytest.raises(FileNotFoundError, match="no trained network weights"):
        NetReconstructor("net", {2: tmp_path / "a.safetensors", 3: tmp_path / "b.safetensors"})
    rec = NetReconstructor("net", weights, device="cpu")
    with pytest.raises(ValueError, match="windows of 5"):
        rec.reconstruct(frames[:4], expos[:4], 2)
    with pytest.raises(ValueError, match="centre"):
        rec.reconstruct(frames, expos, 1)


# -- the shipped weights -------------------------------------------------------------------


@pytest.mark.parametrize("exposures", [2, 3])
def test_shipped_weights_load_and_stream_like_windowed(exposures):
    """The weights in the repo load by default and give finite HDR; streaming (DIS flows and
    coarse results reused) equals windowed inference with them."""
    from infer.netrecon import default_weights

    assert default_weights(exposures).is_file(), "trained weights must ship in infer/weights/"
    frames, expos = stream_of(2 * exposures + 3, exposures, h=40, w=56, seed=exposures)
    windowed = NetReconstructor("net", device="cpu", stream=False)
    streaming = NetReconstructor("net", device="cpu")
    assert windowed.model(exposures).meta["stage"] in ("refine", "e2e", "gate", "denoise")
    k = exposures
    for i, win, ex, seqs in windows(frames, expos, k):
        a = windowed.reconstruct(win, ex, k)
        b = streaming.reconstruct_stream(win, ex, k, seqs, [IDENTITY] * len(seqs))
        assert a.shape == (40, 56, 3) and np.isfinite(a).all() and (a >= 0).all()
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * a.max(), err_msg=f"frame {i}")


@pytest.mark.parametrize("exposures", [2, 3])
def test_shipped_network_beats_the_reference_frame_on_simulated_motion(exposures):
    """Simulated camera (shake, a moving object, sensor noise) -> preprocess -> the shipped
    network: it must beat the reference frame alone by >= 3 dB PSNR-μ, as classical does."""
    from capture.sim import SimCamera, SimConfig
    from hdrstream.quality import psnr_mu
    from infer.stage import InferStage
    from preprocess.stage import PreprocessConfig, Preprocessor

    cam = SimCamera(SimConfig(width=160, height=96, frames=6, exposures=exposures, seed=3))
    pre, infer = Preprocessor(PreprocessConfig()), InferStage("net", compare=["reference"])
    scores: dict[str, list[float]] = {"net": [], "reference": []}
    for w in [w for f in cam.frames() for w in pre.process(f)] + pre.finish():
        for hdr in infer.process(w):
            scores[hdr.meta["method"]].append(psnr_mu(hdr.data, cam.ground_truth(w.seq), hdr.meta["t_min"]))
    net, reference = np.mean(scores["net"]), np.mean(scores["reference"])
    assert len(scores["net"]) == 6 and net >= reference + 3.0, f"net {net:.2f} dB vs reference {reference:.2f} dB"


def test_the_network_ships_for_both_cycles_and_is_found(monkeypatch):
    from infer import netrecon
    from infer.reconstructor import network_shipped

    assert network_shipped()
    monkeypatch.setattr(netrecon, "WEIGHTS_DIR", netrecon.WEIGHTS_DIR / "nowhere")
    assert not network_shipped()


def test_the_default_method_offline_live_and_without_weights(monkeypatch):
    from infer import netrecon
    from infer.reconstructor import default_method

    assert default_method(live=False) == ("net", "default offline")
    method, why = default_method(live=True, device="cpu")
    assert method == "classical" and "--method net" in why
    assert default_method(live=True, device="cuda:1") == ("net", "default live on CUDA")
    monkeypatch.setattr(netrecon, "WEIGHTS_DIR", netrecon.WEIGHTS_DIR / "nowhere")
    method, why = default_method(live=False)
    assert method == "classical" and "missing" in why


@pytest.mark.parametrize("method", ["net", "net-refine"])
def test_channels_last_gives_the_same_hdr_as_contiguous_weights(weights, method):
    """The channels-last model (the default, faster on oneDNN and tensor cores) computes the
    same sums in another order: equal to float noise, streaming and windowed, whether the
    network is the tiny test one or the shipped gated one."""
    frames, expos = stream_of(7, 2, h=48, w=80, seed=6)
    for w in (weights, None):  # None: the shipped weights
        plain = NetReconstructor(method, w, device="cpu", channels_last=False)
        fast = NetReconstructor(method, w, device="cpu")
        for i, win, ex, seqs in windows(frames, expos, 2):
            a = plain.reconstruct_stream(win, ex, 2, seqs, [IDENTITY] * len(seqs))
            b = fast.reconstruct_stream(win, ex, 2, seqs, [IDENTITY] * len(seqs))
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * a.max(), err_msg=f"frame {i}")
        conv = next(m for m in fast.model(2).modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        conv = next(m for m in plain.model(2).modules() if isinstance(m, torch.nn.Conv2d))
        assert not conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_stays_close_to_float32(weights):
    """precision="bf16" (autocast; CUDA's default, runnable on the CPU too) returns float32
    HDR within bf16's rounding of the float32 result, streaming as windowed."""
    from hdrstream.quality import mu_law

    frames, expos = stream_of(7, 2, seed=4)
    full = NetReconstructor("net", weights, device="cpu", precision="fp32")
    half = NetReconstructor("net", weights, device="cpu", precision="bf16")
    for i, win, ex, seqs in windows(frames, expos, 2):
        a = full.reconstruct_stream(win, ex, 2, seqs, [IDENTITY] * len(seqs))
        b = half.reconstruct_stream(win, ex, 2, seqs, [IDENTITY] * len(seqs))
        assert b.dtype == np.float32 and np.isfinite(b).all()
        ta, tb = mu_law(np.clip(a * 0.001, 0, 1)), mu_law(np.clip(b * 0.001, 0, 1))
        assert np.abs(ta - tb).mean() < 5e-3, f"frame {i}"
        assert np.abs(ta - tb).max() > 0  # autocast really ran in bf16


def test_precision_is_checked():
    from infer.netrecon import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", torch.device("cpu"))


@pytest.mark.parametrize("method", ["net", "coarse"])
def test_tiled_inference_matches_whole_frames_and_streams_like_windowed(weights, method):
    """Tiles with a margin give the whole-frame result up to seams the margin cannot hide
    (the network's reach is wider than it); streaming tiles exactly as windowed does."""
    frames, expos = stream_of(7, 2, h=80, w=112, seed=5)
    whole = NetReconstructor(method, weights, device="cpu", stream=False, tile=0)
    tiled = NetReconstructor(method, weights, device="cpu", stream=False, tile=32, tile_margin=32)
    stream = NetReconstructor(method, weights, device="cpu", tile=32, tile_margin=32)
    for i, win, ex, seqs in windows(frames, expos, 2):
        a, b = whole.reconstruct(win, ex, 2), tiled.reconstruct(win, ex, 2)
        c = stream.reconstruct_stream(win, ex, 2, seqs, [IDENTITY] * len(seqs))
        assert b.shape == a.shape and np.isfinite(b).all()
        rel = np.abs(b - a) / (np.abs(a) + 1e-3 * a.max())
        assert np.median(rel) < 1e-3 and rel.mean() < 5e-3, f"frame {i}: {np.median(rel)}, {rel.mean()}"
        np.testing.assert_allclose(c, b, rtol=1e-5, atol=1e-6 * b.max(), err_msg=f"frame {i}")
    assert whole.tiles_run == 0 and tiled.tiles_run > 0 and stream.tiles_run > 0


def test_large_frames_tile_by_default_and_tile_sizes_are_checked(weights, monkeypatch):
    import infer.netrecon as netrecon

    monkeypatch.setattr(netrecon, "AUTO_TILE_PIXELS", 64 * 64)
    monkeypatch.setattr(netrecon, "AUTO_TILE", 32)
    frames, expos = stream_of(5, 2, h=80, w=112)
    auto = NetReconstructor("net", weights, device="cpu", stream=False)
    assert np.isfinite(auto.reconstruct(frames, expos, 2)).all() and auto.tiles_run > 0
    small = NetReconstructor("net", weights, device="cpu", stream=False)
    small.reconstruct(frames[:, :48, :48], expos, 2)
    assert small.tiles_run == 0
    for bad in (-16, 24):
        with pytest.raises(ValueError, match="multiple of 16"):
            NetReconstructor("net", weights, device="cpu", tile=bad)


def test_learned_noise_filter_runs_in_tiles(tmp_path):
    """The noise filter is the network's widest full-resolution pass: it must stay within
    the tile size's memory bound (it needed 6.1 GiB whole at 4096x2168)."""
    torch.manual_seed(0)
    net = HDRNet(NetConfig(exposures=2, width=0.125, flow="dis", classical_gate=True,
                           learned_denoise=True, denoise_width=0.25)).eval()
    with torch.no_grad():
        net.noise.last.weight.normal_(0, 0.1)  # a filter that changes the output
    path = save_weights(net, tmp_path / "noise.safetensors")
    frames, expos = stream_of(5, 2, h=80, w=112, seed=3)
    frames = frames ** 2
    seen, out = [], {}
    for tile in (0, 32):
        rec = NetReconstructor("net", {2: path}, device="cpu", stream=False, tile=tile, tile_margin=32)
        model = rec.model(2)
        hook = model.noise.register_forward_pre_hook(lambda _m, args: seen.append((tile, args[0].shape[-2:])))
        out[tile] = rec.reconstruct(frames, expos, 2)
        hook.remove()
    assert [s for t, s in seen if t == 0] == [(80, 112)]
    tiled = [s for t, s in seen if t == 32]
    assert len(tiled) == 12 and max(max(s) for s in tiled) <= 32 + 2 * 32
    rel = np.abs(out[32] - out[0]) / (np.abs(out[0]) + 1e-3 * out[0].max())
    assert np.median(rel) < 1e-3 and rel.mean() < 5e-3


@pytest.mark.skipif(not all(default_weights(n).is_file() for n in (2, 3)), reason="no shipped weights")
def test_shipped_network_is_seamless_in_tiles():
    """With the shipped weights 32-pixel margins already hide the seams of 32-pixel tiles
    (the 1024/64 default is far more generous)."""
    frames, expos = stream_of(5, 2, h=80, w=112, seed=5)
    a = NetReconstructor("net", device="cpu", stream=False, tile=0).reconstruct(frames, expos, 2)
    b = NetReconstructor("net", device="cpu", stream=False, tile=32, tile_margin=32).reconstruct(frames, expos, 2)
    assert np.abs(b - a).max() <= 1e-3 * np.abs(a).max()


# -- the classical gate --------------------------------------------------------------------


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A tiny DIS-flow network with a gate, and the same gate forced fully open or shut."""
    torch.manual_seed(0)
    base = HDRNet(NetConfig(exposures=2, width=0.125, flow="dis", classical_gate=True)).eval()
    paths = {}
    for name, bias in (("half", 0.0), ("classical", 30.0), ("net", -30.0)):
        with torch.no_grad():
            base.gate.conv3.weight.zero_()
            base.gate.conv3.bias.fill_(bias)
        paths[name] = save_weights(base, tmp_path_factory.mktemp("g") / f"{name}.safetensors")
    plain = HDRNet(NetConfig(exposures=2, width=0.125, flow="dis")).eval()
    plain.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("gate.")})
    paths["plain"] = save_weights(plain, tmp_path_factory.mktemp("g") / "plain.safetensors")
    return paths


def test_gate_chooses_between_the_network_and_the_classical_merge(gated):
    from infer.classical import ClassicalConfig, ClassicalReconstructor

    frames, expos = stream_of(5, 2, h=40, w=52)
    frames = frames ** 2  # darker: some of it well exposed in both
    out = {}
    for name, path in gated.items():
        rec = NetReconstructor("net", device="cpu", tile=0, denoise=False)  # the gate itself
        rec.weights = {2: path}
        out[name] = rec.reconstruct(frames, expos, 2)
    classical = ClassicalReconstructor(ClassicalConfig(denoise=0.0)).reconstruct(frames, expos, 2)
    np.testing.assert_allclose(out["classical"], classical, rtol=1e-5, atol=1e-6 * classical.max())
    np.testing.assert_allclose(out["net"], out["plain"], rtol=1e-5, atol=1e-6 * out["plain"].max())
    np.testing.assert_allclose(out["half"], 0.5 * (classical + out["plain"]), rtol=1e-4, atol=1e-5 * classical.max())


def test_gate_is_applied_alike_windowed_streamed_and_in_strips(gated, monkeypatch):
    import infer.netrecon as netrecon

    frames, expos = stream_of(9, 2, h=40, w=52)
    windowed = NetReconstructor("net", device="cpu", tile=0)
    streaming = NetReconstructor("net", device="cpu", tile=0)
    for rec in (windowed, streaming):
        rec.weights = {2: gated["half"]}
    monkeypatch.setattr(netrecon, "GATE_ROWS", 16)  # three strips of a 40-row frame
    for i, win, ex, seqs in windows(frames, expos, 2):
        a = windowed.reconstruct(win, ex, 2)
        b = streaming.reconstruct_stream(win, ex, 2, seqs, [IDENTITY] * len(seqs))
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * a.max(), err_msg=f"frame {i}")
    monkeypatch.setattr(netrecon, "GATE_ROWS", 256)
    whole = NetReconstructor("net", device="cpu", tile=0)
    whole.weights = {2: gated["half"]}
    np.testing.assert_allclose(whole.reconstruct(win, ex, 2), a, rtol=1e-5, atol=1e-6 * a.max())


def test_refine_off_makes_net_the_gated_coarse_hdr_and_net_refine_keeps_the_paper(gated, tmp_path):
    """NetConfig.refine = False: ``net`` stops at CoarseNet (then the gate); ``net-refine`` still
    runs RefineNet from the same file; ``coarse`` stays the ungated ablation."""
    from infer.net.model import load_weights

    model = load_weights(gated["half"])
    model.cfg = NetConfig(**{**model.cfg.__dict__, "refine": False})
    no_refine = save_weights(model, tmp_path / "no-refine.safetensors")
    frames, expos = stream_of(9, 2, h=40, w=52)

    def run(name, path):
        rec = NetReconstructor(name, device="cpu", tile=0, denoise=False)  # the network itself
        rec.weights = {2: path}
        return rec, [rec.reconstruct_stream(win, ex, 2, seqs, [IDENTITY] * len(seqs))
                     for _, win, ex, seqs in windows(frames, expos, 2)]

    rec_net, net = run("net", no_refine)
    _, full_from_same = run("net-refine", no_refine)
    _, full = run("net", gated["half"])
    _, coarse = run("coarse", gated["half"])
    assert rec_net.feature_runs == 0  # RefineNet never ran
    for a, b in zip(full_from_same, full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * b.max())
    # the gate blends CoarseNet's HDR with the classical merge (half open: their mean)
    from infer.classical import ClassicalConfig, ClassicalReconstructor

    for (_, win, ex, _), n, c in zip(windows(frames, expos, 2), net, coarse):
        merged = ClassicalReconstructor(ClassicalConfig(denoise=0.0)).reconstruct(win, ex, 2)
        np.testing.assert_allclose(n, 0.5 * (merged + c), rtol=1e-4, atol=1e-5 * merged.max())


def test_a_five_frame_coarsenet_runs_as_net_and_refuses_refinenet(tmp_path):
    """Weights whose CoarseNet sees the whole five-frame window of two exposures: ``net`` and
    ``coarse`` run it (streamed as windowed), ``net-refine`` says why it cannot."""
    torch.manual_seed(0)
    cfg = NetConfig(exposures=2, width=0.125, flow="dis", classical_gate=True, refine=False, coarse_window=5)
    path = save_weights(HDRNet(cfg).eval(), tmp_path / "w5.safetensors")
    frames, expos = stream_of(9, 2, h=40, w=52)
    for name in ("net", "coarse"):
        windowed, streaming = (NetReconstructor(name, device="cpu", tile=0) for _ in range(2))
        for rec in (windowed, streaming):
            rec.weights = {2: path}
        for i, win, ex, seqs in windows(frames, expos, 2):
            a = windowed.reconstruct(win, ex, 2)
            b = streaming.reconstruct_stream(win, ex, 2, seqs, [IDENTITY] * len(seqs))
            assert a.shape == win.shape[1:] and np.isfinite(a).all()
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * a.max(), err_msg=f"{name}, frame {i}")
    rec = NetReconstructor("net-refine", device="cpu", tile=0)
    rec.weights = {2: path}
    with pytest.raises(ValueError, match="RefineNet cannot run"):
        rec.reconstruct(win, ex, 2)
