"""A learned correction of the noise filter's output (``NetConfig.learned_denoise``).

The classical merge and the network both end with the bilateral filter of
``infer.denoise``: it works in y = sqrt(H·t_ref), where the noise the merge keeps has a
known deviation σ (per pixel, from the light merged there). A bilateral filter can only
average neighbours that look alike; it leaves grain on texture and blurs fine detail
that is near the noise level. This small U-Net sees the filtered and the unfiltered y
and σ, and adds a residual in units of σ, so at initialisation (last conv zero) it is
the bilateral filter exactly, and training only has to learn what the filter gets wrong.
It runs after the classical gate, on the final HDR; the classical merge keeps the plain
filter.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from infer.net.ops import lrelu, scaled

MIN_SIGMA = 1e-4  # y units; a noise-free window's σ would make the residual's scale vanish
Y_FLOOR = 1e-6
DIFF_CLIP = 8.0  # |noisy - filtered| / σ beyond this is texture, whatever its size


def to_y(hdr: Tensor, t_ref: Tensor) -> Tensor:
    """Linear HDR (b, 3, H, W) per unit exposure → y = sqrt(H·t_ref), ``t_ref`` (b,); at least
    1e-6 (sqrt's slope at 0 is infinite: a black pixel would give a NaN gradient)."""
    return (hdr * t_ref.view(-1, 1, 1, 1)).clamp(min=Y_FLOOR**2).sqrt()


def from_y(y: Tensor, t_ref: Tensor) -> Tensor:
    """The inverse of :func:`to_y` (negative y counts as 0)."""
    return y.clamp(min=0.0).square() / t_ref.view(-1, 1, 1, 1)


def _inputs(filtered: Tensor, noisy: Tensor, sigma: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Both filters' input (b, 7, H', W'; padded to ``multiple``, replicate): the filtered y,
    the difference to it in units of σ, and log σ; and σ itself (floored)."""
    h, w = filtered.shape[-2:]
    s = sigma.clamp(min=MIN_SIGMA)
    diff = ((noisy - filtered) / s).clamp(-DIFF_CLIP, DIFF_CLIP) / 4.0
    x = torch.cat((filtered, diff, (s.log() + 5.0) / 2.0), dim=1)
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, s


class NoiseNet(nn.Module):
    """filtered y + σ · residual(filtered y, (noisy − filtered) / σ, log σ).

    Three down-sampling levels (about 40 px of context: the noise a bilateral filter leaves
    is low-frequency blotches).

    Args:
        width: channel multiplier (1.0: 32 / 64 / 96 / 128 channels at 1, 1/2, 1/4, 1/8
            resolution; ~25 k multiply-adds a pixel).
    """

    multiple = 8

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4 = scaled(32, width), scaled(64, width), scaled(96, width), scaled(128, width)
        self.enc1 = nn.Conv2d(7, c1, 3, 1, 1)
        self.down1 = nn.Conv2d(c1, c2, 3, 2, 1)
        self.enc2 = nn.Conv2d(c2, c2, 3, 1, 1)
        self.down2 = nn.Conv2d(c2, c3, 3, 2, 1)
        self.enc3 = nn.Conv2d(c3, c3, 3, 1, 1)
        self.down3 = nn.Conv2d(c3, c4, 3, 2, 1)
        self.mid = nn.Conv2d(c4, c4, 3, 1, 1)
        self.up3 = nn.ConvTranspose2d(c4, c3, 4, 2, 1)
        self.dec3 = nn.Conv2d(2 * c3, c3, 3, 1, 1)
        self.up2 = nn.ConvTranspose2d(c3, c2, 4, 2, 1)
        self.dec2 = nn.Conv2d(2 * c2, c2, 3, 1, 1)
        self.up1 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
        self.dec1 = nn.Conv2d(2 * c1, c1, 3, 1, 1)
        self.last = nn.Conv2d(c1, 3, 3, 1, 1)
        with torch.no_grad():  # start as the bilateral filter
            self.last.weight.zero_()
            self.last.bias.zero_()

    def forward(self, filtered: Tensor, noisy: Tensor, sigma: Tensor) -> Tensor:
        """Corrected y (b, 3, H, W) from the filter's ``filtered`` and the unfiltered
        ``noisy`` y (b, 3, H, W), and the noise's deviation ``sigma`` (b, 1, H, W), y units.
        Any H and W: padded to a multiple of 8 (replicate) and cropped back."""
        h, w = filtered.shape[-2:]
        x, s = _inputs(filtered, noisy, sigma, self.multiple)
        f1 = lrelu(self.enc1(x))
        f2 = lrelu(self.enc2(lrelu(self.down1(f1))))
        f3 = lrelu(self.enc3(lrelu(self.down2(f2))))
        f4 = lrelu(self.mid(lrelu(self.down3(f3))))
        f3 = lrelu(self.dec3(torch.cat((lrelu(self.up3(f4)), f3), dim=1)))
        f2 = lrelu(self.dec2(torch.cat((lrelu(self.up2(f3)), f2), dim=1)))
        f1 = lrelu(self.dec1(torch.cat((lrelu(self.up1(f2)), f1), dim=1)))
        residual = self.last(f1)[..., :h, :w]
        return filtered + s * residual


class HalfResNoiseNet(nn.Module):
    """The same correction, computed at half resolution from the start: each 2×2 block of
    the input becomes one pixel of 28 channels (pixel-unshuffle) and the residual comes back
    the same way. The full-resolution U-Net spends ~85 % of its multiply-adds on 32-channel
    convolutions at full resolution; here the same budget buys twice the depth at 48 channels
    and halves the time a step takes (``denoise_arch = "half"``).

    Args:
        width: channel multiplier (1.0: 48 / 96 / 128 channels at 1/2, 1/4, 1/8 resolution;
            ~1.07 M parameters).
    """

    multiple = 8

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = scaled(48, width), scaled(96, width), scaled(128, width)
        self.enc1 = nn.Conv2d(28, c1, 3, 1, 1)
        self.enc1b = nn.Conv2d(c1, c1, 3, 1, 1)
        self.down1 = nn.Conv2d(c1, c2, 3, 2, 1)
        self.enc2 = nn.Conv2d(c2, c2, 3, 1, 1)
        self.down2 = nn.Conv2d(c2, c3, 3, 2, 1)
        self.mid = nn.Conv2d(c3, c3, 3, 1, 1)
        self.midb = nn.Conv2d(c3, c3, 3, 1, 1)
        self.up2 = nn.ConvTranspose2d(c3, c2, 4, 2, 1)
        self.dec2 = nn.Conv2d(2 * c2, c2, 3, 1, 1)
        self.up1 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
        self.dec1 = nn.Conv2d(2 * c1, c1, 3, 1, 1)
        self.dec1b = nn.Conv2d(c1, c1, 3, 1, 1)
        self.last = nn.Conv2d(c1, 12, 3, 1, 1)
        with torch.no_grad():  # start as the bilateral filter
            self.last.weight.zero_()
            self.last.bias.zero_()

    def forward(self, filtered: Tensor, noisy: Tensor, sigma: Tensor) -> Tensor:
        """As :meth:`NoiseNet.forward`."""
        h, w = filtered.shape[-2:]
        x, s = _inputs(filtered, noisy, sigma, self.multiple)
        f1 = lrelu(self.enc1b(lrelu(self.enc1(F.pixel_unshuffle(x, 2)))))
        f2 = lrelu(self.enc2(lrelu(self.down1(f1))))
        f3 = lrelu(self.midb(lrelu(self.mid(lrelu(self.down2(f2))))))
        f2 = lrelu(self.dec2(torch.cat((lrelu(self.up2(f3)), f2), dim=1)))
        f1 = lrelu(self.dec1b(lrelu(self.dec1(torch.cat((lrelu(self.up1(f2)), f1), dim=1)))))
        residual = F.pixel_shuffle(self.last(f1), 2)[..., :h, :w]
        return filtered + s * residual


DENOISE_ARCHS = ("full", "half")


def noise_net(arch: str, width: float) -> NoiseNet | HalfResNoiseNet:
    """The learned filter of ``NetConfig.denoise_arch``: "full" (:class:`NoiseNet`, in files
    written before the choice existed) or "half" (:class:`HalfResNoiseNet`)."""
    if arch == "full":
        return NoiseNet(width)
    if arch == "half":
        return HalfResNoiseNet(width)
    raise ValueError(f"denoise_arch must be one of {DENOISE_ARCHS}, got {arch!r}")
