"""What the sink measured: per-stage timings, and quality against ground truth.

Timings use exact count/mean/max and a fixed-size reservoir sample for the
percentiles, so a stream that runs for days costs constant memory. Quality follows
:mod:`hdrstream.quality` (PSNR-μ, PSNR-L, flicker, all normalised by the cycle's
shortest exposure); each frame's μ-law images are computed once and the previous
frame's kept for flicker, instead of re-reading and re-mapping both frames per pair.
A PSNR of +inf (prediction identical to ground truth) is stored as null per frame,
excluded from the means and counted in ``*_inf_frames``, so report.json stays strict JSON.
"""
from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdrstream import quality


@dataclass
class Stats:
    """Running statistics of one quantity (ms); percentiles from a reservoir sample."""

    capacity: int = 8192
    n: int = 0
    total: float = 0.0
    peak: float = 0.0
    _sample: list[float] = field(default_factory=list, repr=False)
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.peak = max(self.peak, value)
        if len(self._sample) < self.capacity:
            self._sample.append(value)
        else:  # Algorithm R: every value ends up in the sample with equal probability
            j = self._rng.randrange(self.n)
            if j < self.capacity:
                self._sample[j] = value

    def summary(self) -> dict[str, float | int]:
        if not self.n:
            return {"n": 0}
        p50, p95, p99 = np.percentile(self._sample, [50, 95, 99])
        return {
            "n": self.n,
            "mean": round(self.total / self.n, 3),
            "p50": round(float(p50), 3),
            "p95": round(float(p95), 3),
            "p99": round(float(p99), 3),
            "max": round(self.peak, 3),
        }


@dataclass
class Timings:
    """Stats per timing key (capture, preprocess, infer, sink_write, …), in ms; thread-safe."""

    stats: dict[str, Stats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str, ms: float) -> None:
        with self._lock:
            self.stats.setdefault(key, Stats()).add(ms)

    def add_seconds(self, timing: Any) -> None:
        """Fold in a frame's ``meta["timing"]`` (stage → seconds); ignores junk values."""
        if not isinstance(timing, dict):
            return
        for key, sec in timing.items():
            if isinstance(key, str) and isinstance(sec, (int, float)) and not isinstance(sec, bool):
                if math.isfinite(sec) and sec >= 0:
                    self.add(key, 1000.0 * float(sec))

    def summary(self) -> dict[str, dict[str, float | int]]:
        with self._lock:
            return {k: s.summary() for k, s in self.stats.items()}


def _json_db(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def _mean(xs: list[float]) -> float | None:
    finite = [x for x in xs if math.isfinite(x)]
    return round(sum(finite) / len(finite), 4) if finite else None


@dataclass
class QualityTracker:
    """PSNR-μ / PSNR-L per frame and flicker per consecutive pair, for one method."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    without_gt: int = 0
    _prev: tuple[int, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def add(
        self, seq: int, stem: str, pred: np.ndarray, gt: np.ndarray, t_min: float, in_order: bool = True
    ) -> dict[str, Any]:
        """Score one frame. Flicker needs the previous seq of the same method, in order."""
        pn, gn = quality.normalise(pred, t_min), quality.normalise(gt, t_min)
        pm, gm = quality.mu_law(pn), quality.mu_law(gn)
        rec: dict[str, Any] = {"seq": seq, "stem": stem}
        p_mu, p_l = quality.psnr(pm, gm), quality.psnr(pn, gn)
        rec["psnr_mu"], rec["psnr_l"] = _json_db(p_mu), _json_db(p_l)
        rec["_raw"] = (p_mu, p_l)
        rec["flicker"] = None
        if in_order:
            if self._prev is not None and self._prev[0] == seq - 1:
                # Same formula as quality.flicker, on the already mapped images.
                _, ppm, pgm = self._prev
                rec["flicker"] = round(float(np.mean(np.abs((pm - ppm) - (gm - pgm)))), 6)
            self._prev = (seq, pm, gm)
        self.frames.append(rec)
        return rec

    def missing_gt(self) -> None:
        self.without_gt += 1
        self._prev = None  # the pair across a frame without GT is not scored

    def summary(self) -> dict[str, Any] | None:
        if not self.frames and not self.without_gt:
            return None
        frames = sorted(self.frames, key=lambda r: r["seq"])
        mu = [r["_raw"][0] for r in frames]
        lin = [r["_raw"][1] for r in frames]
        flick = [r["flicker"] for r in frames if r["flicker"] is not None]
        return {
            "frames_with_gt": len(frames),
            "frames_without_gt": self.without_gt,
            "psnr_mu_mean": _mean(mu),
            "psnr_l_mean": _mean(lin),
            "psnr_mu_inf_frames": sum(1 for x in mu if math.isinf(x)),
            "psnr_l_inf_frames": sum(1 for x in lin if math.isinf(x)),
            "flicker_mean": round(sum(flick) / len(flick), 6) if flick else None,
            "flicker_pairs": len(flick),
            "frames": [{k: v for k, v in r.items() if k != "_raw"} for r in frames],
        }


def _fmt(x: float | None, unit: str = " dB", digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def summary_text(report: dict[str, Any]) -> str:
    """A few human lines from a report dict (what ``Sink.summary`` prints)."""
    lines = [
        f"sink: {report['frames_out']} frame(s) out ({report['exr_files']} EXR file(s) from "
        f"{report['frames_in']} HDR message(s)) in {report['wall_s']:.1f} s ({report['throughput_fps']:.2f} fps)",
    ]
    if report.get("main_method_why"):
        lines.append(f"method: {report['main_method']} ({report['main_method_why']})")
    if report.get("scale"):
        lines.append(f"reduced live mode: reconstructed at {report['scale']:g} of the camera's resolution")
    if report.get("stream_error"):
        lines.append(f"the stream ended early: {report['stream_error']}")
    gaps = report["gaps"]
    dropped = report["dropped"]["total"]
    shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in gaps[:10]) + (" …" if len(gaps) > 10 else "")
    lines.append(
        f"gaps: {report['gap_count']}{' (' + shown + ')' if gaps else ''}; duplicates: {report['duplicates']}; "
        f"dropped: {dropped}{' ' + str(report['dropped']['by_reason']) if dropped else ''}"
    )
    unreadable = report.get("unreadable_frames") or []
    if unreadable:
        names = ", ".join(str(u["file"]) for u in unreadable[:5]) + (" …" if len(unreadable) > 5 else "")
        lines.append(f"unreadable frames skipped: {len(unreadable)} ({names}); see report.json")
    for name, m in report["methods"].items():
        q = m.get("quality")
        main = " (main)" if name == report["main_method"] else ""
        if q:
            lines.append(
                f"{name}{main}: PSNR-μ {_fmt(q['psnr_mu_mean'])}, PSNR-L {_fmt(q['psnr_l_mean'])}, "
                f"flicker {_fmt(q['flicker_mean'], '', 4)} over {q['frames_with_gt']} frame(s) with GT"
            )
        lines.append(f"{name}{main}: {m['frames_out']} frame(s) in {m['dir']}")
    files = report["files"]
    extras = [p for p in (files.get("video"), files.get("contact_sheet"), files.get("report")) if p]
    lines.append("previews: " + ", ".join(extras))
    return "\n".join(lines)
