"""The headless deployment: `hdrstream up` with N workers, faults injected, nothing lost silently."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import msgpack
import pytest
import zmq

from deploy.deployment import Deployment, loopback_graph
from deploy.deployment import load as load_deployment
from deploy.dispatch import DispatchConfig


def write_config(tmp_path, frames: int, workers: int = 2, realtime: bool = True, width: int = 96, height: int = 64,
                 window_dtype: str = "float32", **dispatch) -> tuple:
    out = tmp_path / "out"
    d = {"chunk": 4, "heartbeat_s": 0.2, "dead_after_s": 1.5, **dispatch}
    graph, ports = loopback_graph(workers, ("preprocess", "sink"), sink_grace_s=5.0)
    text = f"""
{graph}[sim]
width = {width}
height = {height}
frames = {frames}
fps = 25.0
realtime = {str(realtime).lower()}
[preprocess]
align = false
window_dtype = "{window_dtype}"
[dispatch]
{chr(10).join(f"{k} = {v}" for k, v in d.items())}
[sink]
out_dir = "{out}"
preview = false
video = false
"""
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path, out, ports


def test_shipped_deployment_file_loads_and_env_overrides_it(monkeypatch):
    dep = load_deployment("deploy/hdrstream.toml")
    assert dep.graph.workers == 2 and dep.graph.sink_in.startswith("@tcp://127.0.0.1:")
    monkeypatch.setenv("HDRSTREAM_GRAPH_WORKERS", "5")
    monkeypatch.setenv("HDRSTREAM_DISPATCH_CHUNK", "8")
    dep = load_deployment("deploy/hdrstream.toml")
    assert dep.graph.workers == 5 and dep.dispatch.chunk == 8
    monkeypatch.setenv("HDRSTREAM_GRAPH_CAMERA", "webcam")
    with pytest.raises(ValueError, match="camera"):
        load_deployment("deploy/hdrstream.toml")


def test_bad_deployment_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[graph]\nworkerz = 2\n")
    with pytest.raises(ValueError, match="workerz"):
        load_deployment(bad)
    bad.write_text("[grpah]\n")
    with pytest.raises(ValueError, match="grpah"):
        load_deployment(bad)
    with pytest.raises(ValueError):
        DispatchConfig(dead_after_s=0.1, heartbeat_s=0.5)


def exr_stems(out) -> list[str]:
    return sorted(p.stem for p in out.glob("*.exr"))


def inject_malformed(ports: dict) -> None:
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)  # into the sink: not the frame protocol
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(f"tcp://127.0.0.1:{ports['sink']}")
    push.send_multipart([b"\x93garbage", b"12345"])
    push.send_multipart([msgpack.packb({"v": 99, "kind": "hdr"}), b""])
    dealer = ctx.socket(zmq.DEALER)  # into the dispatcher: not a worker message
    dealer.setsockopt(zmq.LINGER, 2000)
    dealer.connect(f"tcp://127.0.0.1:{ports['work']}")
    dealer.send_multipart([b"READY", b"\xc1not msgpack"])
    time.sleep(0.3)
    push.close()
    dealer.close()


def scrape(port: int) -> dict[str, float]:
    """name{labels} -> value of a Prometheus text page, or {} if it does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def start_up_and_kill_worker_0(config, out, after_exrs: int, verbose: bool = False):
    """`hdrstream up` as a process group, its output collected; SIGKILL worker 0 once
    ``after_exrs`` frames are written (mid-stream, with chunks in hand). Returns (up, lines, reader)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen([sys.executable, "-m", "deploy.cli", *(["-v"] if verbose else []), "up", "--config",
                           str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while len(exr_stems(out)) < after_exrs and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.05)
        assert up.poll() is None, "the stream ended before the fault could be injected"
        workers = subprocess.run(["pgrep", "-f", f"serve infer --worker-index 0 --config {config}"],
                                 capture_output=True, text=True).stdout.split()
        assert len(workers) == 1, workers
        os.kill(int(workers[0]), signal.SIGKILL)
    except BaseException:
        os.killpg(up.pid, signal.SIGKILL)
        raise
    return up, lines, reader


def test_up_survives_a_killed_worker_and_malformed_messages(tmp_path):
    frames = 90
    # as fast as the CPU goes, frames big enough that the workers always hold chunks
    config, out, ports = write_config(tmp_path, frames, realtime=False, width=480, height=272)
    up, lines, reader = start_up_and_kill_worker_0(config, out, after_exrs=8, verbose=True)
    pre, snk = {}, {}
    try:
        inject_malformed(ports)
        # the metrics, while the services still run
        lost = "hdrstream_dispatch_workers_lost_total"
        malformed = 'hdrstream_sink_dropped_frames_total{reason="malformed"}'
        while up.poll() is None and not (pre.get(lost, 0) >= 1 and snk.get(malformed, 0) >= 2):
            pre = scrape(ports["preprocess_metrics"]) or pre
            snk = scrape(ports["sink_metrics"]) or snk
            time.sleep(0.1)
        rc = up.wait(timeout=180)
        reader.join(10)
        log = "".join(lines)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert rc == 0, log
    assert "infer-0 killed by SIGKILL" in log, log
    # the metrics counted what happened
    assert pre.get(lost, 0) >= 1, (pre, log)
    assert pre.get('hdrstream_dispatch_dropped_frames_total{reason="malformed"}', 0) >= 1, pre
    assert snk.get(malformed, 0) >= 2, snk
    assert pre.get("hdrstream_preprocess_frames_total", 0) > 8 and snk.get("hdrstream_sink_frames_total", 0) > 8
    assert pre.get("hdrstream_dispatch_frames_total", 0) > 8 and pre.get("hdrstream_dispatch_sent_total", 0) > 8, pre
    report = json.loads((out / "report.json").read_text())
    written = exr_stems(out)
    gaps = [s for first, last in report["gaps"] for s in range(first, last + 1)]
    # every seq is written exactly once or listed as a gap
    assert sorted([int(s) for s in written] + gaps) == list(range(frames)), (written, gaps)
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*"))  # no partial files
    assert report["expected"] == {"first_seq": 0, "end_seq": frames}
    assert report["frames_out"] == len(written)
    # the survivor did the rest: the chunks in the dead worker's hands were dealt again
    assert gaps == [] and report["failed_seqs"] == [], log
    assert "malformed" in log


def test_up_restarts_the_only_worker_when_it_is_killed(tmp_path):
    """With the shipped deployment's codes windows (each frame once per chunk on the wire)."""
    frames = 60
    config, out, ports = write_config(tmp_path, frames, workers=1, realtime=True, window_dtype="codes")
    up, lines, reader = start_up_and_kill_worker_0(config, out, after_exrs=4)
    try:
        rc = up.wait(timeout=120)  # ends by itself: no Ctrl-C
        reader.join(10)
        log = "".join(lines)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert "infer-0 restarted (1/5" in log, log
    assert "live preview" not in log and "up: metrics at" in log  # where to look, said at the start
    report = json.loads((out / "report.json").read_text())
    assert rc == 0 and report["gaps"] == [] and report["frames_out"] == frames, log


