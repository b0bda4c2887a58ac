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


def cache_folders(spec: str | Path) -> list[Path]:
    """The folders of a ``denoise_cache`` setting: one, or several separated by commas (a
    two- and a three-exposure cache, say)."""
    folders = [Path(f.strip()) for f in str(spec).split(",") if f.strip()]
    if not folders:
        raise ValueError("denoise_cache names no folder")
    return folders


def load_cache(folder: str | Path, max_chunks: int = 0) -> dict[str, torch.Tensor]:
    """Every chunk of ``folder`` (or of each comma-separated folder, at most ``max_chunks`` of
    each: 0 all) in one set of tensors, as stored. Raises FileNotFoundError for a folder
    without chunks, ValueError for a chunk that lacks a key or has another sample size."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
    for f in cache_folders(folder):
        paths = sorted(f.glob(CHUNK_GLOB))
        if not paths:
            raise FileNotFoundError(f"no denoise cache chunks ({CHUNK_GLOB}) in {f}: make them with "
                                    "python -m training.denoise_cache")
        for p in paths[:max_chunks or None]:
            with np.load(p) as z:
                if set(KEYS) - set(z.files):
                    raise ValueError(f"{p}: not a denoise cache chunk (keys {sorted(z.files)})")
                if parts["gt_ref"] and z["gt_ref"].shape[1:] != parts["gt_ref"][0].shape[1:]:
                    raise ValueError(f"{p}: samples of shape {z['gt_ref'].shape[1:]}, the cache's first "
                                     f"chunk has {parts['gt_ref'][0].shape[1:]}")
                for k in KEYS:
                    parts[k].append(z[k])
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}


class CachedBatches(IterableDataset):
    """Endless training batches drawn from a denoise cache, each with one random flip,
    rotation and ``crop`` (0: whole samples); reproducible from ``seed`` and ``start_step``."""

    def __init__(self, folder: str | Path, batch_size: int, crop: int = 0, seed: int = 0, start_step: int = 0,
                 max_chunks: int = 0):
        super().__init__()
        self.data = load_cache(folder, max_chunks)
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
