"""HDRNet: the coarse-to-fine network of Chen et al., ICCV 2021 (paper §3), and its weights file.

``HDRNet.forward`` maps a window of N alternating-exposure LDRs to the HDR of the centre
frame i:

1. CoarseNet (image space) reconstructs coarse HDRs of frames i-1, i, i+1, each from its own
   window of 3 (two exposures) or 5 (three exposures) frames;
2. RefineNet (feature space) fuses the three coarse HDRs into ``H_i^r``;
3. ``H_i = M ⊙ H_i^c + (1 - M) ⊙ H_i^r`` (eq. 4) with M the well-exposed mask of frame i.

All HDR tensors are linear and in units where ``H = L^2.2 / t`` with t relative to the
shortest exposure of the cycle, so they lie in [0, 1].

A stream computes each frame's coarse HDR (``coarse_forward``) and RefineNet features
(``features``) once and reuses them for the three windows that need them
(``refine_forward(..., feats=...)``); ``forward`` is the composition of the same pieces.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from hdrstream.hdrio import atomic_write
from infer.net.coarse import CoarseNet
from infer.net.gate import ClassicalGate
from infer.net.noise import DENOISE_ARCHS, noise_net
from infer.net.ops import check_multiple, check_shape, well_exposed_mask
from infer.net.refine import RefineFeatures, RefineNet

FORMAT = "hdrstream.hdrnet"
FORMAT_VERSION = "1"
FLOWS = ("learned", "dis")


@dataclass
class NetConfig:
    """Architecture of an ``HDRNet``; saved with its weights.

    Attributes:
        exposures: exposures in the camera's cycle, 2 or 3.
        width: channel multiplier of every conv (1.0 = the paper's widths, ~6.3 M parameters
            for two exposures); e.g. 0.25 for tests.
        deform_groups: deformable groups of RefineNet's PCD alignment (8 in the paper).
        refine_mulaw_input: RefineNet sees μ-law tonemapped coarse HDRs (True) or linear ones
            as in the reference code (False).
        flow: CoarseNet's alignment: "learned" (the paper's SPyNet-style network) or "dis"
            (exposure-matched DIS flows from ``infer.classical``, passed in; design §4).
        weight_prior: CoarseNet's weights correct the classical merge's exposure/saturation
            weights (True) or are the paper's plain sigmoid outputs (False).
        refine_residual: RefineNet predicts a μ-law correction of the centre's coarse HDR
            (True) or the paper's sigmoid of linear HDR (False).
        prior_per_channel: with ``weight_prior``, the prior rolls a frame's weight off per
            colour channel (True, what ships) or by its brightest channel (False, the default
            of weights written before it existed); on the validation sequences, 2 / 3
            exposures: +0.60 / +0.61 dB PSNR-μ from RGB8 frames, -0.17 / +0.05 dB from
            BayerRG8 (infer/weights/README.md).
        mask_blend: the final HDR keeps the coarse HDR where the reference is well exposed
            (the paper's eq. 4, True), or is RefineNet's output everywhere (False), so that
            it may also remove the noise and demosaicing errors of well-exposed pixels.
        classical_gate: a learned per-pixel blend of the final HDR with the classical
            merge's (``infer.net.gate``), which the caller computes and passes in; False is
            the paper's network.
        refine: the reconstructor's ``net`` method runs RefineNet (True, the paper's
            network), or stops at CoarseNet's HDR of the reference's window, gated when there
            is a gate (False). RefineNet's weights stay in the file either way, and the
            ``net-refine`` method runs it regardless. The shipped weights say False: at this
            width RefineNet adds nothing measurable and costs ~85 % of the time
            (infer/weights/README.md).
        gate_motion_cue: the gate also sees the neighbours' agreement with the reference on
            its own (``infer.net.gate``); False in weights written before it existed.
        coarse_window: frames of one CoarseNet window; 0 is the paper's 2·exposures − 1 (3 or
            5). Five for two exposures lets CoarseNet see the reference's own exposure on
            both sides, as the classical merge does: a short reference then has three short
            frames where the long ones clip or move. It fills the preprocess window (5
            frames), so it leaves no room for RefineNet's windows around i ± 1: only with
            ``refine`` False and DIS flows (the learned flow network has a fixed window).
        motion_edges: CoarseNet's weight head also sees where each neighbour's flow breaks
            (``ops.motion_edges``): on the dynamic validation split most of the network's
            remaining error sits in a band of a few pixels around moving objects, where a
            short reference's noise hides the warped neighbours' misalignment from the
            weights. False in weights written before it existed.
        unwarped_behind_clip: CoarseNet reads a neighbour unwarped where the reference is
            clipped and that agrees better with it (``infer.net.coarse``); an input rule,
            no weights, so it can be switched on for weights trained without it. False in
            weights written before it existed.
        learned_denoise: the noise filter that ends the ``net`` method (``infer.denoise``, a
            bilateral filter) is followed by a learned correction of its output
            (``infer.net.noise``); False: the bilateral filter alone, as the classical merge.
        denoise_width: that correction's channel multiplier (its own: denoising wants more
            channels than CoarseNet's weights at the widths a CPU trains).
        denoise_arch: that correction's network, "full" (a U-Net from full resolution; in
            files written before the choice existed) or "half" (the same from half
            resolution: more depth for the same time, ``infer.net.noise``).
    """

    exposures: int = 2
    width: float = 1.0
    deform_groups: int = 8
    refine_mulaw_input: bool = True
    flow: str = "learned"
    weight_prior: bool = True
    refine_residual: bool = True
    prior_per_channel: bool = False
    mask_blend: bool = True
    classical_gate: bool = False
    refine: bool = True
    gate_motion_cue: bool = False
    coarse_window: int = 0
    motion_edges: bool = False
    unwarped_behind_clip: bool = False
    learned_denoise: bool = False
    denoise_width: float = 1.0
    denoise_arch: str = "full"

    def __post_init__(self) -> None:
        if self.flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, got {self.flow!r}")
        if self.exposures not in (2, 3):
            raise ValueError(f"exposures must be 2 or 3, got {self.exposures}")
        if not self.width > 0 or not self.denoise_width > 0:
            raise ValueError(f"width and denoise_width must be positive, got {self.width}, {self.denoise_width}")
        if self.denoise_arch not in DENOISE_ARCHS:
            raise ValueError(f"denoise_arch must be one of {DENOISE_ARCHS}, got {self.denoise_arch!r}")
        if self.deform_groups < 1:
            raise ValueError(f"deform_groups must be ≥ 1, got {self.deform_groups}")
        paper = 2 * self.exposures - 1
        if self.coarse_window not in (0, paper) and (self.coarse_window != 2 * self.exposures + 1
                                                      or self.refine or self.flow != "dis"):
            raise ValueError(f"coarse_window must be 0, {paper} or, without RefineNet (refine=False) and with "
                             f"flow='dis', {2 * self.exposures + 1}; got {self.coarse_window}")

    @property
    def frames(self) -> int:
        """Input frames of one output frame with RefineNet: 5 (frames i-2..i+2) or 7; with a
        wider CoarseNet window, the preprocess window's (2·exposures + 1) all the same."""
        return 2 * self.exposures + 1

    @property
    def coarse_frames(self) -> int:
        """Frames of one CoarseNet window: 3 or 5 (``coarse_window``: 5 or 7)."""
        return self.coarse_window or 2 * self.exposures - 1

    @property
    def refine_fits(self) -> bool:
        """Whether RefineNet's three CoarseNet windows (around i - 1, i, i + 1) fit in ``frames``."""
        return self.coarse_frames + 2 <= self.frames

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            raise ValueError(f"not a NetConfig: {text!r}")
        return cls(**data)


