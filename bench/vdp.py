"""ColorVideoVDP (JOD) of reconstructed sequences against their ground truth.

Run by the interpreter of `.venv-vdp/` (`make vdp`), not the project's: the `cvvdp` package
needs torchvision, and the only torchvision wheels on this disk are CUDA builds of another
torch release than the project's pin, so the metric lives in its own environment (on the
CPU; nothing is downloaded). bench/quality.py writes one .npz per sequence and calls this.

Input: each .npz holds "gt" and one array per method, (frames, H, W, 3) linear values
normalised as for PSNR-μ (1.0 = the brightest value the shortest exposure records, clipped
to [0, 1]). They are shown on cvvdp's `standard_hdr_linear` display: 1.0 is its peak.
Output (stdout): one JSON object {file: {method: JOD}}.

    .venv-vdp/bin/python bench/vdp.py seq0.npz seq1.npz [--fps 30]
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pycvvdp
import torch

DISPLAY = "standard_hdr_linear"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--fps", type=float, default=30.0, help="the sequences' frame rate")
    a = ap.parse_args()
    logging.disable(logging.WARNING)  # cvvdp warns about its own defaults on every call
    torch.set_num_threads(2)
    metric = pycvvdp.cvvdp(display_name=DISPLAY, device=torch.device("cpu"), quiet=True)
    peak = float(metric.display_photometry.get_peak_luminance())
    out: dict[str, dict[str, float]] = {}
    for f in a.files:
        data = np.load(f)
        gt = torch.from_numpy(data["gt"].astype(np.float32) * peak)
        out[f] = {}
        for m in data.files:
            if m == "gt":
                continue
            test = torch.from_numpy(data[m].astype(np.float32) * peak)
            with torch.no_grad():
                jod, _ = metric.predict(test, gt, dim_order="FHWC", frames_per_second=a.fps)
            out[f][m] = float(jod)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
