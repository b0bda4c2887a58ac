"""ZeroMQ PUSH/PULL plumbing for frames: one context per process, bounded queues, timeouts.

Endpoints follow the CZMQ convention: ``@tcp://127.0.0.1:5550`` binds, ``>tcp://host:5550``
connects, and a bare address takes the caller's default. ``inproc://`` endpoints carry the
embedded pipeline between threads; ``tcp://`` the services.

What a sender does when the peer falls behind is an explicit policy:

- ``block`` (default; recording, offline reconstruction): ``send`` waits once the peer's
  high-water mark is reached — back-pressure, nothing dropped — but always with a stop
  event or timeout so shutdown is prompt.
- ``drop-oldest`` (live view): ``send`` never waits; frames go into a bounded queue that a
  thread drains into the socket, and when it is full the oldest queued frame is dropped,
  counted and logged with its seq, so what arrives is as fresh as possible. An eos is
  never dropped.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

import zmq

from hdrstream.frame import Frame, ProtocolError, decode, encode

if TYPE_CHECKING:
    from hdrstream.metrics import StageMetrics

log = logging.getLogger(__name__)

DEFAULT_HWM = 8  # messages; a window of 5 float frames at 1536x813 is ~75 MB, so keep it small
DEFAULT_QUEUE = 8  # frames a drop-oldest sender holds before it drops the oldest
DROP_OLDEST_HWM = 1  # frames inside ZeroMQ cannot be dropped, only delivered late: keep few there
POLICIES = ("block", "drop-oldest")
POLL_MS = 100
FLUSH_S = 10.0  # how long a finished stage or service waits for its last messages to leave
DROP_LOG_S = 1.0  # drop-oldest: at most one log line per this long, naming every seq dropped


def context() -> zmq.Context:
    """The process-wide context (pyzmq's advice: one per process)."""
    return zmq.Context.instance()


def shutdown() -> None:
    """Terminate the context now, waiting (up to each socket's linger) for queued messages.

    Call it before a service process exits: zero-copy sends keep references to NumPy
    buffers until ZeroMQ is done with them, and letting interpreter teardown race the I/O
    thread loses the last messages (or crashes).
    """
    ctx = zmq.Context.instance()
    if not ctx.closed:
        ctx.term()


def parse_endpoint(endpoint: str, bind: bool) -> tuple[str, bool]:
    """Split ``@addr`` / ``>addr`` into (address, bind?)."""
    if endpoint.startswith("@"):
        return endpoint[1:], True
    if endpoint.startswith(">"):
        return endpoint[1:], False
    return endpoint, bind


def _socket(kind: int, endpoint: str, bind: bool, hwm: int, ctx: zmq.Context | None) -> zmq.Socket:
    address, do_bind = parse_endpoint(endpoint, bind)
    sock = (ctx or context()).socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM if kind == zmq.PUSH else zmq.RCVHWM, hwm)
    try:
        if do_bind:
            sock.bind(address)
        else:
            sock.connect(address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        verb = "bind" if do_bind else "connect"
        raise OSError(f"cannot {verb} {address}: {exc}") from None
    return sock


def _resolved(sock: zmq.Socket, endpoint: str) -> str:
    """The concrete address, so ``tcp://127.0.0.1:*`` (any free port) can be shared."""
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if last else parse_endpoint(endpoint, False)[0]


class Sender:
    """PUSH side, with a policy for when the peer is behind (see the module docstring).

    Args:
        endpoint: ``@addr`` binds, ``>addr`` connects, a bare address follows ``bind``.
        hwm: ZeroMQ send high-water mark (messages); default 8 for ``block`` and 1 for
            ``drop-oldest`` (frames already inside ZeroMQ cannot be dropped, only delivered
            late, so a live view keeps few there; the receiver's hwm adds to it).
        policy: ``block`` (wait, drop nothing) or ``drop-oldest`` (never wait, drop stale frames).
        queue: drop-oldest only: frames held before the oldest is dropped.
        metrics: optional :class:`hdrstream.metrics.StageMetrics`; drop-oldest reports its
            queue depth and ``dropped_frames_total{reason="queue_full"}`` there.

    Attributes:
        sent: messages handed to ZeroMQ. dropped: frames dropped (drop-oldest: queue full,
        or still queued when ``close`` gave up on them).
    """

    def __init__(
        self,
        endpoint: str,
        bind: bool = True,
        hwm: int | None = None,
        ctx: zmq.Context | None = None,
        policy: str = "block",
        queue: int = DEFAULT_QUEUE,
        metrics: StageMetrics | None = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown sending policy {policy!r}; use one of {POLICIES}")
        if policy == "drop-oldest" and queue < 1:
            raise ValueError(f"a drop-oldest sender needs a queue of at least 1 frame, got {queue}")
        self.policy, self.metrics = policy, metrics
        if hwm is None:
            hwm = DROP_OLDEST_HWM if policy == "drop-oldest" else DEFAULT_HWM
        self.sock = _socket(zmq.PUSH, endpoint, bind, hwm, ctx)
        self.endpoint = _resolved(self.sock, endpoint)
        self.sent = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None
        if policy == "drop-oldest":
            self._queue: deque[tuple[Frame, list]] = deque()
            self._limit = queue
            self._cond = threading.Condition()
            self._closing = False
            self._flush_until = 0.0
            self._unlogged: list[int] = []
            self._logged_at = 0.0
            self._thread = threading.Thread(target=self._drain, name=f"sender {self.endpoint}", daemon=True)
            self._thread.start()

    @property
    def queued(self) -> int:
        """Frames waiting in a drop-oldest sender's queue (0 for ``block``)."""
        return len(self._queue) if self._thread is not None else 0

    def send(self, frame: Frame, timeout_s: float | None = None, stop: threading.Event | None = None) -> bool:
        """Send one frame; False if it could not leave within ``timeout_s`` or ``stop`` was set.

        drop-oldest: queue it and return at once (True), dropping the oldest queued frame
        if the queue is full; False only once the sender is closing.
        """
        parts = encode(frame)
        if self._thread is not None:
            return self._enqueue(frame, parts)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self.sock.poll(POLL_MS, zmq.POLLOUT):
                self.sock.send_multipart(parts, copy=False)
                self.sent += 1
                return True
            if stop is not None and stop.is_set():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False

    def close(self, flush_s: float = 0.0) -> None:
        """Close; ``flush_s`` > 0 lets queued messages (the final eos) leave first, bounded."""
        if self._thread is None:
            self.sock.close(linger=int(flush_s * 1000))
            return
        with self._cond:
            self._closing = True
            self._flush_until = time.monotonic() + flush_s
            self._cond.notify_all()
        self._thread.join(timeout=flush_s + 5.0)  # the thread gives up on its own at the deadline
        self._log_drops(force=True)
        if self._thread.is_alive():  # cannot happen short of a ZeroMQ hang; the socket is still its
            log.error("%s: sender thread did not stop; socket left open", self.endpoint)
            return
        self.sock.close(linger=max(0, int((self._flush_until - time.monotonic()) * 1000)))

    # -- drop-oldest ------------------------------------------------------------------------

    def _enqueue(self, frame: Frame, parts: list) -> bool:
        if self._thread is not None and not self._thread.is_alive() and not self._closing:
            # a dead sender thread would turn every later frame into a "queue_full" drop: fail loudly
            raise RuntimeError(f"{self.endpoint}: the sender thread died; {self.queued} frame(s) stuck in its queue")
        with self._cond:
            if self._closing:
                return False
            if len(self._queue) >= self._limit:
                self._drop_oldest(frame)
            if frame.kind == "eos" or len(self._queue) < self._limit:
                self._queue.append((frame, parts))
            self._depth()
            self._cond.notify()
        self._log_drops()
        return True

    def _drop_oldest(self, incoming: Frame) -> None:
        """Drop the oldest queued frame that is not an eos; with none, the incoming frame."""
        for i, (queued, _) in enumerate(self._queue):
            if queued.kind != "eos":
                del self._queue[i]
                self._count_drop(queued, "queue_full")
                return
        if incoming.kind != "eos":
            self._count_drop(incoming, "queue_full")

    def _count_drop(self, frame: Frame, reason: str) -> None:
        self.dropped += 1
        self._unlogged.append(frame.seq)
        if self.metrics is not None:
            self.metrics.drop(reason)

    def _log_drops(self, force: bool = False) -> None:
        with self._cond:
            now = time.monotonic()
            if not self._unlogged or (not force and now - self._logged_at < DROP_LOG_S):
                return
            seqs, self._unlogged, self._logged_at = self._unlogged, [], now
        log.warning("%s: dropped %d frame(s), seq %s (policy drop-oldest, queue %d; %d dropped so far)",
                    self.endpoint, len(seqs), _ranges(seqs), self._limit, self.dropped)

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    def _drain(self) -> None:
        """The sender thread: the only user of the socket while the sender is open."""
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    frame, parts = self._queue.popleft()
                    self._depth()
                if not self._send_queued(parts):
                    with self._cond:
                        lost = [frame, *(f for f, _ in self._queue)]
                        self._queue.clear()
                        self._depth()
                        for f in lost:
                            self._count_drop(f, "not_sent")
                    log.error("%s: %d message(s) not sent before close (peer gone or too slow)",
                              self.endpoint, len(lost))
                    return
                self._log_drops()
        except Exception:  # a bug here must not leave frames silently stuck in the queue
            log.exception("%s: sender thread failed; %d frame(s) still queued", self.endpoint, self.queued)
            raise

    def _send_queued(self, parts: list) -> bool:
        """Hand one message to ZeroMQ; False once closing and the flush time is up."""
        while True:
            if self.sock.poll(POLL_MS, zmq.POLLOUT):
                self.sock.send_multipart(parts, copy=False)
                self.sent += 1
                return True
            if self._closing and time.monotonic() > self._flush_until:
                return False


def _ranges(seqs: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``1-3, 7``: every dropped seq, compactly."""
    out: list[str] = []
    start = prev = seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(out)


class Receiver:
    """PULL side. Malformed messages are counted by reason, logged and skipped."""

    def __init__(
        self,
        endpoint: str,
        bind: bool = False,
        hwm: int = DEFAULT_HWM,
        ctx: zmq.Context | None = None,
    ):
        self.sock = _socket(zmq.PULL, endpoint, bind, hwm, ctx)
        self.endpoint = _resolved(self.sock, endpoint)
        self.received = 0
        self.malformed: Counter[str] = Counter()

    def recv(self, timeout_s: float | None = None) -> Frame | None:
        """Next valid frame, or None when ``timeout_s`` passes without one."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_ms = POLL_MS if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if self.sock.poll(min(wait_ms, POLL_MS), zmq.POLLIN):
                parts = self.sock.recv_multipart(copy=False)
                try:
                    frame = decode(parts)
                except ProtocolError as exc:
                    reason = str(exc).split(":")[0][:60]
                    self.malformed[reason] += 1
                    log.warning("dropped malformed message on %s: %s", self.endpoint, exc)
                    continue
                self.received += 1
                return frame
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self.sock.close(linger=0)
