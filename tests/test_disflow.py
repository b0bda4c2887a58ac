"""The DIS-flow CoarseNet variant (design §4): classical flows in, no flow network."""
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from infer.classical import ClassicalReconstructor
from infer.net.flow import flow_warp
from infer.net.model import HDRNet, NetConfig, count_parameters, load_weights, save_weights
from infer.netrecon import NetReconstructor
from training.data import SampleMaker, collate
from training.loop import Trainer

from test_netrecon import IDENTITY, stream_of, windows
from test_training import CROP, small_data, tiny_cfg


def textured(h=96, w=128, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2.0)
    return np.clip((img - img.min()) / (img.max() - img.min()) * 0.8 + 0.05, 0, 1)


def test_classical_flows_follow_flow_warps_convention():
    """ref(p) = nbr(p + f(p)): warping the neighbour by the flow gives back the reference,
    across an exposure change (the flow is computed on exposure-matched copies)."""
    base = textured()
    shifted = np.roll(base, (2, -3), axis=(0, 1))  # nbr(p) = base(p - (dy, dx)) -> f = (-3, 2)
    dark = np.clip(shifted ** 2.2 / 8.0, 0, 1) ** (1 / 2.2)  # the same scene exposed 8x shorter
    frames = np.stack([dark, base, dark])
    f = ClassicalReconstructor().flows(frames, [1.0, 8.0, 1.0], 1)
    assert f.shape == (2, 96, 128, 2)
    inner = (slice(10, -10), slice(10, -10))
    np.testing.assert_allclose(np.median(f[0][inner].reshape(-1, 2), axis=0), [-3.0, 2.0], atol=0.25)
    warped = flow_warp(torch.from_numpy(shifted.transpose(2, 0, 1))[None],
                       torch.from_numpy(f[0].transpose(2, 0, 1))[None])[0].numpy().transpose(1, 2, 0)
    assert np.abs(warped - base)[inner].mean() < 0.1 * np.abs(shifted - base)[inner].mean()


@pytest.mark.parametrize("exposures", [2, 3])
def test_dis_variant_has_no_flow_network_and_needs_flows(exposures):
    learned = HDRNet(NetConfig(exposures=exposures, width=0.125))
    dis = HDRNet(NetConfig(exposures=exposures, width=0.125, flow="dis"))
    assert dis.coarse.flow is None
    assert count_parameters(dis) == count_parameters(learned) - count_parameters(learned.coarse.flow)
    n, c = dis.cfg.frames, dis.cfg.coarse_frames
    ldr, expo = torch.rand(1, n, 3, 32, 32), torch.tensor([[1.0, 8.0, 1.0, 8.0, 1.0, 8.0, 1.0][:n]])
    with pytest.raises(ValueError, match="pass flows"):
        dis(ldr, expo)
    out = dis(ldr, expo, torch.zeros(1, 3, c - 1, 2, 32, 32))
    assert out["hdr"].shape == (1, 3, 32, 32) and torch.isfinite(out["hdr"]).all()
    with pytest.raises(ValueError, match="flows"):
        dis(ldr, expo, torch.zeros(1, 3, c, 2, 32, 32))
    with pytest.raises(ValueError, match="flow must be"):
        NetConfig(flow="raft")


def test_config_json_without_flow_means_learned():
    assert NetConfig.from_json('{"exposures": 2, "width": 0.5}').flow == "learned"


@pytest.mark.parametrize("exposures,k", [(2, 2), (3, 3)])
def test_dis_streaming_equals_windowed(tmp_path, exposures, k):
    torch.manual_seed(0)
    paths = {}
    for n in (2, 3):
        paths[n] = save_weights(HDRNet(NetConfig(exposures=n, width=0.125, flow="dis")).eval(),
                                tmp_path / f"dis-{n}.safetensors")
    assert load_weights(paths[exposures]).cfg.flow == "dis"
    frames, expos = stream_of(7, exposures, h=40, w=52)
    windowed = NetReconstructor("net", paths, device="cpu", stream=False)
    streaming = NetReconstructor("net", paths, device="cpu")
    for i, win, ex, seqs in windows(frames, expos, k):
        a = windowed.reconstruct(win, ex, k)
        b = streaming.reconstruct_stream(win, ex, k, seqs, [IDENTITY] * len(seqs))
        assert a.shape == (40, 52, 3) and np.isfinite(a).all()
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * a.max(), err_msg=f"frame {i}")


def test_training_samples_carry_the_flows_inference_computes():
    maker = SampleMaker(small_data(), 2, seed=4, flows=True)
    s = maker(0)
    assert s["flows"].shape == (3, 2, 2, CROP, CROP) and torch.isfinite(s["flows"]).all()
    L = s["ldr"].permute(0, 2, 3, 1).numpy()
    expo = [float(t) for t in s["expo"]]
    # what inference computes: the merge's flows of the CoarseNet windows centred on 1, 2, 3
    again = np.stack([ClassicalReconstructor().flows(np.ascontiguousarray(L[j - 1:j + 2]), expo[j - 1:j + 2], 1)
                      for j in (1, 2, 3)]).transpose(0, 1, 4, 2, 3)
    np.testing.assert_allclose(s["flows"].numpy(), again, atol=1e-5)
    assert "flows" not in SampleMaker(small_data(), 2, seed=4)(0)


@pytest.mark.parametrize("stage", ["coarse", "e2e"])
def test_dis_variant_trains(tmp_path, stage):
    trainer = Trainer(replace(tiny_cfg(tmp_path, stage=stage, lr=2e-3, val_size=2), flow="dis"))
    assert trainer.model.coarse.flow is None
    maker = SampleMaker(small_data(), 2, seed=11, flows=True)
    batch = collate([maker(i) for i in range(2)])
    losses = [trainer.train_step(batch)[0] for _ in range(8)]
    assert all(np.isfinite(losses)) and min(losses[-3:]) < losses[0]
    assert np.isfinite(trainer.validate()["metric"])
