"""Fitting an inverse camera response (CRF) to a static exposure bracket.

The method is Debevec & Malik's: a pixel of irradiance ``E`` exposed for ``t`` records code
``z`` with ``ln g(z) = ln E + ln t``, where ``g`` is the inverse response; many pixels at
several exposures pin ``g`` down up to a scale, which ``g(1) = 1`` fixes (preprocess's
convention: full scale is linear 1). We solve it ourselves instead of calling OpenCV's
``CalibrateDebevec``/``CalibrateRobertson`` because those take one uint8 image per
exposure: they cannot use the *averaged* float codes of several frames (noise and the 8-bit
quantisation step both shrink by averaging), 12-bit data, or the sites of one CFA colour.

Choices, and why:

* ``ln g`` is piecewise linear on knots uniform in ``ln(z + c)``: knots are dense in the
  toe, where ``ln g`` bends hardest, and a second-difference smoothness prior there favours
  power laws (a pure gamma is a straight line in ``ln z``).
* Irradiances are eliminated per pixel (weighted mean), leaving a small least-squares
  problem in the knots only; ``ln g`` is a cumulative sum of non-negative steps, so the
  solution is monotonic by construction (bounded least squares), not clipped afterwards.
* Weights are a hat on the code value (mid-tones count most); a sample any of whose frames
  hit 0 or full scale is left out, since its average is biased by the clip.
* Below the lowest well-sampled code the curve continues as a power law to ``g(0) = 0``.
* Sample pixels are spread evenly over brightness (the sum of a pixel's codes over the
  bracket grows with its irradiance), preferring flat neighbourhoods, which tolerate the
  sub-pixel shake of a real tripod.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import nnls

from capture.sensor import bayer_channels
from hdrstream.crf import CRF
from hdrstream.pixfmt import PixelFormat, check_layout, pixel_format

CHANNELS = ("R", "G", "B")


class CalibrationError(ValueError):
    """A bracket that cannot give a trustworthy CRF; the message says what to change."""


@dataclass
class Bracket:
    """Averaged frames of a static scene at several exposures, shortest first.

    ``codes[k]`` holds exposure ``k``'s mean code values scaled to [0, 1] (float32, the
    payload's layout: (H, W, 3) or an (H, W) mosaic); ``clipped[k]`` marks pixels where any
    frame hit 0 or full scale; ``moving[k]`` is the fraction of pixels whose frames
    disagree beyond noise (0 with a single frame).
    """

    pixel_format: str
    exposures_s: list[float]
    codes: list[np.ndarray]
    clipped: list[np.ndarray]
    frames_each: list[int]
    moving: list[float]
    source: str = ""

    @property
    def fmt(self) -> PixelFormat:
        return pixel_format(self.pixel_format)


@dataclass
class FitConfig:
    """How the inverse CRF is fitted and what a usable bracket must show."""

    samples: int = 4000  # sample pixels per colour
    knots: int = 128  # knots of ln g, uniform in ln(z + toe_c)
    toe_c: float = 0.02
    smoothness: float | None = None  # weight of the smoothness prior; None: see auto_smoothness
    table_size: int | None = None  # samples of the saved curve; None: 256 for 8-bit, 1024 above
    min_exposures: int = 3
    min_span_stops: float = 2.0  # longest / shortest exposure
    min_code_range: tuple[float, float] = (0.1, 0.9)  # the used samples must reach below / above these
    max_moving_fraction: float = 0.01  # of pixels whose frames of one exposure disagree
    max_residual_stops: float = 0.25  # rms misfit: beyond it the scene or light changed between exposures
    seed: int = 0


@dataclass
class ChannelFit:
    """How one colour's curve was supported by the data."""

    channel: str
    samples: int  # sample pixels used
    observations: int  # (pixel, exposure) pairs with weight > 0
    code_range: tuple[float, float]  # 1st / 99th percentile of the used codes
    coverage: float  # fraction of 32 code bins in [0, 1] with >= 10 observations
    rms_residual_stops: float  # weighted rms of ln g(z) - ln E - ln t, in stops
    p95_residual_stops: float
    exposure_bias_stops: list[float]  # weighted mean residual per exposure (a wrong exposure time shows here)
    toe_code: float  # below it the curve is a power-law extrapolation


