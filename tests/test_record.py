"""Recording sessions: camera → sequence folder → FolderCamera, and every way a session ends."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from capture.folder import FolderCamera, FolderError
from capture.record import RecordConfig, record, recover_session
from capture.seqfolder import SequenceWriter, repair
from capture.sim import SimCamera, SimConfig
from hdrstream.frame import Frame

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(width=64, height=48)


def sim(fmt: str = "BayerRG8", frames: int = 8, **kw) -> SimCamera:
    return SimCamera(SimConfig(**{**SMALL, "frames": frames, "pixel_format": fmt, **kw}))


def session(folder: Path) -> dict:
    return json.loads((folder / "session.json").read_text())


def quiet(**kw) -> RecordConfig:
    return RecordConfig(**{"writers": 2, **kw})


@dataclass
class PylonLikeStats:
    grabbed: int = 0
    incomplete: int = 0
    gaps: int = 0
    reconnects: int = 0


class ListSource:
    """Yields given frames; optionally sets a stop event or raises Ctrl-C after some."""

    name = "list"

    def __init__(self, frames, stop_after=None, event=None, ctrl_c_after=None):
        self._frames, self.stop_after, self.event, self.ctrl_c_after = frames, stop_after, event, ctrl_c_after
        self.stats = PylonLikeStats()
        self.closed = False
        self.yielded = 0

    def frames(self):
        for i, f in enumerate(self._frames):
            if self.ctrl_c_after is not None and i == self.ctrl_c_after:
                raise KeyboardInterrupt
            if self.stop_after is not None and i == self.stop_after:
                self.event.set()
            self.stats.grabbed += 1
            self.yielded += 1
            yield f

    def close(self):
        self.closed = True


def mosaic_frame(seq: int, size: int = 16, **meta) -> Frame:
    data = np.random.default_rng(seq).integers(0, 256, (size, size), dtype=np.uint8)
    return Frame("frame", "cam", seq, seq * 1000, 0.001 * (1 + seq % 2), 0.0, "BayerRG8", data,
                 set=seq % 2, meta=meta)


def assert_same_frames(sent: list[Frame], got: list[Frame]) -> None:
    assert len(got) == len(sent)
    for a, b in zip(sent, got):
        np.testing.assert_array_equal(a.data, b.data)
        assert (b.seq, b.set, b.t_ns, b.exposure_s, b.gain_db, b.pixel_format) == \
               (a.seq, a.set, a.t_ns, a.exposure_s, a.gain_db, a.pixel_format)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, dtype", [("BayerRG8", np.uint8), ("BayerRG12", np.uint16)])
def test_round_trip_from_sim_camera(tmp_path, fmt, dtype):
    summary = record(sim(fmt), tmp_path, quiet(writers=3), progress=False)
    sent = list(sim(fmt).frames())
    assert summary.status == "complete" and summary.ok and summary.error is None
    assert (summary.frames_written, summary.frames_grabbed, summary.missing_seqs) == (8, 8, 0)
    assert summary.payload_bytes == sum(f.data.nbytes for f in sent) and summary.file_bytes > 0
    cam = FolderCamera(tmp_path)
    got = list(cam.frames())
    assert_same_frames(sent, got)
    assert got[0].data.dtype == dtype
    png = cv2.imread(str(tmp_path / "frames" / "000003.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == dtype and png.shape == (48, 64)  # the raw mosaic, one 8- or 16-bit plane
    headers = [json.loads(ln) for ln in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert headers == [{**f.header()} for f in sent]
    lines = (tmp_path / "exposures.txt").read_text().splitlines()
    assert lines[1] == f"frames/000001.png {sent[1].exposure_s!r}"
    s = session(tmp_path)
    assert s["status"] == "complete" and s["summary"]["frames_written"] == 8
    assert s["camera"]["name"] == "sim" and s["camera"]["pixel_format"] == fmt
    assert s["settings"]["writers"] == 3
    assert {"hdrstream", "python", "numpy", "opencv", "pypylon"} <= set(s["software"])
    assert s["software"]["opencv"] == cv2.__version__ and s["host"]["hostname"]


def test_compressed_png_is_smaller_and_still_exact(tmp_path):
    sizes = {}
    for level in (0, 1, 4):
        out = tmp_path / f"l{level}"
        summary = record(sim("BayerRG12", frames=2), out, quiet(png_compression=level), progress=False)
        assert_same_frames(list(sim("BayerRG12", frames=2).frames()), list(FolderCamera(out).frames()))
        sizes[level] = summary.file_bytes
    assert sizes[1] < sizes[0] and sizes[4] < sizes[0]


def test_fsync_mode_round_trip(tmp_path):
    summary = record(sim("BayerRG8", frames=3), tmp_path, quiet(fsync=True), progress=False)
    assert summary.ok and session(tmp_path)["settings"]["fsync"] is True
    assert_same_frames(list(sim("BayerRG8", frames=3).frames()), list(FolderCamera(tmp_path).frames()))


def test_rerecording_a_folder_camera_keeps_everything(tmp_path):
    record(sim("BayerRG12"), tmp_path / "a", quiet(), progress=False)
    src = FolderCamera(tmp_path / "a")
    info = src.describe()
    assert info["layout"] == "sequence" and info["frames"] == 8 and info["pixel_formats"] == ["BayerRG12"]
    assert info["recorded_by"]["name"] == "sim"
    record(src, tmp_path / "b", quiet(), progress=False)
    assert_same_frames(list(FolderCamera(tmp_path / "a").frames()), list(FolderCamera(tmp_path / "b").frames()))
    assert session(tmp_path / "b")["camera"]["recorded_by"]["name"] == "sim"


# -- limits and gaps ----------------------------------------------------------------------------


def test_frames_limit_stops_and_closes_the_camera(tmp_path):
    cam = sim(frames=50)
    summary = record(cam, tmp_path, quiet(frames=5), progress=False)
    assert summary.status == "complete" and summary.frames_written == 5 == len(FolderCamera(tmp_path))
    assert cam._closed


def test_seconds_limit(tmp_path):
    cam = sim(frames=1000, realtime=True, fps=40.0)  # 25 s if nothing stopped it
    t0 = time.monotonic()
    summary = record(cam, tmp_path, quiet(seconds=0.3), progress=False)
    assert summary.status == "complete"
    assert 1 <= summary.frames_written < 1000 and summary.seconds >= 0.3
    assert time.monotonic() - t0 < 15
    assert len(FolderCamera(tmp_path)) == summary.frames_written


def test_seq_gaps_and_camera_stats_are_reported(tmp_path):
    seqs = [0, 1, 2, 5, 6, 9]
    src = ListSource([mosaic_frame(s) for s in seqs])
    src.stats.incomplete = 2
    summary = record(src, tmp_path, quiet(), progress=False)
    assert summary.status == "complete" and summary.frames_written == 6
    assert summary.missing_seqs == 4 and summary.gap_ranges == [(3, 4), (7, 8)]
    assert summary.source_drops == 2 and summary.source_stats == {"grabbed": 6, "incomplete": 2, "gaps": 0,
                                                                   "reconnects": 0}
    assert [f.seq for f in FolderCamera(tmp_path).frames()] == seqs
    s = session(tmp_path)["summary"]
    assert s["missing_seqs"] == 4 and s["source_stats"]["incomplete"] == 2


def test_a_frame_the_folder_cannot_hold_is_counted_not_fatal(tmp_path):
    frames = [mosaic_frame(s) for s in range(4)]
    frames[2] = Frame("frame", "cam", 2, 0, 0.001, 0.0, "RGBf32", np.zeros((16, 16, 3), np.float32))
    summary = record(ListSource(frames), tmp_path, quiet(), progress=False)
    assert summary.status == "complete" and summary.frames_rejected == 1 and summary.frames_written == 3
    assert [f.seq for f in FolderCamera(tmp_path).frames()] == [0, 1, 3]


# -- interruption ----------------------------------------------------------------------------------


def test_stop_event_mid_session_leaves_a_valid_interrupted_folder(tmp_path):
    stop = threading.Event()
    src = ListSource([mosaic_frame(s) for s in range(20)], stop_after=5, event=stop)
    summary = record(src, tmp_path, quiet(), progress=False, stop=stop)
    assert summary.status == "interrupted" and summary.interrupted
    assert summary.frames_written == summary.frames_grabbed == src.yielded == 6  # nothing queued is lost
    assert src.closed and session(tmp_path)["status"] == "interrupted"
    assert_same_frames([mosaic_frame(s) for s in range(6)], list(FolderCamera(tmp_path).frames()))


def test_ctrl_c_drains_the_queue_and_finalises(tmp_path):
    src = ListSource([mosaic_frame(s) for s in range(20)], ctrl_c_after=7)
    summary = record(src, tmp_path, quiet(writers=1, queue_frames=8), progress=False)
    assert summary.status == "interrupted" and summary.frames_written == 7 and src.closed
    assert session(tmp_path)["summary"]["frames_written"] == 7
    assert len(list(FolderCamera(tmp_path).frames())) == 7


_CHILD = """
import sys
from capture.record import RecordConfig, record
from capture.sim import SimCamera, SimConfig
cam = SimCamera(SimConfig(width=64, height=48, frames=100000, pixel_format="BayerRG12", realtime=True, fps=200.0))
print(record(cam, sys.argv[1], RecordConfig(writers=2), progress=False).status)
"""


def signal_recording(out: Path, sig: int, after_frames: int) -> tuple[int, str]:
    """Record from a live simulated camera in a child process; send ``sig`` once it has
    listed ``after_frames`` frames; return its exit code and stdout."""
    # SIGINT back to its default: a shell's background job (CI, nohup) starts with it ignored
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_CHILD), str(out)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            index = out / "exposures.txt"
            if index.is_file() and index.read_bytes().count(b"\n") >= after_frames:
                break
            time.sleep(0.002)
        assert child.poll() is None, child.stderr.read().decode()
        os.kill(child.pid, sig)
        stdout, _ = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()
    return child.returncode, stdout.decode()


def test_sigint_is_ctrl_c_stop_drain_finalise(tmp_path):
    code, stdout = signal_recording(tmp_path, signal.SIGINT, 10)
    assert code == 0 and stdout.strip() == "interrupted"
    s = session(tmp_path)
    assert s["status"] == "interrupted" and s["summary"]["frames_written"] == s["summary"]["frames_grabbed"] >= 10
    assert len(list(FolderCamera(tmp_path).frames())) == s["summary"]["frames_written"]


def test_sigkill_mid_recording_leaves_a_readable_folder(tmp_path):
    out = tmp_path / "rec"
    code, _ = signal_recording(out, signal.SIGKILL, 20)
    assert code == -signal.SIGKILL
    assert session(out)["status"] == "recording"  # it never got to say how it ended
    got = list(FolderCamera(out).frames())
    assert len(got) >= 20 and [f.seq for f in got] == list(range(len(got)))
    ref = sim("BayerRG12", realtime=True, fps=200.0)
    for f in got:  # every listed frame intact
        np.testing.assert_array_equal(f.data, ref.capture(f.seq))
    s = recover_session(out)
    assert s["status"] == "crashed" and s["summary"]["frames_written"] == len(got)
    assert not list((out / "frames").glob(".*"))
    assert len(FolderCamera(out)) == len(got)


# -- write failures ----------------------------------------------------------------------------------


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """The OS refuses to grow any file past ``nbytes`` (EFBIG, as a full disk refuses: ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_image_write_failure_stops_with_a_clear_error(tmp_path):
    frames = [mosaic_frame(s) for s in range(4)] + [mosaic_frame(4, size=256)]
    endless = itertools.chain(frames, (mosaic_frame(s) for s in itertools.count(5)))
    src = ListSource(endless)
    with file_size_limit(32_000):  # the 256x256 frame (~66 KB as a PNG) cannot be written
        summary = record(src, tmp_path, quiet(queue_frames=4), progress=False)  # returns: grabbing stopped
    assert summary.status == "failed" and summary.frames_written == 4 and summary.frames_lost >= 1
    assert "seq 4" in summary.error and "File too large" in summary.error
    assert src.closed and summary.frames_grabbed == src.yielded
    s = session(tmp_path)
    assert s["status"] == "failed" and "seq 4" in s["summary"]["error"]
    assert_same_frames(frames[:4], list(FolderCamera(tmp_path).frames()))
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"{i:06d}.png" for i in range(4)]


