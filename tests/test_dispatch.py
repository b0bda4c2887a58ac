"""The dispatcher and its workers, in one process over real tcp sockets on loopback."""
from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import zmq

from deploy.dispatch import READY, WORK, DispatchConfig, Dispatcher, EosHold, decode_work
from hdrstream.frame import Frame, eos
from hdrstream.transport import Receiver
from deploy.worker import Worker

FAST = dict(chunk=2, heartbeat_s=0.05, dead_after_s=0.6, retries=1)


def window(seq: int) -> Frame:
    data = np.full((4, 6, 3), seq, np.float32)
    return Frame(kind="window", stream="t", seq=seq, t_ns=seq, exposure_s=0.001, gain_db=0.0,
                 pixel_format="RGBf32", data=data, meta={"stem": f"{seq:06d}", "exposures": [0.001], "ref": 0})


class Echo:
    """A stage that turns each window into an 'hdr' frame with the same seq."""

    name = "echo"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s, self.seen = delay_s, []

    def process(self, f: Frame):
        time.sleep(self.delay_s)
        self.seen.append(f.seq)
        return [Frame(kind="hdr", stream=f.stream, seq=f.seq, t_ns=f.t_ns, exposure_s=f.exposure_s, gain_db=0.0,
                      pixel_format="RGBf32", data=np.asarray(f.data), meta={"stem": f.stem})]

    def finish(self):
        return []


def collect(rx, n_timeout=20.0) -> tuple[list[int], Frame | None]:
    seqs, deadline = [], time.monotonic() + n_timeout
    while time.monotonic() < deadline:
        f = rx.recv(timeout_s=0.2)
        if f is None:
            continue
        if f.kind == "eos":
            return seqs, f
        seqs.append(f.seq)
    return seqs, None


def start_worker(stage, work, sink, cfg, name):
    stop = threading.Event()
    w = Worker(stage, ">" + work, ">" + sink, cfg, name=name)
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    return w, stop, t


def test_windows_are_dealt_in_chunks_and_the_eos_counts_them():
    cfg = DispatchConfig(**FAST)
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    d = Dispatcher("@tcp://127.0.0.1:*", ">" + rx.endpoint, cfg)
    a, b = Echo(0.01), Echo(0.01)
    workers = [start_worker(a, d.endpoint, rx.endpoint, cfg, "a"), start_worker(b, d.endpoint, rx.endpoint, cfg, "b")]
    try:
        for s in range(10):
            assert d.send(window(s), timeout_s=5)
        assert d.send(eos("t", 10, count=10, first_seq=0), timeout_s=5)
        seqs, end = collect(EosHold(rx, grace_s=2.0))
        assert sorted(seqs) == list(range(10)) and end is not None
        assert end.meta["count"] == 10 and end.meta["first_seq"] == 0 and "failed" not in end.meta
        assert a.seen and b.seen  # both worked
        for seen in (a.seen, b.seen):  # in runs of consecutive seqs (chunks of 2)
            assert all(seen[i + 1] == seen[i] + 1 for i in range(0, len(seen) - 1, 2))
        assert d.stats.chunks_done == 5
    finally:
        for _, stop, t in workers:
            stop.set()
            t.join(5)
        d.close()
        rx.close()


