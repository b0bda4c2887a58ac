"""How the infer stage gets a reconstruction method by name, and the options of the network ones.

The interface every method implements is :class:`infer.method.Reconstructor`.
"""
from __future__ import annotations

from infer.method import PRECISIONS, Reconstructor

KNOWN = ("classical", "reference", "net", "net-refine", "coarse")


# The method used when none is named. The shipped CPU-trained network (2 exposures with its
# classical gate) beats classical on the dynamic validation split by ~1 dB PSNR-μ and ties on
# the static one (bench/quality.py, 2026-12-04), short of the +1.5 dB asked before it becomes
# the default, at ~40x classical's CPU time (infer/weights/README.md); --method net selects it.
DEFAULT_METHOD = "classical"


def network_shipped() -> bool:
    """Whether trained network weights ship for both exposure cycles."""
    from infer.netrecon import default_weights

    return all(default_weights(n).is_file() for n in (2, 3))


def add_network_args(p) -> None:
    """The network methods' options (device, precision, tiles), for every command that infers."""
    p.add_argument("--device", default=None, help="network methods: cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="network methods: autocast dtype (auto: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--tile", type=int, default=None,
                   help="network methods: tile size in pixels (multiple of 16), bounding memory; 0: never; "
                        "default: frames above ~2.2 Mpx in 1024-pixel tiles")
    p.add_argument("--no-denoise", action="store_true",
                   help="leave the merge's remaining noise in (classical and network methods filter it by default: "
                        "infer/denoise.py; ~50 ms a 1536x813 frame on one core)")


def make_reconstructor(name: str, device: str | None = None, precision: str = "auto",
                       tile: int | None = None, denoise: bool = True) -> Reconstructor:
    """The reconstructor called ``name``; raises ValueError for unknown names.

    ``device`` (e.g. "cpu", "cuda:1"; None: CUDA when present), ``precision``
    (auto | fp32 | bf16 | fp16) and ``tile`` (pixels; 0 never, None for large frames)
    concern the network methods only; ``denoise`` (infer.denoise) classical and the network.
    """
    if name == "classical":
        from infer.classical import ClassicalConfig, ClassicalReconstructor

        return ClassicalReconstructor() if denoise else ClassicalReconstructor(ClassicalConfig(denoise=0.0))
    if name == "reference":
        from infer.reference import ReferenceReconstructor

        return ReferenceReconstructor()
    if name in ("net", "net-refine", "coarse"):
        from infer.netrecon import NetReconstructor

        # weights load on the first window: its size picks 2 or 3 exposures
        return NetReconstructor(name, device=device, precision=precision, tile=tile, denoise=denoise)
    raise ValueError(f"unknown reconstruction method {name!r}; known: {', '.join(KNOWN)}")
