"""The camera flags of the commands: live, capture (as a service), calibrate."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from capture.cameras import FirstFrames
from capture.folder import FolderCamera
from deploy.cli import main
from hdrstream.crf import load_crf
from hdrstream.transport import Receiver

pytest.importorskip("pypylon", reason="pypylon is not installed")

EMU = ["--camera", "emulator", "--width", "96", "--height", "64", "--exposures-us", "1000,8000"]


def exrs(folder):
    return sorted(p.stem for p in folder.glob("*.exr"))


def test_live_from_the_pylon_emulator(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLON_CAMEMU", "1")
    out = tmp_path / "live"
    assert main(["live", str(out), *EMU, "--frames", "6", "--no-preview", "--no-align", "--device", "cpu"]) == 0
    assert exrs(out) == [f"{i:06d}" for i in range(6)]
    report = json.loads((out / "report.json").read_text())
    assert report["frames_out"] == 6 and not report["gaps"]
    # live on a CPU keeps the method that keeps up, and the report says why
    assert report["main_method"] == "classical" and "live on a CPU" in report["main_method_why"]


def test_capture_service_publishes_emulator_frames_then_eos(tmp_path):
    env = {**os.environ, "PYLON_CAMEMU": "1", "PYTHONUNBUFFERED": "1"}
    rx = Receiver("@tcp://127.0.0.1:*", bind=True)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "capture", *EMU, "--frames", "5", "--out", ">" + rx.endpoint],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        frames = []
        while True:
            f = rx.recv(timeout_s=60)
            assert f is not None, "no eos"
            if f.kind == "eos":
                break
            frames.append(f)
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
    finally:
        rx.close()
    assert [f.seq for f in frames] == list(range(5))
    assert [round(f.exposure_s * 1e6) for f in frames] == [1000, 8000, 1000, 8000, 1000]
    assert {f.stream for f in frames} == {"0815-0000"} and frames[0].data.shape == (64, 96)
    assert f.meta["count"] == 5


def test_folder_camera_with_a_frame_limit(tmp_path):
    assert main(["simulate", str(tmp_path / "seq"), "--width", "64", "--height", "48", "--frames", "6"]) == 0
    first = FirstFrames(FolderCamera(tmp_path / "seq"), 4)
    assert [f.seq for f in first.frames()] == [0, 1, 2, 3]
    assert first.gt_dir == FolderCamera(tmp_path / "seq").gt_dir  # the wrapped camera's attributes


def test_calibrate_a_simulated_camera_with_a_known_curve(tmp_path, capsys):
    # a non-gamma response the simulated camera applies: gamma 1.8 with a soft shoulder
    x = np.linspace(0, 1, 256)
    inverse = np.clip(x ** 1.8 * (1 + 0.25 * np.sin(np.pi * x) ** 2), 0, None)
    inverse /= inverse[-1]
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"inverse": [inverse.tolist()] * 3}))
    out = tmp_path / "crf.json"
    rc = main(["calibrate", str(out), "--camera", "sim", "--width", "160", "--height", "96",
               "--pixel-format", "RGB8", "--sim-crf", str(truth)])
    assert rc == 0, capsys.readouterr().err
    fitted = load_crf(out)
    codes = np.linspace(0.05, 0.95, 91)[:, None].repeat(3, 1)
    err = np.abs(fitted.to_linear(codes) - load_crf(truth).to_linear(codes)).max()
    assert err < 0.02
    assert out.with_suffix(".png").is_file()


def test_calibrate_refuses_a_folder_that_is_not_a_bracket(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "seq"), "--width", "64", "--height", "48", "--frames", "4"]) == 0
    assert main(["calibrate", str(tmp_path / "crf.json"), "--from-folder", str(tmp_path / "seq")]) == 2
    assert "calibrate: error:" in capsys.readouterr().err
    assert not (tmp_path / "crf.json").exists()


def test_record_from_the_emulator_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLON_CAMEMU", "1")
    out = tmp_path / "rec"
    assert main(["record", str(out), *EMU, "--frames", "6", "--no-progress"]) == 0
    frames = list(FolderCamera(out).frames())
    assert [f.seq for f in frames] == list(range(6)) and frames[0].pixel_format == "BayerRG8"
    assert [round(f.exposure_s * 1e6) for f in frames] == [1000, 8000] * 3
    session = json.loads((out / "session.json").read_text())
    assert session["status"] == "complete" and session["camera"]["serial"] == "0815-0000"
    assert main(["record", str(out), *EMU, "--frames", "2", "--no-progress"]) == 2  # never over a recording


def test_record_stops_cleanly_on_sigterm(tmp_path):
    out = tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "record", str(out), "--width", "64", "--height",
                             "48", "--frames", "100000", "--fps", "20", "--realtime", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            index = out / "exposures.txt"
            if index.is_file() and len(index.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, proc.stdout.read()
    finally:
        proc.kill()
    session = json.loads((out / "session.json").read_text())
    assert session["status"] == "interrupted"
    assert len(list(FolderCamera(out).frames())) == session["summary"]["frames_written"] >= 3
