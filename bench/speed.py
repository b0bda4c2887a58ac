"""ms/frame and peak memory of the coarse-to-fine network at camera resolutions.

Windowed: every window runs CoarseNet three times (frames i-1, i, i+1) and RefineNet
once, as the paper describes. Streaming: each frame's coarse HDR is computed once and
reused by the overlapping windows, so a frame costs one CoarseNet + one RefineNet pass;
with cached features (a static camera, or alignment off) RefineNet's feature extractor
also runs on the new frame only. On CUDA it also compares fp32 with bf16/fp16 autocast,
each with and without channels-last. With ``--weights`` it times a trained network as
shipped; for the DIS-flow variant the exposure-matched DIS flows (OpenCV, on the CPU) are
part of every frame's time. On the CPU, fp32 with and without channels-last. ``--compile``
times the network's stages under ``torch.compile`` (in the precision and layout the
reconstructor uses: fp32 channels-last on a CPU, bf16 channels-last on CUDA); the
first call of each compiles and is not counted.

    .venv/bin/python bench/speed.py [--sizes 1280x720,1536x813,1920x1080] [--width 1.0] [--exposures 2]
    .venv/bin/python bench/speed.py --weights infer/weights/hdrnet-2exp.safetensors
    .venv/bin/python bench/speed.py --weights infer/weights/hdrnet-2exp.safetensors --sizes 512x288 --compile
    .venv/bin/python bench/speed.py --methods net,net-refine --sizes 1536x813 --exposures 2

``--methods`` times what ``hdrstream`` runs instead: the reconstructor streaming a simulated
sequence through preprocess, the shipped weights (or ``--weights``, whose exposures then
win), everything in a frame's time (DIS flows, the classical gate's merge, the network, the
noise filter) after a warm-up frame.
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

import numpy as np

from hdrstream.memory import keep_freed_memory
from infer.net.model import HDRNet, NetConfig, load_weights, read_metadata
from infer.net.refine import RefineFeatures
from infer.window_flows import WindowFlows


def pad_to(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole process, KiB -> MiB


def time_it(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up (allocations, cudnn autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def bench_size(net: HDRNet, h: int, w: int, device: torch.device, dtype: torch.dtype | None, repeat: int) -> dict:
    cfg = net.cfg
    H, W = pad_to(h, net.multiple), pad_to(w, net.multiple)
    ldr = torch.rand(1, cfg.frames, 3, H, W, device=device)
    ratios = [1.0, 8.0] if cfg.exposures == 2 else [1.0, 4.0, 16.0]
    expo = torch.tensor([[ratios[i % len(ratios)] for i in range(cfg.frames)]], device=device)
    c = cfg.coarse_frames
    mid = cfg.frames // 2
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
    frames = ldr[0].permute(0, 2, 3, 1).cpu().numpy() if cfg.flow == "dis" else None
    times = expo[0].tolist()
    dis = WindowFlows() if frames is not None else None

    def flows_of(j: int) -> torch.Tensor | None:  # the DIS variant's flows, computed per call as inference does
        return None if dis is None else torch.from_numpy(dis(frames, times, j, c))[None].to(device)

    def windowed():
        flows = None if dis is None else torch.stack([flows_of(j) for j in (mid - 1, mid, mid + 1)], dim=1)
        with torch.inference_mode(), autocast:
            net(ldr, expo, flows)

    s, expo3 = mid - c // 2, expo[:, mid - 1:mid + 2]

    def new_coarse3() -> torch.Tensor:  # one CoarseNet pass for the new frame, its neighbours cached
        centre = net.coarse_forward(ldr[:, s:s + c], expo[:, s:s + c], flows_of(mid))
        return torch.stack([centre, centre, centre], dim=1)

    def streaming():  # ... + RefineNet on the three
        with torch.inference_mode(), autocast:
            net.refine_forward(new_coarse3(), ldr[:, mid], expo3)

    with torch.inference_mode(), autocast:  # features of frames i-1, i, kept from earlier windows
        kept = net.features(new_coarse3()[:, :2], expo[:, mid - 1:mid + 1], expo3)

    def streaming_features():  # ... and RefineNet's feature extractor only on the new frame
        with torch.inference_mode(), autocast:
            coarse3 = new_coarse3()
            new = net.features(coarse3[:, 2:3], expo[:, mid + 1:mid + 2], expo3)
            net.refine_forward(coarse3, ldr[:, mid], expo3, RefineFeatures.stack([kept, new]))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_win = time_it(windowed, device, repeat)
    t_str = time_it(streaming, device, repeat)
    t_feat = time_it(streaming_features, device, repeat)
    return {"windowed_ms": 1e3 * t_win, "streaming_ms": 1e3 * t_str, "features_ms": 1e3 * t_feat,
            "peak_mb": peak_mb(device), "padded": f"{W}x{H}"}


def bench_methods(methods: list[str], w: int, h: int, exposures: int, frames: int, device: str,
                  weights: str | None = None) -> None:
    """``weights``: the network methods' file instead of the shipped one (its exposures win)."""
    from capture.sim import SimCamera, SimConfig
    from infer.stage import InferStage
    from preprocess.stage import PreprocessConfig, Preprocessor

    cam = SimCamera(SimConfig(width=w, height=h + h % 2, frames=frames, exposures=exposures, pixel_format="RGB8"))
    pre = Preprocessor(PreprocessConfig())
    windows = [x for f in cam.frames() for x in pre.process(f)] + list(pre.finish())
    for m in methods:
        stage = InferStage(method=m, device=device)
        if weights:
            for rec in stage.methods:
                if hasattr(rec, "weights"):  # the network methods
                    rec.weights = {exposures: Path(weights)}
        times = []
        for win in windows:
            t0 = time.perf_counter()
            stage.process(win)
            times.append(time.perf_counter() - t0)
        t = times[1:] or times
        print(f"  {w}x{h} {m:11s} {1e3 * float(np.mean(t)):8.1f} ms/frame (p50 {1e3 * float(np.median(t)):8.1f}, "
              f"{len(t)} frames after a warm-up)   peak RSS {peak_mb(torch.device('cpu')):7.0f} MiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1280x720,1536x813,1920x1080")
    ap.add_argument("--width", type=float, default=1.0, help="network channel multiplier")
    ap.add_argument("--exposures", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights", help="a trained network (.safetensors); its config overrides --width/--exposures")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network's stages")
    ap.add_argument("--methods", default="", help="time these reconstructors end to end instead (e.g. net,net-refine)")
    ap.add_argument("--frames", type=int, default=6, help="with --methods: frames of the simulated sequence")
    a = ap.parse_args()
    keep_freed_memory()  # as the hdrstream command does
    if a.methods:
        if a.weights:
            a.exposures = read_metadata(a.weights)[0].exposures
        for size in a.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            bench_methods(a.methods.split(","), w, h, a.exposures, a.frames, a.device, a.weights)
        return
    device = torch.device(a.device)
    if a.weights:
        net = load_weights(a.weights, device)
        a.width, a.exposures = net.cfg.width, net.cfg.exposures
    else:
        net = HDRNet(NetConfig(exposures=a.exposures, width=a.width)).to(device).eval()
    # (autocast dtype, channels-last): on the CPU fp32 both ways (NetReconstructor runs channels-last)
    variants: list[tuple[torch.dtype | None, bool]] = [(None, False), (None, True)]
    if device.type == "cuda":  # what NetReconstructor does on CUDA (bf16, channels-last) and the rest
        variants = [(dt, cl) for dt in (None, torch.bfloat16, torch.float16) for cl in (False, True)]
    if a.compile:  # instance attributes: HDRNet.forward calls these too
        for stage in ("coarse_forward", "refine_forward", "features"):
            setattr(net, stage, torch.compile(getattr(net, stage)))
        variants = variants[-3:-2] if device.type == "cuda" else variants[1:]  # as the reconstructor runs
    print(f"network: {a.exposures} exposures, width {a.width}, flow {net.cfg.flow}, device {device} "
          f"({torch.get_num_threads()} CPU threads)" if device.type == "cpu" else f"device {torch.cuda.get_device_name()}")
    for size in a.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        for dt, cl in variants:
            net.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            r = bench_size(net, h, w, device, dt, a.repeat)
            name = ("fp32" if dt is None else str(dt).replace("torch.", "")) + ("+cl" if cl else "")
            name += "+compile" if a.compile else ""
            print(f"  {w}x{h} (padded {r['padded']}) {name:17s} windowed {r['windowed_ms']:8.1f} ms/frame   "
                  f"streaming {r['streaming_ms']:8.1f}   + cached features {r['features_ms']:8.1f} ms/frame   "
                  f"peak {r['peak_mb']:7.0f} MiB")


if __name__ == "__main__":
    main()
