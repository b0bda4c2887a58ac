"""Write a sequence folder (design §3): what ``simulate`` and ``record`` leave on disk.

Layout::

    OUT/frames/<stem>.png   8-bit for uint8 payloads, 16-bit for uint16 (BayerRG12 stays
                            0..4095 in a 16-bit PNG); mosaics and mono as one channel
    OUT/exposures.txt       "<frames/file> <seconds>" per frame, in order
    OUT/frames.jsonl        the full frame header per frame (pixel format, seq, set, …)

Each image is written atomically *before* its lines are appended (and flushed), so a
reader, or a recording cut short, never lists a frame whose file is missing or partial.
:class:`capture.folder.FolderCamera` reads this back.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from hdrstream import hdrio
from hdrstream.frame import Frame
from hdrstream.pixfmt import check_layout, pixel_format

FRAMES_DIR = "frames"
EXPOSURES = "exposures.txt"
HEADERS = "frames.jsonl"


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


class SequenceWriter:
    """Appends frames to a sequence folder; use as a context manager or call ``close``."""

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        exposures = self.out_dir / EXPOSURES
        if exposures.exists() and exposures.stat().st_size and not overwrite:
            raise FileExistsError(f"{exposures} already lists frames; pick an empty folder or pass overwrite=True")
        (self.out_dir / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
        self._exposures: IO[str] | None = open(exposures, "w", encoding="utf-8")
        self._headers: IO[str] | None = open(self.out_dir / HEADERS, "w", encoding="utf-8")
        self._stems: set[str] = set()
        self.count = 0

    def write(self, frame: Frame) -> Path:
        """Store one integer-format frame; returns the image path."""
        if self._exposures is None or self._headers is None:
            raise ValueError("SequenceWriter is closed")
        fmt = pixel_format(frame.pixel_format)
        if fmt.is_float:
            raise ValueError(f"a sequence folder holds 8/16-bit frames, not {fmt.name} (seq {frame.seq})")
        data = np.asarray(frame.data)
        check_layout(fmt, data.shape, data.dtype)
        exposure = float(frame.exposure_s)
        if not (math.isfinite(exposure) and exposure > 0):
            raise ValueError(f"seq {frame.seq}: exposure_s must be positive, got {frame.exposure_s}")
        stem = frame.stem
        if stem in self._stems or "/" in stem or "\\" in stem or stem.startswith(".") or not stem.strip():
            raise ValueError(f"seq {frame.seq}: unusable or repeated file stem {stem!r}")
        rel = f"{FRAMES_DIR}/{stem}.png"
        if " " in rel:
            raise ValueError(f"seq {frame.seq}: stem {stem!r} has a space; exposures.txt lines are '<file> <seconds>'")
        if fmt.bgr:
            data = data[..., ::-1]  # PNGs hold true colours; the header says BGR
        path = hdrio.write_png(self.out_dir / rel, data)
        self._exposures.write(f"{rel} {exposure!r}\n")
        self._exposures.flush()
        header = frame.header()
        header.pop("timing", None)  # per-run measurements, not properties of the frame
        self._headers.write(json.dumps(header, default=_json_default, separators=(",", ":")) + "\n")
        self._headers.flush()
        self._stems.add(stem)
        self.count += 1
        return path

    def close(self) -> None:
        for f in (self._exposures, self._headers):
            if f is not None:
                f.close()
        self._exposures = self._headers = None

    def __enter__(self) -> SequenceWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
