"""Recording sessions: a camera's frames into a sequence folder (design §3), at camera speed.

The grabbing thread (the caller's) hands each frame to a pool of writer threads through
a bounded queue and blocks when the queue is full: the recorder drops nothing, so a disk
slower than the camera shows up as the camera's own buffers overflowing, which the
source counts (its ``stats``). PNG encoding and file writes release the GIL, so threads
are enough. A frame is listed in ``exposures.txt``/``frames.jsonl`` only after its image
is completely on disk, in grab order, so the folder is valid at every instant: after
Ctrl-C, a ``stop`` event, a write error or a SIGKILL, :class:`capture.folder.FolderCamera`
reads every frame recorded so far.

``session.json`` says what was recorded with what: written (atomically) at the start with
status ``recording`` and at the end with ``complete``, ``interrupted`` or ``failed`` and
the counts. A folder whose session.json still says ``recording`` was cut short by a
crash; :func:`recover_session` tidies it and marks it ``crashed``.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from capture.seqfolder import DEFAULT_PNG_COMPRESSION, SequenceWriter, StoredFrame, png_params, repair
from hdrstream import hdrio
from hdrstream.frame import Frame

log = logging.getLogger(__name__)

SESSION = "session.json"
SESSION_FORMAT = "hdrstream-session/1"
# counters in a source's ``stats`` that mean frames the camera lost (never reached us)
DROP_COUNTERS = ("incomplete", "gaps", "dropped", "lost", "skipped")
MAX_GAP_RANGES = 100  # gap ranges kept in the summary; the count is always complete
# 2 threads keep up with stored PNGs on a 2-core machine; more cores can take more
DEFAULT_WRITERS = max(2, min(4, os.cpu_count() or 2))


class RecordSource(Protocol):
    """What :func:`record` needs of a camera; ``describe()`` and ``stats`` are optional."""

    name: str

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


@dataclass
class RecordConfig:
    """How long to record and how to write. No limit on either: record until stopped."""

    frames: int | None = None  # stop after this many frames
    seconds: float | None = None  # stop after this long (checked as each frame arrives)
    writers: int = DEFAULT_WRITERS  # writer threads
    queue_frames: int = 32  # frames waiting for a writer before grabbing blocks (~9 MB each: ~1 s)
    png_compression: int = DEFAULT_PNG_COMPRESSION  # 0 = stored (fast); see capture.seqfolder
    overwrite: bool = False  # replace the frames of an existing sequence folder
    fsync: bool = False  # make each frame durable before listing it (power-loss safe, slower)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.frames is not None and (not isinstance(self.frames, int) or self.frames < 1):
            raise ValueError(f"frames must be a positive integer or None, got {self.frames!r}")
        if self.seconds is not None and not (isinstance(self.seconds, (int, float)) and
                                             math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"seconds must be a positive number or None, got {self.seconds!r}")
        if not isinstance(self.writers, int) or self.writers < 1:
            raise ValueError(f"writers must be an integer >= 1, got {self.writers!r}")
        if not isinstance(self.queue_frames, int) or self.queue_frames < 1:
            raise ValueError(f"queue_frames must be an integer >= 1, got {self.queue_frames!r}")
        png_params(self.png_compression)  # raises ValueError on a bad level


@dataclass
class RecordSummary:
    """What a session recorded. ``mb_per_s`` is pixel payload (the camera's data rate)."""

    out_dir: str
    status: str  # complete | interrupted | failed
    frames_written: int = 0  # listed in the folder
    frames_grabbed: int = 0  # received from the source
    frames_rejected: int = 0  # not storable in a sequence folder (bad format/exposure/stem); logged
    frames_lost: int = 0  # grabbed but not written because writing failed or was abandoned
    missing_seqs: int = 0  # seqs absent from the stream (frames the camera never delivered)
    gap_ranges: list[tuple[int, int]] = field(default_factory=list)  # (first, last) missing seq
    source_drops: int = 0  # loss counters the source reported (see DROP_COUNTERS)
    source_stats: dict[str, Any] = field(default_factory=dict)
    payload_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    mb_per_s: float = 0.0
    file_mb_per_s: float = 0.0
    interrupted: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    def line(self) -> str:
        """One human line for the end of a recording."""
        s = (f"{self.status}: {self.frames_written} frames in {self.seconds:.1f} s "
             f"({self.fps:.1f} fps, {self.mb_per_s:.0f} MB/s sustained, {self.file_bytes / 1e9:.2f} GB on disk); "
             f"gaps {self.missing_seqs}, camera drops {self.source_drops}")
        if self.frames_rejected or self.frames_lost:
            s += f", rejected {self.frames_rejected}, lost {self.frames_lost}"
        return s + (f"; error: {self.error}" if self.error else "")


# -- session.json ---------------------------------------------------------------------------


def _json_safe(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (Path, datetime)):
        return str(x)
    return repr(x)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    text = json.dumps(obj, default=_json_safe, indent=1) + "\n"
    hdrio.atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """Versions that decide what a recording contains; pypylon is None when not installed."""
    return {
        "hdrstream": _dist_version("hdrstream") or "unknown (not installed)",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pypylon": _dist_version("pypylon") if importlib.util.find_spec("pypylon") else None,
    }


def host_info() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()}


