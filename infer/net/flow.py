"""CoarseNet's flow network: a SPyNet-style pyramid that aligns neighbours to the reference.

Paper §3.2 (and its supplementary): CoarseNet follows Kalantari & Ramamoorthi 2019 — a
flow network warps the neighbouring frames to the reference before a weight network
blends them. The flow network is a 5-level spatial pyramid (SPyNet): at each level, from
coarse to fine, the neighbours are warped by the upsampled flow of the level below and a
small conv net (5×5 convs, 9→100→50→25→4 for two exposures) predicts the residual flow.

Frames of different exposures are compared through an exposure-matched copy of the
reference (``ops.exposure_match``): neighbours that share an exposure form a *pair* and
are estimated together with the reference matched to that exposure —

* 2 exposures, window (i-1, i, i+1): one pair (i-1, i+1): input 3 images = 9 channels,
  output 2 flows = 4 channels.
* 3 exposures, window (i-2 … i+2): pairs (i-2, i+1) and (i-1, i+2) (period 3): input
  6 images = 18 channels, output 4 flows = 8 channels.

Flows are in pixels, reference → neighbour (backward warping: ``warped(x) = nbr(x + f(x))``),
and clamped to ±200 px as in the reference code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from infer.net.ops import exposure_match, lrelu, scaled

LEVELS = 5
MAX_FLOW = 200.0


def flow_warp(x: Tensor, flow: Tensor, padding_mode: str = "border") -> Tensor:
    """Backward-warp ``x`` by ``flow``: ``out(p) = x(p + flow(p))``, bilinear.

    Args:
        x: (b, c, h, w) image or feature.
        flow: (b, 2, h, w) displacement (dx, dy) in pixels.
        padding_mode: 'border' (default: repeats edge pixels instead of pulling in black,
            which would look like an under-exposed region to the weight network) or 'zeros'.

    Returns:
        (b, c, h, w).
    """
    b, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    px = xs + flow[:, 0]  # (b, h, w)
    py = ys + flow[:, 1]
    # align_corners=False: pixel p sits at (2p + 1) / size - 1 in grid_sample's [-1, 1].
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)  # (b, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def upsample_flow(flow: Tensor) -> Tensor:
    """Double the resolution of a flow field and its magnitude (pixels of the finer level)."""
    return 2.0 * F.interpolate(flow, scale_factor=2.0, mode="bilinear", align_corners=False)


def exposure_pairs(exposures: int) -> list[tuple[int, int]]:
    """Neighbour pairs of a CoarseNet window of 2·E-1 frames that share an exposure.

    With a cycle of E exposures, frames j and j+E have the same exposure: (0, 2) for E = 2;
    (0, 3) and (1, 4) for E = 3.
    """
    return [(j, j + exposures) for j in range(exposures - 1)]


class FlowLevel(nn.Module):
    """One pyramid level: four 5×5 convs (base widths 100-50-25) predicting residual flows.

    Args:
        in_channels: 9 per pair of neighbours (neighbour a, matched reference, neighbour b).
        out_channels: 4 per pair (flow to a, flow to b).
        width: channel multiplier of the hidden layers.
    """

    def __init__(self, in_channels: int, out_channels: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = scaled(100, width), scaled(50, width), scaled(25, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 5, 1, 2)
        self.conv2 = nn.Conv2d(c1, c2, 5, 1, 2)
        self.conv3 = nn.Conv2d(c2, c3, 5, 1, 2)
        self.conv4 = nn.Conv2d(c3, out_channels, 5, 1, 2)
        # Small last layer: the initial flow is nearly zero (identity warp) but every layer
        # still receives gradient from the first step.
        with torch.no_grad():
            self.conv4.weight.mul_(0.1)
            self.conv4.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """x (b, 9·P, h, w) → residual flows (b, 4·P, h, w)."""
        x = lrelu(self.conv1(x))
        x = lrelu(self.conv2(x))
        x = lrelu(self.conv3(x))
        return self.conv4(x)


class SpyFlowNet(nn.Module):
    """SPyNet-style coarse-to-fine flow from the window centre to each neighbour.

    Five levels with separate weights, average-pool pyramid, flows upsampled ×2 and refined
    by a residual at each level (Ranjan & Black 2017; reference code ``spynet_triple`` /
    ``spynet_2triple``). Inputs must be multiples of 16 (2^(levels-1)).

    Args:
        exposures: 2 or 3 (window of 3 or 5 frames).
        width: channel multiplier.
    """

    multiple = 2 ** (LEVELS - 1)

    def __init__(self, exposures: int = 2, width: float = 1.0) -> None:
        super().__init__()
        self.exposures = exposures
        self.frames = 2 * exposures - 1
        self.pairs = exposure_pairs(exposures)
        p = len(self.pairs)
        self.levels = nn.ModuleList(FlowLevel(9 * p, 4 * p, width) for _ in range(LEVELS))

    def forward(self, ldr: Tensor, expo: Tensor) -> Tensor:
        """Flows from the window centre to every neighbour.

        Args:
            ldr: (b, C, 3, H, W) window of gamma-2.2 LDRs, C = 2·E-1, centre C // 2.
            expo: (b, C) relative exposure times.

        Returns:
            (b, C-1, 2, H, W) flows in pixels, neighbours in window order (centre skipped).
        """
        b, _, _, h, w = ldr.shape
        c = self.frames // 2
        ia = [a for a, _ in self.pairs]
        ib = [bb for _, bb in self.pairs]
        p = len(self.pairs)
        nbr_a, nbr_b = ldr[:, ia], ldr[:, ib]  # (b, p, 3, H, W) each
        ref = ldr[:, c : c + 1].expand(-1, p, -1, -1, -1)
        ref_matched = exposure_match(ref, expo[:, c : c + 1], expo[:, ia])  # (b, p, 3, H, W)

        # Average-pool pyramids, finest first; images of all pairs stacked along the batch.
        pyr_a, pyr_m, pyr_b = [nbr_a.flatten(0, 1)], [ref_matched.flatten(0, 1)], [nbr_b.flatten(0, 1)]
        for _ in range(LEVELS - 1):
            pyr_a.append(F.avg_pool2d(pyr_a[-1], 2))
            pyr_m.append(F.avg_pool2d(pyr_m[-1], 2))
            pyr_b.append(F.avg_pool2d(pyr_b[-1], 2))

        flow = None  # (b·p, 4, h_l, w_l): flows to a (0:2) and to b (2:4)
        for level, net in enumerate(self.levels):
            i = LEVELS - 1 - level  # coarsest first
            a, m, bb = pyr_a[i], pyr_m[i], pyr_b[i]
            if flow is not None:
                flow = upsample_flow(flow)
                a = flow_warp(a, flow[:, 0:2])
                bb = flow_warp(bb, flow[:, 2:4])
            hl, wl = a.shape[-2:]
            x = torch.cat((a, m, bb), dim=1).reshape(b, p * 9, hl, wl)  # (b, 9·p, h_l, w_l)
            residual = net(x).reshape(b * p, 4, hl, wl)
            flow = residual if flow is None else flow + residual
            flow = flow.clamp(-MAX_FLOW / 2**i, MAX_FLOW / 2**i)

        flow = flow.reshape(b, p, 2, 2, h, w)  # (b, pair, a|b, xy, H, W)
        return torch.cat((flow[:, :, 0], flow[:, :, 1]), dim=1)  # neighbours a..., then b...
