"""Classical HDR video reconstruction: optical flow, then a noise-aware, deghosted merge.

The project's baseline and its CPU fallback, in the spirit of Kang et al. 2003 and
Kalantari et al. 2013:

1. Each neighbour of another exposure is aligned to the reference by dense optical flow
   (OpenCV DIS) on an *exposure-matched* pair: the darker frame is brought up to the
   brighter one's exposure and clipped, so both saturate in the same places.
   Preprocess already removed the camera's motion, so the residual flow is kept only
   where it explains the reference clearly better than no flow (moving objects); elsewhere
   it is mostly estimation noise, and resampling by it would blur and jitter texture.
   Where the exposure-matched reference is clipped there is nothing to match; there the
   flow comes from the neighbour and its same-exposure partner on the other side of the
   reference, assuming constant motion (Kang et al.), or is filled in from around. Where
   the reference is the darker frame, its brightened copy carries its noise times the
   exposure ratio, and the flow to it misses moving texture; the pair's motion, measured
   between two clean frames, is then tried too, and each pixel keeps the flow that warps
   the neighbour closer to the reference over a small window (``pair_flow_dark``).
2. All frames are merged in linear radiance H = L^2.2 / t. A frame's weight is its
   signal-to-noise proxy t^p (longer exposures are cleaner) times a roll-off that drops
   saturated pixels, times a *ghost* term that drops a warped neighbour where, brought to
   the brighter exposure, it disagrees with the reference by more than noise explains.
   Clipping both at the brighter exposure makes a saturated reference agree with anything
   at least as bright, so only real contradictions count.
3. In two-exposure cycles the nearest frames of the reference's own exposure (i±2) join
   the merge too (``same_exposure``): they are as clean as the reference, so where they
   agree with it they average its noise away, like a burst merge. In three-exposure cycles
   they are three frames away and add more misalignment than they remove noise.
4. Without them, the paper's final blend H = M·H_ref + (1-M)·H_merge (M: well-exposed mask
   of the reference) is applied when the reference is the longest exposure of the window:
   its well-exposed pixels are then the cleanest there are, and the shorter neighbours can
   only add misalignment. For shorter references the blend is skipped (``keep_reference``):
   their well-exposed pixels are still noisy, and the deghosted merge, which already falls
   back to the reference wherever a neighbour disagrees, averages that noise away
   (measured on the simulated camera: +2 to +4 dB PSNR-μ for short references).

Measured on the validation sequences (6 seeds, 512×288, 2 exposures), the same-exposure
merge without the blend against the blend alone: +0.8 to +1.1 dB PSNR-μ from BayerRG8,
+0.5 to +1.2 dB from RGB8, at 1:4 and 1:8, with lower flicker. With four moving objects and
2.5× the camera motion it is +0.2 dB from BayerRG8 but −0.4 dB from RGB8 (4 seeds, 1:8):
frames two apart are then harder to align. Neither a tighter ghost test for them, nor a
lower weight, nor keeping the blend over a merge of the reference's exposure alone did
better on the mean of these four conditions.

Where the reference is saturated and every neighbour was rejected, the merge keeps the
neighbours with a small weight, bounded below by the reference's clipped value (a clipped
reference only says "at least this bright"); where everything is clipped, the shortest
frames are the last resort.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from hdrstream.geometry import invert, is_identity, scaled, warp
from infer.denoise import denoise, reference_noise
from infer.mask import EXPOSURE_TOL, well_exposed_mask
from infer.method import check_window, to_hdr


@dataclass(frozen=True)
class ClassicalConfig:
    """Tuning of :class:`ClassicalReconstructor`; defaults tuned on the simulated camera
    (1:8 and 1:4:16, 640×360, camera motion and moving objects)."""

    flow_preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST
    flow_alpha: float = 40.0  # DIS variational smoothness (the presets use 20)
    flow_max_px: int = 768  # flow runs on a copy at most this wide (long side)
    zero_bias: float = 0.005  # keep flow only where it lowers mean |ΔL| by this (0: always)
    flow_sat: float = 0.96  # exposure-matched reference at or above this: no flow from it
    pair_flow: bool = True  # flow in clipped regions from the same-exposure partner
    # where the reference is the darker frame, also the partner pair's motion (with pair_flow),
    # kept per pixel where it warps better (README "Motion from the clean pair")
    pair_flow_dark: bool = True
    pair_flow_window: int = 9  # pixels a side of the window that compares the two flows (odd)
    # where the reference is clipped, read a neighbour unwarped (preprocess's global alignment
    # only) wherever that agrees better with the clip than its flow does (see _merge_frames)
    unwarped_behind_clip: bool = True
    snr_power: float = 1.0  # weight ∝ t^p: 1 for shot-noise, 2 for read-noise limited sensors
    sat_start: float = 0.85  # L where a frame's saturation roll-off begins ...
    sat_end: float = 0.97  # ... and where its weight reaches zero
    ghost_tol: float = 0.015  # tolerated mean |ΔL| at the brighter exposure (grows with gain)
    ghost_blur_px: int = 3  # box filter on the difference before thresholding
    # also merge the nearest frames of the reference's exposure; None: in two-exposure cycles
    same_exposure: bool | None = None
    fallback_weight: float = 0.001  # keeps rejected neighbours where nothing else is left
    # the paper's blend M·H_ref + (1-M)·H_merge: never|longest|always, or auto: longest unless
    # the reference's exposure is merged too (the blend would throw that averaging away)
    keep_reference: str = "auto"
    mask_reduce: str = "none"  # for keep_reference, see infer.mask
    # > 0: an edge-preserving filter of the merged HDR against the noise it still carries
    # (infer.denoise), its range this many times the noise's estimated standard deviation
    # where one reference exposure's worth of light was merged (README, "Noise": the sweep of
    # k, window and noise map on the validation splits; ColorVideoVDP unchanged by any of them)
    denoise: float = 4.0
    denoise_px: int = 5  # its window, pixels a side (odd)
    # the noise level per pixel, from the light merged there (fewer frames where neighbours
    # were rejected: more filtering), rather than one level for the frame (its median)
    denoise_local: bool = True
    # each colour channel weighted by its own level, so a clipped channel drops out alone and the
    # reference keeps its unclipped ones; measured mixed (README "Merge weights per channel"): off
    per_channel: bool = False

    def __post_init__(self) -> None:
        if self.keep_reference not in ("auto", "never", "longest", "always"):
            raise ValueError(f"keep_reference must be auto|never|longest|always, got {self.keep_reference!r}")
        if not 0.0 <= self.sat_start < self.sat_end <= 1.0:
            raise ValueError(f"need 0 <= sat_start < sat_end <= 1, got {self.sat_start}, {self.sat_end}")
        if self.pair_flow_window < 1 or self.pair_flow_window % 2 == 0:
            raise ValueError(f"pair_flow_window must be odd and positive, got {self.pair_flow_window}")
        if self.ghost_tol <= 0 or self.flow_max_px < 1:
            raise ValueError("ghost_tol and flow_max_px must be positive")
        if self.denoise < 0 or self.denoise_px < 1 or self.denoise_px % 2 == 0:
            raise ValueError(f"need denoise >= 0 and an odd denoise_px, got {self.denoise}, {self.denoise_px}")


_MIN_FLOW_PX = 16


class ClassicalReconstructor:
    """Flow-aligned, deghosted multi-exposure merge (no learning); works on any window.

    Given the window's global transforms (``warps``, frames not yet warped), it folds each
    into the flow's resampling: one interpolation of each neighbour instead of two.
    """

    name = "classical"
    folds_warps = True  # reconstruct() takes unwarped frames and their 2x3 transforms

    def __init__(self, cfg: ClassicalConfig | None = None) -> None:
        self.cfg = cfg or ClassicalConfig()
        self._dis = cv2.DISOpticalFlow_create(self.cfg.flow_preset)
        self._dis.setVariationalRefinementAlpha(self.cfg.flow_alpha)
        self._scaled: dict[float, ClassicalReconstructor] = {}

    def at_scale(self, scale: float) -> "ClassicalReconstructor":
        """This merge for frames reduced to ``scale`` of the camera's size (the reduced live
        mode): its flows run on a copy reduced as much as at full size, so every step costs
        ~scale² as much, the optical flow included."""
        if scale >= 1.0:
            return self
        if scale not in self._scaled:
            px = max(_MIN_FLOW_PX, round(self.cfg.flow_max_px * scale))
            self._scaled[scale] = ClassicalReconstructor(replace(self.cfg, flow_max_px=px))
        return self._scaled[scale]

    def reconstruct(self, frames: np.ndarray, exposures: Sequence[float], ref: int,
                    warps: Sequence[Sequence[float]] | None = None) -> np.ndarray:
        """``warps``: per frame, the 2x3 that maps it onto the reference, when ``frames`` are
        not warped yet (a window with ``meta["warped"] = False``)."""
        return self._merge(frames, exposures, ref, warps)

    def reconstruct_with_confidence(self, frames: np.ndarray, exposures: Sequence[float],
                                    ref: int) -> tuple[np.ndarray, np.ndarray]:
        """The merge and its confidence (H, W) in [0, 1]: the reference's saturation roll-off
        times every merged neighbour's agreement with it — 1 where the window is static and
        the reference unclipped (the merge then averages every frame), toward 0 where
        something moves or clips. The network's gate (``infer.net.gate``) weighs it."""
        H, conf, _, _ = self.reconstruct_with_cues(frames, exposures, ref)
        return H, conf

    def reconstruct_with_cues(self, frames: np.ndarray, exposures: Sequence[float], ref: int
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | np.ndarray | None]:
        """The plain merge (not denoised: the network's gate was trained on it), its
        confidence, the neighbours' agreement alone (H, W): the confidence without the
        reference's roll-off, low only where something moves; and the noise the merge keeps
        (see :meth:`_noise`), for a method that filters its own output as this one does."""
        check_window(frames, exposures, ref)
        conf = [np.ones(frames.shape[1:3], np.float32), np.ones(frames.shape[1:3], np.float32)]
        H, merged = self._merge_frames(frames, exposures, ref, conf, None)
        return H, conf[0], conf[1], self._noise(frames, exposures, ref, None, merged)

    def denoise(self, H: np.ndarray, t_ref: float, noise: float | np.ndarray | None) -> np.ndarray:
        """``H`` filtered as this merge filters its own output (``cfg.denoise``), given the
        noise it carries (y units; None or a strength of 0: unchanged)."""
        if noise is None or self.cfg.denoise <= 0:
            return H
        return denoise(H, t_ref, self.cfg.denoise * noise, self.cfg.denoise_px)

    def _merge(self, frames: np.ndarray, exposures: Sequence[float], ref: int,
               warps: Sequence[Sequence[float]] | None = None) -> np.ndarray:
        """The merge, denoised."""
        check_window(frames, exposures, ref)
        mats = None if warps is None else _matrices(warps, len(exposures))
        H, merged = self._merge_frames(frames, exposures, ref, None, mats)
        return self.denoise(H, float(exposures[ref]), self._noise(frames, exposures, ref, mats, merged))

    def _noise(self, frames: np.ndarray, exposures: Sequence[float], ref: int,
               mats: list[np.ndarray | None] | None, merged: float | np.ndarray) -> float | np.ndarray | None:
        """Standard deviation (y units) of the noise the merge keeps: the reference's, over
        the square root of the reference exposures' worth of light it averaged (``merged``, a
        scalar or per pixel); None with the filter off or where the window cannot tell."""
        if self.cfg.denoise <= 0:
            return None
        sigma = reference_noise(frames, exposures, ref, mats)
        return None if sigma is None else sigma / np.sqrt(merged)

    def _merge_frames(self, frames: np.ndarray, exposures: Sequence[float], ref: int,
                      conf: list[np.ndarray] | None, mats: list[np.ndarray | None] | None
                      ) -> tuple[np.ndarray, float | np.ndarray]:
        """The merge; with ``conf`` its confidence is multiplied into conf[0] and the
        neighbours' agreement alone into conf[1]. And how many reference exposures' worth of
        light it averaged, for the noise filter: the median, or per pixel with
        ``cfg.denoise_local`` (1.0 with the filter off)."""
        cfg = self.cfg
        L_ref, t_ref = np.asarray(frames[ref], np.float32), float(exposures[ref])
        if mats is not None and mats[ref] is not None:  # preprocess never moves the reference; others might
            L_ref = warp(L_ref, mats[ref], L_ref.shape, interpolation=cv2.INTER_CUBIC)
        H_ref = to_hdr(L_ref, t_ref)
        if conf is not None:
            conf[0] *= self._weight(L_ref, 1.0)
        same = cfg.same_exposure
        if same is None:
            same = _cycle_length(exposures) == 2
        keep = cfg.keep_reference
        if keep == "auto":
            keep = "never" if same else "longest"
        M = None
        if keep == "always" or (keep == "longest" and _same(t_ref, max(exposures))):
            M = well_exposed_mask(L_ref, exposures, ref, reduce=cfg.mask_reduce)
            if M.min() >= 1.0:
                return H_ref, 1.0
        nbrs = self.neighbours(exposures, ref, same)
        if not nbrs:
            return H_ref, 1.0
        flows = _Flows(self, frames, exposures, ref, mats)
        maps = flows.maps(nbrs, boxed=True)
        g_ref = _grey(L_ref)
        t_short = min(exposures)
        pc = cfg.per_channel
        weight = self._weight_rgb if pc else self._weight
        w = weight(L_ref, t_ref)
        if _same(t_ref, t_short):
            w += np.float32(1e-6)  # even clipped, the shortest frames are the last resort
        w3 = np.empty_like(H_ref) if pc else _planes3(w)  # one full-size buffer a window for 3-plane weights
        num = cv2.multiply(H_ref, w if pc else w3)
        den = w.copy()
        refs: dict[float, np.ndarray] = {}  # the reference at each brighter exposure, for the ghost test
        clipped = None
        if cfg.unwarped_behind_clip:
            clipped = np.maximum(np.maximum(L_ref[..., 0], L_ref[..., 1]), L_ref[..., 2]) >= np.float32(cfg.sat_end)
            if not clipped.any():
                clipped = None
        for j in nbrs:
            t_j = float(exposures[j])
            if mats is not None and mats[j] is not None:
                L_j = _resample(np.asarray(frames[j], np.float32), maps[j], flows.moved.get(j))
            else:
                L_j = _remap_box(np.asarray(frames[j], np.float32), maps[j], flows.boxes.get(j))
            agree = self._agreement(_grey(L_j), g_ref, t_j, t_ref, refs)
            if clipped is not None and maps[j] is not None:
                mat = mats[j] if mats is not None else None
                self._unwarped_where_better(frames[j], mat, L_j, agree, clipped, flows.moved_region(j),
                                            flows.moved.get(j), g_ref, t_j, t_ref)
            w = weight(L_j, t_j)
            if conf is not None:
                for c in conf:
                    c *= agree
            agree += np.float32(cfg.fallback_weight)
            if pc:
                cv2.multiply(w, _planes3(agree, w3), dst=w)
            else:
                w *= agree
            if _same(t_j, t_short):
                w += np.float32(1e-6)
            den += w
            w *= np.float32(1.0 / t_j)
            cv2.accumulateProduct(cv2.pow(L_j, 2.2), w if pc else _planes3(w, w3), num)  # num += w · H_j
        np.maximum(den, np.float32(1e-12), out=den)
        H = cv2.divide(num, den if pc else _planes3(den, w3), dst=num)
        if pc:  # the light merged, for the noise filter: the channels' mean
            den = cv2.transform(den, np.full((1, 3), 1.0 / 3.0, np.float32))
        # A clipped reference bounds the radiance from below.
        np.maximum(H, H_ref, out=H, where=L_ref >= np.float32(cfg.sat_end))
        if M is not None:  # H = M·H_ref + (1 − M)·H_merge
            H_ref -= H
            H_ref *= M
            H += H_ref
        if cfg.denoise <= 0:
            return H, 1.0
        if cfg.denoise_local:  # per pixel, smoothed over about the filter's reach
            merged_px = cv2.blur(den, (2 * cfg.denoise_px + 1,) * 2)
            merged_px *= np.float32(1.0 / t_ref ** cfg.snr_power)
            return H, np.maximum(merged_px, np.float32(1.0), out=merged_px)
        return H, max(float(np.median(den[::4, ::4])) / (t_ref ** cfg.snr_power), 1.0)

    def _unwarped_where_better(self, frame: np.ndarray, mat: np.ndarray | None, L_j: np.ndarray, agree: np.ndarray,
                               clipped: np.ndarray, moved: tuple[slice, slice] | None,
                               moved_mask: np.ndarray | None, g_ref: np.ndarray, t_j: float, t_ref: float) -> None:
        """Where the reference is clipped its flow to a neighbour was not measured but
        inferred (the same-exposure pair's motion, or filled in from around), and near a
        moving object that inference carries the object's motion onto the background behind
        it: the warped neighbour shows the object where the reference saw a light too bright
        to record, every neighbour disagrees, and the merge falls back to the clip level, far
        too dark (the longest reference of a 1:4:16 cycle on the dynamic split). The other
        hypothesis there is that nothing moved but the camera, which preprocess already
        removed: the neighbour unwarped. Each clipped pixel keeps whichever agrees better
        with the clip (a clipped reference agrees with anything at least as bright); ``L_j``
        and ``agree`` change in place. Only where the flow moved the neighbour (``moved_mask``,
        with a global transform ``mat``; else where the warped copy differs), inside the box
        ``moved``: elsewhere the warped neighbour is the unwarped one. The box around those
        pixels is the same whatever the remap's box, so the output is too, bit for bit."""
        if moved is None:
            return
        sub = _sub_box(clipped[moved], moved)  # the clipped pixels' box
        if sub is None:
            return
        if moved_mask is not None:
            inside = clipped[sub] & moved_mask[sub]
        else:  # where the flow moved it (the box's edges may not have moved): any channel differs
            diff = cv2.absdiff(L_j[sub], np.asarray(frame[sub], np.float32))
            inside = clipped[sub] & (cv2.cvtColor(diff, cv2.COLOR_RGB2HSV)[..., 2] > 0)  # V = max(R, G, B)
        core = _sub_box(inside, sub)
        if core is None:
            return
        h, w = clipped.shape
        pad = self.cfg.ghost_blur_px  # the agreement's box filter must see the same pixels as on the whole frame
        y0, y1 = max(0, core[0].start - pad), min(h, core[0].stop + pad)
        x0, x1 = max(0, core[1].start - pad), min(w, core[1].stop + pad)
        box = (slice(y0, y1), slice(x0, x1))
        if mat is None:
            L0 = np.asarray(frame[box], np.float32)
        else:  # bicubic, as preprocess would have warped it, into the box only
            m = np.array(mat, np.float64).reshape(2, 3)
            m[:, 2] -= (x0, y0)
            L0 = warp(np.asarray(frame, np.float32), m, (y1 - y0, x1 - x0), interpolation=cv2.INTER_CUBIC)
        agree0 = self._agreement(_grey(L0), g_ref[box], t_j, t_ref)
        a = agree[box]
        use = np.zeros((y1 - y0, x1 - x0), bool)  # the margin only gave the filter its context
        inner = (slice(core[0].start - y0, core[0].stop - y0), slice(core[1].start - x0, core[1].stop - x0))
        use[inner] = clipped[core] & (agree0[inner] > a[inner] + np.float32(1e-3))  # clearly better, not by rounding
        cv2.copyTo(L0, use.view(np.uint8), L_j[box])
        np.copyto(a, agree0, where=use)

    def flows(self, frames: np.ndarray, exposures: Sequence[float], ref: int,
              nbrs: Sequence[int] | None = None) -> np.ndarray:
        """Reference→neighbour displacements (k, H, W, 2) in pixels, ``ref(p) ≈ frame_j(p + f(p))``.

        The same exposure-matched DIS flows the merge uses (with the same-exposure pair's
        motion in clipped areas); the DIS-flow CoarseNet variant (design §4) takes them as
        its alignment. ``nbrs`` defaults to every other frame of the window, in order.
        """
        check_window(frames, exposures, ref)
        nbrs = [j for j in range(len(exposures)) if j != ref] if nbrs is None else list(nbrs)
        maps = _Flows(self, frames, exposures, ref).maps(nbrs)
        h, w = frames.shape[1:3]
        gx, gy = _grid(h, w)
        out = np.empty((len(nbrs), h, w, 2), np.float32)
        for k, j in enumerate(nbrs):
            out[k, ..., 0] = maps[j][..., 0] - gx
            out[k, ..., 1] = maps[j][..., 1] - gy
        return out

    @staticmethod
    def neighbours(exposures: Sequence[float], ref: int, same_exposure: bool = False) -> list[int]:
        """The nearest frame on each side for every exposure other than the reference's
        (and for the reference's own exposure too, with ``same_exposure``)."""
        t_ref = exposures[ref]
        out: list[int] = []
        for side in (range(ref - 1, -1, -1), range(ref + 1, len(exposures))):
            seen: list[float] = [] if same_exposure else [t_ref]
            for j in side:
                t = exposures[j]
                if any(_same(t, s) for s in seen):
                    continue
                seen.append(t)
                out.append(j)
        return out

    def _weight(self, L: np.ndarray, t: float) -> np.ndarray:
        """t^p times a smooth roll-off to 0 as the brightest channel saturates; (H, W)."""
        return self._rolloff(cv2.cvtColor(L, cv2.COLOR_RGB2HSV)[..., 2], t)  # V = max(R, G, B), fast

    def _weight_rgb(self, L: np.ndarray, t: float) -> np.ndarray:
        """:meth:`_weight` per colour channel, (H, W, 3): a channel that clips drops out alone."""
        return self._rolloff(L, t)

    def _rolloff(self, v: np.ndarray, t: float) -> np.ndarray:
        cfg = self.cfg
        x = np.subtract(np.float32(cfg.sat_end), v, dtype=np.float32)  # in place from here: no temporaries
        x *= np.float32(1.0 / (cfg.sat_end - cfg.sat_start))
        np.clip(x, 0.0, 1.0, out=x)
        y = np.multiply(x, np.float32(-2.0))  # smoothstep x²(3 − 2x), times t^p
        y += np.float32(3.0)
        y *= x
        y *= x
        y *= np.float32(t**cfg.snr_power)
        return y

    def _agreement(self, g_j: np.ndarray, g_ref: np.ndarray, t_j: float, t_ref: float,
                   refs: dict[float, np.ndarray] | None = None) -> np.ndarray:
        """(H, W): ≈1 where neighbour and reference agree at the brighter exposure, → 0 where not.
        ``refs`` caches the exposure-matched reference across the neighbours of one window."""
        cfg = self.cfg
        bright = max(t_ref, t_j)
        a = None if refs is None else refs.get(bright)
        if a is None:
            a = np.minimum(g_ref * _up(bright, t_ref), np.float32(1.0))
            if refs is not None:
                refs[bright] = a
        b = g_j * _up(bright, t_j)
        np.minimum(b, np.float32(1.0), out=b)
        d = cv2.blur(cv2.absdiff(a, b), (cfg.ghost_blur_px, cfg.ghost_blur_px))
        # The darker frame's noise, amplified by the exposure match, widens the tolerance.
        d *= np.float32(1.0 / (cfg.ghost_tol * _noise_gain(t_ref, t_j)))
        d *= d
        np.negative(d, out=d)
        return np.exp(d, out=d)


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates (H, W) float32, read-only: made once per image size, not per window."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def _planes3(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W) → (H, W, 3), each channel a copy (into ``out`` if given): OpenCV's per-element
    products with an RGB image are several times faster than NumPy's broadcast of ``x[..., None]``."""
    return cv2.merge((x, x, x), dst=out)


