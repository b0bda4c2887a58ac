"""The ``hdrstream`` command: demo, reconstruct, simulate, and each stage as a service.

This module is the one place that knows every stage: it builds them from arguments and
wires them with :mod:`deploy.pipeline` (embedded) or :mod:`deploy.service` (one
stage per process). Stage packages are imported lazily so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hdrstream.memory import keep_freed_memory

log = logging.getLogger("hdrstream")

METHODS = ("classical", "reference", "net", "net-refine", "coarse")


def _add_pipeline_args(p: argparse.ArgumentParser, compare_default: str | None) -> None:
    from infer.reconstructor import add_network_args

    g = p.add_argument_group("reconstruction")
    g.add_argument("--method", default=None, choices=METHODS,
                   help="reconstructor for the main output (default: net where its weights ship; live on "
                        "a CPU classical; the report says why)")
    g.add_argument(
        "--compare", default=compare_default,
        help="comma-separated extra methods written to OUT/<method>/ and scored in the report"
             + ("" if compare_default is not None else " (default: reference, and the network where its weights ship)"),
    )
    add_network_args(g)
    g.add_argument("--crf", default="gamma2.2", help="inverse CRF: gamma2.2 or a CRF JSON file")
    g.add_argument("--no-align", action="store_true", help="skip global similarity alignment")
    g.add_argument("--scale", type=float, default=1.0,
                   help="reduced live mode: reconstruct at this fraction of the camera's resolution (e.g. 0.5: "
                        "~4x less work a frame); the report and the summary say so")
    g.add_argument("--no-preview", action="store_true", help="no per-frame PNG previews or video")
    g.add_argument("--infer-threads", type=int, default=None, metavar="N",
                   help="windows reconstructed at once (default: one per core for classical and reference, "
                        "1 with a network method)")


def _run_pipeline(source, args: argparse.Namespace, out_dir: Path, gt_dir: Path | None, total: int | None) -> int:
    from tqdm import tqdm

    from deploy.pipeline import run_embedded
    from infer.stage import InferStage
    from preprocess.stage import PreprocessConfig, Preprocessor
    from sink.stage import Sink, SinkConfig

    from infer.reconstructor import default_method, denoise_option, network_shipped

    why = "asked for (--method)"
    if args.method is None:
        args.method, why = default_method(live=args.command == "live", device=args.device)
    if args.compare is None:  # the demo: the main method next to the others that can run
        args.compare = "classical,net,reference" if network_shipped() else "classical,reference"
    compare = [m for m in args.compare.split(",") if m and m != args.method]
    log.info("method %s (%s)%s", args.method, why, f", compared with {', '.join(compare)}" if compare else "")
    infer = InferStage(method=args.method, compare=compare, device=args.device, precision=args.precision,
                       tile=args.tile, threads=getattr(args, "infer_threads", None),
                       denoise=denoise_option(args), learned_denoise=not args.no_learned_denoise)
    stages = [
        Preprocessor(PreprocessConfig(crf=args.crf, align=not args.no_align, scale=args.scale)),
        infer,
        Sink(SinkConfig(
            out_dir=str(out_dir), preview=not args.no_preview, video=not args.no_preview,
            gt_dir=str(gt_dir) if gt_dir else None, main_method=args.method, main_method_why=why,
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
    lost = sink.report()["lost"]["total"]
    if lost and getattr(args, "strict", False):
        print(f"error: {lost} frame(s) lost (--strict); see report.json", file=sys.stderr)
        return 1
    return 0 if result.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from capture.cameras import open_camera

    out = Path(args.out)
    gt_dir = out / "gt"
    camera = open_camera(args, gt_dir=gt_dir)
    cfg = camera.cfg
    print(f"demo: simulated {cfg.exposures}-exposure {cfg.pixel_format} camera, {cfg.width}x{cfg.height}, "
          f"{cfg.frames} frames, exposures {[f'{t * 1e3:.3g} ms' for t in camera.exposure_cycle]}")
    rc = _run_pipeline(camera, args, out, gt_dir, cfg.frames)
    video = next((str(p) for p in (out / "preview.mp4", out / "preview.webm") if p.is_file()), "")
    print(f"\nlook at: {out / 'contact_sheet.png'}  {video}  {out / 'preview'}/*.png")
    print(f"HDR frames: {out}/*.exr (linear, half float)   report: {out / 'report.json'}")
    return rc


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from capture.folder import FolderCamera

    from capture.cameras import FirstFrames

    camera = FolderCamera(args.in_dir)
    gt_dir = Path(args.gt) if args.gt else camera.gt_dir
    total = len(camera) if args.frames is None else min(args.frames, len(camera))
    source = camera if args.frames is None else FirstFrames(camera, args.frames)
    return _run_pipeline(source, args, Path(args.out_dir), gt_dir, total)


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from capture.cameras import open_camera
    from capture.seqfolder import SequenceWriter

    out = Path(args.out_dir)
    camera = open_camera(args, gt_dir=out / "gt")
    n = camera.cfg.frames
    with SequenceWriter(out) as writer:
        for frame in tqdm(camera.frames(), total=n, unit="frame", desc="simulate", disable=None):
            writer.write(frame)
    camera.close()
    (out / "sim.json").write_text(json.dumps({**vars(args), "exposure_cycle_s": camera.exposure_cycle}, default=str, indent=1))
    print(f"wrote {n} frames to {out}/frames, exposures.txt, frames.jsonl; ground truth in {out / 'gt'}")
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    from capture.cameras import open_camera

    out = Path(args.out_dir)
    gt_dir = out / "gt" if args.camera == "sim" else None
    camera = open_camera(args, gt_dir=gt_dir)  # the pipeline's source loop closes it
    total = args.frames if args.frames is not None else len(camera) if hasattr(camera, "__len__") else None
    return _run_pipeline(camera, args, out, gt_dir or getattr(camera, "gt_dir", None), total)


def cmd_up(args: argparse.Namespace) -> int:
    from deploy.up import run

    return run(args.config, args.workers, verbose=args.verbose)


def cmd_record(args: argparse.Namespace) -> int:
    import signal
    import threading

    from capture.cameras import open_camera
    from capture.record import RecordConfig, record, recover_session

    if args.recover:
        print(json.dumps(recover_session(args.out_dir), indent=1, default=str))
        return 0
    cfg = RecordConfig(frames=args.frames, seconds=args.seconds, writers=args.writers, queue_frames=args.queue_frames,
                       png_compression=args.png_level, overwrite=args.overwrite, fsync=args.fsync)
    if args.camera == "sim" and args.frames is None and args.seconds is None:
        cfg.frames = args.sim_frames
    stop = threading.Event()
    camera = open_camera(args, gt_dir=Path(args.out_dir) / "gt" if args.camera == "sim" else None)
    # a plain `kill` ends the session like Ctrl-C: drained, listed, session.json says so
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        summary = record(camera, args.out_dir, cfg, progress=not args.no_progress, stop=stop)
    except BaseException:  # refused before recording (e.g. the folder holds a recording)
        camera.close()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary.line())
    return {"complete": 0, "interrupted": 130}.get(summary.status, 1)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from capture.calibrate import calibrate
    from capture.crf_fit import FitConfig

    camera = None
    if args.from_folder is None:
        from capture.cameras import open_camera

        camera = open_camera(args)
    exposures = [float(x) for x in args.bracket.split(",")] if args.bracket else None
    fit = FitConfig(samples=args.samples, max_residual_stops=args.max_residual_stops)
    try:
        result = calibrate(args.out, camera=camera, folder=args.from_folder, exposures_s=exposures,
                           base_exposure_s=args.base_exposure, count=args.count, step_stops=args.step_stops,
                           frames_each=args.frames_each, fit=fit, plot=not args.no_plot)
    finally:
        if camera is not None:
            camera.close()
    report = result.report.to_dict()
    print(json.dumps(report, indent=1, default=str))
    print(f"inverse CRF written to {result.json_path}" + (f", plot {result.plot_path}" if result.plot_path else ""))
    print(f"use it with: hdrstream ... --crf {result.json_path}")
    return 0


def run_trainer(train_args: list[str]) -> int:
    """``hdrstream train ARGS`` is ``python -m training ARGS``: the trainer is its own program
    (it may use every stage, and nothing imports it), so this only starts it and waits."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "training", *train_args])
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the trainer too: let it checkpoint and stop
            continue


