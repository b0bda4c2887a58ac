"""Where the simulated camera looks, and where the moving objects are, at any instant.

Every path is a sum of a few low-frequency sinusoids: smooth like a hand-held or slowly
panned camera, bounded (so the world image only needs a known margin), and evaluable at
any time ``t`` (so frame ``i`` is rendered at exactly ``i / fps`` and any frame can be
re-rendered for its ground truth, in any order).

Speeds are given per second and scale with the view width: at ``motion=1`` and 30 fps a
640-pixel-wide view pans about 2.5 px per frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

REF_WIDTH = 640.0  # view width at which the speeds below are specified
PAN_SPEED_X = 60.0  # RMS horizontal speed, px/s at REF_WIDTH, motion=1
PAN_SPEED_Y = 35.0  # RMS vertical speed
ROLL_SPEED = math.radians(2.0)  # RMS angular speed, rad/s
ZOOM_SPEED = 0.03  # RMS rate of log-zoom, 1/s


@dataclass(frozen=True)
class Wave:
    """``sum_k amp_k * sin(2π freq_k t + phase_k)``."""

    amp: tuple[float, ...] = ()
    freq_hz: tuple[float, ...] = ()
    phase: tuple[float, ...] = ()

    def __call__(self, t: float) -> float:
        return float(sum(a * math.sin(2 * math.pi * f * t + p) for a, f, p in zip(self.amp, self.freq_hz, self.phase)))

    @property
    def bound(self) -> float:
        """Largest |value| the wave can ever take."""
        return float(sum(abs(a) for a in self.amp))

    @staticmethod
    def random(rng: np.random.Generator, rms_speed: float, freq_hz: tuple[float, float], n: int = 3) -> Wave:
        """A wave whose derivative has RMS ``rms_speed`` (units/s), spread over ``n`` sinusoids."""
        freq = rng.uniform(*freq_hz, n)
        share = rng.dirichlet(np.ones(n))  # fraction of the speed variance each sinusoid carries
        phase = rng.uniform(0, 2 * math.pi, n)
        # a sinusoid's derivative has RMS 2π f A / √2
        amp = rms_speed * np.sqrt(2 * share) / (2 * math.pi * freq)
        return Wave(tuple(amp.tolist()), tuple(freq.tolist()), tuple(phase.tolist()))


def _rotation(angle: float, scale: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s], [s, c]])


@dataclass(frozen=True)
class CameraPath:
    """Similarity transform from view pixels to world pixels over time.

    At time ``t`` the view centre sits at the world centre plus ``scale * (dx, dy)``, rotated
    by ``roll`` and zoomed out by ``exp(log_zoom)``; ``scale`` is world px per view px.
    """

    view_w: int
    view_h: int
    dx: Wave = Wave()
    dy: Wave = Wave()
    roll: Wave = Wave()
    log_zoom: Wave = Wave()
    world_w: int = 0
    world_h: int = 0
    scale: float = 1.0

    def reach(self) -> tuple[float, float]:
        """Half-size (x, y) of the world region the view can ever touch, in view pixels."""
        zoom = math.exp(self.log_zoom.bound)
        sin_roll = math.sin(min(self.roll.bound, math.pi / 2))
        rx = self.dx.bound + zoom * (self.view_w / 2 + self.view_h / 2 * sin_roll) + 1.0
        ry = self.dy.bound + zoom * (self.view_h / 2 + self.view_w / 2 * sin_roll) + 1.0
        return rx, ry

    def fit(self, world_w: int, world_h: int) -> CameraPath:
        """The same path placed in a given world image, scaled so it never leaves it."""
        rx, ry = self.reach()
        scale = min((world_w / 2 - 1) / rx, (world_h / 2 - 1) / ry)
        return replace(self, world_w=world_w, world_h=world_h, scale=scale)

    def matrix(self, t: float) -> np.ndarray:
        """2x3 affine map from view pixel (x, y) to world pixel, for ``cv2.WARP_INVERSE_MAP``."""
        a = _rotation(self.roll(t), self.scale * math.exp(self.log_zoom(t)))
        centre_world = np.array([(self.world_w - 1) / 2 + self.scale * self.dx(t),
                                 (self.world_h - 1) / 2 + self.scale * self.dy(t)])
        centre_view = np.array([(self.view_w - 1) / 2, (self.view_h - 1) / 2])
        return np.hstack([a, (centre_world - a @ centre_view)[:, None]])


def random_camera_path(view_w: int, view_h: int, motion: float, rng: np.random.Generator) -> CameraPath:
    """A smooth pan/tilt/roll/zoom path; ``motion`` scales every amplitude (0 = tripod)."""
    k = motion * view_w / REF_WIDTH
    return CameraPath(
        view_w, view_h,
        dx=Wave.random(rng, PAN_SPEED_X * k, (0.15, 0.5)),
        dy=Wave.random(rng, PAN_SPEED_Y * k, (0.15, 0.5)),
        roll=Wave.random(rng, ROLL_SPEED * motion, (0.15, 0.35), n=2),
        log_zoom=Wave.random(rng, ZOOM_SPEED * motion, (0.1, 0.3), n=2),
    )


@dataclass(frozen=True)
class ObjectPath:
    """A foreground object's pose in view pixels: a Lissajous-like sweep plus spin and depth.

    Independent of the camera path, so its motion is local motion that no global
    alignment explains.
    """

    cx: float
    cy: float
    x: Wave
    y: Wave
    angle0: float = 0.0
    spin: float = 0.0  # rad/s
    log_scale: Wave = Wave()

    def pose(self, t: float) -> tuple[float, float, float, float]:
        """(x, y, angle, scale) of the object's anchor at time ``t``."""
        return (self.cx + self.x(t), self.cy + self.y(t), self.angle0 + self.spin * t,
                math.exp(self.log_scale(t)))

    def matrix(self, t: float, anchor: tuple[float, float]) -> np.ndarray:
        """2x3 affine map from sprite pixels to view pixels (sprite ``anchor`` → pose)."""
        x, y, angle, scale = self.pose(t)
        a = _rotation(angle, scale)
        return np.hstack([a, (np.array([x, y]) - a @ np.asarray(anchor, float))[:, None]])


def random_object_path(view_w: int, view_h: int, rng: np.random.Generator) -> ObjectPath:
    """Sweeps most of the view (sometimes partly out of it), 3-8 px/frame at 640 wide, 30 fps."""
    def sweep(extent: float, f_lo: float, f_hi: float) -> Wave:
        main = extent * rng.uniform(0.25, 0.42)
        jitter = extent * rng.uniform(0.01, 0.04)
        return Wave((main, jitter), (rng.uniform(f_lo, f_hi), rng.uniform(0.3, 0.7)),
                    tuple(rng.uniform(0, 2 * math.pi, 2).tolist()))

    return ObjectPath(
        cx=(view_w - 1) / 2, cy=(view_h - 1) / 2,
        x=sweep(view_w, 0.08, 0.16), y=sweep(view_h, 0.06, 0.14),
        angle0=float(rng.uniform(-0.5, 0.5)), spin=float(rng.uniform(-0.35, 0.35)),
        log_scale=Wave((float(rng.uniform(0.05, 0.15)),), (float(rng.uniform(0.05, 0.15)),),
                       (float(rng.uniform(0, 2 * math.pi)),)),
    )
