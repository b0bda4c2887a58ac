"""The infer stage: one aligned window in, one HDR frame per method out (design §1)."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from hdrstream.frame import Frame
from infer.method import apply_warps, window_frames
from infer.reconstructor import make_reconstructor

log = logging.getLogger(__name__)

# capture-time stamps the sink and metrics measure latency from; the reduced live mode's scale
CARRIED = ("wall_ns", "clock", "scale")


class InferStage:
    """Runs the main method (and any ``compare`` methods, for side-by-side reports)."""

    name = "infer"

    def __init__(self, method: str = "classical", compare: Sequence[str] = (), device: str | None = None,
                 precision: str = "auto", tile: int | None = None) -> None:
        names = [method] + [m for m in compare if m != method]
        self.methods = [make_reconstructor(n, device, precision, tile) for n in dict.fromkeys(names)]
        self.ignored = 0
        self.windows = 0

    def process(self, window: Frame) -> list[Frame]:
        if window.kind != "window":
            self.ignored += 1
            if window.kind != "eos":
                log.warning("infer ignores %r message seq %d", window.kind, window.seq)
            return []
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
        for rec in self.methods:
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
        self.windows += 1
        return out

    def finish(self) -> list[Frame]:
        return []
