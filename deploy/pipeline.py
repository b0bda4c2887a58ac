"""The embedded default: the whole graph in one process, stages on threads, inproc:// sockets.

The stages are the same objects the services run, and they still talk only through the
frame protocol, so what works here works across machines. NumPy and OpenCV release the
GIL, so the threads overlap where the real work is.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hdrstream.frame import Frame
from hdrstream.runner import LoopStats, run_source, run_stage
from hdrstream.stage import Source, Stage
from hdrstream.transport import FLUSH_S, Receiver, Sender

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    stats: dict[str, LoopStats]
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(s.failure is None for s in self.stats.values())


class _Observed:
    """Calls ``on_frame`` for each frame a stage has handled (progress bars)."""

    def __init__(self, stage: Stage, on_frame: Callable[[Frame], None]):
        self.stage, self.on_frame, self.name = stage, on_frame, stage.name

    def process(self, frame: Frame) -> Iterable[Frame]:
        out = list(self.stage.process(frame))
        if frame.kind != "eos":
            self.on_frame(frame)
        return out

    def finish(self) -> Iterable[Frame]:
        return self.stage.finish()


def run_embedded(
    source: Source,
    stages: Sequence[Stage],
    on_output: Callable[[Frame], None] | None = None,
    hwm: int = 4,
) -> PipelineResult:
    """Run source → stages[0] → … → stages[-1] to the end of the stream."""
    run_id = uuid.uuid4().hex[:8]
    endpoints = [f"inproc://hdrstream-{run_id}-{stage.name}-{i}" for i, stage in enumerate(stages)]
    stop = threading.Event()  # hard stop: every loop exits now
    drain = threading.Event()  # soft stop: the source ends the stream, the rest flushes
    stats = {source.name: LoopStats(), **{s.name: LoopStats() for s in stages}}
    last = len(stages) - 1
    wired = [(_Observed(s, on_output) if (i == last and on_output) else s) for i, s in enumerate(stages)]
    # Receivers bind (inproc needs the binder to exist), so create them before any sender.
    receivers = [Receiver(ep, bind=True, hwm=hwm) for ep in endpoints]

    def guard(name: str, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except Exception:
                log.exception("%s loop crashed; stopping the pipeline", name)
                stats[name].failure = stats[name].failure or "crashed"
                drain.set()
                stop.set()

        return run

    def source_loop() -> None:
        sender = Sender(endpoints[0], bind=False, hwm=hwm)
        try:
            run_source(source, sender, drain, stats[source.name])
        finally:
            sender.close(flush_s=0 if stop.is_set() else FLUSH_S)

    def stage_loop(i: int) -> Callable[[], None]:
        def loop() -> None:
            sender = Sender(endpoints[i + 1], bind=False, hwm=hwm) if i < last else None
            try:
                run_stage(wired[i], receivers[i], sender, stop, stats[stages[i].name])
            finally:
                receivers[i].close()
                if sender is not None:
                    sender.close(flush_s=0 if stop.is_set() else FLUSH_S)

        return loop

    threads = [threading.Thread(target=guard(source.name, source_loop), name=source.name, daemon=True)]
    threads += [
        threading.Thread(target=guard(s.name, stage_loop(i)), name=s.name, daemon=True) for i, s in enumerate(stages)
    ]
    for t in threads:
        t.start()
    interrupted = False
    while any(t.is_alive() for t in threads):
        try:
            for t in threads:
                t.join(timeout=0.5)
        except KeyboardInterrupt:
            if interrupted:
                log.warning("second interrupt: stopping now without flushing")
                stop.set()
            else:
                log.warning("interrupted: ending the stream and flushing what is in flight (Ctrl-C again to abort)")
                drain.set()
            interrupted = True
    return PipelineResult(stats=stats, interrupted=interrupted)
