"""Prometheus metrics per stage, and the HTTP endpoint a service exposes them on.

Names follow Prometheus conventions: ``hdrstream_<stage>_…``, base units as suffixes,
counters end in ``_total``, no rates or percentages (PromQL derives those), and only
low-cardinality labels (a drop's ``reason``, never a seq). Histograms use frame-latency
buckets, 1 ms to 10 s.

Several stages — or several pipelines, one after another — may live in one process (the
embedded pipeline, the tests). prometheus_client refuses to register a name twice in a
registry, so every metric is created once per (registry, name) and shared afterwards:
a second ``StageMetrics("sink")`` counts into the same series as the first.
"""
from __future__ import annotations

import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from hdrstream.frame import Frame

PREFIX = "hdrstream"
# a frame at 30 fps has 33 ms; a slow CPU reconstruction takes seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
MAX_AGE_S = 3600.0  # an end-to-end "latency" beyond this is a clock mix-up, not a measurement

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_lock = threading.Lock()
_created: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()


def _metric(registry: CollectorRegistry, cls: type, name: str, doc: str, **kwargs: Any) -> Any:
    """The collector called ``name`` in ``registry``, created on first use."""
    with _lock:
        known = _created.setdefault(registry, {})
        metric = known.get(name)
        if metric is None:
            metric = known[name] = cls(name, doc, registry=registry, **kwargs)
        elif not isinstance(metric, cls):
            raise ValueError(f"metric {name} already exists as a {type(metric).__name__}, "
                             f"not a {cls.__name__}; pick another name")
        return metric


def reason_label(reason: str) -> str:
    """A drop reason as a short label value: ``"not sent (stopped)"`` → ``not_sent_stopped``."""
    label = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")[:40]
    return label or "unknown"


def capture_age_s(frame: Frame, now_ns: int | None = None) -> float | None:
    """Seconds since ``frame`` was captured: from ``meta["wall_ns"]`` (the host wall clock when
    the camera handed the frame over, stamped by the source loop), else from a ``t_ns`` on this
    host's monotonic clock (``now_ns`` is on the same clock as what is used).

    Otherwise only frames stamped ``meta["clock"] == "host"`` qualify (camera clocks and synthetic
    timestamps are not comparable with ours). ``CLOCK_MONOTONIC`` is shared by every
    process and container on one machine, so the age is right across services there, but
    not across machines. Ages that are negative or absurdly large are ignored.
    """
    wall = frame.meta.get("wall_ns")
    if isinstance(wall, int) and not isinstance(wall, bool) and wall > 0:  # stamped by run_source
        age = ((time.time_ns() if now_ns is None else now_ns) - wall) / 1e9
    elif frame.meta.get("clock") == "host" and frame.t_ns > 0:
        age = ((time.monotonic_ns() if now_ns is None else now_ns) - frame.t_ns) / 1e9
    else:
        return None
    return age if 0.0 <= age <= MAX_AGE_S else None


class StageMetrics:
    """The standard metrics of one stage, plus stage-specific ones by short name.

    Args:
        stage: stage name, the middle of every metric name (``capture``, ``infer``, …);
            letters, digits and underscores (worker numbers belong in the scrape target,
            not in the name).
        registry: where the metrics live; prometheus_client's default registry (what
            :func:`serve_metrics` serves) unless given.

    Attributes:
        frames: ``hdrstream_<stage>_frames_total`` — messages handled (eos excluded).
        sent: ``hdrstream_<stage>_sent_total`` — messages sent downstream (eos excluded).
        dropped: ``hdrstream_<stage>_dropped_frames_total{reason}`` — messages lost here.
        processing: ``hdrstream_<stage>_processing_seconds`` — time per message.
        queue_depth: ``hdrstream_<stage>_queue_depth`` — messages waiting to be sent.
        end_to_end: ``hdrstream_<stage>_end_to_end_seconds`` — capture to this stage.
    """

    def __init__(self, stage: str, registry: CollectorRegistry | None = None) -> None:
        if not _NAME.fullmatch(stage):
            raise ValueError(f"stage name {stage!r} cannot be part of a metric name; "
                             "use letters, digits and underscores only")
        self.stage = stage
        self.registry = REGISTRY if registry is None else registry
        self.frames = self.counter("frames", "Messages handled by the stage (eos excluded)")
        self.sent = self.counter("sent", "Messages sent downstream (eos excluded)")
        self.dropped = self.counter(
            "dropped_frames", "Messages dropped, by reason (malformed, error, queue_full, not_sent, ...)",
            labels=("reason",))
        self.processing = self.histogram("processing_seconds", "Time the stage spent on one message")
        self.queue_depth = self.gauge("queue_depth", "Messages waiting in the stage's outgoing queue")
        self.end_to_end = self.histogram(
            "end_to_end_seconds", "Capture (host clock) to this stage having handled the frame")

    def name(self, short: str) -> str:
        """Full metric name for ``short``: ``gaps`` → ``hdrstream_sink_gaps``."""
        if not _NAME.fullmatch(short):
            raise ValueError(f"metric name {short!r}: use letters, digits and underscores only")
        return f"{PREFIX}_{self.stage}_{short}"

    def counter(self, short: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        """``hdrstream_<stage>_<short>_total``; the same object on every call."""
        short = short[: -len("_total")] if short.endswith("_total") else short
        return _metric(self.registry, Counter, self.name(short) + "_total", doc, labelnames=labels)

    def gauge(self, short: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        """``hdrstream_<stage>_<short>``; the same object on every call."""
        return _metric(self.registry, Gauge, self.name(short), doc, labelnames=labels)

    def histogram(self, short: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        """``hdrstream_<stage>_<short>`` (end ``short`` in a unit: ``_seconds``); shared like the others."""
        return _metric(self.registry, Histogram, self.name(short), doc, buckets=buckets)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dropped messages under a short label made from ``reason``."""
        if n > 0:
            self.dropped.labels(reason=reason_label(reason)).inc(n)

    def observe_age(self, frame: Frame) -> None:
        """Record ``frame``'s end-to-end latency, when it carries a host-clock capture time."""
        age = capture_age_s(frame)
        if age is not None:
            self.end_to_end.observe(age)


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``registry`` (default: the process's) at ``http://host:port/metrics`` on a thread.

    ``port`` 0 takes any free port (read it from the result). Binds loopback unless
    ``host`` says otherwise: a metrics port open to the network must be asked for.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port {port} is not a TCP port (0..65535; 0 = any free port)")
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY if registry is None else registry)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc}; "
                      "pick another port (or 0 for any free one)") from None
    return MetricsServer(host, int(server.server_port), server, thread)
