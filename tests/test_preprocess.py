"""preprocess: decoding, CRF replacement, and the window bookkeeping (one window per frame)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from hdrstream.crf import load_crf, save_crf
from hdrstream.frame import Frame, decode, encode
from infer.method import apply_warps, window_frames
from preprocess.debayer import demosaic_mhc, regamma, to_rgb
from preprocess.stage import PreprocessConfig, Preprocessor
from preprocess.window import ExposureCycle, auto_k, plan_window

BAYER = {"RG": "RGGB", "GR": "GRBG", "GB": "GBRG", "BG": "BGGR"}


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """GenICam mosaic: ``pattern`` names the colours at (0,0) and (0,1)."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for i, c in enumerate(BAYER[pattern]):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(c)]
    return out


def frame(data: np.ndarray, fmt: str, seq: int = 0, t: float = 1e-3, set_: int | None = None) -> Frame:
    return Frame("frame", "test", seq, seq * 1000, t, 0.0, fmt, data, set=set_)


# -- decoding -------------------------------------------------------------------------

class TestToRgb:
    COLOURS = [(0.9, 0.2, 0.1), (0.1, 0.8, 0.3), (0.2, 0.3, 0.95)]

    @pytest.mark.parametrize("pattern", list(BAYER))
    @pytest.mark.parametrize("bits", [8, 10, 12, 16])
    def test_bayer_colours_come_back(self, pattern, bits):
        white = 2**bits - 1
        dtype = np.uint8 if bits == 8 else np.uint16
        rgb = np.zeros((24, 36, 3), np.float32)
        for i, col in enumerate(self.COLOURS):  # three vertical colour bands
            rgb[:, i * 12:(i + 1) * 12] = col
        raw = mosaic(np.round(rgb * white).astype(dtype), pattern)
        out = to_rgb(frame(raw, f"Bayer{pattern}{bits}"))
        assert out.dtype == np.float32 and out.shape == (24, 36, 3)
        for i, col in enumerate(self.COLOURS):
            centre = out[8:16, i * 12 + 4:i * 12 + 8]
            np.testing.assert_allclose(centre.mean(axis=(0, 1)), col, atol=0.02)

    @pytest.mark.parametrize("bits", [8, 12])
    def test_smooth_colour_image_is_accurate(self, bits):
        # VNG (8-bit) and Malvar-He-Cutler (deeper) must track gentle colour gradients.
        white = 2**bits - 1
        y, x = np.mgrid[0:32, 0:48].astype(np.float32)
        rgb = np.stack([0.2 + 0.6 * x / 47, 0.7 - 0.4 * y / 31, 0.3 + 0.2 * np.sin(x / 9 + y / 7)], -1)
        raw = mosaic(np.round(rgb * white).astype(np.uint8 if bits == 8 else np.uint16), "GB")
        out = to_rgb(frame(raw, f"BayerGB{bits}"))
        assert np.abs(out - rgb)[4:-4, 4:-4].max() < 0.02

    def test_deep_mosaics_get_vng_edges(self):
        """Sharp colour edges: a 12-bit mosaic demosaics as well as its 8-bit version
        (VNG), clearly better than the linear Malvar-He-Cutler filters alone."""
        rng = np.random.default_rng(0)
        rgb = np.full((96, 128, 3), 0.5, np.float32)
        for _ in range(40):
            y, x = rng.integers(0, 90), rng.integers(0, 120)
            h, w = rng.integers(3, 30, 2)
            rgb[y:y + h, x:x + w] = rng.random(3)

        def rmse(out):
            return float(np.sqrt(np.mean((out - rgb)[4:-4, 4:-4] ** 2)))

        raw8 = mosaic(np.round(rgb * 255).astype(np.uint8), "RG")
        raw12 = mosaic(np.round(rgb * 4095).astype(np.uint16), "RG")
        deep, vng = rmse(to_rgb(frame(raw12, "BayerRG12"))), rmse(to_rgb(frame(raw8, "BayerRG8")))
        linear = rmse(np.clip(demosaic_mhc(raw12, "RG") / 4095, 0, 1))
        assert deep <= vng * 1.02 and deep < 0.8 * linear, (deep, vng, linear)

    def test_mono_replicates(self):
        out = to_rgb(frame(np.full((4, 6), 4095, np.uint16), "Mono12"))
        assert out.shape == (4, 6, 3)
        np.testing.assert_allclose(out, 1.0)

    def test_rgb12_divides_by_4095(self):
        data = np.zeros((2, 2, 3), np.uint16)
        data[0, 0] = (4095, 2048, 0)
        out = to_rgb(frame(data, "RGB12"))
        np.testing.assert_allclose(out[0, 0], (1.0, 2048 / 4095, 0.0), rtol=1e-6)

    def test_bgr_is_flipped(self):
        data = np.zeros((2, 2, 3), np.uint8)
        data[..., 0] = 255  # blue in BGR
        out = to_rgb(frame(data, "BGR8"))
        np.testing.assert_allclose(out[0, 0], (0.0, 0.0, 1.0))

    def test_float_passes_through(self):
        data = np.random.default_rng(0).random((3, 4, 3)).astype(np.float16)
        out = to_rgb(frame(data, "RGBf16"))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, data.astype(np.float32))

    def test_bad_payload_raises_value_error(self):
        with pytest.raises(ValueError):
            to_rgb(frame(np.zeros((4, 4), np.uint8), "RGB8"))
        with pytest.raises(ValueError):
            to_rgb(frame(np.zeros((4, 4), np.uint8), "NoSuchFormat"))


