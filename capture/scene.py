"""HDR worlds for the simulated camera: a procedural generator, or a user's HDR image.

A world is a float32 (H, W, 3) radiance image in the camera's units (linear full scale per
second at unit gain) that is larger than the view, so the camera can move over it.

The procedural world is built like a photograph is: reflectance times illumination, plus
light sources. Reflectance is a "dead leaves" layout (random discs, ellipses, rectangles
and polygons with power-law sizes: the occlusion model whose statistics match natural
images), each surface with its own colour, multi-octave noise, stripes or checks and a
shading gradient. Illumination is a key light with soft-edged cast shadows, a dimmer
coloured fill light, slow variations and a few deep cavities. Outdoor worlds get a sky with
clouds. Lamps, windows and glints (2^4-2^12 above mid-grey) are painted last, and a slight
lens blur softens every edge to about a pixel. A world spans well over 16 stops.

The absolute scale (``MID_GREY``) puts the auto-exposed short frame near 1 ms.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from capture.sensor import standard_normal
from hdrstream.hdrio import read_hdr_image

MID_GREY = 120.0  # radiance of an 18 % grey card in the key light, full scale per second
BRIGHT_REF = 900.0  # what a user image's 99.5th percentile is scaled to (0.9 full scale at 1 ms)
LENS_SIGMA_PX = 0.6
EMITTER_AREA = 0.0015  # fraction of the world lamps and windows may cover


def fbm(height: int, width: int, rng: np.random.Generator, channels: int = 1,
        coarse_px: float = 256.0, fine_px: float = 2.0, beta: float = 1.0) -> np.ndarray:
    """Multi-octave value noise, zero mean and unit std: (H, W) or (H, W, channels).

    Octaves have periods from ``coarse_px`` down to ``fine_px``; each octave's amplitude is
    ``2^-beta`` times the previous one (beta=1 gives the 1/f spectrum of natural images).
    Built coarse to fine by bicubic doubling, so the cost is about one full-size resize.
    """
    levels = max(1, int(round(math.log2(max(coarse_px / fine_px, 1.0)))) + 1)
    period = coarse_px / 2 ** (levels - 1)
    gh = int(math.ceil(height / coarse_px)) + 3
    gw = int(math.ceil(width / coarse_px)) + 3
    acc = standard_normal(rng, (gh, gw, channels))
    amp = 1.0
    for _ in range(levels - 1):
        gh, gw = 2 * gh, 2 * gw
        acc = cv2.resize(acc, (gw, gh), interpolation=cv2.INTER_CUBIC).reshape(gh, gw, channels)
        amp *= 2.0**-beta
        noise = standard_normal(rng, (gh, gw, channels))
        noise *= np.float32(amp)
        acc += noise
    big = (int(math.ceil(gw * period)), int(math.ceil(gh * period)))
    out = cv2.resize(acc, big, interpolation=cv2.INTER_CUBIC).reshape(big[1], big[0], channels)
    oy, ox = (big[1] - height) // 2, (big[0] - width) // 2
    out = out[oy:oy + height, ox:ox + width]
    step = max(1, int(math.sqrt(height * width)) // 128)
    sample = out[::step, ::step]
    out -= sample.mean(axis=(0, 1))
    out *= 1.0 / np.maximum(sample.std(axis=(0, 1)), 0.1)
    return out[..., 0] if channels == 1 else out


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    hsv = np.stack([h * 360.0, s, v], axis=-1).astype(np.float32)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def random_reflectance(rng: np.random.Generator, n: int, vivid: float = 0.0) -> np.ndarray:
    """(n, 3) RGB reflectances: mostly muted earth and stone, some vivid paint."""
    hue = rng.random(n)
    sat = np.clip(rng.beta(1.2, 2.4, n) + vivid, 0.0, 0.95)
    val = np.clip(np.exp(rng.normal(math.log(0.2), 0.8, n)), 0.015, 0.92)
    return _hsv_to_rgb(hue, sat, val)


def _light_colour(rng: np.random.Generator, warm: float) -> np.ndarray:
    """An illuminant colour normalised to max 1; ``warm`` > 0 is tungsten-like, < 0 skylight."""
    t = warm + rng.normal(0, 0.05)
    return np.array([1.0 + 0.35 * t, 1.0 + 0.05 * t, 1.0 - 0.45 * t], np.float32).clip(0.2) / (1 + 0.35 * abs(t))


def _random_surfaces(rng: np.random.Generator, cx: np.ndarray, cy: np.ndarray, r: np.ndarray,
                     unit: float) -> dict[str, np.ndarray]:
    """Per-label attributes of the dead-leaves layout (label = index into every array)."""
    n = len(cx)
    s0 = rng.uniform(0.3, 1.0, n)  # how squarely the surface faces the key light
    g = rng.uniform(0.0, 0.6, n) * s0 / np.maximum(r, 1.0)  # shading gradient across it
    a = rng.uniform(0, 2 * math.pi, n)
    gx, gy = g * np.cos(a), g * np.sin(a)
    period = np.maximum(3.0, unit * np.exp(rng.uniform(math.log(0.004), math.log(0.04), n)))
    return {
        "colour": random_reflectance(rng, n),
        "texture": np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.05, 0.7, n)).astype(np.float32),
        "shade": np.stack([s0 - gx * cx - gy * cy, gx, gy], 1).astype(np.float32),
        "cavity": np.ones(n, np.float32),
        # kind (0 none, 1 stripes, 2 checks), angle, period, phase, sharpness, amplitude (stops)
        "pattern": np.stack([rng.choice(3, n, p=(0.7, 0.2, 0.1)), rng.uniform(0, math.pi, n), period,
                             rng.uniform(0, 2 * math.pi, n), np.exp(rng.uniform(0, 3, n)),
                             rng.uniform(0.2, 0.9, n)], 1).astype(np.float32),
    }


def _draw_shape(img: np.ndarray, rng: np.random.Generator, kind: int, cx: float, cy: float, r: float,
                angle: float, aspect: float, value: float) -> None:
    """Fill one shape: 0 ellipse, 1 rotated box, 2 upright box, 3 random polygon."""
    if kind == 0:
        axes = (max(1, int(r * aspect**0.5)), max(1, int(r / aspect**0.5)))
        cv2.ellipse(img, (int(cx), int(cy)), axes, angle, 0, 360, value, -1)
        return
    if kind in (1, 2):
        w, h = 2 * r * aspect**0.5, 2 * r / aspect**0.5
        pts = cv2.boxPoints(((cx, cy), (w, h), angle if kind == 1 else 0.0))
    else:
        k = int(rng.integers(3, 9))
        phi = np.sort(rng.uniform(0, 2 * math.pi, k))
        rad = r * rng.uniform(0.45, 1.0, k)
        pts = np.stack([cx + rad * np.cos(phi), cy + rad * np.sin(phi)], axis=1)
    cv2.fillPoly(img, [np.round(pts).astype(np.int32)], value)


def _draw_random_shapes(img: np.ndarray, rng: np.random.Generator, cx: np.ndarray, cy: np.ndarray,
                        r: np.ndarray, values: np.ndarray | list, kinds: np.ndarray | None = None) -> None:
    n = len(cx)
    kinds = rng.choice(4, n, p=(0.3, 0.25, 0.2, 0.25)) if kinds is None else kinds
    angles = rng.uniform(0, 180, n)
    aspects = np.exp(rng.uniform(-1.0, 1.0, n))
    for i in range(n):
        _draw_shape(img, rng, int(kinds[i]), cx[i], cy[i], r[i], angles[i], aspects[i], float(values[i]))


def _layout(h: int, w: int, unit: float, rng: np.random.Generator, outdoor: bool,
            core: tuple[float, float, float, float]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Label map of surfaces (label 0 = sky), their attributes, and the horizon (per column)."""
    labels = np.zeros((h, w), np.int32)
    cx, cy, rr = [w / 2, w / 2, w / 2], [0.0, h / 2, h], [unit, unit, unit]  # sky, ground/wall, floor
    horizon = None
    if outdoor:
        y0 = h * rng.uniform(0.3, 0.45)
        xs = np.linspace(-1, w + 1, 33)
        hills = sum(rng.uniform(0.01, 0.05) * unit * np.sin(2 * math.pi * rng.uniform(0.3, 2.5) * xs / unit
                                                              + rng.uniform(0, 6.3)) for _ in range(3))
        ys = y0 - np.abs(hills)
        poly = np.concatenate([np.stack([xs, ys], 1), [[w + 1, h + 1], [-1, h + 1]]])
        cv2.fillPoly(labels, [np.round(poly).astype(np.int32)], 1)
        horizon = np.interp(np.arange(w), xs, ys)
    else:
        labels[:] = 1
        labels[int(h * rng.uniform(0.6, 0.8)):] = 2

    # dead leaves: sizes with density ~ r^-3 (scale invariant), painted back to front
    r_min, r_max = 0.02 * unit, 0.45 * unit
    n = int(220 * h * w / unit**2)
    radii = (r_min**-2 - rng.random(n) * (r_min**-2 - r_max**-2)) ** -0.5
    lx = rng.uniform(-0.1 * w, 1.1 * w, n)
    if horizon is None:
        ly = rng.uniform(-0.1 * h, 1.1 * h, n)
    else:  # objects stand on the ground; the big ones reach into the sky
        ly = rng.uniform(float(horizon.min()), 1.1 * h, n)
    first = len(cx)
    _draw_random_shapes(labels, rng, lx, ly, radii, np.arange(first, first + n))
    cx += lx.tolist()
    cy += ly.tolist()
    rr += radii.tolist()
    if outdoor:  # buildings and poles rising above the horizon
        for _ in range(int(rng.integers(1, 5) * w / unit)):
            bw = unit * math.exp(rng.uniform(math.log(0.01), math.log(0.15)))
            x, y_top = rng.uniform(0, w), rng.uniform(0.1 * h, float(horizon.min()))
            cv2.rectangle(labels, (int(x - bw / 2), int(y_top)), (int(x + bw / 2), h), float(len(cx)), -1)
            cx.append(x)
            cy.append(y_top)
            rr.append(bw)

    # deep cavities (doorways, holes, gaps): 5-8 stops below their surroundings; one in the core
    x0, y0, x1, y1 = core
    ground = 0.0 if horizon is None else float(horizon.max()) + 0.02 * unit
    k = int(rng.integers(3, 7))
    kx = np.concatenate([[rng.uniform(x0, x1)], rng.uniform(0, w, k - 1)])
    ky = np.concatenate([[rng.uniform(min(max(y0, ground), y1), y1)], rng.uniform(min(ground, h - 1), h, k - 1)])
    kr = unit * rng.uniform(0.02, 0.06, k)
    cavities = np.arange(len(cx), len(cx) + k)
    _draw_random_shapes(labels, rng, kx, ky, kr, cavities, kinds=rng.choice([0, 2, 3], k))
    surfaces = _random_surfaces(rng, np.r_[cx, kx], np.r_[cy, ky], np.r_[rr, kr], unit)
    surfaces["cavity"][cavities] = 2.0 ** -rng.uniform(5, 8, k)
    surfaces["colour"][cavities] *= 0.3
    return labels, surfaces, horizon


