"""How the infer stage gets a reconstruction method by name, and the options of the network ones.

The interface every method implements is :class:`infer.method.Reconstructor`.
"""
from __future__ import annotations

from infer.method import PRECISIONS, Reconstructor

KNOWN = ("classical", "reference", "net", "net-refine", "coarse")


# The method run when none is named. Offline (`hdrstream reconstruct`, `demo`) it is the
# network: on the dynamic split of bench/quality.py the shipped files beat classical by
# +2.07 / +2.22 dB PSNR-μ (two exposures, RGB8 / BayerRG8) and +1.54 / +1.56 dB (three), no
# frame more than 0.5 dB below classical, ColorVideoVDP higher, and the static split higher
# too (sixth 2026-12-07 session, infer/weights/README.md). Live on a CPU it stays classical:
# it keeps up where the network takes ~0.75 s a 512×288 frame; live on CUDA runs the network.
OFFLINE_DEFAULT = "net"


def default_method(live: bool, device: str | None = None) -> tuple[str, str]:
    """The method run when none is named, and the reason the report gives for it."""
    if live:
        from infer.netrecon import network_device

        if network_device(device).type != "cuda":
            return "classical", ("default live on a CPU: classical keeps up where the network takes "
                                 "seconds a frame; --method net asks for the network")
    where = "live on CUDA" if live else "offline"
    if not network_shipped():
        return "classical", f"default {where}: the network's weights are missing (infer/weights/)"
    return OFFLINE_DEFAULT, f"default {where}"


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
    from infer.classical import ClassicalConfig

    p.add_argument("--denoise-strength", type=float, default=None, metavar="K",
                   help=f"the noise filter's range in estimated noise deviations (default {ClassicalConfig.denoise:g}; "
                        "6 suits smooth content, lower keeps fine texture; 0 is --no-denoise)")
    p.add_argument("--no-learned-denoise", action="store_true",
                   help="network methods: the bilateral noise filter alone, without the network's learned "
                        "correction of it (about half the network's CPU time; ~0.1-0.2 dB PSNR-mu less)")


def denoise_option(args) -> bool | float:
    """The ``denoise`` argument of :func:`make_reconstructor` from the options above."""
    if getattr(args, "no_denoise", False):
        return False
    strength = getattr(args, "denoise_strength", None)
    return True if strength is None else float(strength)


def make_reconstructor(name: str, device: str | None = None, precision: str = "auto",
                       tile: int | None = None, denoise: bool | float = True,
                       learned_denoise: bool = True) -> Reconstructor:
    """The reconstructor called ``name``; raises ValueError for unknown names.

    ``device`` (e.g. "cpu", "cuda:1"; None: CUDA when present), ``precision``
    (auto | fp32 | bf16 | fp16) and ``tile`` (pixels; 0 never, None for large frames)
    concern the network methods only; ``denoise`` (infer.denoise) classical and the network:
    True the filter at its default strength, False none, a number its strength (k, see
    ``ClassicalConfig.denoise``; 0 none). ``learned_denoise``: False runs the network's
    weights without their learned correction of that filter (``NetConfig.learned_denoise``).
    """
    from infer.classical import ClassicalConfig

    if denoise is True:
        merge = None  # the classical merge's defaults
    else:
        merge = ClassicalConfig(denoise=float(denoise))  # False: 0.0; checked (>= 0) there
    if name == "classical":
        from infer.classical import ClassicalReconstructor

        return ClassicalReconstructor(merge)
    if name == "reference":
        from infer.reference import ReferenceReconstructor

        return ReferenceReconstructor()
    if name in ("net", "net-refine", "coarse"):
        from infer.netrecon import NetReconstructor

        # weights load on the first window: its size picks 2 or 3 exposures
        return NetReconstructor(name, device=device, precision=precision, tile=tile,
                                denoise=merge is None or merge.denoise > 0, classical=merge,
                                learned_denoise=learned_denoise)
    raise ValueError(f"unknown reconstruction method {name!r}; known: {', '.join(KNOWN)}")
