"""The ``hdrstream`` command: demo, reconstruct, simulate, and each stage as a service.

This module is the one place that knows every stage: it builds them from arguments and
wires them with :mod:`hdrstream.pipeline` (embedded) or :mod:`hdrstream.service` (one
stage per process). Stage packages are imported lazily so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("hdrstream")

METHODS = ("classical", "reference", "net", "coarse")


def _add_sim_args(p: argparse.ArgumentParser, frames: int = 30) -> None:
    g = p.add_argument_group("simulated camera")
    g.add_argument("--width", type=int, default=640)
    g.add_argument("--height", type=int, default=360)
    g.add_argument("--frames", type=int, default=frames)
    g.add_argument("--exposures", type=int, choices=(2, 3), default=2, help="exposures in the cycle")
    g.add_argument("--ratios", type=str, default=None, help="e.g. 1,8 or 1,4,16 (defaults)")
    g.add_argument("--pixel-format", default="BayerRG8", choices=("RGB8", "BayerRG8", "BayerRG12"))
    g.add_argument("--scene", default="procedural", help="'procedural' or an .exr/.hdr image")
    g.add_argument("--sim-crf", default="gamma2.2", help="camera response the simulated camera applies")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--fps", type=float, default=30.0)
    g.add_argument("--realtime", action="store_true", help="pace frames at --fps")
    g.add_argument("--motion", type=float, default=1.0, help="camera motion scale (0 = static)")
    g.add_argument("--no-noise", action="store_true")


def _sim_config(args: argparse.Namespace):
    from capture.sim import SimConfig

    ratios = tuple(float(r) for r in args.ratios.split(",")) if args.ratios else None
    return SimConfig(
        width=args.width, height=args.height, frames=args.frames, exposures=args.exposures, ratios=ratios,
        pixel_format=args.pixel_format, fps=args.fps, realtime=args.realtime, seed=args.seed,
        scene=args.scene, crf=args.sim_crf, noise=not args.no_noise, motion=args.motion,
    )


def _add_pipeline_args(p: argparse.ArgumentParser, compare_default: str) -> None:
    g = p.add_argument_group("reconstruction")
    g.add_argument("--method", default="classical", choices=METHODS, help="reconstructor for the main output")
    g.add_argument(
        "--compare", default=compare_default,
        help="comma-separated extra methods written to OUT/<method>/ and scored in the report",
    )
    g.add_argument("--crf", default="gamma2.2", help="inverse CRF: gamma2.2 or a CRF JSON file")
    g.add_argument("--no-align", action="store_true", help="skip global similarity alignment")
    g.add_argument("--no-preview", action="store_true", help="no per-frame PNG previews or video")


def _run_pipeline(source, args: argparse.Namespace, out_dir: Path, gt_dir: Path | None, total: int | None) -> int:
    from tqdm import tqdm

    from hdrstream.pipeline import run_embedded
    from infer.stage import InferStage
    from preprocess.stage import PreprocessConfig, Preprocessor
    from sink.stage import Sink, SinkConfig

    compare = [m for m in args.compare.split(",") if m and m != args.method]
    stages = [
        Preprocessor(PreprocessConfig(crf=args.crf, align=not args.no_align)),
        InferStage(method=args.method, compare=compare),
        Sink(SinkConfig(
            out_dir=str(out_dir), preview=not args.no_preview, video=not args.no_preview,
            gt_dir=str(gt_dir) if gt_dir else None, main_method=args.method,
        )),
    ]
    sink = stages[-1]
    with tqdm(total=total, unit="frame", desc="hdrstream", dynamic_ncols=True, disable=None) as bar:
        def on_output(frame) -> None:
            if frame.kind == "hdr" and frame.meta.get("method") == args.method:
                bar.update(1)

        result = run_embedded(source, stages, on_output=on_output)
    print(sink.summary())
    failures = {name: s.failure for name, s in result.stats.items() if s.failure}
    for name, why in failures.items():
        print(f"error: {name}: {why}", file=sys.stderr)
    if result.interrupted:
        print("interrupted: outputs so far are complete files; see report.json", file=sys.stderr)
    return 0 if result.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from capture.sim import SimCamera

    out = Path(args.out)
    gt_dir = out / "gt"
    camera = SimCamera(_sim_config(args), gt_dir=gt_dir)
    print(f"demo: simulated {args.exposures}-exposure {args.pixel_format} camera, {args.width}x{args.height}, "
          f"{args.frames} frames, exposures {[f'{t * 1e3:.3g} ms' for t in camera.exposure_cycle]}")
    rc = _run_pipeline(camera, args, out, gt_dir, args.frames)
    print(f"\nlook at: {out / 'contact_sheet.png'}  {out / 'preview.mp4'}  {out / 'preview'}/*.png")
    print(f"HDR frames: {out}/*.exr (linear, half float)   report: {out / 'report.json'}")
    return rc


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from capture.folder import FolderCamera

    camera = FolderCamera(args.in_dir)
    gt_dir = Path(args.gt) if args.gt else camera.gt_dir
    return _run_pipeline(camera, args, Path(args.out_dir), gt_dir, len(camera))


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from capture.seqfolder import SequenceWriter
    from capture.sim import SimCamera

    out = Path(args.out_dir)
    camera = SimCamera(_sim_config(args), gt_dir=out / "gt")
    with SequenceWriter(out) as writer:
        for frame in tqdm(camera.frames(), total=args.frames, unit="frame", desc="simulate", disable=None):
            writer.write(frame)
    camera.close()
    (out / "sim.json").write_text(json.dumps({**vars(args), "exposure_cycle_s": camera.exposure_cycle}, default=str, indent=1))
    print(f"wrote {args.frames} frames to {out}/frames, exposures.txt, frames.jsonl; ground truth in {out / 'gt'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.loop import main as train_main

    return train_main(args.train_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hdrstream", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="simulated camera -> whole pipeline in one process -> EXR + preview + report")
    d.add_argument("--out", default="out/demo")
    _add_sim_args(d)
    _add_pipeline_args(d, compare_default="reference")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("reconstruct", help="a sequence folder (or DeepHDRVideo/TOG13 scene) -> one EXR per frame")
    r.add_argument("in_dir")
    r.add_argument("out_dir")
    r.add_argument("--gt", default=None, help="ground-truth EXR folder (default IN_DIR/gt if present)")
    _add_pipeline_args(r, compare_default="")
    r.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("simulate", help="write a simulated sequence folder plus ground truth gt/<stem>.exr")
    s.add_argument("out_dir")
    _add_sim_args(s, frames=24)
    s.set_defaults(func=cmd_simulate)

    t = sub.add_parser("train", help="train the network on project-made data (see training/; --help for options)",
                       add_help=False)
    t.add_argument("train_args", nargs=argparse.REMAINDER)
    t.set_defaults(func=cmd_train)

    from hdrstream.service import add_service_parsers

    add_service_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the trainer has its own parser (and --help)
        from training.loop import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError, OSError) as exc:
        print(f"hdrstream {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
