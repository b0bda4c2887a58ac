"""RefineNet: alignment and fusion in the feature space of the coarse HDRs (paper §3.3, Fig. 4).

Building blocks first (``ResidualBlock``, ``FeatureExtractor``, ``PCDAlignment``,
``TemporalAttentionFusion``, ``Reconstruction``), the network last (``RefineNet``),
after BasicSR's ``edvr_arch``. Feature levels are named by resolution relative to the
*feature* grid, which is half the image resolution as in the paper's reference code:

* ``skip0`` (b, nf, H, W)       first conv of the input, full resolution
* ``skip1`` (b, nf, H/2, W/2)   strided conv, before the residual blocks
* ``l1``    (b, nf, H/2, W/2)   after 5 residual blocks — PCD level 1
* ``l2``    (b, nf, H/4, W/4)   PCD level 2
* ``l3``    (b, nf, H/8, W/8)   PCD level 3

Input of each frame (6 channels): its coarse HDR, μ-law tonemapped (``mulaw_input``,
default) or linear as in the reference code, and a 3-channel *exposure indicator*
``1 - M_k``, the not-well-exposed mask of that frame re-exposed from its coarse HDR (see
``RefineNet.encode``). The reference code feeds a binary over/under-exposure mask of the
frame's LDR for two exposures and nothing for three; we use the smooth mask of paper
eq. (5) for both, computed from the coarse HDR so that a frame's features depend only on
that frame (and its exposure's role in the cycle) and a stream can compute them once.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from infer.net.deform import ModulatedDeformConv
from infer.net.ops import hdr_to_ldr, inverse_mu_law, lrelu, mask_for_exposure, mu_law, scaled

IN_CHANNELS = 6  # coarse HDR (3) + exposure indicator (3)


def upsample(x: Tensor) -> Tensor:
    """Bilinear ×2 upsampling."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ResidualBlock(nn.Module):
    """conv3×3 - LReLU - conv3×3 + identity, no normalisation (EDVR).

    Initialised at 0.1× Kaiming so that a deep stack starts close to the identity.
    """

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            with torch.no_grad():
                conv.weight.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(lrelu(self.conv1(x)))


class RefineFeatures(NamedTuple):
    """Per-frame RefineNet features, frames along dim 1 (see the module docstring).

    ``x`` is the 6-channel encoded input (b, t, 6, H, W); the reference's full-resolution
    skip is recomputed from it (one cheap conv) rather than stored for every frame.
    """

    x: Tensor  # (b, t, 6, H, W)
    skip1: Tensor  # (b, t, nf, H/2, W/2)
    l1: Tensor  # (b, t, nf, H/2, W/2)
    l2: Tensor  # (b, t, nf, H/4, W/4)
    l3: Tensor  # (b, t, nf, H/8, W/8)

    @property
    def frames(self) -> int:
        return self.x.shape[1]

    def frame(self, i: int) -> RefineFeatures:
        """Features of frame ``i`` alone (t = 1)."""
        return RefineFeatures(*(f[:, i : i + 1] for f in self))

    @staticmethod
    def stack(parts: list[RefineFeatures]) -> RefineFeatures:
        """Concatenate features of consecutive frames along the frame dim."""
        return RefineFeatures(*(torch.cat(fs, dim=1) for fs in zip(*parts)))


