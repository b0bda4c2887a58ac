"""Live browser preview for the sink: the newest tone-mapped frame as MJPEG, numbers as JSON.

The sink must never wait for a browser, so the work is split three ways:

- :meth:`PreviewServer.publish` (the sink's preview lane) only swaps a reference under a
  lock. A frame not yet encoded when the next one arrives is replaced (drop-oldest,
  counted as ``replaced``): the page shows the newest frame, not a backlog.
- One encoder thread turns at most ``max_fps`` frames a second into a JPEG no wider
  than ``max_width`` and computes the numbers (fps, latency, luminance histogram).
- Each HTTP client has its own thread (``ThreadingHTTPServer``) and sends the newest
  JPEG when one is ready; a client too slow for that skips frames (counted as
  ``client_skipped``) and holds up no one else.

Routes: ``/`` the page (self-contained, nothing fetched from elsewhere), ``/stream.mjpg``
(``multipart/x-mixed-replace``), ``/frame.jpg`` (newest frame), ``/stats.json``.

Latency is "capture → shown" (shown = the JPEG is ready for clients) when frames carry
a host wall-clock capture time ``wall_ns`` (``time.time_ns()`` at capture). Frame
``t_ns`` is the camera's own clock (or ``seq / fps`` for the simulator), not comparable
with the host clock, so without ``wall_ns`` the latency is the stage work the frame
reports in ``meta["timing"]`` plus its wait in the sink, and ``latency_source`` says so.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from sink.tonemap import luminance

log = logging.getLogger(__name__)

BOUNDARY = "hdrstream-frame"
_RATE_WINDOW_S = 2.0  # fps is measured over this trailing window
_LATENCY_HISTORY = 200  # latencies kept for the p50/p95 figures
_HIST_SAMPLES = 16384  # pixels sampled for the histogram (it is a shape, not a measurement)
_CLIENT_TIMEOUT_S = 10.0  # a client that takes no bytes for this long is disconnected


def exposure_label(exposures: Sequence[float], ref_s: float | None = None) -> str:
    """'1.0 ms + 8.0 ms' for the distinct exposures of a window, shortest first."""
    distinct: list[float] = []
    for t in sorted(float(e) for e in exposures if isinstance(e, (int, float)) and e > 0):
        if not distinct or t > distinct[-1] * 1.001:
            distinct.append(t)
    if not distinct and ref_s:
        distinct = [float(ref_s)]
    return " + ".join(_ms(t) for t in distinct)


def _ms(t_s: float) -> str:
    ms = 1000.0 * t_s
    return f"{ms:.1f} ms" if ms >= 1 else f"{ms:.3f} ms"


def display_histogram(rgb8: np.ndarray, bins: int = 64) -> dict[str, Any]:
    """Histogram of the displayed (tone-mapped, 8-bit) luma."""
    step = max(1, int(math.sqrt(rgb8.shape[0] * rgb8.shape[1] / _HIST_SAMPLES)))
    luma = luminance(np.ascontiguousarray(rgb8[::step, ::step]))
    counts, _ = np.histogram(luma, bins=bins, range=(0.0, 256.0))
    return {"kind": "display", "unit": "8-bit luma", "lo": 0.0, "hi": 255.0, "counts": counts.tolist()}


def hdr_histogram(hdr: np.ndarray, bins_per_stop: int = 4, max_bins: int = 96) -> dict[str, Any] | None:
    """Histogram of log2 HDR luminance (stops) and the frame's dynamic range, or None if it is black."""
    step = max(1, int(math.sqrt(hdr.shape[0] * hdr.shape[1] / _HIST_SAMPLES)))
    lum = luminance(np.ascontiguousarray(hdr[::step, ::step], np.float32)).ravel()
    lum = lum[np.isfinite(lum) & (lum > 0)]
    if lum.size == 0:
        return None
    stops = np.log2(lum)
    p_lo, p_hi = (float(v) for v in np.percentile(stops, (0.1, 99.9)))
    lo, hi = math.floor(p_lo), math.ceil(p_hi)
    hi = max(hi, lo + 1)
    bins = min(max_bins, (hi - lo) * bins_per_stop)
    counts, _ = np.histogram(np.clip(stops, lo, hi), bins=bins, range=(lo, hi))
    return {
        "kind": "hdr", "unit": "log2 luminance (stops)", "lo": float(lo), "hi": float(hi),
        "counts": counts.tolist(), "dynamic_range_stops": round(p_hi - p_lo, 2),
    }


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


