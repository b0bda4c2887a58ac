"""Sequence folders (write → read back) and the folder camera on real files."""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from capture.folder import FolderCamera, FolderError
from capture.seqfolder import SequenceWriter
from hdrstream.frame import Frame, decode, encode


def frame(seq: int, data: np.ndarray, fmt: str, exposure: float, set_: int | None = None, **meta) -> Frame:
    return Frame("frame", "cam0", seq, 1_000_000 * seq, exposure, 1.5, fmt, data, set=set_, meta=meta)


def rgb8(seq: int, h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seq)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def bayer12(seq: int, h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(100 + seq)
    return rng.integers(0, 4096, (h, w), dtype=np.uint16)


EXPOSURES = [0.001, 0.008]


def write_sequence(folder, make, fmt, n=6, **meta):
    frames = [frame(i, make(i), fmt, EXPOSURES[i % 2], i % 2, stem=f"{i:06d}", **meta) for i in range(n)]
    with SequenceWriter(folder) as w:
        for f in frames:
            w.write(f)
    return frames


# -- round trips -----------------------------------------------------------------------------


def test_round_trip_rgb8(tmp_path):
    sent = write_sequence(tmp_path, rgb8, "RGB8", timing={"capture": 0.01})
    lines = (tmp_path / "exposures.txt").read_text().splitlines()
    assert lines[:2] == ["frames/000000.png 0.001", "frames/000001.png 0.008"]
    assert json.loads((tmp_path / "frames.jsonl").read_text().splitlines()[1])["set"] == 1
    cam = FolderCamera(tmp_path)
    got = list(cam.frames())
    assert len(cam) == len(got) == 6 and cam.exposure_cycle == (0.001, 0.008)
    for a, b in zip(sent, got):
        assert b.kind == "frame" and b.pixel_format == "RGB8" and b.data.dtype == np.uint8
        np.testing.assert_array_equal(a.data, b.data)  # RGB order survives OpenCV's BGR
        assert (b.seq, b.set, b.exposure_s, b.t_ns, b.gain_db) == (a.seq, a.set, a.exposure_s, a.t_ns, 1.5)
        assert b.stem == a.stem and "timing" not in b.meta
    decode(encode(got[0]))  # a valid protocol message


def test_round_trip_bayer12_in_16bit_png(tmp_path):
    sent = write_sequence(tmp_path, bayer12, "BayerRG12")
    png = cv2.imread(str(tmp_path / "frames" / "000003.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.ndim == 2
    got = list(FolderCamera(tmp_path, stream="basler").frames())
    assert [f.pixel_format for f in got] == ["BayerRG12"] * 6
    assert [f.exposure_s for f in got] == [0.001, 0.008] * 3
    for a, b in zip(sent, got):
        np.testing.assert_array_equal(a.data, b.data)
        assert b.stream == "basler"


def test_rgb16_and_bgr8_round_trip(tmp_path):
    rgb16 = np.random.default_rng(1).integers(0, 65536, (8, 10, 3), dtype=np.uint16)
    bgr = rgb8(3, 8, 10)
    with SequenceWriter(tmp_path / "rgb16") as w:
        w.write(frame(0, rgb16, "RGB16", 0.002, stem="a"))
    with SequenceWriter(tmp_path / "bgr8") as w:
        w.write(frame(0, bgr, "BGR8", 0.002, stem="b"))
    (a,) = FolderCamera(tmp_path / "rgb16").frames()
    assert a.pixel_format == "RGB16" and a.data.dtype == np.uint16
    np.testing.assert_array_equal(a.data, rgb16)
    (b,) = FolderCamera(tmp_path / "bgr8").frames()
    assert b.pixel_format == "BGR8"
    np.testing.assert_array_equal(b.data, bgr)  # payload order as the header says
    # ...while the PNG holds true colours, so any viewer shows the right image
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "bgr8" / "frames" / "b.png")), bgr)


def test_mixed_bit_depths_rejected_while_reading(tmp_path):
    with SequenceWriter(tmp_path) as w:
        w.write(frame(0, rgb8(0), "RGB8", 0.002, stem="a"))
        w.write(frame(1, np.zeros((12, 16, 3), np.uint16), "RGB16", 0.002, stem="b"))
    cam = FolderCamera(tmp_path)
    assert [f.stem for f in cam.frames()] == ["a"]
    assert cam.unreadable[0]["file"] == "b.png" and "uint16" in cam.unreadable[0]["reason"]


