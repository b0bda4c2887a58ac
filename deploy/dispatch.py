"""Windows to N inference workers, in chunks, with nothing lost silently when a worker dies.

The preprocess service hands its windows to a :class:`Dispatcher` (it quacks like a
``Sender``). The dispatcher groups consecutive windows into chunks — a worker that gets
frames i..i+c-1 reuses the coarse results it computed for the overlapping windows —
and deals the chunks to the workers that announced themselves ready (ROUTER socket; the
workers of :mod:`deploy.worker` connect with DEALER sockets). Workers send their HDR
frames straight to the sink and tell the dispatcher when a chunk is done.

Faults: a worker whose heartbeats stop (dead) or that holds a chunk too long (stalled)
loses its chunks to the others; a chunk that fails ``retries`` times is given up and its
seqs travel in the final eos as ``failed``, so the sink reports them as gaps with a
reason. The eos goes from here straight to the sink once every chunk is done or given
up, with ``count``/``first_seq`` of the windows, so the sink knows what it is owed.

Wire format on the work socket (multipart, first part the message type)::

    worker → dispatcher  READY {worker, slots} | HB {worker} | DONE {worker, chunk} | BYE {worker}
    dispatcher → worker  WORK {chunk, seqs} header payload header payload …
                       | WORK {chunk, seqs, slots} header … header frame frame …

The second form carries each frame of a chunk once: windows whose frames are unwarped (codes
windows, ``defer_warp``) share them — consecutive windows of 2k+1 frames overlap in 2k — so
a chunk of 4 five-frame windows sends 8 frames, not 20. ``slots[i]`` lists, for window i,
which of the frames after the headers fill it, in order; the worker joins them into the
window's payload and decodes the window as if it had come whole.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import numpy as np
import zmq

from hdrstream.frame import Frame, ProtocolError, decode, encode
from hdrstream.seqranges import SeqRanges
from hdrstream.transport import FLUSH_S, Sender, context, parse_endpoint

log = logging.getLogger(__name__)

READY, HB, DONE, BYE, WORK = b"READY", b"HB", b"DONE", b"BYE", b"WORK"
ABANDON_EOS_S = 5.0  # when stopped mid-stream: how long the sink gets to take the final eos
MAX_SLOTS = 64  # chunks one worker may hold; more is a malformed READY, not a reason to hoard
MAX_WORKER_NAME = 256


class ControlError(ValueError):
    """A worker's control message that does not follow the wire format above."""


