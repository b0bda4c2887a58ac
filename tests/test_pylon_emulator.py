"""capture.pylon against the real pypylon camera emulator (pylon's BaslerCamEmu).

The emulator has no sequencer and no chunks, stamps 0 and ignores exposure, so these
tests drive the software-trigger path; ImageFileMode plays PNGs rendered by the simulated
camera, which carry the exposure alternation the emulator cannot make.

pylon 12 (pypylon 26.9) reads PYLON_CAMEMU at every enumeration, not only at the first
TlFactory use, so a per-test environment variable is enough (checked by the first test).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("pypylon", reason="pypylon is not installed (pip install 'hdrstream[camera]')")

from capture.pylon import PylonCamera, PylonConfig, load_pylon  # noqa: E402
from capture.sensor import bayer_channels  # noqa: E402
from capture.sim import SimCamera, SimConfig  # noqa: E402

SERIAL = "0815-0000"
W, H = 64, 48


@pytest.fixture
def emulator(monkeypatch):
    monkeypatch.setenv("PYLON_CAMEMU", "1")


def mosaic(rgb: np.ndarray) -> np.ndarray:
    """The BayerRG mosaic of an RGB image: what the emulator makes of an RGB file."""
    ch = bayer_channels("RG")
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, ch[dy, dx]]
    return out


def sim_pngs(folder, frames=6, width=W, height=H, gt_dir=None):
    """The simulated camera's RGB8 frames as PNGs in name order; returns (camera, RGB frames)."""
    folder.mkdir()
    sim = SimCamera(SimConfig(width=width, height=height, frames=frames, pixel_format="RGB8", noise=False),
                    gt_dir=gt_dir)
    rgbs = []
    for f in sim.frames():
        cv2.imwrite(str(folder / f"{f.stem}.png"), cv2.cvtColor(f.data, cv2.COLOR_RGB2BGR))
        rgbs.append(f.data)
    return sim, rgbs


def test_pylon_camemu_is_read_at_every_enumeration(monkeypatch):
    pylon = load_pylon()
    tl = pylon.TlFactory.GetInstance()
    monkeypatch.delenv("PYLON_CAMEMU", raising=False)
    assert not [d for d in tl.EnumerateDevices() if d.GetDeviceClass() == "BaslerCamEmu"]
    monkeypatch.setenv("PYLON_CAMEMU", "2")
    assert sorted(d.GetSerialNumber() for d in tl.EnumerateDevices()
                  if d.GetDeviceClass() == "BaslerCamEmu") == ["0815-0000", "0815-0001"]


def test_open_by_serial_configure_and_grab_an_alternating_cycle(emulator):
    cfg = PylonConfig(serial=SERIAL, emulator=True, width=W, height=H, offset_x=8, offset_y=4,
                      pixel_format="BayerRG8", exposures_us=(1000, 8000), gain_db=2.0, frames=6)
    with PylonCamera(cfg) as cam:
        frames = list(cam.frames())
        info = cam.describe()
        bracket = cam.bracket([0.001, 0.004], frames_each=2)
        cam.cfg.frames = 2
        after = list(cam.frames())  # streaming resumes after the bracket, after a gap
    assert [f.seq for f in frames] == list(range(6)) and [f.set for f in frames] == [0, 1] * 3
    assert [f.exposure_s for f in frames] == pytest.approx([1e-3, 8e-3] * 3)
    f = frames[0]
    assert f.stream == SERIAL and f.pixel_format == "BayerRG8" and f.data.shape == (H, W) and f.data.dtype == np.uint8
    assert f.gain_db == pytest.approx(2.0, abs=0.01) and f.meta["clock"] == "host" and f.meta["block_id"] == 0
    assert all(b.t_ns > a.t_ns for a, b in zip(frames, frames[1:]))
    assert info["serial"] == SERIAL and info["mode"] == "software" and info["camera"] == "pylon-emulator"
    assert info["roi"] == {"width": W, "height": H, "offset_x": 8, "offset_y": 4}
    assert info["exposure_cycle_us"] == [1000.0, 8000.0] and info["pypylon_version"] and info["pylon_version"]
    json.dumps(info)  # session.json must be able to hold it
    assert [(t, len(fs)) for t, fs in bracket] == [(0.001, 2), (0.004, 2)]
    assert bracket[0][1][0].shape == (H, W)
    assert [f.seq for f in after] == [7, 8] and [f.set for f in after] == [1, 0]
    assert all(f.seq % 2 == f.set for f in after)


def test_the_emulator_is_never_used_by_accident(emulator):
    with pytest.raises(RuntimeError, match=r"no Basler camera found \(found: 0815-0000"):
        PylonCamera(PylonConfig(width=W, height=H))
    with pytest.raises(ValueError, match="emulator=True"):
        PylonCamera(PylonConfig(serial=SERIAL, width=W, height=H))


