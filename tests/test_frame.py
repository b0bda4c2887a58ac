"""The frame protocol: round trips, zero copy, and a clear error for every malformation."""
import msgpack
import numpy as np
import pytest

from hdrstream.frame import Frame, ProtocolError, decode, encode, eos


def make(data=None, fmt="BayerRG8", **kw) -> Frame:
    data = np.arange(8 * 6, dtype=np.uint8).reshape(8, 6) if data is None else data
    args = dict(kind="frame", stream="cam0", seq=7, t_ns=123, exposure_s=0.004, gain_db=0.0,
                pixel_format=fmt, data=data, set=1, meta={"stem": "000007"})
    args.update(kw)
    return Frame(**args)


def header_of(frame: Frame) -> dict:
    return msgpack.unpackb(encode(frame)[0])


def parts_with(frame: Frame, **changes):
    h = header_of(frame)
    for k, v in changes.items():
        if v is None:
            h.pop(k)
        else:
            h[k] = v
    return [msgpack.packb(h), encode(frame)[1]]


class TestRoundTrip:
    @pytest.mark.parametrize("fmt,shape,dtype", [
        ("BayerRG8", (8, 6), np.uint8), ("BayerRG12", (8, 6), np.uint16), ("RGB8", (4, 5, 3), np.uint8),
        ("Mono8", (3, 3), np.uint8), ("RGBf32", (2, 4, 5, 3), np.float32), ("RGBf16", (4, 5, 3), np.float16),
    ])
    def test_payload_and_header_survive(self, fmt, shape, dtype):
        data = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
        f = decode(encode(make(data, fmt)))
        assert f.pixel_format == fmt and f.seq == 7 and f.set == 1 and f.stem == "000007"
        assert f.exposure_s == pytest.approx(0.004)
        np.testing.assert_array_equal(f.data, data)

    def test_receive_is_a_read_only_view_not_a_copy(self):
        data = np.zeros((8, 6), np.uint8)
        parts = encode(make(data))
        f = decode(parts)
        assert not f.data.flags.writeable
        assert np.shares_memory(f.data, np.frombuffer(parts[1], np.uint8))

    def test_send_side_does_not_copy_contiguous_payload(self):
        data = np.zeros((8, 6), np.uint8)
        assert np.shares_memory(np.frombuffer(encode(make(data))[1], np.uint8), data)

    def test_eos_has_no_pixels(self):
        f = decode(encode(eos("cam0", 10, count=10)))
        assert f.kind == "eos" and f.seq == 10 and f.meta["count"] == 10 and f.data.size == 0


class TestMalformed:
    def test_unknown_version(self):
        with pytest.raises(ProtocolError, match="unknown protocol version 99"):
            decode(parts_with(make(), v=99))

    @pytest.mark.parametrize("key", ["seq", "exposure_s", "pixel_format", "shape", "v"])
    def test_missing_key(self, key):
        with pytest.raises(ProtocolError, match=f"missing required key.*{key}"):
            decode(parts_with(make(), **{key: None}))

    def test_payload_size_mismatch(self):
        good = encode(make())
        with pytest.raises(ProtocolError, match="payload is 47 bytes but shape"):
            decode([good[0], bytes(good[1])[:-1]])

    def test_unknown_pixel_format(self):
        with pytest.raises(ProtocolError, match="unknown pixel format 'Bayer9'"):
            decode(parts_with(make(), pixel_format="Bayer9"))

    def test_shape_inconsistent_with_format(self):
        with pytest.raises(ProtocolError, match="RGB8 needs shape"):
            decode(parts_with(make(), pixel_format="RGB8"))

    def test_dtype_inconsistent_with_format(self):
        with pytest.raises(ProtocolError, match="BayerRG12 needs dtype uint16"):
            decode(parts_with(make(), pixel_format="BayerRG12"))

    def test_garbage_header(self):
        with pytest.raises(ProtocolError, match="not valid msgpack"):
            decode([b"\xc1\xff\x00", b""])

    def test_header_not_a_map(self):
        with pytest.raises(ProtocolError, match="must be a map"):
            decode([msgpack.packb([1, 2]), b""])

    def test_wrong_part_count(self):
        with pytest.raises(ProtocolError, match="expected 2 message parts"):
            decode([msgpack.packb({})])

    def test_wrong_type(self):
        with pytest.raises(ProtocolError, match="'seq' has type str"):
            decode(parts_with(make(), seq="7"))

    def test_unknown_kind(self):
        with pytest.raises(ProtocolError, match="unknown message kind"):
            decode(parts_with(make(), kind="image"))

    def test_nonpositive_exposure(self):
        with pytest.raises(ProtocolError, match="exposure_s must be positive"):
            decode(parts_with(make(), exposure_s=0.0))

    def test_sender_refuses_to_encode_a_bad_frame(self):
        with pytest.raises(ProtocolError):
            encode(make(np.zeros((3, 3, 3), np.uint8), "BayerRG8"))
