"""CoarseNet's weight network: per-pixel blending weights for the aligned images.

Paper §3.2: after the flow network aligns the neighbours, the weight network (after
Kalantari & Ramamoorthi 2019) predicts a 3-channel weight per image and pixel; the coarse
HDR of the reference is the normalised weighted sum of the images' linear HDRs. Blending
in the image space recovers most missing detail (saturated highlights of a long exposure,
noisy shadows of a short one) before RefineNet works in the feature space.

The images are the reference, the warped neighbours and the unwarped neighbours (the
latter let the network fall back where the flow is wrong), each given as linear HDR + LDR
(6 channels): 2 exposures → 5 images, 30 in / 15 out; 3 exposures → 9 images, 54 / 27.

Encoder 64, 64/s2, 128, 128/s2, 256, 256/s2 and a decoder of three ×2 transposed convs
(design §4). The reference code's decoder has no skips; ours concatenates the encoder
feature of the same resolution before each decoder conv (a U-Net), so the full-resolution
weights follow image edges (saturation boundaries, motion boundaries) instead of being
upsampled from 1/8 resolution — at a similar parameter count (~2.4 M at width 1).

With ``prior`` (``NetConfig.weight_prior``, our default) the sigmoid output multiplies a
fixed per-image prior, the classical merge's weight (exposure time × saturation roll-off ×
agreement with the reference, ``ops.merge_prior``): the network starts as the classical
merge and learns corrections to it, instead of rediscovering from scratch that a long
exposure is eight times less noisy and that a moving object must not be blended in.
Unwarped neighbours start at a low weight (bias −3) and the last conv starts near zero, so
an untrained network is the classical merge. Same parameters; the paper's plain sigmoid
weights are ``prior=False``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from infer.net.ops import lrelu, scaled

EPS = 1e-6


def merge_hdr(weights: Tensor, hdrs: Tensor) -> tuple[Tensor, Tensor]:
    """Blend linear HDRs with weights normalised per pixel and channel to sum to 1.

    Args:
        weights: (b, n, 3, H, W) non-negative weights.
        hdrs: (b, n, 3, H, W) linear HDRs of the n images.

    Returns:
        hdr (b, 3, H, W) and the normalised weights (b, n, 3, H, W).
    """
    weights = weights / (weights.sum(dim=1, keepdim=True) + EPS)
    return (weights * hdrs).sum(dim=1), weights


class WeightNet(nn.Module):
    """Encoder–decoder predicting one 3-channel blending weight per input image.

    Args:
        images: number of images blended (5 for two exposures, 9 for three).
        width: channel multiplier.
        cues: extra input channels after the images' (e.g. CoarseNet's motion edges).
    """

    multiple = 8

    def __init__(self, images: int = 5, width: float = 1.0, prior: bool = False, cues: int = 0) -> None:
        super().__init__()
        self.images = images
        self.prior = prior
        self.cues = cues
        c_in, c_out = 6 * images + cues, 3 * images
        c1, c2, c3 = scaled(64, width), scaled(128, width), scaled(256, width)
        c0 = scaled(32, width)
        # encoder: feat_l1 at 1/1, feat_l2 at 1/2, feat_l3 at 1/4, bottleneck at 1/8
        self.enc1 = nn.Conv2d(c_in, c1, 3, 1, 1)
        self.down1 = nn.Conv2d(c1, c1, 3, 2, 1)
        self.enc2 = nn.Conv2d(c1, c2, 3, 1, 1)
        self.down2 = nn.Conv2d(c2, c2, 3, 2, 1)
        self.enc3 = nn.Conv2d(c2, c3, 3, 1, 1)
        self.down3 = nn.Conv2d(c3, c3, 3, 2, 1)
        # decoder: ×2 transposed conv, then a conv over [upsampled, encoder skip]
        self.up3 = nn.ConvTranspose2d(c3, c2, 4, 2, 1)
        self.dec3 = nn.Conv2d(c2 + c3, c2, 3, 1, 1)
        self.up2 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
        self.dec2 = nn.Conv2d(c1 + c2, c1, 3, 1, 1)
        self.up1 = nn.ConvTranspose2d(c1, c0, 4, 2, 1)
        self.conv_last = nn.Conv2d(c0 + c1, c_out, 3, 1, 1)
        if prior:
            with torch.no_grad():  # start as the prior; images: centre, warped, unwarped
                self.conv_last.weight.mul_(0.01)
                self.conv_last.bias.zero_()
                self.conv_last.bias[3 * (images + 1) // 2 :] = -3.0

    def forward(self, x: Tensor, hdrs: Tensor, prior: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Predict weights and blend.

        Args:
            x: (b, 6·n + cues, H, W) per image [linear HDR, LDR], images in ``hdrs`` order,
                then the cue channels.
            hdrs: (b, n, 3, H, W) linear HDRs to blend.
            prior: (b, n, 1 or 3, H, W) prior weights; required when built with ``prior``.

        Returns:
            hdr (b, 3, H, W) and the normalised weights (b, n, 3, H, W).
        """
        feat_l1 = lrelu(self.enc1(x))  # (b, c1, H, W)
        feat_l2 = lrelu(self.enc2(lrelu(self.down1(feat_l1))))  # (b, c2, H/2, W/2)
        feat_l3 = lrelu(self.enc3(lrelu(self.down2(feat_l2))))  # (b, c3, H/4, W/4)
        feat = lrelu(self.down3(feat_l3))  # (b, c3, H/8, W/8)
        feat = lrelu(self.dec3(torch.cat((lrelu(self.up3(feat)), feat_l3), dim=1)))  # (b, c2, H/4, W/4)
        feat = lrelu(self.dec2(torch.cat((lrelu(self.up2(feat)), feat_l2), dim=1)))  # (b, c1, H/2, W/2)
        logits = self.conv_last(torch.cat((lrelu(self.up1(feat)), feat_l1), dim=1))  # (b, 3·n, H, W)
        # NCHW before the split into images: a channels-last model's (b, 3n, H, W) would
        # split into a strided 5-D view that every later per-pixel product walks slowly.
        weights = torch.sigmoid(logits).contiguous().reshape(hdrs.shape)
        if self.prior:
            if prior is None:
                raise ValueError("WeightNet: built with a prior; pass prior weights")
            weights = weights * prior
        return merge_hdr(weights, hdrs)