class TestRegamma:
    def test_gamma22_is_identity(self):
        code = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
        assert regamma(code, load_crf("gamma2.2")) is code

    def test_other_gamma(self):
        code = np.linspace(0, 1, 12, dtype=np.float32).reshape(2, 2, 3)
        np.testing.assert_allclose(regamma(code, load_crf("gamma1.0")), code ** (1 / 2.2), atol=1e-6)

    def test_crf_table_is_inverted(self, tmp_path):
        # A non-gamma camera: linear = code³ for R, code² for G, code for B.
        xs = np.linspace(0, 1, 1024)
        path = tmp_path / "crf.json"
        save_crf(path, np.stack([xs**3, xs**2, xs]))
        code = np.random.default_rng(1).random((5, 7, 3)).astype(np.float32)
        L = regamma(code, load_crf(path))
        want = np.stack([code[..., 0] ** 3, code[..., 1] ** 2, code[..., 2]], -1) ** (1 / 2.2)
        np.testing.assert_allclose(L, want, atol=2e-3)

    def test_preprocessor_uses_crf_file(self, tmp_path):
        xs = np.linspace(0, 1, 256)
        path = tmp_path / "crf.json"
        save_crf(path, xs**3)  # one row: all channels
        pp = Preprocessor(PreprocessConfig(crf=str(path), align=False, k=1))
        data = np.full((4, 6, 3), 128, np.uint8)
        wins = [w for i in range(3) for w in pp.process(frame(data, "RGB8", i))] + pp.finish()
        np.testing.assert_allclose(wins[0].data[1], (128 / 255) ** (3 / 2.2), atol=2e-3)


# -- windows --------------------------------------------------------------------------

def stream(exps, seqs, h=8, w=12, use_set=False):
    """Frames whose pixels encode their seq (so the test can see which frame filled a slot)."""
    out = []
    for s in seqs:
        i = s % len(exps)
        data = np.full((h, w, 3), (s * 7) % 250 + 1, np.uint8)
        out.append(frame(data, "RGB8", s, exps[i] * 1e-3, i if use_set else None))
    return out


def run(pp, frames):
    out = []
    for f in frames:
        out += pp.process(f)
    return out + pp.finish()


def source_seq(window: Frame, slot: int) -> int:
    """Which seq's pixels are in a slot (pixels encode seq, see ``stream``)."""
    value = round(float(window_frames(window)[slot, 0, 0, 0]) * 255)
    return window.meta["seqs"][slot] if (window.meta["seqs"][slot] * 7) % 250 + 1 == value else -1


