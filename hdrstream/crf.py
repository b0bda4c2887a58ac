"""Camera response curves: the gamma default and tabulated curves from a file.

A CRF file is JSON: ``{"inverse": [[...], [...], [...]]}`` with one row per RGB
channel (or a single row for all), sampled at code values ``i / (n - 1)`` and giving
linear irradiance in [0, 1]. ``hdrstream calibrate`` writes this; preprocess inverts with
it; the simulated camera applies its forward direction.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CRF:
    """Inverse response ``code value -> linear``; ``gamma`` set means a pure power law."""

    gamma: float | None = 2.2
    inverse: np.ndarray | None = None  # (3, n) monotonic, [0, 1] -> [0, 1]

    @property
    def is_gamma22(self) -> bool:
        return self.inverse is None and self.gamma is not None and abs(self.gamma - 2.2) < 1e-9

    def to_linear(self, code: np.ndarray) -> np.ndarray:
        """Code values in [0, 1], (..., 3) -> linear irradiance in [0, 1]."""
        code = np.clip(np.asarray(code, np.float32), 0.0, 1.0)
        if self.inverse is None:
            return code ** np.float32(self.gamma)
        xs = np.linspace(0.0, 1.0, self.inverse.shape[1], dtype=np.float32)
        out = np.empty_like(code)
        for c in range(3):
            out[..., c] = np.interp(code[..., c], xs, self.inverse[c])
        return out

    def from_linear(self, lin: np.ndarray) -> np.ndarray:
        """Linear irradiance in [0, 1], (..., 3) -> code values in [0, 1]."""
        lin = np.clip(np.asarray(lin, np.float32), 0.0, 1.0)
        if self.inverse is None:
            return lin ** np.float32(1.0 / self.gamma)
        xs = np.linspace(0.0, 1.0, self.inverse.shape[1], dtype=np.float32)
        out = np.empty_like(lin)
        for c in range(3):
            out[..., c] = np.interp(lin[..., c], self.inverse[c], xs)
        return out


def load_crf(spec: str | os.PathLike) -> CRF:
    """``gamma2.2`` / ``gamma<g>`` or the path of a CRF JSON file."""
    text = str(spec)
    if text.startswith("gamma"):
        try:
            return CRF(gamma=float(text[5:] or 2.2))
        except ValueError:
            raise ValueError(f"bad CRF spec {text!r}: expected gamma<number> or a file") from None
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"CRF file not found: {path}")
    try:
        table = np.asarray(json.loads(path.read_text())["inverse"], np.float32)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a CRF file ({exc}); expected JSON with 'inverse'") from None
    if table.ndim == 1:
        table = table[None]
    if table.shape[0] == 1:
        table = np.repeat(table, 3, axis=0)
    if table.shape[0] != 3 or table.shape[1] < 2:
        raise ValueError(f"{path}: 'inverse' must be 1 or 3 rows of >= 2 samples, got {table.shape}")
    if np.any(np.diff(table, axis=1) < 0):
        raise ValueError(f"{path}: inverse CRF must be monotonically non-decreasing")
    return CRF(gamma=None, inverse=table)


def save_crf(path: str | os.PathLike, inverse: np.ndarray, **info: object) -> None:
    table = np.asarray(inverse, np.float32)
    Path(path).write_text(json.dumps({"inverse": table.tolist(), **info}))
