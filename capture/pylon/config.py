"""What the pylon camera source is asked to do; checked up front, before any camera opens.

Checks that need the camera (is the format offered, is the ROI inside the sensor, is
the exposure inside the node's range) happen when :class:`capture.pylon.camera.PylonCamera`
opens it, with the camera's own limits in the message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from capture.pylon.exposure import numbers, parse_cycle
from hdrstream.pixfmt import UnknownPixelFormat

MODES = ("auto", "sequencer", "software")
IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class PylonConfig:
    """A Basler camera (or the pylon emulator) as an alternating-exposure source.

    serial: which camera; None = the first *real* camera. The emulator is used only with
        ``emulator=True`` (which sets PYLON_CAMEMU=1 before enumeration when it is unset).
    width/height: ROI size (None = full sensor); offset_x/offset_y: ROI corner.
    exposures_us ("1000,8000") or base_us + stops ("-1.5,+1.5"): the 2- or 3-exposure cycle.
    gain_db: analogue gain (None = leave the camera's). fps: frame rate (None = camera max).
    mode: "auto" (sequencer if the camera has one, else software triggers; always software
        on the emulator), "sequencer" or "software".
    frames: stop after this many delivered frames (None = until closed).
    buffers: grab buffers (MaxNumBuffer; also the chunk node-map pool size).
    image_dir: emulator only: play this folder's images (ImageFileMode) instead of a pattern.
    """

    serial: str | None = None
    emulator: bool = False
    width: int | None = None
    height: int | None = None
    offset_x: int = 0
    offset_y: int = 0
    pixel_format: str = "BayerRG8"
    exposures_us: tuple[float, ...] | None = None
    base_us: float | None = None
    stops: tuple[float, ...] | None = None
    gain_db: float | None = 0.0
    fps: float | None = None
    mode: str = "auto"
    frames: int | None = None
    buffers: int = 16
    grab_timeout_ms: int = 1000
    max_timeouts: int = 5  # consecutive grab timeouts (camera still present) before giving up
    reconnect_attempts: int = 5
    reconnect_backoff_s: float = 0.5  # first wait; doubles per attempt
    reconnect_backoff_max_s: float = 8.0
    image_dir: str | None = None

    def __post_init__(self) -> None:
        if self.exposures_us is not None:
            self.exposures_us = numbers(self.exposures_us, "exposures_us")
        if self.stops is not None:
            self.stops = numbers(self.stops, "stops")
        self.validate()

    @property
    def cycle_us(self) -> tuple[float, ...]:
        """Exposure of each cycle position, µs."""
        return parse_cycle(self.exposures_us, self.base_us, self.stops)

    def validate(self) -> None:
        """Raise ValueError (FileNotFoundError for a missing image_dir) on anything unusable."""
        cycle = self.cycle_us
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        try:
            from capture.pylon.formats import protocol_format

            fmt = protocol_format(self.pixel_format)
        except UnknownPixelFormat:
            raise ValueError(f"unknown pixel format {self.pixel_format!r} (GenICam names: BayerRG8, BayerRG12, "
                             "RGB8, Mono8, …)") from None
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        for name in ("offset_x", "offset_y"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if fmt.bayer:
            odd = [f"{k}={getattr(self, k)}" for k in ("width", "height", "offset_x", "offset_y")
                   if getattr(self, k) is not None and getattr(self, k) % 2]
            if odd:
                raise ValueError(f"{self.pixel_format} needs even ROI sizes and offsets (an odd offset shifts the "
                                 f"colour pattern): {', '.join(odd)}")
        if self.gain_db is not None and not math.isfinite(self.gain_db):
            raise ValueError(f"gain_db must be a number or None, got {self.gain_db}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be positive or None, got {self.fps}")
        if self.frames is not None and self.frames < 0:
            raise ValueError(f"frames must be >= 0 or None, got {self.frames}")
        if self.buffers < 2:
            raise ValueError(f"buffers must be >= 2 (one being filled, one being read), got {self.buffers}")
        if self.grab_timeout_ms < 1:
            raise ValueError(f"grab_timeout_ms must be >= 1, got {self.grab_timeout_ms}")
        if self.grab_timeout_ms < max(cycle) / 1000:
            raise ValueError(f"grab_timeout_ms {self.grab_timeout_ms} is shorter than the longest exposure "
                             f"({max(cycle) / 1000:g} ms)")
        if self.max_timeouts < 1:
            raise ValueError(f"max_timeouts must be >= 1, got {self.max_timeouts}")
        if self.reconnect_attempts < 0:
            raise ValueError(f"reconnect_attempts must be >= 0, got {self.reconnect_attempts}")
        if self.reconnect_backoff_s < 0 or self.reconnect_backoff_max_s < self.reconnect_backoff_s:
            raise ValueError("need 0 <= reconnect_backoff_s <= reconnect_backoff_max_s, got "
                             f"{self.reconnect_backoff_s} and {self.reconnect_backoff_max_s}")
        if self.image_dir is not None:
            if not self.emulator:
                raise ValueError("image_dir plays files through the pylon emulator only; set emulator=True")
            folder = Path(self.image_dir)
            if not folder.is_dir():
                raise FileNotFoundError(f"image_dir not found: {folder}")
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
                raise ValueError(f"image_dir {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
