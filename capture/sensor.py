"""The simulated sensor: irradiance → electrons → noise → gain → clip → CRF → integer codes.

Units: irradiance ``H`` is linear full scale per second at the applied gain, so an ideal
camera records ``lin = H * t`` (design §3). The sensor collects ``H * t * full_well / gain``
photo-electrons (gain amplifies after collection, which is why a dark scene pushed by gain
is noisier), adds shot and read noise, and converts back.

Speed matters (a 1536x813 frame in a few tens of ms on two cores), hence two tricks:
* Gaussian noise comes from a 65536-entry table of normal quantiles indexed by random
  uint16s (3x faster than ``standard_normal``; tails end at 4.3 sigma). Shot noise is
  exact Poisson for means below ``POISSON_BELOW`` electrons, Gaussian above.
* CRF + quantisation is one table lookup on the float32 bit pattern of ``lin``, built once
  from ``crf.from_linear``; 16 mantissa bits keep it within 0.02 code of
  ``round(white * from_linear(lin))`` (it can differ only that close to a rounding edge).
"""
from __future__ import annotations

from functools import cache
from statistics import NormalDist

import numpy as np

from hdrstream.crf import CRF
from hdrstream.pixfmt import PixelFormat, pixel_format

POISSON_BELOW = 20.0  # electrons; below this the Gaussian approximation is visibly wrong
_MANTISSA_SHIFT = 7  # keep 23 - 7 = 16 mantissa bits in the lookup index
_LIN_MIN = np.float32(2.0**-32)  # smaller linear values all map to the bottom table entry
_BASE = int(np.array(_LIN_MIN).view(np.uint32)) >> _MANTISSA_SHIFT
_TOP = int(np.array(np.float32(1.0)).view(np.uint32)) >> _MANTISSA_SHIFT
MAX_BITS = 12  # the table's precision is not enough for 16-bit codes


def bayer_channels(pattern: str) -> np.ndarray:
    """2x2 array of RGB channel indices for a GenICam Bayer pattern ("RG": R at (0, 0))."""
    index = {"R": 0, "G": 1, "B": 2}
    full = {"RG": "RGGB", "GR": "GRBG", "GB": "GBRG", "BG": "BGGR"}[pattern]
    return np.array([index[c] for c in full]).reshape(2, 2)


def mosaic(rgb: np.ndarray, pattern: str = "RG") -> np.ndarray:
    """Sample an (H, W, 3) image onto a Bayer mosaic (H, W): each site keeps its colour."""
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"a Bayer mosaic needs even height and width, got {w}x{h}")
    out = np.empty((h, w), rgb.dtype)
    for (dy, dx), c in np.ndenumerate(bayer_channels(pattern)):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, c]
    return out


