"""Each stage as its own process over tcp://, with the same objects and loops as embedded.

Defaults chain on loopback: capture binds :5550, preprocess connects to it and binds :5551,
infer workers connect to both sides (so N of them can share the work), the sink binds :5552.
Binding anywhere but 127.0.0.1 must be asked for explicitly with the endpoint.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from hdrstream.runner import LoopStats, run_source, run_stage
from hdrstream.transport import FLUSH_S, Receiver, Sender, shutdown

log = logging.getLogger(__name__)

PORTS = {"capture": 5550, "preprocess": 5551, "infer": 5552}


def _ep(port: int, bind: bool) -> str:
    return f"{'@' if bind else '>'}tcp://127.0.0.1:{port}"


def add_service_parsers(sub) -> None:
    from capture.cameras import add_camera_args

    c = sub.add_parser("capture", help="service: a camera publishing frames")
    c.add_argument("--out", default=_ep(PORTS["capture"], True))
    add_camera_args(c)
    c.set_defaults(func=serve_capture)

    p = sub.add_parser("preprocess", help="service: frames -> aligned windows")
    p.add_argument("--in", dest="inp", default=_ep(PORTS["capture"], False))
    p.add_argument("--out", default=_ep(PORTS["preprocess"], True))
    p.add_argument("--crf", default="gamma2.2")
    p.add_argument("--no-align", action="store_true")
    p.set_defaults(func=serve_preprocess)

    i = sub.add_parser("infer", help="service: windows -> HDR frames (run N of these)")
    i.add_argument("--in", dest="inp", default=_ep(PORTS["preprocess"], False))
    i.add_argument("--out", default=_ep(PORTS["infer"], False))
    i.add_argument("--method", default="classical")
    i.add_argument("--compare", default="")
    i.set_defaults(func=serve_infer)

    s = sub.add_parser("sink", help="service: HDR frames -> EXR files, previews, report")
    s.add_argument("out_dir")
    s.add_argument("--in", dest="inp", default=_ep(PORTS["infer"], True))
    s.add_argument("--gt", default=None)
    s.add_argument("--method", default=None, help="main method (default: the first one seen)")
    s.set_defaults(func=serve_sink)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, _frame) -> None:
        log.warning("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _report(name: str, stats: LoopStats) -> int:
    log.info("%s: received %d, sent %d, errors %s", name, stats.received, stats.sent, dict(stats.errors))
    if stats.failure:
        print(f"{name}: {stats.failure}", file=sys.stderr)
        return 1
    return 0


def serve_capture(args: argparse.Namespace) -> int:
    from capture.cameras import open_camera

    source = open_camera(args)
    sender = Sender(args.out, bind=True)
    try:
        rc = _report("capture", run_source(source, sender, _stop_on_signals()))
    finally:
        sender.close(flush_s=FLUSH_S)
    return finished(rc)


def _serve(stage, args: argparse.Namespace, out_bind: bool | None) -> int:
    receiver = Receiver(args.inp, bind=False)
    sender = Sender(args.out, bind=out_bind) if out_bind is not None else None
    try:
        rc = _report(stage.name, run_stage(stage, receiver, sender, _stop_on_signals()))
    finally:
        receiver.close()
        if sender is not None:
            sender.close(flush_s=FLUSH_S)
    return finished(rc)


def serve_preprocess(args: argparse.Namespace) -> int:
    from preprocess.stage import PreprocessConfig, Preprocessor

    return _serve(Preprocessor(PreprocessConfig(crf=args.crf, align=not args.no_align)), args, out_bind=True)


def serve_infer(args: argparse.Namespace) -> int:
    from infer.stage import InferStage

    compare = [m for m in args.compare.split(",") if m]
    return _serve(InferStage(method=args.method, compare=compare), args, out_bind=False)


def serve_sink(args: argparse.Namespace) -> int:
    from sink.stage import Sink, SinkConfig

    sink = Sink(SinkConfig(out_dir=args.out_dir, gt_dir=args.gt, main_method=args.method))
    receiver = Receiver(args.inp, bind=True)
    try:
        rc = _report("sink", run_stage(sink, receiver, None, _stop_on_signals()))
    finally:
        receiver.close()
    print(sink.summary())
    return finished(rc)


def stage_main(stage: str) -> None:
    """``python -m <stage> ARGS`` == ``hdrstream <stage> ARGS``."""
    from hdrstream.cli import main

    sys.exit(main([stage, *sys.argv[1:]]))


def finished(rc: int) -> int:
    """Flush what is still queued (bounded by each socket's linger) before the process ends."""
    shutdown()
    return rc
