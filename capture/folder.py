"""A camera that replays frames from a folder: our sequence folders and real datasets.

Two layouts (design §3), told apart by their index files:

- **sequence folder** (``exposures.txt``): ``<file> <seconds>`` per frame, optionally
  ``frames.jsonl`` with each frame's header (pixel format — e.g. ``BayerRG12`` in a
  16-bit PNG — seq, set, t_ns, gain). Without it the format is inferred from the image:
  3 channels → RGB8/RGB16, 1 channel → Mono8/Mono16.
- **DeepHDRVideo / TOG13 scene** (``img_list.txt`` + ``Exposures.txt``): frame names in
  order, and the exposures of one cycle in stops, repeating; ``t = 2^(e − min e)`` is a
  *relative* exposure and is used as seconds as-is. 16-bit TIFF → RGB16, 8-bit → RGB8.

Index files are validated in the constructor, so a typo fails before a pipeline starts;
:class:`FolderError` names the file and line. Image contents (corrupt files, a size or
type that differs from the first frame) can only be checked while reading.
Timestamps are ``t_ns = index / fps`` (30 fps by default) unless frames.jsonl has them.
With ``fps`` given, frames are also paced at that rate (a live replay for the services);
without it they are yielded as fast as they are read (offline reconstruction).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from capture.seqfolder import EXPOSURES, HEADERS
from hdrstream.frame import Frame
from hdrstream.pixfmt import PixelFormat, UnknownPixelFormat, check_layout, pixel_format

log = logging.getLogger(__name__)
IMG_LIST = "img_list.txt"
STOPS = "Exposures.txt"
GT_DIR = "gt"
DEFAULT_FPS = 30.0
# header keys that describe the message, not the frame; the rest of a header is carried as meta
_PROTOCOL_KEYS = {
    "v", "kind", "stream", "seq", "t_ns", "exposure_s", "gain_db", "pixel_format", "shape", "dtype", "set", "timing",
}


class FolderError(ValueError):
    """A folder that cannot be replayed; the message names the file (and line)."""


@dataclass
class _Entry:
    path: Path
    exposure_s: float
    set: int | None = None
    pixel_format: str | None = None  # None: infer from the image
    seq: int | None = None
    t_ns: int | None = None
    gain_db: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-empty, non-comment lines."""
    if not path.is_file():
        raise FolderError(f"missing {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FolderError(f"cannot read {path}: {exc}") from None
    out = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1)]
    out = [(i, ln) for i, ln in out if ln and not ln.startswith("#")]
    if not out:
        raise FolderError(f"{path} lists nothing")
    return out


def _frame_file(folder: Path, name: str, index: Path, lineno: int) -> Path:
    path = folder / name
    if not path.is_file():
        raise FolderError(f"{index}:{lineno}: frame file {name!r} not found ({path})")
    return path


def _sequence_entries(folder: Path) -> list[_Entry]:
    index = folder / EXPOSURES
    entries = []
    for lineno, line in _lines(index):
        fields = line.split()
        if len(fields) != 2:
            raise FolderError(
                f"{index}:{lineno}: expected '<file> <seconds>' (2 fields), got {len(fields)}: {line!r}"
            )
        name, sec = fields
        try:
            t = float(sec)
        except ValueError:
            raise FolderError(f"{index}:{lineno}: exposure {sec!r} is not a number") from None
        if not (math.isfinite(t) and t > 0):
            raise FolderError(f"{index}:{lineno}: exposure must be a positive number of seconds, got {sec!r}")
        entries.append(_Entry(_frame_file(folder, name, index, lineno), t))
    headers = folder / HEADERS
    if headers.is_file():
        _apply_headers(headers, entries)
    else:
        _assign_sets(entries)
    return entries


def _apply_headers(path: Path, entries: list[_Entry]) -> None:
    """Per-frame details from frames.jsonl, matched to exposures.txt by order."""
    lines = _lines(path)
    if len(lines) == len(entries) + 1:  # a recorder killed between its two appends (headers go first)
        lines = lines[:-1]
    if len(lines) != len(entries):
        raise FolderError(f"{path} has {len(lines)} header(s) but {EXPOSURES} lists {len(entries)} frame(s)")
    for entry, (lineno, line) in zip(entries, lines):
        try:
            h = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FolderError(f"{path}:{lineno}: not JSON: {exc}") from None
        if not isinstance(h, dict):
            raise FolderError(f"{path}:{lineno}: expected a JSON object")
        fmt = h.get("pixel_format")
        if fmt is not None:
            try:
                pixel_format(fmt)
            except (UnknownPixelFormat, TypeError):
                raise FolderError(f"{path}:{lineno}: unknown pixel_format {fmt!r}") from None
            if pixel_format(fmt).is_float:
                raise FolderError(f"{path}:{lineno}: {fmt} frames cannot come from an image file")
        for key in ("seq", "set", "t_ns"):
            if key in h and (not isinstance(h[key], int) or isinstance(h[key], bool)):
                raise FolderError(f"{path}:{lineno}: {key} must be an integer, got {h[key]!r}")
        gain = h.get("gain_db", 0.0)
        if not isinstance(gain, (int, float)) or isinstance(gain, bool):
            raise FolderError(f"{path}:{lineno}: gain_db must be a number, got {gain!r}")
        entry.pixel_format = fmt
        entry.seq, entry.set, entry.t_ns, entry.gain_db = h.get("seq"), h.get("set"), h.get("t_ns"), float(gain)
        entry.meta = {k: v for k, v in h.items() if k not in _PROTOCOL_KEYS and k != "stem"}
    if any(e.set is None for e in entries):
        _assign_sets(entries, keep=True)


