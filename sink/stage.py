"""The sink stage: HDR frames in, files out (EXR, previews, report.json).

Message handling (the :class:`hdrstream.stage.Stage` contract plus end of stream):

- ``process(frame)`` takes ``kind="hdr"`` frames, and also the ``kind="eos"`` message if
  the runner passes it on: its ``seq`` (one past the last frame) and ``meta["count"]``
  (frames the source sent; ``meta["first_seq"]`` if present) define the expected seq
  range, so frames never received are reported as gaps. A runner should therefore hand
  the eos to ``process`` and then call ``finish``; without an eos, gaps are only the
  holes between the lowest and highest seq seen.
- ``finish()`` flushes the reorder buffers, closes the video, writes the contact sheet
  and ``report.json``. It returns nothing downstream; the sink is the end of the graph.

EXR writing, previews and metrics run on three background threads (:mod:`sink.lanes`),
each in seq order; ``process`` only validates, converts to half float and reorders.

Anything malformed (not a Frame, wrong kind, wrong format/shape, unsafe stem or method
name) is counted by reason, logged with its seq, and ignored: a live sink never raises
on input. Non-finite or out-of-range values are repaired for half float and counted.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hdrstream import hdrio
from hdrstream.frame import Frame
from hdrstream.seqranges import SeqRanges
from sink.lanes import Lanes
from sink.preview import ThumbnailSampler, VideoPreview, display_copy, thumbnail, write_contact_sheet
from sink.reorder import Released, Reorderer
from sink.report import QualityTracker, Stats, Timings, summary_text
from sink.tonemap import ReinhardToneMapper
from sink.web import PreviewServer
from sink.writer import ExrWriter, safe_name, to_half

log = logging.getLogger(__name__)

HDR_FORMATS = ("RGBf32", "RGBf16")
DEFAULT_METHOD = "hdr"  # the name used for frames that carry no meta["method"]
_GT_SUFFIXES = (".exr", ".hdr")
# An eos (or a frame) further than this past the highest seq seen is not believed: no queue
# in the graph holds that many frames (10,000 = 5.5 min at 30 frames/s lost in a row).
EOS_SLACK = 10_000
NOTES = (
    "frames_in counts hdr messages of all methods, frames_out the main method's EXRs, exr_files "
    "those of all methods. timing_ms is per frame (mean/p50/p95/max); sink_write/preview/metrics "
    "are work times on the sink's threads, sink_process the time process() held the caller. "
    "PSNR in dB; +inf is stored as null and left out of the means (see *_inf_frames). "
    "Flicker is per consecutive seq pair."
)


@dataclass
class SinkConfig:
    """Where and what the sink writes.

    ``reorder_window``: most frames held per method waiting for a missing seq before it
    is declared a gap (bounds latency and memory: 64 × 7.5 MB at 1536×813 half float).
    ``main_method``: whose frames go to ``OUT/<stem>.exr``; None = the first method seen.
    ``main_method_why``: why that method (a default, or asked for), told in the report.