@cache
def _normal_quantiles() -> np.ndarray:
    return np.array([NormalDist().inv_cdf((k + 0.5) / 65536) for k in range(65536)], np.float32)


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Fast float32 N(0, 1) samples (quantised to 65536 levels, |z| < 4.33)."""
    return _normal_quantiles()[rng.integers(0, 65536, shape, dtype=np.uint16)]


def code_table(crf: CRF, bits: int) -> np.ndarray:
    """(rows, N) codes ``round(white * crf.from_linear(lin))`` indexed by lin's float32 bits.

    One row when the CRF is the same for all channels (a gamma), else one per R, G, B.
    """
    centres = ((np.arange(_BASE, _TOP + 1, dtype=np.uint32) << _MANTISSA_SHIFT)
               + np.uint32(1 << (_MANTISSA_SHIFT - 1))).view(np.float32)
    white = float(2**bits - 1)
    if crf.inverse is None:
        codes = crf.from_linear(centres)[None]
    else:
        codes = crf.from_linear(np.repeat(centres[:, None], 3, axis=1)).T
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.ascontiguousarray(np.rint(codes * np.float32(white)).astype(dtype))


class Sensor:
    """One camera sensor configuration; :meth:`capture` turns irradiance into a payload."""

    def __init__(self, fmt: str | PixelFormat, crf: CRF, full_well_e: float = 10500.0,
                 read_noise_e: float = 2.5, noise: bool = True):
        self.fmt = pixel_format(fmt) if isinstance(fmt, str) else fmt
        check_supported(self.fmt)
        if full_well_e <= 0 or read_noise_e < 0:
            raise ValueError(f"need full_well_e > 0 and read_noise_e >= 0, got {full_well_e}, {read_noise_e}")
        self.crf = crf
        self.full_well_e = float(full_well_e)
        self.read_noise_e = float(read_noise_e)
        self.noise = noise
        self._table = code_table(crf, self.fmt.bits)
        self._offsets: dict[tuple[int, ...], np.ndarray] = {}

    def linear(self, irradiance: np.ndarray, exposure_s: float, gain: float = 1.0,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """Noisy linear values, (H, W, 3) or the (H, W) mosaic, not yet clipped."""
        h = mosaic(irradiance, self.fmt.bayer) if self.fmt.bayer else irradiance
        electrons = np.multiply(h, np.float32(exposure_s * self.full_well_e / gain), dtype=np.float32)
        if self.noise:
            if rng is None:
                raise ValueError("a noisy sensor needs a random generator")
            self._add_noise(electrons, rng)
        electrons *= np.float32(gain / self.full_well_e)
        return electrons

    def capture(self, irradiance: np.ndarray, exposure_s: float, gain: float = 1.0,
                rng: np.random.Generator | None = None) -> np.ndarray:
        """The camera's payload for an (H, W, 3) float32 irradiance image."""
        return self.encode(self.linear(irradiance, exposure_s, gain, rng))

    def encode(self, lin: np.ndarray) -> np.ndarray:
        """Clip to [0, 1], apply the CRF and quantise (``lin`` is overwritten)."""
        np.clip(lin, _LIN_MIN, np.float32(1.0), out=lin)
        index = lin.view(np.uint32) >> _MANTISSA_SHIFT
        index -= np.uint32(_BASE)
        if self._table.shape[0] == 1:
            return self._table[0][index]
        index += self._channel_offsets(lin.shape)
        return self._table.reshape(-1)[index]

    def _channel_offsets(self, shape: tuple[int, ...]) -> np.ndarray:
        if shape not in self._offsets:
            n = np.uint32(self._table.shape[1])
            if self.fmt.bayer:
                chan = np.tile(bayer_channels(self.fmt.bayer), (shape[0] // 2, shape[1] // 2))
            else:
                chan = np.arange(3).reshape(1, 1, 3)
            self._offsets[shape] = chan.astype(np.uint32) * n
        return self._offsets[shape]

    def _add_noise(self, electrons: np.ndarray, rng: np.random.Generator) -> None:
        """Shot + read noise in place: exact Poisson in the dark, Gaussian elsewhere."""
        z = standard_normal(rng, electrons.shape)
        flat = electrons.reshape(-1)
        dark = np.flatnonzero(flat < POISSON_BELOW)
        dark_mean = flat[dark]
        sigma = np.add(electrons, np.float32(self.read_noise_e**2))
        np.sqrt(sigma, out=sigma)
        sigma *= z
        electrons += sigma
        if dark.size:
            shot = rng.poisson(dark_mean).astype(np.float32)
            flat[dark] = shot + np.float32(self.read_noise_e) * z.reshape(-1)[dark]


def check_supported(fmt: PixelFormat) -> None:
    """The simulator renders RGB or Bayer integer formats of up to 12 bits."""
    if fmt.is_float or fmt.bgr or fmt.bits > MAX_BITS or not (fmt.channels == 3 or fmt.bayer):
        raise ValueError(
            f"the simulated camera cannot produce {fmt.name}; use RGB8, RGB10, RGB12 or a "
            f"Bayer format of 8-12 bits (BayerRG8, BayerRG12, ...)"
        )
