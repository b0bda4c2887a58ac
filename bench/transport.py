"""Frames/s and MB/s of the frame protocol over ZeroMQ: tcp loopback and inproc.

Default payload is what the acA4096-30uc sends at full resolution: 4096x2168 BayerRG8
(8.9 MB). The camera needs ~32 frames/s, i.e. ~285 MB/s.

    .venv/bin/python bench/transport.py [--frames 300] [--width 4096 --height 2168]
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from hdrstream.frame import Frame, eos
from hdrstream.transport import Receiver, Sender


def run(endpoint: str, frames: int, shape: tuple[int, int], hwm: int) -> tuple[float, float]:
    rx = Receiver(endpoint, bind=True, hwm=hwm)
    tx = Sender(rx.endpoint, bind=False, hwm=hwm)
    payloads = [np.full(shape, i, np.uint8) for i in range(4)]  # distinct buffers, no caching tricks
    got: list[int] = []

    def consume() -> None:
        while True:
            f = rx.recv(timeout_s=30)
            if f is None or f.kind == "eos":
                return
            got.append(int(f.data[0, 0]) + int(f.data[-1, -1]))  # touch the payload

    t = threading.Thread(target=consume)
    t.start()
    t0 = time.perf_counter()
    for i in range(frames):
        f = Frame("frame", "bench", i, time.monotonic_ns(), 0.001, 0.0, "BayerRG8", payloads[i % 4], set=i % 2)
        tx.send(f, timeout_s=30)
    tx.send(eos("bench", frames, count=frames), timeout_s=30)
    t.join()
    dt = time.perf_counter() - t0
    tx.close()
    rx.close()
    assert len(got) == frames, f"lost frames: {frames - len(got)}"
    fps = frames / dt
    return fps, fps * payloads[0].nbytes / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--height", type=int, default=2168)
    ap.add_argument("--hwm", type=int, default=8)
    a = ap.parse_args()
    shape = (a.height, a.width)
    mb = a.width * a.height / 1e6
    print(f"transport: {a.frames} frames of {a.width}x{a.height} BayerRG8 ({mb:.1f} MB), HWM {a.hwm}")
    for name, ep in (("tcp loopback", "tcp://127.0.0.1:*"), ("inproc", "inproc://bench-transport")):
        fps, mbs = run(ep, a.frames, shape, a.hwm)
        print(f"  {name:13s} {fps:8.1f} frames/s  {mbs:8.0f} MB/s  ({fps / 32:.1f}x the camera's 32 fps)")


if __name__ == "__main__":
    main()
