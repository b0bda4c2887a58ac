"""The coarse-to-fine network behind the reconstructor interface, windowed or streaming.

Windowed (the paper): every window runs CoarseNet on the three windows centred on frames
i-1, i, i+1, then RefineNet. Streaming: consecutive windows overlap, so each coarse HDR
is computed once, cached under the seqs of the CoarseNet window that made it, and reused
by later windows after warping it by the global similarity the window message carries
(identity when preprocess did not align). The centre's own coarse HDR is reused only
unwarped: the output keeps it wherever the reference is well exposed, and a resampled
copy would blur it (with a moving camera a frame then costs two CoarseNet passes, not
one). With identity warps both give the same result. A frame's RefineNet features are
cached likewise and reused while its coarse HDR needs no warping (a static camera, or
alignment off), so each window then runs CoarseNet and the feature extractor once, on its
newest frame.

Large frames run in overlapping tiles (``tile``), the same way windowed and streaming, so
memory stays bounded at the camera's full 4096×2168.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from infer.net.refine import RefineFeatures
from infer.classical import ClassicalConfig, ClassicalReconstructor
from infer.method import PRECISIONS, check_window
from infer.net.noise import from_y, to_y
from infer.window_flows import WindowFlows

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"


def default_weights(exposures: int) -> Path:
    return WEIGHTS_DIR / f"hdrnet-{exposures}exp.safetensors"


def _exposures_in_window(n: int) -> int:
    if n == 5:
        return 2
    if n == 7:
        return 3
    raise ValueError(f"the network takes windows of 5 (2 exposures) or 7 (3 exposures) frames, got {n}")


def network_device(name: str | None) -> torch.device:
    """Where the network runs: ``name`` (e.g. "cpu", "cuda:1"), or CUDA when present."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _identity(warp: Sequence[float]) -> bool:
    return bool(np.allclose(np.asarray(warp, np.float64).reshape(2, 3), [[1, 0, 0], [0, 1, 0]]))


# Frames above AUTO_TILE_PIXELS run in tiles of AUTO_TILE pixels, each seeing TILE_MARGIN more
# on every side: activations scale with the area (~2.6 KiB/pixel for the shipped network on a
# CPU), so the camera's 4096×2168 would need ~23 GiB whole and needs ~4 GiB tiled.
AUTO_TILE_PIXELS = 2_200_000
AUTO_TILE = 1024
TILE_MARGIN = 64
GATE_ROWS = 256  # the classical gate runs on strips of this many rows
TILE_MULTIPLE = 16  # HDRNet.multiple: tiles and margins keep the padded grid


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that has it (fp16 on older ones), fp32 on the CPU.

    On a CPU with native bf16 ``bf16`` is faster (the development machine's EPYC: 0.58 s
    against 0.88 s per 512×288 window, shipped network), but CPUs without it emulate it
    slowly, so it is asked for rather than assumed."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device, not {device}; use bf16 or fp32")
    return precision


NAMES = ("net", "net-refine", "coarse")