def test_index_write_failure_leaves_no_partial_line(tmp_path):
    frames = [mosaic_frame(s, note="x" * 2000) for s in range(30)]  # ~2.2 KB header lines
    with file_size_limit(16_000):  # frames.jsonl hits it after 7 frames, mid-line
        summary = record(ListSource(frames), tmp_path, quiet(), progress=False)
    assert summary.status == "failed" and "index" in summary.error and "File too large" in summary.error
    n = summary.frames_written
    assert 1 <= n < 30 and session(tmp_path)["summary"]["frames_written"] == n
    assert_same_frames(frames[:n], list(FolderCamera(tmp_path).frames()))
    assert len(list((tmp_path / "frames").iterdir())) == n  # no unlisted images left behind


def test_existing_recording_is_not_overwritten_unless_asked(tmp_path):
    record(sim(frames=6), tmp_path, quiet(), progress=False)
    with pytest.raises(FileExistsError, match="already lists frames"):
        record(sim(frames=3), tmp_path, quiet(), progress=False)
    assert len(FolderCamera(tmp_path)) == 6
    record(sim(frames=3), tmp_path, quiet(overwrite=True), progress=False)
    assert len(FolderCamera(tmp_path)) == 3 and len(list((tmp_path / "frames").iterdir())) == 3


