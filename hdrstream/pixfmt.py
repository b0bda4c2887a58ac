"""GenICam pixel formats the pipeline understands, and what their payloads look like.

One table, so the protocol validator, the cameras and the debayer step agree on
what ``BayerRG12`` means (a 16-bit container holding values 0..4095).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PixelFormat:
    name: str
    channels: int  # 1 for mono and Bayer mosaics, 3 for RGB
    dtype: str  # numpy dtype name of the payload
    bits: int  # significant bits; integer formats are LSB-aligned
    bayer: str | None = None  # "RG", "GR", "GB", "BG" for mosaics
    bgr: bool = False

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")

    @property
    def white(self) -> float:
        """Code value of full scale (1.0 for float formats)."""
        return 1.0 if self.is_float else float(2**self.bits - 1)


def _table() -> dict[str, PixelFormat]:
    fmts: list[PixelFormat] = []
    for bits in (8, 10, 12, 16):
        dt = "uint8" if bits == 8 else "uint16"
        fmts.append(PixelFormat(f"Mono{bits}", 1, dt, bits))
        fmts.append(PixelFormat(f"RGB{bits}", 3, dt, bits))
        fmts.append(PixelFormat(f"BGR{bits}", 3, dt, bits, bgr=True))
        for pat in ("RG", "GR", "GB", "BG"):
            fmts.append(PixelFormat(f"Bayer{pat}{bits}", 1, dt, bits, bayer=pat))
    fmts.append(PixelFormat("RGBf16", 3, "float16", 16))
    fmts.append(PixelFormat("RGBf32", 3, "float32", 32))
    return {f.name: f for f in fmts}


PIXEL_FORMATS: dict[str, PixelFormat] = _table()
# Basler/pylon spell the packed RGB formats this way; the payload is the same.
PIXEL_FORMATS["RGB8Packed"] = PIXEL_FORMATS["RGB8"]
PIXEL_FORMATS["BGR8Packed"] = PIXEL_FORMATS["BGR8"]


class UnknownPixelFormat(ValueError):
    pass


def pixel_format(name: str) -> PixelFormat:
    try:
        return PIXEL_FORMATS[name]
    except KeyError:
        known = ", ".join(sorted(PIXEL_FORMATS))
        raise UnknownPixelFormat(f"unknown pixel format {name!r}; known: {known}") from None


def check_layout(fmt: PixelFormat, shape: tuple[int, ...], dtype: np.dtype | str) -> None:
    """Raise ValueError unless an image of ``shape``/``dtype`` can hold ``fmt``.

    RGB payloads may carry a leading stack axis (a window of frames).
    """
    if np.dtype(dtype) != np.dtype(fmt.dtype):
        raise ValueError(f"{fmt.name} needs dtype {fmt.dtype}, got {np.dtype(dtype).name}")
    if fmt.channels == 1:
        ok = len(shape) == 2
        want = "(H, W)"
    else:
        ok = len(shape) in (3, 4) and shape[-1] == 3
        want = "(H, W, 3) or (N, H, W, 3)"
    if not ok:
        raise ValueError(f"{fmt.name} needs shape {want}, got {tuple(shape)}")
    if any(s <= 0 for s in shape):
        raise ValueError(f"empty image shape {tuple(shape)}")
    if fmt.bayer and (shape[0] % 2 or shape[1] % 2):
        raise ValueError(f"{fmt.name} mosaic needs even height and width, got {tuple(shape)}")


def unit_values(codes: np.ndarray, white: float) -> np.ndarray:
    """Integer codes → float32 code values in [0, 1]: ``code · (1/white)``, at most 1 (a
    container can hold bits above the format's depth). Preprocess decodes frames with it and
    infer reads windows of codes with it, so both see the same values, bit for bit."""
    out = np.multiply(codes, np.float32(1.0 / white), dtype=np.float32)
    return np.minimum(out, np.float32(1.0), out=out)
