"""``hdrstream up``: the whole graph of a deployment file as local processes (no Docker).

Starts the sink, N inference workers, preprocess and capture (downstream first, so nothing
is sent before someone listens), waits for the stream to end at the sink, then sends the
idle workers SIGTERM. A worker that dies is reported, its work moves to the others (the
dispatcher's job) and it is started again after a back-off (a bounded number of times); if
no worker comes back, the dispatcher gives the waiting frames up after its
``no_worker_timeout_s`` and the run ends with them reported lost. The run's exit code is that
of capture, preprocess and sink (the sink's is non-zero when frames were lost). Ctrl-C
drains: capture ends the stream and everything downstream flushes; again stops everything,
and what was unfinished is still reported.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

WORKER_STOP_S = 30.0  # how long idle workers get to exit after SIGTERM
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # a dead worker's restarts, then it stays down
SINK_GRACE_S = 3.0  # after the sink exits, how long the others get to end by themselves


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    restart_at: float | None = None  # when a dead worker is due to start again

    def restart(self) -> None:
        self.popen = subprocess.Popen(self.argv, env=self.env)
        self.restarts += 1
        self.restart_at = None

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
        argv, penv = [*base, *args, "--config", str(config)], {**env, **(extra or {})}
        popen = subprocess.Popen(argv, env=penv)
        procs.append(Proc(name, popen, argv, penv))
        log.info("started %s (pid %d)", name, popen.pid)

    spawn("sink", "sink")
    for i in range(n):
        port = dep.graph.infer_metrics_port
        spawn(f"infer-{i}", "infer", "--worker-index", str(i),
              extra={"HDRSTREAM_GRAPH_INFER_METRICS_PORT": str(port + i if port else 0)})
    spawn("preprocess", "preprocess")
    spawn("capture", "capture")
    _say_where(dep, n)
    return procs


def _say_where(dep, workers: int) -> None:
    """Where a person looks while it runs: the preview, the metrics, the output folder."""
    g, sink = dep.graph, dep.sink

    def url(host: str, port: int, path: str = "/") -> str:
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"

    lines = [f"up: {workers} inference worker(s); output in {sink.out_dir}"]
    if sink.web_port:
        lines.append(f"up: live preview at {url(sink.web_host, sink.web_port)}")
    ports = [(name, port) for name, port in (("capture", g.capture_metrics_port),
                                             ("preprocess", g.preprocess_metrics_port),
                                             ("sink", g.sink_metrics_port)) if port]
    if g.infer_metrics_port:
        ports.append((f"infer-0..{workers - 1}", g.infer_metrics_port))
    if ports:
        lines.append("up: metrics at " + ", ".join(f"{name} {url(g.metrics_host, port, '/metrics')}"
                                                   for name, port in ports)
                     + (f" (+1 per worker)" if g.infer_metrics_port and workers > 1 else ""))
    print("\n".join(lines), file=sys.stderr, flush=True)


def run(config: str, workers: int | None = None, env: dict[str, str] | None = None, verbose: int = 0) -> int:
    procs = start(config, workers, env, verbose)
    by_name = {p.name: p for p in procs}
    core = [by_name["capture"], by_name["preprocess"], by_name["sink"]]
    interrupts = 0
    reported: set[int] = set()  # pids whose exit was reported
    sink_gone_at, stopping = 0.0, False
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
                if p.rc is not None and p.popen.pid not in reported:
                    reported.add(p.popen.pid)
                    level = logging.INFO if p.rc == 0 else logging.ERROR
                    log.log(level, "%s: %s", p.name, _describe(p.rc))
                    if p.name.startswith("infer") and p.rc != 0:
                        _schedule_restart(p, draining=interrupts > 0)
                if p.restart_at is not None and time.monotonic() >= p.restart_at and interrupts == 0:
                    p.restart()
                    print(f"up: {p.name} restarted ({p.restarts}/{len(RESTART_BACKOFF_S)}, pid {p.popen.pid})",
                          file=sys.stderr)
            if by_name["sink"].rc is not None and any(p.rc is None for p in core):
                # The others usually end on their own a moment later (the stream is over):
                # a SIGTERM that meets one while it exits kills it mid-shutdown, a false failure.
                sink_gone_at = sink_gone_at or time.monotonic()
                if not stopping and time.monotonic() - sink_gone_at >= SINK_GRACE_S:
                    stopping = True
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


def _schedule_restart(p: Proc, draining: bool) -> None:
    if draining:
        print(f"up: {p.name} {_describe(p.rc)} while draining; not restarted", file=sys.stderr)
    elif p.restarts < len(RESTART_BACKOFF_S):
        wait = RESTART_BACKOFF_S[p.restarts]
        p.restart_at = time.monotonic() + wait
        print(f"up: {p.name} {_describe(p.rc)}; its work goes to the other workers; restarting it in "
              f"{wait:.0f} s", file=sys.stderr)
    else:
        print(f"up: {p.name} {_describe(p.rc)} after {p.restarts} restarts; not restarted again (with no "
              f"worker left, the dispatcher reports the waiting frames lost)", file=sys.stderr)


def _signal(p: Proc, sig: int) -> None:
    if p.rc is None:
        try:
            p.popen.send_signal(sig)
        except ProcessLookupError:
            pass
