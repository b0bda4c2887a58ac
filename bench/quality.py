"""PSNR-μ, PSNR-L and flicker of each reconstructor on the project's validation sequences.

Validation sequences are simulated scenes with exact ground truth from seeds kept apart
for validation (1000+); they are never used for tuning thresholds in tests or training.

    .venv/bin/python bench/quality.py [--methods reference,classical,coarse,net] [--seeds 4] [--width 512 --height 288]
    .venv/bin/python bench/quality.py --exposures 2 --weights out/train/refine2/best.safetensors

By default every method that can run: reference, classical, and CoarseNet alone and the full
network where shipped weights exist (infer/weights/).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from capture.sim import SimCamera, SimConfig
from hdrstream import quality
from infer.netrecon import default_weights
from infer.stage import InferStage
from preprocess.stage import PreprocessConfig, Preprocessor

VALIDATION_SEED0 = 1000


def evaluate(cfg: SimConfig, methods: list[str], weights: str = "") -> dict[str, dict[str, float]]:
    cam = SimCamera(cfg)
    pre = Preprocessor(PreprocessConfig())
    infer = InferStage(method=methods[0], compare=methods[1:])
    if weights:  # candidate weights instead of the shipped ones
        for rec in infer.methods:
            if rec.name in ("net", "coarse"):
                rec.weights = {cfg.exposures: Path(weights)}
    windows = [w for f in cam.frames() for w in pre.process(f)] + list(pre.finish())
    preds: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    gts, seconds = [], {m: 0.0 for m in methods}
    t_min = min(cam.exposure_cycle)
    for w in windows:
        for hdr in infer.process(w):
            preds[hdr.meta["method"]].append(np.array(hdr.data, np.float32))
            seconds[hdr.meta["method"]] += hdr.meta["timing"]["infer"]
        gts.append(cam.ground_truth(w.seq))
    out = {}
    for m in methods:
        out[m] = {
            "psnr_mu": float(np.mean([quality.psnr_mu(p, g, t_min) for p, g in zip(preds[m], gts)])),
            "psnr_l": float(np.mean([quality.psnr_l(p, g, t_min) for p, g in zip(preds[m], gts)])),
            "flicker": float(np.mean(quality.flicker(preds[m], gts, t_min))),
            "ms": 1e3 * seconds[m] / len(gts),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="", help="comma-separated; default: every method that can run")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--pixel-format", default="BayerRG8")
    ap.add_argument("--exposures", default="2,3", help="which cycles: 2, 3 or 2,3")
    ap.add_argument("--weights", default="", help="network weights to score instead of the shipped ones "
                    "(one file: give --exposures to match)")
    a = ap.parse_args()
    if a.weights and "," in a.exposures:
        ap.error("--weights scores one network: give --exposures 2 or 3")
    for n_exp in (int(e) for e in a.exposures.split(",")):
        methods = a.methods.split(",") if a.methods else (
            ["reference", "classical"] + (["coarse", "net"] if default_weights(n_exp).is_file() else []))
        rows = {m: [] for m in methods}
        for s in range(a.seeds):
            cfg = SimConfig(width=a.width, height=a.height, frames=a.frames, exposures=n_exp,
                            pixel_format=a.pixel_format, seed=VALIDATION_SEED0 + s)
            for m, r in evaluate(cfg, methods, a.weights).items():
                rows[m].append(r)
        print(f"\n{n_exp} exposures: {a.seeds} validation sequences x {a.frames} frames, {a.width}x{a.height} {a.pixel_format}")
        print(f"  {'method':10s} {'PSNR-mu':>8s} {'PSNR-L':>8s} {'flicker':>8s} {'ms/frame':>9s}")
        for m in methods:
            mean = {k: float(np.mean([r[k] for r in rows[m]])) for k in rows[m][0]}
            print(f"  {m:10s} {mean['psnr_mu']:8.2f} {mean['psnr_l']:8.2f} {mean['flicker']:8.4f} {mean['ms']:9.1f}")


if __name__ == "__main__":
    main()