def describe_source(source: Any) -> dict[str, Any]:
    """The camera's ``describe()`` (model, serial, settings), or at least its name."""
    info: dict[str, Any] = {"name": getattr(source, "name", type(source).__name__)}
    describe = getattr(source, "describe", None)
    if callable(describe):
        try:
            info.update(describe())
        except Exception as exc:  # a description is worth having, not worth failing a recording for
            log.warning("%s.describe() failed: %s", info["name"], exc)
            info["describe_error"] = f"{type(exc).__name__}: {exc}"
    return info


def source_stats(source: Any) -> dict[str, Any]:
    """The source's ``stats`` (a dataclass, mapping or plain object) as a JSON-able dict."""
    stats = getattr(source, "stats", None)
    if stats is None:
        return {}
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        raw = dataclasses.asdict(stats)
    elif isinstance(stats, Mapping):
        raw = dict(stats)
    else:
        raw = {k: v for k, v in vars(stats).items() if not k.startswith("_")}
    return {str(k): v for k, v in raw.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _drops(stats: dict[str, Any]) -> int:
    return sum(int(stats[k]) for k in DROP_COUNTERS
               if isinstance(stats.get(k), (int, float)) and not isinstance(stats.get(k), bool))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# -- writer pool ------------------------------------------------------------------------------

_REJECTED = "rejected"
_LOST = "lost"


class _WriterPool:
    """Threads that store frames, and list them strictly in grab order as they complete."""

    def __init__(self, writer: SequenceWriter, threads: int, queue_frames: int) -> None:
        self.writer = writer
        self._queue: queue.Queue[tuple[int, Frame] | None] = queue.Queue(maxsize=queue_frames)
        self._lock = threading.Lock()
        self._done: dict[int, StoredFrame | str] = {}
        self._next = 0  # index of the next frame to list
        self.error: str | None = None
        self._failed_at: int | None = None  # index of the frame that failed; later ones are not listed
        self.abandon = False  # set on a second Ctrl-C: discard what is still queued
        self.written = self.rejected = self.lost = 0
        self.payload_bytes = self.file_bytes = 0
        self._threads = [threading.Thread(target=self._work, name=f"record-writer-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def put(self, index: int, frame: Frame) -> None:
        """Queue a frame, blocking while the queue is full (the ``block`` policy)."""
        while True:
            if self.error is not None or self.abandon:
                self._finish(index, _LOST)  # writing has stopped; nothing would take it
                return
            try:
                self._queue.put((index, frame), timeout=0.1)
                return
            except queue.Full:
                if not self._alive():  # a bug, not the disk: never wait forever for dead writers
                    with self._lock:
                        self._fail(index, "the writer threads stopped unexpectedly (see the log)")

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            index, frame = item
            if self._after_failure(index) or self.abandon:
                self._finish(index, _LOST)
                continue
            try:
                result: StoredFrame | str = self.writer.store(frame)
            except ValueError as exc:  # this frame cannot go in a sequence folder; the next may
                log.error("record: dropped seq %s: %s", frame.seq, exc)
                result = _REJECTED
            except Exception as exc:  # the disk: full, read-only, gone
                with self._lock:
                    self._fail(index, f"writing seq {frame.seq} ({frame.stem}) failed: {type(exc).__name__}: {exc}")
                result = _LOST
            self._finish(index, result)

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _after_failure(self, index: int) -> bool:
        return self._failed_at is not None and index > self._failed_at

    def _fail(self, index: int, message: str) -> None:
        """Stop the session at frame ``index``: frames before it are still listed. Hold the lock."""
        if self._failed_at is None or index < self._failed_at:
            self._failed_at = index
        if self.error is None:
            self.error = message
            log.error("record: %s; stopping the session", message)

    def _finish(self, index: int, result: StoredFrame | str) -> None:
        """Record a frame's outcome and list every frame that is now next in order."""
        with self._lock:
            self._done[index] = result
            while self._next in self._done:
                r = self._done.pop(self._next)
                self._next += 1
                if isinstance(r, StoredFrame):
                    r = self._commit(self._next - 1, r)
                if r == _REJECTED:
                    self.rejected += 1
                elif r == _LOST:
                    self.lost += 1

    def _commit(self, index: int, stored: StoredFrame) -> StoredFrame | str:
        if not self._after_failure(index):
            try:
                self.writer.commit(stored)
            except Exception as exc:
                self._fail(index, f"appending seq {stored.seq} to the index failed: {type(exc).__name__}: {exc}")
        if self._after_failure(index) or self._failed_at == index:
            try:  # nothing at or after a failure is listed: leave no unlisted images either
                stored.path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("record: could not remove unlisted %s: %s", stored.path, exc)
            return _LOST
        self.written += 1
        self.payload_bytes += stored.payload_bytes
        self.file_bytes += stored.file_bytes
        return stored

    def drain(self, on_wait: Any = None) -> None:
        """Write what is queued, then stop the threads; a second Ctrl-C abandons the queue."""
        for _ in self._threads:
            while self._alive():
                try:
                    self._queue.put(None, timeout=0.2)
                    break
                except queue.Full:
                    if on_wait is not None:
                        on_wait()
        for t in self._threads:
            while t.is_alive():
                t.join(timeout=0.2)
                if on_wait is not None:
                    on_wait()


# -- the session ------------------------------------------------------------------------------


class _Progress:
    """tqdm bar of frames written (its rate is the fps), MB/s, queue depth, gaps and camera drops."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="frame", desc="record", dynamic_ncols=True,
                        disable=None if enabled else True)
        self._last = 0.0

    def update(self, pool: _WriterPool, t0: float, gaps: int, source: Any, force: bool = False) -> None:
        now = time.monotonic()
        if self.bar.disable or (not force and now - self._last < 0.25):
            return
        self._last = now
        drops = _drops(source_stats(source))
        dt = max(now - t0, 1e-9)
        self.bar.update(pool.written - self.bar.n)
        self.bar.set_postfix_str(
            f"{pool.payload_bytes / dt / 1e6:.0f} MB/s, queue {pool.queued}, "
            f"gaps {gaps}, drops {drops}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def record(
    source: RecordSource,
    out_dir: str | os.PathLike,
    cfg: RecordConfig | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> RecordSummary:
    """Record ``source`` into the sequence folder ``out_dir`` until a limit, the end of the
    stream, ``stop``, Ctrl-C or a write error; always leaves a valid folder and returns
    what was recorded (``status`` says how it ended). Closes ``source`` when grabbing stops.

    Raises only before recording starts: bad config, a folder that already holds frames.
    """
    cfg = cfg or RecordConfig()
    cfg.validate()
    out = Path(out_dir)
    writer = SequenceWriter(out, overwrite=cfg.overwrite, png_compression=cfg.png_compression, fsync=cfg.fsync)
    session: dict[str, Any] = {
        "format": SESSION_FORMAT,
        "status": "recording",
        "started": _now(),
        "camera": describe_source(source),
        "settings": dataclasses.asdict(cfg),
        "software": software_versions(),
        "host": host_info(),
        "command": sys.argv,
    }
    try:
        _write_json(out / SESSION, session)
    except BaseException:
        writer.close()
        raise
    pool = _WriterPool(writer, cfg.writers, cfg.queue_frames)
    bar = _Progress(progress, cfg.frames)
    summary = RecordSummary(out_dir=str(out), status="recording")
    last_seq: int | None = None
    source_error: str | None = None
    t0 = time.monotonic()

    def tick(force: bool = False) -> None:
        bar.update(pool, t0, summary.missing_seqs, source, force)

    frames = iter(())
    pending: Frame | None = None
    try:
        frames = iter(source.frames())
        while not (stop is not None and stop.is_set()):
            if pool.error is not None:
                break
            try:
                frame = next(frames)
            except StopIteration:
                break
            if frame.kind != "frame":
                log.error("record: dropped a %r message (seq %s): only frames are recorded", frame.kind, frame.seq)
                summary.frames_rejected += 1
                continue
            seq = int(frame.seq)
            if last_seq is not None and seq > last_seq + 1:
                summary.missing_seqs += seq - last_seq - 1
                if len(summary.gap_ranges) < MAX_GAP_RANGES:
                    summary.gap_ranges.append((last_seq + 1, seq - 1))
                log.warning("record: seq %d..%d missing from the stream", last_seq + 1, seq - 1)
            elif last_seq is not None and seq <= last_seq:
                log.warning("record: seq went back from %d to %d (camera restarted?)", last_seq, seq)
            last_seq = seq
            pending = frame
            pool.put(summary.frames_grabbed, frame)
            pending = None
            summary.frames_grabbed += 1
            tick()
            if cfg.frames is not None and summary.frames_grabbed >= cfg.frames:
                break
            if cfg.seconds is not None and time.monotonic() - t0 >= cfg.seconds:
                break
        else:
            summary.interrupted = True
    except KeyboardInterrupt:
        summary.interrupted = True
        log.warning("record: interrupted; writing what is queued (Ctrl-C again to abandon it)")
    except Exception as exc:  # the camera failed: keep what it delivered
        source_error = f"camera source {getattr(source, 'name', '?')!r} failed: {type(exc).__name__}: {exc}"
        log.error("record: %s", source_error)
    finally:
        _stop_source(source, frames)
    try:
        if pending is not None:  # Ctrl-C while it waited for room in the queue
            pool.put(summary.frames_grabbed, pending)
            summary.frames_grabbed += 1
        pool.drain(on_wait=tick)
    except KeyboardInterrupt:
        summary.interrupted = True
        pool.abandon = True
        log.warning("record: abandoning %d queued frame(s)", pool.queued)
        pool.drain()
    seconds = time.monotonic() - t0
    tick(force=True)
    bar.close()
    return _finish(summary, session, writer, pool, source, out, seconds, source_error)


def _stop_source(source: Any, frames: Any) -> None:
    """Stop grabbing: end the generator (it may hold the camera) and close the source."""
    for what, fn in (("frames()", getattr(frames, "close", None)), ("close()", source.close)):
        if fn is None:
            continue
        try:
            fn()
        except Exception as exc:
            log.warning("record: source %s raised %s: %s", what, type(exc).__name__, exc)


def _finish(
    summary: RecordSummary, session: dict[str, Any], writer: SequenceWriter, pool: _WriterPool,
    source: Any, out: Path, seconds: float, source_error: str | None,
) -> RecordSummary:
    """Close the index, repair it if writing failed mid-line, and write the final session.json."""
    errors = [e for e in (pool.error, source_error) if e]
    close_failed = False
    try:
        if writer.fsync:
            writer.sync()
        writer.close()
    except OSError as exc:
        close_failed = True
        errors.append(f"closing the index files failed: {exc}")
    if pool.error is not None or close_failed:
        fixed = repair(out)  # a failed append can leave a partial line
        if fixed.changed:
            log.warning("record: repaired the index: %s", fixed)
    summary.frames_written = pool.written
    summary.frames_rejected += pool.rejected
    summary.frames_lost = pool.lost
    summary.payload_bytes, summary.file_bytes = pool.payload_bytes, pool.file_bytes
    summary.source_stats = source_stats(source)
    summary.source_drops = _drops(summary.source_stats)
    summary.seconds = seconds
    if seconds > 0:
        summary.fps = summary.frames_written / seconds
        summary.mb_per_s = summary.payload_bytes / seconds / 1e6
        summary.file_mb_per_s = summary.file_bytes / seconds / 1e6
    if errors:
        summary.error = "; ".join(errors)
        if pool.error is not None:
            summary.error += (f" — the session stopped; the {summary.frames_written} frame(s) before it are "
                              f"listed in {out / 'exposures.txt'}. Check free space and permissions.")
    summary.status = "failed" if errors else "interrupted" if summary.interrupted else "complete"
    session.update(status=summary.status, ended=_now(), summary=dataclasses.asdict(summary))
    try:
        _write_json(out / SESSION, session)
    except OSError as exc:  # disk full: the folder is still valid, only session.json is stale
        log.error("record: could not write the final %s: %s", out / SESSION, exc)
        summary.error = (summary.error + "; " if summary.error else "") + f"final {SESSION} not written: {exc}"
        summary.status = "failed"
    return summary


def recover_session(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Tidy a folder whose recorder died (SIGKILL, power loss) and mark its session.json
    ``crashed`` with the frames it holds; returns the updated session. Safe on any folder."""
    out = Path(out_dir)
    fixed = repair(out)
    path = out / SESSION
    session: dict[str, Any] = {}
    if path.is_file():
        try:
            session = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not readable JSON ({exc}); the frames themselves are intact") from None
    if session.get("status", "recording") == "recording":
        session.update(status="crashed", recovered=_now(),
                       summary={"frames_written": fixed.frames, "repaired_lines": fixed.dropped_lines,
                                "temp_files_removed": fixed.temp_files})
        _write_json(path, session)
    return session
