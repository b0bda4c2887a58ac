"""Stage-wise training of HDRNet (paper §5.1) with checkpoints, validation and export.

Stages: ``coarse`` trains CoarseNet alone on its three windows per sample; ``refine``
freezes CoarseNet and trains RefineNet on the final blend; ``e2e`` fine-tunes the whole
network (lr 2e-5). Adam, learning rate halved every ``lr_halve_every`` steps.

Outputs in ``out``: ``log.jsonl`` (one JSON object per line: "start", "train", "val",
"end"), ``ckpt/last.pt`` (model, optimiser, scheduler, step, RNG; every ``ckpt_every``
steps / ``ckpt_every_min`` minutes and at the end), ``best.safetensors`` (best validation
PSNR-μ so far: coarse output in the coarse stage, final output after) and
``last.safetensors``, both via :func:`infer.net.model.save_weights` with meta (command,
steps, time, hardware, validation, data sources).

Entry point: :func:`main` (``python -m training``; ``hdrstream train``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from hdrstream.quality import mu_sq_error, pooled_psnr, psnr_mu
from infer.net.model import HDRNet, NetConfig, WeightsError, count_parameters, load_weights, save_weights
from infer.net.noise import from_y, to_y
from training import config as config_mod
from training.config import TrainConfig
from training.data import (WindowStream, bench, centre_flows, collate, dynamic_validation_set, validation_set,
                           worker_context)
from training.cached_batches import CachedBatches
from training.splits import REGIONS
from training.losses import stage_loss
from training.sources import SKIMAGE_PHOTOS, photo_names
from training.widen import add_zero_inputs, extend_window, widen_state

log = logging.getLogger("training")

CKPT_VERSION = 1


# -- environment -------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


def auto_workers(requested: int, device: torch.device) -> int:
    if requested >= 0:
        return requested
    cores = os.cpu_count() or 1
    if cores <= 2:
        return 0  # data generation inline: the two cores are better spent on the model
    return min(8, cores - 2) if device.type == "cuda" else max(1, cores // 4)


def hardware(device: torch.device) -> str:
    cores = os.cpu_count() or 1
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {cores} cores"
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; {text}"
    return text


# -- the trainer -------------------------------------------------------------------------


class Trainer:
    """One stage of training, set up from a :class:`TrainConfig`.

    Args:
        cfg: the configuration (validated).
        argv: the command line, recorded in the log and the weights' meta.
        resume: a checkpoint to continue from, or None.
    """

    def __init__(self, cfg: TrainConfig, argv: list[str] | None = None, resume: str | Path | None = None):
        cfg.validate()
        self.cfg = cfg
        self.argv = list(argv or [])
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(cfg.device)
        self.workers = auto_workers(cfg.workers, self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) - self.workers))
        else:
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.net_cfg = NetConfig(exposures=cfg.exposures, width=cfg.width, deform_groups=cfg.deform_groups,
                                 flow=cfg.flow, weight_prior=cfg.weight_prior,
                                 refine_residual=cfg.refine_residual, mask_blend=cfg.mask_blend,
                                 prior_per_channel=cfg.prior_per_channel, classical_gate=cfg.classical_gate,
                                 refine=cfg.refine, gate_motion_cue=cfg.gate_motion_cue,
                                 coarse_window=cfg.coarse_window, motion_edges=cfg.motion_edges,
                                 learned_denoise=cfg.learned_denoise, denoise_width=cfg.denoise_width,
                                 denoise_arch=cfg.denoise_arch,
                                 unwarped_behind_clip=cfg.unwarped_behind_clip)
        self._classical = None  # ClassicalReconstructor, for the gate's inputs
        self.model = HDRNet(self.net_cfg)
        if cfg.init:
            self._init_from(cfg.init)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.params = self._stage_parameters()
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema > 0 else None
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=cfg.lr_halve_every or 10**12, gamma=0.5)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        if self.amp_dtype is not None and self.device.type != "cuda":
            log.warning("amp=%s needs CUDA; training in float32 on %s", cfg.amp, self.device)
            self.amp_dtype = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best: dict[str, Any] = {"metric": None, "step": None}
        self.elapsed = 0.0  # training seconds in earlier runs of this stage (resume)
        self.val_data: dict | None = None
        if resume:
            self._load_checkpoint(resume)

    # -- setup ---------------------------------------------------------------------------

    def _init_from(self, path: str) -> None:
        """Start from weights or a checkpoint's model. From a CoarseNet-stage run only CoarseNet
        is taken: its RefineNet was never trained, and keeping this run's fresh one keeps its
        initialisation (a residual RefineNet starts as the identity)."""
        p = Path(path)
        if p.suffix == ".pt":
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
            state, stage = ckpt["model"], json.loads(ckpt.get("config", "{}")).get("stage")
        else:
            src = load_weights(p)
            # the blend and the prior's roll-off have no weights: they may change between runs;
            # a network without a gate starts one that has its fresh gate
            free = {"mask_blend": self.net_cfg.mask_blend, "prior_per_channel": self.net_cfg.prior_per_channel,
                    "classical_gate": self.net_cfg.classical_gate, "refine": self.net_cfg.refine,
                    "gate_motion_cue": self.net_cfg.gate_motion_cue, "coarse_window": self.net_cfg.coarse_window,
                    "motion_edges": self.net_cfg.motion_edges, "learned_denoise": self.net_cfg.learned_denoise,
                    "denoise_width": self.net_cfg.denoise_width, "denoise_arch": self.net_cfg.denoise_arch,
                    "unwarped_behind_clip": self.net_cfg.unwarped_behind_clip}
            widen = src.cfg.width < self.net_cfg.width  # a capacity run from trained narrower weights
            if widen:
                free["width"] = self.net_cfg.width
            if replace(src.cfg, **free) != self.net_cfg or (src.cfg.classical_gate and not self.net_cfg.classical_gate):
                raise ValueError(f"--init {p}: its network is {src.cfg}, this run trains {self.net_cfg}")
            state, stage = src.state_dict(), src.meta.get("stage")
            # a gate or a noise filter the source lacks starts fresh (the gate as trained from
            # nothing, the filter as the bilateral filter alone)
            fresh = [part for part in ("gate", "noise") if getattr(self.model, part) is not None
                     and getattr(src, part) is None]
            shape = (self.net_cfg.denoise_arch, self.net_cfg.denoise_width)
            if (self.model.noise is not None and src.noise is not None
                    and (src.cfg.denoise_arch, src.cfg.denoise_width) != shape):
                fresh.append("noise")  # another filter's shape: this run's starts as the bilateral filter
                log.info("the learned noise filter starts fresh (%s, width %g; --init has %s, width %g)",
                         self.net_cfg.denoise_arch, self.net_cfg.denoise_width, src.cfg.denoise_arch,
                         src.cfg.denoise_width)
            for part in fresh:
                state = {k: v for k, v in state.items() if not k.startswith(f"{part}.")}
                state.update({f"{part}.{k}": v for k, v in getattr(self.model, part).state_dict().items()})
            if "gate" not in fresh and self.net_cfg.gate_motion_cue and not src.cfg.gate_motion_cue:
                state = add_zero_inputs(state, "gate.conv1.weight", 1)  # the same gate at first
            if self.net_cfg.motion_edges and not src.cfg.motion_edges:
                state = add_zero_inputs(state, "coarse.weight.enc1.weight", src.cfg.coarse_frames - 1)
                log.info("CoarseNet's weights see the flows' motion edges (new inputs, zero weights at first)")
            if widen:
                state = widen_state(state, self.model)
                log.info("widened CoarseNet's weight head from width %g to %g (same output at step 0)",
                         src.cfg.width, self.net_cfg.width)
            if src.cfg.coarse_frames != self.net_cfg.coarse_frames:
                state = extend_window(state, self.model, src.cfg.coarse_frames)
                log.info("CoarseNet's window extended from %d to %d frames (the new frames start at ~5 %% of "
                         "their prior weight)", src.cfg.coarse_frames, self.net_cfg.coarse_frames)
        if stage == "coarse" and self.cfg.stage != "coarse":
            state = {k: v for k, v in state.items() if k.startswith("coarse.")}
            self.model.coarse.load_state_dict({k[len("coarse."):]: v for k, v in state.items()})
            log.info("initialised CoarseNet from %s (a CoarseNet-stage run)", p)
            return
        self.model.load_state_dict(state)
        log.info("initialised from %s", p)

    def _stage_parameters(self) -> list[torch.nn.Parameter]:
        stage, m = self.cfg.stage, self.model
        m.requires_grad_(True)
        if stage in ("gate", "denoise"):
            m.requires_grad_(False)
            (m.gate if stage == "gate" else m.noise).requires_grad_(True)
        elif stage == "coarse":
            m.refine.requires_grad_(False)
        elif stage == "refine":
            m.coarse.requires_grad_(False)
            if not self.cfg.init:
                log.warning("refine stage without --init: CoarseNet is untrained (give the coarse stage's weights)")
        return [p for p in m.parameters() if p.requires_grad]

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.stage in ("gate", "denoise"):
            self.model.eval()
            (self.model.gate if self.cfg.stage == "gate" else self.model.noise).train()
        elif self.cfg.stage == "refine":
            self.model.coarse.eval()
        elif self.cfg.stage == "coarse":
            self.model.refine.eval()

    def loader(self) -> DataLoader:
        cfg = self.cfg
        if cfg.denoise_cache:  # the frozen network's outputs, made once (training.denoise_cache)
            cached = CachedBatches(cfg.denoise_cache, cfg.batch_size, cfg.denoise_crop, cfg.seed, self.step,
                                   cfg.denoise_cache_chunks)
            return DataLoader(cached, batch_size=None, num_workers=0)
        stream = WindowStream(cfg.data, cfg.exposures, cfg.seed, cfg.batch_size, start_step=self.step,
                              flows=cfg.flow == "dis", window=self.net_cfg.coarse_frames)
        # not fork: OpenCV's thread pool deadlocks in a forked child once the parent used it
        return DataLoader(stream, batch_size=cfg.batch_size, num_workers=self.workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                          prefetch_factor=4 if self.workers else None,
                          multiprocessing_context=worker_context() if self.workers else None)

    # -- forward and loss ----------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor], stage: str | None = None,
                before_filter: bool = False) -> dict[str, torch.Tensor]:
        """Network outputs a stage needs; the coarse stage runs only CoarseNet (3 windows).
        ``before_filter``: the final HDR before the learned noise filter, with the noise level
        it would get ("sigma"), as ``training.denoise_cache`` stores them. A cached batch
        ("prefilter" in it) runs the learned filter alone."""
        stage = stage or self.cfg.stage
        if "prefilter" in batch:
            return {"hdr": self._filter_correction(batch["filtered"], batch["prefilter"], batch["t_ref"],
                                                   batch["sigma"])}
        ldr, expo, flows = batch["ldr"], batch["expo"], batch.get("flows")  # flows: (B, 3, C-1, 2, H, W)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            if stage == "coarse":
                b, _, _, h, w = ldr.shape
                c = self.net_cfg.coarse_frames
                windows = torch.cat([ldr[:, j:j + c] for j in range(3)], dim=0)  # (3B, C, 3, H, W)
                wexpo = torch.cat([expo[:, j:j + c] for j in range(3)], dim=0)
                wflows = None if flows is None else torch.cat([flows[:, j] for j in range(3)], dim=0)
                coarse = self.model.coarse_forward(windows, wexpo, wflows).view(3, b, 3, h, w).transpose(0, 1)
                out = {"coarse": coarse}
            elif not self.net_cfg.refine:  # what `net` runs: CoarseNet on the reference's window
                with torch.set_grad_enabled(stage not in ("gate", "denoise") and torch.is_grad_enabled()):
                    hdr = self._centre_coarse(ldr, expo, flows)
                out = {"coarse": hdr[:, None], "hdr": hdr}
            elif stage in ("gate", "denoise"):  # the network is frozen: no graph through it
                with torch.no_grad():
                    out = self.model(ldr, expo, flows)
            else:
                out = self.model(ldr, expo, flows)
        out = {k: v.float() for k, v in out.items()}
        if stage == "coarse" or (self.model.gate is None and self.model.noise is None):
            return out
        merged, conf, agree, sigma = self.classical_inputs(ldr, expo)
        if self.model.gate is not None:
            cue = (agree,) if self.model.gate.motion_cue else ()
            with torch.set_grad_enabled(stage != "denoise" and torch.is_grad_enabled()):
                out["hdr"], out["gate"] = self.model.gate(out["hdr"], merged, conf, ldr[:, ldr.shape[1] // 2], *cue)
        if before_filter:
            out["sigma"] = sigma
        elif self.model.noise is not None:
            out["hdr"] = self._learned_denoise(out["hdr"], expo[:, expo.shape[1] // 2].float(), sigma)
        return out

    def _learned_denoise(self, hdr: torch.Tensor, t_ref: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The final HDR through the noise filter as ``net`` runs it: the classical merge's
        bilateral filter (no gradient: it has no weights), then the learned correction.

        The network before the filter (CoarseNet, the gate) gets the final loss's gradient
        straight through, as if the filter were the identity: so it learns from the error
        the filter leaves. The true path, through y = sqrt(H·t) and (noisy − filtered) / σ,
        put 90-100 % of its gradient on the darkest 0.1 % of pixels (H·t ~ 1e-4, σ at its
        floor) and an e2e run diverged from step ~500 on it."""
        filtered = self.bilateral(hdr, t_ref, sigma)
        return self._filter_correction(filtered, hdr.detach(), t_ref, sigma) + (hdr - hdr.detach())

    def bilateral(self, hdr: torch.Tensor, t_ref: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The classical merge's noise filter of each HDR (B, 3, H, W), without gradient."""
        filtered = []
        for h, t, s in zip(hdr.detach().float().cpu().numpy(), t_ref.cpu().tolist(), sigma.float().cpu().numpy()):
            f = self._classical.denoise(np.ascontiguousarray(h.transpose(1, 2, 0)), t, s[0] if s.any() else None)
            filtered.append(torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))))
        return torch.stack(filtered).to(hdr.device)

    def _filter_correction(self, filtered: torch.Tensor, hdr: torch.Tensor, t_ref: torch.Tensor,
                           sigma: torch.Tensor) -> torch.Tensor:
        """The learned correction of the bilateral filter's ``filtered`` HDR, given the
        unfiltered ``hdr``."""
        return from_y(self.model.noise(to_y(filtered, t_ref), to_y(hdr, t_ref), sigma), t_ref)

    def _centre_coarse(self, ldr: torch.Tensor, expo: torch.Tensor, flows: torch.Tensor | None) -> torch.Tensor:
        """CoarseNet's HDR of the reference's own window (B, 3, H, W)."""
        n, k = ldr.shape[1], self.net_cfg.coarse_frames
        lo = n // 2 - k // 2
        return self.model.coarse_forward(ldr[:, lo:lo + k], expo[:, lo:lo + k],
                                         None if flows is None else centre_flows(flows))

    def classical_inputs(self, ldr: torch.Tensor, expo: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The classical merge (B, 3, H, W) of each window, its confidence, the neighbours'
        agreement and the noise it keeps (B, 1, H, W; y units, 0 where it cannot tell), in the
        network's units, on the batch's device: the gate's and the noise filter's inputs."""
        from infer.classical import ClassicalReconstructor

        if self._classical is None:
            self._classical = ClassicalReconstructor()
        c = ldr.shape[1] // 2
        merged, conf, agree, noise = [], [], [], []
        for frames, e in zip(ldr.float().cpu().numpy(), expo.float().cpu().tolist()):
            H, k, a, s = self._classical.reconstruct_with_cues(np.ascontiguousarray(frames.transpose(0, 2, 3, 1)), e, c)
            merged.append(torch.from_numpy(H.transpose(2, 0, 1).copy()))
            conf.append(torch.from_numpy(k[None].copy()))
            agree.append(torch.from_numpy(a[None].copy()))
            sigma = np.zeros(k.shape, np.float32) if s is None else np.broadcast_to(np.float32(s), k.shape)
            noise.append(torch.from_numpy(np.array(sigma, np.float32)[None]))
        return tuple(torch.stack(x).to(ldr.device) for x in (merged, conf, agree, noise))  # type: ignore[return-value]

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        """One optimiser step; returns the loss and its terms (NaN loss: step skipped)."""
        self._train_mode()
        batch = self.to_device(batch)
        out = self.forward(batch)
        loss, terms = stage_loss(self.cfg.stage, out, batch, self.cfg.loss)
        self.opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            log.warning("step %d: non-finite loss %s, step skipped", self.step, float(loss))
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or float("inf"))
            terms["grad_norm"] = float(norm)
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.cfg.ema)
        self.sched.step()
        self.step += 1
        return float(loss.detach()), terms

    # -- validation ----------------------------------------------------------------------

    def validation(self) -> dict[str, dict]:
        """The fixed validation sets: "static" (training.data.validation_set) and, unless
        ``val_dynamic`` is 0, "dynamic" (windows of the dynamic split, with regions)."""
        if self.val_data is None:
            cfg = self.cfg
            flows = cfg.flow == "dis"
            window = self.net_cfg.coarse_frames
            self.val_data = {"static": validation_set(cfg.data, cfg.exposures, cfg.val_size, cfg.val_crop,
                                                      cfg.val_seed, cfg.cache_dir, flows=flows, window=window)}
            if cfg.val_dynamic > 0:
                self.val_data["dynamic"] = dynamic_validation_set(cfg.exposures, cfg.val_dynamic, cfg.val_crop,
                                                                  cfg.cache_dir, flows=flows, window=window)
        return self.val_data

    @torch.no_grad()
    def _predict(self, data: dict) -> tuple[list[np.ndarray], list[np.ndarray] | None, list[np.ndarray], list[str]]:
        """Coarse (centre) and final outputs (H, W, 3) of every window, its ground truth, and
        the reference's role (short, middle, long)."""
        self.model.eval()
        n = data["ldr"].shape[1]
        c = n // 2
        final = self.cfg.stage != "coarse"
        coarse_out: list[np.ndarray] = []
        final_out: list[np.ndarray] = []
        gts: list[np.ndarray] = []
        roles: list[str] = []
        for i in range(0, data["ldr"].shape[0], self.cfg.val_batch):
            keys = [k for k in ("ldr", "expo", "gt", "gt_ref", "flows") if k in data]
            batch = self.to_device({k: data[k][i:i + self.cfg.val_batch] for k in keys})
            if final:
                out = self.forward(batch, stage="e2e")
                coarse, hdr = out["coarse"][:, out["coarse"].shape[1] // 2], out["hdr"]
            else:
                k = self.net_cfg.coarse_frames
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    flows = centre_flows(batch["flows"]) if "flows" in batch else None
                    coarse = self.model.coarse_forward(batch["ldr"][:, c - k // 2:c + k // 2 + 1],
                                                       batch["expo"][:, c - k // 2:c + k // 2 + 1], flows).float()
                hdr = None
            gts += list(batch["gt_ref"].permute(0, 2, 3, 1).cpu().numpy())
            coarse_out += list(coarse.float().permute(0, 2, 3, 1).cpu().numpy())
            if hdr is not None:
                final_out += list(hdr.float().permute(0, 2, 3, 1).cpu().numpy())
            for e in batch["expo"].cpu():
                roles.append("short" if e[c] <= e.min() else "long" if e[c] >= e.max() else "middle")
        return coarse_out, final_out if final else None, gts, roles

    def validate(self) -> dict[str, Any]:
        """PSNR-μ of the coarse (centre) and final outputs on the validation sets.

        The static set's figures keep their keys; the dynamic set's go under "dynamic", with
        pooled PSNR-μ per region. The metric that picks the best checkpoint is the static
        one, or the mean of the two sets' when there is a dynamic set."""
        sets = self.validation()
        coarse, final, gts, roles = self._predict(sets["static"])
        scores = {"coarse": [psnr_mu(p, g, 1.0) for p, g in zip(coarse, gts)],
                  "final": [psnr_mu(p, g, 1.0) for p, g in zip(final, gts)] if final is not None else []}
        classical = sets["static"]["classical"].tolist()
        result: dict[str, Any] = {
            "psnr_mu_coarse": _mean(scores["coarse"]),
            "psnr_mu_final": _mean(scores["final"]) if final is not None else None,
            "psnr_mu_classical": _mean(classical),
            "by_reference": {},
            "windows": len(classical),
        }
        main = scores["final" if final is not None else "coarse"]
        for role in ("short", "middle", "long"):
            idx = [j for j, r in enumerate(roles) if r == role]
            if idx:
                result["by_reference"][role] = {"net": _mean([main[j] for j in idx]),
                                                "classical": _mean([classical[j] for j in idx])}
        result["metric"] = result["psnr_mu_final"] if final is not None else result["psnr_mu_coarse"]
        result["scores"] = main  # per window, to tell two checkpoints apart (paired)
        if "dynamic" in sets:
            result["dynamic"] = self._validate_regions(sets["dynamic"])
            result["metric"] = 0.5 * (result["metric"] + result["dynamic"]["net"])
        return result

    def _validate_regions(self, data: dict) -> dict[str, Any]:
        """The dynamic set: PSNR-μ (mean over windows) and pooled PSNR-μ per region, for the
        network's main output, CoarseNet's and classical's."""
        coarse, final, gts, _ = self._predict(data)
        main = final if final is not None else coarse
        scores = [psnr_mu(p, g, 1.0) for p, g in zip(main, gts)]
        out: dict[str, Any] = {"net": _mean(scores), "scores": scores,
                               "coarse": _mean([psnr_mu(p, g, 1.0) for p, g in zip(coarse, gts)]),
                               "classical": _mean(data["classical"].tolist()), "windows": len(gts), "regions": {}}
        cr = data["classical_regions"].double()
        for r, name in enumerate(REGIONS):
            masks = [m[r].numpy().astype(bool) for m in data["regions"]]
            pooled = [mu_sq_error(p, g, 1.0, m) for p, g, m in zip(main, gts, masks)]
            out["regions"][name] = {
                "net": pooled_psnr(sum(e for e, _ in pooled), sum(k for _, k in pooled)),
                "classical": pooled_psnr(float(cr[:, 2 * r].sum()), int(cr[:, 2 * r + 1].sum())),
                "fraction": float(np.mean([m.mean() for m in masks])),
            }
        return out

    # -- checkpoints and export ----------------------------------------------------------

    def checkpoint_path(self) -> Path:
        return self.out / "ckpt" / "last.pt"

    def save_checkpoint(self, elapsed: float) -> Path:
        path = self.checkpoint_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "version": CKPT_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema or [],
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "best": self.best,
            "elapsed_s": elapsed,
            "config": json.dumps(self.cfg.to_dict()),
            "net_config": self.net_cfg.to_json(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        return path

    def _load_checkpoint(self, path: str | Path) -> None:
        # checkpoints written before 2026-12-06 hold NumPy float64 scores: allow exactly those
        with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float64))]):
            state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != CKPT_VERSION:
            raise ValueError(f"{path}: unknown checkpoint version {state.get('version')}")
        saved = json.loads(state["config"])
        mine = self.cfg.to_dict()
        for key in ("stage", "exposures", "width", "deform_groups"):
            if saved[key] != mine[key]:
                raise ValueError(f"{path}: checkpoint has {key}={saved[key]!r}, this run {mine[key]!r}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if len(state.get("ema") or []) == len(self.ema):
                torch._foreach_copy_(self.ema, state["ema"])
            else:  # a run that did not average: start the average from its weights
                torch._foreach_copy_(self.ema, [p.detach() for p in self.params])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = int(state["step"])
        self.best = dict(state["best"])
        self.elapsed = float(state["elapsed_s"])
        log.info("resumed from %s at step %d", path, self.step)

    def meta(self, elapsed: float, val: dict | None) -> dict[str, Any]:
        cfg = self.cfg
        photos = photo_names(cfg.data.photo_dir) if cfg.data.sources.get("photo", 0) > 0 else []
        return {
            "stage": cfg.stage,
            "steps": self.step,
            "command": " ".join(self.argv),
            "train_time_s": round(elapsed, 1),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "hardware": hardware(self.device),
            "torch": torch.__version__,
            "init": cfg.init or None,
            "validation": val,
            "data": {
                "sources": cfg.data.sources,
                "procedural": "capture.scene.procedural_world (training seeds < 10_000_000)",
                "sim": "capture.sim.SimCamera",
                "skimage_photos": [(n, lic) for n, _, lic in SKIMAGE_PHOTOS if n in photos],
                "validation_seeds": [cfg.val_seed, cfg.val_seed + cfg.val_size - 1],
            },
            "config": cfg.to_dict(),
        }

    def export(self, path: Path, elapsed: float, val: dict | None) -> None:
        try:
            save_weights(self.model, path, self.meta(elapsed, val))
        except WeightsError as exc:
            log.error("could not export %s: %s", path, exc)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train to ``cfg.steps``; returns the last validation and the best one."""
        from tqdm import tqdm

        cfg = self.cfg
        logf = open(self.out / "log.jsonl", "a", encoding="utf-8")

        def write(record: dict) -> None:
            logf.write(json.dumps(record) + "\n")
            logf.flush()

        write({"kind": "start", "step": self.step, "argv": self.argv, "hardware": hardware(self.device),
               "device": str(self.device), "workers": self.workers, "threads": torch.get_num_threads(),
               "params": count_parameters(self.model), "trainable": sum(p.numel() for p in self.params),
               "config": cfg.to_dict()})
        t_start = time.monotonic()
        last_ckpt = t_start
        val: dict | None = None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, unit="step", dynamic_ncols=True)
        window = {"loss": 0.0, "n": 0, "t": time.monotonic(), "data": 0.0, "terms": {}}
        try:
            if self.step == 0 and cfg.init and cfg.steps > 0 and (cfg.val_size or cfg.val_dynamic):
                # a fine-tuning run scores what it starts from first: its best is never worse,
                # and every later checkpoint's paired difference is against the start
                val = self._validate_and_export(write, 0.0)
            if self.step < cfg.steps:
                batches = iter(self.loader())
            while self.step < cfg.steps:
                t0 = time.monotonic()
                batch = next(batches)
                window["data"] += time.monotonic() - t0
                loss, terms = self.train_step(batch)
                window["loss"] += loss
                window["n"] += 1
                for k, v in terms.items():
                    window["terms"][k] = window["terms"].get(k, 0.0) + v
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.monotonic() - window["t"]
                    n = window["n"]
                    rec = {"kind": "train", "step": self.step, "loss": window["loss"] / n,
                           **{k: v / n for k, v in window["terms"].items()},
                           "lr": self.opt.param_groups[0]["lr"], "samples_per_s": n * cfg.batch_size / dt,
                           "s_per_step": dt / n, "data_frac": window["data"] / dt,
                           "elapsed_s": self.elapsed + time.monotonic() - t_start}
                    write(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")
                    window = {"loss": 0.0, "n": 0, "t": time.monotonic(), "data": 0.0, "terms": {}}
                elapsed = self.elapsed + time.monotonic() - t_start
                if cfg.val_size and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    val = self._validate_and_export(write, elapsed)
                due = cfg.ckpt_every_min > 0 and time.monotonic() - last_ckpt > 60 * cfg.ckpt_every_min
                stop = cfg.max_minutes > 0 and time.monotonic() - t_start > 60 * cfg.max_minutes
                if self.step % cfg.ckpt_every == 0 or due or stop or self.step == cfg.steps:
                    self.save_checkpoint(elapsed)
                    last_ckpt = time.monotonic()
                if stop:
                    log.info("max_minutes reached at step %d; continue with --resume auto", self.step)
                    break
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving a checkpoint", self.step)
            self.save_checkpoint(self.elapsed + time.monotonic() - t_start)
            raise
        finally:
            bar.close()
        elapsed = self.elapsed + time.monotonic() - t_start
        if val is None and cfg.val_size:
            val = self._validate_and_export(write, elapsed)
        with self.averaged():
            self.export(self.out / "last.safetensors", elapsed, val)
        write({"kind": "end", "step": self.step, "elapsed_s": elapsed, "best": self.best})
        logf.close()
        return {"step": self.step, "val": val, "best": self.best}

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (with ``ema``; else as they are)."""
        if self.ema is None:
            yield
            return
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.ema)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, trained)

    def _validate_and_export(self, write, elapsed: float) -> dict:
        with self.averaged():
            return self._validate_and_export_now(write, elapsed)

    def _validate_and_export_now(self, write, elapsed: float) -> dict:
        val = self.validate()
        if self.best.get("scores"):
            val["vs_best"] = paired_difference(_metric_scores(val), self.best["scores"])
        write({"kind": "val", "step": self.step, **val})
        msg = f"step {self.step}: val PSNR-μ coarse {val['psnr_mu_coarse']:.2f}"
        if val["psnr_mu_final"] is not None:
            msg += f", final {val['psnr_mu_final']:.2f}"
        msg += f" (classical {val['psnr_mu_classical']:.2f})"
        if "dynamic" in val:
            d = val["dynamic"]
            msg += f"; dynamic {d['net']:.2f} (classical {d['classical']:.2f}), motion " \
                   f"{d['regions']['motion']['net']:.2f} ({d['regions']['motion']['classical']:.2f})"
        if "vs_best" in val:
            msg += f"; against the best (step {self.best['step']}): {val['vs_best']['delta']:+.3f} dB " \
                   f"± {val['vs_best']['se']:.3f} (paired standard error)"
        log.info("%s", msg)
        if self.best["metric"] is None or val["metric"] > self.best["metric"]:
            # plain Python numbers: a checkpoint loads with weights_only=True, which refuses NumPy scalars
            self.best = {"metric": float(val["metric"]), "step": self.step, "scores": _metric_scores(val)}
            self.export(self.out / "best.safetensors", elapsed, val)
        return val


def _metric_scores(val: dict[str, Any]) -> list[float]:
    """Per-window scores in the metric's weighting: static and dynamic sets count half each."""
    static = val["scores"]
    dynamic = val.get("dynamic", {}).get("scores")
    if not dynamic:
        return [float(s) / len(static) for s in static]
    return [float(s) / (2 * len(static)) for s in static] + [float(s) / (2 * len(dynamic)) for s in dynamic]


def paired_difference(scores: list[float], best: list[float]) -> dict[str, float]:
    """The metric's change against the best checkpoint and its standard error, from the
    per-window differences (weights already folded into the scores); NaN if the sets differ."""
    if len(scores) != len(best) or not scores:
        return {"delta": float("nan"), "se": float("nan")}
    d = np.asarray(scores, np.float64) - np.asarray(best, np.float64)
    n = len(d)
    # the metric is a weighted sum of per-window scores, so it changes by n · mean(d)
    return {"delta": float(d.sum()), "se": float(n * d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")}


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train one stage of the HDR network (coarse → refine → e2e) on synthesised windows.",
    )
    p.add_argument("--config", action="append", default=[],
                   help="TOML file or shipped name (coarse2, refine3, cpu, ...); repeat to layer them. "
                        "Default: <stage><exposures>")
    p.add_argument("--stage", choices=config_mod.STAGES)
    p.add_argument("--exposures", type=int, choices=(2, 3))
    p.add_argument("--width", type=float, help="network width multiplier")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int, help="training crop (multiple of 16)")
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"))
    p.add_argument("--workers", type=int, help="data processes (-1 auto)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="output folder")
    p.add_argument("--init", help="start from weights (.safetensors) or a checkpoint's model (.pt)")
    p.add_argument("--resume", help="continue from a checkpoint (.pt), or 'auto' for OUT/ckpt/last.pt if any")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, dotted for tables: --set data.pool=4 --set loss.perceptual=grad")
    p.add_argument("--bench-data", type=int, metavar="N", help="time N samples of data generation and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = list(args.config)
    if not names:
        names = [f"{args.stage or 'coarse'}{args.exposures or 2}"]
    values: dict[str, Any] = {}
    for name in names:
        values = _deep_merge(values, config_mod.load_toml(name))
    flags = {"stage": args.stage, "exposures": args.exposures, "width": args.width, "steps": args.steps,
             "batch_size": args.batch_size, "lr": args.lr, "device": args.device, "amp": args.amp,
             "workers": args.workers, "seed": args.seed, "out": args.out, "init": args.init}
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    if args.crop is not None:
        overrides.append(f"data.crop={args.crop}")
    if args.no_progress:
        overrides.append("progress=false")
    return config_mod.from_dict(config_mod.apply_overrides(values, overrides + list(args.set)))


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m training [options]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    if args.bench_data:
        sps = bench(cfg.data, cfg.exposures, args.bench_data, cfg.seed)
        print(f"data generation: {sps:.1f} samples/s ({cfg.exposures} exposures, crop {cfg.data.crop}, one process)")
        return 0
    resume = args.resume
    if resume == "auto":
        last = Path(cfg.out) / "ckpt" / "last.pt"
        resume = str(last) if last.is_file() else None
    trainer = Trainer(cfg, ["python -m training", *argv], resume=resume)
    summary = trainer.run()
    best = summary["best"]
    print(json.dumps({"step": summary["step"], "best_metric": best["metric"], "best_step": best["step"],
                      "out": str(trainer.out)}))
    return 0
