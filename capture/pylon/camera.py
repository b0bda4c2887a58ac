"""A Basler camera (or the pylon emulator) as an alternating-exposure frame source.

Two ways to get the exposure cycle right, chosen by what the camera has:

- **sequencer** (real cameras): the camera switches exposure on every frame start and
  tells, in chunk data, which set and exposure each frame had. Free-running, full rate.
- **software** (emulator, cameras without a sequencer): each frame is triggered
  explicitly after its exposure is written (set exposure → wait for trigger ready →
  trigger → retrieve), so every frame's exposure is known, at some cost in frame rate.

Either way ``seq`` comes from the camera's BlockID (:mod:`capture.pylon.seqmap`): a lost
or incomplete frame leaves a counted, logged gap and ``seq % n`` keeps meaning the same
exposure. A removed camera is re-found by serial with back-off, reconfigured, and the
stream resumes after a gap; after the configured attempts a RuntimeError ends it (the
runner then sends an eos that says why).
"""
from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from capture.pylon.config import PylonConfig
from capture.pylon.formats import camera_format, flips_bgr, is_bit_packed, protocol_format
from capture.pylon.nodes import Nodes, feature_names
from capture.pylon.seqmap import SeqMapper
from capture.pylon.sequencer import (
    ChunkData,
    autos_off,
    chunks_off,
    enable_chunks,
    program_sequencer,
    read_chunks,
    sequencer_off,
)
from hdrstream.frame import Frame
from hdrstream.pixfmt import check_layout

log = logging.getLogger(__name__)

EMULATOR_CLASS = "BaslerCamEmu"
MAX_GAP_RANGES = 64  # most recent gap ranges kept in CameraStats


def load_pylon(emulator: bool = False) -> ModuleType:
    """Import pypylon; with ``emulator`` first make sure PYLON_CAMEMU offers one emulated camera.

    pylon 12 reads PYLON_CAMEMU at every enumeration, so setting it here is enough even
    when pypylon was imported earlier.
    """
    if emulator and not os.environ.get("PYLON_CAMEMU"):
        os.environ["PYLON_CAMEMU"] = "1"
    try:
        from pypylon import pylon
    except ImportError as exc:
        raise RuntimeError(
            "pypylon is not installed; install it with pip install 'hdrstream[camera]' (it bundles the pylon runtime)"
        ) from exc
    return pylon


@dataclass
class CameraStats:
    """Counters a progress bar or metrics exporter can read while frames flow."""

    grabbed: int = 0  # frames delivered
    incomplete: int = 0  # buffers the driver flagged as failed (skipped; their seq is a gap)
    gaps: int = 0  # seqs missing from the delivered stream, whatever the cause
    timeouts: int = 0  # grabs that returned nothing in grab_timeout_ms
    reconnects: int = 0  # successful reconnects after a removal
    resyncs: int = 0  # frames whose set disagreed with their seq (the stream skipped ahead)
    last_error: str | None = None
    gap_ranges: list[tuple[int, int]] = field(default_factory=list)  # recent (first, last) missing seqs


def _removal_handler(pylon: ModuleType, on_removed: Callable[[], None]) -> Any:
    """A pylon configuration handler whose only job is to notice the camera vanishing."""

    class RemovalHandler(pylon.ConfigurationEventHandler):
        def OnCameraDeviceRemoved(self, camera: Any) -> None:  # runs on a pylon thread
            on_removed()

    return RemovalHandler()


