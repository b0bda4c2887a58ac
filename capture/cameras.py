"""One set of camera flags for every command that takes frames from a camera.

``--camera sim|folder|pylon|emulator`` picks the source; the flags of the other kinds
are ignored. Sources are imported only when opened, so ``--help`` stays instant and
pypylon loads only for a Basler camera or its emulator.
"""
from __future__ import annotations

import argparse
import itertools

CAMERAS = ("sim", "folder", "pylon", "emulator")
SIM_SIZE = (640, 360)
SIM_FPS = 30.0


def add_camera_args(p: argparse.ArgumentParser, default: str = "sim", sim_frames: int = 30,
                    kinds: tuple[str, ...] = CAMERAS) -> None:
    """``--camera`` and the flags of each kind; ``sim_frames``: the simulated camera's default length."""
    p.set_defaults(sim_frames=sim_frames, camera=default, folder=None)
    if len(kinds) > 1:
        p.add_argument("--camera", choices=kinds, default=default,
                       help="frame source: the simulated camera (exact ground truth), a sequence folder, "
                            "a Basler camera through pypylon, or pylon's camera emulator")
    g = p.add_argument_group("any camera")
    g.add_argument("--frames", type=int, default=None,
                   help=f"stop after this many frames (default: sim {sim_frames}, a folder all of it, "
                        f"a Basler camera until Ctrl-C)")
    g.add_argument("--width", type=int, default=None, help=f"image / ROI width (sim {SIM_SIZE[0]}, pylon full sensor)")
    g.add_argument("--height", type=int, default=None, help=f"image / ROI height (sim {SIM_SIZE[1]})")
    g.add_argument("--pixel-format", default="BayerRG8", help="GenICam name: BayerRG8, BayerRG12, RGB8, Mono8, ...")
    g.add_argument("--fps", type=float, default=None, help=f"frame rate (sim {SIM_FPS:g}; pylon: the camera's maximum)")

    s = p.add_argument_group("simulated camera" if kinds == ("sim",) else "--camera sim")
    s.add_argument("--exposures", type=int, choices=(2, 3), default=2, help="exposures in the cycle")
    s.add_argument("--ratios", type=str, default=None, help="e.g. 1,8 or 1,4,16 (defaults)")
    s.add_argument("--scene", default="procedural", help="'procedural' or an .exr/.hdr image")
    s.add_argument("--sim-crf", default="gamma2.2", help="camera response the simulated camera applies (or a CRF JSON)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--realtime", action="store_true", help="pace frames at --fps")
    s.add_argument("--motion", type=float, default=1.0, help="camera motion scale (0 = static)")
    s.add_argument("--no-noise", action="store_true")

    if "folder" in kinds:
        f = p.add_argument_group("--camera folder")
        f.add_argument("--folder", help="sequence folder (or DeepHDRVideo/TOG13 scene) to play")
    if "pylon" in kinds or "emulator" in kinds:
        _add_pylon_args(p)


def _add_pylon_args(p: argparse.ArgumentParser) -> None:
    b = p.add_argument_group("--camera pylon | emulator (docs/camera.md)")
    b.add_argument("--serial", default=None, help="camera serial number (default: the first real camera)")
    b.add_argument("--offset-x", type=int, default=0)
    b.add_argument("--offset-y", type=int, default=0)
    b.add_argument("--exposures-us", default=None, help="exposure cycle in µs, e.g. 1000,8000 or 500,2000,8000")
    b.add_argument("--base-us", type=float, default=None, help="exposure cycle as --stops around this base (µs)")
    b.add_argument("--stops", default=None, help="e.g. -1.5,+1.5 with --base-us")
    b.add_argument("--gain-db", default="0", help="analogue gain in dB, or 'none' to leave the camera's")
    b.add_argument("--mode", choices=("auto", "sequencer", "software"), default="auto",
                   help="sequencer (on the camera, exact per-frame exposure) or software triggers; "
                        "auto picks the sequencer when the camera has one")
    b.add_argument("--buffers", type=int, default=16, help="grab buffers (MaxNumBuffer)")
    b.add_argument("--grab-timeout-ms", type=int, default=1000)
    b.add_argument("--reconnect-attempts", type=int, default=5, help="after the camera vanishes")
    b.add_argument("--reconnect-backoff-s", type=float, default=0.5, help="first wait; doubles per attempt")
    b.add_argument("--image-dir", default=None, help="emulator only: play this folder of PNG/BMP images")


def sim_config(args: argparse.Namespace):
    """The :class:`capture.sim.SimConfig` that the flags describe."""
    from capture.sim import SimConfig

    ratios = tuple(float(r) for r in args.ratios.split(",")) if args.ratios else None
    return SimConfig(
        width=args.width or SIM_SIZE[0], height=args.height or SIM_SIZE[1],
        frames=args.sim_frames if args.frames is None else args.frames, exposures=args.exposures,
        ratios=ratios, pixel_format=args.pixel_format, fps=args.fps or SIM_FPS, realtime=args.realtime,
        seed=args.seed, scene=args.scene, crf=args.sim_crf, noise=not args.no_noise, motion=args.motion,
    )


def pylon_config(args: argparse.Namespace):
    """The :class:`capture.pylon.PylonConfig` that the flags describe."""
    from capture.pylon import PylonConfig

    gain = None if str(args.gain_db).lower() == "none" else float(args.gain_db)
    return PylonConfig(
        serial=args.serial, emulator=args.camera == "emulator", width=args.width, height=args.height,
        offset_x=args.offset_x, offset_y=args.offset_y, pixel_format=args.pixel_format,
        exposures_us=args.exposures_us, base_us=args.base_us, stops=args.stops, gain_db=gain, fps=args.fps,
        mode=args.mode, frames=args.frames, buffers=args.buffers, grab_timeout_ms=args.grab_timeout_ms,
        reconnect_attempts=args.reconnect_attempts, reconnect_backoff_s=args.reconnect_backoff_s,
        image_dir=args.image_dir,
    )


def open_camera(args: argparse.Namespace, gt_dir=None):
    """The source the flags name, opened (a Basler camera is configured here)."""
    if args.camera == "sim":
        from capture.sim import SimCamera

        return SimCamera(sim_config(args), gt_dir=gt_dir)
    if args.camera == "folder":
        from capture.folder import FolderCamera

        if not args.folder:
            raise ValueError("--camera folder needs --folder DIR")
        camera = FolderCamera(args.folder, fps=(args.fps or SIM_FPS) if args.realtime else None)
        return camera if args.frames is None else FirstFrames(camera, args.frames)
    from capture.pylon import PylonCamera

    return PylonCamera(pylon_config(args))


class FirstFrames:
    """The first ``n`` frames of a source (``--frames`` for sources without a length of their own)."""

    def __init__(self, source, n: int) -> None:
        if n < 0:
            raise ValueError(f"--frames must be >= 0, got {n}")
        self.source, self.n, self.name = source, n, source.name

    def frames(self):
        return itertools.islice(self.source.frames(), self.n)

    def close(self) -> None:
        self.source.close()

    def describe(self) -> dict:
        describe = getattr(self.source, "describe", None)
        return {**(describe() if callable(describe) else {}), "frames_limit": self.n}

    def __getattr__(self, name: str):  # gt_dir, stats, ... of the wrapped source
        return getattr(self.source, name)
