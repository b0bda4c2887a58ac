"""The preprocess stage: frames in, aligned windows out (design §1, §4).

Per frame, once: decode to RGB, replace the CRF by gamma 2.2, estimate the similarity
to the previous frame. Per window: compose those pairwise similarities to bring each
neighbour onto the reference and warp. Far neighbours reuse the chain of consecutive
estimates, so no pair is ever estimated twice.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np

from hdrstream.crf import load_crf
from hdrstream.frame import Frame
from hdrstream.geometry import IDENTITY, compose, invert, warp
from hdrstream.pixfmt import pixel_format, unit_values
from preprocess.align import estimate_similarity
from preprocess.debayer import regamma, to_codes, to_rgb
from preprocess.window import ExposureCycle, auto_k, plan_window

log = logging.getLogger(__name__)

_WINDOW_FORMATS = {"float32": "RGBf32", "float16": "RGBf16"}
_NO_PIXELS = np.zeros(0, np.uint8)


@dataclass
class PreprocessConfig:
    """k: frames each side of the reference (None: 2 for 2 exposures, 3 for 3).
    crf: ``gamma2.2``, ``gamma<g>`` or a CRF JSON file.

    window_dtype: ``float32`` (default) | ``float16`` send gamma-2.2 values; ``codes`` sends
    each window unwarped as its frames' own integer codes (``RGB8``: a quarter of float32's
    bytes) wherever that is exact — integer cameras with the gamma-2.2 CRF, mosaics up to 8
    bits — and float32 otherwise (warped windows too: warped codes would be rounded).

    defer_warp: True sends the frames unwarped, each frame's transform in meta["warps"] and
    meta["warped"] = False; the reconstructor applies them (the classical merge folds them
    into the flow resampling it does anyway, one interpolation instead of two). None (the
    default) defers with ``codes`` windows, which cannot be warped without rounding, and
    warps here otherwise. Deferring takes the costliest work of this stage (a bicubic warp
    of every neighbour into every window) off the one stage that does not scale out, for
    graphs with several workers. On one 2-core box it does not pay: the merge's resampling
    must then be bicubic too, which costs what the warp did (1536x814, embedded classical
    pipeline, steady state, two runs each: RGB8 4.47 / 4.28 frames/s warped here, 4.00 / 3.91
    with codes windows; BayerRG8 4.16 / 4.25 against 3.78 / 3.81).
    """

    k: int | None = None
    crf: str = "gamma2.2"
    align: bool = True
    # < 1: a reduced live mode. Each frame is area-averaged down by this factor right after
    # decoding, so every later step (alignment, the merge, EXR) costs ~scale² as much; the
    # windows and HDR frames say so in meta["scale"], and the sink's report and summary too.
    scale: float = 1.0
    window_dtype: str = "float32"
    interpolation: str = "cubic"  # resampling of the global warp: cubic keeps texture sharp
    defer_warp: bool | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(f"interpolation must be 'linear' or 'cubic', got {self.interpolation!r}")
        if self.window_dtype not in _WINDOW_FORMATS and self.window_dtype != "codes":
            raise ValueError(f"window_dtype must be codes or one of {sorted(_WINDOW_FORMATS)}, got {self.window_dtype!r}")
        if self.k is not None and self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if not 0.05 <= self.scale <= 1.0:
            raise ValueError(f"scale must be in [0.05, 1], got {self.scale}")

    @property
    def deferred(self) -> bool:
        return self.window_dtype == "codes" if self.defer_warp is None else self.defer_warp


@dataclass
class _Entry:
    """A decoded frame waiting to be used in windows."""

    frame: Frame  # the original message's header (pixels dropped: L has them)
    L: np.ndarray  # (H, W, 3) float32 gamma-2.2 values
    codes: np.ndarray | None  # (H, W, 3) integer codes with L = codes / white, for codes windows
    codes_format: str | None  # their pixel format (RGB8, RGB12, ...)
    cls: int  # position in the exposure cycle
    link: np.ndarray | None  # 2x3 mapping the previous entry's pixels onto this one's
    prev: int | None  # seq of that previous entry
    cost_s: float  # decode + linearise + align time, charged to this frame's own window


@dataclass
class Counters:
    frames: int = 0
    windows: int = 0
    bad_frames: int = 0
    late_frames: int = 0
    ignored: int = 0
    align_failures: int = 0


class Preprocessor:
    """Stage: ``kind="frame"`` messages in, ``kind="window"`` messages out, one per frame."""

    name = "preprocess"

    def __init__(self, cfg: PreprocessConfig | None = None) -> None:
        self.cfg = cfg or PreprocessConfig()
        self.crf = load_crf(self.cfg.crf)
        # codes are L only with the gamma-2.2 CRF, and only unwarped frames keep them exact
        self._codes = (self.cfg.window_dtype == "codes" and self.crf.is_gamma22 and self.cfg.deferred
                       and self.cfg.scale == 1.0)  # and scaled frames are not codes any more
        self.counts = Counters()
        self._interp = cv2.INTER_CUBIC if self.cfg.interpolation == "cubic" else cv2.INTER_LINEAR
        self._reset()

    def _reset(self) -> None:
        self._buf: dict[int, _Entry] = {}
        self._cycle = ExposureCycle()
        self._next_ref: int | None = None  # lowest seq that still needs its window
        self._last_seq: int | None = None
        self._shape: tuple[int, ...] | None = None

    # -- Stage protocol -------------------------------------------------------------

    def process(self, frame: Frame) -> list[Frame]:
        if frame.kind != "frame":
            self.counts.ignored += 1
            if frame.kind != "eos":
                log.warning("preprocess ignores %r message seq %d", frame.kind, frame.seq)
            return []
        if self._last_seq is not None and frame.seq <= self._last_seq:
            self.counts.late_frames += 1
            log.warning("dropping frame %d: not after frame %d (late or duplicate)", frame.seq, self._last_seq)
            return []
        t0 = time.perf_counter()
        try:
            if not (math.isfinite(frame.exposure_s) and frame.exposure_s > 0):
                raise ValueError(f"exposure_s must be positive, got {frame.exposure_s}")
            decoded = to_codes(frame) if self._codes else None
            if decoded is not None:  # the same values as to_rgb, and the codes kept for the window
                L = unit_values(decoded[0], pixel_format(decoded[1]).white)
            else:
                L = regamma(to_rgb(frame), self.crf)
            if self.cfg.scale < 1.0:  # averaged as light adds up: in linear, not in gamma-2.2 values
                h, w = L.shape[:2]
                size = (max(1, round(w * self.cfg.scale)), max(1, round(h * self.cfg.scale)))
                L = cv2.pow(cv2.resize(cv2.pow(L, 2.2), size, interpolation=cv2.INTER_AREA), 1 / 2.2)
        except (ValueError, KeyError) as exc:
            self.counts.bad_frames += 1
            log.error("dropping frame %d: cannot decode %s payload: %s", frame.seq, frame.pixel_format, exc)
            return []
        out: list[Frame] = []
        if self._shape is not None and L.shape != self._shape:
            log.warning("frame size changed %s -> %s at seq %d: flushing and restarting", self._shape, L.shape, frame.seq)
            out += self.finish()
        self._shape = L.shape
        self._add(frame, L, decoded, t0)
        out += self._emit_ready(final=False)
        return out

    def finish(self) -> list[Frame]:
        self._cycle.close()
        out = self._emit_ready(final=True)
        self._reset()
        return out

    # -- internals ------------------------------------------------------------------

    def _add(self, frame: Frame, L: np.ndarray, decoded: tuple[np.ndarray, str] | None, t0: float) -> None:
        cls = self._cycle.observe(frame.seq, frame.exposure_s, frame.set)
        prev = self._buf.get(self._last_seq) if self._last_seq is not None else None
        link = None
        if prev is not None and self.cfg.align:
            link, ok = estimate_similarity(prev.L, L, prev.frame.exposure_s, frame.exposure_s)
            if not ok:
                self.counts.align_failures += 1
                log.debug("frames %d -> %d: no global alignment", prev.frame.seq, frame.seq)
        self._buf[frame.seq] = _Entry(
            frame=replace(frame, data=_NO_PIXELS), L=L, codes=decoded[0] if decoded else None,
            codes_format=decoded[1] if decoded else None, cls=cls, link=link, prev=prev.frame.seq if prev else None,
            cost_s=time.perf_counter() - t0,
        )
        self.counts.frames += 1
        self._last_seq = frame.seq
        if self._next_ref is None:
            self._next_ref = frame.seq

    def _k(self) -> int | None:
        if self.cfg.k is not None:
            return self.cfg.k
        n = self._cycle.length
        return None if n is None else auto_k(n)

    def _emit_ready(self, final: bool) -> list[Frame]:
        k = self._k()
        if k is None or self._next_ref is None or self._cycle.length is None:
            return []
        out = []
        for ref in sorted(s for s in self._buf if s >= self._next_ref):
            if not final and self._last_seq < ref + k:
                break
            out.append(self._window(ref, k))
            self._next_ref = ref + 1
        self._prune(k)
        return out

    def _prune(self, k: int) -> None:
        """Drop frames no future window can use (slots reach k back, padding one cycle more)."""
        keep_from = self._next_ref - k - (self._cycle.length or 1)
        for s in [s for s in self._buf if s < keep_from]:
            del self._buf[s]

    def _window(self, ref: int, k: int) -> Frame:
        t0 = time.perf_counter()
        cycle = self._cycle.info()
        seqs = plan_window(ref, k, {s: e.cls for s, e in self._buf.items()}, cycle)
        r = self._buf[ref]
        entries = [self._buf[s] for s in seqs]
        fmt = entries[0].codes_format
        if fmt is None or any(e.codes_format != fmt for e in entries):  # float windows
            fmt = _WINDOW_FORMATS.get(self.cfg.window_dtype, "RGBf32")
        dtype = np.dtype(pixel_format(fmt).dtype)
        deferred = self.cfg.deferred
        data = np.empty((len(seqs), *r.L.shape), dtype)
        warps = []
        for i, s in enumerate(seqs):
            M = self._transform(s, ref)
            if dtype.kind == "u":
                data[i] = self._buf[s].codes
            elif deferred:
                data[i] = self._buf[s].L
            elif dtype == np.float32:
                warp(self._buf[s].L, M, r.L.shape, out=data[i], interpolation=self._interp)
            else:
                data[i] = warp(self._buf[s].L, M, r.L.shape, interpolation=self._interp)
            warps.append([float(v) for v in M.ravel()])
        self.counts.windows += 1
        f = r.frame
        spent = time.perf_counter() - t0 + r.cost_s
        meta = {
            **f.meta,
            "stem": f.stem,
            "ref": k,
            "exposures": [float(self._buf[s].frame.exposure_s) for s in seqs],
            "seqs": seqs,
            "warps": warps,
            "warped": not deferred,
            "warp_interpolation": self.cfg.interpolation,
            "t_min": float(cycle.t_min),
            **({"scale": self.cfg.scale} if self.cfg.scale < 1.0 else {}),
            "timing": {**f.meta.get("timing", {}), "preprocess": spent},
        }
        return Frame(
            kind="window", stream=f.stream, seq=f.seq, t_ns=f.t_ns, exposure_s=f.exposure_s,
            gain_db=f.gain_db, pixel_format=fmt, data=data,
            set=f.set, meta=meta,
        )

    def _transform(self, src: int, ref: int) -> np.ndarray:
        """2x3 mapping frame ``src``'s pixels onto the reference's, via consecutive links."""
        if src == ref or not self.cfg.align:
            return IDENTITY.copy()
        lo, hi = min(src, ref), max(src, ref)
        M = IDENTITY.copy()  # T(lo -> cur), walking back from hi
        cur = hi
        while cur != lo:
            e = self._buf.get(cur)
            if e is None or e.link is None or e.prev is None or e.prev < lo:
                log.warning("no alignment chain from frame %d to %d; not warping", src, ref)
                return IDENTITY.copy()
            M = compose(M, e.link)
            cur = e.prev
        # M maps lo onto hi
        return M if src == lo else invert(M)
