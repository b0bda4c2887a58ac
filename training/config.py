"""Training configuration: dataclasses, TOML files and ``--set key=value`` overrides.

A config file is TOML with top-level keys of :class:`TrainConfig` and the tables ``[data]``
(:class:`DataConfig`) and ``[loss]`` (:class:`LossConfig`). Unknown keys are errors (a typo
must not silently train the default). Overrides use dotted paths and TOML literals:
``--set data.crop=128 --set lr=5e-5 --set data.ratios2='[[1, 8]]'``.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

STAGES = ("coarse", "refine", "e2e", "gate", "denoise")
VAL_SEED_BASE = 10_000_000  # validation worlds use seeds >= this; training worlds never do
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """How training windows are synthesised (see :mod:`training.data`).

    Pixel quantities are for the crop as given (a 256 crop moves twice as many pixels as a
    128 crop of the same scene would, so they are not rescaled).
    """

    crop: int = 256  # square crops; a multiple of 16 (the network's ``multiple``)
    ratios2: list[list[float]] = field(default_factory=lambda: [[1.0, 4.0], [1.0, 8.0]])
    ratios3: list[list[float]] = field(default_factory=lambda: [[1.0, 4.0, 16.0]])
    # source -> relative frequency; "photo" is dropped (with a log line) without scikit-image
    sources: dict[str, float] = field(default_factory=lambda: {"procedural": 0.4, "photo": 0.3, "sim": 0.3})
    photo_dir: str = ""  # folder with the SKIMAGE_PHOTOS files; "" = the installed scikit-image
    pool: int = 8  # scenes alive at once per data process; consecutive samples rotate through them
    reuse: int = 16  # windows taken from each scene before it is replaced
    global_px: float = 3.0  # residual global motion: max per-frame translation (alignment error)
    global_rot_deg: float = 0.5  # ... rotation
    global_scale: float = 0.01  # ... log-scale
    objects: list[int] = field(default_factory=lambda: [1, 3])  # moving occluders per window, min..max
    object_size: list[float] = field(default_factory=lambda: [0.2, 0.6])  # sprite size / crop
    object_speed_px: float = 12.0  # max occluder speed, px per frame
    ev_range: list[float] = field(default_factory=lambda: [-1.5, 0.5])  # stops around auto-exposure
    gauss_sigma: float = 1e-3  # the paper's Gaussian noise in linear
    sensor_noise_prob: float = 0.5  # Poisson-Gaussian sensor noise (capture.sensor) on top
    gain_db_max: float = 18.0  # analogue gain range of that sensor noise
    bayer_prob: float = 0.3  # mosaic + VNG demosaic as preprocess does for BayerRG8
    sim_motion: float = 0.3  # camera motion of the simulated camera (residual after alignment)
    # The reference's gamma perturbation, gamma = exp(U(-r, r)) on its L (paper §5.1: 0.7, on
    # half the samples). With a calibrated CRF that strength teaches the network to distrust a
    # correct reference: on our validation set it cost ~1.5 dB PSNR-μ after 500 CoarseNet
    # steps. A mild perturbation keeps some robustness to CRF error.
    tone_prob: float = 0.2
    tone_range: float = 0.2
    flip: bool = True
    rot90: bool = True
    # windows at a stream's start or end, padded as preprocess pads them (the reference's
    # own cycle position repeated from the frames there are): inference meets them on the
    # first and last frames of every stream, and a network trained only on windows inside one
    # blends the repeated neighbour wrongly there
    edge_prob: float = 0.0

    def validate(self) -> None:
        if self.crop < 16 or self.crop % 16:
            raise ValueError(f"data.crop must be a multiple of 16 and >= 16, got {self.crop}")
        for name, n in (("ratios2", 2), ("ratios3", 3)):
            lists = getattr(self, name)
            if not lists or any(len(r) != n or min(r) <= 0 or r[0] != min(r) for r in lists):
                raise ValueError(f"data.{name} must be a list of {n}-element ratio lists, shortest first; got {lists}")
        unknown = set(self.sources) - {"procedural", "photo", "sim", "dynamic"}
        if unknown or not any(w > 0 for w in self.sources.values()) or min(self.sources.values()) < 0:
            raise ValueError(f"data.sources must weight procedural|photo|sim|dynamic (>= 0, one > 0), got {self.sources}")
        if self.pool < 1 or self.reuse < 1:
            raise ValueError("data.pool and data.reuse must be >= 1")
        if len(self.objects) != 2 or not 0 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"data.objects must be [min, max], got {self.objects}")
        if len(self.object_size) != 2 or not 0 < self.object_size[0] <= self.object_size[1]:
            raise ValueError(f"data.object_size must be [min, max] > 0, got {self.object_size}")
        if len(self.ev_range) != 2 or self.ev_range[0] > self.ev_range[1]:
            raise ValueError(f"data.ev_range must be [lo, hi], got {self.ev_range}")
        for name in ("sensor_noise_prob", "bayer_prob", "tone_prob", "edge_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1]")
        if self.gauss_sigma < 0 or self.global_px < 0 or self.object_speed_px < 0:
            raise ValueError("noise sigma and motion amplitudes must be >= 0")

    def ratios(self, exposures: int) -> list[list[float]]:
        return self.ratios2 if exposures == 2 else self.ratios3


LOSS_NORMS = ("l1", "psnr")


@dataclass
class LossConfig:
    """Weights of the loss terms (see :mod:`training.losses`)."""

    coarse: float = 1.0  # μ-law L1 of the three coarse HDRs (coarse stage; e2e too)
    refine: float = 1.0  # μ-law L1 of the final HDR over ||1 - M||₁ (refine and e2e)
    perceptual: str = "ssim"  # substitute for VGG16: "ssim" (multi-scale), "grad" or "none"
    perceptual_weight: float = 0.2
    scales: int = 3  # scales of the perceptual substitute (VGG's relu1_2, 2_2, 3_3 ~ 1, 1/2, 1/4)
    # L1 of the final HDR in linear light (normalised and clipped as PSNR-L): μ-law weighs the
    # highlights little, PSNR-L and ColorVideoVDP weigh them most (0: the paper's loss)
    linear: float = 0.0
    # pixels that move between the reference and its neighbours (ground truth differs by more
    # than MOTION_TOL in μ-law) count 1 + motion_weight times in the μ-law L1 terms: a ghost
    # there costs more than the noise a static area averages away (0: the paper's loss)
    motion_weight: float = 0.0
    # of those moving pixels, the ones where the reference is clipped in a channel count
    # clipped_motion_weight more on top: the reference only bounds them, the truth must come
    # from neighbours that saw the object elsewhere (three-exposure cycles, longest
    # reference: 1.6 % of the dynamic split's pixels, 43 % of the network's error; 0: off)
    clipped_motion_weight: float = 0.0
    # the μ-law error terms (coarse, and refine or gate where every pixel counts): "l1" (the
    # paper's) or "psnr" (each sample's PSNR-μ, what validation scores; eq. 6's masked L1 of
    # the paper's refine stage stays L1)
    norm: str = "l1"
    # chromaticity L1 of the final HDR where the reference is partly clipped (training.losses.hue_l1):
    # a colour cast in a highlight costs the μ-law next to nothing (0: the paper's loss)
    hue: float = 0.0

    def validate(self) -> None:
        if self.norm not in LOSS_NORMS:
            raise ValueError(f"loss.norm must be one of {LOSS_NORMS}, got {self.norm!r}")
        if self.perceptual not in ("ssim", "grad", "none"):
            raise ValueError(f"loss.perceptual must be ssim|grad|none, got {self.perceptual!r}")
        if min(self.coarse, self.refine, self.perceptual_weight, self.linear, self.motion_weight, self.hue,
               self.clipped_motion_weight) < 0 or self.scales < 1:
            raise ValueError("loss weights must be >= 0 and scales >= 1")


@dataclass
class TrainConfig:
    """One training stage (paper §5.1): ``coarse`` → ``refine`` (CoarseNet frozen) → ``e2e``;
    ``gate`` and ``denoise`` train only the classical gate or the learned noise filter."""

    stage: str = "coarse"
    exposures: int = 2
    width: float = 1.0  # NetConfig.width
    deform_groups: int = 8
    flow: str = "learned"  # NetConfig.flow: "learned" (the paper's) or "dis" (design §4's variant)
    weight_prior: bool = True  # NetConfig.weight_prior: weights correct the classical merge's
    refine_residual: bool = True  # NetConfig.refine_residual: RefineNet corrects the coarse HDR
    prior_per_channel: bool = True  # NetConfig.prior_per_channel: saturation roll-off per channel (shipped)
    mask_blend: bool = True  # NetConfig.mask_blend: well-exposed pixels keep the coarse HDR (eq. 4)
    classical_gate: bool = False  # NetConfig.classical_gate: a learned blend with the classical merge
    # NetConfig.refine: False trains what the shipped ``net`` method runs — CoarseNet on the
    # reference's window (then the gate, if any); the e2e stage then trains CoarseNet and the
    # gate together on that output, every pixel counting, at a third of the coarse stage's cost
    refine: bool = True
    gate_motion_cue: bool = False  # NetConfig.gate_motion_cue: the gate also sees the neighbours' agreement alone
    coarse_window: int = 0  # NetConfig.coarse_window: 5 for two exposures (refine = false, flow = dis)
    motion_edges: bool = False  # NetConfig.motion_edges: CoarseNet's weights also see where the flows break
    # NetConfig.unwarped_behind_clip: CoarseNet reads a neighbour unwarped behind a clipped
    # reference where that agrees better (an input rule; the shipped weights have it on)
    unwarped_behind_clip: bool = True
    # NetConfig.learned_denoise: a learned correction of the final noise filter; the denoise
    # stage trains it alone (the rest frozen), e2e trains it with CoarseNet and the gate
    learned_denoise: bool = False
    denoise_width: float = 1.0  # NetConfig.denoise_width
    denoise_arch: str = "full"  # NetConfig.denoise_arch: "full" or "half" (resolution its U-Net starts at)
    # the denoise stage's training samples from a folder of the frozen network's outputs
    # (training.denoise_cache) instead of running the network each step, cropped at random
    # to denoise_crop pixels (0: as cached); several folders separated by commas (a two- and a
    # three-exposure cache for one filter), at most denoise_cache_chunks chunks of each (0: all;
    # a chunk, 64 batches of 8 windows of 128², takes ~226 MB of memory)
    denoise_cache: str = ""
    denoise_crop: int = 0
    denoise_cache_chunks: int = 0
    steps: int = 40_000  # total optimiser steps of this stage
    # decay of an exponential moving average of the trained weights, which validation, the
    # best checkpoint and the exported files use (0: off). At CPU batch sizes a step's noise
    # moves a converged network by more than its signal; 0.999 averages ~1000 steps of it away
    ema: float = 0.0
    batch_size: int = 8
    lr: float = 1e-4
    lr_halve_every: int = 10_000  # steps; 0 = constant
    # largest total gradient norm a step may take (torch.nn.utils.clip_grad_norm_; 0: no limit).
    # The norm is logged either way ("grad_norm"), so a run that diverges shows where it began.
    grad_clip: float = 0.0
    seed: int = 0  # training data and init; any value (worlds are hashed into [0, VAL_SEED_BASE))
    workers: int = -1  # data processes; -1 = auto (0 on <= 2 cores)
    threads: int = 0  # torch intra-op threads; 0 = auto
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (CUDA autocast)
    channels_last: bool = False
    val_every: int = 1000  # steps; also at the end
    val_size: int = 32  # fixed validation windows
    val_crop: int = 256
    val_batch: int = 4
    val_seed: int = VAL_SEED_BASE
    val_dynamic: int = 32  # windows of the dynamic split (training.splits) validated too; 0 = off
    cache_dir: str = "out/train-cache"  # validation sets are cached here
    ckpt_every: int = 1000  # steps
    ckpt_every_min: float = 15.0  # minutes; 0 = off
    log_every: int = 20  # steps between log lines
    max_minutes: float = 0.0  # stop cleanly (checkpoint, validate, export) after this; 0 = off
    out: str = "out/train"
    init: str = ""  # weights (.safetensors) or checkpoint (.pt) to start from
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not self.refine and self.stage in ("refine", "coarse"):
            raise ValueError(f"refine = false trains the network without RefineNet: use stage e2e or gate, not {self.stage}")
        if self.stage == "gate" and not self.classical_gate:
            raise ValueError("the gate stage trains the classical gate: set classical_gate = true")
        if self.stage == "denoise" and not self.learned_denoise:
            raise ValueError("the denoise stage trains the learned noise filter: set learned_denoise = true")
        if self.denoise_cache_chunks < 0:
            raise ValueError(f"denoise_cache_chunks must be >= 0 (0: all), got {self.denoise_cache_chunks}")
        if self.denoise_cache and self.stage != "denoise":
            raise ValueError(f"denoise_cache holds the denoise stage's inputs; the {self.stage} stage cannot use it")
        if self.exposures not in (2, 3):
            raise ValueError(f"exposures must be 2 or 3, got {self.exposures}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if (self.steps < 0 or self.batch_size < 1 or not self.lr > 0 or self.lr_halve_every < 0
                or self.grad_clip < 0):
            raise ValueError("need steps >= 0, batch_size >= 1, lr > 0, lr_halve_every >= 0, grad_clip >= 0")
        if self.flow not in ("learned", "dis"):
            raise ValueError(f"flow must be learned|dis, got {self.flow!r}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none|bf16|fp16, got {self.amp!r}")
        if self.val_crop < 16 or self.val_crop % 16 or self.val_size < 0 or self.val_batch < 1 or self.val_dynamic < 0:
            raise ValueError("val_crop must be a multiple of 16; val_size, val_dynamic >= 0; val_batch >= 1")
        if self.val_seed < VAL_SEED_BASE:
            raise ValueError(f"val_seed must be >= {VAL_SEED_BASE} (disjoint from training seeds)")
        if self.val_every < 1 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError("val_every, ckpt_every and log_every must be >= 1")
        self.data.validate()
        self.loss.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(sorted(where + k for k in unknown))}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"{where}{name} must be a table")
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, default, where + name)
    return cls(**kwargs)


def _coerce(value: Any, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        raise ValueError(f"{name} must be a {type(default).__name__}, got {value!r}")
    return value


def from_dict(values: dict[str, Any]) -> TrainConfig:
    cfg = _build(TrainConfig, values, "")
    cfg.validate()
    return cfg


def load_toml(path: str | Path) -> dict[str, Any]:
    """The raw table of a config file or shipped config name."""
    with open(resolve_config(path), "rb") as f:
        return tomllib.load(f)


def load(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Config from a TOML file (or the defaults) with ``key=value`` overrides applied."""
    values = load_toml(path) if path is not None else {}
    return from_dict(apply_overrides(values, overrides))


def resolve_config(path: str | Path) -> Path:
    """A config path, or the name of a shipped one (``coarse2`` → training/configs/coarse2.toml)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix == ".toml" else p.name + ".toml")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.toml")))
    raise FileNotFoundError(f"config not found: {path} (shipped: {names})")


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b=literal`` pairs into a nested dict; the value is TOML (bare words are strings)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override must be key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare string: --set stage=refine
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a table")
        node[parts[-1]] = value
    return out
