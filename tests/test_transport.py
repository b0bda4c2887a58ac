"""Real ZeroMQ sockets: inproc and tcp loopback, back-pressure, malformed input, timeouts."""
import threading

import msgpack
import numpy as np
import pytest
import zmq

from hdrstream.frame import Frame, encode
from hdrstream.transport import Receiver, Sender, context, parse_endpoint


def frame(seq: int, h=64, w=48) -> Frame:
    data = np.full((h, w), seq % 256, np.uint8)
    return Frame("frame", "t", seq, seq, 0.001, 0.0, "Mono8", data, meta={"stem": f"{seq:06d}"})




def test_parse_endpoint_prefixes():
    assert parse_endpoint("@tcp://127.0.0.1:1", False) == ("tcp://127.0.0.1:1", True)
    assert parse_endpoint(">tcp://h:1", True) == ("tcp://h:1", False)
    assert parse_endpoint("inproc://x", True) == ("inproc://x", True)


@pytest.mark.parametrize("kind", ["inproc", "tcp"])
def test_frames_arrive_in_order_with_payload(kind):
    rx = Receiver("inproc://t-order" if kind == "inproc" else "tcp://127.0.0.1:*", bind=True)
    tx = Sender(rx.endpoint, bind=False)
    try:
        got = []

        def consume():
            for _ in range(20):
                got.append(rx.recv(timeout_s=5))

        t = threading.Thread(target=consume)
        t.start()
        for i in range(20):
            assert tx.send(frame(i), timeout_s=5)
        t.join(10)
        assert [f.seq for f in got] == list(range(20))
        assert all(int(f.data[0, 0]) == f.seq for f in got)
    finally:
        tx.close()
        rx.close()


def test_malformed_messages_are_counted_and_skipped():
    rx = Receiver("tcp://127.0.0.1:*", bind=True)
    ep = rx.endpoint
    raw = context().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(ep)
    try:
        raw.send_multipart([b"\xc1garbage", b"x"])
        raw.send_multipart([msgpack.packb({"v": 1}), b""])
        raw.send(b"single part")
        raw.send_multipart(encode(frame(5)), copy=False)
        got = rx.recv(timeout_s=5)
        assert got is not None and got.seq == 5
        assert sum(rx.malformed.values()) == 3
    finally:
        raw.close(linger=0)
        rx.close()


def test_send_times_out_under_back_pressure_instead_of_hanging():
    ep = "inproc://t-hwm"
    rx = Receiver(ep, bind=True, hwm=1)
    tx = Sender(ep, bind=False, hwm=1)
    try:
        results = [tx.send(frame(i), timeout_s=0.3) for i in range(6)]
        assert results[0] and not results[-1]
    finally:
        tx.close()
        rx.close()


def test_recv_timeout_returns_none():
    rx = Receiver("inproc://t-empty", bind=True)
    try:
        assert rx.recv(timeout_s=0.2) is None
    finally:
        rx.close()


def test_stop_event_unblocks_a_blocked_sender():
    ep = "inproc://t-stop"
    rx = Receiver(ep, bind=True, hwm=1)
    tx = Sender(ep, bind=False, hwm=1)
    stop = threading.Event()
    try:
        while tx.send(frame(0), timeout_s=0.2):
            pass
        threading.Timer(0.3, stop.set).start()
        assert tx.send(frame(1), stop=stop) is False
    finally:
        tx.close()
        rx.close()


def test_bind_failure_is_a_clear_error():
    a = Receiver("tcp://127.0.0.1:*", bind=True)
    try:
        with pytest.raises(OSError, match="cannot bind"):
            Receiver(a.endpoint, bind=True)
    finally:
        a.close()
