"""The deployment file: one TOML file describes every service of a headless rig.

``hdrstream serve <stage> --config FILE`` runs one service from it, ``hdrstream up --config
FILE`` the whole graph as local processes, and docker-compose passes the same file to each
container. Tables::

    [graph]       endpoints, worker count, metrics ports (GraphConfig)
    [sim] [pylon] the camera's settings (capture.sim.SimConfig, capture.pylon.PylonConfig)
    [preprocess]  preprocess.stage.PreprocessConfig
    [infer]       InferConfig
    [dispatch]    deploy.dispatch.DispatchConfig
    [sink]        sink.stage.SinkConfig

Every field can be overridden by ``HDRSTREAM_<TABLE>_<FIELD>`` (containers use this for
their endpoints). Everything binds 127.0.0.1 unless an endpoint says otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrstream.config import load_toml, section
from deploy.dispatch import DispatchConfig

CAMERAS = ("sim", "folder", "pylon", "emulator")
POLICIES = ("block", "drop-oldest")


@dataclass
class GraphConfig:
    """How the services find each other. ``@`` binds, ``>`` connects (transport's convention)."""

    camera: str = "sim"  # sim | folder | pylon | emulator
    folder: str = ""  # sequence folder for camera = "folder"
    workers: int = 2  # inference workers `hdrstream up` starts
    capture_out: str = "@tcp://127.0.0.1:5550"
    capture_policy: str = "block"  # block (recording, offline: nothing dropped) | drop-oldest (live view)
    capture_queue: int = 8  # frames the drop-oldest policy holds
    preprocess_in: str = ">tcp://127.0.0.1:5550"
    work: str = "@tcp://127.0.0.1:5551"  # the dispatcher in the preprocess service; workers connect
    worker_in: str = ">tcp://127.0.0.1:5551"
    worker_out: str = ">tcp://127.0.0.1:5552"
    dispatch_sink: str = ">tcp://127.0.0.1:5552"  # the dispatcher's end of stream goes straight to the sink
    sink_in: str = "@tcp://127.0.0.1:5552"
    sink_grace_s: float = 10.0  # after the eos, wait this long for frames still owed
    metrics_host: str = "127.0.0.1"
    capture_metrics_port: int = 9101  # 0: no metrics server
    preprocess_metrics_port: int = 9102
    sink_metrics_port: int = 9103
    infer_metrics_port: int = 9110  # worker i of `hdrstream up` uses this + i

    def __post_init__(self) -> None:
        if self.camera not in CAMERAS:
            raise ValueError(f"[graph] camera must be one of {CAMERAS}, got {self.camera!r}")
        if self.capture_policy not in POLICIES:
            raise ValueError(f"[graph] capture_policy must be one of {POLICIES}, got {self.capture_policy!r}")
        if self.workers < 1:
            raise ValueError(f"[graph] workers must be >= 1, got {self.workers}")
        if self.camera == "folder" and not self.folder:
            raise ValueError("[graph] camera = 'folder' needs folder = 'DIR'")


@dataclass
class InferConfig:
    """The reconstructor each worker runs (``compare``: extra methods, for reports)."""

    method: str = "classical"
    compare: list[str] = field(default_factory=list)
    device: str = ""  # network methods: "" = CUDA when present, else "cpu"; or e.g. "cuda:1"
    precision: str = "auto"  # network methods: auto | fp32 | bf16 | fp16
    tile: int = -1  # network methods: tile size in pixels (multiple of 16); 0 never; -1 frames above ~2.2 Mpx
    denoise: bool = True  # filter the merge's remaining noise (classical and network methods; infer/denoise.py)
    denoise_strength: float | None = None  # its range in noise deviations (ClassicalConfig.denoise); None: default
    learned_denoise: bool = True  # network methods: the weights' learned correction of that filter, where they have one

    def denoise_option(self) -> bool | float:
        """``make_reconstructor``'s ``denoise`` (as infer.reconstructor.denoise_option for the CLI)."""
        if not self.denoise:
            return False
        return True if self.denoise_strength is None else float(self.denoise_strength)


@dataclass
class Deployment:
    graph: GraphConfig
    preprocess: Any  # preprocess.stage.PreprocessConfig
    infer: InferConfig
    dispatch: DispatchConfig
    sink: Any  # sink.stage.SinkConfig
    raw: dict[str, Any]
    path: str | None = None

    def camera(self):
        """The source [graph] camera names, configured from its table."""
        cam = self.graph.camera
        if cam == "sim":
            from capture.sim import SimCamera, SimConfig

            return SimCamera(section(SimConfig, self.raw, "sim"))
        if cam == "folder":
            from capture.folder import FolderCamera

            return FolderCamera(self.graph.folder)
        from capture.pylon import PylonCamera, PylonConfig

        cfg = section(PylonConfig, self.raw, "pylon")
        cfg.emulator = cam == "emulator"
        return PylonCamera(cfg)

    def preprocessor(self):
        from preprocess.stage import Preprocessor

        return Preprocessor(self.preprocess)

    def infer_stage(self):
        from infer.stage import InferStage

        return InferStage(method=self.infer.method, compare=self.infer.compare,
                          device=self.infer.device or None, precision=self.infer.precision,
                          tile=None if self.infer.tile < 0 else self.infer.tile, denoise=self.infer.denoise_option(),
                          learned_denoise=self.infer.learned_denoise)

    def sink_stage(self):
        from sink.stage import Sink

        return Sink(self.sink)


KNOWN = {"graph", "sim", "pylon", "preprocess", "infer", "dispatch", "sink"}


def load(path: str | os.PathLike | None, env: dict[str, str] | None = None) -> Deployment:
    """The deployment a file (None: the defaults) describes, with environment overrides."""
    from preprocess.stage import PreprocessConfig
    from sink.stage import SinkConfig

    raw = load_toml(path) if path is not None else {}
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {unknown}; known: {sorted(KNOWN)}")
    sink_raw = dict(raw.get("sink", {}))
    sink_raw.setdefault("out_dir", "out/live")
    return Deployment(
        graph=section(GraphConfig, raw, "graph", env),
        preprocess=section(PreprocessConfig, raw, "preprocess", env),
        infer=section(InferConfig, raw, "infer", env),
        dispatch=section(DispatchConfig, raw, "dispatch", env),
        sink=section(SinkConfig, {**raw, "sink": sink_raw}, "sink", env),
        raw=raw,
        path=str(Path(path)) if path is not None else None,
    )


def loopback_graph(workers: int, metrics: tuple[str, ...] = (), **extra: object) -> tuple[str, dict[str, int]]:
    """A ``[graph]`` table wiring every service over tcp on 127.0.0.1 at free ports, and the
    ports: what tests and benchmarks run ``up`` with. ``metrics``: the stages that get a
    metrics server (at a free port, returned as ``<stage>_metrics``); the rest get none.
    ``extra``: more ``[graph]`` keys."""
    import socket

    socks = [socket.socket() for _ in range(3 + len(metrics))]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    free = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    cap, work, sink = free[:3]
    ports = {"capture": cap, "work": work, "sink": sink}
    metric_ports = {stage: 0 for stage in ("capture", "preprocess", "sink", "infer")}
    for stage, port in zip(metrics, free[3:]):
        metric_ports[stage] = ports[f"{stage}_metrics"] = port
    lines = [
        "[graph]",
        f"workers = {workers}",
        f'capture_out = "@tcp://127.0.0.1:{cap}"',
        f'preprocess_in = ">tcp://127.0.0.1:{cap}"',
        f'work = "@tcp://127.0.0.1:{work}"',
        f'worker_in = ">tcp://127.0.0.1:{work}"',
        f'worker_out = ">tcp://127.0.0.1:{sink}"',
        f'dispatch_sink = ">tcp://127.0.0.1:{sink}"',
        f'sink_in = "@tcp://127.0.0.1:{sink}"',
        *(f"{stage}_metrics_port = {port}" for stage, port in metric_ports.items()),
        *(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v!r}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n", ports
