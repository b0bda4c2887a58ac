"""infer.net.deform: modulated deformable convolution (pure PyTorch vs. a naive loop, torchvision)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infer.net.deform import ModulatedDeformConv, backend, deform_conv2d, deform_conv2d_torch


def bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img (c, h, w) sampled at (y, x), zeros outside, as the DCN kernels do."""
    _, h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def naive_deform_conv2d(inp, offset, weight, bias, mask, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Direct per-pixel, per-tap loop over the DCNv2 definition (float64)."""
    inp, offset, weight, mask = (t.double() for t in (inp, offset, weight, mask))
    b_, cin, _, _ = inp.shape
    cout, cin_g, kh, kw = weight.shape
    k = kh * kw
    g = offset.shape[1] // (2 * k)
    cg, wg = cin // g, cin // cin_g
    ho, wo = offset.shape[2:]
    out = torch.zeros(b_, cout, ho, wo, dtype=torch.float64)
    for b in range(b_):
        for oy in range(ho):
            for ox in range(wo):
                cols = torch.zeros(cin, k, dtype=torch.float64)
                for gi in range(g):
                    for ki in range(kh):
                        for kj in range(kw):
                            t = ki * kw + kj
                            y = oy * stride[0] - padding[0] + ki * dilation[0] + offset[b, gi * 2 * k + 2 * t, oy, ox].item()
                            x = ox * stride[1] - padding[1] + kj * dilation[1] + offset[b, gi * 2 * k + 2 * t + 1, oy, ox].item()
                            val = bilinear(inp[b, gi * cg : (gi + 1) * cg], y, x)
                            cols[gi * cg : (gi + 1) * cg, t] = val * mask[b, gi * k + t, oy, ox]
                per = cout // wg
                for o in range(wg):
                    wmat = weight[o * per : (o + 1) * per].reshape(per, -1)
                    out[b, o * per : (o + 1) * per, oy, ox] = wmat @ cols[o * cin_g : (o + 1) * cin_g].reshape(-1)
    if bias is not None:
        out += bias.double().view(1, -1, 1, 1)
    return out


def random_problem(seed=0, b=2, cin=4, cout=6, h=5, w=6, groups=2, wgroups=1, stride=1, padding=1, dilation=1):
    g = torch.Generator().manual_seed(seed)
    k = 9
    ho = (h + 2 * padding - dilation * 2 - 1) // stride + 1
    wo = (w + 2 * padding - dilation * 2 - 1) // stride + 1
    inp = torch.randn(b, cin, h, w, generator=g)
    offset = 2.5 * torch.randn(b, 2 * groups * k, ho, wo, generator=g)  # some taps land outside
    mask = torch.rand(b, groups * k, ho, wo, generator=g)
    weight = torch.randn(cout, cin // wgroups, 3, 3, generator=g)
    bias = torch.randn(cout, generator=g)
    return inp, offset, weight, bias, mask


class TestPureImplementation:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {},
            {"groups": 4, "cin": 8},
            {"groups": 2, "wgroups": 2, "cout": 4},
            {"stride": 2, "h": 7, "w": 6},
            {"dilation": 2, "padding": 2},
            {"b": 1, "groups": 1, "padding": 0},
        ],
    )
    @pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
    def test_matches_naive_loop(self, kwargs, grad):
        """Both paths: with autograd, and the in-place one inference takes."""
        inp, offset, weight, bias, mask = random_problem(**kwargs)
        s, p, d = kwargs.get("stride", 1), kwargs.get("padding", 1), kwargs.get("dilation", 1)
        with torch.set_grad_enabled(grad):
            got = deform_conv2d(inp, offset, weight, bias, mask, stride=s, padding=p, dilation=d, impl="torch")
        want = naive_deform_conv2d(inp, offset, weight, bias, mask, (s, s), (p, p), (d, d))
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
    def test_row_bands_equal_one_shot(self, grad):
        """Bands of output rows (a shared sampling grid in inference) give the one-shot
        result, for channels-last offsets and masks as a channels-last model makes them."""
        inp, offset, weight, bias, mask = random_problem(h=9, w=7)
        full = deform_conv2d_torch(inp, offset, weight, bias, mask, padding=(1, 1))
        cl = [t.contiguous(memory_format=torch.channels_last) for t in (inp, offset, mask)]
        with torch.set_grad_enabled(grad):
            for a, o, m in ((inp, offset, mask), cl):
                banded = deform_conv2d_torch(a, o, weight, bias, m, padding=(1, 1), column_budget=1)
                torch.testing.assert_close(banded, full)

    def test_module_gives_the_same_in_inference_and_with_autograd(self):
        torch.manual_seed(3)
        dcn = ModulatedDeformConv(8, 6, 5, deform_groups=2, impl="torch")
        with torch.no_grad():
            dcn.conv_offset.weight.normal_(0, 0.5)  # offsets and masks away from their start
        x, feat = torch.randn(2, 8, 7, 9), torch.randn(2, 5, 7, 9)
        with torch.inference_mode():
            fast = dcn(x, feat)
        torch.testing.assert_close(fast, dcn(x, feat).detach())

    def test_zero_offsets_unit_mask_is_a_convolution(self):
        inp, offset, weight, bias, mask = random_problem()
        got = deform_conv2d(inp, torch.zeros_like(offset), weight, bias, torch.ones_like(mask), padding=1, impl="torch")
        torch.testing.assert_close(got, F.conv2d(inp, weight, bias, padding=1), atol=1e-5, rtol=1e-5)

    def test_integer_offset_shifts(self):
        inp, offset, weight, bias, mask = random_problem(groups=1)
        offset = torch.zeros_like(offset)
        offset[:, 1::2] = 1.0  # every tap one pixel to the right
        got = deform_conv2d(inp, offset, weight, None, torch.ones_like(mask), padding=1, impl="torch")
        # tap (ki, kj) of output (y, x) reads input (y - 1 + ki, x + kj): a conv padded 0 left, 2 right
        want = F.conv2d(F.pad(inp, (0, 2, 1, 1)), weight)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    def test_gradcheck(self):
        inp, offset, weight, bias, mask = (t.double() for t in random_problem(b=1, cin=2, cout=2, h=3, w=4, groups=2))
        for t in (inp, offset, weight, bias, mask):
            t.requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda *a: deform_conv2d(*a, padding=1, impl="torch"), (inp, offset, weight, bias, mask), atol=1e-6
        )

    def test_bad_shapes(self):
        inp, offset, weight, bias, mask = random_problem()
        with pytest.raises(ValueError, match="offset"):
            deform_conv2d(inp, offset[:, :-1], weight, bias, mask, padding=1)
        with pytest.raises(ValueError, match="mask"):
            deform_conv2d(inp, offset, weight, bias, mask[:, :-1], padding=1)
        with pytest.raises(ValueError, match="impl"):
            deform_conv2d(inp, offset, weight, bias, mask, padding=1, impl="cuda")


def test_backend_reports_pure_torch_without_torchvision():
    try:
        import torchvision.ops  # noqa: F401
    except Exception:
        assert backend("cpu") == "torch"
    else:
        assert backend("cpu") in ("torch", "torchvision")


def test_matches_torchvision():
    tv = pytest.importorskip("torchvision.ops")
    inp, offset, weight, bias, mask = random_problem(groups=2, stride=1)
    want = tv.deform_conv2d(inp, offset, weight, bias, padding=(1, 1), mask=mask)
    got = deform_conv2d(inp, offset, weight, bias, mask, padding=1, impl="torch")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class TestModulatedDeformConv:
    def test_starts_as_half_weight_convolution(self):
        torch.manual_seed(0)
        dcn = ModulatedDeformConv(8, 4, offset_channels=5, deform_groups=4)
        x, feat = torch.randn(2, 8, 6, 7), torch.randn(2, 5, 6, 7)
        want = F.conv2d(x, 0.5 * dcn.weight, dcn.bias, padding=1)  # offsets 0, masks sigmoid(0)
        torch.testing.assert_close(dcn(x, feat), want, atol=1e-5, rtol=1e-5)

    def test_offset_conv_gets_gradient_at_zero_init(self):
        torch.manual_seed(0)
        dcn = ModulatedDeformConv(8, 4, offset_channels=5, deform_groups=2)
        x, feat = torch.randn(1, 8, 6, 6), torch.randn(1, 5, 6, 6)
        dcn(x, feat).square().mean().backward()
        for name, p in dcn.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    def test_rejects_groups_not_dividing_channels(self):
        with pytest.raises(ValueError, match="deform_groups"):
            ModulatedDeformConv(6, 4, offset_channels=6, deform_groups=4)