def test_formats_inferred_without_frames_jsonl(tmp_path):
    write_sequence(tmp_path, bayer12, "BayerRG12", n=4)
    (tmp_path / "frames.jsonl").unlink()
    cam = FolderCamera(tmp_path)
    got = list(cam.frames())
    assert [f.pixel_format for f in got] == ["Mono16"] * 4
    assert [f.set for f in got] == [0, 1, 0, 1] and [f.seq for f in got] == [0, 1, 2, 3]
    assert [f.t_ns for f in got] == [0, 33_333_333, 66_666_667, 100_000_000]  # 30 fps default
    assert cam.gt_dir is None


def test_fps_sets_timestamps_and_paces_the_replay(tmp_path):
    write_sequence(tmp_path, rgb8, "RGB8", n=4)
    (tmp_path / "frames.jsonl").unlink()
    t0 = time.monotonic()
    got = list(FolderCamera(tmp_path, fps=20).frames())
    assert time.monotonic() - t0 >= 3 / 20 - 0.01
    assert [f.t_ns for f in got] == [0, 50_000_000, 100_000_000, 150_000_000]


def test_gt_dir(tmp_path):
    write_sequence(tmp_path, rgb8, "RGB8", n=2)
    (tmp_path / "gt").mkdir()
    assert FolderCamera(tmp_path).gt_dir == tmp_path / "gt"


def test_writer_refuses_float_frames_and_repeated_stems(tmp_path):
    with SequenceWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="RGBf32"):
            w.write(frame(0, np.zeros((4, 4, 3), np.float32), "RGBf32", 0.01))
        w.write(frame(0, rgb8(0), "RGB8", 0.01, stem="x"))
        with pytest.raises(ValueError, match="repeated"):
            w.write(frame(1, rgb8(1), "RGB8", 0.01, stem="x"))
    with pytest.raises(FileExistsError):
        SequenceWriter(tmp_path)


# -- DeepHDRVideo / TOG13 scenes ---------------------------------------------------------------


def make_scene(folder, n=5, stops="0\n3\n", ext="tif"):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 65536, (10, 14, 3), dtype=np.uint16)
        if ext != "tif":
            img = (img >> 8).astype(np.uint8)
        name = f"img_{i + 1:02d}.{ext}"
        cv2.imwrite(str(folder / name), img[..., ::-1])  # stored as RGB on disk
        names.append((name, img))
    (folder / "img_list.txt").write_text("\n".join(n for n, _ in names) + "\n")
    (folder / "Exposures.txt").write_text(stops)
    return names


def test_deephdrvideo_scene(tmp_path):
    names = make_scene(tmp_path / "scene")
    cam = FolderCamera(tmp_path / "scene")
    got = list(cam.frames())
    assert [f.exposure_s for f in got] == [1.0, 8.0, 1.0, 8.0, 1.0]
    assert [f.set for f in got] == [0, 1, 0, 1, 0] and cam.exposure_cycle == (1.0, 8.0)
    assert [f.stem for f in got] == ["img_01", "img_02", "img_03", "img_04", "img_05"]
    assert all(f.pixel_format == "RGB16" for f in got) and got[0].stream == "scene"
    for (_, img), f in zip(names, got):
        np.testing.assert_array_equal(f.data, img)


def test_deephdrvideo_three_exposures_jpg(tmp_path):
    make_scene(tmp_path, n=4, stops="-2\n0\n2\n", ext="jpg")
    got = list(FolderCamera(tmp_path).frames())
    assert [f.exposure_s for f in got] == [1.0, 4.0, 16.0, 1.0]
    assert got[0].pixel_format == "RGB8"


def test_deephdrvideo_gt_from_img_hdr_list(tmp_path):
    make_scene(tmp_path, n=2)
    for i in (1, 2):
        cv2.imwrite(str(tmp_path / f"img_{i:02d}.hdr"), np.ones((10, 14, 3), np.float32))
    (tmp_path / "img_hdr_list.txt").write_text("img_01.tif img_01.hdr\nimg_02.tif img_02.hdr\n")
    assert FolderCamera(tmp_path).gt_dir == tmp_path


