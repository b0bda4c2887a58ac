"""Start a wider network from a trained narrower one, computing exactly what it computed.

A capacity experiment from scratch spends its first hours relearning what the narrower
network already knows (issue 15: width 0.5 took 5,000 CPU steps to come within 0.2 dB of the
shipped width 0.25). Widened here, CoarseNet's weight head keeps every trained filter in the
first channels of each layer; the new channels get a fresh initialisation and every weight
that reads them starts at zero, so the wider head's output is the narrower one's at step 0
and the new channels learn from the first step on (a zero read weight still gets gradient).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from infer.net.model import HDRNet

log = logging.getLogger(__name__)

# WeightNet's layers and, for each, the layers whose outputs its input concatenates, in order
# (None: the network's input, whose width does not change). It mirrors WeightNet.forward.
WEIGHT_HEAD_INPUTS: dict[str, list[str] | None] = {
    "enc1": None, "down1": ["enc1"], "enc2": ["down1"], "down2": ["enc2"], "enc3": ["down2"],
    "down3": ["enc3"], "up3": ["down3"], "dec3": ["up3", "enc3"], "up2": ["dec3"],
    "dec2": ["up2", "enc2"], "up1": ["dec2"], "conv_last": ["up1", "enc1"],
}


def widen_state(narrow: dict[str, Tensor], wide: HDRNet) -> dict[str, Tensor]:
    """A state dict for ``wide`` from a narrower network's: tensors of the same shape are
    taken as they are, CoarseNet's weight head is widened without changing its output, and
    an unused RefineNet whose shape differs keeps ``wide``'s initialisation.

    Raises ValueError when ``narrow`` does not fit (a layer of it has more channels) or when
    a part the network runs would change (a learned flow, a RefineNet in use).
    """
    state = {k: v.clone() for k, v in wide.state_dict().items()}
    head = wide.coarse.weight
    prefix = "coarse.weight."
    out_narrow = {name: _out_channels(narrow[f"{prefix}{name}.weight"], getattr(head, name))
                  for name in WEIGHT_HEAD_INPUTS}
    for name, sources in WEIGHT_HEAD_INPUTS.items():
        layer = getattr(head, name)
        w_n, b_n = narrow[f"{prefix}{name}.weight"], narrow[f"{prefix}{name}.bias"]
        w = state[f"{prefix}{name}.weight"]
        transposed = isinstance(layer, nn.ConvTranspose2d)
        if transposed:  # (in, out, kh, kw): handle as (out, in, kh, kw)
            w, w_n = w.transpose(0, 1), w_n.transpose(0, 1)
        o = w_n.shape[0]
        if o > w.shape[0] or w_n.shape[2:] != w.shape[2:]:
            raise ValueError(f"widen: {prefix}{name} {tuple(w_n.shape)} does not fit in {tuple(w.shape)}")
        if sources is None:
            if w_n.shape[1] != w.shape[1]:
                raise ValueError(f"widen: {prefix}{name} reads {w_n.shape[1]} input channels, not {w.shape[1]}")
            w[:o] = w_n
        else:
            at_n = at_w = 0
            for src in sources:
                n_src, w_src = out_narrow[src], _out_channels(state[f"{prefix}{src}.weight"], getattr(head, src))
                w[:o, at_w:at_w + n_src] = w_n[:, at_n:at_n + n_src]
                w[:, at_w + n_src:at_w + w_src] = 0.0  # nothing reads the new channels yet
                at_n, at_w = at_n + n_src, at_w + w_src
            if at_n != w_n.shape[1] or at_w != w.shape[1]:
                raise ValueError(f"widen: {prefix}{name}'s inputs do not match WEIGHT_HEAD_INPUTS")
        state[f"{prefix}{name}.bias"][:o] = b_n
    fresh = []
    for k, v in narrow.items():
        if k.startswith(prefix):
            continue
        if k in state and state[k].shape == v.shape:
            state[k] = v.clone()
        else:
            fresh.append(k)
    used = [k for k in fresh if k.startswith("coarse.") or (k.startswith("refine.") and wide.cfg.refine)]
    if used:
        raise ValueError(f"widen: only CoarseNet's weight head widens (flow='dis', refine=false); "
                         f"{len(used)} other tensors the network runs differ in shape ({used[0]}, ...)")
    if fresh:
        log.info("widen: %d tensors outside CoarseNet's weight head differ in shape and start fresh (%s, ...)",
                 len(fresh), fresh[0])
    return state


def _out_channels(weight: Tensor, layer: nn.Module) -> int:
    return weight.shape[1] if isinstance(layer, nn.ConvTranspose2d) else weight.shape[0]


def extend_window(state: dict[str, Tensor], wide: HDRNet, frames: int) -> dict[str, Tensor]:
    """A state dict for ``wide`` from one whose CoarseNet took windows of ``frames`` frames.

    The weight head's input and output hold one group per image (the centre, the warped
    neighbours, the unwarped neighbours, each in window order: 6 input and 3 output channels
    an image). Every trained group keeps its filters; a new image is not read yet (zero
    input weights) and its weight logits start at a constant -3, so that it enters the
    blend at ~5 % of its merge prior (exposure, saturation, agreement with the reference):
    close to the narrower network at step 0 (copying the nearer neighbour's logits instead
    started 0.15 dB further from it on the static validation set), and every new weight
    learns from the first step.
    """
    new = wide.cfg.coarse_frames
    if new <= frames or (new - frames) % 2:
        raise ValueError(f"extend_window: from {frames} to {new} frames is not a wider window")
    if state["coarse.weight.enc1.weight"].shape[1] != 6 * (2 * frames - 1):
        raise ValueError("extend_window: these weights read more than their images (motion edges); "
                         "widening such a window is not supported yet")
    half_o, half_n = frames // 2, new // 2
    offsets_o = [d for d in range(-half_o, half_o + 1) if d]
    offsets_n = [d for d in range(-half_n, half_n + 1) if d]
    # each old image's index in the new head: the centre, then its neighbours by offset
    kept = [0] + [1 + g * len(offsets_n) + offsets_n.index(d) for g in (0, 1) for d in offsets_o]
    ref = wide.state_dict()
    out = {k: v.clone() for k, v in state.items()}
    w_in, last = "coarse.weight.enc1.weight", "coarse.weight.conv_last"
    w, wl, bl = ref[w_in].clone().zero_(), ref[f"{last}.weight"].clone().zero_(), ref[f"{last}.bias"].clone().fill_(-3.0)
    for old, img in enumerate(kept):
        w[:, 6 * img:6 * img + 6] = state[w_in][:, 6 * old:6 * old + 6]
        wl[3 * img:3 * img + 3] = state[f"{last}.weight"][3 * old:3 * old + 3]
        bl[3 * img:3 * img + 3] = state[f"{last}.bias"][3 * old:3 * old + 3]
    out[w_in], out[f"{last}.weight"], out[f"{last}.bias"] = w, wl, bl
    for k, v in out.items():
        if k in ref and ref[k].shape != v.shape:
            raise ValueError(f"extend_window: {k} is {tuple(v.shape)}, the wider network's {tuple(ref[k].shape)}")
    return out


def add_zero_inputs(state: dict[str, Tensor], key: str, channels: int) -> dict[str, Tensor]:
    """A state dict whose conv ``key`` also reads ``channels`` new input channels (appended
    last), from one that did not: their weights start at zero, so the output is unchanged at
    step 0 and the new inputs learn from the first step (a new cue: the gate's motion cue,
    CoarseNet's motion edges)."""
    w = state[key]
    out = dict(state)
    out[key] = torch.cat((w, w.new_zeros(w.shape[0], channels, *w.shape[2:])), dim=1)
    return out
