"""Quality of each reconstructor on the validation splits: overall and where it is hard.

Two splits of simulated sequences with exact ground truth (``training/splits.py``): static
(seeds 1000+, camera motion and one small moving object) and dynamic (seeds 2000+, large
fast objects in front of a low sun that clips the long exposures channel by channel). They
are never trained on and never used to tune thresholds in tests.

Per split and cycle, for every method: PSNR-μ over all pixels and in three regions —
motion (pixels any moving object covers in the window's frames, dilated 4 px), clipped
(the reference clipped in any channel, outside motion) and the rest, and the motion
region's pixels where the reference clips (m-clip) — PSNR-L, flicker,
the worst frame's PSNR-μ against classical's on the same frame, the hue error where the
reference is partly clipped (L1 distance of rgb chromaticities, pooled over those pixels),
and ms/frame. Regions are scored by pooling squared errors over frames. With ``--vdp``, also
ColorVideoVDP (JOD, 10 = indistinguishable from the ground truth; mean over sequences) of
each whole sequence, scored by bench/vdp.py in its own environment (`make vdp`).

    .venv/bin/python bench/quality.py [--split static,dynamic] [--methods reference,classical,coarse,net] [--seeds 4]
    .venv/bin/python bench/quality.py --exposures 2 --weights out/train/refine2/best.safetensors --json out/q.json
    make vdp && .venv/bin/python bench/quality.py --vdp --methods classical,coarse,net
    .venv/bin/python bench/quality.py --methods classical --warp deferred --classical flow_max_px=512

By default every method that can run: reference, classical, and CoarseNet alone and the full
network where shipped weights exist (infer/weights/).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from capture.sim import SimCamera, SimConfig
from hdrstream import quality
from infer.classical import ClassicalConfig, ClassicalReconstructor
from infer.method import window_frames
from infer.netrecon import NetReconstructor, default_weights
from infer.stage import InferStage
from preprocess.stage import PreprocessConfig, Preprocessor
from training.splits import (CLIP_LEVEL, REGIONS, SPLIT_HEIGHT, SPLIT_WIDTH, SPLITS, SUBREGIONS, regions,
                             split_config)


VDP_PYTHON = Path(__file__).resolve().parent.parent / ".venv-vdp" / "bin" / "python"


def evaluate(cfg: SimConfig, methods: list[str], weights: str = "",
             pre_cfg: PreprocessConfig | None = None, keep: Path | None = None,
             classical: ClassicalConfig | None = None, denoise: bool = True) -> dict[str, dict[str, list[float]]]:
    """Per-frame figures of each method on one sequence; with ``keep``, the sequence's
    normalised predictions and ground truth are also written there (float16 .npz) for
    ColorVideoVDP. ``classical``: the classical merge's tuning, if not its defaults."""
    cam = SimCamera(cfg)
    pre = Preprocessor(pre_cfg or PreprocessConfig())
    infer = InferStage(method=methods[0], compare=methods[1:], denoise=denoise)
    if classical is not None:
        for i, rec in enumerate(infer.methods):
            if rec.name == "classical":
                infer.methods[i] = ClassicalReconstructor(classical)
            elif isinstance(rec, NetReconstructor):  # its gate's merge and noise filter too
                rec.classical = ClassicalReconstructor(classical)
    if weights:  # candidate weights instead of the shipped ones
        for rec in infer.methods:
            if rec.name in ("net", "net-refine", "coarse"):
                rec.weights = {cfg.exposures: Path(weights)}
    windows = [w for f in cam.frames() for w in pre.process(f)] + list(pre.finish())
    t_min = min(cam.exposure_cycle)
    rows: dict[str, dict[str, list]] = {m: {"psnr_mu": [], "psnr_l": [], "s": [], "pred": [], "hue": [], "ref_x": [],
                                            **{f"sse_{r}": [] for r in REGIONS + SUBREGIONS}} for m in methods}
    gts = []
    for w in windows:
        gt = cam.ground_truth(w.seq)
        masks = regions(cam, w)
        partial = partly_clipped(window_frames(w)[w.meta["ref"]], gt, t_min)
        gts.append(gt)
        for hdr in infer.process(w):
            m = hdr.meta["method"]
            pred = np.array(hdr.data, np.float32)
            r = rows[m]
            r["pred"].append(pred)
            r["s"].append(hdr.meta["timing"]["infer"])
            r["psnr_mu"].append(quality.psnr_mu(pred, gt, t_min))
            r["ref_x"].append(round(float(w.meta["exposures"][w.meta["ref"]]) / t_min))
            r["psnr_l"].append(quality.psnr_l(pred, gt, t_min))
            for name, mask in masks.items():
                r[f"sse_{name}"].append(quality.mu_sq_error(pred, gt, t_min, mask))
            r["hue"].append(hue_error(pred, gt, partial))
    if keep is not None:
        seq = {m: np.stack([quality.normalise(p, t_min) for p in rows[m]["pred"]]).astype(np.float16) for m in methods}
        np.savez(keep, gt=np.stack([quality.normalise(g, t_min) for g in gts]).astype(np.float16), **seq)
    for m in methods:
        rows[m]["flicker"] = quality.flicker(rows[m].pop("pred"), gts, t_min)
    return rows


