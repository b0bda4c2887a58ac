"""Sending policies: ``block`` drops nothing; ``drop-oldest`` drops exactly the oldest, counted."""
import logging
import re
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hdrstream.frame import Frame, eos
from hdrstream.metrics import StageMetrics
from hdrstream.runner import run_source
from hdrstream.transport import Receiver, Sender, _ranges


def frame(seq: int) -> Frame:
    return Frame("frame", "t", seq, seq, 0.001, 0.0, "Mono8", np.full((8, 8), seq % 256, np.uint8))


def drain(rx: Receiver, delay_s: float = 0.0) -> list[Frame]:
    """Everything up to and including the eos, ``delay_s`` per message (a slow consumer)."""
    got = []
    while True:
        f = rx.recv(timeout_s=10)
        assert f is not None, f"stream stalled after {[g.seq for g in got]}"
        got.append(f)
        if f.kind == "eos":
            return got
        time.sleep(delay_s)


def logged_seqs(caplog) -> list[int]:
    """Every seq named in the sender's drop log lines (``seq 1-3, 7``)."""
    seqs = []
    for rec in caplog.records:
        m = re.search(r"seq ([\d, -]+) \(policy drop-oldest", rec.getMessage())
        for part in m.group(1).split(", ") if m else []:
            a, _, b = part.partition("-")
            seqs.extend(range(int(a), int(b or a) + 1))
    return seqs


