"""ZeroMQ PUSH/PULL plumbing for frames: one context per process, bounded queues, timeouts.

Endpoints follow the CZMQ convention: ``@tcp://127.0.0.1:5550`` binds, ``>tcp://host:5550``
connects, and a bare address takes the caller's default. ``inproc://`` endpoints carry the
embedded pipeline between threads; ``tcp://`` the services. Senders block when the peer's
high-water mark is reached (back-pressure), but always with a timeout so shutdown is prompt.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import zmq

from hdrstream.frame import Frame, ProtocolError, decode, encode

log = logging.getLogger(__name__)

DEFAULT_HWM = 8  # messages; a window of 5 float frames at 1536x813 is ~75 MB, so keep it small
POLL_MS = 100
FLUSH_S = 10.0  # how long a finished stage or service waits for its last messages to leave


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
    """PUSH side. ``send`` blocks under back-pressure until ``timeout_s``, then returns False."""

    def __init__(
        self,
        endpoint: str,
        bind: bool = True,
        hwm: int = DEFAULT_HWM,
        ctx: zmq.Context | None = None,
    ):
        self.sock = _socket(zmq.PUSH, endpoint, bind, hwm, ctx)
        self.endpoint = _resolved(self.sock, endpoint)
        self.sent = 0

    def send(self, frame: Frame, timeout_s: float | None = None, stop: threading.Event | None = None) -> bool:
        """Send one frame; False if it could not leave within ``timeout_s`` or ``stop`` was set."""
        parts = encode(frame)
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
        self.sock.close(linger=int(flush_s * 1000))


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
