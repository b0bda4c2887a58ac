"""Training batches from a denoise cache (``training.denoise_cache`` makes it).

A chunk (``chunk-NNNN.npz``) holds, per window, what the learned noise filter sees: the final
HDR before it ("prefilter"), the bilateral filter's output, the noise level σ, the
reference's exposure time and frame, the ground truth and where the scene moves.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

log = logging.getLogger(__name__)

KEYS = ("prefilter", "filtered", "sigma", "t_ref", "gt_ref", "ldr_ref", "moved")
CHUNK_GLOB = "chunk-*.npz"


def chunk_path(out: Path, index: int) -> Path:
    return out / f"chunk-{index:04d}.npz"


def load_cache(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every chunk of ``folder`` in one set of tensors (as stored). Raises FileNotFoundError
    without any, ValueError for a chunk that lacks a key."""
    paths = sorted(Path(folder).glob(CHUNK_GLOB))
    if not paths:
        raise FileNotFoundError(f"no denoise cache chunks ({CHUNK_GLOB}) in {folder}: make them with "
                                "python -m training.denoise_cache")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
    for p in paths:
        with np.load(p) as z:
            if set(KEYS) - set(z.files):
                raise ValueError(f"{p}: not a denoise cache chunk (keys {sorted(z.files)})")
            for k in KEYS:
                parts[k].append(z[k])
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}


class CachedBatches(IterableDataset):
    """Endless training batches drawn from a denoise cache, each with one random flip,
    rotation and ``crop`` (0: whole samples); reproducible from ``seed`` and ``start_step``."""

    def __init__(self, folder: str | Path, batch_size: int, crop: int = 0, seed: int = 0, start_step: int = 0):
        super().__init__()
        self.data = load_cache(folder)
        self.batch_size, self.crop, self.seed, self.start_step = batch_size, crop, seed, start_step
        self.size = self.data["gt_ref"].shape[-1]
        if self.crop > self.size or min(self.data["gt_ref"].shape[-2:]) != self.size:
            raise ValueError(f"crop {crop} does not fit the cache's square {self.size}-pixel samples")
        log.info("denoise cache: %d samples from %s", len(self), folder)

    def __len__(self) -> int:
        return self.data["t_ref"].shape[0]

    def __iter__(self):
        if get_worker_info() is not None:
            raise RuntimeError("CachedBatches runs in the training process (workers = 0)")
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        idx = torch.from_numpy(rng.integers(0, len(self), self.batch_size))
        c = self.crop or self.size
        y0, x0 = rng.integers(0, self.size - c + 1, 2)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        out = {}
        for key, v in self.data.items():
            v = v[idx]
            if v.dim() == 4:
                v = torch.rot90(v[..., y0:y0 + c, x0:x0 + c], k, (2, 3))
                v = v.flip(3) if flip else v
            out[key] = v.contiguous() if v.dtype == torch.bool else v.float().contiguous()
        return out
