"""Give a network the learned noise filter another one trained (``NetConfig.learned_denoise``).

The filter sees only the final HDR, its bilateral-filtered copy and the noise level, not the
exposures or the window, so one trained behind the two-exposure network also serves the
three-exposure one; this copies it rather than training it twice on a CPU.

    python -m training.graft --noise-from out/train/dnw1/best.safetensors \\
        --into infer/weights/hdrnet-3exp.safetensors --out out/hdrnet-3exp-dn.safetensors
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from infer.net.model import HDRNet, load_weights, save_weights


def graft_noise(noise_from: str | Path, into: str | Path, out: str | Path) -> Path:
    """``into``'s network with ``noise_from``'s noise filter, saved to ``out`` (its meta says
    where the filter came from). Raises ValueError when ``noise_from`` has none."""
    donor, net = load_weights(noise_from), load_weights(into)
    if donor.noise is None:
        raise ValueError(f"{noise_from}: this network has no learned noise filter (learned_denoise = false)")
    model = HDRNet(replace(net.cfg, learned_denoise=True, denoise_width=donor.cfg.denoise_width,
                           denoise_arch=donor.cfg.denoise_arch))
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("noise.")}
    state.update({f"noise.{k}": v for k, v in donor.noise.state_dict().items()})
    model.load_state_dict(state)
    keep = ("command", "init", "stage", "steps", "train_time_s", "date")
    meta = {**net.meta, "noise_filter_from": {"file": str(noise_from), **{k: donor.meta[k] for k in keep if k in donor.meta}}}
    return save_weights(model, out, meta)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise-from", required=True, help="weights whose noise filter to take")
    p.add_argument("--into", required=True, help="weights that get it")
    p.add_argument("--out", required=True, help="where to write the result")
    a = p.parse_args(argv)
    print(graft_noise(a.noise_from, a.into, a.out))


if __name__ == "__main__":
    main()
