"""What every HDR reconstruction method looks like to the infer stage, and how to get one.

A reconstructor sees one window: N frames already globally aligned to the reference,
as gamma-2.2 values L in [0, 1], and returns the reference's linear HDR H = L^2.2 / t.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

KNOWN = ("classical", "reference", "net", "coarse")


class Reconstructor(Protocol):
    name: str

    def reconstruct(self, frames: np.ndarray, exposures: Sequence[float], ref: int) -> np.ndarray:
        """frames (N, H, W, 3) float32 L in [0, 1]; returns float32 (H, W, 3) H = lin / t."""
        ...


# The method used when none is named. The shipped CPU-trained network ties with classical on
# the validation sequences (bench/quality.py, 2026-11-28: +0.11 dB PSNR-μ for 2 exposures,
# -0.10 dB for 3) at ~40x its CPU time, so classical stays the default until weights that
# win ship (infer/weights/README.md); --method net selects the network.
DEFAULT_METHOD = "classical"


def network_shipped() -> bool:
    """Whether trained network weights ship for both exposure cycles."""
    from infer.netrecon import default_weights

    return all(default_weights(n).is_file() for n in (2, 3))


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # autocast of the network methods


def add_network_args(p) -> None:
    """The network methods' options (device, precision, tiles), for every command that infers."""
    p.add_argument("--device", default=None, help="network methods: cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="network methods: autocast dtype (auto: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--tile", type=int, default=None,
                   help="network methods: tile size in pixels (multiple of 16), bounding memory; 0: never; "
                        "default: frames above ~2.2 Mpx in 1024-pixel tiles")


def make_reconstructor(name: str, device: str | None = None, precision: str = "auto",
                       tile: int | None = None) -> Reconstructor:
    """The reconstructor called ``name``; raises ValueError for unknown names.

    ``device`` (e.g. "cpu", "cuda:1"; None: CUDA when present), ``precision``
    (auto | fp32 | bf16 | fp16) and ``tile`` (pixels; 0 never, None for large frames)
    concern the network methods only.
    """
    if name == "classical":
        from infer.classical import ClassicalReconstructor

        return ClassicalReconstructor()
    if name == "reference":
        from infer.reference import ReferenceReconstructor

        return ReferenceReconstructor()
    if name in ("net", "coarse"):
        from infer.netrecon import NetReconstructor

        # weights load on the first window: its size picks 2 or 3 exposures
        return NetReconstructor(name, device=device, precision=precision, tile=tile)
    raise ValueError(f"unknown reconstruction method {name!r}; known: {', '.join(KNOWN)}")


def check_window(frames: np.ndarray, exposures: Sequence[float], ref: int) -> None:
    """Raise ValueError unless the arguments describe a valid window."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3), got {frames.shape}")
    if len(exposures) != frames.shape[0]:
        raise ValueError(f"{len(exposures)} exposures for {frames.shape[0]} frames")
    if not 0 <= ref < frames.shape[0]:
        raise ValueError(f"reference index {ref} outside a window of {frames.shape[0]}")
    if min(exposures) <= 0:
        raise ValueError(f"exposures must be positive, got {list(exposures)}")


def to_hdr(L: np.ndarray, t: float) -> np.ndarray:
    """Gamma-2.2 values -> linear radiance per second, H = L^2.2 / t (float32)."""
    out = cv2.pow(np.asarray(L, np.float32), 2.2)
    out *= np.float32(1.0 / t)
    return out
