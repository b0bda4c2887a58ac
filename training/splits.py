"""The validation splits: whole simulated sequences with exact ground truth, never trained on.

- ``static``: the simulated camera as the demo runs it (camera motion, one object of a
  quarter to half the height moving 3-8 px/frame, a full well of 10,500 e-). Most of the
  error a merge makes here is noise and demosaicing.
- ``dynamic``: what real footage makes hard. One to three large textured objects (their
  side 55-80 % of the height, 20-40 % of the frame) crossing it at ~4-15 px/frame while
  they spin and zoom, in front of a low sun whose warm glow clips the longer exposures
  over large areas, red first; camera motion; a full well of 3,000 e- (more noise).

Seeds: static from 1000, dynamic from 2000 (scene, paths and noise all follow the seed);
training draws its scenes from other seeds (training.data), so neither split is seen in
training.
"""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from capture.sim import SimCamera, SimConfig
from hdrstream.frame import Frame
from hdrstream.pixfmt import pixel_format

SPLITS = ("static", "dynamic")
SEED0 = {"static": 1000, "dynamic": 2000}
SPLIT_WIDTH, SPLIT_HEIGHT = 512, 288  # the splits' sequences (bench/quality.py's default size)
REGIONS = ("motion", "clipped", "rest")
# Within motion: where the reference is clipped in a channel. The reference only bounds these
# pixels; the truth has to come from neighbours that saw the moving object elsewhere (the
# longest reference of a three-exposure cycle: ~40 % of either method's error on the dynamic
# split in ~1.6 % of its pixels).
SUBREGIONS = ("motion_clipped",)
MOTION_DILATE_PX = 4
CLIP_LEVEL = 0.99  # a reference value at or above this (gamma domain) counts as clipped


def dynamic_config(cfg: SimConfig, occluders: int, speed_scale: float = 1.0) -> SimConfig:
    """``cfg`` in the dynamic split's conditions, with ``occluders`` objects; ``speed_scale``
    keeps their speed in px/frame in a view narrower than SPLIT_WIDTH (their paths scale
    with the view)."""
    return replace(cfg, occluders=occluders, occluder_size=(0.55, 0.8), occluder_speed=2.5 * speed_scale,
                   sun=True, full_well_e=3000.0)


def split_config(split: str, index: int, base: SimConfig) -> SimConfig:
    """Sequence ``index`` of ``split``: ``base`` (size, frames, exposures, pixel format) with
    the split's seed and scene settings."""
    if split not in SEED0:
        raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    cfg = replace(base, seed=SEED0[split] + index)
    if split == "dynamic":
        cfg = dynamic_config(cfg, occluders=1 + index % 3, speed_scale=SPLIT_WIDTH / cfg.width)
    return cfg


def regions(cam: SimCamera, window: Frame) -> dict[str, np.ndarray]:
    """Boolean (H, W) masks of a window's reference frame, which partition it.

    motion: pixels that any moving object covers in any of the window's frames, dilated
    MOTION_DILATE_PX; clipped: the reference clipped in any channel, outside motion; rest.
    Besides the partition, motion_clipped (SUBREGIONS): motion where the reference clips.
    """
    cover = np.zeros((cam.cfg.height, cam.cfg.width), np.float32)
    for s in window.meta["seqs"]:
        np.maximum(cover, cam.occluder_alpha(s), out=cover)
    k = 2 * MOTION_DILATE_PX + 1
    motion = cv2.dilate((cover > 0.01).astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    ref = np.asarray(window.data[window.meta["ref"]])  # gamma-2.2 values or the frame's codes
    ref_clipped = ref.max(axis=2) >= CLIP_LEVEL * pixel_format(window.pixel_format).white
    clipped = ref_clipped & ~motion
    return {"motion": motion, "clipped": clipped, "rest": ~motion & ~clipped, "motion_clipped": motion & ref_clipped}
