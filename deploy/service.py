"""Each stage as its own process over tcp://, with the same objects and loops as embedded.

Two ways to start one: flags (``hdrstream capture|preprocess|infer|sink …``, handy by hand)
or the deployment file (``hdrstream serve <stage> --config FILE``, what ``hdrstream up``
and docker-compose use). Both land in the same ``serve_*`` functions. Defaults chain on
loopback: capture binds :5550; preprocess connects to it and deals windows to the
inference workers from :5551 (:mod:`deploy.dispatch`); every worker connects there and
to the sink, which binds :5552. Binding anywhere but 127.0.0.1 must be asked for
explicitly with the endpoint.

Signals: the first SIGTERM/SIGINT drains (a camera ends its stream with an eos; a stage
goes on until the eos passes or its input has been idle a few seconds; a worker finishes
the chunks in hand); a second one stops at once.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from hdrstream.runner import LoopStats, run_source, run_stage
from hdrstream.transport import FLUSH_S, Receiver, Sender, shutdown

log = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "infer", "sink")
DRAIN_IDLE_S = 5.0  # draining: a stage whose input stays quiet this long stops
SINK_DRAIN_EXTRA_S = 10.0  # the sink waits this much longer (the dispatcher's last eos)


# -- signals -----------------------------------------------------------------------------


class Signals:
    """``drain`` on the first SIGTERM/SIGINT, ``stop`` on the second."""

    def __init__(self) -> None:
        self.drain = threading.Event()
        self.stop = threading.Event()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        if self.drain.is_set():
            log.warning("signal %d again: stopping now", signum)
            self.stop.set()
        else:
            log.warning("signal %d: draining (again to stop now)", signum)
            self.drain.set()

    def stop_when_idle(self, stats: LoopStats, idle_s: float = DRAIN_IDLE_S) -> None:
        """While draining, set ``stop`` once ``stats.received`` has not moved for ``idle_s``."""

        def watch() -> None:
            self.drain.wait()
            seen, since = stats.received, time.monotonic()
            while not self.stop.is_set():
                time.sleep(0.2)
                if stats.received != seen:
                    seen, since = stats.received, time.monotonic()
                elif time.monotonic() - since > idle_s:
                    log.warning("draining: no input for %.0f s; stopping", idle_s)
                    self.stop.set()

        threading.Thread(target=watch, name="drain-watch", daemon=True).start()


def _report(name: str, stats: LoopStats) -> int:
    log.info("%s: received %d, sent %d, errors %s", name, stats.received, stats.sent, dict(stats.errors))
    if stats.failure:
        print(f"{name}: {stats.failure}", file=sys.stderr)
        return 1
    return 0


def finished(rc: int, server=None) -> int:
    """Flush what is still queued (bounded by each socket's linger) before the process ends."""
    if server is not None:
        server.close()
    shutdown()
    return rc


def start_metrics(stage: str, port: int, host: str = "127.0.0.1"):
    """This service's metrics and their HTTP server (None when ``port`` is 0)."""
    from hdrstream.metrics import StageMetrics, serve_metrics

    metrics = StageMetrics(stage)
    server = serve_metrics(port, host) if port else None
    if server is not None:
        log.info("%s: metrics at %s", stage, server.url)
    return metrics, server


# -- the services ------------------------------------------------------------------------


def serve_capture(source, out: str, policy: str = "block", queue: int = 8, metrics_port: int = 0,
                  metrics_host: str = "127.0.0.1") -> int:
    """Publish a camera's frames; a drain signal ends the stream with an eos."""
    signals = Signals()
    metrics, server = start_metrics("capture", metrics_port, metrics_host)
    sender = Sender(out, bind=True, policy=policy, queue=queue, metrics=metrics)
    try:
        rc = _report("capture", run_source(source, sender, signals.drain, metrics=metrics))
    finally:
        sender.close(flush_s=FLUSH_S)
    return finished(rc, server)


def serve_preprocess(stage, inp: str, work: str, sink: str, dispatch=None, metrics_port: int = 0,
                     metrics_host: str = "127.0.0.1") -> int:
    """Frames in, windows dealt to the inference workers; waits for them to finish the stream."""
    from deploy.dispatch import Dispatcher
    from hdrstream.metrics import StageMetrics

    signals = Signals()
    metrics, server = start_metrics("preprocess", metrics_port, metrics_host)
    receiver = Receiver(inp, bind=False)
    dispatcher = Dispatcher(work, sink, dispatch, metrics=StageMetrics("dispatch"),
                            on_failure=lambda why: signals.stop.set())
    stats = LoopStats()
    signals.stop_when_idle(stats)
    try:
        rc = _report(stage.name, run_stage(stage, receiver, dispatcher, signals.stop, stats, metrics=metrics))
        while not dispatcher.wait(0.5) and not signals.stop.is_set():
            pass  # the workers are still on the last chunks
        if dispatcher.failure is not None:  # exit non-zero so up/compose restart us or the run fails
            print(f"preprocess: {dispatcher.failure}", file=sys.stderr)
            rc = 3
        d = dispatcher.stats
        log.info("dispatch: %d chunk(s) done, %d re-dispatched, %d worker(s) lost, %d seq(s) given up",
                 d.chunks_done, d.redispatched, d.workers_lost, len(d.failed_seqs))
    finally:
        receiver.close()
        dispatcher.close()
    return finished(rc, server)


def serve_infer(stage, work: str, out: str, dispatch=None, name: str | None = None, metrics_port: int = 0,
                metrics_host: str = "127.0.0.1") -> int:
    """One inference worker: chunks from the dispatcher, HDR frames to the sink."""
    from deploy.worker import Worker

    signals = Signals()
    metrics, server = start_metrics("infer", metrics_port, metrics_host)
    worker = Worker(stage, work, out, dispatch, name=name, metrics=metrics)
    try:
        stats = worker.run(signals.drain)
    except RuntimeError as exc:
        print(f"infer: {exc}", file=sys.stderr)
        return finished(1, server)
    log.info("worker %s: %d chunk(s), %d window(s), %d sent, errors %s", worker.name, stats.chunks,
             stats.windows, stats.sent, dict(stats.errors))
    return finished(0 if stats.failure is None else 1, server)


def serve_sink(sink, inp: str, grace_s: float = 10.0, metrics_port: int = 0, metrics_host: str = "127.0.0.1") -> int:
    """HDR frames in (from any number of workers), files out; a report even when stopped early."""
    from deploy.dispatch import EosHold

    signals = Signals()
    metrics, server = start_metrics("sink", metrics_port, metrics_host)
    receiver = EosHold(Receiver(inp, bind=True), grace_s)
    stats = LoopStats()
    # outwait preprocess, which drains for DRAIN_IDLE_S and then sends the dispatcher's final eos
    # naming every window it had to give up: the report must hear of them
    signals.stop_when_idle(stats, DRAIN_IDLE_S + SINK_DRAIN_EXTRA_S)
    done = threading.Event()
    threading.Thread(target=_sink_gauges, args=(sink, metrics, receiver, done), daemon=True).start()
    try:
        rc = _report("sink", run_stage(sink, receiver, None, signals.stop, stats, metrics=metrics))
    finally:
        receiver.close()
        sink.finish()  # no-op after an eos; otherwise the report of what did arrive
        done.set()
        _sink_gauges(sink, metrics, receiver, None)
    print(sink.summary())
    lost = sink.report()["lost"]
    if lost["total"]:  # a run that lost frames must not look like a clean one
        print(f"sink: {lost['total']} frame(s) lost: {lost}", file=sys.stderr)
        rc = rc or 1
    return finished(rc, server)


def _sink_gauges(sink, metrics, receiver, done: threading.Event | None) -> None:
    """What the sink knows about the stream, as gauges (every second; once when ``done`` is None)."""
    gaps = metrics.gauge("gaps", "Seqs declared lost (never written)")
    owed = metrics.gauge("owed_frames", "Frames the end of stream announced that have not arrived")
    dup = metrics.gauge("duplicates", "HDR frames received more than once (re-dispatched work)")
    written = metrics.gauge("frames_written", "HDR frames written (main method)")
    while True:
        try:
            r = sink.report()
            gaps.set(r["gap_count"])
            dup.set(r["duplicates"])
            written.set(r["frames_out"])
            owed.set(len(receiver.owed()))
        except Exception:  # gauges are best effort; never take the sink down
            log.debug("sink gauges failed", exc_info=True)
        if done is None or done.wait(1.0):
            return


def serve(stage: str, deployment, worker_index: int = 0) -> int:
    """Run ``stage`` as the deployment file describes."""
    g = deployment.graph
    host = g.metrics_host
    if stage == "capture":
        return serve_capture(deployment.camera(), g.capture_out, g.capture_policy, g.capture_queue,
                             g.capture_metrics_port, host)
    if stage == "preprocess":
        return serve_preprocess(deployment.preprocessor(), g.preprocess_in, g.work, g.dispatch_sink,
                                deployment.dispatch, g.preprocess_metrics_port, host)
    if stage == "infer":
        from deploy.worker import worker_name

        return serve_infer(deployment.infer_stage(), g.worker_in, g.worker_out, deployment.dispatch,
                           name=f"{worker_name()}-{worker_index}", metrics_port=g.infer_metrics_port,
                           metrics_host=host)
    if stage == "sink":
        return serve_sink(deployment.sink_stage(), g.sink_in, g.sink_grace_s, g.sink_metrics_port, host)
    raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")


# -- command line ------------------------------------------------------------------------


def add_service_parsers(sub) -> None:
    from capture.cameras import add_camera_args
    from deploy.deployment import GraphConfig
    from infer.reconstructor import add_network_args

    g = GraphConfig()
    c = sub.add_parser("capture", help="service: a camera publishing frames")
    c.add_argument("--out", default=g.capture_out)
    c.add_argument("--policy", choices=("block", "drop-oldest"), default=g.capture_policy,
                   help="when downstream is behind: wait (nothing dropped) or drop the oldest frame (live view)")
    c.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics on this port (0: off)")
    add_camera_args(c)
    c.set_defaults(func=_flags_capture)

    p = sub.add_parser("preprocess", help="service: frames -> aligned windows, dealt to the inference workers")
    p.add_argument("--in", dest="inp", default=g.preprocess_in)
    p.add_argument("--out", default=g.work, help="where the workers connect for windows")
    p.add_argument("--sink", default=g.dispatch_sink, help="the sink, for the end of stream")
    p.add_argument("--crf", default="gamma2.2")
    p.add_argument("--no-align", action="store_true")
    p.add_argument("--scale", type=float, default=1.0, help="reduced live mode (see hdrstream live --help)")
    p.add_argument("--chunk", type=int, default=4, help="consecutive windows per unit of work")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics on this port (0: off)")
    p.set_defaults(func=_flags_preprocess)

    i = sub.add_parser("infer", help="service: windows -> HDR frames (run N of these)")
    i.add_argument("--in", dest="inp", default=g.worker_in)
    i.add_argument("--out", default=g.worker_out)
    i.add_argument("--method", default="classical", help="reconstructor: classical | net | coarse | reference")
    i.add_argument("--compare", default="")
    add_network_args(i)
    i.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics on this port (0: off)")
    i.set_defaults(func=_flags_infer)

    s = sub.add_parser("sink", help="service: HDR frames -> EXR files, previews, report")
    s.add_argument("out_dir")
    s.add_argument("--in", dest="inp", default=g.sink_in)
    s.add_argument("--gt", default=None)
    s.add_argument("--method", default=None, help="main method (default: the first one seen)")
    s.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics on this port (0: off)")
    s.add_argument("--web-port", type=int, default=None, help="live browser preview on this port (0: any free)")
    s.add_argument("--web-host", default="127.0.0.1", help="where the preview listens (anything else is explicit)")
    s.set_defaults(func=_flags_sink)

    v = sub.add_parser("serve", help="run one service as a deployment file describes (deploy/hdrstream.toml)")
    v.add_argument("stage", choices=STAGES)
    v.add_argument("--config", required=True, help="deployment TOML; HDRSTREAM_<TABLE>_<FIELD> overrides")
    v.add_argument("--worker-index", type=int, default=0, help="infer: this worker's number (names, ports)")
    v.set_defaults(func=_serve_config)


def _serve_config(args: argparse.Namespace) -> int:
    from deploy import deployment

    return serve(args.stage, deployment.load(args.config), args.worker_index)


def _flags_capture(args: argparse.Namespace) -> int:
    from capture.cameras import open_camera

    return serve_capture(open_camera(args), args.out, args.policy, metrics_port=args.metrics_port)


def _flags_preprocess(args: argparse.Namespace) -> int:
    from deploy.dispatch import DispatchConfig
    from preprocess.stage import PreprocessConfig, Preprocessor

    stage = Preprocessor(PreprocessConfig(crf=args.crf, align=not args.no_align, scale=args.scale))
    return serve_preprocess(stage, args.inp, args.out, args.sink, DispatchConfig(chunk=args.chunk),
                            metrics_port=args.metrics_port)


def _flags_infer(args: argparse.Namespace) -> int:
    from infer.reconstructor import denoise_option
    from infer.stage import InferStage

    compare = [m for m in args.compare.split(",") if m]
    stage = InferStage(method=args.method, compare=compare, device=args.device, precision=args.precision,
                       tile=args.tile, denoise=denoise_option(args), learned_denoise=not args.no_learned_denoise)
    return serve_infer(stage, args.inp, args.out,
                       metrics_port=args.metrics_port)


def _flags_sink(args: argparse.Namespace) -> int:
    from sink.stage import Sink, SinkConfig

    sink = Sink(SinkConfig(out_dir=args.out_dir, gt_dir=args.gt, main_method=args.method, web_port=args.web_port,
                           web_host=args.web_host))
    return serve_sink(sink, args.inp, metrics_port=args.metrics_port)
