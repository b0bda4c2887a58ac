"""Sustained recording speed: MB/s and frames/s that ``capture.record`` writes to disk.

Frames are rendered once by the simulated camera (real sensor noise, which is what
decides PNG speed and size) and replayed as fast as the recorder takes them, so the disk
and the PNG encoder are measured, not the camera. The acA4096-30uc makes 4096x2168
BayerRG8 at ~32 fps = ~285 MB/s; BayerRG12 (16-bit PNG) doubles that.

Without --fsync the OS page cache absorbs the writes (what a session of a few GB sees
on a machine with enough RAM); with --fsync every frame is on the disk before it is
listed, which shows the disk's own sustained rate.

    .venv/bin/python bench/record.py [--frames 60] [--writers 1,2,4] [--levels 0,1]
        [--formats BayerRG8,BayerRG12] [--width 4096 --height 2168] [--dir /path/on/target/disk] [--fsync]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from capture.record import RecordConfig, RecordSummary, record
from capture.sim import SimCamera, SimConfig
from hdrstream.frame import Frame

CAMERA_FPS = 32.0


class Replay:
    """A camera that replays a few pre-rendered frames with fresh seqs, as fast as asked."""

    name = "replay"

    def __init__(self, payloads: list[np.ndarray], exposures: list[float], fmt: str, frames: int) -> None:
        self.payloads, self.exposures, self.fmt, self.count = payloads, exposures, fmt, frames

    def frames(self) -> Iterator[Frame]:
        for i in range(self.count):
            k = i % len(self.payloads)
            yield Frame("frame", "bench", i, i * 31_250_000, self.exposures[k % len(self.exposures)], 0.0,
                        self.fmt, self.payloads[k], set=k % len(self.exposures))

    def close(self) -> None:
        pass


def render(fmt: str, width: int, height: int, n: int = 4) -> tuple[list[np.ndarray], list[float]]:
    cam = SimCamera(SimConfig(width=width, height=height, frames=n, pixel_format=fmt))
    return [cam.capture(i) for i in range(n)], cam.exposure_cycle


def run(source: Replay, base: Path, cfg: RecordConfig) -> RecordSummary:
    out = Path(tempfile.mkdtemp(prefix="bench-record-", dir=base))
    try:
        return record(source, out, cfg, progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60, help="frames per run")
    ap.add_argument("--writers", default="1,2,4")
    ap.add_argument("--levels", default="0,1", help="PNG compression levels (capture.seqfolder.png_params)")
    ap.add_argument("--formats", default="BayerRG8,BayerRG12")
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--height", type=int, default=2168)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--dir", default=None, help="where to write (the disk you will record to); default: temp dir")
    ap.add_argument("--fsync", action="store_true", help="make each frame durable before listing it")
    a = ap.parse_args()
    base = Path(a.dir or tempfile.gettempdir())
    writers = [int(w) for w in a.writers.split(",")]
    levels = [int(v) for v in a.levels.split(",")]
    print(f"record: {a.frames} frames per run, {a.width}x{a.height}, into {base}, fsync={a.fsync}; "
          f"camera needs {CAMERA_FPS:.0f} fps")
    print(f"{'format':10s} {'png':>3s} {'writers':>7s} {'fps':>6s} {'payload MB/s':>12s} {'disk MB/s':>9s} "
          f"{'size':>5s}  keeps up")
    for fmt in a.formats.split(","):
        t0 = time.perf_counter()
        payloads, exposures = render(fmt, a.width, a.height)
        print(f"# {fmt}: rendered {len(payloads)} frames of {payloads[0].nbytes / 1e6:.1f} MB "
              f"in {time.perf_counter() - t0:.1f} s")
        for level in levels:
            for w in writers:
                cfg = RecordConfig(frames=a.frames, writers=w, queue_frames=a.queue, png_compression=level,
                                   fsync=a.fsync)
                s = run(Replay(payloads, exposures, fmt, a.frames), base, cfg)
                if not s.ok:
                    raise SystemExit(f"run failed: {s.line()}")
                ratio = s.file_bytes / s.payload_bytes
                print(f"{fmt:10s} {level:3d} {w:7d} {s.fps:6.1f} {s.mb_per_s:12.0f} {s.file_mb_per_s:9.0f} "
                      f"{ratio:5.2f}  {'yes' if s.fps >= CAMERA_FPS else 'no'}", flush=True)


if __name__ == "__main__":
    main()
