"""Losses of the paper (§3.2, §3.3), computed on μ-law tonemapped HDR (μ = 5000).

- CoarseNet: ``L^c = ||T^c - T̃||₁`` for each coarse output (frames i-1, i, i+1) — eq. (1).
- RefineNet: ``L^r_l1 = ||T_i - T̃_i||₁ / ||1 - M_i||₁`` on the final blend — eq. (6) — plus a
  perceptual term.

The perceptual substitute. The paper adds a VGG16 feature loss (relu1_2, relu2_2, relu3_3);
no pretrained VGG can be downloaded here, and a randomly initialised one measures little.
What that term buys in HDR fusion is sensitivity to *structure* — blur, ghosts, missing
texture in refilled regions — that a per-pixel L1 averages away. We use multi-scale SSIM
on the μ-law image instead (``1 - SSIM`` at full, ½ and ¼ resolution, i.e. the three
receptive-field scales of those VGG layers): it compares local means, contrasts and
correlation, so a blurred or ghosted refill costs much more than its L1 says; it is
differentiable, weight-free, cheap (separable Gaussian filters) and bounded, so its
weight is easy to set. A multi-scale gradient L1 (``perceptual = "grad"``) is the
alternative; it targets edges only and is noisier on the noise of short exposures.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from infer.net.ops import MU
from infer.net.ops import mu_law as _mu_law
from training.config import LOSS_NORMS
from training.splits import CLIP_LEVEL

SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # for a dynamic range of 1
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # the usual 11x11 Gaussian window


def mu_law(hdr: Tensor, mu: float = MU) -> Tensor:
    """The network's μ-law (eq. 1) on HDR clamped to [0, 1] first, as the evaluation clips."""
    return _mu_law(hdr.clamp(0.0, 1.0), mu)


def coarse_loss(coarse: Tensor, gt: Tensor) -> Tensor:
    """Mean L1 between μ-law coarse HDRs and ground truth, any matching shapes (B, 3, 3, H, W)."""
    return _weighted_error(coarse, gt, None, "l1")


MOTION_TOL = 0.02  # μ-law difference of the ground truth that counts as motion


def moved_mask(gt: Tensor) -> Tensor:
    """(B, H, W) where the scene moves between the reference and its neighbours: ``gt``
    (B, 3, 3, H, W) is the ground truth of frames i-1, i, i+1."""
    t = mu_law(gt)
    return torch.maximum((t[:, 0] - t[:, 1]).abs().amax(1), (t[:, 2] - t[:, 1]).abs().amax(1)) > MOTION_TOL


def motion_weights(gt: Tensor | None, weight: float, ldr_ref: Tensor | None = None, clipped_weight: float = 0.0,
                   moved: Tensor | None = None) -> Tensor | None:
    """(B, 1, H, W) per-pixel loss weights, 1 + ``weight`` where the scene moves between the
    reference and its neighbours (``moved``, or :func:`moved_mask` of ``gt``);
    ``clipped_weight`` more where it moves and ``ldr_ref`` (B, 3, H, W, gamma values) is
    clipped in a channel. None when both weights are 0 (every pixel counts the same)."""
    if weight <= 0 and (clipped_weight <= 0 or ldr_ref is None):
        return None
    if moved is None:
        moved = moved_mask(gt)
    dtype = gt.dtype if gt is not None else torch.float32
    w = 1.0 + weight * moved.unsqueeze(1).to(dtype)
    if clipped_weight > 0 and ldr_ref is not None:
        clipped = (ldr_ref >= CLIP_LEVEL).any(1) & moved
        w = w + clipped_weight * clipped.unsqueeze(1).to(dtype)
    return w


PSNR_SCALE = 0.01  # the "psnr" term in dB/100: about the size of the L1 term at 40 dB
MSE_FLOOR = 1e-10  # 100 dB: a window without error does not send the log to -inf