def _texture(labels: np.ndarray, s: dict[str, np.ndarray], rng: np.random.Generator, unit: float) -> np.ndarray:
    """Per-pixel reflectance multiplier (H, W): multi-octave grain and stripes/checks."""
    h, w = labels.shape
    grain = fbm(h, w, rng, coarse_px=0.1 * unit, fine_px=2.0, beta=0.8)
    lum = np.take(s["texture"], labels)
    lum *= grain
    _add_patterns(lum, labels, s["pattern"])
    return np.exp2(lum, out=lum)


def _add_patterns(lum: np.ndarray, labels: np.ndarray, pattern: np.ndarray) -> None:
    """Add stripes or checks (in stops) to the pixels of surfaces that have them."""
    has = pattern[:, 0] > 0
    idx = np.flatnonzero(has[labels])
    if not idx.size:
        return
    w = labels.shape[1]
    p = pattern[labels.reshape(-1)[idx]]
    y, x = np.divmod(idx, w)
    x, y = x.astype(np.float32), y.astype(np.float32)
    c, s = np.cos(p[:, 1]), np.sin(p[:, 1])
    k = np.float32(2 * math.pi) / p[:, 2]
    wave = np.sin((x * c + y * s) * k + p[:, 3])
    checks = p[:, 0] == 2
    wave[checks] *= np.sin((y[checks] * c[checks] - x[checks] * s[checks]) * k[checks])
    sharp = p[:, 4]
    wave = np.tanh(wave * sharp) / np.tanh(sharp)
    lum.reshape(-1)[idx] += p[:, 5] * wave


