"""Decode any payload of :mod:`hdrstream.pixfmt` to float RGB code values in [0, 1].

Demosaicing matters more than it looks: on the simulated camera, OpenCV's edge-aware
(EA) and bilinear demosaics cost ~4 dB PSNR-μ of the final HDR against the methods used
here. 8-bit mosaics use OpenCV's VNG (~7 ms at 1536×814, 8-bit only). Deeper ones use VNG
on their 8-bit rounding plus the rounding's remainder demosaiced by the Malvar-He-Cutler
linear filters (float, any depth): VNG's edges with every bit kept. The Malvar-He-Cutler
filters alone cost 1.3 dB PSNR-μ of the final HDR against VNG (classical, 2 exposures,
BayerRG8 and BayerRG12 validation sequences).

GenICam names a mosaic after the colours at (0, 0) and (0, 1); OpenCV after the 2×2
block starting at (1, 1), hence the shifted table below.
"""
from __future__ import annotations

import cv2
import numpy as np

from hdrstream.crf import CRF
from hdrstream.frame import Frame
from hdrstream.pixfmt import PixelFormat, check_layout, pixel_format, unit_values

# GenICam pattern -> OpenCV VNG demosaic code to RGB.
_VNG_TO_RGB = {
    "RG": cv2.COLOR_BayerBG2RGB_VNG,
    "GR": cv2.COLOR_BayerGB2RGB_VNG,
    "GB": cv2.COLOR_BayerGR2RGB_VNG,
    "BG": cv2.COLOR_BayerRG2RGB_VNG,
}
# Colours of the 2x2 cell, row-major, for each GenICam pattern.
_CELL = {"RG": "RGGB", "GR": "GRBG", "GB": "GBRG", "BG": "BGGR"}

# Malvar, He & Cutler 2004, "High-quality linear interpolation for demosaicing of
# Bayer-patterned color images": 5x5 kernels (÷8) for the missing colours at a site.
_MHC_G_AT_RB = np.float32([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1],
                           [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]]) / 8
_MHC_ROW = np.float32([[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1],
                       [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]]) / 8  # at G: colour of its row
_MHC_COL = np.ascontiguousarray(_MHC_ROW.T)  # at G: colour of its column
_MHC_DIAG = np.float32([[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5],
                        [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]]) / 8  # R at B, B at R


def demosaic_mhc(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Malvar-He-Cutler demosaic: (H, W) mosaic -> float32 (H, W, 3) in the mosaic's units.

    Reflect-101 borders keep the colour pattern's parity, so edges need no special case.
    """
    m = raw.astype(np.float32)
    conv = {name: cv2.filter2D(m, -1, k, borderType=cv2.BORDER_REFLECT_101)
            for name, k in (("g", _MHC_G_AT_RB), ("row", _MHC_ROW), ("col", _MHC_COL), ("diag", _MHC_DIAG))}
    cell = _CELL[pattern]
    out = np.empty(m.shape + (3,), np.float32)
    for i, colour in enumerate(cell):
        dy, dx = divmod(i, 2)
        site = (slice(dy, None, 2), slice(dx, None, 2))
        out[site + ("RGB".index(colour),)] = m[site]
        if colour == "G":
            out[site + ("RGB".index(cell[2 * dy + 1 - dx]),)] = conv["row"][site]
            out[site + ("RGB".index(cell[2 * (1 - dy) + dx]),)] = conv["col"][site]
        else:
            out[site + (1,)] = conv["g"][site]
            out[site + ("RGB".index(cell[3 - i]),)] = conv["diag"][site]
    return out


def demosaic_deep(raw: np.ndarray, pattern: str, white: int) -> np.ndarray:
    """Mosaic deeper than 8 bits -> float32 (H, W, 3) in its own units: VNG of the 8-bit
    rounding, plus the remainder (under half an 8-bit step) demosaiced linearly."""
    x = raw.astype(np.float32) * np.float32(255.0 / white)
    q = np.clip(np.rint(x), 0, 255)
    rgb = cv2.cvtColor(q.astype(np.uint8), _VNG_TO_RGB[pattern]).astype(np.float32)
    x -= q
    rgb += demosaic_mhc(x, pattern)
    rgb *= np.float32(white / 255.0)
    return rgb


def to_codes(frame: Frame) -> tuple[np.ndarray, str] | None:
    """Frame payload -> its integer RGB codes (H, W, 3) and their pixel format (``RGB8``,
    ``RGB12``, ...), where decoding keeps integers: RGB, BGR, mono and 8-bit mosaics (VNG
    works in 8 bits). None for float payloads and deeper mosaics.

    Raises ValueError (``UnknownPixelFormat`` included) for payloads that do not match
    their pixel format, so a caller can count and skip the frame.
    """
    fmt, data = _checked(frame)
    if fmt.is_float or (fmt.bayer and fmt.bits != 8):
        return None
    if fmt.bayer:
        rgb = cv2.cvtColor(np.ascontiguousarray(data), _VNG_TO_RGB[fmt.bayer])
    elif fmt.channels == 1:
        rgb = np.repeat(data[:, :, None], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(data[:, :, ::-1]) if fmt.bgr else data
    return rgb, f"RGB{fmt.bits}"


def to_rgb(frame: Frame) -> np.ndarray:
    """Frame payload -> float32 (H, W, 3) code values in [0, 1] (ValueError as ``to_codes``)."""
    decoded = to_codes(frame)
    if decoded is not None:
        codes, name = decoded
        return unit_values(codes, pixel_format(name).white)
    fmt, data = _checked(frame)
    if fmt.is_float:  # a float camera may send NaN/inf; nothing downstream wants them
        out = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(out, 0.0, 1.0, out=out)
    out = demosaic_deep(data, fmt.bayer, fmt.white)  # may overshoot at edges: clipped here
    out *= np.float32(1.0 / fmt.white)
    return np.clip(out, 0.0, 1.0, out=out)


def _checked(frame: Frame) -> tuple[PixelFormat, np.ndarray]:
    fmt = pixel_format(frame.pixel_format)
    data = np.asarray(frame.data)
    check_layout(fmt, data.shape, data.dtype)
    if fmt.channels == 3 and data.ndim != 3:
        raise ValueError(f"{fmt.name} frame needs shape (H, W, 3), got {data.shape}")
    return fmt, data


def regamma(code: np.ndarray, crf: CRF) -> np.ndarray:
    """Replace the camera's response by gamma 2.2 (design §4): L = F⁻¹(code)^(1/2.2).

    With the default gamma-2.2 CRF this is the identity, so the input is returned as is.
    """
    if crf.is_gamma22:
        return code
    lin = crf.to_linear(code)
    return np.power(lin, np.float32(1.0 / 2.2), out=lin)