class FeatureExtractor(nn.Module):
    """Shared per-frame feature extractor (paper: "a share-weight feature extractor").

    conv (full res) → strided conv (1/2) → ``blocks`` residual blocks → two strided stages
    for the PCD pyramid (1/4, 1/8).

    Args:
        in_channels: input channels per frame (6).
        nf: feature channels (64 at width 1).
        blocks: residual blocks (5 in the paper).
    """

    def __init__(self, in_channels: int, nf: int, blocks: int = 5) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(in_channels, nf, 3, 1, 1)
        self.conv_down = nn.Conv2d(nf, nf, 3, 2, 1)
        self.trunk = nn.Sequential(*(ResidualBlock(nf) for _ in range(blocks)))
        self.l2_conv1 = nn.Conv2d(nf, nf, 3, 2, 1)
        self.l2_conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.l3_conv1 = nn.Conv2d(nf, nf, 3, 2, 1)
        self.l3_conv2 = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (b, c_in, H, W) → skip1, l1 (b, nf, H/2, W/2), l2 (…/4), l3 (…/8)."""
        skip1 = lrelu(self.conv_down(lrelu(self.conv_first(x))))
        l1 = self.trunk(skip1)
        l2 = lrelu(self.l2_conv2(lrelu(self.l2_conv1(l1))))
        l3 = lrelu(self.l3_conv2(lrelu(self.l3_conv1(l2))))
        return skip1, l1, l2, l3


class PCDAlignment(nn.Module):
    """Pyramid, cascading and deformable alignment (EDVR; paper §3.3 eqs. 2-3, Fig. 4a).

    At each of three levels, coarse to fine, offsets are predicted from [neighbour, reference]
    features and the coarser level's offset feature (×2, as EDVR does), and a modulated
    deformable conv samples the neighbour; aligned features are merged up the pyramid. A
    final cascaded deformable conv refines the level-1 result against the reference.

    Args:
        nf: feature channels.
        deform_groups: deformable groups (8).
    """

    def __init__(self, nf: int, deform_groups: int = 8) -> None:
        super().__init__()
        self.offset_conv1 = nn.ModuleDict()  # [nbr, ref] → offset feature
        self.offset_conv2 = nn.ModuleDict()  # [offset feature, coarser offset feature] (l1, l2)
        self.offset_conv3 = nn.ModuleDict()
        self.dcn = nn.ModuleDict()
        self.feat_conv = nn.ModuleDict()  # [aligned, upsampled coarser aligned] (l1, l2)
        for level in ("l3", "l2", "l1"):
            self.offset_conv1[level] = nn.Conv2d(2 * nf, nf, 3, 1, 1)
            if level == "l3":
                self.offset_conv2[level] = nn.Conv2d(nf, nf, 3, 1, 1)
            else:
                self.offset_conv2[level] = nn.Conv2d(2 * nf, nf, 3, 1, 1)
                self.offset_conv3[level] = nn.Conv2d(nf, nf, 3, 1, 1)
                self.feat_conv[level] = nn.Conv2d(2 * nf, nf, 3, 1, 1)
            self.dcn[level] = ModulatedDeformConv(nf, nf, nf, 3, deform_groups)
        self.cas_offset_conv1 = nn.Conv2d(2 * nf, nf, 3, 1, 1)
        self.cas_offset_conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.cas_dcn = ModulatedDeformConv(nf, nf, nf, 3, deform_groups)

    def forward(self, nbr: tuple[Tensor, Tensor, Tensor], ref: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """Align neighbour features to the reference.

        Args:
            nbr: neighbour (l1, l2, l3) features, (b, nf, h, w), (b, nf, h/2, w/2), (b, nf, h/4, w/4).
            ref: reference features at the same levels.

        Returns:
            (b, nf, h, w) aligned level-1 feature.
        """
        offset, feat = None, None
        for i, level in ((2, "l3"), (1, "l2"), (0, "l1")):
            off = lrelu(self.offset_conv1[level](torch.cat((nbr[i], ref[i]), dim=1)))
            if offset is None:
                off = lrelu(self.offset_conv2[level](off))
            else:
                off = lrelu(self.offset_conv2[level](torch.cat((off, 2 * upsample(offset)), dim=1)))
                off = lrelu(self.offset_conv3[level](off))
            aligned = self.dcn[level](nbr[i], off)
            if feat is None:
                feat = lrelu(aligned)
            else:
                feat = self.feat_conv[level](torch.cat((aligned, upsample(feat)), dim=1))
                feat = lrelu(feat) if level != "l1" else feat
            offset = off
        off = lrelu(self.cas_offset_conv1(torch.cat((feat, ref[0]), dim=1)))
        off = lrelu(self.cas_offset_conv2(off))
        return lrelu(self.cas_dcn(feat, off))


class TemporalAttentionFusion(nn.Module):
    """Temporal attention fusion (paper §3.3 "Multi-feature fusion", Fig. 4b).

    Each aligned feature is concatenated with the aligned reference feature; two convs
    (shared across frames) give a sigmoid attention map of the feature's size, which
    weights it — suppressing misaligned content. The attended features are concatenated and
    fused by a 1×1 conv. (The reference code's "TA2" variant omits the sigmoid; the paper's
    description of an attention map and its own ``TAFModule`` keep it.)

    Args:
        nf: feature channels.
        frames: number of frames fused (3).
        center: index of the reference frame.
    """

    def __init__(self, nf: int, frames: int = 3, center: int = 1) -> None:
        super().__init__()
        self.frames = frames
        self.center = center
        self.att_conv1 = nn.Conv2d(2 * nf, nf, 3, 1, 1)
        self.att_conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.fusion = nn.Conv2d(frames * nf, nf, 1, 1, 0)

    def forward(self, aligned: Tensor) -> Tensor:
        """aligned (b, t, nf, h, w) → fused (b, nf, h, w)."""
        b, t, c, h, w = aligned.shape
        ref = aligned[:, self.center : self.center + 1].expand(-1, t, -1, -1, -1)
        att_in = torch.cat((ref, aligned), dim=2).flatten(0, 1)  # (b·t, 2nf, h, w)
        att = torch.sigmoid(self.att_conv2(lrelu(self.att_conv1(att_in))))
        attended = aligned * att.reshape(b, t, c, h, w)
        return lrelu(self.fusion(attended.reshape(b, t * c, h, w)))


class Reconstruction(nn.Module):
    """Reconstruction branch: residual trunk, then upsampling with two reference skips.

    ``blocks`` residual blocks at the feature resolution (1/2), then [trunk, reference
    ``skip1``] → ×2 transposed conv → [·, reference ``skip0``] → conv → conv → sigmoid:
    the paper's "two skip connections ... concatenate encoder features of the reference
    frame to decoder features that have the same dimensions", giving linear HDR in [0, 1].

    Args:
        nf: feature channels.
        blocks: residual blocks (10).
        out_channels: 3.
        residual: output an unbounded correction (no sigmoid), its last conv starting near
            zero (see ``RefineNet``'s ``residual``).
    """

    def __init__(self, nf: int, blocks: int = 10, out_channels: int = 3, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.trunk = nn.Sequential(*(ResidualBlock(nf) for _ in range(blocks)))
        self.up = nn.ConvTranspose2d(2 * nf, nf, 4, 2, 1)
        self.hr_conv = nn.Conv2d(2 * nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_channels, 3, 1, 1)
        if residual:
            with torch.no_grad():
                self.conv_last.weight.mul_(0.01)
                self.conv_last.bias.zero_()

    def forward(self, fused: Tensor, skip1: Tensor, skip0: Tensor) -> Tensor:
        """fused, skip1 (b, nf, H/2, W/2); skip0 (b, nf, H, W) → (b, 3, H, W): in (0, 1), or
        the raw correction when ``residual``."""
        feat = self.trunk(fused)
        feat = lrelu(self.up(torch.cat((feat, skip1), dim=1)))  # (b, nf, H, W)
        feat = lrelu(self.hr_conv(torch.cat((feat, skip0), dim=1)))
        out = self.conv_last(feat)
        return out if self.residual else torch.sigmoid(out)


class RefineNet(nn.Module):
    """Refines the coarse HDR of frame i from the coarse HDRs of frames i-1, i, i+1.

    Args:
        width: channel multiplier (nf = 64·width, rounded to a multiple of deform_groups).
        deform_groups: deformable groups of PCD alignment (8).
        mulaw_input: feed μ-law tonemapped coarse HDRs (default) instead of linear ones.
            Linear HDR puts the shadows that RefineNet must denoise at ~1e-4, far below
            everything else the first conv sees; μ-law (the loss's own domain) spreads them.
        front_blocks, back_blocks: residual blocks of the extractor (5) and trunk (10).
        residual: predict a correction to the centre's coarse HDR in the μ-law domain,
            ``H^r = μ⁻¹(clip(μ(H^c) + Δ, 0, 1))``, instead of the paper's sigmoid of linear
            HDR. An untrained RefineNet then returns the coarse HDR (a sigmoid of linear
            values starts at 0.5 everywhere and must learn shadows near 1e-4), so little
            compute goes a long way: training learns denoising and refill, not the image.
    """

    multiple = 8  # three stride-2 stages (1/2 features, 1/4, 1/8 pyramid)
    frames = 3
    center = 1

    def __init__(
        self,
        width: float = 1.0,
        deform_groups: int = 8,
        mulaw_input: bool = True,
        front_blocks: int = 5,
        back_blocks: int = 10,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.nf = nf = scaled(64, width, deform_groups)
        self.mulaw_input = mulaw_input
        self.residual = residual
        self.extractor = FeatureExtractor(IN_CHANNELS, nf, front_blocks)
        self.align = PCDAlignment(nf, deform_groups)
        self.fusion = TemporalAttentionFusion(nf, self.frames, self.center)
        self.reconstruct = Reconstruction(nf, back_blocks, residual=residual)

    def encode(self, coarse: Tensor, expo: Tensor, expo_window: Tensor) -> Tensor:
        """Network input of each frame: [coarse HDR (tonemapped), exposure indicator].

        The indicator ``1 - M`` is the not-well-exposed mask (paper eq. 5) of the frame
        re-exposed from its coarse HDR, ``clip(H·t, 0, 1)^(1/2.2)``, which approximates the
        frame's own LDR; its role (lowest/highest/middle exposure) comes from ``expo_window``.
        It tells the network which regions of each frame were reconstructed rather than
        observed. It is computed without gradient (a hint, not a learned path).

        Args:
            coarse: (b, t, 3, H, W) coarse linear HDRs.
            expo: (b, t) their exposure times.
            expo_window: (b, k) exposures of a window holding every exposure of the cycle.

        Returns:
            (b, t, 6, H, W).
        """
        b, t = coarse.shape[:2]
        with torch.no_grad():
            ldr = hdr_to_ldr(coarse.detach().flatten(0, 1), expo.flatten())
            window = expo_window.repeat_interleave(t, dim=0)  # (b·t, k)
            indicator = 1.0 - mask_for_exposure(ldr, expo.flatten(), window)
        image = mu_law(coarse) if self.mulaw_input else coarse
        return torch.cat((image, indicator.view_as(coarse)), dim=2)

    def features(self, coarse: Tensor, expo: Tensor, expo_window: Tensor | None = None) -> RefineFeatures:
        """Per-frame features, computed once per frame and reusable across windows.

        Args:
            coarse: (b, t, 3, H, W) coarse HDRs of t frames (t = 3 for one window, 1 for a
                stream that adds one frame at a time).
            expo: (b, t) their exposure times.
            expo_window: (b, k) exposures of a window holding every exposure of the cycle
                (e.g. those of frames i-1, i, i+1), to tell each frame's exposure role;
                defaults to ``expo`` (right when t = 3).

        Returns:
            ``RefineFeatures`` with frames along dim 1.
        """
        b, t, _, h, w = coarse.shape
        x = self.encode(coarse, expo, expo if expo_window is None else expo_window)  # (b, t, 6, H, W)
        skip1, l1, l2, l3 = self.extractor(x.flatten(0, 1))
        return RefineFeatures(x, *(f.reshape(b, t, *f.shape[1:]) for f in (skip1, l1, l2, l3)))

    def forward(self, coarse3: Tensor, expo3: Tensor, feats: RefineFeatures | None = None) -> Tensor:
        """Refined linear HDR of the centre frame.

        Args:
            coarse3: (b, 3, 3, H, W) coarse HDRs of frames i-1, i, i+1.
            expo3: (b, 3) their exposure times.
            feats: precomputed ``features(coarse3, expo3)`` (3 frames), or None.

        Returns:
            (b, 3, H, W) refined HDR ``H_i^r`` in (0, 1).
        """
        if feats is None:
            feats = self.features(coarse3, expo3)
        b, t = feats.l1.shape[:2]
        c = self.center
        ref = tuple(f[:, c : c + 1].expand(-1, t, -1, -1, -1).flatten(0, 1) for f in (feats.l1, feats.l2, feats.l3))
        nbr = tuple(f.flatten(0, 1) for f in (feats.l1, feats.l2, feats.l3))
        aligned = self.align(nbr, ref)  # (b·t, nf, H/2, W/2); the reference too, as in EDVR
        fused = self.fusion(aligned.reshape(b, t, *aligned.shape[1:]))  # (b, nf, H/2, W/2)
        skip0 = lrelu(self.extractor.conv_first(feats.x[:, c]))  # (b, nf, H, W)
        out = self.reconstruct(fused, feats.skip1[:, c], skip0)
        if self.residual:
            return inverse_mu_law((mu_law(coarse3[:, c]) + out).clamp(0.0, 1.0))
        return out
