"""HDR content for training: procedural worlds, photographs shipped in scikit-image, and
the simulated camera.

Nothing is downloaded: procedural worlds come from :func:`capture.scene.procedural_world`,
photographs from the files inside the installed scikit-image wheel (``skimage/data/``,
listed in :data:`SKIMAGE_PHOTOS` so a model card can cite them), the camera from
:class:`capture.sim.SimCamera`.

Radiance units: a background is normalised so the 99.5th percentile of max(R, G, B) is
1.0, the level the camera's auto-exposure puts at 0.9 of full scale in the short
exposure (``capture.sim``). :mod:`training.data` scales it by ``0.9 · 2^ev`` into the
network's units, where 1.0 saturates the shortest exposure.
"""
from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from capture.scene import MID_GREY, object_sprite, procedural_world, random_reflectance
from capture.sim import SimCamera, SimConfig
from training.splits import SPLIT_WIDTH, dynamic_config

log = logging.getLogger(__name__)

# (file in skimage/data/, colour, licence as stated in skimage.data's docstrings)
SKIMAGE_PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("astronaut.png", "rgb", "public domain (NASA)"),
    ("chelsea.png", "rgb", "CC0 (Stefan van der Walt)"),
    ("coffee.png", "rgb", "CC0 (Rachel Michetti)"),
    ("rocket.jpg", "rgb", "public domain (SpaceX)"),
    ("motorcycle_left.png", "rgb", "Middlebury 2014 stereo benchmark (Scharstein et al.)"),
    ("motorcycle_right.png", "rgb", "Middlebury 2014 stereo benchmark (Scharstein et al.)"),
    ("hubble_deep_field.jpg", "rgb", "public domain (NASA)"),
    ("camera.png", "grey", "CC0 (Lav Varshney)"),
    ("brick.png", "grey", "CC0 (CC0Textures)"),
    ("grass.png", "grey", "CC0 (DeviantArt, linolafett)"),
    ("gravel.png", "grey", "CC0 (CC0Textures)"),
)
SPRITE_LEVEL = 8.0 * MID_GREY  # a procedural world's auto-exposure level, in world units
AE_PERCENTILE = 99.5
HIGHLIGHT_START = 0.8  # linear level above which a photo's highlights are boosted


@dataclass(frozen=True)
class Photo:
    name: str
    rgb: np.ndarray  # (H, W, 3) uint8, grey images replicated
    grey: bool


@dataclass
class Scene:
    """Content for many training windows: a background plus occluder sprites, or a camera.

    Attributes:
        kind: "procedural", "photo" or "sim".
        seed: the scene's seed (procedural world / simulated camera seed).
        radiance: (H, W, 3) float32 background normalised to an auto-exposure level of 1.
        sprites: (S, S, 4) float32 premultiplied radiance + alpha, same units.
        camera: the simulated camera ("sim" scenes only).
    """

    kind: str
    seed: int
    radiance: np.ndarray | None = None
    sprites: list[np.ndarray] = field(default_factory=list)
    camera: SimCamera | None = None