def silent_worker(endpoint: str, taken: list):
    """Says READY, takes one chunk, then goes silent (as a SIGKILLed or frozen worker does)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([READY, msgpack.packb({"worker": "silent", "slots": 1})])
    if sock.poll(5000):
        parts = sock.recv_multipart()
        assert parts[0] == WORK
        taken.append(decode_work(parts)[0])
    return sock


def test_a_dead_workers_chunk_goes_to_another_worker():
    cfg = DispatchConfig(**FAST)
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    d = Dispatcher("@tcp://127.0.0.1:*", ">" + rx.endpoint, cfg)
    taken: list = []
    for s in range(2):
        d.send(window(s), timeout_s=5)
    dead = silent_worker(d.endpoint, taken)
    w = None
    try:
        assert taken == [0]  # the silent worker holds chunk 0 (seqs 0, 1)
        good = Echo()
        w = start_worker(good, d.endpoint, rx.endpoint, cfg, "good")
        for s in range(2, 6):
            d.send(window(s), timeout_s=5)
        d.send(eos("t", 6, count=6, first_seq=0), timeout_s=5)
        seqs, end = collect(EosHold(rx, grace_s=2.0))
        assert sorted(seqs) == list(range(6)) and end is not None and "failed" not in end.meta
        assert 0 in good.seen and 1 in good.seen  # re-dispatched after the silence
        assert d.stats.workers_lost == 1 and d.stats.redispatched == 1
    finally:
        dead.close()
        if w is not None:
            w[1].set()
            w[2].join(5)
        d.close()
        rx.close()


def test_a_chunk_that_fails_everywhere_is_given_up_and_named_in_the_eos():
    cfg = DispatchConfig(**{**FAST, "retries": 0})
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    d = Dispatcher("@tcp://127.0.0.1:*", ">" + rx.endpoint, cfg)
    taken: list = []
    for s in range(2):
        d.send(window(s), timeout_s=5)
    dead = silent_worker(d.endpoint, taken)
    w = None
    try:
        assert taken == [0]
        good = Echo()
        w = start_worker(good, d.endpoint, rx.endpoint, cfg, "good")
        for s in range(2, 4):
            d.send(window(s), timeout_s=5)
        d.send(eos("t", 4, count=4, first_seq=0), timeout_s=5)
        hold = EosHold(rx, grace_s=2.0)
        seqs, end = collect(hold)
        assert sorted(seqs) == [2, 3] and end is not None
        assert end.meta["failed"] == [0, 1]  # reported, not silently skipped
        assert not hold.owed()
    finally:
        dead.close()
        if w is not None:
            w[1].set()
            w[2].join(5)
        d.close()
        rx.close()


def test_malformed_worker_messages_are_counted_and_the_dispatcher_lives():
    cfg = DispatchConfig(**FAST)
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    d = Dispatcher("@tcp://127.0.0.1:*", ">" + rx.endpoint, cfg)
    junk = zmq.Context.instance().socket(zmq.DEALER)
    junk.setsockopt(zmq.LINGER, 0)
    junk.connect(d.endpoint)
    try:
        w = None
        junk.send_multipart([READY, b"\xc1"])
        junk.send_multipart([b"HB"])
        deadline = time.monotonic() + 5
        while d.stats.malformed < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.stats.malformed == 2
        good = Echo()
        w = start_worker(good, d.endpoint, rx.endpoint, cfg, "good")
        d.send(window(0), timeout_s=5)
        d.send(eos("t", 1, count=1, first_seq=0), timeout_s=5)
        seqs, end = collect(EosHold(rx, grace_s=2.0))
        assert seqs == [0] and end is not None
    finally:
        junk.close()
        if w is not None:
            w[1].set()
            w[2].join(5)
        d.close()
        rx.close()


def test_eos_hold_gives_up_waiting_after_the_grace_period():
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    from hdrstream.transport import Sender

    tx = Sender(">" + rx.endpoint, bind=False)
    try:
        tx.send(window(0), timeout_s=5)
        tx.send(eos("t", 3, count=3, first_seq=0), timeout_s=5)  # 1 and 2 never come
        hold = EosHold(rx, grace_s=0.5)
        t0 = time.monotonic()
        seqs, end = collect(hold)
        assert seqs == [0] and end is not None and time.monotonic() - t0 >= 0.5
    finally:
        tx.close()
        rx.close()


def test_a_dispatcher_stopped_mid_stream_reports_every_unfinished_window():
    """No worker ever came and preprocess is stopped (Ctrl-C): nothing may vanish silently."""
    cfg = DispatchConfig(**FAST)
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    d = Dispatcher("@tcp://127.0.0.1:*", ">" + rx.endpoint, cfg)
    try:
        for s in range(5):
            assert d.send(window(s), timeout_s=5)
        time.sleep(0.2)
        d.close()
        seqs, end = collect(rx, n_timeout=10)
        assert seqs == [] and end is not None
        assert end.seq == 5 and end.meta["failed"] == [0, 1, 2, 3, 4] and "stopped" in end.meta["error"]
        assert end.meta["count"] == 5 and end.meta["first_seq"] == 0
    finally:
        rx.close()


def test_with_no_worker_for_too_long_the_waiting_windows_are_given_up_and_the_stream_ends():
    cfg = DispatchConfig(**{**FAST, "no_worker_timeout_s": 0.5})
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    d = Dispatcher("@tcp://127.0.0.1:*", ">" + rx.endpoint, cfg)
    try:
        for s in range(3):
            assert d.send(window(s), timeout_s=5)
        assert d.send(eos("t", 3, count=3, first_seq=0), timeout_s=5)
        seqs, end = collect(rx, n_timeout=10)
        assert end is not None and end.meta["failed"] == [0, 1, 2] and d.wait(1.0)
    finally:
        d.close()
        rx.close()


def test_a_dead_dispatcher_thread_says_why_and_takes_no_more_work(monkeypatch):
    """serve_preprocess turns this into a non-zero exit (a dead thread is a dead process)."""
    died = []

    def broken(self):
        raise KeyError("a bug in dealing")

    monkeypatch.setattr(Dispatcher, "_deal", broken)
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    d = Dispatcher("@tcp://127.0.0.1:*", ">" + rx.endpoint, DispatchConfig(**FAST), on_failure=died.append)
    try:
        deadline = time.monotonic() + 5
        while not died and time.monotonic() < deadline:  # the thread sets .failure, then calls back
            time.sleep(0.02)
        assert d.failure is not None and "KeyError" in d.failure and died == [d.failure]
        assert d.send(window(0), timeout_s=0.5) is False
    finally:
        d.close()
        rx.close()


def test_a_chunk_of_unwarped_windows_carries_each_frame_once():
    """Codes windows of the real preprocess stage, dealt to a real socket: 4 windows of 5
    frames cross as 8 frames, and the worker decodes windows identical to the ones sent;
    warped windows, whose slots differ per window, still cross whole."""
    from capture.sim import SimCamera, SimConfig
    from deploy.dispatch import work_parts
    from preprocess.stage import PreprocessConfig, Preprocessor

    frames = list(SimCamera(SimConfig(width=48, height=32, frames=10, seed=1)).frames())
    for cfg, shared in ((PreprocessConfig(window_dtype="codes"), True), (PreprocessConfig(), False)):
        pre = Preprocessor(cfg)
        windows = [w for f in frames for w in pre.process(f)][2:6]
        ctx = zmq.Context.instance()
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        try:
            a.send_multipart([WORK, *work_parts(7, windows)], copy=False)
            parts = b.recv_multipart(copy=False)
        finally:
            a.close(0)
            b.close(0)
        pixels = sum(len(p.buffer) for p in parts[2:] if len(p.buffer) >= 48 * 32 * 3)
        frame_bytes = windows[0].data[0].nbytes
        assert pixels == (8 if shared else 20) * frame_bytes
        chunk, got = decode_work(parts)
        assert chunk == 7 and [w.seq for w in got] == [w.seq for w in windows]
        for x, y in zip(got, windows):
            assert x.pixel_format == y.pixel_format and x.meta == y.meta
            np.testing.assert_array_equal(x.data, y.data)


def test_a_malformed_shared_work_message_is_a_protocol_error():
    import pytest

    from deploy.dispatch import work_parts
    from hdrstream.frame import ProtocolError

    win = Frame(kind="window", stream="t", seq=3, t_ns=3, exposure_s=0.001, gain_db=0.0, pixel_format="RGB8",
                data=np.zeros((3, 4, 6, 3), np.uint8),
                meta={"stem": "000003", "exposures": [0.001, 0.008, 0.001], "ref": 1, "seqs": [2, 3, 4],
                      "warps": [[1, 0, 0, 0, 1, 0]] * 3, "warped": False})
    body, header, *shared = work_parts(1, [win])
    assert len(shared) == 3 and decode_work([WORK, body, header, *shared])[1][0].seq == 3
    for slots in ([[0, 1, 9]], [[]], "x", [[0, 1, True]], [[0, 1]]):
        bad = msgpack.packb({"chunk": 1, "seqs": [3], "slots": slots})
        with pytest.raises(ProtocolError):
            decode_work([WORK, bad, header, *shared])
    with pytest.raises(ProtocolError):  # more windows than parts
        decode_work([WORK, msgpack.packb({"chunk": 1, "seqs": [3], "slots": [[0]] * 9}), header])