@pytest.mark.parametrize("exps", [(1, 8), (1, 4, 16)])
@pytest.mark.parametrize("use_set", [False, True])
def test_every_frame_gets_exactly_one_window(exps, use_set):
    seqs = [s for s in range(14) if s != 6]  # frame 6 lost
    wins = run(Preprocessor(PreprocessConfig(align=False)), stream(exps, seqs, use_set=use_set))
    assert [w.seq for w in wins] == seqs
    k = len(exps)  # auto: 2 for 2 exposures, 3 for 3
    n = 2 * k + 1
    for w in wins:
        assert w.kind == "window" and w.pixel_format == "RGBf32" and w.meta["warped"] is True
        assert w.data.shape == (n, 8, 12, 3) and w.data.dtype == np.float32
        assert w.meta["ref"] == k and len(w.meta["seqs"]) == n
        assert w.meta["t_min"] == pytest.approx(min(exps) * 1e-3)
        for slot in range(n):
            want_t = exps[(w.seq + slot - k) % len(exps)] * 1e-3  # the cycle's exposure there
            assert w.meta["exposures"][slot] == pytest.approx(want_t)
            src = w.meta["seqs"][slot]
            assert src in seqs and source_seq(w, slot) == src
            assert (src - (w.seq + slot - k)) % len(exps) == 0  # same position in the cycle


def test_padding_at_ends_and_gap_2exp():
    seqs = [0, 1, 2, 3, 4, 6, 7, 8, 9]  # 5 lost
    wins = {w.seq: w for w in run(Preprocessor(PreprocessConfig(align=False)), stream((1, 8), seqs))}
    assert wins[0].meta["seqs"] == [0, 1, 0, 1, 2]  # slots -2, -1 padded by 0 and 1
    assert wins[1].meta["seqs"] == [1, 0, 1, 2, 3]  # slot -1 by 1 (same exposure as -1)
    assert wins[4].meta["seqs"] == [2, 3, 4, 3, 6]  # lost 5 -> 3 (closest to the reference)
    assert wins[6].meta["seqs"] == [4, 7, 6, 7, 8]  # lost 5 -> 7
    assert wins[9].meta["seqs"] == [7, 8, 9, 8, 9]
    assert wins[9].meta["exposures"] == pytest.approx([8e-3, 1e-3, 8e-3, 1e-3, 8e-3])


def test_padding_3exp():
    wins = {w.seq: w for w in run(Preprocessor(PreprocessConfig(align=False)), stream((1, 4, 16), range(8)))}
    assert wins[0].meta["seqs"] == [0, 1, 2, 0, 1, 2, 3]
    assert wins[7].meta["seqs"] == [4, 5, 6, 7, 5, 6, 7]


def test_window_is_emitted_as_soon_as_its_last_frame_arrives():
    pp = Preprocessor(PreprocessConfig(align=False))
    got = [[w.seq for w in pp.process(f)] for f in stream((1, 8), range(6))]
    assert got == [[], [], [0], [1], [2], [3]]
    assert [w.seq for w in pp.finish()] == [4, 5]


def test_cycle_length_survives_early_loss():
    cyc = ExposureCycle()
    for s, t in [(0, 1.0), (2, 16.0), (3, 1.0)]:  # 3 exposures, frame 1 lost
        cyc.observe(s, t, None)
    assert cyc.length == 3 and auto_k(cyc.length) == 3
    cyc2 = ExposureCycle()
    for s, t in [(0, 1.0), (3, 8.0), (4, 1.0)]:  # 2 exposures, 1 and 2 lost
        cyc2.observe(s, t, None)
    assert cyc2.length == 2


def test_plan_window_pads_with_same_exposure():
    cyc = ExposureCycle()
    for s in range(4):
        cyc.observe(s, (1.0, 8.0)[s % 2], None)
    avail = {s: s % 2 for s in range(4)}
    assert plan_window(3, 2, avail, cyc.info()) == [1, 2, 3, 2, 3]


