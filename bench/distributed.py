"""Throughput and end-to-end latency: the distributed graph (`hdrstream up`, N workers, tcp
loopback) against the embedded pipeline (one process, inproc), on the same simulated input.

End-to-end latency is capture (host wall clock, stamped when the camera hands the frame
over) to the sink having the HDR frame; p50/p99 over the stream. Throughput is HDR frames
per second over the whole run, and the camera data rate it sustains (MB/s of raw frames).

    .venv/bin/python bench/distributed.py [--sizes 1536x814,4096x2168] [--frames 48] [--workers 2]
                                          [--defer-warp] [--window-dtype float16|codes]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from capture.sim import SimCamera, SimConfig
from deploy.deployment import loopback_graph
from deploy.pipeline import run_embedded
from infer.stage import InferStage
from preprocess.stage import PreprocessConfig, Preprocessor
from sink.stage import Sink, SinkConfig


def line(name: str, report: dict, wall: float, mb_per_frame: float) -> str:
    n = report["frames_out"]
    lat = report.get("latency_ms") or {}
    fps = n / wall if wall > 0 else 0.0
    return (f"  {name:<22} {n:4d} frames in {wall:6.1f} s: {fps:6.2f} frames/s, {fps * mb_per_frame:7.1f} MB/s in; "
            f"latency p50 {lat.get('p50', float('nan')):8.1f} ms, p99 {lat.get('p99', float('nan')):8.1f} ms; "
            f"gaps {report['gap_count']}")


def embedded(cfg: SimConfig, out: Path, pre: PreprocessConfig) -> tuple[dict, float]:
    sink = Sink(SinkConfig(out_dir=out, preview=False, video=False))
    t0 = time.perf_counter()
    run_embedded(SimCamera(cfg), [Preprocessor(pre), InferStage("classical"), sink])
    wall = time.perf_counter() - t0
    return json.loads((out / "report.json").read_text()), wall


def distributed(cfg: SimConfig, out: Path, workers: int, pre: PreprocessConfig) -> tuple[dict, float]:
    graph, _ = loopback_graph(workers)
    config = out.parent / f"{out.name}.toml"
    config.write_text(f"""
{graph}[sim]
width = {cfg.width}
height = {cfg.height}
frames = {cfg.frames}
pixel_format = "{cfg.pixel_format}"
realtime = {str(cfg.realtime).lower()}
fps = {cfg.fps}
[preprocess]
defer_warp = {str(pre.deferred).lower()}
window_dtype = "{pre.window_dtype}"
[sink]
out_dir = "{out}"
preview = false
video = false
""")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deploy.cli", "up", "--config", str(config)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    wall = time.perf_counter() - t0  # includes starting five Python processes (~1-2 s)
    return json.loads((out / "report.json").read_text()), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1536x814,4096x2168", help="WxH list (Bayer needs even rows: 814)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--realtime", action="store_true", help="pace the camera at 30 fps (latency under load)")
    ap.add_argument("--defer-warp", action="store_true", help="preprocess leaves the global warps to the workers")
    ap.add_argument("--window-dtype", default="float32", choices=("float32", "float16", "codes"),
                    help="windows on the wire (and between threads)")
    ap.add_argument("--no-embedded", action="store_true", help="only the distributed graph")
    a = ap.parse_args()
    pre = PreprocessConfig(defer_warp=a.defer_warp or None, window_dtype=a.window_dtype)
    print(f"{os.cpu_count()} CPU cores; classical reconstructor; BayerRG8 2-exposure simulated camera; "
          f"{a.frames} frames{' at 30 fps' if a.realtime else ' as fast as it renders'}; windows "
          f"{a.window_dtype}{', warps deferred to the workers' if pre.deferred else ''}")
    for size in a.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        cfg = SimConfig(width=w, height=h, frames=a.frames, pixel_format="BayerRG8", realtime=a.realtime, fps=30.0)
        mb = w * h / 1e6
        print(f"{w}x{h} ({mb:.1f} MB/frame raw)")
        with tempfile.TemporaryDirectory() as tmp:
            if not a.no_embedded:
                report, wall = embedded(cfg, Path(tmp) / "embedded", pre)
                print(line("embedded (1 process)", report, wall, mb))
            report, wall = distributed(cfg, Path(tmp) / "distributed", a.workers, pre)
            print(line(f"up, {a.workers} workers (tcp)", report, wall, mb))


if __name__ == "__main__":
    main()