def _lit_surfaces(labels: np.ndarray, s: dict[str, np.ndarray], rng: np.random.Generator,
                  unit: float, outdoor: bool) -> np.ndarray:
    """Radiance of the surfaces: reflectance x (key light, shaded and shadowed, + fill light).

    Built one colour plane at a time: gathers and products on contiguous planes are 2-3x
    faster than on interleaved RGB.
    """
    h, w = labels.shape
    e_key = MID_GREY / 0.18
    key = _light_colour(rng, 0.3 if outdoor else 0.8) * e_key
    fill = _light_colour(rng, -0.6 if outdoor else 0.6) * e_key * 2.0 ** -rng.uniform(2.0, 4.0)

    # cast shadows: big polygons at quarter resolution, blurred to a penumbra
    q = 4
    lit = np.ones((h // q + 1, w // q + 1), np.float32)
    n = int(rng.integers(2, 6) * h * w / unit**2)
    _draw_random_shapes(lit, rng, rng.uniform(0, w / q, n), rng.uniform(0, h / q, n),
                        unit * rng.uniform(0.05, 0.3, n) / q, [0.0] * n)
    lit = cv2.GaussianBlur(lit, (0, 0), rng.uniform(0.5, 3.0))
    lit = cv2.resize(lit, (w, h), interpolation=cv2.INTER_LINEAR)

    sh = s["shade"]
    direct = np.take(sh[:, 1], labels)
    direct *= np.arange(w, dtype=np.float32)[None, :]
    direct += np.take(sh[:, 2], labels) * np.arange(h, dtype=np.float32)[:, None]
    direct += np.take(sh[:, 0], labels)
    np.clip(direct, 0.05, 1.2, out=direct)
    direct *= lit
    ambient = np.exp2(0.6 * fbm(h, w, rng, coarse_px=0.8 * unit, fine_px=0.05 * unit))
    ambient *= np.take(s["cavity"], labels)
    ambient *= _texture(labels, s, rng, unit)
    direct *= ambient
    planes = []
    tmp = np.empty_like(direct)
    for c in range(3):
        plane = np.take(np.ascontiguousarray(s["colour"][:, c]), labels)
        np.multiply(direct, np.float32(key[c]), out=tmp)
        tmp += ambient * np.float32(fill[c])
        plane *= tmp
        planes.append(plane)
    return cv2.merge(planes)


def _paint_sky(rad: np.ndarray, labels: np.ndarray, horizon: np.ndarray, rng: np.random.Generator, unit: float) -> None:
    """Blue-to-white gradient with clouds, 1-6x mid-grey, wherever no surface covers it."""
    rows = int(min(rad.shape[0], math.ceil(horizon.max()) + 2))
    w = rad.shape[1]
    y = np.arange(rows, dtype=np.float32)[:, None] / max(float(horizon.mean()), 1.0)
    t = np.clip(y, 0, 1)[..., None] ** 0.7
    zenith = np.array([0.35, 0.55, 1.0], np.float32) * MID_GREY * rng.uniform(1.0, 2.0)
    low = np.array([0.85, 0.92, 1.0], np.float32) * MID_GREY * rng.uniform(2.5, 5.0)
    sky = zenith * (1 - t) + low * t
    cloud_noise = fbm(rows, w, rng, coarse_px=0.5 * unit, fine_px=4.0, beta=0.9)
    cover = np.clip((cloud_noise - rng.uniform(0.0, 1.2)) * 1.5, 0, 1)[..., None]
    cloud = MID_GREY * rng.uniform(3.0, 6.0) * (0.75 + 0.1 * cloud_noise[..., None])
    sky = sky * (1 - cover) + cloud * cover
    np.copyto(rad[:rows], sky, where=(labels[:rows] == 0)[..., None])


def _add_glow(rad: np.ndarray, cx: float, cy: float, r: float, colour: np.ndarray) -> None:
    """Veiling glow around a light: a ~1/d^3 halo a few radii wide (lens and air scatter)."""
    reach = int(8 * r) + 2
    x0, x1 = max(0, int(cx) - reach), min(rad.shape[1], int(cx) + reach + 1)
    y0, y1 = max(0, int(cy) - reach), min(rad.shape[0], int(cy) + reach + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32(r * r)
    halo = np.float32(0.0015) / (1 + d2) ** 1.5
    rad[y0:y1, x0:x1] += halo[..., None] * colour


def _paint_lights(rad: np.ndarray, rng: np.random.Generator, unit: float, outdoor: bool,
                  core: tuple[float, float, float, float]) -> None:
    """Lamps and windows (2^8-2^12 above mid-grey) and glints (2^4-2^7) in a small area budget.

    The budget keeps what clips even the short exposure (and what auto-exposure ignores, the
    top 0.5 %) small at every resolution; areas count the lens blur's extra pixel.
    """
    h, w = rad.shape[:2]
    budget = EMITTER_AREA * h * w
    glints = min(int(8 * h * w / unit**2), int(0.2 * budget / (math.pi * 4)))
    budget -= glints * math.pi * 4
    for _ in range(glints):  # specular glints
        level = MID_GREY * 2.0 ** rng.uniform(4, 7)
        cv2.circle(rad, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), 1, (level,) * 3, -1)
    tints = [(1.0, 0.72, 0.42), (1.0, 0.6, 0.25), (0.9, 0.95, 1.0), (1.0, 0.2, 0.3), (0.3, 0.5, 1.0),
             (0.3, 1.0, 0.5), (1.0, 0.9, 0.75)]
    x0, y0, x1, y1 = core
    first = True  # one bright lamp always in the core of the view: every view spans > 16 stops
    while True:
        colour = np.array(tints[rng.integers(len(tints))], np.float32)
        if first or rng.random() < (0.8 if outdoor else 0.6):  # a round lamp
            r = max(1.0, unit * rng.uniform(0.006, 0.012) if first else unit * rng.uniform(0.003, 0.01))
            area = math.pi * (r + 1) ** 2
            if area > budget and not first:
                break
            cx, cy = (rng.uniform(x0, x1), rng.uniform(y0, y1)) if first else (rng.uniform(0, w), rng.uniform(0, h))
            level = MID_GREY * 2.0 ** (rng.uniform(11, 12) if first else rng.uniform(8, 12))
            cv2.circle(rad, (int(cx), int(cy)), int(round(r)), (colour * level).tolist(), -1)
            _add_glow(rad, cx, cy, r, colour * np.float32(level))
            first = False
        else:  # a window with mullions
            bw, bh = max(3.0, unit * rng.uniform(0.015, 0.035)), max(4.0, unit * rng.uniform(0.02, 0.045))
            area = (bw + 2) * (bh + 2)
            if area > budget:
                break
            cx, cy = rng.uniform(0, w), rng.uniform(0, h * 0.8)
            level = MID_GREY * 2.0 ** rng.uniform(8, 10)
            p0, p1 = (int(cx - bw / 2), int(cy - bh / 2)), (int(cx + bw / 2), int(cy + bh / 2))
            cv2.rectangle(rad, p0, p1, (colour * level).tolist(), -1)
            frame = (np.float32(MID_GREY * 0.3) * colour).tolist()
            bar = max(1, int(unit * 0.002))
            cv2.line(rad, (int(cx), p0[1]), (int(cx), p1[1]), frame, bar)
            cv2.line(rad, (p0[0], int(cy)), (p1[0], int(cy)), frame, bar)
        budget -= area


def procedural_world(height: int, width: int, seed: int, view: tuple[int, int] | None = None) -> np.ndarray:
    """A deterministic HDR world, float32 (height, width, 3), radiance in full scale per second.

    ``view`` is the (height, width) of the camera view that will be centred in the world:
    it sets the scale of detail and where one always-visible lamp and one deep cavity go
    (so every view spans > 16 stops). It defaults to the whole world.
    """
    if height < 2 or width < 2:
        raise ValueError(f"world too small: {width}x{height}")
    rng = np.random.default_rng(seed)
    vh, vw = view or (height, width)
    unit = math.sqrt(vh * vw)
    core = (width / 2 - 0.3 * vw, height / 2 - 0.3 * vh, width / 2 + 0.3 * vw, height / 2 + 0.3 * vh)
    outdoor = bool(rng.random() < 0.5)
    labels, surfaces, horizon = _layout(height, width, unit, rng, outdoor, core)
    rad = _lit_surfaces(labels, surfaces, rng, unit, outdoor)
    if horizon is not None:
        _paint_sky(rad, labels, horizon, rng, unit)
    _paint_lights(rad, rng, unit, outdoor, core)
    return cv2.GaussianBlur(rad, (0, 0), LENS_SIGMA_PX)


def add_sun(rad: np.ndarray, rng: np.random.Generator, view: tuple[int, int]) -> None:
    """A low sun in the view's core and its warm glow, added to a world in place.

    The glow is wide (a few tenths of the view) and falls off slowly, so auto-exposure keys
    on it and the longer exposures clip over large areas; its warm colour makes red clip
    before green and blue, so between the sun and the dark there is a band where the
    reference has one or two channels clipped: where a merge shows hue errors.
    """
    h, w = rad.shape[:2]
    vh, vw = view
    cx, cy = w / 2 + rng.uniform(-0.3, 0.3) * vw, h / 2 + rng.uniform(-0.3, 0.1) * vh
    r = vh * rng.uniform(0.08, 0.16)
    colour = np.array([1.0, rng.uniform(0.45, 0.7), rng.uniform(0.15, 0.35)], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32(r * r)
    glow = np.float32(MID_GREY * 2.0 ** rng.uniform(6.5, 8.0)) / (1 + d2) ** np.float32(rng.uniform(0.8, 1.2))
    rad += glow[..., None] * colour
    disc = max(2, int(round(r * 0.2)))
    cv2.circle(rad, (int(cx), int(cy)), disc, (colour * MID_GREY * 2.0 ** 13).tolist(), -1)


def load_world(path: str | os.PathLike) -> np.ndarray:
    """A user's .exr/.hdr image as a world, rescaled so it auto-exposes like a procedural one.

    HDR files carry arbitrary units; the pipeline works in the camera's own units anyway,
    so the image is scaled to put its 99.5th percentile (of max(R, G, B)) at ``BRIGHT_REF``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene image not found: {path}")
    img = np.nan_to_num(read_hdr_image(path), nan=0.0, posinf=0.0, neginf=0.0)
    np.maximum(img, 0.0, out=img)
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"{path}: image too small ({img.shape[1]}x{img.shape[0]})")
    level = float(np.percentile(img.max(axis=2), 99.5))
    if level <= 0:
        level = float(img.max())
    if level <= 0:
        raise ValueError(f"{path}: the image is black")
    return np.ascontiguousarray(img * np.float32(BRIGHT_REF / level), dtype=np.float32)


def object_sprite(size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured HDR foreground object: (size, size, 4) float32, premultiplied RGB + alpha."""
    ss = 4  # supersampled silhouette for an anti-aliased edge
    big = size * ss
    mask = np.zeros((big, big), np.uint8)
    c, r = big / 2, big * 0.45
    kind = int(rng.integers(4))  # blob, ellipse, box, polygon
    if kind == 0:  # a wobbly closed curve
        phi = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        rad = 1 + sum(rng.uniform(0, 0.12) * np.cos(k * phi + rng.uniform(0, 6.3)) for k in range(2, 6))
        pts = np.stack([c + r / rad.max() * rad * np.cos(phi), c + r / rad.max() * rad * np.sin(phi)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    else:
        _draw_shape(mask, rng, (0, 1, 3)[kind - 1], c, c, r * 0.75, rng.uniform(0, 180),
                    math.exp(rng.uniform(-0.6, 0.6)), 255)
    alpha = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255

    colour = random_reflectance(rng, 3, vivid=0.3)
    parts = np.zeros((size, size), np.int32)  # sub-panels in other colours
    k = int(rng.integers(0, 4))
    _draw_random_shapes(parts, rng, rng.uniform(0, size, k), rng.uniform(0, size, k),
                        size * rng.uniform(0.08, 0.25, k), [1 + i % 2 for i in range(k)])
    refl = colour[parts]
    grain = fbm(size, size, rng, coarse_px=size / 3, fine_px=2.0, beta=0.8)
    refl *= np.exp2(rng.uniform(0.1, 0.5) * grain)[..., None]
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    shade = np.clip(rng.uniform(0.4, 1.1) * (1 + rng.uniform(0.2, 0.8) * (xx * math.cos(a) + yy * math.sin(a))), 0.1, 1.5)
    rgb = refl * (shade * MID_GREY / 0.18)[..., None] * _light_colour(rng, 0.3)
    if rng.random() < 0.35:  # a headlight: saturated, moving highlights are the hardest case
        lamp = np.zeros((size, size), np.uint8)
        cv2.circle(lamp, (int(size * rng.uniform(0.35, 0.65)), int(size * rng.uniform(0.35, 0.65))),
                   max(1, int(size * 0.04)), 255, -1)
        on = lamp > 0
        rgb[on] = MID_GREY * 2.0 ** rng.uniform(8, 11)
    return np.dstack([rgb * alpha[..., None], alpha]).astype(np.float32)