class PylonCamera:
    """Frames from a Basler camera; satisfies :class:`hdrstream.stage.Source`.

    Opening and configuring happen in the constructor, so a wrong serial, format, ROI or
    exposure fails before a pipeline starts. ``pylon`` is the pypylon ``pylon`` module
    (tests pass a fake); ``sleep`` is the back-off wait (tests pass a recorder).
    """

    name = "pylon"

    def __init__(self, cfg: PylonConfig, pylon: ModuleType | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        cfg.validate()
        self.cfg = cfg
        self.pylon = pylon if pylon is not None else load_pylon(cfg.emulator)
        self.stats = CameraStats()
        self.cycle_us = cfg.cycle_us
        self._sleep = sleep
        self._mapper = SeqMapper(len(self.cycle_us))
        self._removed = threading.Event()
        self._handler = _removal_handler(self.pylon, self._on_removed)
        self._closed = False
        self._cam: Any = None
        self._last_emitted = -1
        self._consecutive_timeouts = 0
        tl, info = self._find(cfg.serial)
        if info is None:
            raise RuntimeError(self._not_found_message())
        self.serial = str(info.GetSerialNumber())
        self._open(tl, info)

    @property
    def exposure_cycle(self) -> list[float]:
        """Exposure of each cycle position in seconds (as the simulated camera reports it)."""
        return [t * 1e-6 for t in self.cycle_us]

    # -- finding and opening ----------------------------------------------------------------

    def _devices(self) -> tuple[Any, list[Any]]:
        tl = self.pylon.TlFactory.GetInstance()
        return tl, list(tl.EnumerateDevices())

    def _find(self, serial: str | None) -> tuple[Any, Any | None]:
        """The device to open: by serial, else the first real camera (or emulator, if asked)."""
        tl, devices = self._devices()
        if serial is not None:
            match = [d for d in devices if str(d.GetSerialNumber()) == serial]
        else:
            match = [d for d in devices if (d.GetDeviceClass() == EMULATOR_CLASS) == self.cfg.emulator]
        if not match:
            return tl, None
        info = match[0]
        emulated = info.GetDeviceClass() == EMULATOR_CLASS
        if emulated and not self.cfg.emulator:
            raise ValueError(f"camera {serial} is the pylon emulator; pass emulator=True to use it on purpose")
        if self.cfg.emulator and not emulated:
            raise ValueError(f"camera {serial} is a real camera ({info.GetModelName()}) but emulator=True")
        return tl, info

    def _not_found_message(self) -> str:
        _, devices = self._devices()
        found = ", ".join(f"{d.GetSerialNumber()} ({d.GetModelName()}, {d.GetDeviceClass()})" for d in devices)
        want = f"camera with serial {self.cfg.serial}" if self.cfg.serial else (
            "pylon emulator" if self.cfg.emulator else "Basler camera")
        hint = ("set PYLON_CAMEMU=1 before the first enumeration" if self.cfg.emulator else
                "check the cable, the udev rule and usbfs_memory_mb, and that no other program holds it "
                "(docs/camera.md); the emulator is only used with emulator=True")
        return f"no {want} found (found: {found or 'none'}); {hint}"

    def _open(self, tl: Any, info: Any) -> None:
        cam = self.pylon.InstantCamera(tl.CreateDevice(info))
        cam.RegisterConfiguration(self._handler, self.pylon.RegistrationMode_Append, self.pylon.Cleanup_None)
        self._removed.clear()
        try:
            cam.Open()
        except Exception:
            self._release(cam)
            raise
        self._cam, self._info = cam, info
        try:
            self._configure()
        except Exception:
            self._destroy()
            raise

    def _on_removed(self) -> None:
        self._removed.set()
        log.error("camera %s: device removed (pylon reported it)", getattr(self, "serial", "?"))

    # -- configuration ----------------------------------------------------------------------

    def _configure(self) -> None:
        """Put the camera in the state frames() expects; every check names the camera's limits."""
        cfg, cam = self.cfg, self._cam
        nodes = Nodes(cam.GetNodeMap(), f"camera {self.serial}")
        names = feature_names(nodes)
        self.nodes, self.names = nodes, names
        self.is_emulator = self._info.GetDeviceClass() == EMULATOR_CLASS
        has_sequencer = names.sequencer is not None and not self.is_emulator
        if cfg.mode == "sequencer" and not has_sequencer:
            raise ValueError(f"camera {self.serial} has no sequencer (SequencerMode / SequenceEnable); "
                             "use mode='software' or 'auto'")
        self.mode = "sequencer" if cfg.mode != "software" and has_sequencer else "software"
        sequencer_off(nodes, names)  # sequencer mode locks the parameters written below
        autos_off(nodes)
        self.camera_format = camera_format(cfg.pixel_format, nodes.symbolics("PixelFormat"))
        nodes.set("PixelFormat", self.camera_format)
        self.format = protocol_format(self.camera_format)
        self._flip_bgr = flips_bgr(self.camera_format)
        self._set_roi(nodes)
        if cfg.gain_db is not None:
            if names.gain is None:
                raise ValueError(f"camera {self.serial} has no gain in dB (only GainRaw); set gain_db=None and "
                                 "set the gain in pylon Viewer")
            nodes.check_range(names.gain, cfg.gain_db, " dB")
            nodes.set(names.gain, float(cfg.gain_db))
        self.gain_db = float(nodes.get(names.gain, 0.0)) if names.gain else 0.0
        for t_us in self.cycle_us:
            nodes.check_range(names.exposure, t_us, " µs")
        self._set_frame_rate(nodes)
        self._set_trigger(nodes)
        if self.is_emulator:
            self._emulator_playback(nodes)
            chunks_off(nodes)  # the emulator has ChunkModeActive but cannot grab with it
            self.chunks: list[str] = []
        else:
            self.chunks = enable_chunks(nodes, names)
        if self.mode == "sequencer":  # last: every set stores the settings made above
            program_sequencer(nodes, names, self.cycle_us, cfg.gain_db)
        else:
            nodes.set(names.exposure, float(self.cycle_us[0]))
        self._exposure_now = float(self.cycle_us[0])
        instant = Nodes(cam.GetInstantCameraNodeMap(), "pylon InstantCamera")
        instant.set("MaxNumBuffer", cfg.buffers)
        if self.chunks:
            instant.try_set("StaticChunkNodeMapPoolSize", cfg.buffers)
        tick = nodes.get(names.timestamp_tick_hz) if names.timestamp_tick_hz else None
        self._tick_hz = float(tick) if tick else None
        log.info("camera %s configured: %s, %s %dx%d+%d+%d, exposures %s µs, %s mode, chunks %s",
                 self.serial, self._info.GetModelName(), self.camera_format, self.roi[0], self.roi[1],
                 self.roi[2], self.roi[3], [f"{t:g}" for t in self.cycle_us], self.mode, self.chunks or "off")

    def _set_roi(self, nodes: Nodes) -> None:
        cfg = self.cfg
        nodes.try_set("OffsetX", 0)  # so the full width/height range is open
        nodes.try_set("OffsetY", 0)
        roi = []
        for size_name, off_name, size, off in (("Width", "OffsetX", cfg.width, cfg.offset_x),
                                               ("Height", "OffsetY", cfg.height, cfg.offset_y)):
            lo, hi = (int(v) for v in nodes.limits(size_name))
            want = hi if size is None else size
            if size is None and self.format.bayer:
                want -= want % 2
            if not lo <= want <= hi:
                raise ValueError(f"ROI {size_name.lower()} {want} is out of range for camera {self.serial}: {lo}..{hi}")
            step = nodes.increment(size_name)
            if (want - lo) % step:
                raise ValueError(f"ROI {size_name.lower()} {want} must be {lo} plus a multiple of {step} "
                                 "on this camera")
            nodes.set(size_name, want)
            olo, ohi = (int(v) for v in nodes.limits(off_name))
            if not olo <= off <= ohi:
                raise ValueError(f"ROI {off_name} {off} is out of range for camera {self.serial} with "
                                 f"{size_name.lower()} {want}: {olo}..{ohi}")
            step = nodes.increment(off_name)
            if (off - olo) % step:
                raise ValueError(f"ROI {off_name} {off} must be a multiple of {step} on this camera")
            nodes.set(off_name, off)
            roi += [want, off]
        self.roi = (roi[0], roi[2], roi[1], roi[3])  # width, height, offset_x, offset_y

    def _set_frame_rate(self, nodes: Nodes) -> None:
        cfg, names = self.cfg, self.names
        if names.frame_rate is None:
            if cfg.fps is not None:
                raise ValueError(f"camera {self.serial} has no frame-rate control; set fps=None")
            return
        if cfg.fps is None:
            nodes.try_set("AcquisitionFrameRateEnable", False)
            return
        nodes.try_set("AcquisitionFrameRateEnable", True)
        nodes.check_range(names.frame_rate, cfg.fps, " fps")
        nodes.set(names.frame_rate, float(cfg.fps))
        if max(self.cycle_us) * 1e-6 > 1.0 / cfg.fps:
            log.warning("longest exposure %.3g ms exceeds the frame interval at %g fps: the camera will run slower",
                        max(self.cycle_us) / 1e3, cfg.fps)

    def _set_trigger(self, nodes: Nodes) -> None:
        selectors = nodes.symbolics("TriggerSelector")
        for sel in ("AcquisitionStart", "FrameBurstStart"):  # no trigger should gate acquisition itself
            if sel in selectors:
                nodes.set("TriggerSelector", sel)
                nodes.try_set("TriggerMode", "Off")
        nodes.set("TriggerSelector", "FrameStart")
        if self.mode == "software":
            nodes.set("TriggerMode", "On")
            nodes.set("TriggerSource", "Software")
        else:
            nodes.set("TriggerMode", "Off")

    def _emulator_playback(self, nodes: Nodes) -> None:
        if self.cfg.image_dir is None:
            nodes.try_set("ImageFileMode", "Off")
            return
        nodes.set("TestImageSelector", "Off")  # otherwise the test pattern wins over the files
        nodes.set("ImageFilename", str(Path(self.cfg.image_dir).resolve()))
        nodes.set("ImageFileMode", "On")

    # -- grabbing ---------------------------------------------------------------------------

    def frames(self) -> Iterator[Frame]:
        """Delivered frames until ``cfg.frames`` or :meth:`close`; raises RuntimeError when the
        camera is gone for good or stops sending."""
        delivered = 0
        while not self._closed and (self.cfg.frames is None or delivered < self.cfg.frames):
            try:
                self._start_grabbing()
                frame = self._grab_one()
            except Exception as exc:
                if self._closed:
                    return
                if not self._device_removed():
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    raise
                self._reconnect(exc)
                continue
            if frame is not None:
                delivered += 1
                yield frame

    def _start_grabbing(self) -> None:
        if self._cam.IsGrabbing():
            return
        self._mapper.new_session(gap=1)  # BlockIDs restart with every grab session
        self._trigger = 0
        self._sw_start = self._mapper.next_position()
        self._commanded: dict[int, int] = {}
        self._t_start = time.monotonic()
        self._cam.StartGrabbing(self.pylon.GrabStrategy_OneByOne)

    def _grab_one(self) -> Frame | None:
        timeout = self.cfg.grab_timeout_ms
        if self.mode == "sequencer":
            return self._handle(self._cam.RetrieveResult(timeout, self.pylon.TimeoutHandling_Return), 0)
        k = self._trigger
        pos = (self._sw_start + k) % len(self.cycle_us)
        t_us = float(self.cycle_us[pos])
        if t_us != self._exposure_now:
            self.nodes.set(self.names.exposure, t_us)
            self._exposure_now = t_us
        if self.cfg.fps:
            wait = self._t_start + k / self.cfg.fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._cam.WaitForFrameTriggerReady(timeout, self.pylon.TimeoutHandling_ThrowException)
        self._cam.ExecuteSoftwareTrigger()
        self._commanded[k] = pos
        self._commanded.pop(k - 4 * self.cfg.buffers, None)  # late frames beyond the buffers never come
        self._trigger += 1
        return self._handle(self._cam.RetrieveResult(timeout, self.pylon.TimeoutHandling_Return), k)

    def _handle(self, res: Any, first_index: int) -> Frame | None:
        """One grab result → a Frame, or None (timeout, incomplete buffer: counted and logged)."""
        if res is None or not res.IsValid():
            if self._device_removed():
                raise RuntimeError("no grab result: camera removed")
            self.stats.timeouts += 1
            self._consecutive_timeouts += 1
            log.warning("camera %s: no frame within %d ms (%d in a row)", self.serial, self.cfg.grab_timeout_ms,
                        self._consecutive_timeouts)
            if self._consecutive_timeouts >= self.cfg.max_timeouts:
                raise RuntimeError(f"camera {self.serial} sent no frame in {self._consecutive_timeouts} tries of "
                                   f"{self.cfg.grab_timeout_ms} ms; is it triggered externally or overheated?")
            return None
        self._consecutive_timeouts = 0
        try:
            index = self._mapper.index(res.GetBlockID(), first_index)
            if not res.GrabSucceeded():
                self.stats.incomplete += 1
                why = f"{res.GetErrorDescription()} (error 0x{int(res.GetErrorCode()) & 0xFFFFFFFF:x})"
                self.stats.last_error = f"incomplete frame: {why}"
                log.warning("camera %s: incomplete frame, BlockID %d (seq %s): %s; skipped, its seq is a gap",
                            self.serial, res.GetBlockID(), self._mapper.predicted(index), why)
                return None
            block_id = int(res.GetBlockID())
            chunk = read_chunks(res, self.names) if self.chunks else ChunkData()
            data = self._copy_pixels(res)
            stamp = chunk.timestamp or int(res.GetTimeStamp() or 0)
        finally:
            res.Release()
        return self._frame(index, block_id, chunk, data, stamp)

    def _copy_pixels(self, res: Any) -> np.ndarray:
        """Own copy of the pixels: the grab buffer goes back to the driver right after."""
        if is_bit_packed(self.camera_format):
            data = np.array(res.GetArray(), copy=True)  # pypylon unpacks 10p/12p into uint16
        else:
            with res.GetArrayZeroCopy() as view:
                data = view[..., ::-1].copy() if self._flip_bgr else view.copy()
        check_layout(self.format, data.shape, data.dtype)
        return data

    def _frame(self, index: int, block_id: int, chunk: ChunkData, data: np.ndarray, stamp: int) -> Frame:
        n = len(self.cycle_us)
        if chunk.set is not None:
            pos = chunk.set
        elif self.mode == "software":
            pos = self._commanded.get(index, (self._sw_start + index) % n)
        else:
            pos = index % n  # sequencer without chunks: set 0 at grab start
        if not 0 <= pos < n:
            raise RuntimeError(f"camera {self.serial} reports sequencer set {pos}, but only sets 0..{n - 1} were "
                               "programmed; another program may have changed the sequencer")
        seq = self._mapper.seq(index, pos)
        self.stats.resyncs = self._mapper.resyncs
        missing = seq - self._last_emitted - 1
        if missing > 0:
            self.stats.gaps += missing
            self.stats.gap_ranges = [*self.stats.gap_ranges, (self._last_emitted + 1, seq - 1)][-MAX_GAP_RANGES:]
            log.warning("camera %s: seq %d..%d missing (%d frame(s)); stream continues at seq %d",
                        self.serial, self._last_emitted + 1, seq - 1, missing, seq)
        self._last_emitted = seq
        self.stats.grabbed += 1
        exposure_us = chunk.exposure_us if chunk.exposure_us is not None else self.cycle_us[pos]
        if stamp:
            t_ns, clock = (int(stamp * 1e9 / self._tick_hz) if self._tick_hz else int(stamp)), "camera"
        else:
            t_ns, clock = time.monotonic_ns(), "host"  # the emulator stamps 0
        meta = {"stem": f"{seq:06d}", "block_id": block_id, "clock": clock,
                "exposure_from": "chunk" if chunk.exposure_us is not None else "commanded"}
        return Frame(kind="frame", stream=self.serial, seq=seq, t_ns=t_ns, exposure_s=exposure_us * 1e-6,
                     gain_db=chunk.gain_db if chunk.gain_db is not None else self.gain_db,
                     pixel_format=self.format.name, data=data, set=pos, meta=meta)

    # -- removal ----------------------------------------------------------------------------

    def _device_removed(self) -> bool:
        if self._removed.is_set():
            return True
        try:
            return self._cam is not None and bool(self._cam.IsCameraDeviceRemoved())
        except Exception:
            return False

    def _reconnect(self, cause: BaseException) -> None:
        cfg = self.cfg
        self.stats.last_error = f"camera removed: {cause}"
        log.error("camera %s was removed (%s); reconnecting, up to %d attempt(s)", self.serial, cause,
                  cfg.reconnect_attempts)
        self._destroy()
        last = "not found"
        for attempt in range(1, cfg.reconnect_attempts + 1):
            self._sleep(min(cfg.reconnect_backoff_s * 2 ** (attempt - 1), cfg.reconnect_backoff_max_s))
            if self._closed:
                raise RuntimeError(f"camera {self.serial}: closed while reconnecting")
            try:
                tl, info = self._find(self.serial)
                if info is None:
                    last = "not found on the bus"
                    log.warning("reconnect %d/%d: camera %s not found yet", attempt, cfg.reconnect_attempts,
                                self.serial)
                    continue
                self._open(tl, info)
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning("reconnect %d/%d: camera %s: %s", attempt, cfg.reconnect_attempts, self.serial, last)
                self._destroy()
                continue
            self.stats.reconnects += 1
            log.warning("camera %s reconnected (attempt %d); the stream resumes after a gap", self.serial, attempt)
            return
        self.stats.last_error = f"camera removed, not back after {cfg.reconnect_attempts} attempt(s): {last}"
        raise RuntimeError(f"camera {self.serial} was removed and is not back after {cfg.reconnect_attempts} "
                           f"reconnect attempt(s) (last: {last}); check the cable, port and power (docs/camera.md)")

    def _destroy(self) -> None:
        """Drop the pylon device of a removed (or failed) camera; errors here change nothing."""
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.StopGrabbing()
        except Exception as exc:
            log.debug("camera %s: StopGrabbing during teardown: %s", self.serial, exc)
        self._release(cam)

    # -- calibration bracket ----------------------------------------------------------------

    def bracket(self, exposures_s: Sequence[float], frames_each: int) -> list[tuple[float, list[np.ndarray]]]:
        """A static bracket for CRF calibration: ``frames_each`` frames at each exposure.

        Uses explicit software triggers whatever the streaming mode (the sequencer would
        mix exposures). Returns ``(exposure_s, frames)`` per exposure, the exposure as the
        chunk reported it when the camera sends chunks. The streaming setup is restored after.
        """
        if frames_each < 1:
            raise ValueError(f"frames_each must be >= 1, got {frames_each}")
        if not exposures_s:
            raise ValueError("bracket needs at least one exposure")
        for t in exposures_s:
            if not (math.isfinite(t) and t > 0):
                raise ValueError(f"exposures must be positive seconds, got {t}")
            self.nodes.check_range(self.names.exposure, t * 1e6, " µs")
        cam, nodes, pylon = self._cam, self.nodes, self.pylon
        timeout = self.cfg.grab_timeout_ms
        if cam.IsGrabbing():
            cam.StopGrabbing()
        sequencer_off(nodes, self.names)
        nodes.set("TriggerSelector", "FrameStart")
        nodes.set("TriggerMode", "On")
        nodes.set("TriggerSource", "Software")
        out: list[tuple[float, list[np.ndarray]]] = []
        cam.StartGrabbing(pylon.GrabStrategy_OneByOne)
        try:
            for t in exposures_s:
                nodes.set(self.names.exposure, float(t * 1e6))
                frames: list[np.ndarray] = []
                reported = t
                tries = 0
                while len(frames) < frames_each:
                    tries += 1
                    if tries > frames_each + self.cfg.max_timeouts:
                        raise RuntimeError(f"camera {self.serial}: bracket at {t:g} s got only {len(frames)} of "
                                           f"{frames_each} good frames in {tries - 1} tries")
                    cam.WaitForFrameTriggerReady(timeout, pylon.TimeoutHandling_ThrowException)
                    cam.ExecuteSoftwareTrigger()
                    res = cam.RetrieveResult(timeout, pylon.TimeoutHandling_Return)
                    if res is None or not res.IsValid():
                        if self._device_removed():
                            raise RuntimeError(f"camera {self.serial} was removed during the bracket")
                        self.stats.timeouts += 1
                        continue
                    try:
                        if not res.GrabSucceeded():
                            self.stats.incomplete += 1
                            continue
                        chunk = read_chunks(res, self.names) if self.chunks else ChunkData()
                        if chunk.exposure_us is not None:
                            reported = chunk.exposure_us * 1e-6
                        frames.append(self._copy_pixels(res))
                    finally:
                        res.Release()
                out.append((reported, frames))
        finally:
            cam.StopGrabbing()
            self._configure()  # back to the streaming setup (sequencer, trigger mode)
        return out

    # -- reporting and lifetime ----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What a recording's session.json should say about the camera and its settings."""
        nodes, info = self.nodes, self._info
        try:
            pypylon_version = importlib.metadata.version("pypylon")
        except importlib.metadata.PackageNotFoundError:
            pypylon_version = None
        try:
            pylon_version = str(self.pylon.GetPylonVersionString())
        except Exception:
            pylon_version = None
        width, height, ox, oy = self.roi
        return {
            "camera": "pylon-emulator" if self.is_emulator else "pylon",
            "model": nodes.get("DeviceModelName") or str(info.GetModelName()),
            "serial": self.serial,
            "vendor": nodes.get("DeviceVendorName") or str(info.GetVendorName()),
            "firmware": nodes.get("DeviceFirmwareVersion"),
            "device_version": nodes.get("DeviceVersion"),
            "device_class": str(info.GetDeviceClass()),
            "sfnc": self.names.sfnc,
            "pixel_format": self.format.name,
            "camera_pixel_format": self.camera_format,
            "roi": {"width": width, "height": height, "offset_x": ox, "offset_y": oy},
            "fps": self.cfg.fps,
            "resulting_fps": nodes.get("ResultingFrameRate") or nodes.get("ResultingFrameRateAbs"),
            "exposure_cycle_us": list(self.cycle_us),
            "exposure_cycle_s": [t * 1e-6 for t in self.cycle_us],
            "gain_db": self.gain_db,
            "mode": self.mode,
            "chunks": list(self.chunks),
            "buffers": self.cfg.buffers,
            "pypylon_version": pypylon_version,
            "pylon_version": pylon_version,
        }

    @property
    def source_gaps(self) -> list[list[int]]:
        """[first, last] seqs the camera skipped (removal, incomplete grabs): the eos lists them."""
        return [[a, b] for a, b in self.stats.gap_ranges]

    def close(self) -> None:
        """Stop grabbing, leave the sequencer off, and release the camera. Safe to call twice."""
        self._closed = True
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            if cam.IsGrabbing():
                cam.StopGrabbing()
            if not self._removed.is_set():
                sequencer_off(self.nodes, self.names)
            cam.Close()
        except Exception as exc:  # a removed camera cannot be closed cleanly; nothing is lost
            log.debug("camera %s: error while closing: %s", self.serial, exc)
        finally:
            self._release(cam)

    def _release(self, cam: Any) -> None:
        """Detach our Python event handler, then destroy the device: pylon calls the handler
        while destroying, and a handler collected first would crash the process."""
        for call in (lambda: cam.DeregisterConfiguration(self._handler), cam.DestroyDevice):
            try:
                call()
            except Exception as exc:
                log.debug("camera %s: error while releasing: %s", getattr(self, "serial", "?"), exc)

    def __del__(self) -> None:
        # a camera dropped without close() must still be released in order (see _release)
        if getattr(self, "_cam", None) is not None:
            self.close()

    def __enter__(self) -> PylonCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
