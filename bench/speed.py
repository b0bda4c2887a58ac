"""ms/frame and peak memory of the coarse-to-fine network at camera resolutions.

Windowed: every window runs CoarseNet three times (frames i-1, i, i+1) and RefineNet
once, as the paper describes. Streaming: each frame's coarse HDR is computed once and
reused by the overlapping windows, so a frame costs one CoarseNet + one RefineNet pass.
On CUDA it also compares fp32 with bf16/fp16 autocast.

    .venv/bin/python bench/speed.py [--sizes 1280x720,1536x813,1920x1080] [--width 1.0] [--exposures 2]
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from infer.net.model import HDRNet, NetConfig


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

    def windowed():
        with torch.inference_mode(), autocast:
            net(ldr, expo)

    def streaming():  # one CoarseNet pass for the new frame + RefineNet on cached neighbours
        with torch.inference_mode(), autocast:
            s = mid - c // 2
            centre = net.coarse_forward(ldr[:, s:s + c], expo[:, s:s + c])
            coarse3 = torch.stack([centre, centre, centre], dim=1)
            net.refine_forward(coarse3, ldr[:, mid], expo[:, mid - 1:mid + 2])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_win = time_it(windowed, device, repeat)
    t_str = time_it(streaming, device, repeat)
    return {"windowed_ms": 1e3 * t_win, "streaming_ms": 1e3 * t_str, "peak_mb": peak_mb(device), "padded": f"{W}x{H}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1280x720,1536x813,1920x1080")
    ap.add_argument("--width", type=float, default=1.0, help="network channel multiplier")
    ap.add_argument("--exposures", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    net = HDRNet(NetConfig(exposures=a.exposures, width=a.width)).to(device).eval()
    dtypes: list[torch.dtype | None] = [None]
    if device.type == "cuda":
        dtypes += [torch.bfloat16, torch.float16]
    print(f"network: {a.exposures} exposures, width {a.width}, device {device} "
          f"({torch.get_num_threads()} CPU threads)" if device.type == "cpu" else f"device {torch.cuda.get_device_name()}")
    for size in a.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        for dt in dtypes:
            r = bench_size(net, h, w, device, dt, a.repeat)
            name = "fp32" if dt is None else str(dt).replace("torch.", "")
            print(f"  {w}x{h} (padded {r['padded']}) {name:9s} windowed {r['windowed_ms']:8.1f} ms/frame   "
                  f"streaming {r['streaming_ms']:8.1f} ms/frame   peak {r['peak_mb']:7.0f} MiB")


if __name__ == "__main__":
    main()