def vdp_scores(files: list[Path], fps: float) -> dict[str, list[float]]:
    """ColorVideoVDP JOD per method, one value per sequence file (bench/vdp.py)."""
    if not VDP_PYTHON.is_file():
        raise SystemExit(f"--vdp needs ColorVideoVDP's environment {VDP_PYTHON.parent.parent}: run `make vdp` first")
    script = Path(__file__).resolve().parent / "vdp.py"
    done = subprocess.run([str(VDP_PYTHON), str(script), *map(str, files), "--fps", str(fps)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/vdp.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    per_file = json.loads(done.stdout)
    out: dict[str, list[float]] = {}
    for f in files:
        for m, jod in per_file[str(f)].items():
            out.setdefault(m, []).append(jod)
    return out


def partly_clipped(L_ref: np.ndarray, gt: np.ndarray, t_min: float) -> np.ndarray:
    """(H, W): the reference clipped in some channels but not all, where the ground truth
    is within the shortest exposure's range (so its colour is knowable)."""
    top = np.iinfo(L_ref.dtype).max if L_ref.dtype.kind in "ui" else 1.0
    clipped = L_ref >= CLIP_LEVEL * top
    return clipped.any(axis=2) & ~clipped.all(axis=2) & (gt.max(axis=2) * t_min < 1.0)


def hue_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """(sum, count) of the L1 distance of rgb chromaticities (r, g, b)/(r+g+b) over ``mask``."""
    if not mask.any():
        return 0.0, 0
    p, g = np.maximum(pred[mask], 0).astype(np.float64), gt[mask].astype(np.float64)
    d = np.abs(p / np.maximum(p.sum(1, keepdims=True), 1e-12) - g / np.maximum(g.sum(1, keepdims=True), 1e-12))
    return float(d.sum()), int(mask.sum())


def summarise(rows: dict[str, dict[str, list]]) -> dict[str, dict[str, float]]:
    """Means over frames; regions by pooled squared error, hue error pooled over pixels."""
    out = {}
    base = rows.get("classical")
    for m, r in rows.items():
        s = {k: float(np.mean(r[k])) for k in ("psnr_mu", "psnr_l")}
        for name in REGIONS + SUBREGIONS:
            s[f"psnr_mu_{name}"] = _pooled(r[f"sse_{name}"])
        hue_n = sum(k for _, k in r["hue"])
        s["hue"] = sum(e for e, _ in r["hue"]) / hue_n if hue_n else math.nan
        s["flicker"] = float(np.mean(r["flicker"])) if r["flicker"] else math.nan
        s["ms"] = 1e3 * float(np.mean(r["s"]))
        if base is not None:
            s["worst_vs_classical"] = float(np.min(np.subtract(r["psnr_mu"], base["psnr_mu"])))
        out[m] = s
    return out


def by_reference(rows: dict[str, dict[str, list]]) -> dict[str, dict[int, dict[str, float]]]:
    """The frames of each reference exposure (×1, ×4, ... of the cycle's shortest) apart: a
    method can win on average and not where the reference is the short, noisy frame."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for m, r in rows.items():
        xs = np.asarray(r["ref_x"])
        out[m] = {}
        for x in sorted(set(r["ref_x"])):
            pick = np.flatnonzero(xs == x)
            s = {"frames": float(len(pick)), "psnr_mu": float(np.mean(np.asarray(r["psnr_mu"])[pick]))}
            for name in REGIONS + SUBREGIONS:
                s[f"psnr_mu_{name}"] = _pooled([r[f"sse_{name}"][i] for i in pick])
            out[m][int(x)] = s
    return out


def _pooled(sse: list[tuple[float, int]]) -> float:
    """PSNR-μ of (sum of squared errors, values) pairs pooled over frames."""
    return quality.pooled_psnr(sum(e for e, _ in sse), sum(k for _, k in sse))


def _parse_value(text: str) -> object:
    """A command-line value as the Python literal it spells (int, float, bool, None), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="static,dynamic", help="comma-separated: static, dynamic")
    ap.add_argument("--methods", default="", help="comma-separated; default: every method that can run")
    ap.add_argument("--seeds", type=int, default=4, help="sequences per split")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--width", type=int, default=SPLIT_WIDTH)
    ap.add_argument("--height", type=int, default=SPLIT_HEIGHT)
    ap.add_argument("--pixel-format", default="BayerRG8")
    ap.add_argument("--exposures", default="2,3", help="which cycles: 2, 3 or 2,3")
    ap.add_argument("--weights", default="", help="network weights to score instead of the shipped ones "
                    "(one file: give --exposures to match)")
    ap.add_argument("--json", default="", help="also write the figures (per split, cycle, method) here")
    ap.add_argument("--vdp", action="store_true", help="also score ColorVideoVDP (JOD; needs `make vdp`; "
                    "about 25 s of CPU per method and 12-frame sequence)")
    ap.add_argument("--interpolation", default=PreprocessConfig.interpolation, choices=("linear", "cubic"),
                    help="preprocess's resampling of the global warp")
    ap.add_argument("--warp", default="here", choices=("here", "deferred"),
                    help="global warp applied in preprocess, or folded into the methods that can (as live does)")
    ap.add_argument("--classical", action="append", default=[], metavar="KEY=VALUE",
                    help="a ClassicalConfig field for the classical merge, the network's gate and noise filter included (repeatable), e.g. flow_max_px=512")
    ap.add_argument("--no-denoise", action="store_true", help="the methods without their noise filter (infer/denoise.py)")
    ap.add_argument("--by-reference", action="store_true",
                    help="also the figures of each reference exposure's frames apart (PSNR-mu, motion, rest, m-clip)")
    a = ap.parse_args()
    classical = None
    if a.classical:
        fields = {f.name: f.type for f in dataclasses.fields(ClassicalConfig)}
        kv = dict(item.split("=", 1) for item in a.classical)
        unknown = sorted(set(kv) - set(fields))
        if unknown:
            ap.error(f"unknown ClassicalConfig field(s) {unknown}; known: {', '.join(fields)}")
        classical = ClassicalConfig(**{k: _parse_value(v) for k, v in kv.items()})
    if a.weights and "," in a.exposures:
        ap.error("--weights scores one network: give --exposures 2 or 3")
    splits = [s for s in a.split.split(",") if s]
    for s in splits:
        if s not in SPLITS:
            ap.error(f"unknown split {s!r}; one of {', '.join(SPLITS)}")
    report = {}
    for split in splits:
        for n_exp in (int(e) for e in a.exposures.split(",")):
            methods = a.methods.split(",") if a.methods else (
                ["reference", "classical"] + (["coarse", "net", "net-refine"] if default_weights(n_exp).is_file() or a.weights else []))
            rows: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
            base = SimConfig(width=a.width, height=a.height, frames=a.frames, exposures=n_exp,
                             pixel_format=a.pixel_format)
            with tempfile.TemporaryDirectory(prefix="hdrstream-vdp-") as tmp:
                kept = []
                for i in range(a.seeds):
                    keep = Path(tmp) / f"{split}-{n_exp}-{i}.npz" if a.vdp else None
                    for m, r in evaluate(split_config(split, i, base), methods, a.weights,
                                         PreprocessConfig(interpolation=a.interpolation,
                                                          defer_warp=a.warp == "deferred"),
                                         keep, classical, not a.no_denoise).items():
                        for k, v in r.items():
                            rows[m].setdefault(k, []).extend(v)
                    if keep is not None:
                        kept.append(keep)
                jods = vdp_scores(kept, fps=base.fps) if a.vdp else {}
            table = summarise(rows)
            per_ref = by_reference(rows) if a.by_reference else {}
            for m, v in jods.items():
                table[m]["jod"] = float(np.mean(v))
                table[m]["jod_min"] = float(np.min(v))
            report[f"{split}/{n_exp}"] = table
            if per_ref:
                report[f"{split}/{n_exp}/by_reference"] = {m: {f"x{x}": v for x, v in d.items()} for m, d in per_ref.items()}
            print(f"\n{split} split, {n_exp} exposures: {a.seeds} sequences x {a.frames} frames, "
                  f"{a.width}x{a.height} {a.pixel_format}, warp {a.warp}" + (", no denoise" if a.no_denoise else "")
                  + (f", classical {' '.join(a.classical)}" if a.classical else ""))
            print(f"  {'method':10s} {'PSNR-mu':>8s} {'motion':>8s} {'clipped':>8s} {'rest':>8s} {'m-clip':>8s} {'PSNR-L':>8s} "
                  f"{'flicker':>8s} {'hue':>7s} {'worst-dB':>8s} {'ms/frame':>9s}" + (f" {'JOD':>6s}" if a.vdp else ""))
            for m in methods:
                t = table[m]
                print(f"  {m:10s} {t['psnr_mu']:8.2f} {t['psnr_mu_motion']:8.2f} {t['psnr_mu_clipped']:8.2f} "
                      f"{t['psnr_mu_rest']:8.2f} {t['psnr_mu_motion_clipped']:8.2f} {t['psnr_l']:8.2f} {t['flicker']:8.4f} {t['hue']:7.4f} "
                      f"{t.get('worst_vs_classical', math.nan):8.2f} {t['ms']:9.1f}" + (f" {t['jod']:6.2f}" if a.vdp else ""))
            if per_ref:
                print("  by reference exposure: PSNR-mu / motion / rest / m-clip")
                for m in methods:
                    print(f"  {m:10s} " + "   ".join(
                        f"x{x}: {v['psnr_mu']:.2f} / {v['psnr_mu_motion']:.2f} / {v['psnr_mu_rest']:.2f} / "
                        f"{v['psnr_mu_motion_clipped']:.2f}" for x, v in per_ref[m].items()))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"args": vars(a), "figures": report}, indent=1))


if __name__ == "__main__":
    main()