# -- errors ----------------------------------------------------------------------------------


def test_missing_frame_file(tmp_path):
    write_sequence(tmp_path, rgb8, "RGB8", n=3)
    (tmp_path / "frames" / "000001.png").unlink()
    with pytest.raises(FolderError, match=r"exposures\.txt:2.*000001\.png"):
        FolderCamera(tmp_path)


def test_missing_index_files(tmp_path):
    with pytest.raises(FolderError, match="exposures.txt"):
        FolderCamera(tmp_path)
    (tmp_path / "img_list.txt").write_text("a.tif\n")
    with pytest.raises(FolderError, match="Exposures.txt"):
        FolderCamera(tmp_path)
    with pytest.raises(FolderError, match="no such folder"):
        FolderCamera(tmp_path / "nope")


@pytest.mark.parametrize(
    "line, why",
    [
        ("frames/000001.png abc", "not a number"),
        ("frames/000001.png -0.01", "positive"),
        ("frames/000001.png 0", "positive"),
        ("frames/000001.png 0.01 extra", "2 fields"),
        ("frames/000001.png", "2 fields"),
    ],
)
def test_bad_exposure_line(tmp_path, line, why):
    write_sequence(tmp_path, rgb8, "RGB8", n=3)
    lines = (tmp_path / "exposures.txt").read_text().splitlines()
    lines[1] = line
    (tmp_path / "exposures.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(FolderError, match=rf"exposures\.txt:2: .*{why}"):
        FolderCamera(tmp_path)


def test_bad_stops_line_and_empty_lists(tmp_path):
    make_scene(tmp_path, n=2, stops="0\nthree\n")
    with pytest.raises(FolderError, match=r"Exposures\.txt:2: .*not a number"):
        FolderCamera(tmp_path)
    (tmp_path / "Exposures.txt").write_text("\n\n")
    with pytest.raises(FolderError, match=r"Exposures\.txt lists nothing"):
        FolderCamera(tmp_path)
    (tmp_path / "Exposures.txt").write_text("0\n")
    (tmp_path / "img_list.txt").write_text("")
    with pytest.raises(FolderError, match=r"img_list\.txt lists nothing"):
        FolderCamera(tmp_path)


def test_bad_frames_jsonl(tmp_path):
    write_sequence(tmp_path, rgb8, "RGB8", n=2)
    lines = (tmp_path / "frames.jsonl").read_text().splitlines()
    (tmp_path / "frames.jsonl").write_text(lines[0] + "\n" + lines[1].replace('"RGB8"', '"RGB9"') + "\n")
    with pytest.raises(FolderError, match=r"frames\.jsonl:2: unknown pixel_format"):
        FolderCamera(tmp_path)
    (tmp_path / "frames.jsonl").write_text(lines[0] + "\n")
    with pytest.raises(FolderError, match="1 header"):
        FolderCamera(tmp_path)


def test_mismatched_image_size_is_skipped_and_named(tmp_path):
    write_sequence(tmp_path, rgb8, "RGB8", n=4)
    cv2.imwrite(str(tmp_path / "frames" / "000002.png"), rgb8(2, 14, 16))
    cam = FolderCamera(tmp_path)  # sizes are only known once read
    assert [f.seq for f in cam.frames()] == [0, 1, 3]
    assert [(u["seq"], u["file"]) for u in cam.unreadable] == [(2, "000002.png")]
    assert "first frame" in cam.unreadable[0]["reason"]


def test_corrupt_png_is_skipped_and_the_rest_still_comes(tmp_path):
    write_sequence(tmp_path, rgb8, "RGB8", n=3)
    path = tmp_path / "frames" / "000001.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cam = FolderCamera(tmp_path)
    assert [f.seq for f in cam.frames()] == [0, 2]
    assert cam.unreadable[0]["file"] == "000001.png" and "cannot decode" in cam.unreadable[0]["reason"]


def test_values_beyond_declared_bit_depth(tmp_path):
    write_sequence(tmp_path, bayer12, "BayerRG12", n=2)
    cv2.imwrite(str(tmp_path / "frames" / "000001.png"), np.full((12, 16), 5000, np.uint16))
    cam = FolderCamera(tmp_path)
    assert [f.seq for f in cam.frames()] == [0]
    assert "exceed BayerRG12" in cam.unreadable[0]["reason"]
