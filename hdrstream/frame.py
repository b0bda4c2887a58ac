"""The frame message: one msgpack header plus one raw payload (design §2).

Everything that crosses a stage boundary is a :class:`Frame`. ``encode`` returns the
two parts for ``send_multipart(copy=False)``; ``decode`` validates strictly and returns
a read-only NumPy view of the received buffer, so neither side copies pixels.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
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
DTYPES = ("uint8", "uint16", "float16", "float32")  # every payload the pixel formats allow
MAX_RANK, MAX_DIM = 4, 65_536  # (N, H, W, 3) at most; no camera or window comes near
MAX_SEQ = 2**53  # seqs stay exact in a float and far beyond any stream's length
MAX_SEQ_LIST = 1_000_000  # seqs listed in one message (an eos's failed ones)
MAX_NAME = 256
# stems and method names become file names: no path separators, control characters or leading dot
SAFE_NAME = re.compile(r"[^/\\\x00-\x1f\x7f.][^/\\\x00-\x1f\x7f]{0,199}")
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
    """Parse a received multipart message; raises :class:`ProtocolError` on anything off.

    Nothing but :class:`ProtocolError` can come out of here, whatever the bytes: the header is
    checked in full (types, a closed list of dtypes, bounded dimensions, the payload's size,
    the meta keys stages read) before the payload is looked at.
    """
    try:
        if len(parts) != 2:
            raise ProtocolError(f"expected 2 message parts [header, payload], got {len(parts)}")
        raw_header, raw_payload = (getattr(p, "buffer", p) for p in parts)
        try:
            header = msgpack.unpackb(raw_header, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}") from None
        payload = memoryview(raw_payload)
        validate(header, payload.nbytes)
        data = np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"])
    except ProtocolError:
        raise
    except Exception as exc:  # a check this module forgot must still not take a stage down
        raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from None
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
    if not 0 <= header["seq"] <= MAX_SEQ:
        raise ProtocolError(f"seq {header['seq']} out of range [0, {MAX_SEQ}]")
    if not -(2**63) <= header["t_ns"] < 2**63:
        raise ProtocolError("t_ns out of the int64 range")
    if "set" in header and not 0 <= header["set"] < 2**31:
        raise ProtocolError(f"set {header['set']} out of range")
    for key in ("exposure_s", "gain_db"):
        if not math.isfinite(header[key]):
            raise ProtocolError(f"{key} must be finite, got {header[key]}")
    if not 0 < len(header["stream"]) <= MAX_NAME:
        raise ProtocolError(f"stream name must have 1..{MAX_NAME} characters")
    dtype, shape = header["dtype"], header["shape"]
    if dtype not in DTYPES:
        raise ProtocolError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
    if not 1 <= len(shape) <= MAX_RANK or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIM for s in shape):
        raise ProtocolError(f"bad shape {shape!r}: 1..{MAX_RANK} dimensions of 0..{MAX_DIM}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow
    if expected != payload_nbytes:
        raise ProtocolError(
            f"payload is {payload_nbytes} bytes but shape {shape} x {dtype} needs {expected}"
        )
    _check_meta(header)
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
    if header["kind"] == "window":
        _check_window_meta(header)


def _is_int(v: Any, lo: int = 0, hi: int = MAX_SEQ) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_name(v: Any) -> bool:
    return isinstance(v, str) and bool(SAFE_NAME.fullmatch(v))


def _is_seq_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_SEQ_LIST and all(_is_int(s) for s in v)


# the meta keys a stage reads, and what each must be: a bad one is the sender's fault and
# must be caught here, not as an exception deep in a stage
_META_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stem": (_is_name, "a file stem (no '/', '\\', control characters or leading '.')"),
    "method": (_is_name, "a name that can be a file name"),
    "timing": (lambda v: isinstance(v, dict) and len(v) <= 64
               and all(isinstance(k, str) and _is_num(x) for k, x in v.items()), "a map of stage -> seconds"),
    "wall_ns": (lambda v: _is_int(v, 0, 2**63 - 1), "a non-negative int64"),
    "clock": (lambda v: isinstance(v, str) and len(v) <= MAX_NAME, "a short string"),
    "t_min": (lambda v: _is_num(v) and v > 0, "a positive number"),
    "exposures": (lambda v: isinstance(v, list) and 0 < len(v) <= MAX_DIM and all(_is_num(t) and t > 0 for t in v),
                  "a list of positive exposure times"),
    "ref": (lambda v: _is_int(v, 0, MAX_DIM), "a frame index"),
    "seqs": (_is_seq_list, "a list of seqs"),
    "warps": (lambda v: isinstance(v, list) and len(v) <= MAX_DIM
              and all(isinstance(m, list) and len(m) == 6 and all(_is_num(x) for x in m) for m in v),
              "a list of 2x3 matrices (6 numbers each)"),
    "count": (_is_int, "a non-negative count"),
    "first_seq": (_is_int, "a seq"),
    "failed": (_is_seq_list, "a list of seqs"),
    "error": (lambda v: isinstance(v, str), "a string"),
    "unreadable": (lambda v: isinstance(v, list) and len(v) <= MAX_SEQ_LIST and all(
        isinstance(u, dict) and _is_int(u.get("seq")) and isinstance(u.get("file"), str)
        and isinstance(u.get("reason"), str) for u in v), "a list of {seq, file, reason}"),
    "source_gaps": (lambda v: isinstance(v, list) and len(v) <= MAX_SEQ_LIST and all(
        isinstance(r, list) and len(r) == 2 and _is_int(r[0]) and _is_int(r[1]) and r[0] <= r[1] for r in v),
        "a list of [first, last] seq ranges"),
    "warped": (lambda v: isinstance(v, bool), "true or false"),
    "scale": (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "warp_interpolation": (lambda v: v in ("linear", "cubic"), "linear or cubic"),
    "malformed": (lambda v: isinstance(v, dict) and len(v) <= 64
                  and all(isinstance(k, str) and _is_int(n) for k, n in v.items()), "a map of stage -> count"),
}


def _check_meta(header: dict) -> None:
    for key, (ok, what) in _META_CHECKS.items():
        if key in header and not ok(header[key]):
            raise ProtocolError(f"meta {key!r} must be {what}")


def _check_window_meta(header: dict) -> None:
    n = header["shape"][0] if len(header["shape"]) == 4 else 1
    for key in ("exposures", "ref"):
        if key not in header:
            raise ProtocolError(f"window message without meta {key!r}")
    if len(header["exposures"]) != n or header["ref"] >= n:
        raise ProtocolError(f"window of {n} frame(s) with {len(header['exposures'])} exposure(s), ref {header['ref']}")
    for key in ("seqs", "warps"):
        if key in header and len(header[key]) != n:
            raise ProtocolError(f"window of {n} frame(s) with {len(header[key])} {key}")