class NetReconstructor:
    """``net``: the network as its weights file says (``NetConfig.refine``: CoarseNet +
    RefineNet, or CoarseNet alone; then the classical gate, if it has one); ``net-refine``:
    with RefineNet whatever the file says; ``coarse``: CoarseNet alone, never gated (ablations).

    ``precision``: the autocast dtype of the network's convolutions (outputs are float32
    either way). ``channels_last``: the model's weights in the layout oneDNN's CPU kernels
    and CUDA's tensor cores want (the same sums in another order: float noise; CoarseNet
    with its gate at 1536x813 on 2 CPU cores 1310 -> 1206 ms a frame).
    ``tile``: run CoarseNet and RefineNet on tiles of this many pixels (each with
    ``tile_margin`` more context on every side, cropped off), so memory stays bounded at any
    frame size; 0 never tiles, None tiles frames above ``AUTO_TILE_PIXELS``. Seams differ
    from whole-frame inference only where the network looks further than the margin.
    ``denoise``: filter the output as the classical merge filters its own (``infer.denoise``,
    ``ClassicalConfig.denoise``), so the methods compare like for like; then, with
    ``learned_denoise`` and weights that have one, the network's learned correction of it.
    ``classical``: that merge's settings (the gate's input and the filter's), if not its defaults.
    """

    def __init__(
        self,
        name: str = "net",
        weights: dict[int, str | Path] | None = None,
        device: str | None = None,
        stream: bool = True,
        precision: str = "auto",
        tile: int | None = None,
        tile_margin: int = TILE_MARGIN,
        denoise: bool = True,
        classical: ClassicalConfig | None = None,
        channels_last: bool = True,
        learned_denoise: bool = True,
    ) -> None:
        if name not in NAMES:
            raise ValueError(f"NetReconstructor is one of {NAMES}, got {name!r}")
        for what, v in (("tile", tile or 0), ("tile_margin", tile_margin)):
            if v < 0 or v % TILE_MULTIPLE:
                raise ValueError(f"{what} must be a non-negative multiple of {TILE_MULTIPLE}, got {v}")
        self.tile, self.tile_margin = tile, tile_margin
        self.denoise = denoise
        self.learned_denoise = learned_denoise
        self.name = name
        self.weights = {n: Path(p) for n, p in (weights or {}).items()}
        self.device = network_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.stream = stream
        self.channels_last = channels_last
        self._models: dict[int, torch.nn.Module] = {}
        missing = [self._path(n) for n in (2, 3) if not self._path(n).is_file()]
        if len(missing) == 2:  # fail before the stream starts, not on every window
            raise FileNotFoundError(
                f"no trained network weights ({missing[0]}, {missing[1]}): the shipped ones live in "
                f"{WEIGHTS_DIR}; train others with `hdrstream train`, or use --method classical"
            )
        self._cache: dict[tuple[int, ...], tuple[int, np.ndarray]] = {}  # coarse-window seqs -> (ref seq, HDR)
        self._features: dict[tuple[int, ...], RefineFeatures] = {}  # coarse-window seqs -> RefineNet features
        self.coarse_runs = 0
        self.feature_runs = 0
        self.tiles_run = 0  # tiled network calls (for tests and logs)
        self._dis: WindowFlows | None = None  # for networks of the DIS-flow variant
        self.classical = ClassicalReconstructor(classical)  # the gate's merge and the noise filter

    # -- model -----------------------------------------------------------------------

    def model(self, exposures: int):
        if exposures not in self._models:
            from infer.net.model import load_weights

            path = self._path(exposures)
            if not path.is_file():
                raise FileNotFoundError(
                    f"no trained weights for {exposures} exposures at {path} (the shipped ones live in "
                    f"{WEIGHTS_DIR}; train others with `hdrstream train`, or use --method classical)"
                )
            model = load_weights(path).to(self.device).eval()
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._models[exposures] = model
            log.info("loaded %s (%s)", path, self._models[exposures].meta.get("summary", ""))
        return self._models[exposures]

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _path(self, exposures: int) -> Path:
        return self.weights.get(exposures, default_weights(exposures))

    def _tensors(self, frames: np.ndarray, exposures: Sequence[float], multiple: int):
        n, h, w, _ = frames.shape
        ph, pw = (-h) % multiple, (-w) % multiple
        x = torch.from_numpy(np.array(frames, np.float32)).permute(0, 3, 1, 2)  # a copy: windows arrive read-only
        if ph or pw:  # replicate-pad to the network's multiple, crop back after
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        t_min = min(exposures)
        expo = torch.tensor([t / t_min for t in exposures], dtype=torch.float32)
        return x[None].to(self.device), expo[None].to(self.device), t_min

    @staticmethod
    def _to_numpy(hdr: torch.Tensor, h: int, w: int, t_min: float) -> np.ndarray:
        out = hdr[0, :, :h, :w].permute(1, 2, 0).float().cpu().numpy()
        return np.ascontiguousarray(out / np.float32(t_min), np.float32)  # back to lin/t in seconds

    def _flows(self, net, frames: np.ndarray, exposures: Sequence[float], j: int) -> torch.Tensor | None:
        """(1, C-1, 2, H', W') DIS flows of the CoarseNet window centred on j, or None when
        the network has its own flow network."""
        if net.cfg.flow != "dis":
            return None
        if self._dis is None:
            self._dis = WindowFlows()
        x = torch.from_numpy(self._dis(frames, exposures, j, net.cfg.coarse_frames))  # (C-1, 2, H, W)
        h, w = frames.shape[1:3]
        ph, pw = (-h) % net.multiple, (-w) % net.multiple
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        return x[None].to(self.device)

    # -- windowed --------------------------------------------------------------------

    @torch.inference_mode()
    def reconstruct(self, frames: np.ndarray, exposures: Sequence[float], ref: int) -> np.ndarray:
        """frames (N, H, W, 3) L in [0, 1] aligned to ``ref`` (the centre); returns H = lin/t."""
        check_window(frames, exposures, ref)
        n = frames.shape[0]
        if ref != n // 2:
            raise ValueError(f"the network needs the reference at the window centre, got {ref} of {n}")
        net = self.model(_exposures_in_window(n))
        with self._autocast():
            hdr = self._windowed(net, frames, exposures, ref)
        return self._finish(net, frames, exposures, ref, hdr)

    def _coarse_only(self, net) -> bool:
        """Stop at CoarseNet's HDR of the reference's window (no RefineNet)?"""
        return self.name == "coarse" or (self.name == "net" and not net.cfg.refine)

    def _centres(self, net, ref: int) -> tuple[int, ...]:
        """The frames whose CoarseNet windows this method runs."""
        if self._coarse_only(net):
            return (ref,)
        if not net.cfg.refine_fits:
            raise ValueError(f"{self.name}: these weights' CoarseNet window ({net.cfg.coarse_frames} frames) fills "
                             f"the window, so RefineNet cannot run on them; use --method net or coarse")
        return (ref - 1, ref, ref + 1)

    def _windowed(self, net, frames: np.ndarray, exposures: Sequence[float], ref: int) -> np.ndarray:
        h, w = frames.shape[1:3]
        x, expo, t_min = self._tensors(frames, exposures, net.multiple)
        half = net.cfg.coarse_frames // 2
        centres = self._centres(net, ref)
        coarse = [self._coarse(net, x, expo, self._flows(net, frames, exposures, j), j - half, j + half + 1)
                  for j in centres]  # what HDRNet.forward does, by stages, so that both can tile
        if self._coarse_only(net):
            return self._to_numpy(coarse[0], h, w, t_min)
        return self._to_numpy(self._refine(net, torch.stack(coarse, dim=1), x[:, ref], expo[:, ref - 1:ref + 2]),
                              h, w, t_min)

    def _coarse(self, net, x, expo, flows, a: int, b: int) -> torch.Tensor:
        """CoarseNet on window frames a..b-1 (tiled when the frame is large)."""
        return self._tiled(lambda xs, fs: net.coarse_forward(xs, expo[:, a:b], fs), x[:, a:b], flows)

    def _refine(self, net, coarse3, ldr_ref, expo3, feats: RefineFeatures | None = None) -> torch.Tensor:
        if feats is not None:
            return net.refine_forward(coarse3, ldr_ref, expo3, feats)["hdr"]
        return self._tiled(lambda c3, lr: net.refine_forward(c3, lr, expo3)["hdr"], coarse3, ldr_ref)

    def _tile_size(self, h: int, w: int) -> int:
        if self.tile is None:
            return AUTO_TILE if h * w > AUTO_TILE_PIXELS else 0
        return 0 if self.tile >= max(h, w) else self.tile

    def _tiled(self, fn, *tensors: torch.Tensor | None) -> torch.Tensor:
        """``fn(*tensors)`` over overlapping tiles of their last two dims, stitched."""
        h, w = next(t for t in tensors if t is not None).shape[-2:]
        size, m = self._tile_size(h, w), self.tile_margin
        if not size:
            return fn(*tensors)
        out = None
        for y0 in range(0, h, size):
            for x0 in range(0, w, size):
                y1, x1 = min(h, y0 + size), min(w, x0 + size)
                ya, xa, yb, xb = max(0, y0 - m), max(0, x0 - m), min(h, y1 + m), min(w, x1 + m)
                part = fn(*(None if t is None else t[..., ya:yb, xa:xb] for t in tensors))
                if out is None:
                    out = part.new_empty(part.shape[:-2] + (h, w))
                out[..., y0:y1, x0:x1] = part[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
        self.tiles_run += 1
        return out

    def _finish(self, net, frames: np.ndarray, exposures: Sequence[float], ref: int, hdr: np.ndarray) -> np.ndarray:
        """With a gate (``NetConfig.classical_gate``) the final HDR is blended with the
        classical merge of the same window; the "coarse" ablation is never gated. Then,
        with ``denoise``, filtered against the noise it keeps as the classical merge filters
        its own (after the gate, which was trained on the plain merge)."""
        if (net.gate is None or self.name == "coarse") and not self.denoise:
            return hdr
        merged, conf, agree, noise = self.classical.reconstruct_with_cues(frames, exposures, ref)
        if net.gate is not None and self.name != "coarse":
            hdr = self._gate(net, frames, ref, hdr, merged, conf, agree, np.float32(min(exposures)))
        if not self.denoise:
            return hdr
        filtered = self.classical.denoise(hdr, float(exposures[ref]), noise)
        if net.noise is None or not self.learned_denoise or self.name == "coarse" or noise is None or filtered is hdr:
            return filtered
        return self._learned_denoise(net, hdr, filtered, float(exposures[ref]), noise)

    def _learned_denoise(self, net, hdr: np.ndarray, filtered: np.ndarray, t_ref: float,
                         noise: float | np.ndarray) -> np.ndarray:
        """``NetConfig.learned_denoise``: the bilateral filter's output corrected by the network's
        NoiseNet, given the unfiltered HDR and the noise it keeps (y units, scalar or (H, W))."""
        t = torch.tensor([t_ref], dtype=torch.float32, device=self.device)
        sigma = np.array(np.broadcast_to(np.asarray(noise, np.float32), hdr.shape[:2]))
        args = [to_y(self._tensor(a)[None], t) for a in (filtered, hdr)]
        y = self._tiled(net.noise, *args, torch.from_numpy(sigma)[None, None].to(self.device))  # memory: as CoarseNet
        return from_y(y, t)[0].permute(1, 2, 0).float().cpu().numpy()

    def _gate(self, net, frames: np.ndarray, ref: int, hdr: np.ndarray, merged: np.ndarray, conf: np.ndarray,
              agree: np.ndarray, t_min: np.float32) -> np.ndarray:
        h = hdr.shape[0]
        out = np.empty_like(hdr)
        r = net.gate.radius
        for y0 in range(0, h, GATE_ROWS):  # in strips: full-resolution features of a 4K frame are large
            y1 = min(h, y0 + GATE_ROWS)
            ya, yb = max(0, y0 - r), min(h, y1 + r)
            cue = (agree[..., None],) if net.gate.motion_cue else ()
            args = [torch.from_numpy(np.array(a[ya:yb], np.float32)).permute(2, 0, 1)[None].to(self.device)
                    for a in (hdr * t_min, merged * t_min, conf[..., None], frames[ref], *cue)]
            blended, _ = net.gate(*args)
            out[y0:y1] = blended[0, :, y0 - ya:y1 - ya].permute(1, 2, 0).float().cpu().numpy()
        out /= t_min
        return out

    # -- streaming -------------------------------------------------------------------

    @torch.inference_mode()
    def reconstruct_stream(
        self,
        frames: np.ndarray,
        exposures: Sequence[float],
        ref: int,
        seqs: Sequence[int],
        warps: Sequence[Sequence[float]],
    ) -> np.ndarray:
        """Like :meth:`reconstruct`, reusing coarse HDRs of earlier windows of the stream.

        ``seqs[j]`` is the source seq at window position j and ``warps[j]`` the 2x3 that
        mapped that frame onto the reference (the window message's meta).
        """
        if not self.stream:
            return self.reconstruct(frames, exposures, ref)
        check_window(frames, exposures, ref)
        n = frames.shape[0]
        if ref != n // 2 or len(seqs) != n or len(warps) != n:
            raise ValueError("streaming needs the reference at the centre and seqs/warps for every frame")
        net = self.model(_exposures_in_window(n))
        with self._autocast():
            hdr = self._streamed(net, frames, exposures, ref, seqs, warps)
        return self._finish(net, frames, exposures, ref, hdr)

    def _streamed(self, net, frames: np.ndarray, exposures: Sequence[float], ref: int,
                  seqs: Sequence[int], warps: Sequence[Sequence[float]]) -> np.ndarray:
        n, h, w, _ = frames.shape
        x, expo, t_min = self._tensors(frames, exposures, net.multiple)
        half = net.cfg.coarse_frames // 2
        centres = self._centres(net, ref)
        position = {int(s): j for j, s in enumerate(seqs)}  # first occurrence is fine: same frame
        coarse, keys, as_cached = {}, {}, {}
        for j in centres:
            keys[j] = key = tuple(int(s) for s in seqs[j - half:j + half + 1])
            hit = self._cache.get(key)
            # The centre's coarse HDR is kept where the mask trusts it (eq. 4): reuse it only
            # when no resampling is needed; a warped (bilinear) copy would blur the output.
            if hit is not None and hit[0] in position and (j != ref or _identity(warps[position[hit[0]]])):
                coarse[j] = self._warped(hit[1], warps[position[hit[0]]])
                as_cached[j] = _identity(warps[position[hit[0]]])
                continue
            out = self._coarse(net, x, expo, self._flows(net, frames, exposures, j), j - half, j + half + 1)
            self.coarse_runs += 1
            # cached at the padded size: RefineNet must see exactly what the windowed path sees
            coarse[j] = out[0].permute(1, 2, 0).float().cpu().numpy()
            self._cache[key] = (int(seqs[ref]), coarse[j])
            self._features.pop(key, None)  # features of a replaced coarse HDR are stale
            as_cached[j] = True
        self._evict(int(seqs[ref]), n)
        if self._coarse_only(net):
            return np.ascontiguousarray(coarse[ref][:h, :w] / np.float32(t_min), np.float32)
        expo3 = expo[:, ref - 1:ref + 2]
        coarse3 = torch.stack([self._tensor(coarse[j]) for j in (ref - 1, ref, ref + 1)], dim=0)[None]
        if self._tile_size(*coarse3.shape[-2:]):  # tiles compute their own features
            return self._to_numpy(self._refine(net, coarse3, x[:, ref], expo3), h, w, t_min)
        parts = []
        for t, j in enumerate((ref - 1, ref, ref + 1)):
            # A frame's RefineNet features depend on its coarse HDR alone, so they are reused
            # whenever that HDR is the cached one unresampled (features of a warped HDR are not
            # the warped features); otherwise computed for this window only.
            f = self._features.get(keys[j]) if as_cached[j] else None
            if f is None:
                f = net.features(coarse3[:, t:t + 1], expo[:, j:j + 1], expo3)
                self.feature_runs += 1
                if as_cached[j]:
                    self._features[keys[j]] = f
            parts.append(f)
        hdr = self._refine(net, coarse3, x[:, ref], expo3, RefineFeatures.stack(parts))
        return self._to_numpy(hdr, h, w, t_min)

    def _tensor(self, img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).to(self.device)

    @staticmethod
    def _warped(img: np.ndarray, warp: Sequence[float]) -> np.ndarray:
        if _identity(warp):
            return img
        m = np.asarray(warp, np.float64).reshape(2, 3)
        h, w = img.shape[:2]
        return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _evict(self, ref_seq: int, n: int) -> None:
        """Drop coarse results no later window can use (bounded memory on endless streams)."""
        for key in [k for k, (a, _) in self._cache.items() if a < ref_seq - n]:
            del self._cache[key]
        # features serve only the windows whose frames i-1..i+1 hold their frame
        for key in [k for k in self._features if k[len(k) // 2] < ref_seq - 1]:
            del self._features[key]
