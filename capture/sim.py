"""The simulated camera: an alternating-exposure stream of a moving HDR scene, with its
exact linear ground truth.

Frame ``i`` is rendered at ``t = i / fps``: the world is resampled through the camera path
(a similarity warp), the foreground objects are composited on top along their own paths,
and that irradiance (times the analogue gain) *is* the ground truth ``H_gt`` of frame
``i``: an ideal camera would record ``lin = H_gt * t`` (design §3). The sensor then adds
noise, clips, applies the CRF and quantises.

Exposure is decided once, from frame 0, like a camera whose auto-exposure is locked for
the recording: the 99.5th percentile of max(R, G, B) (above it: lamps and sun, allowed to
clip) lands at 0.9 full scale in the shortest exposure. When the longest exposure would
exceed the frame interval, exposures are capped and analogue gain makes up the rest.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from capture.motion import CameraPath, ObjectPath, random_camera_path, random_object_path
from capture.scene import add_sun, load_world, object_sprite, procedural_world
from capture.sensor import Sensor, check_supported
from hdrstream.crf import load_crf
from hdrstream.frame import Frame
from hdrstream.hdrio import write_exr
from hdrstream.pixfmt import pixel_format

log = logging.getLogger(__name__)

DEFAULT_RATIOS = {2: (1.0, 8.0), 3: (1.0, 4.0, 16.0)}
AE_PERCENTILE = 99.5
AE_TARGET = 0.9  # full-scale fraction the AE percentile lands on in the short exposure
MIN_EXPOSURE_S = 20e-6
MAX_GAIN_DB = 24.0  # the acA4096-30uc's analogue gain range


@dataclass
class SimConfig:
    """What the simulated camera renders. Validated on construction (and again on use)."""

    width: int = 640
    height: int = 360
    frames: int = 24
    exposures: int = 2  # exposures in the cycle
    ratios: tuple[float, ...] | None = None  # default (1, 8) for 2, (1, 4, 16) for 3
    pixel_format: str = "RGB8"  # RGB8, BayerRG8, BayerRG12 (12-bit codes in uint16), ...
    fps: float = 30.0
    realtime: bool = False  # pace frames at fps instead of as fast as possible
    seed: int = 0
    scene: str = "procedural"  # or the path of an .exr / .hdr image
    crf: str = "gamma2.2"  # or a CRF JSON path; the camera applies crf.from_linear
    noise: bool = True
    full_well_e: float = 10500.0
    read_noise_e: float = 2.5
    motion: float = 1.0  # camera motion scale; 0 = static camera
    occluders: int = 1  # moving foreground objects, each on its own path
    occluder_size: tuple[float, float] = (0.25, 0.45)  # an object's side, as a fraction of the height
    occluder_speed: float = 1.0  # scale of the objects' motion (1: 3-8 px/frame at 640 wide)
    sun: bool = False  # a low sun and its warm glow in the view (procedural scenes): large clipped areas
    # fault injection: the camera is unplugged at `outage[0]` s of stream time for `outage[1]` s;
    # the frames it would have taken meanwhile never come (a seq gap, as after a real camera's
    # reconnect) and are listed in `source_gaps`
    outage: tuple[float, float] = (0.0, 0.0)
    stream: str = "sim"

    def __post_init__(self) -> None:
        if self.ratios is not None:
            self.ratios = tuple(float(r) for r in self.ratios)
        self.occluder_size = tuple(float(x) for x in self.occluder_size)
        self.validate()

    @property
    def cycle_ratios(self) -> tuple[float, ...]:
        """Exposure of each cycle position relative to the first (shortest)."""
        ratios = self.ratios or DEFAULT_RATIOS[self.exposures]
        return tuple(r / ratios[0] for r in ratios)

    def validate(self) -> None:
        """Raise ValueError (FileNotFoundError for a missing scene) on anything unusable."""
        if self.width < 2 or self.height < 2:
            raise ValueError(f"width and height must be >= 2, got {self.width}x{self.height}")
        if self.frames < 0:
            raise ValueError(f"frames must be >= 0, got {self.frames}")
        if self.exposures not in DEFAULT_RATIOS:
            raise ValueError(f"exposures must be 2 or 3, got {self.exposures}")
        if self.ratios is not None:
            if len(self.ratios) != self.exposures:
                raise ValueError(f"ratios {self.ratios} has {len(self.ratios)} entries; exposures is {self.exposures}")
            if min(self.ratios) <= 0 or not all(math.isfinite(r) for r in self.ratios):
                raise ValueError(f"ratios must be positive, got {self.ratios}")
            if self.ratios[0] != min(self.ratios):
                raise ValueError(f"ratios must start with the shortest exposure, got {self.ratios}")
        fmt = pixel_format(self.pixel_format)  # UnknownPixelFormat is a ValueError
        check_supported(fmt)
        if fmt.bayer and (self.width % 2 or self.height % 2):
            raise ValueError(f"{fmt.name} needs an even width and height, got {self.width}x{self.height}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if len(self.outage) != 2 or min(self.outage) < 0:
            raise ValueError(f"outage must be (start_s, duration_s) >= 0, got {self.outage}")
        if self.full_well_e <= 0 or self.read_noise_e < 0:
            raise ValueError("full_well_e must be > 0 and read_noise_e >= 0")
        if self.motion < 0 or self.occluders < 0:
            raise ValueError("motion and occluders must be >= 0")
        lo, hi = self.occluder_size if len(self.occluder_size) == 2 else (0.0, -1.0)
        if not 0 < lo <= hi <= 2:
            raise ValueError(f"occluder_size must be (lo, hi) with 0 < lo <= hi <= 2, got {self.occluder_size}")
        if not (math.isfinite(self.occluder_speed) and self.occluder_speed >= 0):
            raise ValueError(f"occluder_speed must be >= 0, got {self.occluder_speed}")
        if self.sun and self.scene != "procedural":
            raise ValueError("sun=True paints into the procedural world; a scene image has its own sky")
        if self.scene != "procedural":
            path = Path(self.scene)
            if not path.is_file():
                raise FileNotFoundError(f"scene image not found: {path} (or use scene='procedural')")
            if path.suffix.lower() not in (".exr", ".hdr", ".pic"):
                raise ValueError(f"scene image must be .exr or .hdr, got {path.name}")
        load_crf(self.crf)


@dataclass(frozen=True)
class _Occluder:
    rgba: np.ndarray  # (s, s, 4) premultiplied radiance + alpha
    path: ObjectPath
    speed: float = 1.0  # the path runs this many times faster

    def place(self, t: float, width: int, height: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The sprite warped into the part of the view it covers: (patch, (x0, y0)), or None."""
        s = self.rgba.shape[0]
        m = self.path.matrix(t * self.speed, anchor=((s - 1) / 2, (s - 1) / 2))
        corners = m @ np.array([[0, s, 0, s], [0, 0, s, s], [1, 1, 1, 1]], float)
        x0, y0 = np.floor(corners.min(axis=1)).astype(int) - 1
        x1, y1 = np.ceil(corners.max(axis=1)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x0 >= x1 or y0 >= y1:
            return None
        m[:, 2] -= (x0, y0)
        patch = cv2.warpAffine(self.rgba, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return patch, (x0, y0)


def _world_and_path(cfg: SimConfig) -> tuple[np.ndarray, CameraPath]:
    """The world image and the camera path over it, sized so the view never leaves it."""
    path = random_camera_path(cfg.width, cfg.height, cfg.motion, np.random.default_rng([cfg.seed, 1]))
    if cfg.scene == "procedural":
        rx, ry = path.reach()
        ww, wh = 2 * math.ceil(rx) + 2, 2 * math.ceil(ry) + 2
        world = procedural_world(wh, ww, cfg.seed, view=(cfg.height, cfg.width))
        if cfg.sun:
            add_sun(world, np.random.default_rng([cfg.seed, 5]), view=(cfg.height, cfg.width))
        return world, replace(path, world_w=ww, world_h=wh, scale=1.0)
    world = load_world(cfg.scene)
    fitted = path.fit(world.shape[1], world.shape[0])
    if fitted.scale > 1.0:  # shrink a big image first: warping it down would alias
        size = (max(2, round(world.shape[1] / fitted.scale)), max(2, round(world.shape[0] / fitted.scale)))
        world = cv2.resize(world, size, interpolation=cv2.INTER_AREA)
        fitted = path.fit(*size)
    return world, fitted


class SimCamera:
    """A virtual alternating-exposure camera; satisfies :class:`hdrstream.stage.Source`."""

    name = "sim"

    def __init__(self, cfg: SimConfig, gt_dir: str | Path | None = None):
        cfg.validate()
        self.cfg = cfg
        self.gt_dir = Path(gt_dir) if gt_dir is not None else None
        self._closed = False
        self.source_gaps: list[list[int]] = []  # [first, last] seqs the camera never delivered
        w, h = cfg.width, cfg.height
        self.world, self.path = _world_and_path(cfg)
        rng = np.random.default_rng([cfg.seed, 2])
        self.occluders = [
            _Occluder(object_sprite(int(h * rng.uniform(*cfg.occluder_size)) + 4, rng), random_object_path(w, h, rng),
                      cfg.occluder_speed)
            for _ in range(cfg.occluders)
        ]
        self.sensor = Sensor(cfg.pixel_format, load_crf(cfg.crf), cfg.full_well_e, cfg.read_noise_e, cfg.noise)
        self._cycle, self.gain = self._auto_expose(self.render(0, gain=1.0))

    # -- exposure ---------------------------------------------------------------------------

    def _auto_expose(self, irradiance: np.ndarray) -> tuple[list[float], float]:
        level = float(np.percentile(irradiance.max(axis=2), AE_PERCENTILE))
        ratios = self.cfg.cycle_ratios
        t_short = AE_TARGET / level if level > 0 else 1.0
        t_short = max(t_short, MIN_EXPOSURE_S)
        gain = 1.0
        t_cap = 1.0 / (self.cfg.fps * max(ratios))  # the longest exposure fits in a frame interval
        if t_short > t_cap:
            gain = min(t_short / t_cap, 10 ** (MAX_GAIN_DB / 20))
            t_short = t_cap
        return [t_short * r for r in ratios], gain

    @property
    def exposure_cycle(self) -> list[float]:
        """Exposure times in seconds, in cycle order, shortest first."""
        return list(self._cycle)

    @property
    def gain_db(self) -> float:
        return 20.0 * math.log10(self.gain)

    # -- rendering --------------------------------------------------------------------------

    def render(self, seq: int, gain: float | None = None) -> np.ndarray:
        """Irradiance of frame ``seq`` at time ``seq / fps``, times ``gain`` (default: the camera's)."""
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        t = seq / self.cfg.fps
        img = cv2.warpAffine(self.world, self.path.matrix(t), (self.cfg.width, self.cfg.height),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101)
        for occ in self.occluders:
            placed = occ.place(t, self.cfg.width, self.cfg.height)
            if placed is None:
                continue
            patch, (x0, y0) = placed
            roi = img[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]]
            roi *= 1.0 - patch[..., 3:]
            roi += patch[..., :3]
        g = self.gain if gain is None else gain
        if g != 1.0:
            img *= np.float32(g)
        return img

    def ground_truth(self, seq: int) -> np.ndarray:
        """H_gt of frame ``seq``, float32 (H, W, 3): an ideal linear camera records H_gt * t."""
        return self.render(seq)

    def occluder_alpha(self, seq: int) -> np.ndarray:
        """Coverage of frame ``seq`` by the moving objects, float32 (H, W) in [0, 1]."""
        t = seq / self.cfg.fps
        clear = np.ones((self.cfg.height, self.cfg.width), np.float32)
        for occ in self.occluders:
            placed = occ.place(t, self.cfg.width, self.cfg.height)
            if placed is not None:
                patch, (x0, y0) = placed
                clear[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] *= 1.0 - patch[..., 3]
        return 1.0 - clear

    def capture(self, seq: int, gt: np.ndarray | None = None) -> np.ndarray:
        """The payload of frame ``seq`` (noise seeded by (seed, seq), so any order reproduces)."""
        gt = self.render(seq) if gt is None else gt
        rng = np.random.default_rng([self.cfg.seed, 3, seq])
        t = self._cycle[seq % len(self._cycle)]
        # gt already includes the gain; the sensor divides it out to count photo-electrons
        return self.sensor.capture(gt, t, self.gain, rng)

    # -- calibration ------------------------------------------------------------------------

    def static_irradiance(self) -> np.ndarray:
        """The view at t = 0 without the moving objects, times the camera's gain."""
        img = cv2.warpAffine(self.world, self.path.matrix(0.0), (self.cfg.width, self.cfg.height),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101)
        if self.gain != 1.0:
            img *= np.float32(self.gain)
        return img

    def bracket(self, exposures_s: list[float], frames_each: int) -> list[tuple[float, list[np.ndarray]]]:
        """A static exposure bracket for CRF calibration: ``frames_each`` noisy payloads per exposure.

        Camera motion and moving objects are left out (a tripod and an empty scene), so
        frames differ only by sensor noise; gain stays at the camera's. Noise is seeded by
        (seed, exposure index, frame index), so a bracket reproduces.
        """
        if frames_each < 1:
            raise ValueError(f"frames_each must be >= 1, got {frames_each}")
        for t in exposures_s:
            if not (math.isfinite(t) and t > 0):
                raise ValueError(f"exposures must be positive seconds, got {t!r}")
        scene = self.static_irradiance()
        out = []
        for k, t in enumerate(exposures_s):
            frames = [self.sensor.capture(scene, float(t), self.gain, np.random.default_rng([self.cfg.seed, 4, k, j]))
                      for j in range(frames_each)]
            out.append((float(t), frames))
        return out

    def describe(self) -> dict:
        """What this camera is, as JSON-ready values: config, exposure cycle, sensor model."""
        fmt = self.sensor.fmt
        return {
            "camera": self.name,
            "config": asdict(self.cfg),
            "pixel_format": fmt.name,
            "exposure_cycle_s": self.exposure_cycle,
            "gain_db": self.gain_db,
            "sensor": {
                "bits": fmt.bits,
                "white": fmt.white,
                "bayer": fmt.bayer,
                "full_well_e": self.sensor.full_well_e,
                "read_noise_e": self.sensor.read_noise_e,
                "noise": self.sensor.noise,
                "crf": self.cfg.crf,
            },
        }

    # -- Source -----------------------------------------------------------------------------

    def frames(self) -> Iterator[Frame]:
        """``cfg.frames`` frame messages, paced at fps when ``cfg.realtime``."""
        cfg = self.cfg
        n = len(self._cycle)
        start = time.monotonic()
        lo, hi = cfg.outage[0] * cfg.fps, (cfg.outage[0] + cfg.outage[1]) * cfg.fps
        for i in range(cfg.frames):
            if self._closed:
                return
            if lo <= i < hi:  # unplugged: nothing is exposed, nothing is sent
                if not self.source_gaps or self.source_gaps[-1][1] != i - 1:
                    log.warning("sim camera: removed at frame %d (outage of %.1f s)", i, cfg.outage[1])
                    self.source_gaps.append([i, i])
                self.source_gaps[-1][1] = i
                if cfg.realtime:
                    time.sleep(max(0.0, start + (i + 1) / cfg.fps - time.monotonic()))
                continue
            if self.source_gaps and self.source_gaps[-1][1] == i - 1:
                log.warning("sim camera: back at frame %d", i)
            gt = self.render(i)
            data = self.capture(i, gt)
            stem = f"{i:06d}"
            if self.gt_dir is not None:
                write_exr(self.gt_dir / f"{stem}.exr", gt, half=False)
            if cfg.realtime:
                delay = start + i / cfg.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield Frame(kind="frame", stream=cfg.stream, seq=i, t_ns=int(i * 1e9 / cfg.fps),
                        exposure_s=self._cycle[i % n], gain_db=self.gain_db, pixel_format=cfg.pixel_format,
                        data=data, set=i % n, meta={"stem": stem})

    def close(self) -> None:
        """Stop the stream: a running :meth:`frames` returns before its next frame."""
        self._closed = True

    def __enter__(self) -> SimCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