def parse_control(parts: list) -> tuple[bytes, bytes, str, dict]:
    """(route, kind, worker name, body) of a message from a worker; :class:`ControlError`
    for anything else, whatever the bytes."""
    if len(parts) not in (2, 3):
        raise ControlError(f"expected [route, kind, body], got {len(parts)} part(s)")
    route, kind = bytes(parts[0]), bytes(parts[1])
    if kind not in (READY, HB, DONE, BYE):
        raise ControlError(f"unknown message kind {kind[:16]!r}")
    if len(parts) < 3:
        raise ControlError(f"{kind.decode()} without a body")
    try:
        body = msgpack.unpackb(parts[2], raw=False, strict_map_key=True)
    except Exception as exc:
        raise ControlError(f"body is not msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise ControlError(f"body must be a map, got {type(body).__name__}")
    name = body.get("worker")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_WORKER_NAME:
        raise ControlError("body needs a worker name (a string)")
    slots = body.get("slots", 1)
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS:
        raise ControlError(f"slots must be an int in 1..{MAX_SLOTS}")
    if kind == DONE:
        chunk = body.get("chunk")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
            raise ControlError("DONE needs a chunk id (a non-negative int)")
    return route, kind, name, body


@dataclass
class DispatchConfig:
    """How work is dealt out and when a worker counts as lost (seconds)."""

    chunk: int = 4  # consecutive windows per unit of work
    prefetch: int = 1  # chunks waiting at a worker beyond the one it works on
    heartbeat_s: float = 0.5  # how often workers say they are alive
    dead_after_s: float = 5.0  # silence after which a worker is dead and its chunks move
    chunk_timeout_s: float = 300.0  # a chunk not done in this long: its worker is stalled
    retries: int = 2  # dispatches of a chunk beyond the first before its seqs are given up
    queue_chunks: int = 8  # chunks waiting for a worker before preprocess is held back
    # with work waiting and no worker for this long, the waiting seqs are given up (reported
    # lost, so the run ends instead of hanging); 0 waits for ever
    no_worker_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.prefetch < 0 or self.retries < 0 or self.queue_chunks < 1:
            raise ValueError("chunk and queue_chunks must be >= 1, prefetch and retries >= 0")
        if not (self.heartbeat_s > 0 and self.dead_after_s > self.heartbeat_s and self.chunk_timeout_s > 0):
            raise ValueError("need heartbeat_s > 0, dead_after_s > heartbeat_s, chunk_timeout_s > 0")


@dataclass
class _Chunk:
    id: int
    frames: list[Frame]
    attempts: int = 0
    worker: str | None = None
    sent_at: float = 0.0

    @property
    def seqs(self) -> list[int]:
        return [f.seq for f in self.frames]


@dataclass
class _Worker:
    name: str
    route: bytes
    slots: int
    last_seen: float
    chunks: dict[int, _Chunk] = field(default_factory=dict)
    leaving: bool = False  # said BYE: finishes what it has, gets nothing new
    served: float = 0.0  # when it was last given a chunk


@dataclass
class DispatchStats:
    chunks_sent: int = 0
    chunks_done: int = 0
    redispatched: int = 0
    workers_lost: int = 0
    failed_seqs: list[int] = field(default_factory=list)
    malformed: int = 0
    unknown_worker: int = 0  # DONE/BYE from a worker that is not registered
    errors: int = 0  # control messages whose handling failed (a bug): counted, dropped


class Dispatcher:
    """Deals windows to workers; ``send``/``close`` as a :class:`hdrstream.transport.Sender`.

    Args:
        work: endpoint the workers connect to (bound here, e.g. ``@tcp://127.0.0.1:5551``).
        sink: endpoint of the sink, for the final eos (e.g. ``>tcp://127.0.0.1:5552``).
        cfg: dispatch settings. metrics: optional :class:`hdrstream.metrics.StageMetrics`.
    """

    def __init__(self, work: str, sink: str, cfg: DispatchConfig | None = None, metrics=None,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg or DispatchConfig()
        self.failure: str | None = None  # why the dispatcher thread died, if it did
        self._on_failure = on_failure
        self.metrics = metrics
        self.stats = DispatchStats()
        address, bind = parse_endpoint(work, True)
        self._sock = context().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished worker is an error, not a black hole
        try:
            if bind:
                self._sock.bind(address)
            else:
                self._sock.connect(address)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise OSError(f"dispatcher cannot {'bind' if bind else 'connect'} {address}: {exc}") from None
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        self.endpoint = last.decode() if last else address
        self._sink_endpoint = sink
        self._inbox: queue.Queue[Frame] = queue.Queue(maxsize=self.cfg.chunk * self.cfg.queue_chunks)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._workers: dict[str, _Worker] = {}
        self._pending: deque[_Chunk] = deque()
        self._current: list[Frame] = []
        self._next_id = 0
        self._eos: Frame | None = None
        self._upstream_eos: Frame | None = None  # handed over by send(), taken after the inbox
        self._windows = 0
        self._first_seq: int | None = None
        self._last_seq, self._stream = -1, ""  # of the windows taken: to end a stream cut short
        self._no_worker_since: float | None = None
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)
        self._thread.start()

    # -- the Sender interface (called from the stage loop's thread) -----------------------

    def send(self, frame: Frame, timeout_s: float | None = None, stop: threading.Event | None = None) -> bool:
        """Queue one window, blocking while the workers are behind (back-pressure); the eos
        never blocks (it is taken once every window before it is), so a stream with no worker
        left still ends, and a stopped one still reports what it gave up."""
        if frame.kind == "eos":
            if self._done.is_set() or self.failure is not None:
                return False
            self._upstream_eos = frame
            self.sent += 1
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._done.is_set() or self.failure is not None:
                return False
            try:
                self._inbox.put(frame, timeout=0.1)
                self.sent += 1
                return True
            except queue.Full:
                pass
            if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline):
                return False

    def wait(self, timeout_s: float | None = None) -> bool:
        """Until the eos went out (every chunk done or given up); False on timeout."""
        return self._done.wait(timeout_s)

    def close(self, flush_s: float = 0.0) -> None:
        """Stop dealing, after waiting up to ``flush_s`` for a stream whose eos was sent to finish
        (use :meth:`wait` first to wait for the workers as long as they take)."""
        if flush_s > 0 and self.sent:
            self._done.wait(flush_s)
        self._stop.set()
        self._thread.join(timeout=ABANDON_EOS_S + FLUSH_S + 5.0)

    @property
    def workers(self) -> int:
        return sum(1 for w in self._workers.values() if not w.leaving)

    # -- the dispatcher thread -----------------------------------------------------------

    def _run(self) -> None:
        sink = Sender(self._sink_endpoint, bind=False)
        try:
            while not self._stop.is_set():
                self._receive()
                self._take_inbox()
                self._check_workers()
                self._deal()
                if self._eos is not None and not self._pending and not self._in_flight() and not self._current:
                    self._finish(sink)
                    return
                self._gauges()
            if self._windows or self._eos is not None or self._upstream_eos is not None or not self._inbox.empty():
                self._abandon(sink)  # stopped mid-stream: what is unfinished is reported, not lost silently
        except Exception as exc:  # a dead dispatcher must take its process with it, loudly
            self.failure = f"dispatcher thread died: {type(exc).__name__}: {exc}"
            log.exception("dispatcher failed")
            if self._on_failure is not None:
                self._on_failure(self.failure)
        finally:
            sink.close(flush_s=FLUSH_S)
            self._sock.close(linger=0)

    def _receive(self) -> None:
        if not self._sock.poll(20, zmq.POLLIN):
            return
        while True:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                route, kind, name, body = parse_control(parts)
            except ControlError as exc:
                self.stats.malformed += 1
                log.warning("dispatcher: malformed message from a worker dropped: %s", exc)
                self._count_drop("malformed")
                continue
            try:
                self._on_message(route, kind, name, body)
            except Exception:  # a bug in handling one message costs that message
                self.stats.errors += 1
                log.exception("dispatcher: handling %s from %s failed; message dropped", kind, name)
                self._count_drop("error")

    def _on_message(self, route: bytes, kind: bytes, name: str, body: dict) -> None:
        now = time.monotonic()
        w = self._workers.get(name)
        if w is None and kind in (READY, HB):  # new, or back after being declared lost
            slots = int(body.get("slots", 1 + self.cfg.prefetch))
            w = self._workers[name] = _Worker(name, route, slots, now)
            log.info("dispatcher: worker %s %s (%d worker(s))", name,
                     "ready" if kind == READY else "is back", self.workers)
        if w is None:  # DONE or BYE from nobody we know: no phantom worker
            self.stats.unknown_worker += 1
            log.warning("dispatcher: %s from unknown worker %r ignored", kind.decode(), name[:64])
            self._count_drop("unknown_worker")
            return
        w.route, w.last_seen = route, now
        if kind == DONE:
            chunk = w.chunks.pop(body["chunk"], None)
            if chunk is not None:
                self.stats.chunks_done += 1
                if self.metrics is not None:
                    self.metrics.counter("chunks_done", "Chunks of windows finished by a worker").inc()
        elif kind == BYE:
            w.leaving = True
            log.info("dispatcher: worker %s is leaving after %d chunk(s) in hand", name, len(w.chunks))
            if not w.chunks:
                del self._workers[name]

    def _take_inbox(self) -> None:
        while len(self._pending) < self.cfg.queue_chunks and self._eos is None:
            try:
                frame = self._inbox.get_nowait()
            except queue.Empty:
                # the eos is set after the last window was put: seen, and the inbox still
                # empty, every window before it has been taken
                if self._upstream_eos is not None and self._inbox.empty():
                    self._eos = self._upstream_eos
                    self._cut_chunk()
                return
            self._take(frame)
            if len(self._current) >= self.cfg.chunk:
                self._cut_chunk()

    def _take(self, window: Frame) -> None:
        """A window from the inbox into the chunk being filled, and into the stream's books."""
        self._windows += 1
        if self.metrics is not None:
            self.metrics.frames.inc()
        self._last_seq, self._stream = max(self._last_seq, window.seq), window.stream
        if self._first_seq is None:
            self._first_seq = window.seq
        self._current.append(window)

    def _cut_chunk(self) -> None:
        if self._current:
            self._pending.append(_Chunk(self._next_id, self._current))
            self._next_id += 1
            self._current = []

    def _deal(self) -> None:
        """Each chunk to the least busy worker; ties go to the one served longest ago."""
        while self._pending:
            free = [w for w in self._workers.values() if not w.leaving and len(w.chunks) < w.slots]
            if not free:
                return
            w = min(free, key=lambda w: (len(w.chunks), w.served))
            chunk = self._pending.popleft()
            if not self._send_chunk(w, chunk):
                self._pending.appendleft(chunk)

    def _send_chunk(self, w: _Worker, chunk: _Chunk) -> bool:
        parts: list = [w.route, WORK, *work_parts(chunk.id, chunk.frames)]
        try:
            self._sock.send_multipart(parts, copy=False)
        except zmq.ZMQError as exc:  # the worker's connection is gone
            log.warning("dispatcher: worker %s unreachable (%s)", w.name, exc)
            self._lose(w, "unreachable")
            return False
        chunk.attempts += 1
        chunk.worker, chunk.sent_at = w.name, time.monotonic()
        w.served = chunk.sent_at
        w.chunks[chunk.id] = chunk
        self.stats.chunks_sent += 1
        if self.metrics is not None:
            self.metrics.sent.inc(len(chunk.frames))
        return True

    def _check_workers(self) -> None:
        now = time.monotonic()
        for w in list(self._workers.values()):
            if now - w.last_seen > self.cfg.dead_after_s:
                self._lose(w, f"no heartbeat for {now - w.last_seen:.1f} s")
            elif any(now - c.sent_at > self.cfg.chunk_timeout_s for c in w.chunks.values()):
                self._lose(w, f"a chunk not done in {self.cfg.chunk_timeout_s:.0f} s (stalled)")
        if self._workers or (self._eos is None and not self._pending and not self._current):
            self._no_worker_since = None
        elif self._no_worker_since is None:
            self._no_worker_since = now
            log.warning("dispatcher: no inference worker; %d chunk(s) waiting", len(self._pending))
        elif self.cfg.no_worker_timeout_s and now - self._no_worker_since > self.cfg.no_worker_timeout_s:
            self._cut_chunk()
            while self._pending:
                self._give_up(self._pending.popleft(), "no inference worker")

    def _lose(self, w: _Worker, why: str) -> None:
        self._workers.pop(w.name, None)
        self.stats.workers_lost += 1
        chunks = sorted(w.chunks.values(), key=lambda c: c.id)
        log.error("dispatcher: worker %s lost (%s); %d chunk(s) go to other workers", w.name, why, len(chunks))
        if self.metrics is not None:
            self.metrics.counter("workers_lost", "Inference workers declared dead or stalled").inc()
        for chunk in reversed(chunks):  # oldest first, ahead of new work
            if chunk.attempts > self.cfg.retries:
                self._give_up(chunk, f"failed on {chunk.attempts} worker(s), last {w.name}: {why}")
            else:
                self.stats.redispatched += 1
                self._pending.appendleft(chunk)

    def _give_up(self, chunk: _Chunk, why: str) -> None:
        self.stats.failed_seqs.extend(chunk.seqs)
        log.error("dispatcher: seqs %s given up: %s", chunk.seqs, why)
        self._count_drop("worker_failed", len(chunk.seqs))

    def _abandon(self, sink: Sender) -> None:
        """Stopped before the stream was done: give up every window not yet done, and end the
        stream at the sink with them named, so its report accounts for every seq."""
        while True:  # windows preprocess handed over but not yet cut into chunks
            try:
                self._take(self._inbox.get_nowait())  # only windows: the eos never enters the inbox
            except queue.Empty:
                break
        self._eos = self._eos or self._upstream_eos
        self._cut_chunk()
        unfinished = [c for w in self._workers.values() for c in w.chunks.values()] + list(self._pending)
        self._pending.clear()
        for w in self._workers.values():
            w.chunks.clear()
        for chunk in sorted(unfinished, key=lambda c: c.id):
            self._give_up(chunk, "the dispatcher was stopped before a worker finished it")
        if self._eos is None:  # upstream never ended the stream: end it here
            last = max([*self.stats.failed_seqs, (self._first_seq or 0) - 1, self._last_seq])
            self._eos = Frame(kind="eos", stream=self._stream or "dispatch", seq=last + 1, t_ns=0, exposure_s=0.0,
                              gain_db=0.0, pixel_format="none", data=np.zeros(0, np.uint8),
                              meta={"error": "stopped before the end of the stream"})
        self._finish(sink, timeout_s=ABANDON_EOS_S)

    def _in_flight(self) -> int:
        return sum(len(w.chunks) for w in self._workers.values())

    def _finish(self, sink: Sender, timeout_s: float = 30.0) -> None:
        assert self._eos is not None
        meta = dict(self._eos.meta)
        meta["count"] = self._windows
        if self._first_seq is not None:
            meta["first_seq"] = self._first_seq
        if self.stats.failed_seqs:
            meta["failed"] = sorted(self.stats.failed_seqs)
        meta["malformed"] = {**meta.get("malformed", {}), "dispatch": self.stats.malformed + self.stats.unknown_worker}
        eos = Frame(kind="eos", stream=self._eos.stream, seq=self._eos.seq, t_ns=self._eos.t_ns,
                    exposure_s=0.0, gain_db=0.0, pixel_format=self._eos.pixel_format, data=self._eos.data,
                    meta=meta)
        if not sink.send(eos, timeout_s=timeout_s):
            log.error("dispatcher: the sink did not take the end of stream within %.0f s", timeout_s)
        log.info("dispatcher: stream done: %d window(s), %d chunk(s), %d re-dispatched, %d seq(s) given up",
                 self._windows, self.stats.chunks_done, self.stats.redispatched, len(self.stats.failed_seqs))
        self._done.set()

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.gauge("workers", "Inference workers connected").set(self.workers)
            self.metrics.gauge("chunks_waiting", "Chunks waiting for a worker").set(len(self._pending))
            self.metrics.gauge("chunks_in_flight", "Chunks at workers").set(self._in_flight())

    def _count_drop(self, reason: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.dropped.labels(reason=reason).inc(n)


def work_parts(chunk: int, windows: list[Frame]) -> list:
    """A WORK message after its type: the body, then the windows — each frame once where the
    windows carry their frames unwarped (see the module's wire format), else whole."""
    body: dict = {"chunk": chunk, "seqs": [f.seq for f in windows]}
    shareable = windows and all(
        f.kind == "window" and f.meta.get("warped") is False and isinstance(f.meta.get("seqs"), list)
        and np.asarray(f.data).ndim == 4 and len(f.meta["seqs"]) == np.asarray(f.data).shape[0] for f in windows)
    if not shareable:
        parts: list = [msgpack.packb(body)]
        for f in windows:
            parts.extend(encode(f))
        return parts
    index: dict[tuple, int] = {}  # (seq, shape, dtype) -> position among the shared frames
    shared: list = []
    headers, slots = [], []
    for f in windows:
        header, _ = encode(f)
        data = np.ascontiguousarray(f.data)
        row = []
        for s, pixels in zip(f.meta["seqs"], data):
            key = (s, pixels.shape, pixels.dtype.str)
            if key not in index:
                index[key] = len(shared)
                shared.append(memoryview(pixels).cast("B"))
            row.append(index[key])
        headers.append(header)
        slots.append(row)
    body["slots"] = slots
    return [msgpack.packb(body), *headers, *shared]


def decode_work(parts: list) -> tuple[int, list[Frame]]:
    """A WORK message's (chunk id, windows); ProtocolError (only) if it is malformed."""
    if len(parts) < 2:
        raise ProtocolError("WORK message without a body")
    try:
        body = msgpack.unpackb(getattr(parts[1], "buffer", parts[1]), raw=False, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"bad WORK message: body is not msgpack ({type(exc).__name__})") from None
    chunk = body.get("chunk") if isinstance(body, dict) else None
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
        raise ProtocolError("bad WORK message: no chunk id")
    frames = parts[2:]
    slots = body.get("slots")
    if slots is not None:
        return chunk, _shared_windows(slots, frames)
    if len(frames) % 2:
        raise ProtocolError("WORK message: header without payload")
    return chunk, [decode(frames[i:i + 2]) for i in range(0, len(frames), 2)]


def _shared_windows(slots: object, parts: list) -> list[Frame]:
    """Windows of a WORK message that carries each frame once (``slots``: see the module)."""
    if not isinstance(slots, list) or not all(isinstance(r, list) for r in slots) or len(slots) > len(parts):
        raise ProtocolError("bad WORK message: slots must be one list per window header")
    headers, shared = parts[:len(slots)], [memoryview(getattr(p, "buffer", p)) for p in parts[len(slots):]]
    windows = []
    for header, row in zip(headers, slots):
        if not row or not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < len(shared) for j in row):
            raise ProtocolError("bad WORK message: a slot names no shared frame")
        windows.append(decode([header, b"".join(shared[j] for j in row)]))
    return windows