def wait_for(cond, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_drop_oldest_drops_exactly_the_oldest_and_never_the_eos(caplog):
    reg = CollectorRegistry()
    m = StageMetrics("capture", reg)
    # bound with no peer yet: nothing can leave, so the queue fills deterministically
    tx = Sender("tcp://127.0.0.1:*", bind=True, policy="drop-oldest", queue=3, metrics=m)
    rx = None
    try:
        with caplog.at_level(logging.WARNING, logger="hdrstream.transport"):
            assert tx.send(frame(0))
            wait_for(lambda: tx.queued == 0)  # seq 0 is in the sender thread's hands, waiting for a peer
            for seq in range(1, 10):
                assert tx.send(frame(seq))  # never blocks
            assert tx.send(eos("t", 10, count=10))  # the queue is full: the eos displaces seq 7
            assert tx.dropped == 7 and tx.queued == 3
            assert reg.get_sample_value("hdrstream_capture_queue_depth") == 3
            rx = Receiver(tx.endpoint, bind=False)
            got = drain(rx)
            tx.close(flush_s=5)
        assert [f.seq for f in got] == [0, 8, 9, 10]
        assert got[-1].kind == "eos" and got[-1].meta == {"count": 10}
        assert [int(f.data[0, 0]) for f in got[:-1]] == [0, 8, 9]
        assert tx.dropped == 7 and tx.sent == 4
        assert reg.get_sample_value("hdrstream_capture_dropped_frames_total", {"reason": "queue_full"}) == 7
        assert reg.get_sample_value("hdrstream_capture_queue_depth") == 0
        assert sorted(logged_seqs(caplog)) == [1, 2, 3, 4, 5, 6, 7]  # each drop logged with its seq
    finally:
        tx.close()
        if rx is not None:
            rx.close()


def test_a_queued_eos_is_never_the_oldest_dropped():
    """One stream ends while the next starts: the eos stays queued while frames behind it go."""
    tx = Sender("tcp://127.0.0.1:*", bind=True, policy="drop-oldest", queue=2)
    rx = None
    try:
        tx.send(frame(0))
        wait_for(lambda: tx.queued == 0)
        tx.send(eos("t", 1, count=1))
        for seq in (1, 2, 3):
            tx.send(frame(seq))
        assert tx.dropped == 2 and tx.queued == 2
        rx = Receiver(tx.endpoint, bind=False)
        got = [rx.recv(timeout_s=10) for _ in range(3)]
        tx.close(flush_s=5)
        assert [(f.kind, f.seq) for f in got] == [("frame", 0), ("eos", 1), ("frame", 3)]
    finally:
        tx.close()
        if rx is not None:
            rx.close()


def test_drop_oldest_with_a_slow_receiver_keeps_the_newest():
    reg = CollectorRegistry()
    m = StageMetrics("capture", reg)
    rx = Receiver("tcp://127.0.0.1:*", bind=True, hwm=1)
    tx = Sender(rx.endpoint, bind=False, hwm=1, policy="drop-oldest", queue=2, metrics=m)
    got: list[Frame] = []
    consumer = threading.Thread(target=lambda: got.extend(drain(rx, delay_s=0.01)))
    consumer.start()
    try:
        n = 60
        for seq in range(n):
            assert tx.send(frame(seq))
        assert tx.send(eos("t", n, count=n))
        consumer.join(20)
        tx.close(flush_s=5)
        seqs = [f.seq for f in got if f.kind == "frame"]
        assert got[-1].kind == "eos"
        assert seqs == sorted(set(seqs))  # in order, no duplicates
        assert n - 1 in seqs  # the newest frame is never the one dropped
        assert tx.dropped > 0  # 60 frames at once into a consumer that takes 10 ms each
        assert len(seqs) + tx.dropped == n  # every frame either arrived or was counted
        assert reg.get_sample_value("hdrstream_capture_dropped_frames_total",
                                    {"reason": "queue_full"}) == tx.dropped
    finally:
        tx.close()
        rx.close()


def test_block_policy_drops_nothing_under_the_same_load():
    rx = Receiver("tcp://127.0.0.1:*", bind=True, hwm=1)
    tx = Sender(rx.endpoint, bind=False, hwm=1)
    got: list[Frame] = []
    consumer = threading.Thread(target=lambda: got.extend(drain(rx, delay_s=0.005)))
    consumer.start()
    try:
        n = 30
        for seq in range(n):
            assert tx.send(frame(seq), timeout_s=10)  # waits for the consumer instead
        assert tx.send(eos("t", n), timeout_s=10)
        consumer.join(20)
        assert [f.seq for f in got] == list(range(n + 1))
        assert tx.dropped == 0 and tx.sent == n + 1 and tx.queued == 0 and tx.policy == "block"
    finally:
        tx.close()
        rx.close()


def test_close_gives_up_on_an_absent_peer_and_counts_what_was_left():
    reg = CollectorRegistry()
    m = StageMetrics("capture", reg)
    tx = Sender("tcp://127.0.0.1:*", bind=True, policy="drop-oldest", queue=4, metrics=m)
    for seq in range(3):
        tx.send(frame(seq))
    tx.send(eos("t", 3))
    tx.close(flush_s=0.3)  # nobody ever connects: bounded, and nothing vanishes uncounted
    assert tx.dropped == 4 and tx.sent == 0
    assert reg.get_sample_value("hdrstream_capture_dropped_frames_total", {"reason": "not_sent"}) == 4
    assert not tx.send(frame(9))  # closed: refused, not queued


def test_close_flushes_what_is_queued():
    rx = Receiver("tcp://127.0.0.1:*", bind=True)
    tx = Sender(rx.endpoint, bind=False, policy="drop-oldest", queue=16)
    try:
        for seq in range(5):
            tx.send(frame(seq))
        tx.send(eos("t", 5))
        tx.close(flush_s=5)
        assert [f.seq for f in drain(rx)] == [0, 1, 2, 3, 4, 5]
        assert tx.dropped == 0
    finally:
        rx.close()


def test_run_source_through_a_drop_oldest_sender_ends_with_the_eos():
    """The capture service's live-view configuration: a source that outpaces its consumer."""

    class Burst:
        name = "burst"

        def frames(self):
            return (frame(i) for i in range(40))

        def close(self):
            pass

    reg = CollectorRegistry()
    m = StageMetrics("capture", reg)
    rx = Receiver("tcp://127.0.0.1:*", bind=True, hwm=1)
    tx = Sender(rx.endpoint, bind=False, hwm=1, policy="drop-oldest", queue=2, metrics=m)
    got: list[Frame] = []
    consumer = threading.Thread(target=lambda: got.extend(drain(rx, delay_s=0.01)))
    consumer.start()
    try:
        stats = run_source(Burst(), tx, threading.Event(), metrics=m)
        consumer.join(20)
        tx.close(flush_s=5)
        assert got[-1].kind == "eos" and got[-1].meta["count"] == 40
        assert stats.sent == 40  # accepted by the sender; what it dropped is its own count
        assert len(got) - 1 + tx.dropped == 40
        assert reg.get_sample_value("hdrstream_capture_sent_total") == 40
        assert reg.get_sample_value("hdrstream_capture_dropped_frames_total",
                                    {"reason": "queue_full"}) == tx.dropped
    finally:
        tx.close()
        rx.close()


def test_bad_policy_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown sending policy 'newest'"):
        Sender("tcp://127.0.0.1:*", policy="newest")
    with pytest.raises(ValueError, match="queue of at least 1"):
        Sender("tcp://127.0.0.1:*", policy="drop-oldest", queue=0)


def test_ranges_name_every_seq():
    assert _ranges([1, 2, 3, 7]) == "1-3, 7"
    assert _ranges([5]) == "5"
    assert _ranges([4, 6, 7]) == "4, 6-7"
