"""The frozen network's outputs before the noise filter, cached for the denoise stage.

The denoise stage trains the learned noise filter alone (``NetConfig.learned_denoise``);
everything before it is frozen, yet each step used to render the windows, run DIS flows,
CoarseNet, the classical merge and the bilateral filter again, for inputs that do not change. ``make`` runs that once per sample and writes chunks of what the
filter sees (the final HDR before it, the bilateral filter's output, the noise level, the
reference frame, the ground truth and where the scene moves); ``--set denoise_cache=DIR``
then trains from them, with a random flip, rotation and crop per batch: 1.7× the pixels a
second on a 2-core CPU, where the filter's own pass is most of a step. Validation still runs
the whole network on the fixed validation sets.

    python -m training.denoise_cache --chunks 40 -- --config e2e2 --config cpu --stage denoise \
        --set flow=dis --set classical_gate=true --set refine=false --set learned_denoise=true \
        --init infer/weights/hdrnet-2exp.safetensors --set seed=101 --out out/dncache/c2 ...
    python -m training ... --stage denoise ... --set denoise_cache=out/dncache/c2 --set denoise_crop=96

(the model card, infer/weights/README.md, has the commands in full).
A chunk is ``batches_per_chunk`` training batches (the training stream's, from the chunk's
first step), written whole or not at all; a run that stops resumes at the first missing one.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from training.losses import moved_mask

log = logging.getLogger(__name__)

KEYS = ("prefilter", "filtered", "sigma", "t_ref", "gt_ref", "ldr_ref", "moved")
CHUNK_GLOB = "chunk-*.npz"


def chunk_path(out: Path, index: int) -> Path:
    return out / f"chunk-{index:04d}.npz"


def make_cache(trainer, out: str | Path, chunks: int, batches_per_chunk: int = 64) -> list[Path]:
    """Write ``chunks`` chunks of ``trainer``'s training stream (a denoise-stage
    :class:`training.loop.Trainer`) to ``out``; chunks already there are kept. Returns every
    chunk's path."""
    if trainer.cfg.stage != "denoise":
        raise ValueError(f"a denoise cache is made by the denoise stage, not {trainer.cfg.stage!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [chunk_path(out, c) for c in range(chunks)]
    missing = [c for c, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    trainer.model.eval()
    trainer.step = missing[0] * batches_per_chunk  # the stream is reproducible from any step
    batches = iter(trainer.loader())
    for c in range(missing[0], chunks):
        if paths[c].exists():
            for _ in range(batches_per_chunk):
                next(batches)
            continue
        parts: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
        for _ in range(batches_per_chunk):
            for k, v in prefilter_batch(trainer, trainer.to_device(next(batches))).items():
                parts[k].append(v)
        tmp = paths[c].with_suffix(".tmp.npz")
        np.savez(tmp, **{k: np.concatenate(v) for k, v in parts.items()})
        tmp.replace(paths[c])
        log.info("denoise cache: chunk %d of %d written (%s)", c + 1, chunks, paths[c])
    return paths


@torch.no_grad()
def prefilter_batch(trainer, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """What the noise filter sees for one training batch, as float16 arrays (``moved``: bool)."""
    out = trainer.forward(batch, stage="denoise", before_filter=True)
    n = batch["ldr"].shape[1]
    t_ref = batch["expo"][:, n // 2].float()
    filtered = trainer.bilateral(out["hdr"], t_ref, out["sigma"])
    half = {"prefilter": out["hdr"], "filtered": filtered, "sigma": out["sigma"], "gt_ref": batch["gt_ref"],
            "ldr_ref": batch["ldr"][:, n // 2]}
    arrays = {k: v.float().cpu().numpy().astype(np.float16) for k, v in half.items()}
    arrays["t_ref"] = t_ref.cpu().numpy().astype(np.float32)
    arrays["moved"] = moved_mask(batch["gt"].float()).unsqueeze(1).cpu().numpy()
    return arrays


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


def main(argv: list[str] | None = None) -> int:
    from training.loop import Trainer, build_parser, config_from_args

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="the arguments after -- are a denoise-stage training command's")
    p.add_argument("--chunks", type=int, required=True, help="chunks to have in the folder")
    p.add_argument("--batches-per-chunk", type=int, default=64)
    p.add_argument("--dir", help="where the chunks go (default: the training command's --out)")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    targs = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(build_parser().parse_args(targs))
    trainer = Trainer(cfg, argv=targs)
    paths = make_cache(trainer, a.dir or cfg.out, a.chunks, a.batches_per_chunk)
    print(f"{len(paths)} chunks in {paths[0].parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
