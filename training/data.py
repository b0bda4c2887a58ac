"""Training windows made on the fly: moving HDR scenes seen by an alternating-exposure camera.

A sample is what the network sees for one output frame, and its ground truth:

- ``ldr`` (N, 3, h, w): N = 5 (two exposures) or 7 (three) gamma-2.2 frames in [0, 1];
- ``expo`` (N,): exposures relative to the cycle's shortest; the cycle starts at a random
  phase, so the centre (reference) is sometimes the short, the long or the middle one;
- ``gt`` (3, 3, h, w): normalised HDR (H·t_min, clipped to [0, 1]) of frames i-1, i, i+1
  (CoarseNet's targets); ``gt_ref`` (3, h, w) = ``gt[1]``.

How it is made (paper §5.1, design §4): a scene from :mod:`training.sources` is cropped
with a small random similarity per frame (the residual global motion preprocess's
alignment leaves; the reference frame is exact), moving textured occluders are composited
along their own paths (local motion, larger), and each frame is exposed:
``lin = clip(H·t) + noise`` (Gaussian σ = 1e-3 as the paper, sometimes also the
Poisson-Gaussian noise of :class:`capture.sensor.Sensor` at a random gain, sometimes a
Bayer mosaic and VNG demosaic as preprocess does), gamma 1/2.2 and 8-bit quantisation.
Simulated-camera scenes come out of :class:`capture.sim.SimCamera` instead. Augmentation:
gamma exp(U(-0.7, 0.7)) on the reference's L, flips, 90° rotations.

Reproducibility: sample ``index`` is a pure function of ``(seed, index)``. Consecutive
indices rotate through ``pool`` scenes, each used for ``reuse`` windows (a scene is built
once per data process and cached), so a batch mixes scenes and a worker amortises them.
Validation samples use scene seeds ≥ ``VAL_SEED_BASE`` and no photographs; training scene
seeds are hashed into [0, ``VAL_SEED_BASE``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from capture.sensor import Sensor, standard_normal
from capture.sim import SimCamera, SimConfig
from hdrstream.crf import CRF
from hdrstream.quality import mu_sq_error, psnr_mu
from infer.window_flows import WindowFlows
from preprocess.window import CycleInfo, plan_window
from training.config import VAL_SEED_BASE, DataConfig
from training.sources import Scene, build_scene, load_photos
from training.splits import REGIONS, SPLIT_HEIGHT, SPLIT_WIDTH, regions, split_config

log = logging.getLogger(__name__)

AE_TARGET = 0.9  # auto-exposure level in the short exposure (capture.sim)
_TRAIN, _VAL = 1, 2  # split codes mixed into every seed
_BAYER_TO_RGB = cv2.COLOR_BayerBG2RGB_VNG  # GenICam BayerRG (preprocess.debayer's table)


def frames_for(exposures: int) -> int:
    return 2 * exposures + 1


def window_exposures(ratios: list[float], phase: int, n: int) -> np.ndarray:
    """(n,) exposures of a window whose frame k has cycle position (k + phase) % len(ratios)."""
    r = np.asarray(ratios, np.float32) / np.float32(min(ratios))
    return np.array([r[(k + phase) % len(r)] for k in range(n)], np.float32)


def noise_free(dcfg: DataConfig) -> bool:
    return dcfg.gauss_sigma == 0 and dcfg.sensor_noise_prob == 0


# -- exposure ----------------------------------------------------------------------------

_sensors: dict[tuple[str, bool], Sensor] = {}


def _sensor(fmt: str, noise: bool) -> Sensor:
    key = (fmt, noise)
    if key not in _sensors:
        _sensors[key] = Sensor(fmt, CRF(gamma=2.2), noise=noise)
    return _sensors[key]


def expose(H: np.ndarray, expo: np.ndarray, rng: np.random.Generator, dcfg: DataConfig) -> np.ndarray:
    """Camera frames of HDR images: (n, h, w, 3) normalised radiance → L (n, h, w, 3) float32.

    ``lin = H·t`` plus noise, clipped, gamma 1/2.2, 8-bit codes / 255; H in units where
    1.0 saturates exposure 1.
    """
    bayer = rng.random() < dcfg.bayer_prob
    poisson = rng.random() < dcfg.sensor_noise_prob
    gain = 10.0 ** (rng.uniform(0.0, dcfg.gain_db_max) / 20.0) if poisson else 1.0
    sensor = _sensor("BayerRG8" if bayer else "RGB8", poisson)
    out = np.empty(H.shape, np.float32)
    for k in range(H.shape[0]):
        lin = sensor.linear(H[k], float(expo[k]), gain, rng)
        if dcfg.gauss_sigma > 0:
            z = standard_normal(rng, lin.shape)
            z *= np.float32(dcfg.gauss_sigma)
            lin += z
        codes = sensor.encode(lin)
        if bayer:
            codes = cv2.cvtColor(codes, _BAYER_TO_RGB)
        np.multiply(codes, np.float32(1 / 255), out=out[k], dtype=np.float32)
    return out


# -- composition -------------------------------------------------------------------------


def _rotation(angle: float, scale: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s], [s, c]])


def compose(scene: Scene, rng: np.random.Generator, n: int, crop: int, dcfg: DataConfig) -> np.ndarray:
    """HDR of n frames (n, crop, crop, 3): background with residual global motion + occluders."""
    bg = scene.radiance
    c = n // 2
    hb, wb = bg.shape[:2]
    x0, y0 = int(rng.integers(0, wb - crop + 1)), int(rng.integers(0, hb - crop + 1))
    centre = np.array([(crop - 1) / 2, (crop - 1) / 2])
    g = rng.uniform(0.0, dcfg.global_px)
    H = np.empty((n, crop, crop, 3), np.float32)
    for k in range(n):
        if k == c:  # the reference: preprocess aligned everything to it
            H[k] = bg[y0:y0 + crop, x0:x0 + crop]
            continue
        a = _rotation(math.radians(rng.uniform(-1, 1) * dcfg.global_rot_deg),
                      math.exp(rng.uniform(-1, 1) * dcfg.global_scale))
        shift = np.array([x0, y0]) + centre + rng.uniform(-g, g, 2)
        m = np.hstack([a, (shift - a @ centre)[:, None]])  # view px -> background px
        cv2.warpAffine(bg, m, (crop, crop), dst=H[k], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_REFLECT101)
    lo, hi = dcfg.objects
    for _ in range(int(rng.integers(lo, hi + 1)) if scene.sprites else 0):
        _composite_occluder(H, scene.sprites[int(rng.integers(len(scene.sprites)))], rng, crop, dcfg)
    return H


def _composite_occluder(H: np.ndarray, sprite: np.ndarray, rng: np.random.Generator, crop: int,
                        dcfg: DataConfig) -> None:
    """Paint one sprite over every frame along its own path (constant acceleration, spin, zoom)."""
    n = H.shape[0]
    c = n // 2
    s = sprite.shape[0]
    anchor = np.array([(s - 1) / 2, (s - 1) / 2])
    pos = rng.uniform(-0.1, 1.1, 2) * crop
    speed = rng.uniform(0.0, dcfg.object_speed_px)
    phi = rng.uniform(0, 2 * math.pi)
    vel = speed * np.array([math.cos(phi), math.sin(phi)])
    acc = rng.normal(0.0, 0.05 * speed + 1e-9, 2)
    angle0, spin = rng.uniform(0, 2 * math.pi), rng.uniform(-0.05, 0.05)
    scale0, zoom = rng.uniform(0.8, 1.25), rng.uniform(-0.02, 0.02)
    brightness = np.float32(2.0 ** rng.uniform(-1.0, 1.0))
    for k in range(n):
        d = k - c
        a = _rotation(angle0 + spin * d, scale0 * math.exp(zoom * d))
        p = pos + vel * d + 0.5 * acc * d * d
        m = np.hstack([a, (p - a @ anchor)[:, None]])  # sprite px -> view px
        corners = m @ np.array([[0, s, 0, s], [0, 0, s, s], [1, 1, 1, 1]], float)
        x0, y0 = np.maximum(np.floor(corners.min(axis=1)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(axis=1)).astype(int) + 2, crop)
        if x0 >= x1 or y0 >= y1:
            continue  # out of view in this frame
        m[:, 2] -= (x0, y0)
        patch = cv2.warpAffine(sprite, m, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        roi = H[k, y0:y1, x0:x1]
        roi *= 1.0 - patch[..., 3:]
        roi += patch[..., :3] * brightness


def _sim_window(scene: Scene, rng: np.random.Generator, n: int, crop: int, phase: int,
                dcfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, H, expo) of a window rendered by the simulated camera, cropped from its view."""
    cam = scene.camera
    e = len(cam.exposure_cycle)
    start = e * int(rng.integers(0, 100)) + phase  # frame k has cycle position (k + phase) % e
    t_min = cam.exposure_cycle[0]
    x0 = int(rng.integers(0, cam.cfg.width - crop + 1))
    y0 = int(rng.integers(0, cam.cfg.height - crop + 1))
    gain = np.float32(2.0 ** rng.uniform(*dcfg.ev_range))
    bayer = cam.sensor.fmt.bayer is not None
    L = np.empty((n, crop, crop, 3), np.float32)
    H = np.empty((n, crop, crop, 3), np.float32)
    for k in range(n):
        gt = cam.render(start + k)
        gt *= gain  # a brighter or darker scene than the auto-exposure was locked on
        codes = cam.capture(start + k, gt)
        if bayer:
            codes = cv2.cvtColor(codes, _BAYER_TO_RGB)
        np.multiply(codes[y0:y0 + crop, x0:x0 + crop], np.float32(1 / 255), out=L[k], dtype=np.float32)
        np.multiply(gt[y0:y0 + crop, x0:x0 + crop], np.float32(t_min), out=H[k])
    return L, H, window_exposures(cam.cfg.cycle_ratios, phase, n)


