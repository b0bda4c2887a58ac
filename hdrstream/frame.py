"""The frame message: one msgpack header plus one raw payload (design §2).

Everything that crosses a stage boundary is a :class:`Frame`. ``encode`` returns the
two parts for ``send_multipart(copy=False)``; ``decode`` validates strictly and returns
a read-only NumPy view of the received buffer, so neither side copies pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from hdrstream.pixfmt import UnknownPixelFormat, check_layout, pixel_format

VERSION = 1
KINDS = ("frame", "window", "hdr", "eos")
REQUIRED = {
    "v": int,
    "kind": str,
    "stream": str,
    "seq": int,
    "t_ns": int,
    "exposure_s": (int, float),
    "gain_db": (int, float),
    "pixel_format": str,
    "shape": list,
    "dtype": str,
}
_OPTIONAL = {"set": int}
_CORE = set(REQUIRED) | set(_OPTIONAL)
EOS_FORMAT = "none"  # pixel_format of an end-of-stream message, which has no pixels


class ProtocolError(ValueError):
    """A message that does not follow the frame protocol."""


@dataclass
class Frame:
    """One message. ``meta`` holds header keys beyond the core ones (stem, timings, …)."""

    kind: str
    stream: str
    seq: int
    t_ns: int
    exposure_s: float
    gain_db: float
    pixel_format: str
    data: np.ndarray
    set: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """File stem that names this frame's outputs."""
        return str(self.meta.get("stem", f"{self.seq:06d}"))

    def header(self) -> dict[str, Any]:
        h: dict[str, Any] = dict(self.meta)
        h.update(
            v=VERSION,
            kind=self.kind,
            stream=self.stream,
            seq=int(self.seq),
            t_ns=int(self.t_ns),
            exposure_s=float(self.exposure_s),
            gain_db=float(self.gain_db),
            pixel_format=self.pixel_format,
            shape=[int(s) for s in self.data.shape],
            dtype=self.data.dtype.name,
        )
        if self.set is not None:
            h["set"] = int(self.set)
        return h


def eos(stream: str, seq: int, **meta: Any) -> Frame:
    """End of stream; ``seq`` is one past the last frame sent, so receivers can count gaps."""
    return Frame("eos", stream, seq, 0, 0.0, 0.0, EOS_FORMAT, np.zeros(0, np.uint8), meta=meta)


def encode(frame: Frame) -> list[Any]:
    """[header bytes, payload buffer] for ``send_multipart(parts, copy=False)``."""
    header = frame.header()
    validate(header, frame.data.nbytes)
    data = np.ascontiguousarray(frame.data)
    return [msgpack.packb(header, use_bin_type=True), memoryview(data).cast("B")]


def decode(parts: list[Any]) -> Frame:
    """Parse a received multipart message; raises :class:`ProtocolError` on anything off."""
    if len(parts) != 2:
        raise ProtocolError(f"expected 2 message parts [header, payload], got {len(parts)}")
    raw_header, raw_payload = (getattr(p, "buffer", p) for p in parts)
    try:
        header = msgpack.unpackb(raw_header, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    payload = memoryview(raw_payload)
    validate(header, payload.nbytes)
    data = np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"])
    data.flags.writeable = False  # a view of the message buffer: stages must not scribble on it
    meta = {k: v for k, v in header.items() if k not in _CORE}
    return Frame(
        kind=header["kind"],
        stream=header["stream"],
        seq=header["seq"],
        t_ns=header["t_ns"],
        exposure_s=float(header["exposure_s"]),
        gain_db=float(header["gain_db"]),
        pixel_format=header["pixel_format"],
        data=data,
        set=header.get("set"),
        meta=meta,
    )


def validate(header: Any, payload_nbytes: int) -> None:
    """Check a header dict against the protocol and the payload size."""
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise ProtocolError(f"header is missing required key(s): {', '.join(missing)}")
    for key, typ in {**REQUIRED, **_OPTIONAL}.items():
        if key in header and (not isinstance(header[key], typ) or isinstance(header[key], bool)):
            raise ProtocolError(f"header key {key!r} has type {type(header[key]).__name__}")
    if header["v"] != VERSION:
        raise ProtocolError(f"unknown protocol version {header['v']} (this build speaks {VERSION})")
    if header["kind"] not in KINDS:
        raise ProtocolError(f"unknown message kind {header['kind']!r}; expected one of {KINDS}")
    shape = header["shape"]
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError(f"bad shape {shape!r}")
    try:
        dtype = np.dtype(header["dtype"])
    except TypeError:
        raise ProtocolError(f"unknown dtype {header['dtype']!r}") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != payload_nbytes:
        raise ProtocolError(
            f"payload is {payload_nbytes} bytes but shape {shape} x {dtype.name} needs {expected}"
        )
    if header["kind"] == "eos":
        return
    try:
        check_layout(pixel_format(header["pixel_format"]), tuple(shape), dtype)
    except UnknownPixelFormat as exc:
        raise ProtocolError(str(exc)) from None
    except ValueError as exc:
        raise ProtocolError(f"payload does not match pixel format: {exc}") from None
    if header["exposure_s"] <= 0 and header["kind"] in ("frame", "window"):
        raise ProtocolError(f"exposure_s must be positive, got {header['exposure_s']}")