@pytest.mark.parametrize("kw", [dict(frames=0), dict(seconds=-1.0), dict(seconds=float("nan")), dict(writers=0),
                                dict(queue_frames=0), dict(png_compression=10)])
def test_bad_config_is_a_clear_error(kw):
    with pytest.raises(ValueError, match=next(iter(kw)).split("_")[0]):
        RecordConfig(**kw)


# -- repair after a crash -----------------------------------------------------------------------------


def test_repair_a_folder_cut_between_its_two_index_appends(tmp_path):
    frames = [mosaic_frame(s) for s in range(3)]
    with SequenceWriter(tmp_path) as w:
        for f in frames:
            w.write(f)
    with open(tmp_path / "frames.jsonl", "a") as f:  # the next frame's header made it, its listing did not
        f.write(json.dumps(mosaic_frame(3).header()) + "\n")
    with open(tmp_path / "exposures.txt", "a") as f:
        f.write("frames/000003.p")  # and a partial line, from a write cut short
    (tmp_path / "frames" / ".000004.abcd.png").write_bytes(b"half a png")
    with pytest.raises(FolderError):
        FolderCamera(tmp_path)
    report = repair(tmp_path)
    assert (report.frames, report.dropped_lines, report.temp_files) == (3, 2, 1)
    assert_same_frames(frames, list(FolderCamera(tmp_path).frames()))
    assert not repair(tmp_path).changed


def test_recover_session_leaves_finished_sessions_alone(tmp_path):
    record(sim(frames=2), tmp_path, quiet(), progress=False)
    assert recover_session(tmp_path)["status"] == "complete"
