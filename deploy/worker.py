"""An inference worker: chunks of windows from the dispatcher, HDR frames to the sink.

Two threads, one socket each (ZeroMQ sockets are not thread-safe): the link thread
talks to the dispatcher (READY, heartbeats, DONE, BYE) and never blocks on compute, so a
worker busy for minutes on one window still counts as alive; the compute thread runs the
stage on each window and pushes its outputs to the sink, then reports the chunk done.
On SIGTERM the worker says BYE, finishes the chunks in hand and exits.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import zmq

from deploy.dispatch import BYE, DONE, HB, READY, WORK, DispatchConfig, decode_work
from hdrstream.frame import Frame, ProtocolError
from hdrstream.stage import Stage
from hdrstream.transport import FLUSH_S, Sender, context, parse_endpoint

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    chunks: int = 0
    windows: int = 0
    sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failure: str | None = None


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Runs ``stage`` on the windows the dispatcher at ``work`` deals; outputs go to ``out``."""

    def __init__(self, stage: Stage, work: str, out: str, cfg: DispatchConfig | None = None,
                 name: str | None = None, metrics=None) -> None:
        self.stage, self.cfg, self.metrics = stage, cfg or DispatchConfig(), metrics
        self.name = name or worker_name()
        self.stats = WorkerStats()
        self._work_endpoint, self._out_endpoint = work, out
        self._todo: queue.Queue[tuple[int, list[Frame]] | None] = queue.Queue()
        self._done: queue.Queue[int] = queue.Queue()
        self._busy = threading.Event()

    def run(self, stop: threading.Event) -> WorkerStats:
        """Until ``stop`` (then drain what is in hand); returns what was done."""
        compute = threading.Thread(target=self._compute, args=(stop,), name="infer-compute", daemon=True)
        compute.start()
        address, bind = parse_endpoint(self._work_endpoint, False)
        sock = context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        (sock.bind if bind else sock.connect)(address)
        slots = 1 + self.cfg.prefetch
        try:
            self._say(sock, READY, slots=slots)
            log.info("worker %s: ready for work from %s", self.name, address)
            last_hb = time.monotonic()
            in_hand = 0
            while not stop.is_set():
                if not compute.is_alive():  # go silent: the dispatcher moves our chunks
                    raise RuntimeError(f"worker {self.name}: compute thread died ({self.stats.failure})")
                if sock.poll(50, zmq.POLLIN):
                    in_hand += self._take_work(sock)
                in_hand -= self._report_done(sock)
                if time.monotonic() - last_hb >= self.cfg.heartbeat_s:
                    self._say(sock, HB)
                    last_hb = time.monotonic()
            # SIGTERM: take nothing new, finish what is in hand, say so
            self._say(sock, BYE)
            log.info("worker %s: stopping; finishing %d chunk(s) in hand", self.name, in_hand)
            self._todo.put(None)
            while compute.is_alive() or not self._done.empty():
                compute.join(timeout=self.cfg.heartbeat_s)
                self._report_done(sock)
                self._say(sock, HB)
        finally:
            sock.close()
        return self.stats

    # -- link thread ---------------------------------------------------------------------

    def _say(self, sock: zmq.Socket, kind: bytes, **body) -> None:
        sock.send_multipart([kind, msgpack.packb({"worker": self.name, **body})])

    def _take_work(self, sock: zmq.Socket) -> int:
        taken = 0
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return taken
            if parts[0].bytes != WORK:
                self.stats.errors["unknown message"] += 1
                self._drop("malformed")
                continue
            try:
                chunk, frames = decode_work(parts)
            except ProtocolError as exc:
                self.stats.errors["malformed work"] += 1
                self._drop("malformed")
                log.warning("worker %s: malformed work dropped: %s", self.name, exc)
                continue
            self._todo.put((chunk, frames))
            taken += 1

    def _report_done(self, sock: zmq.Socket) -> int:
        n = 0
        while True:
            try:
                chunk = self._done.get_nowait()
            except queue.Empty:
                return n
            self._say(sock, DONE, chunk=chunk)
            n += 1

    def _drop(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.drop(reason)

    # -- compute thread ------------------------------------------------------------------

    def _compute(self, stop: threading.Event) -> None:
        out = Sender(self._out_endpoint, bind=False)
        try:
            while True:
                item = self._todo.get()
                if item is None:
                    return
                chunk, frames = item
                for window in frames:
                    self.stats.windows += 1
                    t0 = time.perf_counter()
                    try:
                        outputs = list(self.stage.process(window))
                    except Exception as exc:
                        self.stats.errors[type(exc).__name__] += 1
                        log.exception("worker %s: %s failed on seq %d; frame dropped", self.name,
                                      self.stage.name, window.seq)
                        outputs = []
                        self._drop("error")
                    if self.metrics is not None:
                        self.metrics.processing.observe(time.perf_counter() - t0)
                        self.metrics.frames.inc()
                    for frame in outputs:
                        if out.send(frame, timeout_s=60.0):  # also while stopping: the chunk is in hand
                            self.stats.sent += 1
                            if self.metrics is not None:
                                self.metrics.sent.inc()
                                self.metrics.observe_age(frame)
                        else:
                            self.stats.errors["not sent"] += 1
                            self._drop("not_sent")
                            log.error("worker %s: seq %d not taken by the sink in 60 s", self.name, frame.seq)
                self.stats.chunks += 1
                self._done.put(chunk)
        except Exception as exc:
            self.stats.failure = f"{type(exc).__name__}: {exc}"
            log.exception("worker %s: compute thread failed", self.name)
        finally:
            out.close(flush_s=FLUSH_S)
