"""Camera pixel-format names ↔ protocol names (hdrstream.pixfmt).

pylon spells packed RGB ``RGB8Packed``, USB cameras ``RGB8``; bit-packed mosaics end in
``p`` (``BayerRG12p``). The protocol has one name per payload layout, so frames always say
``RGB8`` or ``BayerRG12`` whatever the camera called it. BGR payloads are flipped to RGB
while they are copied out of the grab buffer (the copy happens anyway).
"""
from __future__ import annotations

from hdrstream.pixfmt import PIXEL_FORMATS, PixelFormat, UnknownPixelFormat, pixel_format


def _base(camera_name: str) -> str:
    name = camera_name.removesuffix("Packed")
    if name.endswith("p") and name[:-1] in PIXEL_FORMATS:  # BayerRG12p: bit-packed BayerRG12
        name = name[:-1]
    return name


def is_bit_packed(camera_name: str) -> bool:
    return camera_name.endswith("p") and _base(camera_name) != camera_name


def protocol_format(camera_name: str) -> PixelFormat:
    """The protocol format of what we send for a camera format (BGR arrives as RGB)."""
    fmt = pixel_format(_base(camera_name))
    if fmt.bgr:
        fmt = pixel_format(fmt.name.replace("BGR", "RGB"))
    return fmt


def usable(camera_names: list[str]) -> list[str]:
    """The camera formats that map onto a protocol format."""
    out = []
    for name in camera_names:
        try:
            fmt = protocol_format(name)
        except UnknownPixelFormat:
            continue
        if not fmt.is_float:
            out.append(name)
    return out


def camera_format(requested: str, supported: list[str]) -> str:
    """The camera's spelling of ``requested`` (protocol or camera spelling), or ValueError."""
    if requested in supported and requested in usable(supported):
        return requested
    for name in usable(supported):
        if _base(name) == _base(requested) and not is_bit_packed(name):
            return name
    raise ValueError(
        f"pixel format {requested!r} is not supported by this camera; it offers: {', '.join(usable(supported))}"
    )


def flips_bgr(camera_name: str) -> bool:
    return pixel_format(_base(camera_name)).bgr


def bytes_per_pixel(camera_name: str) -> float:
    """On-the-wire size, for bandwidth estimates (bit-packed formats use their bit count)."""
    fmt = pixel_format(_base(camera_name))
    if is_bit_packed(camera_name):
        return fmt.channels * fmt.bits / 8
    return fmt.channels * (1 if fmt.dtype == "uint8" else 2)
