"""Previews a person can look at: per-frame PNGs, a video a browser plays and a contact sheet.

The video is written under a hidden temp name and renamed at close, like every other
output, so a half-written video never sits at ``OUT/preview.webm``. The contact sheet
keeps a bounded, evenly spaced set of thumbnails (stride doubling), so a run of any
length costs at most ``2 · max_frames`` small images of memory.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hdrstream import hdrio

log = logging.getLogger(__name__)


# (fourcc, suffix) in order of preference; each must be a format browsers play. H.264 in MP4
# when OpenCV's FFmpeg has an H.264 encoder (the PyPI wheels do not); else VP8 in WebM, which
# Chrome, Firefox, Edge and Safari (14.1+) play. Not VP9: OpenCV gives no way to set libvpx's
# speed, and at its default it cost 59 ms a 640x360 frame here against 10 ms for VP8.
# MPEG-4 Part 2 ('mp4v') is the last resort: VLC plays it, browsers do not.
CODECS = (("avc1", ".mp4"), ("VP80", ".webm"), ("mp4v", ".mp4"))
MAX_VIDEO_WIDTH = 960  # a preview: larger frames are scaled down, which bounds its cost per frame


class VideoPreview:
    """A video of 8-bit RGB frames (see CODECS); size fixed by the first frame (even, at most
    MAX_VIDEO_WIDTH wide). ``path`` is given without suffix; :attr:`path` has it once open."""

    def __init__(self, path: str | Path, fps: float = 15.0) -> None:
        self.base = Path(path).with_suffix("")
        self.path = self.base.with_suffix(CODECS[0][1])
        self.fps = float(fps)
        self.frames = 0
        self.failed = False
        self.codec: str | None = None
        self._tmp = self.path
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (w, h)

    def _open(self, w: int, h: int) -> None:
        scale = min(1.0, MAX_VIDEO_WIDTH / w)
        w, h = max(2, int(w * scale)), max(2, int(h * scale))
        self._size = (w - w % 2, h - h % 2)  # the codecs want even dimensions
        self.base.parent.mkdir(parents=True, exist_ok=True)
        for fourcc, suffix in CODECS:
            tmp = self.base.with_name(f".{self.base.name}.{os.getpid()}{suffix}")
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), self.fps, self._size)
            if writer.isOpened():
                self._writer, self._tmp, self.codec = writer, tmp, fourcc
                self.path = self.base.with_suffix(suffix)
                if fourcc == "mp4v":
                    log.warning("no H.264 or VP8 encoder: %s is MPEG-4 Part 2, which browsers do not play", self.path)
                return
            tmp.unlink(missing_ok=True)
        log.warning("cannot open a video writer for %s (tried %s); skipping the preview video",
                    self.base, ", ".join(c for c, _ in CODECS))
        self.failed = True

    def write(self, rgb8: np.ndarray) -> None:
        if self.failed:
            return
        if self._writer is None:
            self._open(rgb8.shape[1], rgb8.shape[0])
            if self._writer is None:
                return
        assert self._size is not None
        w, h = self._size
        if rgb8.shape[0] < h or rgb8.shape[1] < w or rgb8.shape[0] > h + 1 or rgb8.shape[1] > w + 1:
            rgb8 = cv2.resize(rgb8, (w, h), interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(rgb8[:h, :w, ::-1]))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and move it into place; returns its path or None if none."""
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        if self.frames and self._tmp.is_file():
            os.chmod(self._tmp, hdrio.FILE_MODE)
            os.replace(self._tmp, self.path)
            return self.path
        self._tmp.unlink(missing_ok=True)
        return None


@dataclass
class ThumbnailSampler:
    """Keeps evenly spaced thumbnails of a stream of unknown length, in bounded memory."""

    max_frames: int = 16
    _stride: int = field(default=1, init=False)
    _kept: list[tuple[int, str, np.ndarray]] = field(default_factory=list, init=False, repr=False)

    def wants(self, index: int) -> bool:
        return index % self._stride == 0

    def add(self, index: int, caption: str, thumb: np.ndarray) -> None:
        if not self.wants(index):
            return
        self._kept.append((index, caption, thumb))
        if len(self._kept) > 2 * self.max_frames:
            self._stride *= 2
            self._kept = [k for k in self._kept if k[0] % self._stride == 0]

    def selection(self) -> list[tuple[str, np.ndarray]]:
        """Up to ``max_frames`` evenly spaced (caption, thumbnail), first and last included."""
        n = len(self._kept)
        if n <= self.max_frames:
            picks = range(n)
        else:
            picks = sorted({int(round(i)) for i in np.linspace(0, n - 1, self.max_frames)})
        return [(self._kept[i][1], self._kept[i][2]) for i in picks]


def display_copy(rgb: np.ndarray, max_width: int = MAX_VIDEO_WIDTH) -> np.ndarray:
    """HDR (H, W, 3) as float32, area-averaged down to at most ``max_width`` wide: previews
    are tone-mapped and encoded at the size they are looked at (1536x813: ~60 -> ~25 ms a
    frame for the tone map and the PNG), never at the EXR's."""
    h, w = rgb.shape[:2]
    x = np.asarray(rgb, np.float32)
    if w <= max_width:
        return np.ascontiguousarray(x)
    size = (max_width, max(1, round(h * max_width / w)))
    return cv2.resize(x, size, interpolation=cv2.INTER_AREA)


def thumbnail(rgb8: np.ndarray, width: int = 320) -> np.ndarray:
    h, w = rgb8.shape[:2]
    if w <= width:
        return rgb8.copy()
    size = (width, max(1, round(h * width / w)))
    return cv2.resize(rgb8, size, interpolation=cv2.INTER_AREA)


def contact_sheet(items: list[tuple[str, np.ndarray]], caption_px: int = 22, pad: int = 4) -> np.ndarray:
    """Grid of captioned thumbnails (RGB uint8); an empty list gives a small grey tile."""
    if not items:
        return np.full((caption_px + 2 * pad, 160, 3), 64, np.uint8)
    tw = max(t.shape[1] for _, t in items)
    th = max(t.shape[0] for _, t in items)
    cols = math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / cols)
    cell_w, cell_h = tw + pad, th + caption_px + pad
    sheet = np.full((rows * cell_h + pad, cols * cell_w + pad, 3), 32, np.uint8)
    for i, (caption, t) in enumerate(items):
        r, c = divmod(i, cols)
        y, x = pad + r * cell_h, pad + c * cell_w
        sheet[y : y + t.shape[0], x : x + t.shape[1]] = t
        cv2.putText(
            sheet, caption[:40], (x + 2, y + th + caption_px - 6),
            cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA,
        )
    return sheet


def write_contact_sheet(path: str | Path, items: list[tuple[str, np.ndarray]]) -> Path:
    return hdrio.write_png(path, contact_sheet(items))
