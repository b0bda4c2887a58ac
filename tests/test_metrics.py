"""Prometheus metrics: names, values after a real run over sockets, malformed input, the scrape."""
import threading
import time
import urllib.error
import urllib.request
import uuid

import msgpack
import numpy as np
import pytest
import zmq
from prometheus_client import REGISTRY, CollectorRegistry

from capture.sim import SimCamera, SimConfig
from hdrstream.frame import Frame
from hdrstream.metrics import LATENCY_BUCKETS, StageMetrics, capture_age_s, reason_label, serve_metrics
from hdrstream.runner import LoopStats, run_source, run_stage
from hdrstream.transport import Receiver, Sender, context


class Relay:
    """Passes frames on; fails on ``fail_seq`` to show an error is a counted drop."""

    name = "relay"

    def __init__(self, fail_seq: int | None = None):
        self.fail_seq = fail_seq

    def process(self, f):
        if f.kind == "eos":
            return []
        if f.seq == self.fail_seq:
            raise RuntimeError("boom")
        return [f]

    def finish(self):
        return []


class Collect:
    name = "collect"

    def __init__(self):
        self.seqs, self.eos = [], None

    def process(self, f):
        if f.kind == "eos":
            self.eos = f
        else:
            self.seqs.append(f.seq)
        return []

    def finish(self):
        return []


class HostClockSource:
    """Frames stamped on the host's monotonic clock, like the pylon emulator's."""

    name = "host"

    def __init__(self, n: int):
        self.n = n

    def frames(self):
        for i in range(self.n):
            yield Frame("frame", "host", i, time.monotonic_ns(), 0.001, 0.0, "Mono8",
                        np.full((4, 4), i, np.uint8), meta={"clock": "host"})

    def close(self):
        pass


def run_graph(source, registry=None, fail_seq=None, garbage: int = 0) -> tuple[Collect, dict[str, LoopStats]]:
    """source → relay → collect over inproc sockets, each loop with its StageMetrics.

    ``garbage`` malformed messages are pushed into the relay's input before the stream.
    """
    tag = uuid.uuid4().hex[:8]
    relay_rx = Receiver(f"inproc://relay-{tag}", bind=True)
    sink_rx = Receiver(f"inproc://sink-{tag}", bind=True)
    relay_tx = Sender(sink_rx.endpoint, bind=False)
    src_tx = Sender(relay_rx.endpoint, bind=False)
    if garbage:
        raw = context().socket(zmq.PUSH)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(relay_rx.endpoint)
        for _ in range(garbage):
            raw.send_multipart([msgpack.packb({"v": 1, "kind": "frame"}), b""])
        raw.close()
    stop, collect = threading.Event(), Collect()
    stats = {"capture": LoopStats(), "relay": LoopStats(), "sink": LoopStats()}
    threads = [
        threading.Thread(target=run_stage, args=(Relay(fail_seq), relay_rx, relay_tx, stop, stats["relay"],
                                                 StageMetrics("preprocess", registry))),
        threading.Thread(target=run_stage, args=(collect, sink_rx, None, stop, stats["sink"],
                                                 StageMetrics("sink", registry))),
    ]
    for t in threads:
        t.start()
    try:
        run_source(source, src_tx, stop, stats["capture"], StageMetrics("capture", registry))
        for t in threads:
            t.join(20)
        assert not any(t.is_alive() for t in threads), "the stage loops did not finish"
    finally:
        stop.set()
        for s in (src_tx, relay_tx, relay_rx, sink_rx):
            s.close()
    return collect, stats


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def tiny_camera(frames: int = 6) -> SimCamera:
    return SimCamera(SimConfig(width=32, height=24, frames=frames, noise=False, occluders=0))


# -- StageMetrics itself --------------------------------------------------------------------


def test_metrics_are_shared_per_registry_and_name():
    reg = CollectorRegistry()
    a, b = StageMetrics("sink", reg), StageMetrics("sink", reg)
    assert a.frames is b.frames and a.dropped is b.dropped and a.processing is b.processing
    assert a.gauge("workers", "Workers") is b.gauge("workers", "Workers")
    gaps = a.counter("gaps", "Frames never produced")
    assert gaps is b.counter("gaps_total", "Frames never produced")
    gaps.inc(2)
    assert value(reg, "hdrstream_sink_gaps_total") == 2
    # a different registry gets its own series
    other = CollectorRegistry()
    assert StageMetrics("sink", other).frames is not a.frames


def test_bad_names_and_type_clashes_are_clear_errors():
    reg = CollectorRegistry()
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        StageMetrics("infer-0", reg)
    m = StageMetrics("sink", reg)
    m.gauge("owed", "Seqs still owed")
    with pytest.raises(ValueError, match="already exists as a Gauge"):
        m.histogram("owed", "not a histogram")
    with pytest.raises(ValueError, match="letters"):
        m.counter("bad name", "x")


def test_reason_labels_are_short_and_tame():
    assert reason_label("not sent (stopped)") == "not_sent_stopped"
    assert reason_label("Queue FULL") == "queue_full"
    assert reason_label("!!!") == "unknown"
    assert len(reason_label("x" * 500)) <= 40


def test_capture_age_only_for_host_clock_frames():
    now = time.monotonic_ns()
    f = Frame("frame", "s", 0, now - 50_000_000, 0.001, 0.0, "Mono8", np.zeros((2, 2), np.uint8),
              meta={"clock": "host"})
    assert capture_age_s(f, now) == pytest.approx(0.05)
    f.meta["clock"] = "camera"
    assert capture_age_s(f, now) is None
    f.meta.pop("clock")
    assert capture_age_s(f, now) is None  # synthetic timestamps (sim, folders)
    f.meta["clock"] = "host"
    f.t_ns = now + 10**9  # from the future: another machine's clock
    assert capture_age_s(f, now) is None