``background``: see :mod:`sink.lanes`; each output kind stays in seq order either way.
    """

    out_dir: str | Path
    preview: bool = True
    video: bool = True
    gt_dir: str | Path | None = None
    main_method: str | None = None
    main_method_why: str = ""
    reorder_window: int = 64
    video_fps: float = 15.0
    contact_sheet_frames: int = 16
    background: bool = True  # EXR / preview / metrics on their own threads (False: inline)
    max_pending: int = 8  # frames in flight on those threads before process() waits
    web_port: int | None = None  # live browser preview (sink.web) on this port; 0 = any free port
    web_host: str = "127.0.0.1"  # where the preview listens; anything else is explicit


@dataclass
class _Item:
    stem: str
    rgb: np.ndarray  # float16 (H, W, 3), what is written to disk
    t_min: float | None
    timing: Any
    web: dict[str, Any] | None = None  # what the live preview shows (None: no preview server)


@dataclass
class _Method:
    name: str
    reorder: Reorderer[_Item]
    tonemap: ReinhardToneMapper = field(default_factory=ReinhardToneMapper)
    timings: Timings = field(default_factory=Timings)
    quality: QualityTracker = field(default_factory=QualityTracker)
    frames_in: int = 0
    frames_out: int = 0


class Sink:
    """Reorders HDR frames by seq per method and writes EXRs, previews and a report."""

    name = "sink"

    def __init__(self, cfg: SinkConfig) -> None:
        if cfg.reorder_window < 0:
            raise ValueError(f"reorder_window must be >= 0, got {cfg.reorder_window}")
        if cfg.main_method is not None and not safe_name(cfg.main_method):
            raise ValueError(f"main_method {cfg.main_method!r} is not usable as a folder name")
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.gt_dir = Path(cfg.gt_dir) if cfg.gt_dir is not None else None
        self._gt_warned = False  # the folder may be filled while we run (demo), so warn late
        self._main: str | None = cfg.main_method
        self._methods: dict[str, _Method] = {}
        self._writer: ExrWriter | None = None
        self._video = VideoPreview(self.out_dir / "preview", cfg.video_fps) if cfg.video else None
        self._video_path: Path | None = None
        self._thumbs = ThumbnailSampler(cfg.contact_sheet_frames)
        self._sheet_path: Path | None = None
        self._main_index = 0
        self._gt_cache: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._eos_end: int | None = None
        self._eos_start: int | None = None
        self._stream_error: str | None = None  # why the source stopped early, from its eos
        self._failed = SeqRanges()  # seqs no inference worker could produce (eos "failed")
        self._max_seq: int | None = None  # highest seq of any hdr frame: judges an eos's plausibility
        self._upstream_malformed: dict[str, int] = {}  # per stage, carried by the eos
        self._unreadable: list[dict[str, Any]] = []  # frames the source could not read (eos)
        self._scale: float | None = None  # the reduced live mode's factor, from the frames' meta
        self._source_gaps = SeqRanges()  # frames the camera never delivered (outage), from the eos
        self._latency = Stats()  # ms from the camera handing a frame over to its HDR frame here
        self.frames_in = 0
        self.repaired = 0  # frames with non-finite values that were repaired
        self.dropped: Counter[str] = Counter()
        self._t_start: float | None = None
        self._t_end: float | None = None
        self._finished = False
        self._lock = threading.Lock()  # counters touched by the lanes
        self._lanes = Lanes(("exr", "preview", "metrics"), cfg.max_pending, cfg.background)
        self._process_ms = Timings()
        self._web = PreviewServer(cfg.web_host, cfg.web_port) if cfg.web_port is not None else None

    # -- the Stage protocol ------------------------------------------------------------

    def process(self, frame: Frame) -> list[Frame]:
        """Handle one message; never raises on bad input. Returns [] (nothing goes on)."""
        if self._t_start is None:
            self._t_start = time.perf_counter()
        if self._finished:
            self._drop("after_finish", frame)
            return []
        t0 = time.perf_counter()
        try:
            self._process(frame)
        except Exception:  # a bug must not stop a live stream
            log.exception("sink: failed on message seq=%s", getattr(frame, "seq", "?"))
            self._count("error")
        self._process_ms.add("sink_process", 1000 * (time.perf_counter() - t0))
        return []

    def finish(self) -> list[Frame]:
        """Flush held frames in order, close the video, write contact sheet and report."""
        if self._finished:
            return []
        self._finished = True
        if self._t_start is None:
            self._t_start = time.perf_counter()
        if self._eos_end is not None and self._main is None:
            self._main = DEFAULT_METHOD  # nothing arrived: still report the expected frames as gaps
        if self._eos_end is not None and self._main is not None:
            self._method(self._main)
        for m in self._methods.values():
            for r in m.reorder.flush(end=self._eos_end, start=self._eos_start):
                self._emit(m, r)
        self._lanes.close()  # every queued EXR, preview and score is done after this
        if self._web is not None:
            self._web.close()
        if self._video is not None:
            self._video_path = self._video.close()
        try:
            self._sheet_path = write_contact_sheet(self.out_dir / "contact_sheet.png", self._thumbs.selection())
        except Exception:
            log.exception("sink: could not write the contact sheet")
        self._t_end = time.perf_counter()
        report = self.report()
        text = json.dumps(report, indent=2, allow_nan=False)
        hdrio.atomic_write(self.out_dir / "report.json", lambda tmp: Path(tmp).write_text(text + "\n"))
        log.info("%s", summary_text(report))
        return []

    # -- reporting -----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Everything measured so far, as a JSON-safe dict (what report.json holds)."""
        end = self._t_end if self._t_end is not None else time.perf_counter()
        wall = end - self._t_start if self._t_start is not None else 0.0
        main = self._methods.get(self._main) if self._main is not None else None
        with self._lock:
            main_out = main.frames_out if main else 0
            dropped = dict(self.dropped)
            frames_out = sum(m.frames_out for m in self._methods.values())
        methods = {}
        for name, m in list(self._methods.items()):
            methods[name] = {
                "dir": str(self._dir_for(name)),
                "frames_in": m.frames_in,
                "frames_out": m.frames_out,
                "gaps": m.reorder.gaps.ranges(),
                "gap_count": len(m.reorder.gaps),
                "duplicates": m.reorder.duplicates,
                "late": m.reorder.late,
                "held": m.reorder.held,
                "timing_ms": m.timings.summary(),
                "quality": m.quality.summary() if self.gt_dir is not None else None,
            }
        return {
            "out_dir": str(self.out_dir),
            "main_method": self._main,
            "main_method_why": self.cfg.main_method_why,
            "frames_in": self.frames_in,
            "frames_out": main_out,
            "exr_files": frames_out,
            "dropped": {"total": sum(dropped.values()), "by_reason": dropped},
            "duplicates": sum(m.reorder.duplicates for m in self._methods.values()),
            "late": sum(m.reorder.late for m in self._methods.values()),
            "repaired_frames": self.repaired,
            "gaps": main.reorder.gaps.ranges() if main else [],  # [first, last] seq ranges, both included
            "gap_count": len(main.reorder.gaps) if main else 0,
            "lost": self._lost(main),
            "expected": None if self._eos_end is None else {"first_seq": self._eos_start, "end_seq": self._eos_end},
            "stream_error": self._stream_error,
            "failed_seqs": self._failed.ranges(),  # also in gaps: given up after worker failures (see the dispatcher)
            "unreadable_frames": self._unreadable,  # also in gaps: {seq, file, reason} from the source
            "malformed": {**self._upstream_malformed, **({"sink": dropped.get("malformed", 0)}
                                                         if "sink" not in self._upstream_malformed else {})},
            "latency_ms": self._latency.summary(),  # capture hand-over -> HDR frame at the sink
            "wall_s": round(wall, 4),
            "throughput_fps": round(main_out / wall, 3) if wall > 0 else 0.0,
            "scale": self._scale,  # the reduced live mode's factor of the camera's resolution; None: full size
            "timing_ms": {**(methods[self._main]["timing_ms"] if main else {}), **self._process_ms.summary()},
            "quality": methods[self._main]["quality"] if main else None,
            "methods": methods,
            "files": {
                "exr_dir": str(self.out_dir),
                "preview_dir": str(self.out_dir / "preview") if self.cfg.preview else None,
                "video": str(self._video_path) if self._video_path else None,
                "contact_sheet": str(self._sheet_path) if self._sheet_path else None,
                "report": str(self.out_dir / "report.json"),
            },
            "preview_url": self._web.url if self._web is not None else None,
            "notes": NOTES,
        }

    def _lost(self, main: _Method | None) -> dict[str, int]:
        """Frames the source sent that have no EXR (the gaps), by reason."""
        if main is None:
            return {"total": 0}
        gaps = main.reorder.gaps
        failed = gaps.overlap(self._failed)
        unreadable = gaps.overlap(SeqRanges(u["seq"] for u in self._unreadable))
        camera = gaps.overlap(self._source_gaps)
        rest = "source_stopped" if self._stream_error else "never_arrived"
        return {"total": len(gaps), "worker_failed": failed, "unreadable": unreadable, "camera_gap": camera,
                rest: len(gaps) - failed - unreadable - camera}

    def summary(self) -> str:
        """A few human-readable lines: frames, gaps, mean quality per method, where files are."""
        return summary_text(self.report())

    # -- internals -----------------------------------------------------------------------

    def _process(self, frame: Frame) -> None:
        if not isinstance(frame, Frame):
            self._drop("not_a_frame", frame)
            return
        if frame.kind == "eos":
            self._on_eos(frame)
            return
        if frame.kind != "hdr":
            self._drop("not_hdr", frame)
            return
        self.frames_in += 1
        reason = _check(frame)
        if reason:
            self._drop(reason, frame)
            return
        method = frame.meta.get("method")
        if method is None or method == "":
            method = self._main or DEFAULT_METHOD
        if not isinstance(method, str) or not safe_name(method):
            self._drop("bad_method", frame)
            return
        stem = frame.stem
        if not safe_name(stem):
            self._drop("bad_stem", frame)
            return
        if self._main is None:
            self._main = method
        rgb, repaired = to_half(frame.data)
        if repaired:
            self.repaired += 1
            log.warning("sink: seq %d (%s) had %d non-finite value(s); repaired", frame.seq, method, repaired)
        item = _Item(stem, rgb, _t_min(frame), frame.meta.get("timing"), _web_info(frame) if self._web else None)
        m = self._method(method)
        m.frames_in += 1
        scale = frame.meta.get("scale")
        if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != self._scale:
            if self._scale is None:
                log.warning("sink: reduced live mode: frames reconstructed at %g of the camera's resolution", scale)
            self._scale = float(scale)
        wall = frame.meta.get("wall_ns")
        if method == self._main and isinstance(wall, int) and not isinstance(wall, bool) and wall > 0:
            self._latency.add((time.time_ns() - wall) / 1e6)
        if self._max_seq is not None and frame.seq > self._max_seq + EOS_SLACK:
            # a corrupt or forged seq: taking it would declare everything up to it lost
            self._drop("implausible_seq", frame)
            return
        self._max_seq = frame.seq if self._max_seq is None else max(self._max_seq, frame.seq)
        released = m.reorder.push(int(frame.seq), item)
        if released is None:
            log.warning("sink: duplicate seq %d for method %s ignored", frame.seq, method)
            return
        for r in released:
            self._emit(m, r)

    def _on_eos(self, frame: Frame) -> None:
        end = frame.seq
        if not isinstance(end, int) or isinstance(end, bool) or end < 0:
            self._drop("bad_eos", frame)
            return
        first, count = frame.meta.get("first_seq"), frame.meta.get("count")
        first = first if isinstance(first, int) and not isinstance(first, bool) else None
        count = count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None
        seen = self._max_seq + 1 if self._max_seq is not None else (first or 0) + (count or 0)
        if end > seen + EOS_SLACK or (first is not None and first > end):
            # a forged or corrupt eos: believing it would report a stream that never was
            log.error("sink: end of stream at seq %d rejected: implausible (highest seq seen %s, first_seq %s)",
                      end, self._max_seq, first)
            self._drop("implausible_eos", frame)
            return
        self._eos_end = end if self._eos_end is None else max(self._eos_end, end)
        if first is not None:
            self._eos_start = first
        elif count is not None:
            self._eos_start = max(0, self._eos_end - count)
        for a, b in frame.meta.get("source_gaps", ()):
            self._source_gaps.add_range(a, b + 1)
        unreadable = frame.meta.get("unreadable")
        if isinstance(unreadable, list):
            self._unreadable = unreadable
            log.error("sink: %d frame(s) could not be read by the source: %s", len(unreadable),
                      ", ".join(str(u.get("file")) for u in unreadable[:10]))
        malformed = frame.meta.get("malformed")
        if isinstance(malformed, dict):
            self._upstream_malformed.update({str(k): int(v) for k, v in malformed.items()
                                             if isinstance(v, int) and not isinstance(v, bool)})
        if frame.meta.get("error"):
            self._stream_error = str(frame.meta["error"])
            log.error("sink: the stream ended early: %s", self._stream_error)
        failed = frame.meta.get("failed")
        if isinstance(failed, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in failed):
            for s in failed:
                self._failed.add(s)
            log.error("sink: %d frame(s) could not be produced by any inference worker: %s",
                      len(failed), self._failed.ranges()[:20])
        log.info("sink: end of stream at seq %d (start %s)", end, self._eos_start)

    def _method(self, name: str) -> _Method:
        m = self._methods.get(name)
        if m is None:
            m = self._methods[name] = _Method(name, Reorderer(self.cfg.reorder_window))
        return m

    def _dir_for(self, method: str) -> Path:
        return self.out_dir if method == self._main else self.out_dir / method

    def _emit(self, m: _Method, r: Released[_Item]) -> None:
        """Queue one in-order (or late) frame's outputs on the lanes."""
        m.timings.add_seconds(r.item.timing)
        if r.item.web is not None:  # counts read here, on the thread that changes them
            with self._lock:
                r.item.web.update(seq=r.seq, late=r.late, gaps=len(m.reorder.gaps), dropped=sum(self.dropped.values()))
        self._lanes.submit("exr", self._write_exr, m, r)
        if self.cfg.preview or self._video is not None or m.name == self._main:
            self._lanes.submit("preview", self._timed, m, "sink_preview", self._previews, m, r)
        if self.gt_dir is not None:
            self._lanes.submit("metrics", self._timed, m, "sink_metrics", self._score, m, r)

    def _write_exr(self, m: _Method, r: Released[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            self._exr_writer().write(m.name, r.item.stem, r.item.rgb)
        except Exception:
            log.exception("sink: could not write the EXR of seq %d (%s)", r.seq, m.name)
            self._count("write_error")
            return
        m.timings.add("sink_write", 1000 * (time.perf_counter() - t0))
        with self._lock:
            m.frames_out += 1

    @staticmethod
    def _timed(m: _Method, key: str, fn: Any, *args: Any) -> None:
        t0 = time.perf_counter()
        try:
            fn(*args)
        except Exception:
            log.exception("sink: %s failed", key)
        m.timings.add(key, 1000 * (time.perf_counter() - t0))

    def _exr_writer(self) -> ExrWriter:
        if self._writer is None:
            self._writer = ExrWriter(self.out_dir, self._main or DEFAULT_METHOD)
        return self._writer

    def _previews(self, m: _Method, r: Released[_Item]) -> None:
        """Tone-mapped PNG, video frame, contact-sheet thumbnail (preview lane, seq order)."""
        in_video = m.name == self._main and not r.late
        live = in_video and self._web is not None and r.item.web is not None
        rgb8 = None
        if self.cfg.preview or (in_video and self._video is not None):
            rgb8 = m.tonemap(display_copy(r.item.rgb))
            if self.cfg.preview:
                hdrio.write_png(self._dir_for(m.name) / "preview" / f"{r.item.stem}.png", rgb8)
            if in_video and self._video is not None:
                self._video.write(rgb8)
        if live:
            if rgb8 is None:  # no PNG or video wanted: map a copy about as wide as the page shows
                step = max(1, r.item.rgb.shape[1] // self._web.max_width)  # type: ignore[union-attr]
                rgb8 = m.tonemap(np.ascontiguousarray(r.item.rgb[::step, ::step], np.float32))
            self._web.publish(rgb8, r.item.web, hdr=r.item.rgb)  # type: ignore[union-attr, arg-type]
        if not in_video:
            return
        index = self._main_index
        self._main_index += 1
        if not self._thumbs.wants(index):
            return
        if rgb8 is None:  # previews off: map a subsampled copy, enough for a thumbnail
            step = max(1, r.item.rgb.shape[1] // 320)
            small = np.ascontiguousarray(r.item.rgb[::step, ::step], np.float32)
            m.tonemap.update(small)
            rgb8 = m.tonemap.apply(small)
        self._thumbs.add(index, r.item.stem, thumbnail(rgb8))

    def _score(self, m: _Method, r: Released[_Item]) -> None:
        gt = self._ground_truth(r.item.stem)
        if gt is None or r.item.t_min is None:
            if r.item.t_min is None:
                log.warning("sink: seq %d has no t_min/exposures in meta; not scored", r.seq)
            m.quality.missing_gt()
            return
        if gt.shape != r.item.rgb.shape:
            log.warning("sink: ground truth %s is %s but seq %d is %s; not scored",
                        r.item.stem, gt.shape, r.seq, r.item.rgb.shape)
            m.quality.missing_gt()
            return
        m.quality.add(r.seq, r.item.stem, r.item.rgb.astype(np.float32), gt, r.item.t_min, in_order=not r.late)

    def _ground_truth(self, stem: str) -> np.ndarray | None:
        """GT for ``stem``; the last two are cached (methods of one seq arrive together)."""
        if stem in self._gt_cache:
            self._gt_cache.move_to_end(stem)
            return self._gt_cache[stem]
        gt = None
        assert self.gt_dir is not None
        for suffix in _GT_SUFFIXES:
            path = self.gt_dir / f"{stem}{suffix}"
            if path.is_file():
                try:
                    gt = hdrio.read_hdr_image(path)
                except (OSError, ValueError) as exc:
                    log.warning("sink: cannot read ground truth %s: %s", path, exc)
                break
        else:
            if not self._gt_warned:
                log.warning("sink: no ground truth %s.exr/.hdr in %s; such frames are not scored", stem, self.gt_dir)
                self._gt_warned = True
        self._gt_cache[stem] = gt
        while len(self._gt_cache) > 2:
            self._gt_cache.popitem(last=False)
        return gt

    def _count(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def _drop(self, reason: str, frame: Any) -> None:
        self._count(reason)
        seq = getattr(frame, "seq", "?")
        kind = getattr(frame, "kind", type(frame).__name__)
        log.warning("sink: dropped message seq=%s kind=%s: %s", seq, kind, reason)


def _check(frame: Frame) -> str | None:
    """Why an hdr frame cannot be written, or None if it can."""
    if frame.pixel_format not in HDR_FORMATS:
        return "bad_format"
    data = frame.data
    if not isinstance(data, np.ndarray) or data.dtype.kind != "f":
        return "bad_payload"
    if data.ndim != 3 or data.shape[2] != 3 or data.shape[0] == 0 or data.shape[1] == 0:
        return "bad_payload"
    if not isinstance(frame.seq, (int, np.integer)) or isinstance(frame.seq, bool) or frame.seq < 0:
        return "bad_seq"
    return None


def _t_min(frame: Frame) -> float | None:
    """Shortest exposure of the cycle: meta t_min, else min(meta exposures), else None."""
    t = frame.meta.get("t_min")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0:
        return float(t)
    exps = frame.meta.get("exposures")
    if isinstance(exps, (list, tuple)):
        vals = [float(e) for e in exps if isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0]
        if vals:
            return min(vals)
    return None


def _web_info(frame: Frame) -> dict[str, Any]:
    """What the live preview shows about a frame, taken when it arrives (see sink.web)."""
    meta = frame.meta
    return {
        "stem": frame.stem, "stream": frame.stream, "method": meta.get("method"),
        "exposures": meta.get("exposures"), "ref_exposure_s": frame.exposure_s,  # hdr carries its reference's
        "t_ns": frame.t_ns, "wall_ns": meta.get("wall_ns"), "timing": meta.get("timing"),
        "received_ns": time.time_ns(),
    }
