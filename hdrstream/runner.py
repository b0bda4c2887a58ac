"""Drive a source or a stage between sockets: the same loop in-process and as a service.

The loops own the failure policy: a bad message or a stage error on one frame is
counted and logged and the stream goes on; a source that fails ends the stream with an
``eos`` that says why, so everything downstream still flushes and reports.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from hdrstream.frame import Frame, eos
from hdrstream.metrics import StageMetrics
from hdrstream.stage import Source, Stage
from hdrstream.transport import Receiver, Sender

log = logging.getLogger(__name__)
EOS_TIMEOUT_S = 30.0  # how long a finished loop waits for downstream to take its eos
BEHIND_S = 1.0  # a source that waited this long in all for downstream says so (once)
MAX_NAMED = 10_000  # unreadable frames or gap ranges listed one by one in an eos


@dataclass
class LoopStats:
    """What one loop did; services export these, the embedded pipeline reports them."""

    received: int = 0
    sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failure: str | None = None  # why a source stopped early, if it did
    blocked_s: float = 0.0  # a source: time spent waiting for downstream to take frames


def _send_all(frames, sender: Sender | None, stop: threading.Event, stats: LoopStats,
              metrics: StageMetrics | None = None) -> None:
    if sender is None:
        return
    for i, out in enumerate(frames):
        if not sender.send(out, stop=stop):
            stats.errors["not sent (stopped)"] += 1
            log.warning("%s seq %d not sent: shutting down", out.kind, out.seq)
            if metrics is not None:
                metrics.drop("not_sent", len(frames) - i)
            return
        stats.sent += 1
        if metrics is not None:
            metrics.sent.inc()


def run_source(
    source: Source,
    sender: Sender,
    stop: threading.Event,
    stats: LoopStats | None = None,
    metrics: StageMetrics | None = None,
) -> LoopStats:
    """Publish every frame of ``source``, then one eos carrying the count and any failure.

    ``metrics`` (optional) counts frames produced and sent, frames not sent at shutdown,
    the time to produce each frame and, for host-clock frames, capture-to-sent latency.
    """
    stats = stats or LoopStats()
    next_seq, first_seq, stream = 0, None, source.name
    behind_said = False
    t_start = time.perf_counter()
    frames = iter(source.frames())
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            # time to produce the frame: render/read/grab (includes real-time pacing waits)
            frame.meta.setdefault("timing", {}).setdefault("capture", time.perf_counter() - t0)
            # when the camera handed it over, on the host's wall clock: end-to-end latency
            # across processes (and machines with synchronised clocks)
            frame.meta.setdefault("wall_ns", time.time_ns())
            stream, next_seq = frame.stream, frame.seq + 1
            first_seq = frame.seq if first_seq is None else first_seq
            stats.received += 1
            if metrics is not None:
                metrics.frames.inc()
                metrics.processing.observe(time.perf_counter() - t0)
            if metrics is not None:  # before the send: a stage downstream may handle the frame first
                metrics.observe_age(frame)
            t_send = time.perf_counter()
            if not sender.send(frame, stop=stop):
                if metrics is not None:
                    metrics.drop("not_sent")
                break
            stats.blocked_s += time.perf_counter() - t_send
            if stats.blocked_s > BEHIND_S and not behind_said:
                behind_said = True  # once: a live view should not drown in this line
                log.warning("%s: the pipeline is slower than the source: it waited %.1f s for downstream over %d "
                            "frame(s); a live camera's driver drops what does not fit (reported as camera gaps), "
                            "a simulated or recorded one slows down", source.name, stats.blocked_s, stats.sent + 1)
            stats.sent += 1
            if metrics is not None:
                metrics.sent.inc()
    except Exception as exc:  # a camera that vanishes or a folder that breaks mid-way
        stats.failure = f"{type(exc).__name__}: {exc}"
        log.error("source %s failed after %d frames: %s", source.name, stats.sent, stats.failure)
    finally:
        source.close()
    wall = time.perf_counter() - t_start
    if behind_said and wall > 0:
        log.warning("%s: %d frame(s) in %.1f s: %.2f frames/s sustained, %.1f s of it waiting for downstream",
                    source.name, stats.sent, wall, stats.sent / wall, stats.blocked_s)
    meta = {"count": stats.sent, "first_seq": first_seq if first_seq is not None else next_seq}
    unreadable = getattr(source, "unreadable", None)  # frames a folder could not read: skipped, named
    if unreadable:
        meta["unreadable"] = unreadable[:MAX_NAMED]
        meta["first_seq"] = min(meta["first_seq"], unreadable[0]["seq"])
        next_seq = max(next_seq, unreadable[-1]["seq"] + 1)
    source_gaps = getattr(source, "source_gaps", None)  # seqs a camera knows it never delivered
    if source_gaps:
        meta["source_gaps"] = [list(r) for r in source_gaps[:MAX_NAMED]]
    if stats.failure:
        meta["error"] = stats.failure
    if not sender.send(eos(stream, next_seq, **meta), timeout_s=EOS_TIMEOUT_S):
        log.error("%s: end of stream not delivered within %.0f s", source.name, EOS_TIMEOUT_S)
    return stats


def run_stage(
    stage: Stage,
    receiver: Receiver,
    sender: Sender | None,
    stop: threading.Event,
    stats: LoopStats | None = None,
    metrics: StageMetrics | None = None,
) -> LoopStats:
    """Feed ``stage`` until eos (or ``stop``); errors on one frame never end the loop.

    ``metrics`` (optional) counts messages handled and sent, drops by reason (``malformed``
    input, stage ``error``, ``not_sent`` at shutdown), the stage's time per message and,
    for host-clock frames, capture-to-handled latency.
    """
    stats = stats or LoopStats()
    malformed = _MalformedWatch(receiver, metrics)
    while not stop.is_set():
        frame = receiver.recv(timeout_s=0.2)
        malformed.update()
        if frame is None:
            continue
        stats.received += 1
        if frame.kind == "eos":
            # what this stage could not read travels on, so report.json counts it per stage
            frame.meta["malformed"] = {**frame.meta.get("malformed", {}),
                                       stage.name: sum(getattr(receiver, "malformed", {}).values())}
            # the stage sees the eos first (the sink learns the expected seq range), then flushes
            _send_all(_guarded(lambda f=frame: [*stage.process(f), *stage.finish()], stage, frame, stats, metrics),
                      sender, stop, stats, metrics)
            if sender is not None and not sender.send(frame, timeout_s=EOS_TIMEOUT_S):
                log.error("%s: end of stream not delivered within %.0f s", stage.name, EOS_TIMEOUT_S)
            break
        try:
            t0 = time.perf_counter()
            outputs = _guarded(lambda f=frame: stage.process(f), stage, frame, stats, metrics)
            if metrics is not None:
                metrics.processing.observe(time.perf_counter() - t0)
                metrics.frames.inc()
                metrics.observe_age(frame)
            _send_all(outputs, sender, stop, stats, metrics)
        except Exception as exc:  # a bug in handling one message costs that message, not the stage
            stats.errors[f"loop: {type(exc).__name__}"] += 1
            log.exception("%s: handling %s seq %d failed; message dropped", stage.name, frame.kind, frame.seq)
            if metrics is not None:
                metrics.drop("error")
    malformed.update()
    for reason, n in receiver.malformed.items():
        stats.errors[f"malformed: {reason}"] = n
    return stats


class _MalformedWatch:
    """Moves the receiver's malformed count into the metrics as it grows, not only at the end."""

    def __init__(self, receiver: Receiver, metrics: StageMetrics | None) -> None:
        self.receiver, self.metrics = receiver, metrics
        self.seen = self._total()

    def _total(self) -> int:
        return sum(getattr(self.receiver, "malformed", {}).values()) if self.metrics is not None else 0

    def update(self) -> None:
        if self.metrics is not None:
            total = self._total()
            self.metrics.drop("malformed", total - self.seen)
            self.seen = total


def _guarded(call, stage: Stage, frame: Frame, stats: LoopStats, metrics: StageMetrics | None) -> list[Frame]:
    try:
        return list(call())
    except Exception as exc:
        reason = type(exc).__name__
        stats.errors[reason] += 1
        log.exception("%s failed on %s seq %d (%s); frame dropped", stage.name, frame.kind, frame.seq, exc)
        if metrics is not None:
            metrics.drop("error")
        return []
