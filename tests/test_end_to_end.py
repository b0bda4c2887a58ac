"""The whole tool from the command line: demo, simulate → reconstruct, and the stages as
separate processes over tcp loopback. Real files, real sockets, tiny frames."""
import json
import os
import socket
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.cli import main
from hdrstream.hdrio import read_exr

TINY = ["--width", "128", "--height", "96"]


def exrs(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.exr"))


def test_demo_writes_hdr_video_previews_and_a_scored_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY, "--frames", "8"]) == 0
    stems = [f"{i:06d}" for i in range(8)]
    assert exrs(out) == stems and exrs(out / "reference") == stems and exrs(out / "gt") == stems
    assert exrs(out / "classical") == stems  # classical beside the network, the main method
    hdr = read_exr(out / "000003.exr")
    assert hdr.shape == (96, 128, 3) and np.isfinite(hdr).all() and hdr.max() > 0
    assert (out / "contact_sheet.png").is_file() and len(list((out / "preview").glob("*.png"))) == 8
    assert not [p for p in out.rglob(".*") if p.is_file()], "temp files left behind"
    report = json.loads((out / "report.json").read_text())
    assert report["frames_out"] == 8 and report["gaps"] == []
    assert {"net", "classical", "reference"} <= set(report["methods"])
    assert report["main_method"] == "net" and report["main_method_why"] == "default offline"
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "report.json" in printed and "method: net (default offline)" in printed


def test_simulate_then_reconstruct_gives_one_exr_per_input_frame(tmp_path):
    seq = tmp_path / "seq"
    assert main(["simulate", str(seq), *TINY, "--frames", "7", "--exposures", "3", "--pixel-format", "RGB8"]) == 0
    assert len(list((seq / "frames").iterdir())) == 7 and len(exrs(seq / "gt")) == 7
    out = tmp_path / "hdr"
    assert main(["reconstruct", str(seq), str(out), "--no-preview"]) == 0
    assert exrs(out) == exrs(seq / "gt")
    report = json.loads((out / "report.json").read_text())
    assert report["frames_out"] == 7


def test_network_precision_and_device_reach_the_network(tmp_path, capsys):
    """--precision bf16 runs the shipped network under autocast; fp16 on a CPU is refused up
    front with a clear error, not after the stream has started."""
    seq = tmp_path / "seq"
    assert main(["simulate", str(seq), *TINY, "--frames", "5"]) == 0
    args = ["reconstruct", str(seq), "--method", "net", "--device", "cpu", "--no-preview"]
    assert main([*args[:2], str(tmp_path / "bf16"), *args[2:], "--precision", "bf16"]) == 0
    assert len(exrs(tmp_path / "bf16")) == 5
    assert main([*args[:2], str(tmp_path / "fp16"), *args[2:], "--precision", "fp16"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "fp16").exists() or not exrs(tmp_path / "fp16")


def test_reconstruct_a_broken_folder_is_a_clear_error(tmp_path, capsys):
    seq = tmp_path / "seq"
    assert main(["simulate", str(seq), *TINY, "--frames", "4"]) == 0
    (seq / "exposures.txt").write_text((seq / "exposures.txt").read_text() + "frames/000099.png 0.01\n")
    assert main(["reconstruct", str(seq), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "000099.png" in err and "exposures.txt" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stages_as_separate_services_over_tcp(tmp_path):
    p1, p2, p3 = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "live"

    def start(*args):
        return subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    procs = [
        start("sink", str(out), "--in", f"@tcp://127.0.0.1:{p3}"),
        start("infer", "--in", f">tcp://127.0.0.1:{p2}", "--out", f">tcp://127.0.0.1:{p3}"),
        start("preprocess", "--in", f">tcp://127.0.0.1:{p1}", "--out", f"@tcp://127.0.0.1:{p2}",
              "--sink", f">tcp://127.0.0.1:{p3}"),
        start("capture", "--camera", "sim", *TINY, "--frames", "6", "--out", f"@tcp://127.0.0.1:{p1}"),
    ]
    try:
        codes = [procs[i].wait(timeout=120) for i in (3, 2, 0)]  # capture, preprocess, sink end with the stream
        procs[1].send_signal(signal.SIGTERM)  # a worker serves until told to stop, then drains
        codes.append(procs[1].wait(timeout=60))
    finally:
        for p in procs:
            p.kill()
    logs = "\n".join(p.stdout.read() for p in procs)
    assert codes == [0, 0, 0, 0], logs
    assert exrs(out) == [f"{i:06d}" for i in range(6)], logs


def test_a_truncated_frame_in_a_folder_of_12_is_skipped_named_and_the_rest_written(tmp_path, capsys):
    seq = tmp_path / "seq"
    assert main(["simulate", str(seq), *TINY, "--frames", "12", "--pixel-format", "RGB8"]) == 0
    bad = seq / "frames" / "000005.png"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated, as a crashed recorder leaves it
    out = tmp_path / "out"
    assert main(["reconstruct", str(seq), str(out), "--no-preview"]) == 0  # lenient by default
    assert exrs(out) == [f"{i:06d}" for i in range(12) if i != 5]  # 11 written
    report = json.loads((out / "report.json").read_text())
    assert report["gaps"] == [[5, 5]] and report["lost"]["unreadable"] == 1 and report["lost"]["total"] == 1
    assert [(u["seq"], u["file"]) for u in report["unreadable_frames"]] == [(5, "000005.png")]
    assert "000005.png" in capsys.readouterr().out  # the summary names it
    assert not [p for p in out.rglob(".*") if p.is_file()], "temp files left behind"
    # --strict: the same folder is a failure
    assert main(["reconstruct", str(seq), str(tmp_path / "strict"), "--no-preview", "--strict"]) == 1


def test_the_reduced_live_mode_is_smaller_and_says_so(tmp_path):
    """--scale 0.5: EXRs at half the camera's width and height, meta and report.json say the
    scale, the summary labels it; the frames still score against ground truth at that size
    only if it matches (here it does not, so they are not scored, and nothing is lost)."""
    out = tmp_path / "out"
    rc = subprocess.run([sys.executable, "-m", "deploy.cli", "demo", "--out", str(out), "--frames", "8",
                         "--width", "128", "--height", "72", "--compare", "", "--scale", "0.5"],
                        capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["scale"] == 0.5 and report["frames_out"] == 8 and report["lost"]["total"] == 0
    assert read_exr(out / "000003.exr").shape == (36, 64, 3)
    assert "reduced live mode" in rc.stdout + rc.stderr