def test_bad_settings_name_the_cameras_limits(emulator):
    with pytest.raises(ValueError, match=r"RGB12.*not supported.*offers:.*BayerRG8"):
        PylonCamera(PylonConfig(emulator=True, width=W, height=H, pixel_format="RGB12"))
    with pytest.raises(ValueError, match=r"ROI width 5000 is out of range .*: 1..4096"):
        PylonCamera(PylonConfig(emulator=True, width=5000, height=H))
    with pytest.raises(ValueError, match=r"ROI OffsetX 4090 is out of range"):
        PylonCamera(PylonConfig(emulator=True, width=W, height=H, offset_x=4090))
    with pytest.raises(ValueError, match=r"ExposureTime 2e\+07 µs is out of range"):
        PylonCamera(PylonConfig(emulator=True, width=W, height=H, exposures_us=(1000, 2e7), grab_timeout_ms=30000))
    with pytest.raises(ValueError, match="no sequencer"):
        PylonCamera(PylonConfig(emulator=True, width=W, height=H, mode="sequencer"))


@pytest.mark.parametrize("fmt", ["BayerRG8", "RGB8"])
def test_image_files_come_out_pixel_exact_with_the_exposure_metadata(emulator, tmp_path, fmt):
    sim, rgbs = sim_pngs(tmp_path / "png")
    cycle_us = tuple(t * 1e6 for t in sim.exposure_cycle)
    cfg = PylonConfig(emulator=True, width=W, height=H, pixel_format=fmt, exposures_us=cycle_us,
                      image_dir=str(tmp_path / "png"), frames=len(rgbs))
    with PylonCamera(cfg) as cam:
        frames = list(cam.frames())
        assert cam.describe()["camera_pixel_format"] == ("RGB8Packed" if fmt == "RGB8" else fmt)
    assert len(frames) == len(rgbs)
    for f, rgb in zip(frames, rgbs):
        assert f.pixel_format == fmt
        want = mosaic(rgb) if fmt == "BayerRG8" else rgb
        assert np.array_equal(f.data, want), f"frame {f.seq} differs from its file"
        assert f.exposure_s == pytest.approx(sim.exposure_cycle[f.seq % 2])


def test_a_failed_buffer_is_counted_as_a_gap_and_the_cycle_stays_right(emulator):
    cfg = PylonConfig(emulator=True, width=W, height=H, exposures_us=(1000, 8000), frames=6)
    with PylonCamera(cfg) as cam:
        cam.nodes.set("ForceFailedBufferCount", 1)
        frames = []
        for f in cam.frames():
            frames.append(f)
            if len(frames) == 2:
                cam.nodes.execute("ForceFailedBuffer")  # the next buffer arrives incomplete
        stats = cam.stats
    assert [f.seq for f in frames] == [0, 1, 3, 4, 5, 6]
    assert all(f.set == f.seq % 2 for f in frames)
    assert [f.exposure_s for f in frames] == pytest.approx([1e-3 if f.seq % 2 == 0 else 8e-3 for f in frames])
    assert stats.incomplete == 1 and stats.gaps == 1 and stats.gap_ranges == [(2, 2)] and stats.grabbed == 6


def test_end_to_end_emulator_to_hdr_files_beats_the_reference_only_method(emulator, tmp_path):
    from deploy.pipeline import run_embedded
    from infer.stage import InferStage
    from preprocess.stage import Preprocessor
    from sink.stage import Sink, SinkConfig

    n = 8
    gt_dir = tmp_path / "gt"
    sim, rgbs = sim_pngs(tmp_path / "png", frames=n, width=96, height=64, gt_dir=gt_dir)
    cam = PylonCamera(PylonConfig(emulator=True, width=96, height=64, pixel_format="BayerRG8",
                                  exposures_us=tuple(t * 1e6 for t in sim.exposure_cycle),
                                  image_dir=str(tmp_path / "png"), frames=n))
    out = tmp_path / "out"
    stages = [Preprocessor(), InferStage(method="classical", compare=["reference"]),
              Sink(SinkConfig(out_dir=out, preview=False, video=False, gt_dir=gt_dir, main_method="classical"))]
    result = run_embedded(cam, stages)
    assert result.ok, result.stats
    assert sorted(p.stem for p in out.glob("*.exr")) == [f"{i:06d}" for i in range(n)]
    report = json.loads((out / "report.json").read_text())
    assert report["gaps"] == [] and report["frames_out"] == n
    classical = report["methods"]["classical"]["quality"]["psnr_mu_mean"]
    reference = report["methods"]["reference"]["quality"]["psnr_mu_mean"]
    assert classical > reference + 1.0, (classical, reference)


def test_a_camera_dropped_without_close_does_not_crash_the_process():
    """Regression: collecting an open PylonCamera segfaulted (its pylon event handler died first)."""
    code = ("import gc\nfrom capture.pylon import PylonCamera, PylonConfig\n"
            "c = PylonCamera(PylonConfig(emulator=True, width=64, height=48))\ndel c\ngc.collect()\n"
            "c = PylonCamera(PylonConfig(emulator=True, width=64, height=48))\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYLON_CAMEMU": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