def test_ctrl_c_twice_still_accounts_for_every_frame(tmp_path):
    """Stopped mid-stream: what the workers had not finished is reported lost, with the reason;
    nothing the camera sent is missing from both the EXRs and report.json; exit non-zero."""
    config, out, _ = write_config(tmp_path, 300, workers=1, realtime=False, width=480, height=272)
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log_file:
        # SIGINT back to its default: a shell's background job (CI, nohup) starts with it ignored
        up = subprocess.Popen([sys.executable, "-m", "deploy.cli", "up", "--config", str(config)],
                              stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while len(exr_stems(out)) < 8 and time.monotonic() < deadline and up.poll() is None:
                time.sleep(0.05)
            os.kill(up.pid, signal.SIGINT)  # drain: the camera ends the stream
            time.sleep(0.5)
            os.kill(up.pid, signal.SIGINT)  # stop everything
            rc = up.wait(timeout=120)
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
    log = log_path.read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["expected"] is not None, log  # the end of stream reached the sink
    end = report["expected"]["end_seq"]
    written = [int(s) for s in exr_stems(out)]
    gaps = [s for first, last in report["gaps"] for s in range(first, last + 1)]
    assert sorted(written + gaps) == list(range(end)), log
    assert rc == 1 and report["lost"]["total"] == len(gaps) > 0, log
    # most are windows the dispatcher gave up; a window preprocess could not hand over any more
    # when it was stopped is a gap too (never_arrived)
    assert report["lost"]["worker_failed"] > 0 and "stopped before a worker finished it" in log, log