def _weighted_error(pred: Tensor, gt: Tensor, w: Tensor | None, norm: str) -> Tensor:
    """μ-law error of pred against gt, weighted by ``w`` (broadcastable to pred) when given.

    "l1": the paper's mean absolute error. "psnr": minus the mean over samples of each
    sample's PSNR-μ (from its weighted mean squared error), what validation and
    ``bench/quality.py`` score. L1 is robust to outliers: it will trade a ghost (a few
    large errors, which PSNR squares) for less noise everywhere else (many small ones).
    """
    d = mu_law(pred) - mu_law(gt)
    if norm == "l1":
        d = d.abs()
        if w is None:
            return d.mean()
        w = w.expand_as(d)
        return (d * w).sum() / w.sum()
    if norm != "psnr":
        raise ValueError(f"unknown loss norm {norm!r} (expected one of {LOSS_NORMS})")
    d = d * d
    if w is None:
        mse = d.flatten(1).mean(1)
    else:
        w = w.expand_as(d)
        mse = (d * w).flatten(1).sum(1) / w.flatten(1).sum(1)
    return PSNR_SCALE * 10.0 * torch.log10(mse.clamp_min(MSE_FLOOR)).mean()


def linear_l1(hdr: Tensor, gt: Tensor) -> Tensor:
    """Mean L1 in linear light, both clamped to [0, 1] as PSNR-L normalises: the error a
    viewer sees in the highlights, which the μ-law compresses away."""
    return (hdr.clamp(0.0, 1.0) - gt.clamp(0.0, 1.0)).abs().mean()


def hue_l1(hdr: Tensor, gt: Tensor, ldr_ref: Tensor) -> Tensor:
    """Mean L1 distance of rgb chromaticities (r, g, b) / (r + g + b) where the reference is
    partly clipped (some channels at CLIP_LEVEL, not all) and the truth is within range (its
    colour is knowable): a colour cast in a highlight, which the μ-law hardly sees. The same
    pixels and distance as ``bench/quality.py``'s hue error; 0 where the batch has none.

    hdr, gt: (B, 3, H, W) normalised HDR. ldr_ref: (B, 3, H, W) the reference, gamma values."""
    clipped = ldr_ref >= CLIP_LEVEL
    mask = clipped.any(1) & ~clipped.all(1) & (gt.amax(1) < 1.0)  # (B, H, W)
    if not bool(mask.any()):
        return hdr.new_zeros(())
    p, g = hdr.clamp_min(0.0), gt.clamp_min(0.0)
    d = (p / p.sum(1, keepdim=True).clamp_min(1e-12) - g / g.sum(1, keepdim=True).clamp_min(1e-12)).abs().sum(1)
    return d[mask].mean()


