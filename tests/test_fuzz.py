"""No message can kill a receiver: arbitrary bytes and arbitrary msgpack maps thrown at the
frame decoder, every stage's loop, the dispatcher's control socket and the workers' WORK
decoder (hypothesis; the "ci" profile in conftest.py fixes the seed and bounds the examples).

Each test ends with a valid message after the garbage and checks it still gets through:
a receiver that stopped or wedged would fail there.
"""
from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.dispatch import BYE, DONE, HB, READY, ControlError, DispatchConfig, Dispatcher, decode_work, parse_control
from hdrstream.frame import Frame, ProtocolError, decode, encode, eos
from hdrstream.runner import LoopStats, run_stage
from hdrstream.transport import Receiver, context
from infer.stage import InferStage
from preprocess.stage import PreprocessConfig, Preprocessor
from sink.stage import Sink, SinkConfig

# -- what to throw ------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=12)


def valid_frame(kind: str = "frame", seq: int = 0) -> Frame:
    if kind == "frame":
        data = np.full((8, 8), 100, np.uint8)
        return Frame("frame", "cam0", seq, seq, 0.001 * (1 + 7 * (seq % 2)), 0.0, "BayerRG8", data)
    if kind == "window":
        data = np.full((3, 8, 8, 3), 0.25, np.float32)
        return Frame("window", "cam0", seq, seq, 0.008, 0.0, "RGBf32", data,
                     meta={"exposures": [0.001, 0.008, 0.001], "ref": 1, "seqs": [seq - 1, seq, seq + 1],
                           "warps": [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]] * 3, "t_min": 0.001})
    data = np.full((8, 8, 3), 0.5, np.float32)
    return Frame("hdr", "cam0", seq, seq, 0.008, 0.0, "RGBf32", data, meta={"method": "classical"})


KEYS = ["v", "kind", "stream", "seq", "t_ns", "exposure_s", "gain_db", "pixel_format", "shape", "dtype",
        "set", "stem", "method", "timing", "wall_ns", "exposures", "ref", "seqs", "warps", "count",
        "first_seq", "failed", "error", "malformed", "t_min"]


@st.composite
def mutated_parts(draw, kind: str = "frame") -> list[bytes]:
    """A valid message with some header fields replaced or removed, and maybe another payload."""
    header, payload = encode(valid_frame(kind, seq=draw(st.integers(1, 5))))
    h = msgpack.unpackb(header)
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        if draw(st.booleans()):
            h[key] = draw(values | st.sampled_from(["uint8", "float32", "object", "U8", "V4", "<f8", "i8"])
                          | st.lists(st.integers(-3, 2**40), max_size=5))
        else:
            h.pop(key, None)
    body = bytes(payload)
    if draw(st.booleans()):
        body = draw(st.binary(max_size=300))
    return [msgpack.packb(h, use_bin_type=True), body]


raw_parts = st.lists(st.binary(max_size=200), min_size=0, max_size=4)
any_map_parts = st.tuples(st.dictionaries(st.text(max_size=10), values, max_size=12), st.binary(max_size=64)).map(
    lambda hp: [msgpack.packb(hp[0], use_bin_type=True), hp[1]])
messages = raw_parts | any_map_parts | mutated_parts("frame") | mutated_parts("window") | mutated_parts("hdr")


# -- the decoder ------------------------------------------------------------------------------


@given(messages)
def test_decode_raises_nothing_but_protocol_error(parts):
    try:
        frame = decode(parts)
    except ProtocolError:
        return
    assert isinstance(frame, Frame) and frame.data.nbytes == len(parts[1])


@given(st.integers(1, 2**40), st.integers(1, 2**40), st.sampled_from(["uint8", "float32", "uint16"]))
def test_huge_or_overflowing_shapes_are_rejected_before_any_allocation(h, w, dtype):
    header = {**msgpack.unpackb(encode(valid_frame())[0]), "shape": [h, w, 3, 2**40], "dtype": dtype}
    with pytest.raises(ProtocolError):
        decode([msgpack.packb(header), b"\0" * 64])


# -- every stage's loop ---------------------------------------------------------------------------


class ListReceiver:
    """Receiver semantics (decode, count malformed) over a list of raw messages."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        self.messages, self.malformed = list(messages), {}

    def recv(self, timeout_s: float | None = None) -> Frame | None:
        while self.messages:
            try:
                return decode(self.messages.pop(0))
            except ProtocolError as exc:
                reason = str(exc).split(":")[0][:60]
                self.malformed[reason] = self.malformed.get(reason, 0) + 1
        return None


class Keep:
    """A sender that keeps what it is given."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def send(self, frame: Frame, timeout_s=None, stop=None) -> bool:
        self.frames.append(frame)
        return True


