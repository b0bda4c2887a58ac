"""Background work for the sink: a few FIFO lanes, one thread each, with back-pressure.

EXR compression, preview encoding and metric computation are independent of each other
and release the GIL, so they overlap on separate threads (and with upstream inference
when the pipeline runs in one process). Each lane has exactly one worker, so jobs of a
lane run in submission (= seq) order, which the video, the tone mapper's temporal
smoothing and the flicker metric need. ``max_pending`` bounds the jobs in flight across
all lanes: ``submit`` waits for the oldest one rather than queueing without limit.
With ``threaded=False`` jobs run inline, in the caller's thread.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class Lanes:
    def __init__(self, names: tuple[str, ...], max_pending: int = 8, threaded: bool = True) -> None:
        self.max_pending = max(1, max_pending)
        self.threaded = threaded
        self._pools = {
            n: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{n}") for n in names
        } if threaded else {}
        self._names = names
        self._pending: deque[Future[Any]] = deque()

    def submit(self, lane: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on ``lane``; exceptions are the job's own business (log them there)."""
        if lane not in self._names:
            raise KeyError(f"no lane {lane!r}; lanes are {self._names}")
        if not self.threaded:
            fn(*args)
            return
        self._pending.append(self._pools[lane].submit(fn, *args))
        while len(self._pending) > self.max_pending:
            self._wait(self._pending.popleft())
        while self._pending and self._pending[0].done():
            self._wait(self._pending.popleft())

    def drain(self) -> None:
        """Wait until every submitted job has run."""
        while self._pending:
            self._wait(self._pending.popleft())

    def close(self) -> None:
        self.drain()
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        self._pools = {}
        self.threaded = False

    @staticmethod
    def _wait(fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:  # jobs catch their own errors; this is a bug guard
            log.error("sink: background job failed", exc_info=exc)