@dataclass
class FitReport:
    """What went into the fit and how well it fits; ``to_dict`` is JSON-ready."""

    pixel_format: str
    exposures_s: list[float]
    frames_each: list[int]
    moving: list[float]
    channels: list[ChannelFit] = field(default_factory=list)
    source: str = ""

    @property
    def rms_residual_stops(self) -> float:
        return max(c.rms_residual_stops for c in self.channels)

    @property
    def code_range(self) -> tuple[float, float]:
        return (min(c.code_range[0] for c in self.channels), max(c.code_range[1] for c in self.channels))

    def to_dict(self) -> dict:
        return {
            "pixel_format": self.pixel_format,
            "source": self.source,
            "exposures_s": list(self.exposures_s),
            "frames_each": list(self.frames_each),
            "moving_fraction": [round(m, 6) for m in self.moving],
            "channels": [
                {
                    "channel": c.channel,
                    "samples": c.samples,
                    "observations": c.observations,
                    "code_range": [round(v, 4) for v in c.code_range],
                    "coverage": round(c.coverage, 4),
                    "rms_residual_stops": round(c.rms_residual_stops, 5),
                    "p95_residual_stops": round(c.p95_residual_stops, 5),
                    "exposure_bias_stops": [round(b, 5) for b in c.exposure_bias_stops],
                    "toe_code": round(c.toe_code, 4),
                }
                for c in self.channels
            ],
        }


# -- building a bracket ---------------------------------------------------------------------

def average_frames(frames: list[np.ndarray], fmt: PixelFormat) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean code in [0, 1], the clipped mask, and the fraction of pixels that moved.

    A pixel "moved" when its frames span more than both 0.08 of full scale and 10 times the
    lower quartile of all pixels' spans (flat areas, where a shake changes nothing, so that
    quartile is noise, which grows with gain; capped at 0.2 for a busy scene that moved
    everywhere): noise stays inside that, a sliding edge does not. Measured on the simulated
    camera: static brackets flag <= 0.003 % of pixels, a 2-pixel shake per frame >= 4 %.
    """
    if not frames:
        raise CalibrationError("an exposure with no frames; capture at least one frame per exposure")
    first = np.asarray(frames[0])
    for f in frames:
        f = np.asarray(f)
        check_layout(fmt, f.shape, f.dtype)
        if f.shape != first.shape:
            raise CalibrationError(f"frames of one exposure differ in shape: {first.shape} vs {f.shape}")
    white = fmt.white
    stack = np.stack([np.asarray(f) for f in frames])
    clipped = np.any((stack == 0) | (stack >= white), axis=0)
    codes = (stack.astype(np.float32) * np.float32(1.0 / white))
    mean = codes.mean(axis=0, dtype=np.float32)
    moving = 0.0
    if len(frames) > 1:
        dev = codes.max(axis=0) - codes.min(axis=0)
        ok = ~clipped
        if ok.any():
            d = dev[ok]
            noise = float(np.percentile(d, 25))  # flat areas: a shake leaves them alone
            moving = float(np.mean(d > min(max(0.08, 10.0 * noise), 0.2)))
    return mean, clipped, moving


def make_bracket(raw: list[tuple[float, list[np.ndarray]]], pixel_format_name: str, source: str = "") -> Bracket:
    """Average each exposure's frames; sort shortest first. ``raw`` is what ``camera.bracket`` returns."""
    fmt = pixel_format(pixel_format_name)
    if fmt.is_float:
        raise CalibrationError(f"{fmt.name} frames are already linear; calibration needs integer camera codes")
    if not raw:
        raise CalibrationError("an empty bracket; capture several exposures of a static scene")
    items = sorted(((float(t), list(frames)) for t, frames in raw), key=lambda x: x[0])
    for (t0, _), (t1, _) in zip(items, items[1:]):
        if math.isclose(t0, t1, rel_tol=1e-3):
            raise CalibrationError(f"exposure {t0:g} s appears twice; group its frames into one entry")
    codes, clipped, counts, moving = [], [], [], []
    shape = None
    for t, frames in items:
        if not (math.isfinite(t) and t > 0):
            raise CalibrationError(f"exposure {t!r} s is not a positive time")
        mean, clip, mov = average_frames(frames, fmt)
        if shape is None:
            shape = mean.shape
        elif mean.shape != shape:
            raise CalibrationError(f"exposure {t:g} s has frames of shape {mean.shape}, others {shape}")
        codes.append(mean)
        clipped.append(clip)
        counts.append(len(frames))
        moving.append(mov)
    return Bracket(fmt.name, [t for t, _ in items], codes, clipped, counts, moving, source)