def _cycle_of(exposures: list[float], max_period: int = 16) -> int | None:
    """Shortest period p with exposures[i] ≈ exposures[i % p] for all i, or None."""
    for p in range(1, min(len(exposures), max_period) + 1):
        if all(math.isclose(e, exposures[i % p], rel_tol=1e-3) for i, e in enumerate(exposures)):
            return p
    return None


def _assign_sets(entries: list[_Entry], keep: bool = False) -> None:
    """``set`` = position in the exposure cycle (a repeating pattern of exposure times)."""
    exps = [e.exposure_s for e in entries]
    period = _cycle_of(exps)
    if period is not None:
        sets = [i % period for i in range(len(exps))]
    else:  # no clean repetition: index of the exposure among the distinct ones
        distinct: list[float] = []
        for t in exps:
            if not any(math.isclose(t, d, rel_tol=1e-3) for d in distinct):
                distinct.append(t)
        sets = [next(j for j, d in enumerate(distinct) if math.isclose(t, d, rel_tol=1e-3)) for t in exps]
    for e, s in zip(entries, sets):
        if not keep or e.set is None:
            e.set = s


def _dataset_entries(folder: Path) -> list[_Entry]:
    stops_file = folder / STOPS
    stops = []
    for lineno, line in _lines(stops_file):
        fields = line.split()
        if len(fields) != 1:
            raise FolderError(
                f"{stops_file}:{lineno}: expected one exposure in stops, got {len(fields)} fields: {line!r}"
            )
        try:
            e = float(fields[0])
        except ValueError:
            raise FolderError(f"{stops_file}:{lineno}: exposure {fields[0]!r} is not a number") from None
        if not math.isfinite(e) or abs(e) > 60:
            raise FolderError(f"{stops_file}:{lineno}: exposure {fields[0]!r} stops is out of range")
        stops.append(e)
    rel = [2.0 ** (e - min(stops)) for e in stops]
    index = folder / IMG_LIST
    entries = []
    for i, (lineno, line) in enumerate(_lines(index)):
        fields = line.split()
        if len(fields) != 1:
            raise FolderError(f"{index}:{lineno}: expected one file name, got {len(fields)} fields: {line!r}")
        k = i % len(rel)
        entries.append(_Entry(_frame_file(folder, fields[0], index, lineno), rel[k], set=k))
    return entries


def _dataset_gt(folder: Path) -> Path | None:
    """The scene folder itself, if img_hdr_list.txt pairs each frame with <stem>.hdr there."""
    pairs = folder / "img_hdr_list.txt"
    if not pairs.is_file():
        return None
    try:
        lines = _lines(pairs)
    except FolderError:
        return None
    for _, line in lines:
        fields = line.split()
        if len(fields) != 2 or Path(fields[0]).stem != Path(fields[1]).stem or not (folder / fields[1]).is_file():
            return None
    return folder