def _resample(L: np.ndarray, m: np.ndarray, moved: np.ndarray | None) -> np.ndarray:
    """A neighbour through its composed map (global warp, then flow): bicubic, as preprocess
    would have warped it (bilinear blurs static texture: -0.5 dB PSNR-μ on the static split);
    where the flow moved it, bilinear, as the flow's resampling of the warped frame was
    (there a second interpolation smoothed the noise, worth 0.1-0.5 dB on the dynamic split)."""
    out = cv2.remap(L, m, None, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    np.clip(out, 0.0, 1.0, out=out)
    if moved is not None:  # bilinear only inside the box around what moved: same pixels, less work
        x, y, w, h = cv2.boundingRect(moved.view(np.uint8))
        box = (slice(y, y + h), slice(x, x + w))
        if w and h:
            lin = cv2.remap(L, np.ascontiguousarray(m[box]), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            cv2.copyTo(lin, moved[box].view(np.uint8), out[box])  # in place, in the box
    return out


def _remap_box(L: np.ndarray, m: np.ndarray | None, box: tuple[slice, slice] | None) -> np.ndarray:
    """``L`` through sampling map ``m``, which covers only ``box`` when given (outside it the
    flow is zero: the pixels are L's own, which a bilinear remap would return bit for bit);
    ``m`` None: L itself, unmoved."""
    if m is None:
        return L
    if box is None:
        return cv2.remap(L, m, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = L.copy()
    out[box] = cv2.remap(L, m, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def _moved_box(flow: np.ndarray, full: tuple[int, int]) -> tuple[slice, slice] | None:
    """The full-size (H, W) ``full`` box outside which ``flow`` (at working size), resized to
    full size bilinearly, is exactly zero; None if it is zero everywhere."""
    nz = cv2.bitwise_or(cv2.compare(flow[..., 0], 0.0, cv2.CMP_NE), cv2.compare(flow[..., 1], 0.0, cv2.CMP_NE))
    x, y, bw, bh = cv2.boundingRect(nz)
    if not bw or not bh:
        return None
    (h, w), (hs, ws) = full, flow.shape[:2]
    # a full-size pixel X reads working pixels floor(u) and floor(u) + 1, u = (X + 0.5)·ws/w − 0.5;
    # 2 px more on each side for the resize's fixed-point rounding
    x0, x1 = math.floor((x - 0.5) * w / ws - 0.5) - 2, math.ceil((x + bw + 0.5) * w / ws - 0.5) + 2
    y0, y1 = math.floor((y - 0.5) * h / hs - 0.5) - 2, math.ceil((y + bh + 0.5) * h / hs - 0.5) + 2
    return slice(max(0, y0), min(h, y1)), slice(max(0, x0), min(w, x1))


def _matrices(warps: Sequence[Sequence[float]], n: int) -> list[np.ndarray | None]:
    """Each frame's 2x3 onto the reference, None where it is the identity."""
    if len(warps) != n:
        raise ValueError(f"{len(warps)} warps for a window of {n} frames")
    mats = [np.asarray(m, np.float64).reshape(2, 3) for m in warps]
    return [None if is_identity(M) else M for M in mats]


class _Flows:
    """Flow fields of one window, on grey copies at most ``flow_max_px`` wide.

    ``mats``: the frames' global transforms when the frames are not warped yet; the greys
    are then warped at working size, and each sampling map is composed with the transform,
    so the neighbour is resampled once, from its own pixels."""

    def __init__(self, rec: ClassicalReconstructor, frames: np.ndarray, exposures: Sequence[float], ref: int,
                 mats: list[np.ndarray | None] | None = None):
        self.rec, self.cfg = rec, rec.cfg
        self.mats = mats
        self.moved: dict[int, np.ndarray] = {}  # full-size masks where a neighbour's flow is not zero
        self.boxes: dict[int, tuple[slice, slice] | None] = {}  # what maps(boxed=True) covers
        self.frames, self.t, self.ref = frames, [float(t) for t in exposures], ref
        self.full = frames.shape[1:3]
        h, w = self.full
        self.s = min(1.0, self.cfg.flow_max_px / max(h, w))
        self.size = (max(1, round(w * self.s)), max(1, round(h * self.s)))
        self._grey: dict[int, np.ndarray] = {}
        self._pairs: dict[tuple[int, int], np.ndarray] = {}

    def maps(self, nbrs: list[int], boxed: bool = False) -> dict[int, np.ndarray | None]:
        """Absolute sampling maps (H, W, 2) for ``cv2.remap`` of each neighbour onto the reference.

        ``boxed``: for a neighbour without a transform, the map covers only the box around
        where its flow moves anything (``self.boxes[j]``; None: nowhere, the neighbour is
        used as it is): the static rest of the frame costs no map and no remap."""
        h, w = self.full
        gx, gy = _grid(h, w)
        out: dict[int, np.ndarray | None] = {}
        for j in nbrs:
            flow = self._flow_to(j)
            M = self.mats[j] if self.mats is not None else None
            box = None
            if M is not None:
                moved = (np.abs(flow[..., 0]) + np.abs(flow[..., 1])) > 0
                if moved.any():
                    self.moved[j] = cv2.resize(moved.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            elif boxed:
                box = self.boxes[j] = _moved_box(flow, (h, w))
                if box is None:
                    out[j] = None
                    continue
            if self.s < 1.0:
                flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
                flow *= np.float32(1.0 / self.s)
            if box is not None:
                flow = np.ascontiguousarray(flow[box])
            flow[..., 0] += gx if box is None else gx[box]
            flow[..., 1] += gy if box is None else gy[box]
            if M is not None:  # the map is in the reference's frame: back into frame j's own pixels
                flow = cv2.transform(flow, invert(M).astype(np.float32))
            out[j] = flow
        return out

    def moved_region(self, j: int) -> tuple[slice, slice] | None:
        """The full-size box where neighbour j's flow moved anything (after ``maps``); None: nowhere."""
        if j in self.moved:
            return _sub_box(self.moved[j], (slice(0, self.full[0]), slice(0, self.full[1])))
        if j in self.boxes:
            return self.boxes[j]
        return None if self.mats is not None else (slice(0, self.full[0]), slice(0, self.full[1]))

    def grey(self, i: int) -> np.ndarray:
        """Working-size grey of frame i, float32 in [0, 1]."""
        if i not in self._grey:
            g = _grey(np.asarray(self.frames[i], np.float32))
            if self.s < 1.0:
                g = cv2.resize(g, self.size, interpolation=cv2.INTER_AREA)
            M = self.mats[i] if self.mats is not None else None
            if M is not None:  # onto the reference, at working size
                g = warp(g, scaled(M, self.s), g.shape, interpolation=cv2.INTER_LINEAR)
            self._grey[i] = g
        return self._grey[i]

    def _flow_to(self, j: int) -> np.ndarray:
        """Working-size flow f with ref(x) ≈ frame_j(x + f(x))."""
        cfg, ref = self.cfg, self.ref
        if min(self.size) < _MIN_FLOW_PX:  # DIS needs a few patches; global alignment only
            return np.zeros((self.size[1], self.size[0], 2), np.float32)
        bright = max(self.t[ref], self.t[j])
        a = _u8(self.grey(ref) * _up(bright, self.t[ref]))
        b = _u8(self.grey(j) * _up(bright, self.t[j]))
        flow = self.rec._dis.calc(a, b, None)
        if cfg.zero_bias > 0:
            flow *= _flow_needed(flow, a, b, cfg.zero_bias * _noise_gain(self.t[ref], self.t[j]))[..., None]
        valid = cv2.erode((a < np.uint8(round(255 * cfg.flow_sat))).astype(np.uint8), np.ones((5, 5), np.uint8))
        p = self._partner(j) if cfg.pair_flow else None
        dark = cfg.pair_flow_dark and self.t[ref] < self.t[j] and not _same(self.t[ref], self.t[j])
        if p is not None and dark:
            flow = _better_flow(flow, self._paired(j, p), a, b, cfg.pair_flow_window)
        if valid.all():
            return flow
        valid = valid.astype(bool)[..., None]
        fill = _fill_from_valid(flow, valid[..., 0]) if p is None else self._paired(j, p)
        return np.where(valid, flow, fill)

    def _paired(self, j: int, p: int) -> np.ndarray:
        """Working-size ref -> j flow from the j -> p motion, assuming it is constant: (j - ref)
        frames of (p - j) frames' motion."""
        return self._pair_flow(j, p) * np.float32((j - self.ref) / (p - j))

    def _partner(self, j: int) -> int | None:
        """The frame nearest the reference on its other side with j's exposure, if any."""
        ref = self.ref
        side = range(ref + 1, len(self.t)) if j < ref else range(ref - 1, -1, -1)
        return next((k for k in side if _same(self.t[k], self.t[j])), None)

    def _pair_flow(self, j: int, p: int) -> np.ndarray:
        """Flow on j's grid from j to p (same exposure), zeroed where not needed; cached both ways."""
        key = (min(j, p), max(j, p))
        if key not in self._pairs:
            a, b = _u8(self.grey(key[0])), _u8(self.grey(key[1]))
            flow = self.rec._dis.calc(a, b, None)
            if self.cfg.zero_bias > 0:
                flow *= _flow_needed(flow, a, b, self.cfg.zero_bias)[..., None]
            self._pairs[key] = flow
        # Evaluated at the reference's pixel, the j->p and p->j motions are opposite.
        return self._pairs[key] if j == key[0] else -self._pairs[key]


def _flow_needed(flow: np.ndarray, a: np.ndarray, b: np.ndarray, bias: float) -> np.ndarray:
    """(H, W) in [0, 1]: 0 where the unwarped ``b`` matches ``a`` about as well as the warped one.

    ``bias`` is in grey units ([0, 1]): how much lower the flow must bring the local mean
    absolute difference before it is trusted.
    """
    k = (7, 7)
    e_flow = _warp_error(a, b, flow, k)
    e_zero = cv2.blur(cv2.absdiff(a, b).astype(np.float32), k)
    keep = (e_zero - e_flow) * np.float32(1.0 / (255.0 * bias)) - np.float32(1.0)
    np.clip(keep, 0.0, 1.0, out=keep)
    return cv2.blur(keep, k)


def _better_flow(flow: np.ndarray, other: np.ndarray, a: np.ndarray, b: np.ndarray, window: int) -> np.ndarray:
    """Per pixel, ``flow`` or ``other``: whichever warps ``b`` closer to ``a`` in mean absolute
    difference over ``window``² pixels (the noise of a brightened dark frame averages out)."""
    k = (window, window)
    return np.where((_warp_error(a, b, other, k) < _warp_error(a, b, flow, k))[..., None], other, flow)


def _warp_error(a: np.ndarray, b: np.ndarray, flow: np.ndarray, k: tuple[int, int]) -> np.ndarray:
    """Mean absolute difference of uint8 greys ``a`` and ``b`` warped by ``flow`` (a(x) vs
    b(x + flow(x))) over a ``k`` box, float32 (H, W)."""
    gx, gy = _grid(*a.shape)
    bw = cv2.remap(b, flow[..., 0] + gx, flow[..., 1] + gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.blur(cv2.absdiff(a, bw).astype(np.float32), k)


def _sub_box(mask: np.ndarray, box: tuple[slice, slice]) -> tuple[slice, slice] | None:
    """The box (full-frame slices) around the true pixels of ``mask``, a crop at ``box``; None: none."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))
    if not (w and h):
        return None
    return (slice(box[0].start + y, box[0].start + y + h), slice(box[1].start + x, box[1].start + x + w))


def _fill_from_valid(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Flow for the invalid pixels from the nearest valid motion (normalised convolution at
    growing scales, on a grid 8× coarser); far from any valid pixel, 0."""
    h, w = valid.shape
    f = 8
    size = (max(1, w // f), max(1, h // f))
    c = cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    fc = cv2.resize(flow * valid[..., None], size, interpolation=cv2.INTER_AREA)
    fill = np.zeros(fc.shape, np.float32)
    todo = np.ones(c.shape, bool)
    for sigma in (2.0, 8.0, 32.0):
        bc = cv2.GaussianBlur(c, (0, 0), sigma)
        bf = cv2.GaussianBlur(fc, (0, 0), sigma)
        ok = todo & (bc > 0.02)
        fill[ok] = bf[ok] / bc[ok][:, None]
        todo &= ~ok
    return cv2.resize(fill, (w, h), interpolation=cv2.INTER_LINEAR)


def _up(bright: float, t: float) -> np.float32:
    """Gamma-domain factor that brings exposure t to the brighter exposure."""
    return np.float32((bright / t) ** (1 / 2.2))


def _noise_gain(t_a: float, t_b: float) -> float:
    """How much the exposure match amplifies the darker frame's noise, softened."""
    return 0.5 + 0.5 * (max(t_a, t_b) / min(t_a, t_b)) ** (1 / 2.2)


def _cycle_length(exposures: Sequence[float]) -> int:
    """How many distinct exposures the window holds."""
    distinct: list[float] = []
    for t in exposures:
        if not any(_same(float(t), d) for d in distinct):
            distinct.append(float(t))
    return len(distinct)


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= EXPOSURE_TOL * max(a, b)


def _grey(L: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(L, cv2.COLOR_RGB2GRAY)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