def channel_planes(img: np.ndarray, fmt: PixelFormat) -> list[list[np.ndarray]]:
    """Per colour (R, G, B; or one for mono) the 2-D planes of its own sites: no interpolation."""
    if fmt.bayer:
        planes: list[list[np.ndarray]] = [[], [], []]
        for (dy, dx), c in np.ndenumerate(bayer_channels(fmt.bayer)):
            planes[c].append(img[dy::2, dx::2])
        return planes
    if fmt.channels == 1:
        return [[img]]
    order = (2, 1, 0) if fmt.bgr else (0, 1, 2)
    return [[img[..., c]] for c in order]


# -- checks ---------------------------------------------------------------------------------

def check_bracket(bracket: Bracket, cfg: FitConfig) -> None:
    """Raise CalibrationError, saying what to change, for a bracket that cannot calibrate."""
    t = bracket.exposures_s
    if len(t) < cfg.min_exposures:
        raise CalibrationError(
            f"{len(t)} exposure(s) ({', '.join(f'{x:g}' for x in t)} s); a CRF needs at least "
            f"{cfg.min_exposures} different exposures of the same static scene (e.g. 7, 1 stop apart)"
        )
    span = math.log2(t[-1] / t[0])
    if span < cfg.min_span_stops:
        raise CalibrationError(
            f"the bracket spans {span:.2f} stops ({t[0]:g}..{t[-1]:g} s); it needs at least "
            f"{cfg.min_span_stops:g} (e.g. 7 exposures 1 stop apart)"
        )
    for tk, m in zip(t, bracket.moving):
        if m > cfg.max_moving_fraction:
            raise CalibrationError(
                f"frames at {tk:g} s disagree on {100 * m:.1f}% of pixels: the scene or the camera moved "
                f"(or the light flickers); calibrate on a static scene from a tripod"
            )
    # the darkest and the brightest code the bracket reaches on unclipped pixels
    usable = [c[~k] for c, k in zip(bracket.codes, bracket.clipped)]
    hi = max((float(np.percentile(u, 99)) if u.size else 0.0) for u in usable)
    lo = min((float(np.percentile(u, 1)) if u.size else 1.0) for u in usable)
    longest_sat = float(np.mean(bracket.codes[-1] >= 1.0 - 1e-6))
    shortest_sat = float(np.mean(bracket.clipped[0] & (bracket.codes[0] > 0.5)))
    if shortest_sat > 0.9:
        raise CalibrationError(
            f"{100 * shortest_sat:.0f}% of pixels are saturated even at {t[0]:g} s; shorten the "
            f"exposures, stop the lens down or reduce the gain"
        )
    if hi < cfg.min_code_range[1]:
        raise CalibrationError(
            f"the scene is too dark: unclipped pixels reach only code {hi:.2f} of full scale even at "
            f"{t[-1]:g} s (need {cfg.min_code_range[1]:g}); lengthen the exposures or add light"
        )
    if lo > cfg.min_code_range[0]:
        raise CalibrationError(
            f"the bracket never records dark codes: the darkest unclipped pixels are at {lo:.2f} of full "
            f"scale even at {t[0]:g} s (need below {cfg.min_code_range[0]:g}); shorten the shortest "
            f"exposure or put something dark in the view ({100 * longest_sat:.0f}% saturate at {t[-1]:g} s)"
        )


# -- the fit --------------------------------------------------------------------------------

def auto_smoothness(exposures_s: list[float]) -> float:
    """Light smoothing, unless every exposure is a whole number of equal steps from the shortest.

    With such a bracket (e.g. exactly 1 stop apart) the data cannot see a ripple in ln g
    that repeats with each step (Grossberg & Nayar's ambiguity), so the prior must be
    stronger; that costs a little accuracy on sharply bending curves. Uneven steps (the
    default plan) break the ambiguity. Measured on a shoulder CRF: max error 0.005 (uneven,
    0.1) against 0.015-0.02 (even, 0.5-1.0); even with 0.1 the ripple reached 0.02.
    """
    stops = np.log2(np.asarray(exposures_s) / exposures_s[0])[1:]
    step = float(np.min(np.diff(np.concatenate([[0.0], stops])))) if stops.size else 1.0
    if step <= 1e-6:
        return 0.5
    multiples = stops / step
    return 0.5 if np.all(np.abs(multiples - np.round(multiples)) < 0.05) else 0.1


def code_weight(z: np.ndarray) -> np.ndarray:
    """Hat on the code value: 1 at mid-grey, 0 at 0 and full scale."""
    return np.clip(1.0 - np.abs(2.0 * z - 1.0), 0.0, 1.0) ** 0.5 * (z > 0.002) * (z < 0.995)


