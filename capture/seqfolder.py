"""Write a sequence folder (design §3): what ``simulate`` and ``record`` leave on disk.

Layout::

    OUT/frames/<stem>.png   8-bit for uint8 payloads, 16-bit for uint16 (BayerRG12 stays
                            0..4095 in a 16-bit PNG); mosaics and mono as one channel
    OUT/exposures.txt       "<frames/file> <seconds>" per frame, in order
    OUT/frames.jsonl        the full frame header per frame (pixel format, seq, set, …)

Each image is written atomically (temp file + rename) *before* its lines are appended
and flushed, so a reader, or a recording cut short, never lists a frame whose file is
missing or partial. The header line goes first and the ``exposures.txt`` line last: that
line is what lists a frame. A process killed between the two appends leaves one header
too many; :func:`repair` trims it (and any partial last line, and stray temp files).

Writing is split in two for the recorder's writer pool: :meth:`SequenceWriter.store`
(encode + atomic file write, safe to call from several threads at once) and
:meth:`SequenceWriter.commit` (append the index lines; call in frame order).
:class:`capture.folder.FolderCamera` reads the folder back.
"""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cv2
import numpy as np

from hdrstream import hdrio
from hdrstream.frame import Frame
from hdrstream.pixfmt import check_layout, pixel_format

FRAMES_DIR = "frames"
EXPOSURES = "exposures.txt"
HEADERS = "frames.jsonl"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")

# PNG compression, picked by bench/record.py on 4096x2168 camera mosaics (one core each):
# 0 stores the pixels unfiltered, ~950 MB/s (8-bit) / ~575 MB/s (16-bit), size 1.0;
# 1 is Huffman-only coding after the Sub filter, ~115 MB/s, size ~0.78;
# 2..9 are zlib's levels with OpenCV's adaptive filters, <= 45 MB/s, size ~0.63-0.73.
# Mosaics compress poorly (neighbours are different colours), and the camera makes
# ~285 MB/s, so the default stores.
DEFAULT_PNG_COMPRESSION = 0


