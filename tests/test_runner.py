"""The stage loops and the embedded graph, with stand-in stages on real inproc/tcp sockets."""
import threading
import time

import numpy as np

from hdrstream.frame import Frame
from deploy.pipeline import run_embedded
from hdrstream.runner import LoopStats, run_source, run_stage
from hdrstream.transport import Receiver, Sender


class Counter:
    name = "counter"

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at = n, fail_at

    def frames(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise OSError("camera vanished")
            yield Frame("frame", "cam", i, i, 0.001, 0.0, "Mono8", np.full((4, 4), i, np.uint8),
                        meta={"stem": f"{i:06d}"})

    def close(self):
        self.closed = True


class Doubler:
    """Emits one float frame per input; raises on seq 3 to prove one bad frame is survivable."""

    name = "doubler"

    def process(self, f):
        if f.kind == "eos":
            return
        if f.seq == 3:
            raise RuntimeError("boom")
        yield Frame("hdr", f.stream, f.seq, f.t_ns, f.exposure_s, 0.0, "RGBf32",
                    np.full((4, 4, 3), 2.0 * f.data[0, 0], np.float32), meta=dict(f.meta))

    def finish(self):
        return [Frame("hdr", "cam", 99, 0, 1.0, 0.0, "RGBf32", np.zeros((4, 4, 3), np.float32))]


class Collect:
    name = "collect"

    def __init__(self):
        self.seen, self.finished = [], False

    def process(self, f):
        if f.kind == "eos":
            self.eos = f
        else:
            self.seen.append((f.seq, float(f.data[0, 0, 0])))
        return []

    def finish(self):
        self.finished = True
        return []


def test_embedded_graph_delivers_everything_and_survives_a_bad_frame():
    collect = Collect()
    outputs = []
    result = run_embedded(Counter(8), [Doubler(), collect], on_output=outputs.append)
    assert collect.finished
    assert [s for s, _ in collect.seen] == [0, 1, 2, 4, 5, 6, 7, 99]
    assert dict(collect.seen)[5] == 10.0
    assert result.stats["doubler"].errors["RuntimeError"] == 1
    assert result.ok and len(outputs) == 8
    # each stage adds what it could not read, so the sink can report it per stage
    assert collect.eos.meta == {"count": 8, "first_seq": 0, "malformed": {"doubler": 0, "collect": 0}}


def test_failing_source_still_ends_the_stream_with_the_reason():
    collect = Collect()
    source = Counter(10, fail_at=4)
    result = run_embedded(source, [Doubler(), collect])
    assert collect.finished and source.closed
    assert [s for s, _ in collect.seen] == [0, 1, 2, 99]
    assert "camera vanished" in result.stats["counter"].failure
    assert not result.ok


def test_loops_over_tcp_loopback():
    stop = threading.Event()
    sink_rx = Receiver("tcp://127.0.0.1:*", bind=True)
    mid_rx = Receiver("tcp://127.0.0.1:*", bind=True)
    mid_tx = Sender(sink_rx.endpoint, bind=False)
    src_tx = Sender(mid_rx.endpoint, bind=False)
    collect = Collect()
    stats = LoopStats()
    threads = [
        threading.Thread(target=run_stage, args=(Doubler(), mid_rx, mid_tx, stop)),
        threading.Thread(target=run_stage, args=(collect, sink_rx, None, stop, stats)),
    ]
    for t in threads:
        t.start()
    src_stats = run_source(Counter(6), src_tx, stop)
    for t in threads:
        t.join(20)
    for s in (sink_rx, mid_rx, mid_tx, src_tx):
        s.close()
    assert src_stats.sent == 6
    assert [s for s, _ in collect.seen] == [0, 1, 2, 4, 5, 99] and collect.finished


def test_a_source_faster_than_its_pipeline_says_so_once(caplog):
    """Back-pressure is not silent: the source logs once that downstream holds it back."""
    import logging

    from hdrstream.runner import BEHIND_S

    class Slow:
        """A sender whose peer takes a frame every 0.3 s."""

        def send(self, frame, timeout_s=None, stop=None):
            time.sleep(0.3)
            return True

    stats = LoopStats()
    with caplog.at_level(logging.WARNING, logger="hdrstream.runner"):
        run_source(Counter(8), Slow(), threading.Event(), stats)
    said = [r for r in caplog.records if "slower than the source" in r.getMessage()]
    assert len(said) == 1 and stats.blocked_s > BEHIND_S
    assert any("frames/s sustained" in r.getMessage() for r in caplog.records)