# -- samples -----------------------------------------------------------------------------


class SampleMaker:
    """Makes sample ``index`` of a stream; caches the scenes it builds.

    Args:
        dcfg: data configuration.
        exposures: 2 or 3.
        seed: stream seed (training) or first scene seed (validation, ≥ ``VAL_SEED_BASE``).
        split: "train" or "val". Validation: one scene per sample, alternately procedural
            and simulated (no photographs: they are few and all used for training), the
            reference phase cycling through the exposures, no augmentation.
        crop: crop size (defaults to ``dcfg.crop``).
        flows: also give each sample the DIS flows of its three CoarseNet windows
            ("flows", see :func:`coarse_flows`), for the DIS-flow network variant.
        window: frames of a CoarseNet window for those flows (``NetConfig.coarse_frames``);
            0: the paper's, two fewer than the sample's.
    """

    def __init__(self, dcfg: DataConfig, exposures: int, seed: int, split: str = "train",
                 crop: int | None = None, flows: bool = False, window: int = 0):
        if split not in ("train", "val"):
            raise ValueError(f"split must be train or val, got {split!r}")
        if split == "val" and seed < VAL_SEED_BASE:
            raise ValueError(f"validation seeds start at {VAL_SEED_BASE}, got {seed}")
        self.dcfg, self.exposures, self.seed, self.split = dcfg, exposures, seed, split
        self.crop = crop or dcfg.crop
        self.n = frames_for(exposures)
        self.flows, self.window = flows, window
        self._dis: WindowFlows | None = None
        weights = dict(dcfg.sources)
        if weights.get("photo", 0) > 0 and split == "train" and not load_photos(dcfg.photo_dir):
            weights.pop("photo")
        if split == "val":
            weights = {"procedural": 1.0, "sim": 1.0}
        kinds = [k for k, w in weights.items() if w > 0]
        if not kinds:
            raise ValueError(f"no usable data source in {dcfg.sources} (photos need scikit-image)")
        self.kinds = kinds
        self.p = np.array([weights[k] for k in kinds], np.float64)
        self.p /= self.p.sum()
        self._scenes: OrderedDict[int, Scene] = OrderedDict()
        self._cache_size = dcfg.pool + 1

    def scene_id(self, index: int) -> int:
        if self.split == "val":
            return index
        pool, reuse = self.dcfg.pool, self.dcfg.reuse
        return (index // (pool * reuse)) * pool + index % pool

    def scene(self, scene_id: int) -> Scene:
        if scene_id in self._scenes:
            self._scenes.move_to_end(scene_id)
            return self._scenes[scene_id]
        if self.split == "val":
            seed, kind = self.seed + scene_id, self.kinds[scene_id % len(self.kinds)]
        else:
            ss = np.random.SeedSequence([_TRAIN, self.seed, scene_id])
            seed = int(ss.generate_state(1, np.uint64)[0] % VAL_SEED_BASE)
            kind = self.kinds[int(np.random.default_rng(ss).choice(len(self.kinds), p=self.p))]
        scene = build_scene(kind, seed, self.crop, self.exposures, self.dcfg, noise=not noise_free(self.dcfg))
        self._scenes[scene_id] = scene
        while len(self._scenes) > self._cache_size:
            self._scenes.popitem(last=False)
        return scene

    def __call__(self, index: int) -> dict[str, torch.Tensor]:
        dcfg, n, crop = self.dcfg, self.n, self.crop
        train = self.split == "train"
        rng = np.random.default_rng([_TRAIN if train else _VAL, self.seed, index])
        scene = self.scene(self.scene_id(index))
        e = self.exposures
        phase = int(rng.integers(e)) if train else (index // len(self.kinds)) % e
        if scene.camera is not None:
            L, H, expo = _sim_window(scene, rng, n, crop, phase, dcfg)
        else:
            all_ratios = dcfg.ratios(e)
            expo = window_exposures(all_ratios[int(rng.integers(len(all_ratios)))], phase, n)
            H = compose(scene, rng, n, crop, dcfg)
            H *= np.float32(AE_TARGET * 2.0 ** rng.uniform(*dcfg.ev_range))
            L = expose(H, expo, rng, dcfg)
        c = n // 2
        if train and dcfg.edge_prob > 0 and rng.random() < dcfg.edge_prob:
            slots = edge_slots(n, e, int(rng.integers(c)), end=bool(rng.integers(2)))
            L, H, expo = L[slots], H[slots], expo[slots]
        gt = np.clip(H[c - 1:c + 2], 0.0, 1.0)
        if train:
            if rng.random() < dcfg.tone_prob:  # an inaccurate CRF (paper §5.1)
                L[c] **= np.float32(math.exp(rng.uniform(-dcfg.tone_range, dcfg.tone_range)))
            L, gt = _flip_rotate(L, gt, rng, dcfg)
        ldr = torch.from_numpy(np.ascontiguousarray(L.transpose(0, 3, 1, 2)))
        gt_t = torch.from_numpy(np.ascontiguousarray(gt.transpose(0, 3, 1, 2)))
        sample = {"ldr": ldr, "expo": torch.from_numpy(expo), "gt": gt_t, "gt_ref": gt_t[1].clone()}
        if self.flows:
            if self._dis is None:
                self._dis = WindowFlows()
            sample["flows"] = torch.from_numpy(coarse_flows(self._dis, L, expo, self.window))
        return sample


def edge_slots(n: int, exposures: int, inside: int, end: bool = False) -> list[int]:
    """The frames of an ``n``-frame window whose centre has only ``inside`` frames before it
    (or after it, ``end``) in its stream, as preprocess pads the slots beyond: each by the
    nearest frame there is of its position in the exposure cycle."""
    c = n // 2
    have = range(c - inside, n) if not end else range(0, c + inside + 1)
    cycle = CycleInfo(exposures, {p: p for p in range(exposures)}, {})
    return plan_window(c, c, {i: i % exposures for i in have}, cycle)


def coarse_flows(flows: WindowFlows, L: np.ndarray, expo: np.ndarray, window: int = 0) -> np.ndarray:
    """(3, C-1, 2, h, w): the flows of the three CoarseNet windows of C = ``window`` frames
    (0: n - 2) centred on the frames i-1, i, i+1 of an input window ``L`` (n, h, w, 3), as
    inference computes them; (1, C-1, 2, h, w), the centre's alone, when only its fits."""
    n = L.shape[0]
    size = window or n - 2
    centres = (n // 2 - 1, n // 2, n // 2 + 1) if size + 2 <= n else (n // 2,)
    return np.stack([flows(L, expo, j, size) for j in centres])


def centre_flows(flows: torch.Tensor) -> torch.Tensor:
    """The reference's CoarseNet window's flows (B, C-1, 2, h, w) of a batch's "flows"."""
    return flows[:, flows.shape[1] // 2]


def _flip_rotate(L: np.ndarray, gt: np.ndarray, rng: np.random.Generator,
                 dcfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The same random flips and 90° rotation of (k, h, w, 3) frames and ground truth."""
    if dcfg.flip and rng.random() < 0.5:
        L, gt = L[:, :, ::-1], gt[:, :, ::-1]
    if dcfg.flip and rng.random() < 0.5:
        L, gt = L[:, ::-1], gt[:, ::-1]
    if dcfg.rot90 and rng.random() < 0.5:
        L, gt = np.rot90(L, axes=(1, 2)), np.rot90(gt, axes=(1, 2))
    return L, gt


class WindowStream(IterableDataset):
    """Endless training batches' samples, from ``start_step`` on; reproducible for any worker count.

    DataLoader workers take whole batches in turn (worker w makes batches s ≡ w mod W and
    the DataLoader returns them in order), so the stream of batches is the same with 0 or
    W workers, and resuming at step s continues it exactly. Start workers with
    :func:`worker_context`.
    """

    def __init__(self, dcfg: DataConfig, exposures: int, seed: int, batch_size: int, start_step: int = 0,
                 flows: bool = False, window: int = 0):
        super().__init__()
        self.dcfg, self.exposures, self.seed = dcfg, exposures, seed
        self.batch_size, self.start_step, self.flows, self.window = batch_size, start_step, flows, window

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
            cv2.setNumThreads(1)
        maker = SampleMaker(self.dcfg, self.exposures, self.seed, flows=self.flows, window=self.window)
        step = self.start_step + worker
        while True:
            for b in range(self.batch_size):
                yield maker(step * self.batch_size + b)
            step += workers


def worker_context() -> str:
    """Start method for data workers: not fork (OpenCV's thread pool deadlocks in a forked
    child once the parent has used it); forkserver where there is one (spawned workers
    here sometimes abort in C++ teardown at shutdown), else spawn."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# -- validation --------------------------------------------------------------------------


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def validation_key(dcfg: DataConfig, exposures: int, size: int, crop: int, seed: int, flows: bool = False,
                   window: int = 0) -> str:
    spec = {"data": asdict(dcfg), "e": exposures, "n": size, "crop": crop, "seed": seed, "v": 1}
    if flows:
        spec["flows"] = _flow_spec()
    spec.update(_window_spec(exposures, flows, window))
    text = json.dumps(spec, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _flow_spec() -> dict:
    """A validation cache key's entry for the stored DIS flows: the classical settings that
    make them, so that a set cached before a change to the flows is made again, not reused
    with flows that training and ``net`` no longer compute."""
    return {"dis": asdict(WindowFlows().classical.cfg)}


def _window_spec(exposures: int, flows: bool, window: int) -> dict[str, int]:
    """A validation cache key's entry for flows of a CoarseNet window other than the paper's
    (none for the paper's, so that the caches made before ``window`` existed keep their keys)."""
    return {"window": window} if flows and window and window != frames_for(exposures) - 2 else {}


def validation_set(dcfg: DataConfig, exposures: int, size: int, crop: int, seed: int = VAL_SEED_BASE,
                   cache_dir: str | Path | None = None, flows: bool = False, window: int = 0) -> dict:
    """The fixed validation windows (stacked tensors) and the classical baseline's scores.

    Returns a dict with "ldr" (V, N, 3, h, w), "expo" (V, N), "gt" (V, 3, 3, h, w),
    "gt_ref" (V, 3, h, w), "classical" (V,) PSNR-μ of :class:`infer.classical.ClassicalReconstructor`
    on the same windows, "key", and with ``flows`` the DIS flows "flows" (V, 3, C-1, 2, h, w)
    of CoarseNet windows of ``window`` frames (see :func:`coarse_flows`).
    The windows are cached as ``cache_dir/val-<key>.pt`` when given; the classical scores are not.
    """
    key = validation_key(dcfg, exposures, size, crop, seed, flows, window)
    path = Path(cache_dir) / f"val-{key}.pt" if cache_dir else None

    def make() -> dict:
        maker = SampleMaker(dcfg, exposures, seed, split="val", crop=crop, flows=flows, window=window)
        return collate([maker(j) for j in range(size)])

    data = _cached_set(path, key, make, "validation set")
    # Scored afresh (a few ms per window), never cached: the baseline must be today's classical.
    data["classical"] = torch.tensor(classical_scores(data), dtype=torch.float64)
    log.info("validation set: classical PSNR-μ %.2f dB", float(data["classical"].mean()))
    return data


def _cached_set(path: Path | None, key: str, make: Callable[[], dict], what: str) -> dict:
    """A validation set from its cache file if that holds ``key``, else ``make()``, cached
    atomically (a killed run never leaves a half-written set)."""
    if path is not None and path.is_file():
        data = torch.load(path, weights_only=True)
        if data.get("key") == key:
            return data
    t0 = time.monotonic()
    data = make()
    data["key"] = key
    log.info("%s: %d windows made in %.1f s", what, len(data["ldr"]), time.monotonic() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(path)
    return data


def classical_scores(data: dict[str, torch.Tensor]) -> list[float]:
    """PSNR-μ of the classical reconstructor on each window (H in units of exposure 1)."""
    return [row[0] for row in classical_region_scores(data)]


def classical_region_scores(data: dict[str, torch.Tensor]) -> list[list[float]]:
    """Per window: classical's PSNR-μ over all pixels, then, if the set has "regions", the
    squared μ-law error and value count in each (sse, count, sse, count, …), for pooling."""
    from infer.classical import ClassicalReconstructor

    rec = ClassicalReconstructor()
    n = data["ldr"].shape[1]
    masks = data.get("regions")
    scores = []
    for j, (ldr, expo, gt) in enumerate(zip(data["ldr"], data["expo"], data["gt_ref"])):
        frames = np.ascontiguousarray(ldr.permute(0, 2, 3, 1).numpy())
        H = rec.reconstruct(frames, [float(t) for t in expo], n // 2)
        g = gt.permute(1, 2, 0).numpy()
        row = [psnr_mu(H, g, 1.0)]
        if masks is not None:
            for m in masks[j]:
                row += mu_sq_error(H, g, 1.0, m.numpy().astype(bool))
        scores.append(row)
    return scores


# -- the dynamic split's windows, for training validation ---------------------------------

DYNAMIC_VAL_OFFSET = 500  # training validates on dynamic sequences 500+; bench/quality.py scores 0+


def dynamic_validation_set(exposures: int, size: int, crop: int, cache_dir: str | Path | None = None,
                           flows: bool = False, per_sequence: int = 4, window: int = 0) -> dict:
    """Windows of the dynamic split (training.splits) as the network sees them, for validation.

    Whole 512x288 sequences go through the real preprocess; from each, ``per_sequence``
    windows are cropped to ``crop`` px around the moving objects. Sequences alternate RGB8
    and BayerRG8. Same keys as :func:`validation_set`, plus "regions" (V, 3, h, w) uint8
    masks (motion, clipped, rest) and "classical_regions" (V, 6): classical's squared μ-law
    error and value count in each (see :func:`classical_region_scores`).
    """
    spec = {"split": "dynamic", "e": exposures, "n": size, "crop": crop, "per": per_sequence,
            "offset": DYNAMIC_VAL_OFFSET, "flows": _flow_spec() if flows else False, "v": 2,
            **_window_spec(exposures, flows, window)}
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"val-dynamic-{key}.pt" if cache_dir else None

    def make() -> dict:
        samples: list[dict[str, torch.Tensor]] = []
        frames = frames_for(exposures) + window_stride(exposures) * per_sequence
        i = 0
        while len(samples) < size:
            base = SimConfig(width=SPLIT_WIDTH, height=SPLIT_HEIGHT, frames=frames, exposures=exposures,
                             pixel_format=("RGB8", "BayerRG8")[i % 2])
            cfg = split_config("dynamic", DYNAMIC_VAL_OFFSET + i, base)
            samples += _sequence_samples(cfg, crop, per_sequence, flows, window)[:size - len(samples)]
            i += 1
        return collate(samples)

    data = _cached_set(path, key, make, "dynamic validation set")
    scores = torch.tensor(classical_region_scores(data), dtype=torch.float64)
    data["classical"], data["classical_regions"] = scores[:, 0], scores[:, 1:]
    log.info("dynamic validation set: classical PSNR-μ %.2f dB", float(data["classical"].mean()))
    return data


def window_stride(exposures: int) -> int:
    """Every how many windows of a sequence the dynamic validation set takes one: a stride
    that shares no factor with the cycle, so every exposure is a reference in turn (every
    other window of a two-exposure sequence would have the same reference exposure)."""
    stride = 2
    while math.gcd(stride, exposures) != 1:
        stride += 1
    return stride


def _sequence_samples(cfg: SimConfig, crop: int, count: int, flows: bool,
                      window: int = 0) -> list[dict[str, torch.Tensor]]:
    """Up to ``count`` validation samples of one simulated sequence, cropped where things move."""
    from preprocess.stage import PreprocessConfig, Preprocessor

    cam = SimCamera(cfg)
    pre = Preprocessor(PreprocessConfig(window_dtype="float32", defer_warp=False))  # aligned L, as trained on
    n = frames_for(cfg.exposures)
    windows = [w for f in cam.frames() for w in pre.process(f)] + list(pre.finish())
    stride = window_stride(cfg.exposures)
    windows = [w for w in windows if len(set(w.meta["seqs"])) == n and w.meta["ref"] == n // 2][::stride][:count]
    t_min = min(cam.exposure_cycle)
    dis = WindowFlows() if flows else None
    out = []
    for w in windows:
        masks = regions(cam, w)
        ys, xs = np.nonzero(masks["motion"])
        rng = np.random.default_rng([cfg.seed, w.seq])
        if len(out) % 2:  # every other window where the reference clips, moving or not
            ys, xs = np.nonzero(masks["clipped"] | masks["motion_clipped"])
        cy, cx = (ys.mean(), xs.mean()) if len(ys) else (cfg.height / 2, cfg.width / 2)
        cy, cx = cy + rng.uniform(-0.25, 0.25) * crop, cx + rng.uniform(-0.25, 0.25) * crop
        y0 = int(np.clip(round(cy - crop / 2), 0, cfg.height - crop))
        x0 = int(np.clip(round(cx - crop / 2), 0, cfg.width - crop))
        win = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        L = np.ascontiguousarray(np.asarray(w.data, np.float32)[:, win[0], win[1]])
        expo = np.asarray(w.meta["exposures"], np.float32) / np.float32(t_min)
        c = n // 2
        gt = np.stack([np.clip(cam.ground_truth(s)[win] * np.float32(t_min), 0, 1)
                       for s in w.meta["seqs"][c - 1:c + 2]])
        gt_t = torch.from_numpy(np.ascontiguousarray(gt.transpose(0, 3, 1, 2)))
        sample = {"ldr": torch.from_numpy(np.ascontiguousarray(L.transpose(0, 3, 1, 2))),
                  "expo": torch.from_numpy(expo), "gt": gt_t, "gt_ref": gt_t[1].clone(),
                  "regions": torch.from_numpy(np.stack([masks[r][win] for r in REGIONS]).astype(np.uint8))}
        if dis is not None:
            sample["flows"] = torch.from_numpy(coarse_flows(dis, L, expo, window))
        out.append(sample)
    return out


def bench(dcfg: DataConfig, exposures: int, samples: int = 64, seed: int = 0) -> float:
    """Samples per second of one data process (scene building included)."""
    maker = SampleMaker(dcfg, exposures, seed)
    maker(0)  # sensor tables, photo decoding
    t0 = time.perf_counter()
    for i in range(1, samples + 1):
        maker(i)
    return samples / (time.perf_counter() - t0)
