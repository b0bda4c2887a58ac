"""CoarseNet: alignment and blending in the image space (paper §3.2, Fig. 3).

For one window centred on frame i (3 frames for two exposures, 5 for three), the flow
network aligns every neighbour to the centre and the weight network blends the centre,
the warped and the unwarped neighbours into a coarse HDR ``H_i^c``. The centre's own
exposure is never resampled, so where it is well exposed the blend can keep it exactly;
RefineNet then refines the rest in the feature space.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from infer.net.flow import SpyFlowNet, flow_warp
from infer.net.ops import SAT_END, agreement, check_shape, ldr_to_hdr, merge_prior, motion_edges
from infer.net.weights import WeightNet


class CoarseNet(nn.Module):
    """Flow network + weight network → coarse HDR of the window centre.

    Args:
        exposures: 2 or 3; the window has 2·exposures - 1 frames.
        width: channel multiplier.
        learned_flow: the paper's flow network (True), or none: every call then passes
            external flows, e.g. exposure-matched DIS (design §4's variant).
        weight_prior: the weight network corrects the classical merge's weights instead of
            predicting them from nothing (see ``infer.net.weights``), and, as the classical
            merge does, a clipped centre pixel bounds the blend from below (its radiance is
            at least its clip level: a misaligned or moved neighbour cannot darken it).
        prior_per_channel: the prior rolls each frame's weight off per colour channel, so a
            pixel with one clipped channel keeps its other two (as the classical merge's
            per-channel mask does for the reference), rather than by its brightest channel.
        frames: frames of the window; None: the paper's 2·exposures − 1 (a wider window needs
            external flows: the flow network is built for the paper's).
        motion_edges: the weight network also sees where each neighbour's flow breaks
            (``ops.motion_edges``, one channel a neighbour), a noise-free cue to occlusion.
        unwarped_behind_clip: where the reference is clipped, a warped neighbour's pixel is
            replaced by the unwarped one wherever that agrees better with the clip (the flow
            there is inferred, not measured; as ``ClassicalConfig.unwarped_behind_clip``).
    """

    multiple = SpyFlowNet.multiple  # 16: five pyramid levels

    def __init__(self, exposures: int = 2, width: float = 1.0, learned_flow: bool = True,
                 weight_prior: bool = False, prior_per_channel: bool = False, frames: int | None = None,
                 motion_edges: bool = False, unwarped_behind_clip: bool = False) -> None:
        super().__init__()
        self.unwarped_behind_clip = unwarped_behind_clip
        self.prior_per_channel = prior_per_channel
        self.exposures = exposures
        self.frames = frames or 2 * exposures - 1
        if learned_flow and self.frames != 2 * exposures - 1:
            raise ValueError(f"CoarseNet: the flow network takes windows of {2 * exposures - 1} frames, "
                             f"not {self.frames}; pass flows (learned_flow=False)")
        self.flow = SpyFlowNet(exposures, width) if learned_flow else None
        self.edge_cue = motion_edges
        self.weight = WeightNet(2 * self.frames - 1, width, prior=weight_prior,
                                cues=self.frames - 1 if motion_edges else 0)

    def forward(
        self, ldr: Tensor, expo: Tensor, flows: Tensor | None = None, return_aux: bool = False
    ) -> Tensor | dict[str, Tensor]:
        """Coarse HDR of the window centre.

        Args:
            ldr: (b, C, 3, H, W) gamma-2.2 LDRs of the window, centre C // 2.
            expo: (b, C) relative exposure times (≥ 1).
            flows: optional (b, C-1, 2, H, W) centre→neighbour flows in pixels (neighbours in
                window order) to use instead of the flow network, e.g. a classical flow
                (design §4 allows a DIS-flow CoarseNet variant).
            return_aux: also return flows and blending weights.

        Returns:
            (b, 3, H, W) coarse linear HDR; with ``return_aux`` a dict with "hdr",
            "flows" (b, C-1, 2, H, W) and "weights" (b, 2C-1, 3, H, W) — images ordered
            centre, warped neighbours, unwarped neighbours.
        """
        b, n, _, h, w = ldr.shape
        c = n // 2
        nbrs = [j for j in range(n) if j != c]
        if flows is None:
            if self.flow is None:
                raise ValueError("CoarseNet: this network has no flow network (DIS-flow variant); pass flows")
            flows = self.flow(ldr, expo)  # (b, n-1, 2, H, W)
        else:
            check_shape(flows, "CoarseNet: flows", (b, n - 1, 2, h, w))
        nbr_ldr = ldr[:, nbrs]  # (b, n-1, 3, H, W)
        warped = flow_warp(nbr_ldr.flatten(0, 1), flows.flatten(0, 1)).view_as(nbr_ldr)
        if self.unwarped_behind_clip:
            warped = self._unwarped_behind_clip(ldr[:, c], warped, nbr_ldr, expo[:, c], expo[:, nbrs])
        images = torch.cat((ldr[:, c : c + 1], warped, nbr_ldr), dim=1)  # (b, 2n-1, 3, H, W)
        t = torch.cat((expo[:, c : c + 1], expo[:, nbrs], expo[:, nbrs]), dim=1)  # (b, 2n-1)
        hdrs = ldr_to_hdr(images, t)  # (b, 2n-1, 3, H, W)
        x = torch.cat((hdrs, images.clamp(0.0, 1.0)), dim=2).flatten(1, 2)  # (b, 6(2n-1), H, W)
        if self.edge_cue:
            x = torch.cat((x, motion_edges(flows).to(x.dtype)), dim=1)  # + (b, n-1, H, W)
        prior = merge_prior(images, t, per_channel=self.prior_per_channel) if self.weight.prior else None
        hdr, weights = self.weight(x, hdrs, prior)
        if self.weight.prior:  # a clipped centre bounds the radiance from below (as the classical merge)
            clipped = (images[:, 0] >= SAT_END).to(hdr.dtype)
            hdr = torch.maximum(hdr, hdrs[:, 0] * clipped)
        if return_aux:
            return {"hdr": hdr, "flows": flows, "weights": weights}
        return hdr

    @staticmethod
    def _unwarped_behind_clip(ref: Tensor, warped: Tensor, unwarped: Tensor, t_ref: Tensor, t_nbr: Tensor) -> Tensor:
        """``warped`` (b, k, 3, H, W) with the unwarped neighbour wherever the reference
        (b, 3, H, W) is clipped and that agrees better with it (by 1e-3, not by rounding)."""
        clipped = (ref.amax(dim=1, keepdim=True) >= SAT_END)[:, None]  # (b, 1, 1, H, W)
        if not bool(clipped.any()):
            return warped
        t = torch.cat((t_ref[:, None], t_nbr), dim=1).to(ref.dtype)[..., None, None, None]  # (b, 1 + k, 1, 1, 1)
        with torch.no_grad():
            a_w = agreement(torch.cat((ref[:, None], warped), dim=1).clamp(0.0, 1.0), t)[:, 1:]
            a_u = agreement(torch.cat((ref[:, None], unwarped), dim=1).clamp(0.0, 1.0), t)[:, 1:]
        use = clipped & (a_u > a_w + 1e-3)  # (b, k, 1, H, W)
        return torch.where(use, unwarped, warped)