class HDRNet(nn.Module):
    """Coarse-to-fine HDR video network (CoarseNet + RefineNet + mask blend).

    Attributes:
        multiple: input height and width must be multiples of this (16: the flow network's
            five-level pyramid). Pad with ``infer.net.ops.pad_to_multiple`` (replicate) and
            crop the outputs.
        coarse: the image-space stage. refine: the feature-space stage.

    Args:
        cfg: architecture.
    """

    multiple: int = CoarseNet.multiple

    def __init__(self, cfg: NetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or NetConfig()
        self.coarse = CoarseNet(cfg.exposures, cfg.width, learned_flow=cfg.flow == "learned",
                                weight_prior=cfg.weight_prior, prior_per_channel=cfg.prior_per_channel,
                                frames=cfg.coarse_frames, motion_edges=cfg.motion_edges,
                                unwarped_behind_clip=cfg.unwarped_behind_clip)
        self.refine = RefineNet(cfg.width, cfg.deform_groups, cfg.refine_mulaw_input,
                                residual=cfg.refine_residual)
        self.gate = ClassicalGate(motion_cue=cfg.gate_motion_cue) if cfg.classical_gate else None
        self.noise = noise_net(cfg.denoise_arch, cfg.denoise_width) if cfg.learned_denoise else None
        self.meta: dict = {}  # filled by load_weights

    # -- checks ------------------------------------------------------------------------

    def _check_window(self, ldr: Tensor, expo: Tensor, frames: int, what: str) -> None:
        check_shape(ldr, f"{what}: ldr", (None, frames, 3, None, None))
        check_shape(expo, f"{what}: expo", (ldr.shape[0], frames))
        check_multiple(ldr.shape[-2], ldr.shape[-1], self.multiple, what)

    # -- stages ------------------------------------------------------------------------

    def coarse_forward(self, ldr_c: Tensor, expo_c: Tensor, flows: Tensor | None = None) -> Tensor:
        """Coarse HDR of a CoarseNet window's centre.

        Args:
            ldr_c: (B, C, 3, H, W) LDRs, C = ``cfg.coarse_frames``, centre C // 2.
            expo_c: (B, C) relative exposure times.
            flows: (B, C-1, 2, H, W) centre→neighbour flows; required when ``cfg.flow`` is
                "dis", else optional (replaces the flow network).

        Returns:
            (B, 3, H, W) coarse linear HDR.
        """
        self._check_window(ldr_c, expo_c, self.cfg.coarse_frames, "coarse_forward")
        return self.coarse(ldr_c, expo_c, flows)

    def features(self, coarse: Tensor, expo: Tensor, expo_window: Tensor | None = None) -> RefineFeatures:
        """RefineNet features of each frame (see ``RefineNet.features``), for reuse across windows.

        Args:
            coarse: (B, T, 3, H, W) coarse HDRs of T frames.
            expo: (B, T) their exposures.
            expo_window: (B, 3) exposures of frames i-1, i, i+1 of any window containing
                them (every exposure of the cycle); defaults to ``expo`` (T = 3).
        """
        check_shape(coarse, "features: coarse", (None, None, 3, None, None))
        check_shape(expo, "features: expo", tuple(coarse.shape[:2]))
        check_multiple(coarse.shape[-2], coarse.shape[-1], self.refine.multiple, "features")
        if expo_window is None and coarse.shape[1] != 3:
            raise ValueError("features: give expo_window when passing other than 3 frames")
        if expo_window is not None:
            check_shape(expo_window, "features: expo_window", (coarse.shape[0], None))
        return self.refine.features(coarse, expo, expo_window)

    def refine_forward(
        self, coarse3: Tensor, ldr_ref: Tensor, expo3: Tensor, feats: RefineFeatures | None = None
    ) -> dict[str, Tensor]:
        """Refine the centre's coarse HDR and blend with the well-exposed mask (eq. 4).

        Args:
            coarse3: (B, 3, 3, H, W) coarse HDRs of frames i-1, i, i+1.
            ldr_ref: (B, 3, H, W) LDR of frame i (for the mask).
            expo3: (B, 3) exposures of frames i-1, i, i+1.
            feats: optional precomputed features of the three frames (``features`` of
                coarse3, or ``RefineFeatures.stack`` of per-frame ones).

        Returns:
            {"hdr": (B, 3, H, W) final H_i, "refine": H_i^r, "mask": M (per channel)}.
        """
        check_shape(coarse3, "refine_forward: coarse3", (None, 3, 3, None, None))
        b, _, _, h, w = coarse3.shape
        check_shape(ldr_ref, "refine_forward: ldr_ref", (b, 3, h, w))
        check_shape(expo3, "refine_forward: expo3", (b, 3))
        check_multiple(h, w, self.refine.multiple, "refine_forward")
        if feats is not None and (feats.frames != 3 or tuple(feats.x.shape[-2:]) != (h, w)):
            raise ValueError(f"refine_forward: feats hold {feats.frames} frames of {tuple(feats.x.shape[-2:])}")
        refined = self.refine(coarse3, expo3, feats)
        if not self.cfg.mask_blend:  # M = 0: RefineNet's output everywhere, its loss over all pixels
            return {"hdr": refined, "refine": refined, "mask": torch.zeros_like(refined)}
        mask = well_exposed_mask(ldr_ref.clamp(0.0, 1.0), expo3, ref=1)
        hdr = mask * coarse3[:, 1] + (1.0 - mask) * refined
        return {"hdr": hdr, "refine": refined, "mask": mask}

    def forward(self, ldr: Tensor, expo: Tensor, flows: Tensor | None = None) -> dict[str, Tensor]:
        """HDR of the centre frame i of an input window.

        Args:
            ldr: (B, N, 3, H, W) gamma-2.2 LDRs in [0, 1], globally aligned; N = ``cfg.frames``
                (5 or 7), centre i = N // 2; H, W multiples of ``multiple``.
            expo: (B, N) exposure times relative to the shortest of the cycle (≥ 1).
            flows: (B, 3, C-1, 2, H, W) flows of the three CoarseNet windows (centred on
                i-1, i, i+1); required for the DIS-flow variant.

        Returns:
            {"hdr": (B, 3, H, W) final H_i, "coarse": (B, 3, 3, H, W) coarse HDRs of
            i-1, i, i+1, "refine": (B, 3, H, W) H_i^r, "mask": (B, 3, H, W) M}.
        """
        self._check_window(ldr, expo, self.cfg.frames, "HDRNet")
        if not self.cfg.refine_fits:
            raise ValueError(f"HDRNet: a CoarseNet window of {self.cfg.coarse_frames} frames leaves no room for "
                             f"RefineNet in a window of {self.cfg.frames}; run coarse_forward on the reference's window")
        b, n, _, h, w = ldr.shape
        i, half = n // 2, self.cfg.coarse_frames // 2
        centres = (i - 1, i, i + 1)
        # The three CoarseNet windows run as one batch: (3·B, C, 3, H, W), window-major.
        windows = torch.cat([ldr[:, j - half : j + half + 1] for j in centres], dim=0)
        window_expo = torch.cat([expo[:, j - half : j + half + 1] for j in centres], dim=0)
        if flows is not None:
            check_shape(flows, "HDRNet: flows", (b, 3, 2 * half, 2, h, w))
            flows = flows.transpose(0, 1).flatten(0, 1)  # (3·B, C-1, 2, H, W), window-major
        coarse = self.coarse(windows, window_expo, flows)  # (3·B, 3, H, W)
        coarse3 = coarse.reshape(3, b, 3, h, w).transpose(0, 1)  # (B, 3, 3, H, W)
        out = self.refine_forward(coarse3, ldr[:, i], expo[:, i - 1 : i + 2])
        out["coarse"] = coarse3
        return out


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those requiring grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# -- weights file -------------------------------------------------------------------------


class WeightsError(ValueError):
    """A weights file that cannot be used: corrupt, not ours, or not matching its config."""


def save_weights(model: HDRNet, path: str | Path, meta: dict | None = None) -> Path:
    """Save ``model`` as fp16 safetensors with its ``NetConfig`` and ``meta`` in the header.

    The header's metadata (strings only) holds ``format``, ``format_version``, ``config``
    (JSON of the NetConfig) and ``meta`` (JSON of ``meta``, e.g. training data, steps, scores;
    values must be JSON-serialisable). fp16 halves the file; weights are loaded back as
    float32. Raises WeightsError if a weight does not fit in fp16.
    """
    from safetensors.torch import save_file  # noqa: PLC0415 - only needed here

    path = Path(path)
    tensors = {}
    for name, value in model.state_dict().items():
        half = value.detach().to("cpu", torch.float16).contiguous()
        if value.is_floating_point() and not torch.isfinite(half).all():
            raise WeightsError(f"weight {name} overflows float16 (max |w| = {value.abs().max():.3g})")
        tensors[name] = half
    try:
        meta_json = json.dumps(meta or {}, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from None
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_json(),
        "meta": meta_json,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def read_metadata(path: str | Path) -> tuple[NetConfig, dict]:
    """The ``NetConfig`` and ``meta`` stored in a weights file, without loading the weights."""
    from safetensors import safe_open  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"{path}: not an HDRNet weights file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path}: unsupported format version {metadata.get('format_version')!r}")
    try:
        cfg = NetConfig.from_json(metadata["config"])
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: bad config/meta in header ({exc})") from exc
    return cfg, meta


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> HDRNet:
    """Build the ``HDRNet`` described by a weights file and load its weights (as float32).

    Returns the model in eval mode on ``device``, with the stored meta in ``model.meta``.
    Raises FileNotFoundError for a missing file and WeightsError for a corrupt file, a file
    of another format, or weights that do not match the stored config.
    """
    from safetensors.torch import load_file  # noqa: PLC0415

    cfg, meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read tensors ({exc})") from exc
    model = HDRNet(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise WeightsError(f"{path}: weights do not match {cfg} ({detail})")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    model.meta = meta
    return model.to(device).eval()