def refine_l1(hdr: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Eq. (6): ``sum |T - T̃| / sum (1 - M)`` over the batch.

    Args:
        hdr: (B, 3, H, W) final HDR. gt: (B, 3, H, W). mask: (B, 3, H, W) well-exposed mask M.

    The sums run over the whole batch (a sample with almost no badly exposed pixels does
    not blow the loss up); the denominator is at least 1 pixel.
    """
    num = (mu_law(hdr) - mu_law(gt)).abs().sum()
    return num / (1.0 - mask).sum().clamp_min(1.0)


def _gaussian(device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, device=device, dtype=dtype)
    g = torch.exp(-(x * x) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian per channel, reflect padding; x (B, C, H, W)."""
    c = x.shape[1]
    r = g.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Mean SSIM of two (B, C, H, W) images in [0, 1] (H, W > 5; 11x11 Gaussian window)."""
    g = _gaussian(x.device, x.dtype)
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    num = (2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)
    den = (mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2)
    return (num / den).mean()


def ms_ssim_loss(t: Tensor, t_gt: Tensor, scales: int = 3) -> Tensor:
    """Mean over scales of ``1 - SSIM`` on tonemapped images (B, 3, H, W), halving each scale."""
    total = t.new_zeros(())
    used = 0
    for s in range(scales):
        if s:
            if min(t.shape[-2:]) < 2 * (2 * SSIM_RADIUS + 1):
                break
            t, t_gt = F.avg_pool2d(t, 2), F.avg_pool2d(t_gt, 2)
        total = total + (1.0 - ssim(t, t_gt))
        used += 1
    return total / used


def gradient_loss(t: Tensor, t_gt: Tensor, scales: int = 3) -> Tensor:
    """Mean over scales of the L1 between horizontal and vertical finite differences."""
    total = t.new_zeros(())
    for s in range(scales):
        if s:
            t, t_gt = F.avg_pool2d(t, 2), F.avg_pool2d(t_gt, 2)
        d = t - t_gt
        total = total + (d[..., :, 1:] - d[..., :, :-1]).abs().mean() + (d[..., 1:, :] - d[..., :-1, :]).abs().mean()
    return total / scales


def perceptual(hdr: Tensor, gt: Tensor, kind: str = "ssim", scales: int = 3) -> Tensor:
    """The VGG16 substitute on μ-law images: "ssim" (multi-scale), "grad" or "none"."""
    if kind == "none":
        return hdr.new_zeros(())
    t, t_gt = mu_law(hdr), mu_law(gt)
    if kind == "ssim":
        return ms_ssim_loss(t, t_gt, scales)
    if kind == "grad":
        return gradient_loss(t, t_gt, scales)
    raise ValueError(f"unknown perceptual loss {kind!r}")


def stage_loss(stage: str, out: dict[str, Tensor], batch: dict[str, Tensor], lcfg) -> tuple[Tensor, dict[str, float]]:
    """Total loss of a training stage and its terms (as floats, for the log).

    Args:
        stage: "coarse" (``out`` needs "coarse"), "refine" or "e2e" (need "hdr", "mask",
            and for e2e "coarse"), "gate" or "denoise" (need "hdr", the final HDR). With a gate
            ("gate" in ``out``) the final HDR's L1 counts every pixel.
        out: network outputs. batch: a batch with "gt" (B, 3, 3, H, W) and "gt_ref".
        lcfg: :class:`training.config.LossConfig`.
    """
    terms: dict[str, Tensor] = {}
    if "ldr_ref" in batch:  # a cached denoise batch (training.denoise_cache)
        ldr_ref = batch["ldr_ref"]
    else:
        ldr_ref = batch["ldr"][:, batch["ldr"].shape[1] // 2] if "ldr" in batch else None
    w = None
    if "gt" in batch or "moved" in batch:  # a cached denoise batch carries the mask, not the neighbours
        w = motion_weights(batch.get("gt"), lcfg.motion_weight, ldr_ref, lcfg.clipped_motion_weight,
                           batch["moved"][:, 0] if "moved" in batch else None)
    if stage in ("gate", "denoise"):  # the final HDR, every pixel counts (the gate also acts where M = 1)
        terms[stage] = lcfg.refine * _weighted_error(out["hdr"], batch["gt_ref"], w, lcfg.norm)
    if stage in ("coarse", "e2e") and lcfg.coarse > 0:
        # without RefineNet only the reference's window runs: "coarse" is (B, 1, 3, H, W)
        gt = batch["gt"] if out["coarse"].shape[1] == batch["gt"].shape[1] else batch["gt"][:, 1:2]
        # the reference's motion weighs each coarse HDR alike
        terms["coarse"] = lcfg.coarse * _weighted_error(out["coarse"], gt, None if w is None else w.unsqueeze(1),
                                                        lcfg.norm)
    if stage in ("refine", "e2e"):
        if "gate" in out or "mask" not in out:  # a gate (or no eq. 4 blend) acts everywhere: M = 1 pixels count too
            terms["refine"] = lcfg.refine * _weighted_error(out["hdr"], batch["gt_ref"], w, lcfg.norm)
        else:
            terms["refine"] = lcfg.refine * refine_l1(out["hdr"], batch["gt_ref"], out["mask"])
        if lcfg.perceptual != "none" and lcfg.perceptual_weight > 0:
            terms["perceptual"] = lcfg.perceptual_weight * perceptual(
                out["hdr"], batch["gt_ref"], lcfg.perceptual, lcfg.scales)
    if stage in ("gate", "denoise", "refine", "e2e") and lcfg.hue > 0 and ldr_ref is not None:
        terms["hue"] = lcfg.hue * hue_l1(out["hdr"], batch["gt_ref"], ldr_ref)
    if stage in ("gate", "denoise", "refine", "e2e") and lcfg.linear > 0:
        terms["linear"] = lcfg.linear * linear_l1(out["hdr"], batch["gt_ref"])
    if not terms:
        raise ValueError(f"stage {stage!r} has no loss term with a positive weight")
    total = sum(terms.values())
    return total, {k: float(v.detach()) for k, v in terms.items()}
