"""The frozen network's outputs before the noise filter, cached for the denoise stage.

The denoise stage trains the learned noise filter alone (``NetConfig.learned_denoise``);
everything before it is frozen, yet each step used to render the windows, run DIS flows,
CoarseNet, the classical merge and the bilateral filter again, for inputs that do not
change. ``make`` runs that once per sample and writes chunks of what the filter sees (the
final HDR before it, the bilateral filter's output, the noise level, the reference frame,
the ground truth and where the scene moves); ``--set denoise_cache=DIR`` then trains from
them (``training.cached_batches``), with a random flip, rotation and crop per batch: 1.7× the
pixels a second on a 2-core CPU, where the filter's own pass is most of a step. Validation
still runs the whole network on the fixed validation sets.

    python -m training.denoise_cache --chunks 40 -- --config e2e2 --config cpu --stage denoise \
        --set flow=dis --set classical_gate=true --set refine=false --set learned_denoise=true \
        --init infer/weights/hdrnet-2exp.safetensors --set seed=101 --out out/dncache/c2 ...
    python -m training ... --stage denoise ... --set denoise_cache=out/dncache/c2 --set denoise_crop=96

Several caches train one filter: ``--set denoise_cache=out/dncache/c2,out/dncache/c3 --set
denoise_cache_chunks=20`` (a two- and a three-exposure one, the first 20 chunks of each)
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

from training.cached_batches import KEYS, chunk_path
from training.losses import moved_mask
from training.loop import Trainer, build_parser, config_from_args

log = logging.getLogger(__name__)


def make_cache(trainer: Trainer, out: str | Path, chunks: int, batches_per_chunk: int = 64) -> list[Path]:
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
def prefilter_batch(trainer: Trainer, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
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


def main(argv: list[str] | None = None) -> int:
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
