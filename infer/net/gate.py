"""A learned per-pixel choice between the network's HDR and the classical merge's.

The classical merge (``infer.classical``) averages every frame of the window that agrees
with the reference, the nearest frames of the reference's own exposure included: where the
window is static and nothing clips, it is a burst denoiser that a network which sees three
frames cannot match. The network wins where things move and where the reference clips. The
gate sees both outputs (μ-law), their difference, the merge's own confidence (the
reference's saturation roll-off times every neighbour's agreement with it) and the
reference frame, and says per pixel how much of the merge to take:
``H = g·H_classical + (1 − g)·H_net``. Three small convolutions (radius 4 px, ~4.8 k
parameters); it starts at g = 0.5 and is trained with the rest of the network frozen
(training stage "gate"). ``NetConfig.classical_gate`` off is the paper's network.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from infer.net.ops import check_shape, lrelu, mu_law

IN_CHANNELS = 13  # μ(H_net) 3, μ(H_classical) 3, |difference| 3, confidence 1, reference LDR 3


class ClassicalGate(nn.Module):
    """Per-pixel blend weight of the classical merge against the network's output.

    Args:
        channels: feature channels of the two hidden convolutions.
        motion_cue: also see the neighbours' agreement with the reference on its own (a 14th
            input channel, last). The confidence multiplies it by the reference's saturation
            roll-off, so where the reference clips it is low whether or not anything moves;
            there the gate cannot tell a static clipped sky, where the network wins, from an
            object crossing it, where the classical merge does (the static split's worst frames).
    """

    radius = 4  # receptive field, px each side (3x3, 3x3 dilated 2, 3x3)

    def __init__(self, channels: int = 16, motion_cue: bool = False) -> None:
        super().__init__()
        self.motion_cue = motion_cue
        self.conv1 = nn.Conv2d(IN_CHANNELS + int(motion_cue), channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 2, dilation=2)
        self.conv3 = nn.Conv2d(channels, 1, 3, 1, 1)
        with torch.no_grad():  # start at g = 0.5 everywhere
            self.conv3.weight.mul_(0.01)
            self.conv3.bias.zero_()

    def forward(self, hdr: Tensor, classical: Tensor, confidence: Tensor, ldr_ref: Tensor,
                agreement: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Blend the two HDRs.

        Args:
            hdr: (b, 3, H, W) the network's HDR, normalised (1.0 saturates exposure 1).
            classical: (b, 3, H, W) the classical merge's, in the same units.
            confidence: (b, 1, H, W) the merge's confidence in [0, 1].
            ldr_ref: (b, 3, H, W) the reference frame, gamma values in [0, 1].
            agreement: (b, 1, H, W) the neighbours' agreement alone; required with ``motion_cue``.

        Returns:
            the blended HDR (b, 3, H, W) and the gate g (b, 1, H, W).
        """
        b, _, h, w = hdr.shape
        inputs = [("classical", classical, 3), ("confidence", confidence, 1), ("ldr_ref", ldr_ref, 3)]
        if self.motion_cue:
            if agreement is None:
                raise ValueError("ClassicalGate: this gate sees the motion cue; pass agreement")
            inputs.append(("agreement", agreement, 1))
        for name, t, c in inputs:
            check_shape(t, f"ClassicalGate: {name}", (b, c, h, w))
        a, m = mu_law(hdr.clamp(0.0, 1.0)), mu_law(classical.clamp(0.0, 1.0))
        cue = (agreement,) if self.motion_cue else ()
        x = torch.cat((a, m, (a - m).abs(), confidence, ldr_ref, *cue), dim=1)
        g = torch.sigmoid(self.conv3(lrelu(self.conv2(lrelu(self.conv1(x))))))
        return hdr + g * (classical - hdr), g