class EosHold:
    """The sink's receiver when N workers feed it: holds the eos back until the frames it
    announces have arrived (they come from other workers and may trail it), or until none
    has come for ``grace_s``. Quacks like :class:`hdrstream.transport.Receiver`."""

    def __init__(self, receiver, grace_s: float = 10.0) -> None:
        self.receiver, self.grace_s = receiver, grace_s
        self._seen = SeqRanges()
        self._eos: Frame | None = None
        self._last = time.monotonic()

    @property
    def malformed(self):
        return self.receiver.malformed

    @property
    def endpoint(self) -> str:
        return self.receiver.endpoint

    def owed(self) -> SeqRanges:
        """Seqs the held eos announces that have not arrived (nor been given up), as ranges."""
        if self._eos is None:
            return SeqRanges()
        end, meta = self._eos.seq, self._eos.meta  # decode checked the types
        first = meta.get("first_seq", max(0, end - meta.get("count", 0)))
        return self._seen.minus(SeqRanges(meta.get("failed", ())), first, end)

    def recv(self, timeout_s: float | None = None) -> Frame | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._eos is not None:
                idle = time.monotonic() - self._last
                if not self.owed() or idle > self.grace_s:
                    if self.owed():
                        log.warning("sink: %d frame(s) announced by the eos never came (%.0f s without a frame)",
                                    len(self.owed()), idle)
                    eos, self._eos = self._eos, None
                    return eos
            wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
            frame = self.receiver.recv(timeout_s=wait)
            if frame is not None:
                self._last = time.monotonic()
                if frame.kind == "eos" and self._eos is None:
                    self._eos = frame
                    continue
                if frame.kind != "eos":
                    self._seen.add(frame.seq)
                return frame
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self.receiver.close()