def _select_samples(z: np.ndarray, ok: np.ndarray, flat: np.ndarray, n: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Indices of up to ``n`` pixels spread evenly over brightness, flattest first in each band."""
    usable = np.flatnonzero(ok.sum(axis=0) >= 2)
    if usable.size <= n:
        return usable
    level = z[:, usable].sum(axis=0)
    bands = max(8, n // 20)
    edges = np.linspace(level.min(), level.max() + 1e-9, bands + 1)
    band = np.clip(np.searchsorted(edges, level, side="right") - 1, 0, bands - 1)
    order = np.lexsort((rng.random(usable.size), flat[usable], band))  # by band, then flatness
    counts = np.bincount(band, minlength=bands)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # fill the bands evenly; bands with few pixels give all they have
    quota = np.zeros(bands, int)
    left = n
    open_ = counts > 0
    while left > 0 and open_.any():
        share = max(1, left // int(open_.sum()))
        add = np.minimum(counts - quota, share) * open_
        quota += add
        left -= int(add.sum())
        open_ = quota < counts
    pick = np.concatenate([order[s:s + q] for s, q in zip(starts, quota)])
    return usable[pick[:n]]


def _flatness(planes: list[np.ndarray]) -> np.ndarray:
    """Local 3x3 standard deviation of each plane, flattened and concatenated."""
    out = []
    for p in planes:
        p = np.ascontiguousarray(p, np.float32)
        m = cv2.blur(p, (3, 3))
        m2 = cv2.blur(p * p, (3, 3))
        out.append(np.sqrt(np.maximum(m2 - m * m, 0)).reshape(-1))
    return np.concatenate(out)


def _fit_channel(name: str, z: np.ndarray, ok: np.ndarray, flat: np.ndarray, log_t: np.ndarray,
                 cfg: FitConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, ChannelFit]:
    """ln g at the knots, and the knots' code values, from (K, N) codes of one colour."""
    k_exp = z.shape[0]
    idx = _select_samples(z, ok, flat, cfg.samples, rng)
    zs = z[:, idx].astype(np.float64)  # (K, P)
    w = code_weight(zs) * ok[:, idx]
    keep = (w > 0).sum(axis=0) >= 2
    zs, w = zs[:, keep], w[:, keep]
    p_count = zs.shape[1]
    if p_count < 50:
        raise CalibrationError(
            f"channel {name}: only {p_count} pixels are well exposed in two or more exposures; "
            f"the exposures are too far apart or the scene has too little mid-tone"
        )
    n = cfg.knots
    s0, s1 = math.log(cfg.toe_c), math.log(1.0 + cfg.toe_c)
    ds = (s1 - s0) / (n - 1)
    pos = (np.log(zs + cfg.toe_c) - s0) / ds
    j = np.clip(np.floor(pos).astype(int), 0, n - 2)
    frac = pos - j
    # A[k, p, :] = hat basis of z[k, p]; built dense (K * P * n floats, a few tens of MB at most)
    a = np.zeros((k_exp, p_count, n))
    kk, pp = np.meshgrid(np.arange(k_exp), np.arange(p_count), indexing="ij")
    a[kk, pp, j] = 1.0 - frac
    a[kk, pp, j + 1] += frac
    w2 = w * w
    wsum = w2.sum(axis=0)  # (P,)
    a_bar = np.einsum("kp,kpn->pn", w2, a) / wsum[:, None]
    b = np.broadcast_to(log_t[:, None], zs.shape)
    b_bar = (w2 * b).sum(axis=0) / wsum
    rows = (w[..., None] * (a - a_bar[None])).reshape(-1, n)
    rhs = (w * (b - b_bar[None])).reshape(-1)
    used = (w > 0).reshape(-1)
    rows, rhs = rows[used], rhs[used]
    # ln g = cumsum of steps d_1..d_{n-1} >= 0 (the constant is fixed afterwards by g(1) = 1)
    lower = np.tril(np.ones((n, n)))[:, 1:]
    m_data = rows @ lower
    smooth = cfg.smoothness if cfg.smoothness is not None else auto_smoothness(list(np.exp(log_t)))
    lam = smooth * math.sqrt(rows.shape[0] / n)
    d1 = np.diff(np.eye(n - 1), axis=0) * lam  # second difference of ln g = first difference of d
    # the same least-squares problem through its (small) normal equations: ||R d - c||
    hess = m_data.T @ m_data + d1.T @ d1
    r = np.linalg.cholesky(hess + 1e-10 * np.trace(hess) / n * np.eye(n - 1)).T
    c = np.linalg.solve(r.T, m_data.T @ rhs)
    steps, _ = nnls(r, c, maxiter=50 * n)
    log_g = lower @ steps
    log_g -= log_g[-1]  # the last knot is code 1.0
    knots_z = np.exp(s0 + ds * np.arange(n)) - cfg.toe_c
    knots_z[0], knots_z[-1] = 0.0, 1.0

    # residuals in stops, with each pixel's irradiance at its weighted best
    fitted = a @ log_g  # (K, P)
    log_e = (w2 * (fitted - b)).sum(axis=0) / wsum
    res = (fitted - b - log_e[None]) / math.log(2.0)
    wt = w2 / w2.sum()
    rms = float(np.sqrt((wt * res**2).sum()))
    abs_used = np.abs(res[w > 0])
    bias = [float((w2[k] * res[k]).sum() / max(w2[k].sum(), 1e-12)) for k in range(k_exp)]
    used_codes = zs[w > 0]
    hist = np.histogram(used_codes, bins=32, range=(0.0, 1.0))[0]
    lo, hi = (float(v) for v in np.percentile(used_codes, [1, 99]))
    report = ChannelFit(
        channel=name, samples=p_count, observations=int(used.sum()), code_range=(lo, hi),
        coverage=float(np.mean(hist >= 10)), rms_residual_stops=rms,
        p95_residual_stops=float(np.percentile(abs_used, 95)), exposure_bias_stops=bias,
        toe_code=max(lo, 1e-4),
    )
    return log_g, knots_z, report


def _table(log_g: np.ndarray, knots_z: np.ndarray, toe: float, size: int) -> np.ndarray:
    """The inverse sampled at i / (size - 1): exp(ln g), a power law below the toe, strictly rising."""
    z = np.linspace(0.0, 1.0, size)
    g = np.exp(np.interp(z, knots_z, log_g))
    g_toe = math.exp(np.interp(toe, knots_z, log_g))
    g_up = math.exp(np.interp(2 * toe, knots_z, log_g))
    p = float(np.clip(math.log(g_up / g_toe) / math.log(2.0), 1.0, 4.0))  # local log-log slope
    below = z < toe
    g[below] = g_toe * (z[below] / toe) ** p
    g[0] = 0.0
    g = np.maximum.accumulate(g)
    g += np.linspace(0.0, 1e-6, size)  # strictly increasing, so the forward direction is defined
    return (g / g[-1]).astype(np.float32)


def fit_inverse_crf(bracket: Bracket, cfg: FitConfig | None = None) -> tuple[CRF, FitReport]:
    """Inverse CRF (code in [0, 1] -> linear, code 1 -> 1) per colour, and how well it fits.

    Raises CalibrationError for a bracket that cannot calibrate (see :func:`check_bracket`)
    or fits too poorly (rms residual above ``cfg.max_residual_stops``).
    """
    cfg = cfg or FitConfig()
    fmt = bracket.fmt
    check_bracket(bracket, cfg)
    size = cfg.table_size or (256 if fmt.bits <= 8 else 1024)
    log_t = np.log(np.asarray(bracket.exposures_s, np.float64))
    per_exp = [channel_planes(c, fmt) for c in bracket.codes]
    per_clip = [channel_planes(c, fmt) for c in bracket.clipped]
    mid = len(bracket.codes) // 2
    rng = np.random.default_rng(cfg.seed)
    names = CHANNELS if len(per_exp[0]) == 3 else ("Y",)
    report = FitReport(bracket.pixel_format, list(bracket.exposures_s), list(bracket.frames_each),
                       list(bracket.moving), source=bracket.source)
    rows = []
    for c, name in enumerate(names):
        z = np.stack([np.concatenate([p.reshape(-1) for p in planes[c]]) for planes in per_exp])
        ok = ~np.stack([np.concatenate([p.reshape(-1) for p in planes[c]]) for planes in per_clip])
        flat = _flatness(per_exp[mid][c])
        log_g, knots_z, ch = _fit_channel(name, z, ok, flat, log_t, cfg, rng)
        rows.append(_table(log_g, knots_z, ch.toe_code, size))
        report.channels.append(ch)
    if len(rows) == 1:
        rows = rows * 3
    worst = max(report.channels, key=lambda ch: ch.rms_residual_stops)
    if worst.rms_residual_stops > cfg.max_residual_stops:
        raise CalibrationError(
            f"channel {worst.channel}: the curve misfits the bracket by {worst.rms_residual_stops:.2f} stops "
            f"rms (limit {cfg.max_residual_stops:g}); the light or scene changed between exposures, or the "
            f"exposure times are wrong (per-exposure bias in stops: "
            f"{', '.join(f'{b:+.2f}' for b in worst.exposure_bias_stops)})"
        )
    return CRF(gamma=None, inverse=np.stack(rows)), report
