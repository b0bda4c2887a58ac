"""The sink: EXR files, ordering, gaps, bad input, metrics, previews, report.json."""
from __future__ import annotations

import json
import math
import random

import cv2
import numpy as np
import pytest

from hdrstream import hdrio, quality
from hdrstream.frame import Frame, eos
from sink import preview as preview_mod
from sink.preview import ThumbnailSampler
from sink.reorder import Reorderer
from sink.stage import Sink, SinkConfig
from sink.tonemap import ReinhardToneMapper, frame_stats, reinhard, srgb_u8

T_MIN = 0.002
H, W = 24, 32


def hdr(seq: int, data: np.ndarray, method: str | None = "classical", stem: str | None = None, **meta) -> Frame:
    m = {"stem": stem or f"{seq:06d}", "t_min": T_MIN, "exposures": [T_MIN, 4 * T_MIN],
         "timing": {"capture": 0.001, "preprocess": 0.002, "infer": 0.010}, **meta}
    if method is not None:
        m["method"] = method
    return Frame("hdr", "cam0", seq, seq * 33_000_000, T_MIN, 0.0, "RGBf32", data, meta=m)


def scene(seq: int, h: int = H, w: int = W) -> np.ndarray:
    """A smooth HDR image (linear/second) that moves a little with seq."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = (np.sin((x + seq) / 5.0) * np.cos(y / 4.0) + 1.1) ** 3 * 60.0 + 1.0
    return np.stack([base, 0.8 * base, 0.6 * base], axis=-1).astype(np.float32)


def run(sink: Sink, frames: list[Frame], end: int | None = None, count: int | None = None) -> dict:
    for f in frames:
        assert sink.process(f) == []
    if end is not None:
        sink.process(eos("cam0", end, count=count if count is not None else end))
    assert sink.finish() == []
    return json.loads((sink.out_dir / "report.json").read_text())


@pytest.fixture(params=[True, False], ids=["threads", "inline"])
def background(request) -> bool:
    return request.param


# -- files ---------------------------------------------------------------------------------


def test_exr_round_trip_half_precision(tmp_path, background):
    data = scene(0) * np.float32(3.7)
    data[0, 0] = [0.0, 1e-3, 60000.0]
    report = run(Sink(SinkConfig(tmp_path, background=background)), [hdr(0, data)], end=1)
    back = hdrio.read_exr(tmp_path / "000000.exr")
    assert back.shape == data.shape and back.dtype == np.float32
    np.testing.assert_allclose(back, data, rtol=1e-3, atol=1e-6)  # half: 11-bit mantissa
    assert report["frames_out"] == 1 and report["frames_in"] == 1


def test_writes_in_seq_order_from_shuffled_input(tmp_path, monkeypatch, background):
    written: list[str] = []
    real = hdrio.write_exr
    monkeypatch.setattr(hdrio, "write_exr", lambda p, rgb, half=True: (written.append(p.stem), real(p, rgb, half))[1])
    seqs = list(range(20))
    random.Random(3).shuffle(seqs)
    sink = Sink(SinkConfig(tmp_path, background=background, reorder_window=64))
    report = run(sink, [hdr(s, scene(s)) for s in seqs], end=20)
    assert written == [f"{s:06d}" for s in range(20)]
    assert sorted(p.stem for p in tmp_path.glob("*.exr")) == written
    assert report["gaps"] == [] and report["frames_out"] == 20 and report["duplicates"] == 0


def test_comparison_methods_go_to_subfolders(tmp_path):
    frames = []
    for s in range(3):
        frames += [hdr(s, scene(s), "classical"), hdr(s, scene(s) * 2, "learned")]
    report = run(Sink(SinkConfig(tmp_path)), frames, end=3)
    assert sorted(p.name for p in tmp_path.glob("*.exr")) == ["000000.exr", "000001.exr", "000002.exr"]
    assert sorted(p.name for p in (tmp_path / "learned").glob("*.exr")) == ["000000.exr", "000001.exr", "000002.exr"]
    assert (tmp_path / "learned" / "preview" / "000001.png").is_file()
    assert report["main_method"] == "classical" and report["frames_out"] == 3 and report["exr_files"] == 6
    assert report["frames_in"] == 6 and report["methods"]["learned"]["frames_in"] == 3
    assert set(report["methods"]) == {"classical", "learned"}


def test_main_method_from_config(tmp_path):
    frames = [hdr(0, scene(0), "classical"), hdr(0, scene(0), "learned")]
    run(Sink(SinkConfig(tmp_path, main_method="learned")), frames, end=1)
    assert (tmp_path / "000000.exr").is_file() and (tmp_path / "classical" / "000000.exr").is_file()


def test_frames_without_method_are_the_main_method(tmp_path):
    report = run(Sink(SinkConfig(tmp_path, preview=False, video=False)), [hdr(0, scene(0), method=None)], end=1)
    assert (tmp_path / "000000.exr").is_file()
    assert report["methods"][report["main_method"]]["frames_out"] == 1


def test_no_temp_files_left(tmp_path, background):
    frames = [hdr(s, scene(s)) for s in (2, 0, 1, 4)]
    run(Sink(SinkConfig(tmp_path, background=background)), frames, end=5)
    hidden = [p for p in tmp_path.rglob(".*")]
    assert hidden == []


# -- gaps, duplicates, bad input -------------------------------------------------------------


def test_gaps_from_holes_and_eos_count(tmp_path):
    present = [s for s in range(1, 10) if s not in (3, 7)]  # 0, 3, 7 lost; 10, 11 never arrive
    report = run(Sink(SinkConfig(tmp_path, preview=False, video=False)), [hdr(s, scene(s)) for s in present], end=12, count=12)
    assert report["gaps"] == [[0, 0], [3, 3], [7, 7], [10, 11]] and report["gap_count"] == 5
    assert report["expected"] == {"first_seq": 0, "end_seq": 12}
    assert report["frames_out"] == len(present)


def test_a_forged_far_ahead_eos_is_rejected_and_counted(tmp_path):
    """Believing it would list two million gaps (and a larger seq would exhaust memory)."""
    report = run(Sink(SinkConfig(tmp_path, preview=False, video=False)), [hdr(s, scene(s)) for s in range(4)],
                 end=2_000_000, count=2_000_000)
    assert report["dropped"]["by_reason"] == {"implausible_eos": 1}
    assert report["gaps"] == [] and report["expected"] is None and report["frames_out"] == 4
    assert (tmp_path / "report.json").stat().st_size < 20_000


def test_a_frame_far_ahead_is_not_believed(tmp_path):
    report = run(Sink(SinkConfig(tmp_path, preview=False, video=False, reorder_window=2)),
                 [hdr(s, scene(s)) for s in (0, 1, 2**50, 2)], end=3)
    assert report["gaps"] == [] and report["frames_out"] == 3
    assert report["dropped"]["by_reason"] == {"implausible_seq": 1}


def test_a_frame_far_ahead_of_the_first_costs_one_range_not_memory(tmp_path):
    """The first frame seen sets the base; a real hole, however large, is two numbers."""
    report = run(Sink(SinkConfig(tmp_path, preview=False, video=False, reorder_window=2)),
                 [hdr(s, scene(s)) for s in (2**50, 2**50 + 5000)])
    assert report["gaps"] == [[2**50 + 1, 2**50 + 4999]] and report["gap_count"] == 4999


def test_gaps_without_eos_are_holes_between_seen_seqs(tmp_path):
    report = run(Sink(SinkConfig(tmp_path, preview=False, video=False)), [hdr(s, scene(s)) for s in (5, 6, 9)])
    assert report["gaps"] == [[7, 8]] and report["expected"] is None


def test_reorder_window_declares_gap_then_accepts_late_frame(tmp_path):
    sink = Sink(SinkConfig(tmp_path, reorder_window=2, background=False))
    for s in (0, 2, 3, 4):  # seq 1 missing; the window overflows at seq 4
        sink.process(hdr(s, scene(s)))
    assert (tmp_path / "000004.exr").is_file()  # moved on without seq 1
    assert sink.report()["gaps"] == [[1, 1]]
    sink.process(hdr(1, scene(1)))  # turns up late: still written, no longer a gap
    report = run(sink, [], end=5)
    assert (tmp_path / "000001.exr").is_file()
    assert report["gaps"] == [] and report["late"] == 1 and report["frames_out"] == 5


def test_duplicates_counted_and_ignored(tmp_path):
    frames = [hdr(0, scene(0)), hdr(2, scene(2)), hdr(2, scene(2) * 5), hdr(1, scene(1)), hdr(0, scene(0) * 5)]
    report = run(Sink(SinkConfig(tmp_path, preview=False, video=False)), frames, end=3)
    assert report["duplicates"] == 2 and report["frames_out"] == 3 and report["frames_in"] == 5
    np.testing.assert_allclose(hdrio.read_exr(tmp_path / "000002.exr"), scene(2), rtol=1e-3)  # first copy wins


def test_malformed_input_counted_not_raised(tmp_path, caplog):
    good = scene(0)
    bad = [
        None,
        {"kind": "hdr"},
        Frame("frame", "cam0", 0, 0, 0.01, 0.0, "RGB8", np.zeros((4, 4, 3), np.uint8)),
        Frame("hdr", "cam0", 1, 0, 0.01, 0.0, "RGB8", np.zeros((4, 4, 3), np.uint8)),
        Frame("hdr", "cam0", 2, 0, 0.01, 0.0, "RGBf32", np.zeros((4, 4), np.float32)),
        Frame("hdr", "cam0", 3, 0, 0.01, 0.0, "RGBf32", np.zeros((4, 4, 3), np.int32)),
        Frame("hdr", "cam0", 4, 0, 0.01, 0.0, "RGBf32", np.zeros((0, 4, 3), np.float32)),
        Frame("hdr", "cam0", -1, 0, 0.01, 0.0, "RGBf32", good),
        hdr(5, good, stem="../escape"),
        hdr(6, good, stem=".hidden"),
        hdr(7, good, method="a/b"),
        hdr(8, good, method=3),
    ]
    sink = Sink(SinkConfig(tmp_path, preview=False, video=False))
    report = run(sink, [*bad, hdr(0, good)], end=1)
    assert report["frames_out"] == 1
    assert report["dropped"]["by_reason"] == {
        "not_a_frame": 2, "not_hdr": 1, "bad_format": 1, "bad_payload": 3, "bad_seq": 1,
        "bad_stem": 2, "bad_method": 2,
    }
    assert report["dropped"]["total"] == 12 and report["frames_in"] == 10
    assert not (tmp_path.parent / "escape.exr").exists()
    assert "bad_stem" in caplog.text


def test_non_finite_values_repaired_and_written(tmp_path):
    data = scene(0)
    data[0, 0] = [np.nan, np.inf, -np.inf]
    data[1, 1] = [1e6, -5.0, 1.0]
    report = run(Sink(SinkConfig(tmp_path)), [hdr(0, data)], end=1)
    back = hdrio.read_exr(tmp_path / "000000.exr")
    assert np.isfinite(back).all()
    assert back[0, 0].tolist() == [0.0, 65504.0, 0.0] and back[1, 1].tolist() == [65504.0, 0.0, 1.0]
    assert report["repaired_frames"] == 1 and report["frames_out"] == 1


def test_messages_after_finish_are_dropped(tmp_path):
    sink = Sink(SinkConfig(tmp_path, preview=False, video=False))
    run(sink, [hdr(0, scene(0))], end=1)
    sink.process(hdr(1, scene(1)))
    assert sink.report()["dropped"]["by_reason"] == {"after_finish": 1}
    assert not (tmp_path / "000001.exr").exists()


def test_eos_with_no_frames_reports_everything_missing(tmp_path):
    report = run(Sink(SinkConfig(tmp_path)), [], end=3, count=3)
    assert report["gaps"] == [[0, 2]] and report["frames_out"] == 0
    assert (tmp_path / "contact_sheet.png").is_file()


# -- metrics ---------------------------------------------------------------------------------


def _write_gt(gt_dir, n):
    gts = [scene(s) for s in range(n)]
    for s, g in enumerate(gts):
        hdrio.write_exr(gt_dir / f"{s:06d}.exr", g)
    return [hdrio.read_exr(gt_dir / f"{s:06d}.exr") for s in range(n)]  # half-rounded, as stored


def test_metrics_against_ground_truth(tmp_path, background):
    gt_dir, out = tmp_path / "gt", tmp_path / "out"
    n = 4
    gts = _write_gt(gt_dir, n)
    clip_at = np.float32(40.0)  # a "reference-only" result: highlights clipped
    frames = []
    for s in (1, 0, 3, 2):
        frames.append(hdr(s, gts[s] * np.float32(1.002), "classical"))
        frames.append(hdr(s, np.minimum(gts[s], clip_at), "reference"))
    sink = Sink(SinkConfig(out, gt_dir=str(gt_dir), background=background))
    report = run(sink, frames, end=n)
    good, poor = report["methods"]["classical"]["quality"], report["methods"]["reference"]["quality"]
    assert good["frames_with_gt"] == n and poor["frames_with_gt"] == n
    assert good["psnr_mu_mean"] > 50 and good["psnr_l_mean"] > 50
    assert poor["psnr_mu_mean"] < good["psnr_mu_mean"] - 10 and poor["psnr_l_mean"] < good["psnr_l_mean"] - 10
    assert [f["seq"] for f in good["frames"]] == [0, 1, 2, 3]
    assert good["flicker_pairs"] == n - 1 and good["frames"][0]["flicker"] is None
    assert report["quality"] == good  # top level = main method

    # Same numbers as hdrstream.quality on what was written to disk.
    preds = [hdrio.read_exr(out / f"{s:06d}.exr") for s in range(n)]
    assert good["frames"][2]["psnr_mu"] == pytest.approx(quality.psnr_mu(preds[2], gts[2], T_MIN), abs=1e-3)
    assert good["frames"][2]["psnr_l"] == pytest.approx(quality.psnr_l(preds[2], gts[2], T_MIN), abs=1e-3)
    flick = quality.flicker(preds, gts, T_MIN)
    assert [f["flicker"] for f in good["frames"][1:]] == pytest.approx(flick, abs=1e-6)
    text = sink.summary()
    assert "PSNR-μ" in text and "classical (main)" in text and "reference" in text


def test_identical_prediction_gives_inf_psnr_as_null(tmp_path):
    gt_dir = tmp_path / "gt"
    gts = _write_gt(gt_dir, 2)
    sink = Sink(SinkConfig(tmp_path / "out", gt_dir=gt_dir, preview=False, video=False))
    run(sink, [hdr(0, gts[0]), hdr(1, gts[1] * np.float32(1.01))], end=2)
    text = (tmp_path / "out" / "report.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    q = report["quality"]
    assert q["frames"][0]["psnr_mu"] is None and q["psnr_mu_inf_frames"] == 1
    assert q["psnr_mu_mean"] == q["frames"][1]["psnr_mu"] and math.isfinite(q["psnr_mu_mean"])


def test_missing_ground_truth_is_counted(tmp_path):
    gt_dir = tmp_path / "gt"
    _write_gt(gt_dir, 1)
    sink = Sink(SinkConfig(tmp_path / "out", gt_dir=gt_dir, preview=False, video=False))
    report = run(sink, [hdr(0, scene(0)), hdr(1, scene(1))], end=2)
    assert report["quality"]["frames_with_gt"] == 1 and report["quality"]["frames_without_gt"] == 1


def test_timings_reported(tmp_path):
    report = run(Sink(SinkConfig(tmp_path)), [hdr(s, scene(s)) for s in range(3)], end=3)
    t = report["timing_ms"]
    assert t["infer"]["mean"] == pytest.approx(10.0) and t["infer"]["n"] == 3
    for key in ("capture", "preprocess", "sink_write", "sink_preview", "sink_process"):
        assert {"mean", "p50", "p95"} <= set(t[key])
    assert report["wall_s"] > 0 and report["throughput_fps"] > 0


# -- previews --------------------------------------------------------------------------------


def test_previews_video_and_contact_sheet(tmp_path, background):
    run(Sink(SinkConfig(tmp_path, background=background)), [hdr(s, scene(s, 40, 64)) for s in range(20)], end=20)
    png = cv2.imread(str(tmp_path / "preview" / "000007.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (40, 64, 3) and png.dtype == np.uint8
    sheet = cv2.imread(str(tmp_path / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 40 and sheet.shape[1] > 64
    video = json.loads((tmp_path / "report.json").read_text())["files"]["video"]
    assert video in (str(tmp_path / "preview.mp4"), str(tmp_path / "preview.webm"))  # what browsers play
    cap = cv2.VideoCapture(video)
    assert cap.isOpened() and sum(1 for _ in iter(lambda: cap.read()[0], False)) == 20


def test_previews_are_tone_mapped_at_display_size(tmp_path):
    """A frame wider than a display gets a PNG preview at most 960 px wide (area-averaged,
    aspect kept); the EXR keeps every pixel."""
    run(Sink(SinkConfig(tmp_path, video=False)), [hdr(s, scene(s, 300, 1200)) for s in range(3)], end=3)
    png = cv2.imread(str(tmp_path / "preview" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (240, 960, 3)
    assert hdrio.read_exr(tmp_path / "000001.exr").shape == (300, 1200, 3)


def test_contact_sheet_written_when_previews_off_and_video_fails(tmp_path, monkeypatch):
    class Broken:
        def __init__(self, *a):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(preview_mod.cv2, "VideoWriter", Broken)
    report = run(Sink(SinkConfig(tmp_path, preview=False)), [hdr(s, scene(s)) for s in range(5)], end=5)
    assert (tmp_path / "contact_sheet.png").is_file()
    assert not (tmp_path / "preview").exists() and not list(tmp_path.glob("*preview.*"))
    assert report["files"]["video"] is None and report["frames_out"] == 5


def test_thumbnail_sampler_is_bounded_and_even():
    s = ThumbnailSampler(max_frames=4)
    for i in range(1000):
        if s.wants(i):
            s.add(i, str(i), np.zeros((1, 1, 3), np.uint8))
        assert len(s._kept) <= 8
    picks = [int(c) for c, _ in s.selection()]
    assert len(picks) == 4 and picks[0] == 0 and picks == sorted(picks)
    assert picks[-1] > 800


# -- tone mapping ----------------------------------------------------------------------------


def test_tonemap_range_and_monotonic():
    ramp = np.geomspace(1e-3, 1e4, 2000, dtype=np.float32)
    grey = np.repeat(ramp[None, :, None], 3, axis=2)
    out = ReinhardToneMapper()(grey)
    assert out.dtype == np.uint8 and out.shape == grey.shape
    assert out.min() >= 0 and out.max() == 255
    assert np.all(np.diff(out[0, :, 1].astype(int)) >= 0)
    lin = reinhard(grey, *frame_stats(grey))
    assert lin.min() >= 0 and lin.max() <= 1 and np.all(np.diff(lin[0, :, 0]) >= 0)


def test_reinhard_maps_white_to_one_and_keeps_black():
    px = np.array([[[0, 0, 0], [5, 5, 5], [50, 50, 50]]], np.float32)
    out = reinhard(px, log_avg=5.0, white=50.0)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 2] == pytest.approx([1, 1, 1], abs=1e-5)
    assert 0 < out[0, 1, 0] < 1


def test_srgb_encoding_endpoints():
    assert srgb_u8(np.array([0.0, 0.0031308, 0.5, 1.0, 2.0], np.float32)).tolist() == [0, 10, 188, 255, 255]


def test_temporal_smoothing_reduces_preview_pumping():
    """A light that blinks on a static scene must not make the background pump."""
    base = scene(0, 64, 64)
    lit = base.copy()
    lit[:16, :16] *= np.float32(500.0)  # a quarter of the frame goes very bright
    frames = [lit if i % 2 else base for i in range(30)]

    def background_swing(mapper: ReinhardToneMapper) -> float:
        levels = [float(mapper(f)[32:, 32:].mean()) for f in frames]
        return float(np.ptp(levels[10:]))

    smooth, raw = background_swing(ReinhardToneMapper(smoothing=0.9)), background_swing(ReinhardToneMapper(smoothing=0.0))
    assert raw > 5  # per-frame statistics: the background visibly pumps
    assert smooth < 0.25 * raw


# -- reorder unit ----------------------------------------------------------------------------


def test_reorderer_releases_in_order_and_tracks_gaps():
    r: Reorderer[str] = Reorderer(window=2)
    assert r.push(0, "a") is not None
    assert [x.seq for x in r.push(2, "c")] == []
    assert [x.seq for x in r.push(1, "b")] == [1, 2]
    assert r.push(1, "b") is None and r.duplicates == 1
    assert [x.seq for x in r.push(5, "f")] == [] and [x.seq for x in r.push(6, "g")] == []
    assert [x.seq for x in r.push(7, "h")] == [5, 6, 7] and list(r.gaps) == [3, 4]
    late = r.push(4, "e")
    assert late is not None and late[0].late and list(r.gaps) == [3]
    assert [x.seq for x in r.flush(end=10, start=0)] == [] and list(r.gaps) == [3, 8, 9]


def test_stream_not_starting_at_zero_has_no_false_gaps(tmp_path):
    seqs = [102, 100, 101, 104, 103]
    report = run(Sink(SinkConfig(tmp_path, preview=False, video=False)), [hdr(s, scene(s)) for s in seqs], end=105, count=5)
    assert report["gaps"] == [] and report["frames_out"] == 5


def test_reorderer_waits_for_first_seq_then_window():
    r: Reorderer[int] = Reorderer(window=2)
    assert r.push(2, 2) == [] and r.push(1, 1) == []
    assert [x.seq for x in r.push(3, 3)] == [1, 2, 3]  # window overflow: start at the lowest held
    assert [x.seq for x in r.push(0, 0)] == [0] and r.late == 1  # before the start: late, not a dup
    assert r.push(0, 0) is None
    r.flush(end=4, start=0)
    assert not r.gaps


def test_half_conversion_is_numpys_cast_bit_for_bit():
    """to_half clips and casts with OpenCV for speed; the bits must be NumPy's (round to
    nearest even, subnormals, the clip at both ends) for every shape the sink sees, but
    for −0, which becomes +0 (radiance has no sign)."""
    from sink.writer import HALF_MAX, to_half

    rng = np.random.default_rng(3)
    edges = np.float32([-1.0, -0.0, 0.0, 5.96e-8, 2.98e-8, 3e-8, 1e-9, 6.1e-5, 65504, 65519, 65520, 1e6])
    for shape in ((37, 29, 3), (2, 16, 8, 3), (16, 8)):
        x = (rng.standard_normal(shape) * rng.choice([1e-6, 1e-3, 1, 100, 1e4], size=shape)).astype(np.float32)
        x.flat[: edges.size] = edges[: x.size]
        got, bad = to_half(x)
        want = np.clip(x, 0.0, HALF_MAX).astype(np.float16)
        want[want == 0] = 0  # -0 -> +0
        assert bad == 0 and got.dtype == np.float16 and got.shape == shape
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    got, bad = to_half(np.float64([[1e-7, 70000.0, -3.0]]))  # other types: NumPy's own cast
    assert bad == 0 and got.tolist() == [[np.float16(1e-7), HALF_MAX, 0.0]]
