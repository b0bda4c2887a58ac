"""ms/frame of each stage at the benchmark resolution, then the whole embedded pipeline.

Each stage is timed alone on the same simulated input (single thread, after one warm-up
frame), for RGB8 and BayerRG8 camera output; the pipelined run shows what overlapping
the stages on threads buys.

    .venv/bin/python bench/stages.py [--width 1536 --height 813 --frames 12] [--exposures 2]
                                     [--profile [N]] [--scale S] [--warp here|deferred]
                                     [--source replay|sim|both]

``--profile`` adds, per stage, the N functions with the most own time (cProfile; the
stage's frames after the warm-up one), so the figures say where each stage's time goes.
The pipeline's figure is the whole run (start-up and drain included) and its steady state;
use --frames 40 or more for the latter. ``--scale`` times the reduced live mode.
``--warp`` says where the global alignment is applied: in preprocess (``here``, what
``hdrstream live`` does) or folded into the classical merge's resampling (``deferred``).
``--source``: the pipeline's frames come pre-rendered from memory (``replay``: as a
camera's driver hands them over, no host work), or rendered by the simulated camera on
the source's thread (``sim``: the render's CPU time competes with the stages).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import tempfile
import time

import numpy as np

from capture.sim import SimCamera, SimConfig
from deploy.pipeline import run_embedded
from hdrstream.memory import keep_freed_memory
from infer.stage import InferStage
from preprocess.stage import PreprocessConfig, Preprocessor
from sink.stage import Sink, SinkConfig


class Replay:
    """A source of frames already rendered: a camera whose frames cost the host nothing."""

    name = "replay"

    def __init__(self, frames: list) -> None:
        self._frames = frames

    def frames(self):
        yield from self._frames

    def close(self) -> None:
        pass


PROFILE_TOP = 0  # set by --profile


def timed(fn, items, name: str = ""):
    """Run fn on every item; return (outputs, per-item seconds, skipping the first as warm-up).
    With --profile, print where the time after the warm-up went."""
    outs, times = [], []
    prof = cProfile.Profile() if PROFILE_TOP else None
    for i, item in enumerate(items):
        if prof is not None and i == 1:
            prof.enable()
        t0 = time.perf_counter()
        outs.extend(fn(item))
        times.append(time.perf_counter() - t0)
    if prof is not None:
        prof.disable()
        print_profile(prof, name, max(1, len(times) - 1))
    return outs, times[1:] or times


def print_profile(prof: cProfile.Profile, name: str, n: int) -> None:
    """The functions with the most own time, in ms per frame."""
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:PROFILE_TOP]  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    print(f"    profile of {name}: {1e3 * total / n:.1f} ms/frame own time in Python-visible calls")
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in rows:
        where = f"{file.rsplit('/', 2)[-2]}/{file.rsplit('/', 1)[-1]}:{line}" if "/" in file else file
        print(f"      {1e3 * tottime / n:7.1f} ms own {1e3 * cumtime / n:7.1f} cum {ncalls / n:6.1f} calls  "
              f"{func}  ({where})")


def ms(times) -> str:
    return f"{1e3 * float(np.mean(times)):7.1f} ms/frame (p50 {1e3 * float(np.median(times)):6.1f})"


def stage_times(frames: list, pre_cfg: PreprocessConfig, t_cap: list[float], tmp: str, denoise: bool) -> None:
    """Each stage alone on the same input, one after the other."""
    pre = Preprocessor(pre_cfg)
    windows, t_pre = timed(pre.process, frames, "preprocess")
    windows += list(pre.finish())
    print(f"  preprocess             {ms(t_pre)}   (debayer + linearise + align + window)")
    inf = InferStage(method="classical", denoise=denoise)
    hdrs, t_inf = timed(inf.process, windows, "infer classical")
    print(f"  infer classical        {ms(t_inf)}")
    sink = Sink(SinkConfig(out_dir=f"{tmp}/stages", video=False, background=False))  # inline: the work itself
    _, t_sink = timed(sink.process, hdrs, "sink")
    sink.finish()
    print(f"  sink (EXR + preview)   {ms(t_sink)}")
    total = sum(float(np.mean(t)) for t in (t_cap, t_pre, t_inf, t_sink))
    print(f"  sum of stages          {1e3 * total:7.1f} ms/frame")


def bench(fmt: str, a: argparse.Namespace) -> None:
    height = a.height + (a.height % 2 if fmt.startswith("Bayer") else 0)  # a mosaic has even rows
    cfg = SimConfig(width=a.width, height=height, frames=a.frames, exposures=a.exposures, pixel_format=fmt)
    print(f"\n{fmt} in, {a.width}x{height}, {a.exposures} exposures, {a.frames} frames"
          + (f", reconstructed at scale {a.scale:g}" if a.scale < 1 else ""))
    cam = SimCamera(cfg)
    it = iter(cam.frames())
    frames, t_cap = timed(lambda _: [next(it)], range(a.frames), "capture")
    print(f"  capture (sim render)   {ms(t_cap)}")
    pre_cfg = PreprocessConfig(scale=a.scale, defer_warp=a.warp == "deferred")
    with tempfile.TemporaryDirectory() as tmp:
        if not a.pipeline_only:
            stage_times(frames, pre_cfg, t_cap, tmp, not a.no_denoise)
        if a.no_pipeline:
            return
        sources = {"replay": lambda: Replay(frames), "sim": lambda: SimCamera(cfg)}
        for name in ("replay", "sim") if a.source == "both" else (a.source,):
            stamps: list[float] = []
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            infer = InferStage(method="classical", threads=a.infer_threads, denoise=not a.no_denoise)
            run_embedded(sources[name](), [Preprocessor(pre_cfg), infer, Sink(SinkConfig(out_dir=f"{tmp}/{name}", video=False))],
                         on_output=lambda _: stamps.append(time.perf_counter()))
            dt = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            user, system = cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime
            print(f"  embedded, {name:6s}       {1e3 * dt / a.frames:7.1f} ms/frame  ({a.frames / dt:.2f} frames/s, "
                  "threads overlap stages)")
            print(f"  ... CPU time           {1e3 * (user + system) / a.frames:7.1f} ms/frame  (user {1e3 * user / a.frames:.0f}"
                  f" + system {1e3 * system / a.frames:.0f}; {(user + system) / dt:.2f} cores busy)")
            k = len(stamps) // 4  # steady state: from the first quarter of the outputs on (no start-up, no drain)
            if len(stamps) - k >= 3:
                rate = (len(stamps) - 1 - k) / (stamps[-1] - stamps[k])
                print(f"  ... steady state       {1e3 / rate:7.1f} ms/frame  ({rate:.2f} frames/s over outputs "
                      f"{k}..{len(stamps) - 1})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--height", type=int, default=813)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--exposures", type=int, default=2)
    ap.add_argument("--formats", default="RGB8,BayerRG8")
    ap.add_argument("--profile", type=int, nargs="?", const=12, default=0, metavar="N",
                    help="print the N functions with the most own time per stage (default 12)")
    ap.add_argument("--no-pipeline", action="store_true", help="stage times only")
    ap.add_argument("--no-denoise", action="store_true", help="classical without its noise filter")
    ap.add_argument("--pipeline-only", action="store_true", help="the embedded pipeline only, no stage times")
    ap.add_argument("--scale", type=float, default=1.0, help="the reduced live mode (hdrstream live --scale)")
    ap.add_argument("--warp", choices=("here", "deferred"), default="here",
                    help="global alignment applied in preprocess (default, as live does), or folded into the merge")
    ap.add_argument("--infer-threads", type=int, default=None,
                    help="the pipeline's infer stage: windows at once (default: one per core, as live does)")
    ap.add_argument("--source", choices=("replay", "sim", "both"), default="both",
                    help="the pipeline's camera: frames pre-rendered in memory, or rendered live (default: both)")
    a = ap.parse_args()
    keep_freed_memory()  # as the hdrstream command does
    global PROFILE_TOP
    PROFILE_TOP = a.profile
    for fmt in a.formats.split(","):
        bench(fmt, a)


if __name__ == "__main__":
    main()