def cmd_train(args: argparse.Namespace) -> int:
    return run_trainer(args.train_args)


def build_parser() -> argparse.ArgumentParser:
    from capture.cameras import add_camera_args
    from capture.record import RecordConfig as RecordDefaults

    p = argparse.ArgumentParser(prog="hdrstream", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="simulated camera -> whole pipeline in one process -> EXR + preview + report")
    d.add_argument("--out", default="out/demo")
    add_camera_args(d, kinds=("sim",))
    _add_pipeline_args(d, compare_default=None)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("reconstruct", help="a sequence folder (or DeepHDRVideo/TOG13 scene) -> one EXR per frame")
    r.add_argument("in_dir")
    r.add_argument("out_dir")
    r.add_argument("--gt", default=None, help="ground-truth EXR folder (default IN_DIR/gt if present)")
    r.add_argument("--frames", type=int, default=None, help="only the first N frames")
    r.add_argument("--strict", action="store_true",
                   help="exit 1 if any frame is lost (an unreadable file is otherwise skipped, named in "
                        "report.json and the summary, and the rest is still written)")
    _add_pipeline_args(r, compare_default="")
    r.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("simulate", help="write a simulated sequence folder plus ground truth gt/<stem>.exr")
    s.add_argument("out_dir")
    add_camera_args(s, sim_frames=24, kinds=("sim",))
    s.set_defaults(func=cmd_simulate)

    lv = sub.add_parser("live", help="any camera -> whole pipeline in one process -> EXR + preview + report")
    lv.add_argument("out_dir")
    add_camera_args(lv)
    _add_pipeline_args(lv, compare_default="")
    lv.set_defaults(func=cmd_live)

    rec = sub.add_parser("record", help="record a dataset session: a sequence folder + session.json")
    rec.add_argument("out_dir")
    rec.add_argument("--seconds", type=float, default=None, help="stop after this long (with or instead of --frames)")
    rec.add_argument("--writers", type=int, default=RecordDefaults.writers, help="writer threads")
    rec.add_argument("--queue-frames", type=int, default=RecordDefaults.queue_frames,
                     help="frames waiting for a writer before grabbing waits")
    rec.add_argument("--png-level", type=int, default=RecordDefaults.png_compression,
                     help="PNG compression 0-9; 0 (stored) keeps up with the camera, 1 saves ~20%% at ~1/8 the speed")
    rec.add_argument("--overwrite", action="store_true", help="replace the frames of an existing recording")
    rec.add_argument("--fsync", action="store_true", help="each frame durable before it is listed (power-loss safe)")
    rec.add_argument("--no-progress", action="store_true")
    rec.add_argument("--recover", action="store_true", help="tidy a session that was killed, then exit")
    add_camera_args(rec)
    rec.set_defaults(func=cmd_record)

    c = sub.add_parser("calibrate", help="fit the camera's inverse response (CRF) from a static exposure bracket")
    c.add_argument("out", help="CRF JSON to write (a plot goes beside it as .png)")
    c.add_argument("--from-folder", default=None, help="a sequence folder of a static bracket instead of a camera")
    c.add_argument("--bracket", default=None, help="exposures in seconds, e.g. 0.001,0.002,0.004 (default: a plan)")
    c.add_argument("--base-exposure", type=float, default=None,
                   help="seconds; the plan's centre (default: the camera's exposure cycle)")
    c.add_argument("--count", type=int, default=7, help="exposures in the plan")
    c.add_argument("--step-stops", type=float, default=1.0, help="about this many stops apart")
    c.add_argument("--frames-each", type=int, default=4, help="frames averaged per exposure")
    c.add_argument("--samples", type=int, default=4000, help="pixels sampled for the fit")
    c.add_argument("--max-residual-stops", type=float, default=0.25, help="refuse a worse fit")
    c.add_argument("--no-plot", action="store_true")
    add_camera_args(c, kinds=("sim", "pylon", "emulator"))
    c.set_defaults(func=cmd_calibrate)

    t = sub.add_parser("train", help="train the network on project-made data (see training/; --help for options)",
                       add_help=False)
    t.add_argument("train_args", nargs=argparse.REMAINDER)
    t.set_defaults(func=cmd_train)

    u = sub.add_parser("up", help="start every service of a deployment file as local processes (no Docker)")
    u.add_argument("--config", default="deploy/hdrstream.toml", help="deployment TOML (default %(default)s)")
    u.add_argument("--workers", type=int, default=None, help="inference workers (default: [graph] workers)")
    u.set_defaults(func=cmd_up)

    from deploy.service import add_service_parsers

    add_service_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the trainer has its own parser (and --help)
        return run_trainer(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    keep_freed_memory()  # before any stage thread starts
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError, OSError) as exc:
        print(f"hdrstream {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
