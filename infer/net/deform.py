"""Modulated deformable convolution (DCNv2), with a pure-PyTorch fallback.

RefineNet aligns neighbouring features to the reference with deformable convolution
(paper §3.3, eqs. 2-3; PCD alignment of EDVR): a 3×3 kernel whose K = 9 taps sample the
input at learned fractional offsets, each tap scaled by a learned mask in [0, 1] (DCNv2).

``deform_conv2d`` uses ``torchvision.ops.deform_conv2d`` when torchvision imports and runs
on the tensor's device (the CUDA kernel is much faster), and otherwise a pure-PyTorch
implementation: ``grid_sample`` gathers the K sampled positions of every deformable
group, the mask scales them, and one matmul with the kernel finishes the convolution. It
is vectorised over pixels and taps; when the K-fold column tensor would be large it is
built a band of output rows at a time, so memory stays bounded at high resolution.

Layouts follow torchvision: ``offset`` (B, 2·G·K, Ho, Wo) holds (dy, dx) pairs, tap-major
within each deformable group g; ``mask`` (B, G·K, Ho, Wo). G (deformable groups) is
implied by the offset channels; weight groups by ``weight.shape[1]``.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

IMPLS = ("auto", "torch", "torchvision")
# Largest column tensor (elements) built at once by the pure implementation: 32 Mi floats
# = 128 MiB in float32. Larger problems are processed in bands of output rows.
COLUMN_BUDGET = 32 * 1024 * 1024

_tv_deform = None  # torchvision.ops.deform_conv2d once imported
_tv_reason: str | None = None  # why torchvision is unusable (None: not tried yet / usable)
_tv_works: dict[str, bool] = {}  # per device type: did a probe call succeed?


def _torchvision_deform():
    """``torchvision.ops.deform_conv2d`` or None (with the reason logged once)."""
    global _tv_deform, _tv_reason
    if _tv_deform is None and _tv_reason is None:
        try:
            from torchvision.ops import deform_conv2d as tv_deform  # noqa: PLC0415
        except Exception as exc:  # ImportError, or a torch/torchvision ABI mismatch
            _tv_reason = f"torchvision unavailable ({type(exc).__name__}: {exc})"
            log.info("deform_conv2d: %s; using the pure-PyTorch implementation", _tv_reason)
        else:
            _tv_deform = tv_deform
    return _tv_deform


def backend(device: torch.device | str) -> str:
    """Which implementation ``impl="auto"`` uses on ``device``: 'torchvision' or 'torch'."""
    device = torch.device(device)
    tv = _torchvision_deform()
    if tv is None:
        return "torch"
    if device.type not in _tv_works:
        try:  # a build without the kernel for this device raises here, not at import
            x = torch.zeros(1, 1, 3, 3, device=device)
            tv(x, torch.zeros(1, 18, 3, 3, device=device), torch.zeros(1, 1, 3, 3, device=device),
               padding=(1, 1), mask=torch.ones(1, 9, 3, 3, device=device))
            _tv_works[device.type] = True
        except Exception as exc:
            log.info("deform_conv2d: torchvision fails on %s (%s); using pure PyTorch", device.type, exc)
            _tv_works[device.type] = False
    return "torchvision" if _tv_works[device.type] else "torch"


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    impl: str = "auto",
) -> Tensor:
    """Modulated deformable 2-D convolution (DCNv2; same semantics as torchvision's).

    Args:
        input: (B, Cin, H, W).
        offset: (B, 2·G·K, Ho, Wo), K = kh·kw, (dy, dx) per tap and deformable group.
        weight: (Cout, Cin / weight_groups, kh, kw).
        bias: (Cout,) or None.
        mask: (B, G·K, Ho, Wo) modulation in [0, 1], or None (all ones: DCNv1).
        stride, padding, dilation: as for ``nn.Conv2d``.
        impl: 'auto' (torchvision where it works, else pure PyTorch), 'torch' or 'torchvision'.

    Returns:
        (B, Cout, Ho, Wo).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    b, cin, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    k = kh * kw
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if offset.dim() != 4 or offset.shape[0] != b or offset.shape[1] % (2 * k) or tuple(offset.shape[2:]) != (ho, wo):
        raise ValueError(f"offset must be (B={b}, 2·G·{k}, {ho}, {wo}), got {tuple(offset.shape)}")
    groups = offset.shape[1] // (2 * k)
    if cin % groups or cin % cin_g:
        raise ValueError(f"{cin} input channels do not split into {groups} deformable / {cin // cin_g} weight groups")
    if mask is not None and tuple(mask.shape) != (b, groups * k, ho, wo):
        raise ValueError(f"mask must be {(b, groups * k, ho, wo)}, got {tuple(mask.shape)}")

    use_tv = impl == "torchvision" or (impl == "auto" and backend(input.device) == "torchvision")
    if use_tv:
        tv = _torchvision_deform()
        if tv is None:
            raise RuntimeError(f"impl='torchvision' requested but {_tv_reason}")
        return tv(input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    return deform_conv2d_torch(input, offset, weight, bias, mask, stride, padding, dilation)


def deform_conv2d_torch(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    column_budget: int = COLUMN_BUDGET,
) -> Tensor:
    """Pure-PyTorch modulated deformable convolution (arguments as ``deform_conv2d``, unchecked).

    Bilinear sampling with zeros outside the image, exactly as the DCN CUDA kernels:
    ``grid_sample(align_corners=False)`` maps pixel coordinate p to (2p + 1)/size - 1.
    """
    b, cin, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    groups = offset.shape[1] // (2 * k)
    wgroups = cin // cin_g
    cg = cin // groups

    # Sampling positions in grid_sample's units, (2p + 1)/size - 1, as base + offset·2/size:
    # the base (tap position + output pixel) once, then one pass per coordinate and band into
    # a preallocated grid (at 1536x813 each full-size temporary is a 100+ MB pass).
    ky, kx = torch.meshgrid(
        torch.arange(kh, device=input.device, dtype=input.dtype) * dilation[0] - padding[0],
        torch.arange(kw, device=input.device, dtype=input.dtype) * dilation[1] - padding[1],
        indexing="ij",
    )
    ky, kx = ky.reshape(k, 1, 1), kx.reshape(k, 1, 1)
    ox = torch.arange(wo, device=input.device, dtype=input.dtype).view(1, 1, -1) * stride[1]
    base_x = (2 * (ox + kx) + 1) / w - 1  # (K, 1, wo)
    x_in = input.reshape(b * groups, cg, h, w)  # (b·g, c/g, h, w)
    w_mat = weight.reshape(wgroups, cout // wgroups, cin_g * k)  # columns ordered (c, k)
    in_place = not torch.is_grad_enabled()  # autograd needs the unmasked columns for the mask's gradient

    rows = max(1, min(ho, column_budget // max(1, b * cin * k * wo)))
    # inference: one grid for every band (the last one may use less of it)
    grid_buf = torch.empty(b * groups * k * rows * wo * 2, device=input.device, dtype=input.dtype) if in_place else None
    out = []
    for r0 in range(0, ho, rows):
        r1 = min(ho, r0 + rows)
        off = offset[:, :, r0:r1].reshape(b, groups, k, 2, r1 - r0, wo)  # (b, g, k, 2, r, wo)
        oy = torch.arange(r0, r1, device=input.device, dtype=input.dtype).view(1, -1, 1) * stride[0]
        base_y = (2 * (oy + ky) + 1) / h - 1  # (K, r, 1)
        if grid_buf is not None:
            grid = grid_buf[: b * groups * k * (r1 - r0) * wo * 2].view(b, groups, k, r1 - r0, wo, 2)
            torch.add(base_y, off[:, :, :, 0], alpha=2.0 / h, out=grid[..., 1])
            torch.add(base_x, off[:, :, :, 1], alpha=2.0 / w, out=grid[..., 0])
        else:
            grid = torch.stack((base_x + off[:, :, :, 1] * (2.0 / w), base_y + off[:, :, :, 0] * (2.0 / h)), dim=-1)
        grid = grid.reshape(b * groups, k * (r1 - r0), wo, 2)
        cols = F.grid_sample(x_in, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        cols = cols.view(b, groups, cg, k, r1 - r0, wo)  # (b, g, c/g, k, r, wo)
        if mask is not None:
            m = mask[:, :, r0:r1].reshape(b, groups, 1, k, r1 - r0, wo)
            cols = cols.mul_(m) if in_place else cols * m
        cols = cols.reshape(b, wgroups, cin_g * k, (r1 - r0) * wo)  # (b, wg, (c, k), r·wo)
        out.append(torch.matmul(w_mat, cols).reshape(b, cout, r1 - r0, wo))
    y = out[0] if len(out) == 1 else torch.cat(out, dim=2)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


class ModulatedDeformConv(nn.Module):
    """DCNv2 whose offsets and masks are predicted by a conv from a separate feature.

    As EDVR's ``DCNv2Pack``: ``conv_offset`` reads the offset feature (computed from the
    neighbour and reference features in PCD alignment) and predicts 2·G·K offsets and G·K
    mask logits. It starts at zero (offsets 0, masks 0.5), so training begins from a plain
    convolution and learns to deform; note that at this initial point the layers that feed
    ``conv_offset`` receive zero gradient until ``conv_offset`` itself has moved.

    Args:
        in_channels: channels of the sampled feature.
        out_channels: output channels.
        offset_channels: channels of the feature the offsets are predicted from.
        kernel_size: square kernel size (3 in the paper).
        deform_groups: deformable groups G (8 in the paper): each group of in_channels / G
            channels gets its own offsets.
        impl: passed to ``deform_conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        offset_channels: int,
        kernel_size: int = 3,
        deform_groups: int = 8,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if in_channels % deform_groups:
            raise ValueError(f"in_channels {in_channels} not divisible by deform_groups {deform_groups}")
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        self.deform_groups = deform_groups
        self.impl = impl
        k = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.conv_offset = nn.Conv2d(offset_channels, 3 * deform_groups * k, kernel_size, 1, self.padding)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor, feat: Tensor) -> Tensor:
        """x (b, c, h, w) sampled feature; feat (b, c_off, h, w) offset feature → (b, c_out, h, w)."""
        gk = self.deform_groups * self.kernel_size**2
        out = self.conv_offset(feat)  # (b, 3·g·k, h, w)
        offset, mask = out[:, : 2 * gk], out[:, 2 * gk :]
        # NCHW masks whatever the conv's layout: the sampling multiplies them band by band,
        # and a channels-last slice would make each of those a slow strided pass. In
        # inference the sigmoid runs in place, in the conv's own memory order (fast).
        mask = (torch.sigmoid(mask) if torch.is_grad_enabled() else mask.sigmoid_()).contiguous()
        return deform_conv2d(x, offset, self.weight, self.bias, mask, padding=self.padding, impl=self.impl)
