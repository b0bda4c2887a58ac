"""Fault-injection soak: `hdrstream up` with the simulated camera at 30 frames/s for a while,
with a worker SIGKILLed every minute, a malformed message every second (alternately at the
sink's input and the dispatcher's control socket) and the camera unplugged for a few seconds
half-way. Then it checks the books: every frame the camera delivered is written or reported
lost with a reason; nothing partial is left on disk.

    .venv/bin/python bench/soak.py [--minutes 10] [--size 160x96] [--workers 2] [--out out/soak]

Prints: frames captured, written, reported lost (by reason), silently lost, partial files,
worker restarts, every service's exit, peak RSS per service. Exit status 1 if anything was
silently lost or left partial.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from deploy.deployment import loopback_graph
from hdrstream.frame import Frame, ProtocolError, decode, encode

SERVICES = ("capture", "preprocess", "infer", "sink")


def write_config(path: Path, out: Path, frames: int, width: int, height: int, workers: int,
                 outage: tuple[float, float]) -> dict[str, int]:
    graph, ports = loopback_graph(workers, ("capture", "preprocess", "sink"))
    path.write_text(f"""
{graph}[sim]
width = {width}
height = {height}
frames = {frames}
fps = 30.0
realtime = true
pixel_format = "BayerRG8"
outage = [{outage[0]}, {outage[1]}]
[preprocess]
crf = "gamma2.2"
[infer]
method = "classical"
[dispatch]
chunk = 4
heartbeat_s = 0.25
dead_after_s = 2.0
[sink]
out_dir = "{out}"
preview = false
video = true
""")
    return ports


# -- malformed messages: the mutations of tests/test_fuzz.py, drawn from a seeded RNG -----------

def _junk(rng: random.Random):
    return rng.choice([None, True, -1, 2**63, 2**64 - 1, 7, 1e308, float("nan"), "x" * 20,
                       b"\xff\x00", [], [1, 2, 3], {"a": 1}, "object", [2**40, 2**40], -(2**31)])


def malformed_frame(rng: random.Random) -> list[bytes]:
    """A message the frame decoder must reject (a mutation that stays valid is drawn again)."""
    while True:
        parts = _mutation(rng)
        try:
            decode(parts)
        except ProtocolError:
            return parts


def _mutation(rng: random.Random) -> list[bytes]:
    kind = rng.choice(["raw", "map", "mutated", "mutated", "mutated"])
    if kind == "raw":
        return [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(0, 3))] or [b""]
    if kind == "map":
        return [msgpack.packb({rng.choice(["v", "kind", "seq", "zz"]): _junk(rng) for _ in range(3)}), b""]
    data = np.full((8, 8, 3), 0.5, np.float32)
    header, payload = encode(Frame("hdr", "sim", rng.randint(0, 10**6), 0, 0.008, 0.0, "RGBf32", data,
                                   meta={"method": "classical"}))
    h = msgpack.unpackb(header)
    for key in rng.sample(["v", "kind", "seq", "shape", "dtype", "pixel_format", "stem", "exposure_s", "method",
                           "timing", "failed", "count"], rng.randint(1, 3)):
        h[key] = _junk(rng)
    body = bytes(payload) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 400))
    return [msgpack.packb(h, use_bin_type=True), body]


def malformed_control(rng: random.Random) -> list[bytes]:
    kind = rng.choice([b"READY", b"HB", b"DONE", b"BYE", b"NOPE", b""])
    body = rng.choice([msgpack.packb({"worker": _junk(rng), "slots": _junk(rng), "chunk": _junk(rng)}),
                       msgpack.packb({"worker": f"ghost-{rng.randint(0, 99)}", "chunk": rng.randint(0, 99)}),
                       rng.randbytes(rng.randint(0, 40))])
    return [kind, body]


# -- watching the services ------------------------------------------------------------------------

def service_pids(config: Path) -> dict[str, list[int]]:
    out = subprocess.run(["pgrep", "-af", str(config)], capture_output=True, text=True).stdout
    pids: dict[str, list[int]] = {}
    for line in out.splitlines():
        m = re.search(r"serve (capture|preprocess|infer|sink)(?: --worker-index (\d+))?", line)
        if m:
            name = m.group(1) + (f"-{m.group(2)}" if m.group(2) else "")
            pids.setdefault(name, []).append(int(line.split()[0]))
    return pids


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--size", default="160x96", help="frame size (small, so 2 cores keep up with 30 frames/s)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-every-s", type=float, default=60.0)
    ap.add_argument("--malformed-every-s", type=float, default=1.0)
    ap.add_argument("--outage-s", type=float, default=5.0, help="camera unplugged this long, half-way")
    ap.add_argument("--out", default="out/soak")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    duration = args.minutes * 60
    frames = int(duration * 30)
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    out = out_root / "hdr"
    if out.exists():
        for p in out.rglob("*"):
            if p.is_file():
                p.unlink()
    config = out_root / "soak.toml"
    ports = write_config(config, out, frames, width, height, args.workers, (duration / 2, args.outage_s))
    rng = random.Random(args.seed)
    print(f"soak: {args.minutes:g} min, {frames} frames of {width}x{height} BayerRG8 at 30 frames/s, "
          f"{args.workers} workers; a worker killed every {args.kill_every_s:g} s, a malformed message every "
          f"{args.malformed_every_s:g} s, the camera unplugged for {args.outage_s:g} s at {duration / 2:.0f} s",
          flush=True)

    log_path = out_root / "up.log"
    with open(log_path, "w") as log_file:
        up = subprocess.Popen([sys.executable, "-m", "deploy.cli", "up", "--config", str(config)],
                              stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        ctx = zmq.Context.instance()
        to_sink = ctx.socket(zmq.PUSH)
        to_sink.setsockopt(zmq.LINGER, 0)
        to_sink.setsockopt(zmq.SNDHWM, 100)
        to_sink.connect(f"tcp://127.0.0.1:{ports['sink']}")
        to_dispatch = ctx.socket(zmq.DEALER)
        to_dispatch.setsockopt(zmq.LINGER, 0)
        to_dispatch.connect(f"tcp://127.0.0.1:{ports['work']}")
        rss: dict[str, float] = {}
        kills, malformed_sent = 0, {"sink": 0, "dispatch": 0}
        t0 = time.monotonic()
        next_kill, next_bad, next_rss = t0 + args.kill_every_s, t0 + 2.0, t0
        try:
            while up.poll() is None:
                now = time.monotonic()
                if now >= next_rss:
                    for name, pids in service_pids(config).items():
                        for pid in pids:
                            mb = peak_rss_mb(pid)
                            if mb is not None:
                                key = "infer" if name.startswith("infer") else name
                                rss[key] = max(rss.get(key, 0.0), mb)
                    next_rss = now + 2.0
                if now >= next_bad:
                    if malformed_sent["sink"] <= malformed_sent["dispatch"]:
                        try:
                            to_sink.send_multipart(malformed_frame(rng), zmq.NOBLOCK)
                            malformed_sent["sink"] += 1
                        except zmq.Again:
                            pass
                    else:
                        to_dispatch.send_multipart(malformed_control(rng), zmq.NOBLOCK)
                        malformed_sent["dispatch"] += 1
                    next_bad = now + args.malformed_every_s
                if now >= next_kill and now - t0 < duration:
                    pids = service_pids(config)
                    victims = sorted(n for n in pids if n.startswith("infer"))
                    if victims:
                        name = victims[kills % len(victims)]
                        os.kill(pids[name][0], signal.SIGKILL)
                        kills += 1
                        print(f"  {now - t0:6.0f} s: SIGKILL {name} (pid {pids[name][0]})", flush=True)
                    next_kill = now + args.kill_every_s
                if now - t0 > duration + 300:
                    print("soak: the run did not end 5 min after the camera's last frame; stopping it", flush=True)
                    os.killpg(up.pid, signal.SIGINT)
                    time.sleep(30)
                    os.killpg(up.pid, signal.SIGKILL)
                time.sleep(0.05)
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
            to_sink.close()
            to_dispatch.close()
        wall = time.monotonic() - t0
    log = log_path.read_text()
    return books(out, log, up.returncode, wall, kills, malformed_sent, rss, log_path)


def books(out: Path, log: str, rc: int, wall: float, kills: int, malformed_sent: dict, rss: dict,
          log_path: Path) -> int:
    report_path = out / "report.json"
    if not report_path.is_file():
        print(f"soak: no report.json; up exited {rc}; see {log_path}")
        return 1
    report = json.loads(report_path.read_text())
    exp = report["expected"] or {"first_seq": 0, "end_seq": 0}
    lost = report["lost"]
    camera_gap = lost.get("camera_gap", 0)
    captured = exp["end_seq"] - exp["first_seq"] - camera_gap  # what the camera delivered
    written = len(list(out.glob("*.exr")))
    reported = lost["total"] - camera_gap
    silently = captured - written - reported
    partial = [p for p in out.rglob(".*") if p.is_file()] + list(out.rglob("*.tmp*"))
    restarts = len(re.findall(r"up: infer-\d+ restarted", log))
    exits = re.findall(r"^up: (sink .*)$", log, re.M)
    print(f"soak: {wall / 60:.1f} min wall, up exit {rc}")
    print(f"  frames captured {captured} (camera outage: {camera_gap} frame(s) never exposed), written {written}, "
          f"reported lost {reported} {({k: v for k, v in lost.items() if k not in ('total', 'camera_gap') and v})}, "
          f"silently lost {silently}, partial files {len(partial)}")
    print(f"  workers SIGKILLed {kills}, restarted {restarts}; malformed messages sent {malformed_sent}, "
          f"counted {report.get('malformed')} (a well-formed READY/HB under a new name is a new worker, "
          f"not malformed), sink drops {report['dropped']['by_reason']}")
    print(f"  services at the end: {exits[-1] if exits else '?'}"
          + (" (the sink exits 1 whenever frames were lost, the camera's outage included)" if lost["total"] else ""))
    print("  peak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items())))
    return 0 if silently == 0 and not partial else 1


if __name__ == "__main__":
    sys.exit(main())