def survives(stage, garbage: list[list[bytes]], last: Frame) -> LoopStats:
    """Garbage, then one valid message and an eos: the loop must reach the eos."""
    rx = ListReceiver([*garbage, encode(last), encode(eos("cam0", 100, count=100, first_seq=0))])
    stop = threading.Event()
    stats = run_stage(stage, rx, Keep(), stop)
    assert not rx.messages, "the loop stopped before the end of stream"
    return stats


FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(st.lists(messages | mutated_parts("frame"), max_size=6))
def test_preprocess_loop_survives_any_message(garbage):
    survives(Preprocessor(PreprocessConfig(k=1)), garbage, valid_frame("frame", 50))


@FUZZ
@given(st.lists(messages | mutated_parts("window"), max_size=6))
def test_infer_loop_survives_any_message(garbage):
    stats = survives(InferStage("classical"), garbage, valid_frame("window", 50))
    assert stats.sent >= 1  # the valid window after the garbage became an HDR frame


@FUZZ
@given(st.lists(messages | mutated_parts("hdr"), max_size=6))
def test_sink_loop_survives_any_message(tmp_path_factory, garbage):
    out = tmp_path_factory.mktemp("sink")
    sink = Sink(SinkConfig(out, preview=False, video=False, contact_sheet_frames=0, main_method="classical"))
    survives(sink, garbage, valid_frame("hdr", 50))
    assert (out / "report.json").exists() and (out / "000050.exr").exists()


# -- the dispatcher's control socket and the workers' WORK messages ----------------------------------

control_kinds = st.sampled_from([READY, HB, DONE, BYE, b"WORK", b"", b"NOPE"]) | st.binary(max_size=8)
control_bodies = (st.dictionaries(st.sampled_from(["worker", "slots", "chunk", "x"]), values, max_size=4)
                  .map(lambda d: msgpack.packb(d, use_bin_type=True)) | st.binary(max_size=40))
control_parts = st.tuples(control_kinds, control_bodies).map(list) | st.lists(st.binary(max_size=20), max_size=4)


@given(control_parts)
def test_parse_control_raises_nothing_but_control_error(parts):
    try:
        route, kind, name, body = parse_control([b"route", *parts])
    except ControlError:
        return
    assert kind in (READY, HB, DONE, BYE) and isinstance(name, str) and isinstance(body, dict)


@given(st.lists(st.binary(max_size=100), max_size=5) | mutated_parts("window").map(lambda p: [b"WORK", b"\x81\xa5chunk\x01", *p]))
def test_decode_work_raises_nothing_but_protocol_error(parts):
    try:
        decode_work(parts)
    except ProtocolError:
        pass


@settings(max_examples=1)
@given(st.lists(control_parts, min_size=300, max_size=300))
def test_dispatcher_survives_any_control_message_and_still_deals(garbage):
    """Real sockets: 300 arbitrary control messages from a rogue peer, then a real worker's
    READY; the dispatcher must still be alive and hand it work."""
    cfg = DispatchConfig(chunk=1, heartbeat_s=0.05, dead_after_s=2.0)
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    d = Dispatcher("@tcp://127.0.0.1:*", ">" + rx.endpoint, cfg)
    rogue = context().socket(zmq.DEALER)
    good = context().socket(zmq.DEALER)
    try:
        rogue.connect(d.endpoint)
        for parts in garbage:
            rogue.send_multipart(parts or [b""])
        time.sleep(0.3)
        good.connect(d.endpoint)
        good.send_multipart([READY, msgpack.packb({"worker": "good", "slots": 1})])
        assert d.send(valid_frame("window", 3), timeout_s=5)
        assert good.poll(5000), "the dispatcher dealt nothing after the garbage"
        parts = good.recv_multipart()
        chunk, frames = decode_work(parts)
        assert [f.seq for f in frames] == [3]
        assert d.failure is None and d._thread.is_alive()
        assert d.stats.malformed + d.stats.unknown_worker > 0
    finally:
        d.close()
        rx.close()
        rogue.close(linger=0)
        good.close(linger=0)


def test_a_receiver_on_a_real_socket_counts_garbage_and_delivers_the_next_frame():
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    raw = context().socket(zmq.PUSH)  # one socket: messages arrive in the order sent
    try:
        raw.connect(rx.endpoint)
        bad = [[b"\xc1"], [b"x", b"y", b"z"], [msgpack.packb({"v": 1, "dtype": "object"}), b""],
               [msgpack.packb({**msgpack.unpackb(encode(valid_frame())[0]), "shape": [2**40, 2**40]}), b""]]
        for parts in [*bad, encode(valid_frame("frame", 9))]:
            raw.send_multipart(parts)
        f = rx.recv(timeout_s=5)
        assert f is not None and f.seq == 9 and sum(rx.malformed.values()) == len(bad)
    finally:
        raw.close(linger=0)
        rx.close()
