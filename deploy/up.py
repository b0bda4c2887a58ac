"""``hdrstream up``: the whole graph of a deployment file as local processes (no Docker).

Starts the sink, N inference workers, preprocess and capture (downstream first, so nothing
is sent before someone listens), waits for the stream to end at the sink, then sends the
idle workers SIGTERM. A worker that dies is reported and its work moves to the others (the
dispatcher's job); the run's exit code is that of capture, preprocess and sink. Ctrl-C
drains: capture ends the stream and everything downstream flushes; again stops everything.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

WORKER_STOP_S = 30.0  # how long idle workers get to exit after SIGTERM


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen

    @property
    def rc(self) -> int | None:
        return self.popen.poll()


def _describe(rc: int | None) -> str:
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


def start(config: str, workers: int | None = None, env: dict[str, str] | None = None,
          verbose: int = 0) -> list[Proc]:
    """Start every service of ``config``; returns them sink, workers…, preprocess, capture."""
    from deploy import deployment

    dep = deployment.load(config)  # fail here, not in five child processes
    n = workers or dep.graph.workers
    base = [sys.executable, "-m", "deploy.cli", *(["-v"] * verbose), "serve"]
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    procs: list[Proc] = []

    def spawn(name: str, *args: str, extra: dict[str, str] | None = None) -> None:
        popen = subprocess.Popen([*base, *args, "--config", str(config)], env={**env, **(extra or {})})
        procs.append(Proc(name, popen))
        log.info("started %s (pid %d)", name, popen.pid)

    spawn("sink", "sink")
    for i in range(n):
        port = dep.graph.infer_metrics_port
        spawn(f"infer-{i}", "infer", "--worker-index", str(i),
              extra={"HDRSTREAM_GRAPH_INFER_METRICS_PORT": str(port + i if port else 0)})
    spawn("preprocess", "preprocess")
    spawn("capture", "capture")
    return procs


def run(config: str, workers: int | None = None, env: dict[str, str] | None = None, verbose: int = 0) -> int:
    procs = start(config, workers, env, verbose)
    by_name = {p.name: p for p in procs}
    core = [by_name["capture"], by_name["preprocess"], by_name["sink"]]
    interrupts = 0
    reported: set[str] = set()
    try:
        while any(p.rc is None for p in core):
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 1:
                    print("up: draining (Ctrl-C again to stop everything)", file=sys.stderr)
                    _signal(by_name["capture"], signal.SIGTERM)
                else:
                    print("up: stopping everything", file=sys.stderr)
                    for p in procs:
                        _signal(p, signal.SIGTERM if interrupts == 2 else signal.SIGKILL)
            for p in procs:
                if p.rc is not None and p.name not in reported:
                    reported.add(p.name)
                    level = logging.INFO if p.rc == 0 else logging.ERROR
                    log.log(level, "%s: %s", p.name, _describe(p.rc))
                    if p.name.startswith("infer") and p.rc != 0:
                        print(f"up: {p.name} {_describe(p.rc)}; its work goes to the other workers",
                              file=sys.stderr)
            if by_name["sink"].rc is not None and any(p.rc is None for p in core):
                print("up: the sink has exited; stopping the rest", file=sys.stderr)
                for p in core:
                    _signal(p, signal.SIGTERM)
    finally:
        workers_ = [p for p in procs if p.name.startswith("infer")]
        for p in workers_:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_S
        for p in procs:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not exit; killing it", p.name)
                p.popen.kill()
                p.popen.wait()
    print("up: " + ", ".join(f"{p.name} {_describe(p.rc)}" for p in procs))
    return 0 if all(p.rc == 0 for p in core) else 1


def _signal(p: Proc, sig: int) -> None:
    if p.rc is None:
        try:
            p.popen.send_signal(sig)
        except ProcessLookupError:
            pass