def png_params(level: int) -> list[int]:
    """OpenCV ``imencode`` parameters for a compression ``level`` 0..9 (see above)."""
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 9:
        raise ValueError(f"png_compression must be an integer 0..9 (0 = stored, the fastest), got {level!r}")
    if level == 0:
        return [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    if level == 1:
        return [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    return [cv2.IMWRITE_PNG_COMPRESSION, level, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT]


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


@dataclass(frozen=True)
class StoredFrame:
    """A frame whose image is completely on disk but not yet listed in the index files."""

    seq: int
    path: Path
    exposures_line: str
    header_line: str
    file_bytes: int
    payload_bytes: int


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` found and fixed in a folder left by an interrupted writer."""

    frames: int  # frames listed after the repair
    dropped_lines: int  # partial or unmatched index lines removed
    temp_files: int  # stray temp files removed

    @property
    def changed(self) -> bool:
        return bool(self.dropped_lines or self.temp_files)


def _complete_lines(path: Path) -> tuple[list[bytes], int]:
    """Newline-terminated lines of ``path`` and the byte length of a partial last one."""
    if not path.is_file():
        return [], 0
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    return raw[:end].splitlines(keepends=True), len(raw) - end


def remove_temp_files(out_dir: str | os.PathLike) -> int:
    """Delete temp files an interrupted atomic write left in ``frames/``; returns how many."""
    frames = Path(out_dir) / FRAMES_DIR
    if not frames.is_dir():
        return 0
    n = 0
    for p in frames.glob(".*"):  # hdrio.atomic_write's temp files are hidden: .<stem>.<random><suffix>
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def repair(out_dir: str | os.PathLike) -> RepairReport:
    """Make a folder whose writer died readable: cut partial last lines, trim the header
    file to the frames ``exposures.txt`` lists, drop listed frames whose file is missing
    from the end, and remove temp files. Frames already listed are never touched."""
    out = Path(out_dir)
    exp_path, hdr_path = out / EXPOSURES, out / HEADERS
    exp, exp_partial = _complete_lines(exp_path)
    hdr, hdr_partial = _complete_lines(hdr_path)
    dropped = int(exp_partial > 0) + int(hdr_partial > 0)
    # with the writer's order (image, header line, exposures line) only the tail can be off
    while exp and not (out / exp[-1].split(b" ")[0].decode("utf-8", "replace")).is_file():
        exp.pop()
        dropped += 1
    if hdr_path.is_file() and len(hdr) != len(exp):  # cut between the two appends
        n = min(len(hdr), len(exp))
        dropped += len(hdr) + len(exp) - 2 * n
        hdr, exp = hdr[:n], exp[:n]
    if dropped:
        for path, lines in ((exp_path, exp), (hdr_path, hdr)):
            if path.is_file():
                hdrio.atomic_write(path, lambda tmp, lines=lines: Path(tmp).write_bytes(b"".join(lines)))
    return RepairReport(frames=len(exp), dropped_lines=dropped, temp_files=remove_temp_files(out))


def _write_bytes(path: str, data: memoryview, fsync: bool) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


class SequenceWriter:
    """Appends frames to a sequence folder; use as a context manager or call ``close``.

    ``overwrite`` empties an existing sequence folder (its index files and frame images;
    anything else in it stays). ``fsync`` makes each image and index line durable before
    it counts as written (power loss safe, slower); without it a killed *process* still
    leaves a valid folder, as the OS holds what was written.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        overwrite: bool = False,
        png_compression: int = DEFAULT_PNG_COMPRESSION,
        fsync: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self._png_params = png_params(png_compression)
        self.fsync = fsync
        exposures = self.out_dir / EXPOSURES
        if exposures.exists() and exposures.stat().st_size and not overwrite:
            raise FileExistsError(f"{exposures} already lists frames; pick an empty folder or overwrite (--overwrite)")
        frames_dir = self.out_dir / FRAMES_DIR
        frames_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(self.out_dir)
        if overwrite:
            for p in frames_dir.iterdir():
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    p.unlink()
        # header file first: exposures.txt is what lists frames, so it never runs ahead
        self._headers: IO[str] | None = open(self.out_dir / HEADERS, "w", encoding="utf-8")
        self._exposures: IO[str] | None = open(exposures, "w", encoding="utf-8")
        self._stems: set[str] = set()
        self._stems_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self.count = 0

    def write(self, frame: Frame) -> Path:
        """Store one integer-format frame and list it; returns the image path."""
        stored = self.store(frame)
        self.commit(stored)
        return stored.path

    def store(self, frame: Frame) -> StoredFrame:
        """Write the frame's image atomically, without listing it yet. Thread-safe.

        Raises ValueError for a frame that cannot go in a sequence folder (float format,
        bad exposure, repeated stem) and OSError when the file cannot be written.
        """
        if self._exposures is None:
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
        if "/" in stem or "\\" in stem or stem.startswith(".") or not stem.strip() or " " in stem:
            raise ValueError(
                f"seq {frame.seq}: unusable file stem {stem!r} (no slashes, spaces or leading dot: "
                "exposures.txt lines are '<file> <seconds>')"
            )
        with self._stems_lock:
            if stem in self._stems:
                raise ValueError(f"seq {frame.seq}: repeated file stem {stem!r}")
            self._stems.add(stem)
        rel = f"{FRAMES_DIR}/{stem}.png"
        header = frame.header()
        header.pop("timing", None)  # per-run measurements, not properties of the frame
        header_line = json.dumps(header, default=_json_default, separators=(",", ":")) + "\n"
        try:
            img = data
            if data.ndim == 3:  # OpenCV stores BGR; PNGs hold true colours
                img = data if fmt.bgr else data[..., ::-1]
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), self._png_params)
            if not ok:
                raise OSError(f"OpenCV could not encode seq {frame.seq} as PNG")
            path = hdrio.atomic_write(self.out_dir / rel, lambda tmp: _write_bytes(tmp, buf.data, self.fsync))
        except BaseException:
            with self._stems_lock:
                self._stems.discard(stem)
            raise
        return StoredFrame(int(frame.seq), path, f"{rel} {exposure!r}\n", header_line, int(buf.size), int(data.nbytes))

    def commit(self, stored: StoredFrame) -> None:
        """List a stored frame: header line, then exposures line, each flushed."""
        with self._index_lock:
            if self._exposures is None or self._headers is None:
                raise ValueError("SequenceWriter is closed")
            for f, line in ((self._headers, stored.header_line), (self._exposures, stored.exposures_line)):
                f.write(line)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            self.count += 1

    def sync(self) -> None:
        """Make everything listed so far durable (index files and the folder entries)."""
        with self._index_lock:
            for f in (self._headers, self._exposures):
                if f is not None:
                    f.flush()
                    os.fsync(f.fileno())
        for d in (self.out_dir / FRAMES_DIR, self.out_dir):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        with self._index_lock:
            files, (self._headers, self._exposures) = (self._headers, self._exposures), (None, None)
        errors = []
        for f in files:
            if f is not None:
                try:
                    f.close()
                except OSError as exc:  # a flush that fails (disk full) must not leave the other open
                    errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> SequenceWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