def skimage_data_dir() -> Path | None:
    """``skimage/data`` of the installed scikit-image, found without importing it."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    return path if path.is_dir() else None


@cache
def load_photos(photo_dir: str = "") -> tuple[Photo, ...]:
    """The photographs of :data:`SKIMAGE_PHOTOS` that are present (empty without them).

    Read from ``photo_dir`` when given (a copy of those files, e.g. carried to a machine
    without scikit-image), else from the installed scikit-image.
    """
    root = Path(photo_dir) if photo_dir else skimage_data_dir()
    if root is None or not root.is_dir():
        log.warning("%s: the 'photo' source is skipped (training uses procedural worlds and the "
                    "simulated camera only)", f"photo_dir {photo_dir} not found" if photo_dir
                    else "scikit-image is not installed")
        return ()
    photos = []
    for name, colour, _ in SKIMAGE_PHOTOS:
        img = cv2.imread(str(root / name), cv2.IMREAD_COLOR)  # BGR uint8, grey replicated
        if img is None:
            log.warning("skimage photo %s is missing from %s; skipped", name, root)
            continue
        photos.append(Photo(name, np.ascontiguousarray(img[:, :, ::-1]), colour == "grey"))
    if not photos:
        log.warning("no skimage photos found in %s: the 'photo' source is skipped", root)
    return tuple(photos)


def photo_names(photo_dir: str = "") -> list[str]:
    """Files actually used by the photo source (for the weights' meta / model card)."""
    return [p.name for p in load_photos(photo_dir)]


# -- radiance helpers --------------------------------------------------------------------


def auto_exposure_level(rad: np.ndarray) -> float:
    """99.5th percentile of max(R, G, B) on a subsample (what auto-exposure targets)."""
    step = max(1, int(math.sqrt(rad.shape[0] * rad.shape[1]) // 256))
    level = float(np.percentile(rad[::step, ::step].max(axis=2), AE_PERCENTILE))
    return level if level > 0 else max(float(rad.max()), 1e-6)


def inverse_crf(code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random inverse camera response, code values [0, 1] → linear [0, 1].

    Half the time a gamma in [1.8, 2.6]; otherwise the inverse of the sigmoid response
    ``F(x) = (1 + σ) xⁿ / (xⁿ + σ)`` with n ~ U(0.8, 1.0), σ ~ U(0.4, 0.8) (the random
    CRF family used to linearise LDR video for HDR training data).
    """
    x = np.clip(code, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.5:
        return x ** np.float32(rng.uniform(1.8, 2.6))
    n, s = rng.uniform(0.8, 1.0), rng.uniform(0.4, 0.8)
    return ((s * x) / np.maximum(1.0 + s - x, 1e-6)) ** np.float32(1.0 / n)


def _linear_photo(photo: Photo, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A photo resized by ``scale``, flipped at random, dithered and linearised; (H, W, 3)."""
    img = photo.rgb
    if scale != 1.0:
        size = (max(2, round(img.shape[1] * scale)), max(2, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    code = img.astype(np.float32)
    code += rng.uniform(-0.5, 0.5, code.shape).astype(np.float32)  # undo 8-bit banding a little
    code *= np.float32(1 / 255)
    lin = inverse_crf(code, rng)
    if photo.grey:  # colourise a grey texture with a random surface colour
        tint = random_reflectance(rng, 1, vivid=0.2)[0]
        lin = lin[..., :1] * (tint / tint.max()).astype(np.float32)
    return np.ascontiguousarray(lin, dtype=np.float32)


def _boost_highlights(lin: np.ndarray, rng: np.random.Generator) -> None:
    """Make an LDR photo act as HDR: push near-white areas 1-6 stops up; maybe add lamps."""
    m = lin.max(axis=2)
    w = np.clip((m - HIGHLIGHT_START) / (1.0 - HIGHLIGHT_START), 0.0, 1.0)
    w *= w
    lin *= np.exp2(np.float32(rng.uniform(1.0, 6.0)) * w)[..., None]
    if rng.random() < 0.5:
        h, wd = lin.shape[:2]
        layer = np.zeros_like(lin)
        for _ in range(int(rng.integers(1, 4))):
            r = max(1, int(rng.uniform(1.0, 0.02 * min(h, wd))))
            colour = (0.6 + 0.4 * rng.random(3)) * 2.0 ** rng.uniform(3.0, 8.0)
            cv2.circle(layer, (int(rng.uniform(0, wd)), int(rng.uniform(0, h))), r, colour.tolist(), -1)
        glow = cv2.GaussianBlur(layer, (0, 0), 4.0)
        lin += layer
        lin += glow * np.float32(0.05)


def _margin(crop: int, global_px: float, rot_deg: float, log_scale: float) -> int:
    return int(math.ceil(global_px + crop * (math.radians(rot_deg) + log_scale))) + 2


# -- scenes ------------------------------------------------------------------------------


def procedural_scene(seed: int, crop: int, rng: np.random.Generator, margin: int) -> np.ndarray:
    """Background from a procedural world twice the crop, detail scaled like a 1.5-3× larger view."""
    size = max(2 * crop, crop + 2 * margin)
    view = int(crop * rng.uniform(1.5, 3.0))
    rad = procedural_world(size, size, seed, view=(view, view))
    rad *= np.float32(1.0 / auto_exposure_level(rad))
    return rad


def photo_scene(photo: Photo, crop: int, rng: np.random.Generator, margin: int) -> np.ndarray:
    """Background from a photograph: random scale, inverse CRF, boosted highlights."""
    need = crop + 2 * margin
    short = min(photo.rgb.shape[:2])
    scale = max(need, short * rng.uniform(0.5, 1.0)) / short  # down to half size, up only if needed
    lin = _linear_photo(photo, rng, scale)
    _boost_highlights(lin, rng)
    lin *= np.float32(1.0 / auto_exposure_level(lin))
    return lin


def make_sprite(size: int, rng: np.random.Generator, photos: tuple[Photo, ...]) -> np.ndarray:
    """An occluder (size, size, 4): a procedural object, or a photo patch in its silhouette."""
    sprite = object_sprite(size, rng)
    if photos and rng.random() < 0.5:
        photo = photos[int(rng.integers(len(photos)))]
        short = min(photo.rgb.shape[:2])
        lin = _linear_photo(photo, rng, max(size * rng.uniform(1.0, 2.0), size + 2) / short)
        y = int(rng.integers(0, lin.shape[0] - size + 1))
        x = int(rng.integers(0, lin.shape[1] - size + 1))
        alpha = sprite[..., 3:]
        sprite[..., :3] = lin[y:y + size, x:x + size] * alpha * np.float32(2.0 ** rng.uniform(-1.5, 0.5))
        return sprite
    sprite[..., :3] *= np.float32(1.0 / SPRITE_LEVEL)
    return sprite


def sim_scene(seed: int, crop: int, exposures: int, ratios: list[float], rng: np.random.Generator,
              motion: float, noise: bool, bayer: bool, dynamic: bool = False) -> SimCamera:
    """A simulated camera whose view (2× crop wide, 1.5× high) windows are cropped from.

    ``dynamic``: the dynamic validation split's conditions (training.splits), its objects
    as fast in pixels per frame as there although this view is smaller.
    """
    w = 2 * crop
    h = 2 * ((3 * crop // 2 + 1) // 2)
    cfg = SimConfig(width=w, height=h, frames=0, exposures=exposures, ratios=tuple(ratios), seed=seed,
                    noise=noise, motion=motion, occluders=int(rng.integers(1, 3)),
                    pixel_format="BayerRG8" if bayer else "RGB8", stream="train")
    if dynamic:
        cfg = dynamic_config(cfg, occluders=int(rng.integers(1, 4)), speed_scale=SPLIT_WIDTH / w)
    return SimCamera(cfg)


def build_scene(kind: str, seed: int, crop: int, exposures: int, dcfg, noise: bool = True,
                sprites: int = 4) -> Scene:
    """A scene of ``kind`` for crops of ``crop`` px, deterministic in ``seed``.

    Args:
        kind: "procedural", "photo", "sim" or "dynamic" (the simulated camera in the
            dynamic split's conditions).
        seed: world / camera seed; also seeds every other random choice here.
        crop: square crop size the windows will have.
        exposures: 2 or 3 (the simulated camera's cycle).
        dcfg: :class:`training.config.DataConfig`.
        noise: whether the simulated camera adds sensor noise.
        sprites: occluder sprites made for a procedural or photo scene.
    """
    rng = np.random.default_rng([seed, 0x5CE7E])
    if kind in ("sim", "dynamic"):
        ratios = dcfg.ratios(exposures)[int(rng.integers(len(dcfg.ratios(exposures))))]
        cam = sim_scene(seed, crop, exposures, ratios, rng, dcfg.sim_motion, noise,
                        bool(rng.random() < dcfg.bayer_prob), dynamic=kind == "dynamic")
        return Scene(kind, seed, camera=cam)
    margin = _margin(crop, dcfg.global_px, dcfg.global_rot_deg, dcfg.global_scale)
    photos = load_photos(dcfg.photo_dir)
    if kind == "photo":
        if not photos:
            raise RuntimeError("photo scenes need scikit-image (pip install scikit-image)")
        rad = photo_scene(photos[int(rng.integers(len(photos)))], crop, rng, margin)
    elif kind == "procedural":
        rad = procedural_scene(seed, crop, rng, margin)
    else:
        raise ValueError(f"unknown scene kind {kind!r}")
    lo, hi = dcfg.object_size
    made = [make_sprite(int(crop * rng.uniform(lo, hi)) + 4, rng, photos) for _ in range(sprites)]
    return Scene(kind, seed, radiance=rad, sprites=made)