class _Rate:
    """Events per second over a trailing window (what the page shows as fps)."""

    def __init__(self, window_s: float = _RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def per_second(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return round((len(self._times) - 1) / span, 2) if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class PreviewServer:
    """Serves the sink's live preview on ``http://host:port/`` until :meth:`close`.

    ``port=0`` picks a free port (see :attr:`url`). Binds 127.0.0.1 unless told otherwise:
    the page shows what the camera sees.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, max_fps: float = 15.0,
                 max_width: int = 960, jpeg_quality: int = 80) -> None:
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"preview port must be 0 (any free port) .. 65535, got {port}")
        if max_fps <= 0 or max_width < 16 or not 1 <= jpeg_quality <= 100:
            raise ValueError(f"need max_fps > 0, max_width >= 16, jpeg_quality 1..100; got "
                             f"{max_fps}, {max_width}, {jpeg_quality}")
        self.max_fps, self.max_width, self.jpeg_quality = float(max_fps), int(max_width), int(jpeg_quality)
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)  # publish → encoder
        self._new_jpeg = threading.Condition(self._lock)  # encoder → clients
        self._closing = False
        self._pending: tuple[np.ndarray, dict[str, Any], np.ndarray | None, float] | None = None
        self._jpeg: bytes | None = None
        self._jpeg_id = 0
        self._stats: dict[str, Any] = {}
        self._published = 0
        self._replaced = 0
        self._encode_errors = 0
        self._client_skipped = 0
        self._clients = 0
        self._in_rate, self._shown_rate = _Rate(), _Rate()
        self._latencies: deque[float] = deque(maxlen=_LATENCY_HISTORY)
        self._t0 = time.monotonic()
        try:
            self._httpd = ThreadingHTTPServer((host, int(port)), _handler_for(self))
        except OSError as exc:
            raise RuntimeError(f"cannot serve the live preview on {host}:{port}: {exc}; choose another "
                               f"web_port (0 = any free port) or turn the preview off") from exc
        self._httpd.daemon_threads = True
        self.host, self.port = host, int(self._httpd.server_address[1])
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             name="preview-http", daemon=True),
            threading.Thread(target=self._encode_loop, name="preview-encode", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info("live preview at %s", self.url)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # -- the sink's side -------------------------------------------------------------------

    def publish(self, rgb8: np.ndarray, info: Mapping[str, Any], hdr: np.ndarray | None = None) -> None:
        """Offer one tone-mapped frame (uint8 (H, W, 3) RGB); returns at once.

        ``info``: ``seq``, ``stem``, ``method``, ``exposures`` (s), ``ref_exposure_s``,
        ``wall_ns`` or ``received_ns`` + ``timing`` (for latency), ``gaps``, ``dropped``.
        ``hdr``: the linear frame, for a histogram in stops. Neither array may be changed
        afterwards (they are encoded later, on another thread).
        """
        if not (isinstance(rgb8, np.ndarray) and rgb8.dtype == np.uint8 and rgb8.ndim == 3
                and rgb8.shape[2] == 3 and rgb8.shape[0] > 0 and rgb8.shape[1] > 0):
            raise ValueError(f"publish wants a uint8 (H, W, 3) RGB frame, got "
                             f"{getattr(rgb8, 'dtype', type(rgb8).__name__)} {getattr(rgb8, 'shape', '')}")
        now = time.monotonic()
        with self._lock:
            if self._closing:
                return
            if self._pending is not None:
                self._replaced += 1
            self._pending = (rgb8, dict(info), hdr, now)
            self._published += 1
            self._in_rate.tick(now)
            self._new_frame.notify()

    def stats(self) -> dict[str, Any]:
        """What ``/stats.json`` returns: the newest frame's numbers plus running counts."""
        now = time.monotonic()
        with self._lock:
            lat = list(self._latencies)
            return {
                **self._stats,
                "frames_published": self._published,
                "frames_shown": self._jpeg_id,
                "fps_in": self._in_rate.per_second(now),
                "fps_shown": self._shown_rate.per_second(now),
                "latency_p50_ms": _percentile(lat, 50),
                "latency_p95_ms": _percentile(lat, 95),
                "replaced": self._replaced,
                "client_skipped": self._client_skipped,
                "encode_errors": self._encode_errors,
                "clients": self._clients,
                "max_fps": self.max_fps,
                "uptime_s": round(now - self._t0, 2),
            }

    def close(self) -> None:
        """Stop serving: stream clients get their end, threads are joined, the port is freed."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._new_frame.notify_all()
            self._new_jpeg.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
        log.info("live preview at %s closed", self.url)

    def __enter__(self) -> PreviewServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoder thread ----------------------------------------------------------------------

    def _encode_loop(self) -> None:
        next_at = 0.0
        while True:
            with self._lock:
                while not self._closing and (self._pending is None or time.monotonic() < next_at):
                    wait = None if self._pending is None else max(0.0, next_at - time.monotonic())
                    self._new_frame.wait(wait)
                if self._closing:
                    return
                rgb8, info, hdr, _ = self._pending  # type: ignore[misc]
                self._pending = None
            next_at = time.monotonic() + 1.0 / self.max_fps
            try:
                jpeg, numbers = self._encode(rgb8, info, hdr)
            except Exception:  # one bad frame must not end the preview
                log.exception("preview: could not encode seq %s", info.get("seq"))
                with self._lock:
                    self._encode_errors += 1
                continue
            latency = _latency_ms(info)
            with self._lock:
                self._jpeg = jpeg
                self._jpeg_id += 1
                self._shown_rate.tick(time.monotonic())
                if latency is not None:
                    self._latencies.append(latency[0])
                self._stats = {**numbers, "latency_ms": None if latency is None else round(latency[0], 2),
                               "latency_source": "none" if latency is None else latency[1]}
                self._new_jpeg.notify_all()

    def _encode(self, rgb8: np.ndarray, info: dict[str, Any], hdr: np.ndarray | None) -> tuple[bytes, dict[str, Any]]:
        h, w = rgb8.shape[:2]
        shown = rgb8
        if w > self.max_width:
            f = w // self.max_width
            if f >= 2:  # OpenCV's area filter is ~4x faster at whole factors: 4096 → 1024, then → 960
                shown = cv2.resize(shown, (w // f, max(1, h // f)), interpolation=cv2.INTER_AREA)
            shown = cv2.resize(shown, (self.max_width, max(1, round(h * self.max_width / w))),
                               interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(shown, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError(f"cv2.imencode failed on a {w}x{h} frame")
        hist = hdr_histogram(hdr) if hdr is not None and hdr.ndim == 3 and hdr.shape[2] == 3 else None
        raw = info.get("exposures")
        exposures = [e for e in map(_finite, raw if isinstance(raw, (list, tuple)) else ()) if e is not None]
        ref = _finite(info.get("ref_exposure_s"))
        numbers = {
            "seq": _int(info.get("seq")),
            "stem": _text(info.get("stem")),
            "method": _text(info.get("method")),
            "stream": _text(info.get("stream")),
            "exposures_s": exposures,
            "ref_exposure_s": ref,
            "exposure_pair": exposure_label(exposures, ref),
            "ref_label": _ms(ref) if ref is not None and ref > 0 else None,
            "width": w, "height": h, "shown_width": int(shown.shape[1]), "shown_height": int(shown.shape[0]),
            "gaps": _int(info.get("gaps")),
            "dropped": _int(info.get("dropped")),
            "late": bool(info.get("late", False)),
            "histogram": hist or display_histogram(shown),
            "dynamic_range_stops": hist["dynamic_range_stops"] if hist else None,
        }
        return buf.tobytes(), numbers

    # -- HTTP side (one thread per client) --------------------------------------------------------

    def _latest(self) -> bytes | None:
        with self._lock:
            return self._jpeg

    def _stream(self, write: Any) -> None:
        """Send each new JPEG as one multipart part until the client leaves or we close."""
        sent = 0
        with self._lock:
            self._clients += 1
        try:
            while True:
                with self._lock:
                    while not self._closing and self._jpeg_id == sent:
                        self._new_jpeg.wait()
                    if self._closing:
                        break
                    if sent and self._jpeg_id > sent + 1:
                        self._client_skipped += self._jpeg_id - sent - 1
                    sent, jpeg = self._jpeg_id, self._jpeg
                assert jpeg is not None
                write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                      + jpeg + b"\r\n")
            write(f"--{BOUNDARY}--\r\n".encode())  # the multipart's proper end: we are closing
        finally:
            with self._lock:
                self._clients -= 1


def _finite(x: Any) -> float | None:
    """x as a float if it is a finite number (stats.json must stay valid JSON), else None."""
    if isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def _int(x: Any) -> int | None:
    return int(x) if isinstance(x, (int, np.integer)) and not isinstance(x, bool) else None


def _text(x: Any) -> str | None:
    return None if x is None else str(x)[:200]


def _latency_ms(info: Mapping[str, Any]) -> tuple[float, str] | None:
    """(latency in ms, where it was measured from) for a frame shown now, or None."""
    now = time.time_ns()
    t_host = info.get("wall_ns")
    if isinstance(t_host, int) and not isinstance(t_host, bool) and t_host > 0:
        return (now - t_host) / 1e6, "capture"
    received = info.get("received_ns")
    if isinstance(received, int) and not isinstance(received, bool) and received > 0:
        timing = info.get("timing")
        work = sum(v for v in timing.values() if isinstance(v, (int, float)) and math.isfinite(v)) \
            if isinstance(timing, Mapping) else 0.0
        return 1000.0 * work + (now - received) / 1e6, "stages"
    return None


def _handler_for(server: PreviewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = _CLIENT_TIMEOUT_S  # socket timeout: a stuck client frees its thread
        server_version = "hdrstream-preview"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(PAGE.encode(), "text/html; charset=utf-8")
                elif path == "/stats.json":
                    self._send(json.dumps(server.stats(), allow_nan=False).encode(), "application/json")
                elif path == "/frame.jpg":
                    jpeg = server._latest()
                    if jpeg is None:
                        self._send(b"no frame yet\n", "text/plain", HTTPStatus.SERVICE_UNAVAILABLE)
                    else:
                        self._send(jpeg, "image/jpeg")
                elif path == "/stream.mjpg":
                    self.send_response(HTTPStatus.OK)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                    self.send_header("Cache-Control", "no-store")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    server._stream(self._write)
                else:
                    self._send(b"not found: try / , /stream.mjpg, /frame.jpg or /stats.json\n", "text/plain",
                               HTTPStatus.NOT_FOUND)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the client went away (or stopped reading); nothing of ours to clean up

        def _write(self, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()

        def _send(self, body: bytes, ctype: str, status: HTTPStatus = HTTPStatus.OK) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("preview %s: " + format, self.address_string(), *args)

    return Handler


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hdrstream live preview</title>
<style>
 body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #111; color: #ddd; }
 header { padding: 8px 14px; background: #1b1b1b; display: flex; gap: 16px; align-items: baseline; }
 header h1 { font-size: 16px; margin: 0; } #status { color: #e0a040; } #status.ok { color: #6c6; }
 main { display: flex; flex-wrap: wrap; gap: 14px; padding: 14px; }
 #view { flex: 1 1 560px; min-width: 320px; }
 #frame { width: 100%; max-height: calc(100vh - 110px); object-fit: contain; background: #000; display: block;
          min-height: 120px; }
 #caption { margin-bottom: 6px; font-size: 18px; } #caption b { color: #fff; }
 aside { flex: 0 0 340px; }
 table { border-collapse: collapse; width: 100%; } td { padding: 2px 6px; border-bottom: 1px solid #262626; }
 td:last-child { text-align: right; font-variant-numeric: tabular-nums; color: #fff; }
 .bad { color: #f66 !important; } canvas { width: 100%; height: 140px; background: #000; margin-top: 10px; }
 small { color: #888; }
</style></head>
<body>
<header><h1>hdrstream · live HDR preview</h1><span id="status">connecting…</span>
 <small>tone-mapped (Reinhard) · newest frame only</small></header>
<main>
 <section id="view">
  <div id="caption">seq <b id="seq">–</b> · <b id="exposures">–</b>
   <small>(reference <span id="ref">–</span>, <span id="method">–</span>)</small></div>
  <img id="frame" alt="live tone-mapped HDR frame"></section>
 <aside><table>
  <tr><td>frames shown</td><td id="frames_shown">0</td></tr>
  <tr><td>frames in</td><td id="frames_published">0</td></tr>
  <tr><td>fps in / shown</td><td><span id="fps_in">0</span> / <span id="fps_shown">0</span></td></tr>
  <tr><td>latency <small id="latency_source"></small></td><td><span id="latency_ms">–</span> ms</td></tr>
  <tr><td>latency p50 / p95</td><td><span id="latency_p50_ms">–</span> / <span id="latency_p95_ms">–</span> ms</td></tr>
  <tr><td>gaps (frames lost)</td><td id="gaps">0</td></tr>
  <tr><td>dropped messages</td><td id="dropped">0</td></tr>
  <tr><td>skipped (rate cap)</td><td id="replaced">0</td></tr>
  <tr><td>skipped (slow viewers)</td><td id="client_skipped">0</td></tr>
  <tr><td>dynamic range</td><td><span id="dynamic_range_stops">–</span> stops</td></tr>
  <tr><td>size (shown)</td><td id="size">–</td></tr>
  <tr><td>viewers</td><td id="clients">0</td></tr>
 </table>
 <canvas id="hist" width="640" height="280"></canvas>
 <div><small id="hist_label">luminance histogram</small></div></aside>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const show = (id, v) => { $(id).textContent = (v === null || v === undefined) ? "–" : String(v); };
function startStream() {
  const img = $("frame");
  img.onerror = () => setTimeout(startStream, 1000);
  img.src = "/stream.mjpg?t=" + Date.now();
}
function drawHistogram(h) {
  const c = $("hist"), g = c.getContext("2d");
  g.fillStyle = "#000"; g.fillRect(0, 0, c.width, c.height);
  if (!h || !h.counts || !h.counts.length) return;
  const n = h.counts.length, top = Math.max(1, ...h.counts), bw = c.width / n;
  g.fillStyle = h.kind === "hdr" ? "#e8b341" : "#9ab";
  h.counts.forEach((v, i) => {
    const bh = (c.height - 24) * Math.sqrt(v / top);
    g.fillRect(i * bw, c.height - 20 - bh, Math.max(1, bw - 1), bh);
  });
  g.fillStyle = "#aaa"; g.font = "20px sans-serif";
  g.fillText(String(h.lo), 2, c.height - 2);
  const hi = String(h.hi); g.fillText(hi, c.width - g.measureText(hi).width - 2, c.height - 2);
  $("hist_label").textContent = "luminance histogram: " + h.unit + " (bar height: square root of count)";
}
async function poll() {
  try {
    const r = await fetch("/stats.json", { cache: "no-store" });
    const s = await r.json();
    for (const k of ["seq", "method", "frames_shown", "frames_published", "fps_in", "fps_shown", "latency_ms",
                     "latency_p50_ms", "latency_p95_ms", "gaps", "dropped", "replaced", "client_skipped",
                     "dynamic_range_stops", "clients"]) show(k, s[k]);
    show("exposures", s.exposure_pair || null); show("ref", s.ref_label);
    for (const k of ["latency_ms", "latency_p50_ms", "latency_p95_ms"]) show(k, s[k] === null ? null : s[k].toFixed(1));
    show("latency_source", s.latency_source === "capture" ? "(capture → shown)"
         : s.latency_source === "stages" ? "(stages + sink)" : "");
    $("latency_source").title = s.latency_source === "stages"
      ? "frames carry no host capture time (wall_ns): stage work reported in their timing plus the wait in the sink" : "";
    show("size", s.width ? `${s.width}×${s.height} (${s.shown_width}×${s.shown_height})` : null);
    $("gaps").classList.toggle("bad", s.gaps > 0); $("dropped").classList.toggle("bad", s.dropped > 0);
    drawHistogram(s.histogram);
    $("status").textContent = s.frames_shown ? "live" : "waiting for frames"; $("status").className = "ok";
  } catch (e) {
    $("status").textContent = "no connection to the sink"; $("status").className = "";
  }
  setTimeout(poll, 500);
}
window.addEventListener("load", () => { startStream(); poll(); });
</script>
</body></html>
"""
