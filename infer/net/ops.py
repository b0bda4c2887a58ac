"""Small tensor operations the network shares: LDR↔HDR, exposure matching, μ-law, the mask.

Units (the contract of ``infer.net``): ``L`` is a gamma-2.2 value in [0, 1] after CRF
inversion; ``t`` is the exposure time relative to the shortest exposure of the camera's
cycle (so t ≥ 1); the linear HDR of a frame is ``H = L^2.2 / t`` (paper §3.1), which puts
every HDR tensor in [0, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from infer.mask import EXPOSURE_TOL, HIGH, LOW

GAMMA = 2.2
MU = 5000.0
SLOPE = 0.1  # LeakyReLU negative slope used throughout the network (paper's reference code)


def scaled(base: int, width: float, multiple: int = 1) -> int:
    """Channel count ``base * width`` rounded to a positive multiple of ``multiple``.

    Every conv width in the network goes through here, so ``NetConfig.width`` really scales
    the whole network (BasicSR's habit of hard-coding ``nf = 64`` is what we avoid).
    """
    return max(multiple, int(round(base * width / multiple)) * multiple)


def lrelu(x: Tensor) -> Tensor:
    """LeakyReLU(0.1), the one activation of the network."""
    return F.leaky_relu(x, SLOPE)


def ldr_to_hdr(ldr: Tensor, expo: Tensor) -> Tensor:
    """Linear HDR ``H = clip(L, 0, 1)^2.2 / t``.

    Args:
        ldr: (..., 3, H, W) gamma-2.2 values.
        expo: exposure times broadcastable against ``ldr.shape[:-3]`` (e.g. (B,) or (B, N)).
    """
    t = expo.to(ldr.dtype)[(...,) + (None,) * 3]
    return ldr.clamp(0.0, 1.0).pow(GAMMA) / t


def hdr_to_ldr(hdr: Tensor, expo: Tensor) -> Tensor:
    """Re-expose linear HDR as gamma-2.2 values: ``clip(H·t, 0, 1)^(1/2.2)``.

    Not differentiable at 0 (infinite slope); callers use it on detached tensors only.
    """
    t = expo.to(hdr.dtype)[(...,) + (None,) * 3]
    return (hdr * t).clamp(0.0, 1.0).pow(1.0 / GAMMA)


def exposure_match(ldr: Tensor, t_self: Tensor, t_other: Tensor) -> Tensor:
    """Copy of ``ldr`` that looks as if taken at ``t_other``: ``clip(L·(t_other/t_self)^(1/2.2), 0, 1)``.

    Brightness constancy across exposures is what the flow network needs (design §4).
    ``t_self``/``t_other`` broadcast against ``ldr.shape[:-3]``.
    """
    gain = (t_other / t_self).to(ldr.dtype).pow(1.0 / GAMMA)[(...,) + (None,) * 3]
    return (ldr * gain).clamp(0.0, 1.0)


def mu_law(hdr: Tensor, mu: float = MU) -> Tensor:
    """Differentiable μ-law tonemap of paper eq. (1): ``log(1 + μH) / log(1 + μ)``."""
    return torch.log1p(mu * hdr.clamp(min=0.0)) / math.log1p(mu)


def inverse_mu_law(t: Tensor, mu: float = MU) -> Tensor:
    """Linear HDR of a μ-law value: ``((1 + μ)^t - 1) / μ``."""
    return torch.expm1(t * math.log1p(mu)) / mu


# The classical merge's defaults (infer.classical.ClassicalConfig) when the shipped weights
# were trained. Kept here, not read from there: trained weights depend on the prior, so
# retuning classical must not change what a shipped network computes.
SAT_START, SAT_END = 0.85, 0.97  # saturation roll-off of a frame's weight; SAT_END: clipped
GHOST_TOL = 0.015
FALLBACK = 1e-3


def merge_prior(images: Tensor, expo: Tensor, sat_start: float = SAT_START, sat_end: float = SAT_END,
                ghost_tol: float = GHOST_TOL, fallback: float = FALLBACK, per_channel: bool = False) -> Tensor:
    """The classical merge's blending weights (``infer.classical``), as a prior for CoarseNet.

    Image j's weight is ``t_j`` (shot-noise SNR) × a smooth roll-off as its brightest channel
    nears saturation (``per_channel``: each channel's own, so a frame keeps the channels it
    did not clip) × (for j > 0) its agreement with image 0, the reference: both brought
    to the brighter exposure, a 3×3 mean of the grey difference, ``exp(-(d/tol)²)`` with the
    tolerance widened by the darker frame's amplified noise. ``fallback`` keeps some weight
    everywhere so that the network can undo a rejection.

    Args:
        images: (b, n, 3, H, W) gamma-2.2 LDRs, the reference first. expo: (b, n) their
            exposure times.

    Returns:
        (b, n, 1, H, W), or (b, n, 3, H, W) ``per_channel``; no gradient (a fixed heuristic
        the weight network corrects).
    """
    with torch.no_grad():
        # In place wherever a full-size temporary would go (the same operations in the same
        # order, so the same values): at 1536x813 each one is a 75 MB pass.
        ldr = images.clamp(0.0, 1.0)
        level = ldr if per_channel else ldr.amax(dim=2, keepdim=True)
        x = level.neg().add_(sat_end).div_(sat_end - sat_start).clamp_(0.0, 1.0)
        t = expo.to(ldr.dtype)[..., None, None, None]  # (b, n, 1, 1, 1)
        prior = (x * x).mul_(x.mul_(-2.0).add_(3.0)).mul_(t)  # x²(3 − 2x) t
        agree = agreement(ldr, t, ghost_tol)
        return prior.mul_(agree.add_(fallback)).add_(fallback / t**4)  # all clipped: the shortest wins


def agreement(ldr: Tensor, t: Tensor, ghost_tol: float = GHOST_TOL) -> Tensor:
    """Each image's agreement with image 0, the reference, as the classical merge's ghost
    test: both brought to the brighter exposure (and clipped there, so a clipped reference
    agrees with anything at least as bright), a 3×3 mean of the grey difference,
    ``exp(-(d/tol)²)`` with the tolerance widened by the darker frame's amplified noise.

    Args:
        ldr: (b, n, 3, H, W) gamma values in [0, 1]. t: (b, n, 1, 1, 1) exposure times.

    Returns:
        (b, n, 1, H, W) in (0, 1]; 1 for the reference.
    """
    grey = (ldr * ldr.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(dim=2, keepdim=True)
    bright = torch.maximum(t, t[:, :1])
    a = (grey[:, :1] * (bright / t[:, :1]).pow(1.0 / GAMMA)).clamp(max=1.0)
    b = (grey * (bright / t).pow(1.0 / GAMMA)).clamp(max=1.0)
    d = F.avg_pool2d((a - b).abs().flatten(0, 1), 3, 1, 1, count_include_pad=False).view_as(b)
    gain = 0.5 + 0.5 * (bright / torch.minimum(t, t[:, :1])).pow(1.0 / GAMMA)
    agree = torch.exp(-(d / (ghost_tol * gain)).square())
    agree[:, 0] = 1.0
    return agree


def motion_edges(flows: Tensor) -> Tensor:
    """Where each flow field breaks: |∂f/∂x| + |∂f/∂y| (both components, central differences),
    squashed to [0, 1) by g / (1 + g). ~0 inside a smoothly moving or rotating surface, toward
    1 at a moving object's boundary, where a neighbour occludes or reveals what the reference
    sees. Unlike the warped-versus-reference difference it carries no sensor noise, so it
    still marks the boundary where a short reference's noise hides a misalignment.

    Args:
        flows: (b, k, 2, H, W) displacements in pixels.

    Returns:
        (b, k, H, W).
    """
    f = F.pad(flows.flatten(0, 1), (1, 1, 1, 1), mode="replicate")  # (bk, 2, H+2, W+2)
    gx = (f[..., 1:-1, 2:] - f[..., 1:-1, :-2]).abs()
    gy = (f[..., 2:, 1:-1] - f[..., :-2, 1:-1]).abs()
    g = 0.5 * (gx + gy).sum(dim=1)  # (bk, H, W)
    return (g / (1.0 + g)).view(flows.shape[0], flows.shape[1], *g.shape[-2:])


def low_ramp(ldr: Tensor) -> Tensor:
    """1 for L ≥ 0.15, (L/0.15)² below (paper eq. 5)."""
    return (ldr / LOW).clamp(0.0, 1.0).square()


def high_ramp(ldr: Tensor) -> Tensor:
    """1 for L ≤ 0.9, ((1-L)/0.1)² above, 0 at L = 1 (paper Fig. 5b)."""
    return ((1.0 - ldr) / (1.0 - HIGH)).clamp(0.0, 1.0).square()


def mask_for_exposure(ldr: Tensor, t: Tensor, expo: Tensor) -> Tensor:
    """Well-exposed mask of a frame taken at ``t`` within a window whose exposures are ``expo``.

    Args:
        ldr: (B, 3, H, W) the frame's gamma-2.2 values.
        t: (B,) its exposure time.
        expo: (B, N) exposure times of the window (the frame's included).

    Returns:
        (B, 3, H, W) per-channel mask in [0, 1]: the low ramp for the lowest exposure, the
        high ramp for the highest, their product for a middle one (or a one-exposure window),
        with the 2 % role tolerance of ``infer.mask``. Pure tensor ops: no host sync.
    """
    t = t.to(ldr.dtype)
    expo = expo.to(ldr.dtype)
    lowest = (t <= expo.amin(dim=1) * (1 + EXPOSURE_TOL))[:, None, None, None]
    highest = (t >= expo.amax(dim=1) * (1 - EXPOSURE_TOL))[:, None, None, None]
    low, high = low_ramp(ldr), high_ramp(ldr)
    return torch.where(lowest & ~highest, low, torch.where(highest & ~lowest, high, low * high))


def well_exposed_mask(ldr: Tensor, expo: Tensor, ref: int) -> Tensor:
    """Torch twin of ``infer.mask.well_exposed_mask`` (per channel), batched.

    Args:
        ldr: (B, 3, H, W) the reference frame's gamma-2.2 values.
        expo: (B, N) exposure times of the window.
        ref: index of the reference frame in the window.

    Returns:
        (B, 3, H, W) mask M of paper eq. (4)-(5): 1 where the reference alone is trusted.
    """
    return mask_for_exposure(ldr, expo[:, ref], expo)


def check_shape(x: Tensor, name: str, expected: tuple[int | None, ...]) -> None:
    """Raise ValueError unless ``x`` has ``len(expected)`` dims matching ``expected`` (None = any)."""
    if x.dim() != len(expected) or any(e is not None and s != e for s, e in zip(x.shape, expected)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def check_multiple(height: int, width: int, multiple: int, what: str) -> None:
    """Raise ValueError unless height and width are multiples of ``multiple``."""
    if height % multiple or width % multiple:
        raise ValueError(
            f"{what}: height and width must be multiples of {multiple}, got {height}×{width}; "
            f"pad with infer.net.ops.pad_to_multiple and crop the output"
        )


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Replicate-pad the last two dims of ``x`` up to multiples of ``multiple``.

    Returns the padded tensor and the original (H, W) so the caller can crop the output with
    ``out[..., :h, :w]``. Replicate padding keeps exposure statistics of the border, which
    zero padding would turn into a fake dark (under-exposed) band.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    padded = F.pad(flat, (0, pw, 0, ph), mode="replicate")
    return padded.reshape(*lead, *padded.shape[-3:]), (h, w)
