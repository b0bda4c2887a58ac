"""The infer stage: one aligned window in, one HDR frame per method out (design §1).

With ``threads`` > 1 the stage reconstructs that many windows at once, each thread with
its own reconstructors, and still hands its HDR frames on in window order: the classical
merge releases the GIL in nearly all of its time, and on a small box the one infer thread
is otherwise the pipeline's bottleneck while the other cores wait for it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from hdrstream.frame import Frame
from infer.method import apply_warps, window_frames
from infer.reconstructor import make_reconstructor

log = logging.getLogger(__name__)

AUTO_THREADS_MAX = 4  # threads=None: at most this many windows at once (memory: ~10 full-size images each)

# capture-time stamps the sink and metrics measure latency from; the reduced live mode's scale
CARRIED = ("wall_ns", "clock", "scale")


class InferStage:
    """Runs the main method (and any ``compare`` methods, for side-by-side reports).

    ``threads``: windows reconstructed at once (see the module; None: as many as there are
    cores, up to AUTO_THREADS_MAX, unless a method streams), each thread with methods
    made afresh from their names (not ``self.methods``); a window that fails on a thread is
    logged and counted in ``failed``, and the sink reports its seq as lost.
    """

    name = "infer"

    def __init__(self, method: str = "classical", compare: Sequence[str] = (), device: str | None = None,
                 precision: str = "auto", tile: int | None = None, threads: int | None = 1,
                 denoise: bool | float = True, learned_denoise: bool = True) -> None:
        self._names = list(dict.fromkeys([method] + [m for m in compare if m != method]))
        self._options = (device, precision, tile, denoise, learned_denoise)
        self.methods = self._make_methods()
        streaming = [rec.name for rec in self.methods if hasattr(rec, "reconstruct_stream")]
        if threads is None:  # auto: every core for methods that can share them
            threads = 1 if streaming else min(AUTO_THREADS_MAX, os.cpu_count() or 1)
        self.threads = max(1, int(threads))
        if self.threads > 1 and streaming:
            raise ValueError(f"infer threads > 1: {', '.join(streaming)} reuse work from window to window "
                             "in order (and use every core already); run them with threads=1")
        self._lock = threading.Lock()
        self.ignored = 0
        self.windows = 0
        self.failed = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Frame, Future[list[Frame]]]] = deque()
        self._local = threading.local()

    def _make_methods(self) -> list:
        return [make_reconstructor(n, *self._options) for n in self._names]

    def process(self, window: Frame) -> list[Frame]:
        if window.kind != "window":
            self.ignored += 1
            if window.kind != "eos":
                log.warning("infer ignores %r message seq %d", window.kind, window.seq)
            return []
        if self.threads == 1:
            return self._reconstruct(window, self.methods)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="infer")
        self._pending.append((window, self._pool.submit(self._on_thread, window)))
        out = []
        while self._pending and (len(self._pending) > self.threads or self._pending[0][1].done()):
            out += self._collect()
        return out

    def finish(self) -> list[Frame]:
        out = []
        while self._pending:
            out += self._collect()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        return out

    def _on_thread(self, window: Frame) -> list[Frame]:
        methods = getattr(self._local, "methods", None)
        if methods is None:  # each thread its own: an optical flow object is not to be shared
            methods = self._local.methods = self._make_methods()
        return self._reconstruct(window, methods)

    def _collect(self) -> list[Frame]:
        """The oldest pending window's HDR frames (waiting for them), in window order."""
        window, fut = self._pending.popleft()
        try:
            return fut.result()
        except Exception:
            self.failed += 1
            log.exception("infer failed on window seq %d; dropped (the sink reports it lost)", window.seq)
            return []

    def _reconstruct(self, window: Frame, methods: list) -> list[Frame]:
        meta = window.meta
        frames = window_frames(window)
        exposures = [float(t) for t in meta["exposures"]]
        ref = int(meta["ref"])
        unwarped = meta.get("warped") is False
        if unwarped and "warps" not in meta:
            raise ValueError("window says its frames are not warped but carries no warps")
        aligned: np.ndarray | None = None if unwarped else frames
        scale = float(meta.get("scale", 1.0))  # the reduced live mode
        out = []
        for rec in methods:
            t0 = time.perf_counter()
            if scale < 1.0 and hasattr(rec, "at_scale"):
                rec = rec.at_scale(scale)
            if unwarped and getattr(rec, "folds_warps", False):
                hdr = rec.reconstruct(frames, exposures, ref, warps=meta["warps"])
            else:
                if aligned is None:  # once per window, for every method that wants aligned frames
                    aligned = apply_warps(frames, meta["warps"], meta.get("warp_interpolation", "cubic"))
                stream = getattr(rec, "reconstruct_stream", None)
                if stream is not None and "seqs" in meta and "warps" in meta:
                    hdr = stream(aligned, exposures, ref, meta["seqs"], meta["warps"])
                else:
                    hdr = rec.reconstruct(aligned, exposures, ref)
            spent = time.perf_counter() - t0
            out.append(
                Frame(
                    kind="hdr", stream=window.stream, seq=window.seq, t_ns=window.t_ns,
                    exposure_s=window.exposure_s, gain_db=window.gain_db, pixel_format="RGBf32",
                    data=np.ascontiguousarray(hdr, np.float32), set=window.set,
                    meta={
                        "stem": window.stem,
                        "method": rec.name,
                        "t_min": float(meta.get("t_min", min(exposures))),
                        "exposures": exposures,
                        "timing": {**meta.get("timing", {}), "infer": spent},
                        **{k: meta[k] for k in CARRIED if k in meta},
                    },
                )
            )
        with self._lock:
            self.windows += 1
        return out