class FolderCamera:
    """Replays a sequence folder or a DeepHDRVideo/TOG13 scene as ``kind="frame"`` messages."""

    name = "folder"

    def __init__(self, path: str | os.PathLike, stream: str | None = None, fps: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FolderError(f"no such folder: {self.path}")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps) if fps is not None else DEFAULT_FPS
        self.realtime = fps is not None
        if (self.path / EXPOSURES).exists():
            self.layout = "sequence"
            self._entries = _sequence_entries(self.path)
        elif (self.path / IMG_LIST).exists() or (self.path / STOPS).exists():
            self.layout = "deephdrvideo"
            for name in (IMG_LIST, STOPS):
                if not (self.path / name).is_file():
                    raise FolderError(
                        f"missing {self.path / name} (a DeepHDRVideo scene needs {IMG_LIST} and {STOPS})"
                    )
            self._entries = _dataset_entries(self.path)
        else:
            raise FolderError(
                f"{self.path} is not a sequence folder (no {EXPOSURES}) or a DeepHDRVideo scene (no {IMG_LIST})"
            )
        self.stream = stream or self.path.name or "folder"
        self._closed = False
        # frames that could not be read, in order: {"seq", "file", "reason"}; they are skipped
        # (the stream goes on) and travel in the end of stream, so the report names them
        self.unreadable: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def gt_dir(self) -> Path | None:
        """Ground-truth HDR folder for the sink's metrics: ``path/gt`` if present."""
        gt = self.path / GT_DIR
        if gt.is_dir():
            return gt
        return _dataset_gt(self.path) if self.layout == "deephdrvideo" else None

    @property
    def exposure_cycle(self) -> tuple[float, ...]:
        """Exposure (s) of each position in the cycle, indexed by the frames' ``set``."""
        cycle: dict[int, float] = {}
        for e in self._entries:
            if e.set is not None:
                cycle.setdefault(e.set, e.exposure_s)
        return tuple(cycle[k] for k in sorted(cycle))

    def describe(self) -> dict[str, Any]:
        """What this replay is, for a recording's session.json: the folder, its frames and
        exposures, and the camera that recorded it if the folder has a session.json."""
        formats = sorted({e.pixel_format for e in self._entries if e.pixel_format is not None})
        info: dict[str, Any] = {
            "camera": "folder",
            "path": str(self.path.resolve()),
            "layout": self.layout,
            "stream": self.stream,
            "frames": len(self._entries),
            "pixel_formats": formats or None,  # None: inferred from the images when read
            "exposure_cycle_s": list(self.exposure_cycle),
            "fps": self.fps if self.realtime else None,  # None: as fast as frames are read
        }
        session = self.path / "session.json"  # written by capture.record
        if session.is_file():
            try:
                info["recorded_by"] = json.loads(session.read_text(encoding="utf-8")).get("camera")
            except (OSError, ValueError, AttributeError) as exc:
                info["recorded_by"] = f"unreadable {session.name}: {exc}"
        return info

    def frames(self) -> Iterator[Frame]:
        first: tuple[tuple[int, ...], np.dtype] | None = None
        start = time.monotonic()
        for i, e in enumerate(self._entries):
            if self._closed:
                return
            if self.realtime:  # deadline-based, so read times do not accumulate as drift
                wait = start + i / self.fps - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            seq = e.seq if e.seq is not None else i
            try:
                data, fmt = _read(e)
                if first is None:
                    first = (data.shape, data.dtype)
                elif (data.shape, data.dtype) != first:
                    raise FolderError(
                        f"{e.path}: image is {data.shape} {data.dtype.name}, but the first frame is "
                        f"{first[0]} {first[1].name}; all frames of a sequence must match"
                    )
            except (FolderError, OSError, ValueError) as exc:  # one bad file costs one frame
                self.unreadable.append({"seq": seq, "file": e.path.name, "reason": str(exc)[-300:]})
                log.error("folder: frame %d (%s) skipped: %s", seq, e.path.name, exc)
                continue
            t_ns = e.t_ns if e.t_ns is not None else int(round(i * 1e9 / self.fps))
            yield Frame(
                kind="frame",
                stream=self.stream,
                seq=seq,
                t_ns=t_ns,
                exposure_s=e.exposure_s,
                gain_db=e.gain_db,
                pixel_format=fmt.name,
                data=data,
                set=e.set,
                meta={**e.meta, "stem": e.path.stem},
            )

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> FolderCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(e: _Entry) -> tuple[np.ndarray, PixelFormat]:
    """Load one frame as RGB (or the single plane of a mosaic/mono image), checked."""
    img = cv2.imread(str(e.path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise FolderError(f"{e.path}: cannot decode the image (missing, corrupt or truncated?)")
    if img.dtype not in (np.uint8, np.uint16):
        raise FolderError(f"{e.path}: {img.dtype.name} pixels; expected 8- or 16-bit integers")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        raise FolderError(f"{e.path}: {img.shape[2]} channels; expected 1, 3 or 4")
    name = e.pixel_format
    if name is None:
        bits = 8 if img.dtype == np.uint8 else 16
        name = f"{'RGB' if img.ndim == 3 else 'Mono'}{bits}"
    fmt = pixel_format(name)
    if img.ndim == 3:  # OpenCV decodes to BGR(A); drop alpha, and turn to RGB unless BGR is wanted
        rgba, bgra = (cv2.COLOR_BGR2RGB, None) if img.shape[2] == 3 else (cv2.COLOR_BGRA2RGB, cv2.COLOR_BGRA2BGR)
        if not fmt.bgr:
            img = cv2.cvtColor(img, rgba)
        elif bgra is not None:
            img = cv2.cvtColor(img, bgra)
    try:
        check_layout(fmt, img.shape, img.dtype)
    except ValueError as exc:
        raise FolderError(f"{e.path}: does not hold {fmt.name}: {exc}") from None
    if fmt.bits < 8 * img.dtype.itemsize and int(img.max()) > fmt.white:
        raise FolderError(f"{e.path}: values up to {int(img.max())} exceed {fmt.name}'s {int(fmt.white)}")
    return np.ascontiguousarray(img), fmt