def test_exposure_tolerance_groups_jittered_exposures():
    exps = [1.0, 8.0, 1.01, 7.95, 0.995, 8.04]
    pp = Preprocessor(PreprocessConfig(align=False))
    frames = [frame(np.full((4, 6, 3), 9, np.uint8), "RGB8", s, t * 1e-3) for s, t in enumerate(exps)]
    wins = run(pp, frames)
    assert len(wins) == 6 and all(w.data.shape[0] == 5 for w in wins)


def test_window_round_trips_through_the_protocol():
    pp = Preprocessor(PreprocessConfig(align=False, window_dtype="float16"))
    frames = stream((1, 8), range(4))
    frames[1].meta["stem"] = "img_01"
    frames[1].meta["timing"] = {"capture": 0.01}
    w = run(pp, frames)[1]
    back = decode(encode(w))
    assert back.kind == "window" and back.pixel_format == "RGBf16" and back.data.dtype == np.float16
    np.testing.assert_array_equal(back.data, w.data)
    assert back.meta["stem"] == "img_01" and back.meta["ref"] == 2
    assert back.meta["timing"]["capture"] == 0.01 and back.meta["timing"]["preprocess"] > 0
    assert len(back.meta["warps"]) == 5 and all(len(m) == 6 for m in back.meta["warps"])


@pytest.mark.parametrize("fmt", ["RGB8", "BayerRG8", "RGB12", "Mono8", "BGR8"])
def test_codes_windows_carry_the_same_values_in_a_quarter_of_the_bytes(fmt):
    """A codes window is the frames' own codes, unwarped: read back, they are the float32
    window's values bit for bit, and warped as preprocess would have, its warped window."""
    from capture.sim import SimCamera, SimConfig

    from dataclasses import replace

    cfg = SimConfig(width=48, height=32, frames=6, pixel_format=fmt if fmt in ("RGB8", "BayerRG8", "RGB12") else "RGB8",
                    seed=2)
    frames = list(SimCamera(cfg).frames())
    if fmt == "BGR8":
        frames = [replace(f, pixel_format=fmt, data=np.ascontiguousarray(f.data[:, :, ::-1])) for f in frames]
    elif fmt == "Mono8":
        frames = [replace(f, pixel_format=fmt, data=np.ascontiguousarray(f.data[:, :, 1])) for f in frames]
    codes = run(Preprocessor(PreprocessConfig(window_dtype="codes")), frames)
    floats = run(Preprocessor(PreprocessConfig(window_dtype="float32", defer_warp=True)), frames)
    warped = run(Preprocessor(PreprocessConfig(window_dtype="float32")), frames)
    want_fmt = "RGB12" if fmt == "RGB12" else "RGB8"
    for c, f, w in zip(codes, floats, warped):
        assert c.pixel_format == want_fmt and c.data.dtype == (np.uint16 if fmt == "RGB12" else np.uint8)
        assert c.meta["warped"] is False and w.meta["warped"] is True and c.meta["warps"] == w.meta["warps"]
        np.testing.assert_array_equal(window_frames(c), f.data)
        np.testing.assert_array_equal(apply_warps(window_frames(decode(encode(c))), c.meta["warps"]), w.data)


def test_codes_fall_back_to_float_where_they_are_not_the_values():
    """Deeper mosaics (demosaiced in float) and a calibrated CRF send float32 windows, and a
    window that must be warped here is never rounded to codes."""
    from dataclasses import replace

    from capture.sim import SimCamera, SimConfig

    deep = list(SimCamera(SimConfig(width=48, height=32, frames=5, pixel_format="BayerRG12")).frames())
    codes = PreprocessConfig(window_dtype="codes")
    assert {w.pixel_format for w in run(Preprocessor(codes), deep)} == {"RGBf32"}
    rgb = list(SimCamera(SimConfig(width=48, height=32, frames=5)).frames())
    assert {w.pixel_format for w in run(Preprocessor(replace(codes, crf="gamma2.0")), rgb)} == {"RGBf32"}
    warped = run(Preprocessor(replace(codes, defer_warp=False)), rgb)
    assert {(w.pixel_format, w.meta["warped"]) for w in warped} == {("RGBf32", True)}


