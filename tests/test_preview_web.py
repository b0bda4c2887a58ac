"""The sink's live browser preview (sink.web): HTTP routes, MJPEG, drop accounting, a real
sink serving it, and the page in headless Chromium. Small frames, loopback only."""
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from sink.web import BOUNDARY, PreviewServer, exposure_label

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL_HINT = "apt-get install -y chromium chromium-driver (as root) and pip install selenium"


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def stats(server: PreviewServer) -> dict:
    return json.loads(get(server.url + "stats.json"))


def wait_for(predicate, what: str, timeout: float = 20.0):
    """Poll until predicate() is truthy (a hang guard, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def frame(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    """A frame whose mean grey level encodes i (so a decoded JPEG says which frame it is)."""
    return np.full((h, w, 3), 10 + 20 * (i % 12), np.uint8)


def info(i: int, **extra) -> dict:
    return {"seq": i, "stem": f"{i:06d}", "method": "classical", "exposures": [0.001, 0.008, 0.001],
            "ref_exposure_s": 0.008, "received_ns": time.time_ns(), "timing": {"infer": 0.004}, **extra}


def read_part(stream) -> bytes:
    """One multipart/x-mixed-replace part: boundary, headers, JPEG body."""
    line = stream.readline()
    while line in (b"\r\n", b"\n"):
        line = stream.readline()
    assert line.strip() == f"--{BOUNDARY}".encode(), line
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        key, value = line.decode().split(":", 1)
        headers[key.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    body = stream.read(int(headers["content-length"]))
    assert body[:2] == b"\xff\xd8" and body[-2:] == b"\xff\xd9", "not a complete JPEG"
    return body


def decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "the server sent bytes that are not a JPEG"
    return img


@pytest.fixture
def server():
    s = PreviewServer("127.0.0.1", 0, max_fps=100)
    yield s
    s.close()


def test_exposure_label_lists_the_distinct_exposures_shortest_first():
    assert exposure_label([0.008, 0.001, 0.008, 0.001, 0.008]) == "1.0 ms + 8.0 ms"
    assert exposure_label([0.016, 0.001, 0.004]) == "1.0 ms + 4.0 ms + 16.0 ms"
    assert exposure_label([0.0005, 0.002]) == "0.500 ms + 2.0 ms"
    assert exposure_label([], 0.008) == "8.0 ms"


def test_bad_arguments_are_clear_errors(server):
    with pytest.raises(ValueError, match="uint8"):
        server.publish(np.zeros((8, 8, 3), np.float32), info(0))
    with pytest.raises(ValueError, match="port"):
        PreviewServer(port=70000)
    with pytest.raises(RuntimeError, match="web_port"):  # the port is taken
        PreviewServer(port=server.port)


def test_page_stats_and_latest_frame_over_http(server):
    page = get(server.url).decode()
    assert "/stream.mjpg" in page and "/stats.json" in page and "<canvas" in page
    assert "http://" not in page and "https://" not in page, "the page must not fetch anything from elsewhere"
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server.url + "frame.jpg")
    assert e.value.code == 503  # nothing published yet
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server.url + "nope")
    assert e.value.code == 404
    assert stats(server)["frames_shown"] == 0

    hdr = np.exp(np.random.default_rng(0).normal(0, 2, (48, 64, 3))).astype(np.float32)  # ~ 12 stops
    server.publish(frame(3, w=2000, h=100), info(3, gaps=2, dropped=1), hdr=hdr)
    s = wait_for(lambda: (s := stats(server))["frames_shown"] == 1 and s, "the first frame")
    assert s["seq"] == 3 and s["exposure_pair"] == "1.0 ms + 8.0 ms" and s["ref_label"] == "8.0 ms"
    assert (s["width"], s["height"], s["shown_width"], s["shown_height"]) == (2000, 100, 960, 48)
    assert s["gaps"] == 2 and s["dropped"] == 1
    assert s["latency_source"] == "stages" and s["latency_ms"] >= 4.0  # at least the 4 ms of reported work
    hist = s["histogram"]
    assert hist["kind"] == "hdr" and sum(hist["counts"]) > 1000 and hist["lo"] < 0 < hist["hi"]
    assert 8 < s["dynamic_range_stops"] < 20
    assert decode(get(server.url + "frame.jpg")).shape == (48, 960, 3)

    server.publish(frame(4), info(4, wall_ns=time.time_ns() - 250_000_000))  # captured 250 ms ago
    s = wait_for(lambda: (s := stats(server))["frames_shown"] == 2 and s, "the second frame")
    assert s["seq"] == 4 and s["latency_source"] == "capture" and s["latency_ms"] >= 250
    assert s["histogram"]["kind"] == "display" and sum(s["histogram"]["counts"]) == 48 * 64
    assert s["frames_published"] == 2 and s["fps_in"] > 0
    assert decode(get(server.url + "frame.jpg")).shape == (48, 64, 3)


def test_odd_frame_info_still_gives_valid_json(server):
    odd = {"seq": np.int64(7), "exposures": [float("nan"), "x", 0.002, np.float32(0.0005)],
           "ref_exposure_s": float("inf"), "gaps": "many", "timing": {"infer": float("nan")}, "stem": b"\xff"}
    server.publish(frame(7), odd)
    s = wait_for(lambda: (s := stats(server))["frames_shown"] == 1 and s, "the frame")  # json.loads: strict
    assert s["seq"] == 7 and s["exposure_pair"] == "0.500 ms + 2.0 ms" and s["ref_label"] is None
    assert s["gaps"] is None and s["latency_source"] == "none" and s["encode_errors"] == 0


def test_mjpeg_stream_yields_each_new_frame_as_a_jpeg_part(server):
    with urllib.request.urlopen(server.url + "stream.mjpg", timeout=10) as r:
        assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        wait_for(lambda: stats(server)["clients"] == 1, "the stream client to register")
        greys = []
        for i in range(3):
            server.publish(frame(i), info(i))
            greys.append(float(decode(read_part(r)).mean()))
    assert greys == pytest.approx([10, 30, 50], abs=2)  # each part is the frame just published, in order


def test_rate_cap_keeps_the_newest_frame_and_counts_the_replaced_ones():
    with PreviewServer(port=0, max_fps=2) as s:
        for i in range(10):
            s.publish(frame(i), info(i))
        st = wait_for(lambda: (st := stats(s))["frames_shown"] + st["replaced"] == 10 and st["seq"] == 9 and st,
                      "the newest frame to be shown")
        assert st["replaced"] >= 8 and st["frames_shown"] <= 2  # at 2 fps the burst cannot all be encoded


def test_a_slow_viewer_neither_blocks_publish_nor_other_viewers(server):
    big = np.random.default_rng(1).integers(0, 256, (540, 960, 3), np.uint8)  # noise: ~0.5 MB JPEGs
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((server.host, server.port))
    slow.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    stop = threading.Event()

    def trickle():  # reads ~0.8 MB/s, far slower than the frames come
        while not stop.is_set():
            try:
                if not slow.recv(16384):
                    return
            except OSError:
                return
            time.sleep(0.02)

    reader = threading.Thread(target=trickle, daemon=True)
    reader.start()
    wait_for(lambda: stats(server)["clients"] == 1, "the slow client to register")

    n = 40
    publisher = threading.Thread(target=lambda: [server.publish(big, info(i)) or time.sleep(0.01) for i in range(n)])
    publisher.start()
    publisher.join(timeout=30)
    assert not publisher.is_alive(), "publish() blocked behind a slow viewer"
    # A fresh viewer still gets the newest frame, and every published frame is accounted for.
    st = wait_for(lambda: (st := stats(server))["frames_shown"] + st["replaced"] == n and st,
                  "the encoder to take every frame")
    assert st["seq"] == n - 1 and decode(get(server.url + "frame.jpg")).shape == (540, 960, 3)
    st = wait_for(lambda: (st := stats(server))["client_skipped"] > 0 and st, "the slow viewer to skip frames")
    assert st["frames_shown"] > st["client_skipped"] > 0
    stop.set()
    slow.close()
    reader.join(timeout=5)


def test_close_ends_streams_and_frees_the_port():
    s = PreviewServer(port=0, max_fps=100)
    s.publish(frame(0), info(0))
    r = urllib.request.urlopen(s.url + "stream.mjpg", timeout=10)
    read_part(r)
    s.close()
    assert r.read() == f"\r\n--{BOUNDARY}--\r\n".encode()  # the stream ended properly instead of hanging
    r.close()
    with pytest.raises(OSError):
        get(s.url, timeout=2)
    s.publish(frame(1), info(1))  # after close: ignored, no error
    s.close()  # twice is fine


# -- a real sink serving the preview ------------------------------------------------------------


def start_pipeline(out: Path, frames: int, fps: float, width: int, height: int):
    """SimCamera → Preprocessor → classical InferStage → Sink(web_port=0), on a thread."""
    from capture.sim import SimCamera, SimConfig
    from deploy.pipeline import run_embedded
    from infer.stage import InferStage
    from preprocess.stage import Preprocessor
    from sink.stage import Sink, SinkConfig

    cam = SimCamera(SimConfig(width=width, height=height, frames=frames, fps=fps, realtime=True))
    sink = Sink(SinkConfig(out_dir=out, preview=False, video=False, web_port=0))
    url = sink.report()["preview_url"]
    assert url and url.startswith("http://127.0.0.1:"), url
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(r=run_embedded(cam, [Preprocessor(), InferStage("classical"),
                                                                           sink])), daemon=True)
    thread.start()
    return url, cam.exposure_cycle, thread, result


def test_a_recording_sink_serves_its_frames_live_then_stops(tmp_path):
    out = tmp_path / "out"
    url, cycle, thread, result = start_pipeline(out, frames=16, fps=12, width=96, height=64)
    seen = []
    while thread.is_alive():
        try:
            seen.append(json.loads(get(url + "stats.json", timeout=2)))
        except OSError:
            break  # the sink finished and closed the server
        time.sleep(0.1)
    thread.join(timeout=30)
    assert result["r"].ok
    shown = [s for s in seen if s["frames_shown"]]
    assert len({s["seq"] for s in shown}) >= 3, "the page's numbers did not change while frames arrived"
    assert [s["seq"] for s in shown] == sorted(s["seq"] for s in shown)  # seq order
    expected = exposure_label(cycle)
    assert re.fullmatch(r"\d+\.\d+ ms \+ \d+\.\d+ ms", expected) and shown[-1]["exposure_pair"] == expected
    assert shown[-1]["width"] == 96 and shown[-1]["gaps"] == 0 and shown[-1]["latency_source"] == "capture"
    report = json.loads((out / "report.json").read_text())
    assert report["preview_url"] == url and report["frames_out"] == 16
    with pytest.raises(OSError):
        get(url, timeout=2)


# -- the page in headless Chromium --------------------------------------------------------------


def chrome(tmp_path: Path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"BROWSER TEST NOT RUN: {CHROMIUM} / {CHROMEDRIVER} missing. Install: {INSTALL_HINT}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"BROWSER TEST NOT RUN: selenium is not installed. Install: {INSTALL_HINT}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,800"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


IMAGE_DIGEST = """
const img = document.getElementById('frame');
if (!img.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
let sum = 0; for (let i = 0; i < d.length; i += 7) sum = (sum * 31 + d[i]) % 1000000007;
return [img.naturalWidth, img.naturalHeight, sum];
"""
HISTOGRAM_INK = """
const c = document.getElementById('hist'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 60) lit++;
return lit;
"""


def test_the_page_in_headless_chromium_shows_live_frames_and_changing_numbers(tmp_path):
    driver = chrome(tmp_path)
    url, cycle, thread, result = start_pipeline(tmp_path / "out", frames=60, fps=12, width=160, height=120)
    try:
        driver.set_page_load_timeout(20)
        driver.get(url)
        text = lambda id_: driver.find_element("id", id_).text  # noqa: E731

        first = wait_for(lambda: driver.execute_script(IMAGE_DIGEST), "the first MJPEG frame in the page")
        assert first[:2] == [160, 120], first
        wait_for(lambda: text("frames_shown") not in ("", "0"), "the frame counter")
        shown0, seq0 = int(text("frames_shown")), int(text("seq"))
        assert text("exposures") == exposure_label(cycle) and text("status") == "live"
        assert text("latency_ms") not in ("", "–") and float(text("latency_ms")) > 0
        # Frames keep arriving: the counter, the seq and the pixels all move on.
        wait_for(lambda: int(text("frames_shown")) >= shown0 + 3 and int(text("seq")) > seq0, "the numbers to change")
        wait_for(lambda: (d := driver.execute_script(IMAGE_DIGEST)) and d[2] != first[2], "the image to change")
        assert float(text("fps_in")) > 0 and text("gaps") == "0"
        assert driver.execute_script(HISTOGRAM_INK) > 500, "the histogram canvas is empty"
        shot = tmp_path / "preview.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        keep = os.environ.get("HDRSTREAM_PREVIEW_SCREENSHOT")  # where to keep a copy (CI artefacts)
        if keep:
            shutil.copy(shot, keep)
        print(f"preview screenshot: {shot}")
    finally:
        driver.quit()
        thread.join(timeout=30)
    assert result["r"].ok