def test_histogram_buckets_span_1ms_to_10s():
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 10.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    reg = CollectorRegistry()
    StageMetrics("infer", reg).processing.observe(0.004)
    assert value(reg, "hdrstream_infer_processing_seconds_bucket", le="0.0025") == 0
    assert value(reg, "hdrstream_infer_processing_seconds_bucket", le="0.005") == 1
    assert value(reg, "hdrstream_infer_processing_seconds_bucket", le="+Inf") == 1


# -- the loops' hooks ------------------------------------------------------------------------


def test_a_real_run_counts_frames_sends_and_errors():
    reg = CollectorRegistry()
    collect, stats = run_graph(tiny_camera(6), reg, fail_seq=2)
    assert collect.seqs == [0, 1, 3, 4, 5] and collect.eos is not None
    assert value(reg, "hdrstream_capture_frames_total") == 6
    assert value(reg, "hdrstream_capture_sent_total") == 6
    assert value(reg, "hdrstream_capture_processing_seconds_count") == 6
    assert value(reg, "hdrstream_preprocess_frames_total") == 6
    assert value(reg, "hdrstream_preprocess_sent_total") == 5
    assert value(reg, "hdrstream_preprocess_dropped_frames_total", reason="error") == 1
    assert value(reg, "hdrstream_preprocess_processing_seconds_count") == 6
    assert value(reg, "hdrstream_sink_frames_total") == 5
    assert value(reg, "hdrstream_sink_sent_total") == 0
    # the source loop stamps the host wall clock at hand-over (the sim's t_ns is synthetic)
    assert value(reg, "hdrstream_sink_end_to_end_seconds_count") == 5
    # LoopStats are untouched by the metrics
    assert stats["relay"].errors == {"RuntimeError": 1}
    assert stats["relay"].received == 7 and stats["relay"].sent == 5


def test_end_to_end_latency_for_host_clock_frames():
    reg = CollectorRegistry()
    collect, _ = run_graph(HostClockSource(5), reg)
    assert collect.seqs == list(range(5))
    for stage in ("capture", "preprocess", "sink"):
        assert value(reg, f"hdrstream_{stage}_end_to_end_seconds_count") == 5
    assert 0 < value(reg, "hdrstream_sink_end_to_end_seconds_sum") < 5 * 10.0
    # downstream is later than upstream for the same frames
    assert value(reg, "hdrstream_sink_end_to_end_seconds_sum") >= value(reg, "hdrstream_capture_end_to_end_seconds_sum")


def test_malformed_messages_are_counted_as_drops_and_the_loop_lives():
    reg = CollectorRegistry()
    collect, stats = run_graph(tiny_camera(4), reg, garbage=3)
    assert collect.seqs == [0, 1, 2, 3]
    assert value(reg, "hdrstream_preprocess_dropped_frames_total", reason="malformed") == 3
    assert sum(n for r, n in stats["relay"].errors.items() if r.startswith("malformed")) == 3
    assert value(reg, "hdrstream_sink_dropped_frames_total", reason="malformed") == 0


def test_two_pipelines_in_one_process_accumulate():
    reg = CollectorRegistry()
    run_graph(tiny_camera(3), reg)
    run_graph(tiny_camera(4), reg)
    assert value(reg, "hdrstream_sink_frames_total") == 7
    # and in the process-wide default registry, which the services serve
    before = value(REGISTRY, "hdrstream_sink_frames_total")
    run_graph(tiny_camera(2))
    run_graph(tiny_camera(2))
    assert value(REGISTRY, "hdrstream_sink_frames_total") - before == 4


# -- the scrape ------------------------------------------------------------------------------


def test_scrape_returns_the_text_format():
    reg = CollectorRegistry()
    run_graph(tiny_camera(4), reg, fail_seq=1, garbage=2)
    StageMetrics("preprocess", reg).gauge("workers", "Inference workers connected").set(2)
    server = serve_metrics(0, registry=reg)
    try:
        assert server.port > 0 and server.host == "127.0.0.1"
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
    finally:
        server.close()
    lines = body.splitlines()
    assert "# TYPE hdrstream_sink_frames_total counter" in lines
    assert "hdrstream_sink_frames_total 3.0" in lines
    assert "hdrstream_capture_sent_total 4.0" in lines
    assert 'hdrstream_preprocess_dropped_frames_total{reason="malformed"} 2.0' in lines
    assert 'hdrstream_preprocess_dropped_frames_total{reason="error"} 1.0' in lines
    assert "# TYPE hdrstream_preprocess_processing_seconds histogram" in lines
    assert 'hdrstream_preprocess_processing_seconds_bucket{le="0.001"}' in body
    assert 'hdrstream_preprocess_processing_seconds_bucket{le="10.0"} 4.0' in lines
    assert "hdrstream_preprocess_workers 2.0" in lines
    assert "hdrstream_capture_queue_depth 0.0" in lines
    with pytest.raises(urllib.error.URLError):  # stopped means stopped
        urllib.request.urlopen(server.url, timeout=2)


def test_serve_metrics_reports_a_busy_port_clearly():
    reg = CollectorRegistry()
    with serve_metrics(0, registry=reg) as first:
        with pytest.raises(OSError, match="cannot serve metrics"):
            serve_metrics(first.port, registry=reg)
    with pytest.raises(ValueError, match="not a TCP port"):
        serve_metrics(70000, registry=reg)