def test_bad_frames_are_counted_and_skipped(caplog):
    pp = Preprocessor(PreprocessConfig(align=False))
    frames = stream((1, 8), range(6))
    frames[2] = Frame("frame", "test", 2, 0, 1e-3, 0.0, "RGB8", np.zeros((8, 12), np.uint8))
    frames.insert(4, stream((1, 8), [3])[0])  # duplicate seq 3
    with caplog.at_level(logging.WARNING):
        wins = run(pp, frames)
    assert [w.seq for w in wins] == [0, 1, 3, 4, 5]
    assert pp.counts.bad_frames == 1 and pp.counts.late_frames == 1
    assert "cannot decode" in caplog.text


def test_non_frame_messages_are_ignored():
    pp = Preprocessor()
    hdr = Frame("hdr", "test", 0, 0, 1e-3, 0.0, "RGBf32", np.zeros((2, 2, 3), np.float32))
    assert pp.process(hdr) == [] and pp.counts.ignored == 1


def test_global_motion_is_composed_along_the_chain():
    """Frames of a textured scene shifted 3 px per frame: slot warps undo the shift."""
    rng = np.random.default_rng(0)
    import cv2

    big = cv2.GaussianBlur(rng.random((140, 200)).astype(np.float32), (0, 0), 2.0)
    big = (big - big.min()) / (big.max() - big.min())
    exps = (1.0, 8.0)
    frames = []
    for s in range(6):
        x0 = 20 + 3 * s
        lin = np.clip(big[20:116, x0:x0 + 144] * 0.1 * exps[s % 2], 0, 1)
        code = np.round(lin ** (1 / 2.2) * 255).astype(np.uint8)
        frames.append(frame(np.repeat(code[..., None], 3, 2), "RGB8", s, exps[s % 2] * 1e-3))
    wins = run(Preprocessor(PreprocessConfig()), frames)
    w = wins[3]
    for slot, src in enumerate(w.meta["seqs"]):
        M = np.array(w.meta["warps"][slot]).reshape(2, 3)
        # frame src shows world x = x + 3 src; the reference shows it at x - 3 (ref - src)
        np.testing.assert_allclose(M[:, :2], np.eye(2), atol=0.01)
        np.testing.assert_allclose(M[:, 2], (3.0 * (src - w.seq), 0.0), atol=0.3)


def test_size_change_flushes_and_restarts(caplog):
    pp = Preprocessor(PreprocessConfig(align=False))
    small = stream((1, 8), range(4), h=8, w=12)
    big = stream((1, 8), range(4, 8), h=10, w=12)
    with caplog.at_level(logging.WARNING):
        wins = run(pp, small + big)
    assert [w.seq for w in wins] == list(range(8))
    assert [w.data.shape[1] for w in wins] == [8] * 4 + [10] * 4
    assert "size changed" in caplog.text


def test_the_reduced_mode_averages_light_not_gamma_values():
    """scale 0.5 on a fine black/white checkerboard: each 2x2 block holds half the light, so
    the reduced frame's value is 0.5^(1/2.2) ≈ 0.73 (averaging the codes would give 0.5)."""
    board = np.indices((16, 24)).sum(axis=0) % 2 * 255
    frames = [frame(np.repeat(board[..., None], 3, 2).astype(np.uint8), "RGB8", s, t * 1e-3)
              for s, t in enumerate((1, 8, 1, 8, 1, 8))]
    wins = run(Preprocessor(PreprocessConfig(align=False, scale=0.5)), frames)
    assert wins[2].data.shape == (5, 8, 12, 3) and wins[2].meta["scale"] == 0.5
    np.testing.assert_allclose(wins[2].data, 0.5 ** (1 / 2.2), rtol=1e-5)
