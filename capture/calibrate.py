"""CRF calibration: capture (or read) a static exposure bracket, fit the inverse response,
write the CRF JSON that preprocess reads (``--crf FILE``) and a plot for the operator.

``hdrstream calibrate --camera … OUT.json`` drives a camera through :func:`bracket_from_camera`
(any camera with ``bracket(exposures_s, frames_each)``: the simulated one, pylon);
``--from-folder DIR`` reads a sequence folder with :func:`bracket_from_folder`. The maths is
in :mod:`capture.crf_fit`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from capture.crf_fit import Bracket, CalibrationError, FitConfig, FitReport, fit_inverse_crf, make_bracket
from hdrstream.crf import CRF
from hdrstream.hdrio import atomic_write, write_png

# Steps alternate around 1 stop: exposures a whole number of equal steps apart leave a
# ripple in the curve undetermined (see crf_fit.auto_smoothness); uneven steps pin it down.
STEP_JITTER_STOPS = (0.0, 0.15, -0.15)
DEFAULT_COUNT = 7
DEFAULT_FRAMES_EACH = 4


class BracketCamera(Protocol):
    """What calibration needs from a camera (SimCamera, the pylon camera)."""

    def bracket(self, exposures_s: list[float], frames_each: int) -> list[tuple[float, list[np.ndarray]]]: ...


@dataclass
class CalibrationResult:
    crf: CRF
    report: FitReport
    json_path: Path
    plot_path: Path | None = None
    camera: dict[str, Any] = field(default_factory=dict)


def bracket_plan(base_s: float, count: int = DEFAULT_COUNT, step_stops: float = 1.0) -> list[float]:
    """``count`` exposures centred on ``base_s``, about ``step_stops`` apart (steps alternate ±0.15 stop)."""
    if not (math.isfinite(base_s) and base_s > 0):
        raise ValueError(f"base exposure must be a positive number of seconds, got {base_s!r}")
    if count < 3:
        raise ValueError(f"a bracket needs at least 3 exposures, got count={count}")
    if not (0.25 <= step_stops <= 3.0):
        raise ValueError(f"step_stops must be between 0.25 and 3 stops, got {step_stops}")
    centre = (count - 1) / 2
    stops = [step_stops * (i - centre) + STEP_JITTER_STOPS[i % len(STEP_JITTER_STOPS)] * step_stops
             for i in range(count)]
    return [base_s * 2.0**s for s in stops]


def default_base_exposure(camera: object) -> float:
    """The geometric mean of the camera's exposure cycle: the bracket straddles what it records."""
    cycle = getattr(camera, "exposure_cycle", None)
    if not cycle:
        raise ValueError("the camera reports no exposure_cycle; give a base exposure (seconds) or the exposures")
    return float(math.exp(np.mean(np.log(np.asarray(cycle, np.float64)))))


def camera_pixel_format(camera: object) -> str:
    """The camera's pixel format, from ``describe()`` or a ``pixel_format`` attribute."""
    describe = getattr(camera, "describe", None)
    if callable(describe):
        name = describe().get("pixel_format")
        if name:
            return str(name)
    name = getattr(camera, "pixel_format", None)
    if isinstance(name, str) and name:
        return name
    raise ValueError(f"cannot tell {type(camera).__name__}'s pixel format; pass pixel_format=")


def bracket_from_camera(camera: BracketCamera, exposures_s: list[float], frames_each: int = DEFAULT_FRAMES_EACH,
                        pixel_format: str | None = None) -> Bracket:
    """Capture a static bracket through ``camera.bracket`` and average each exposure's frames."""
    if frames_each < 1:
        raise ValueError(f"frames_each must be >= 1, got {frames_each}")
    fmt = pixel_format or camera_pixel_format(camera)
    raw = camera.bracket(list(exposures_s), frames_each)
    return make_bracket(raw, fmt, source=f"camera {getattr(camera, 'name', type(camera).__name__)}")


def bracket_from_folder(path: str | os.PathLike) -> Bracket:
    """A sequence folder of a static bracket: frames grouped by exposure time and averaged."""
    from capture.folder import FolderCamera

    groups: list[tuple[float, list[np.ndarray]]] = []
    fmt: str | None = None
    with FolderCamera(path) as cam:
        for frame in cam.frames():
            if fmt is None:
                fmt = frame.pixel_format
            elif frame.pixel_format != fmt:
                raise CalibrationError(
                    f"{path}: frame {frame.stem} is {frame.pixel_format}, earlier frames {fmt}; "
                    f"a bracket must be one pixel format"
                )
            for t, frames in groups:
                if math.isclose(t, frame.exposure_s, rel_tol=1e-3):
                    frames.append(np.array(frame.data))
                    break
            else:
                groups.append((frame.exposure_s, [np.array(frame.data)]))
    if fmt is None:
        raise CalibrationError(f"{path}: no frames")
    return make_bracket(groups, fmt, source=f"folder {Path(path)}")


def write_crf_json(path: str | os.PathLike, crf: CRF, report: FitReport, camera: dict[str, Any] | None = None) -> Path:
    """The CRF file preprocess reads (``inverse``), plus the fit report, written atomically."""
    if crf.inverse is None:
        raise ValueError("only a tabulated CRF can be written")
    doc = {"inverse": np.asarray(crf.inverse, np.float64).round(7).tolist(), "report": report.to_dict()}
    if camera:
        doc["camera"] = camera
    text = json.dumps(doc, default=_json_default)

    def _write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    return atomic_write(path, _write)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, tuple)):
        return list(x)
    return str(x)


def plot_curves(path: str | os.PathLike, crf: CRF, report: FitReport | None = None, size: int = 480) -> Path:
    """PNG of the fitted inverse curves (R, G, B) against gamma 2.2 (grey), for a quick look."""
    if crf.inverse is None:
        raise ValueError("only a tabulated CRF can be plotted")
    margin = 48
    img = np.full((size, size, 3), 255, np.uint8)  # drawn in RGB
    span = size - 2 * margin

    def pts(y: np.ndarray) -> np.ndarray:
        x = np.linspace(0.0, 1.0, y.size)
        return np.stack([margin + x * span, size - margin - y * span], 1).round().astype(np.int32)

    for v in np.linspace(0, 1, 5):
        p = int(round(margin + v * span))
        q = int(round(size - margin - v * span))
        cv2.line(img, (p, margin), (p, size - margin), (225, 225, 225), 1)
        cv2.line(img, (margin, q), (size - margin, q), (225, 225, 225), 1)
        cv2.putText(img, f"{v:g}", (p - 8, size - margin + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{v:g}", (6, q + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.rectangle(img, (margin, margin), (size - margin, size - margin), (0, 0, 0), 1)
    cv2.polylines(img, [pts(np.linspace(0, 1, 256) ** 2.2)], False, (150, 150, 150), 1, cv2.LINE_AA)
    for row, colour in zip(crf.inverse, ((220, 0, 0), (0, 160, 0), (0, 0, 220))):
        cv2.polylines(img, [pts(np.asarray(row, np.float64))], False, colour, 2, cv2.LINE_AA)
    cv2.putText(img, "code value", (size // 2 - 36, size - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    title = "inverse CRF (grey: gamma 2.2)"
    if report is not None:
        title += f"  rms {report.rms_residual_stops:.3f} stops"
    cv2.putText(img, title, (margin, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return write_png(path, img)


def calibrate(out: str | os.PathLike, *, camera: BracketCamera | None = None, folder: str | os.PathLike | None = None,
              exposures_s: list[float] | None = None, base_exposure_s: float | None = None,
              count: int = DEFAULT_COUNT, step_stops: float = 1.0, frames_each: int = DEFAULT_FRAMES_EACH,
              fit: FitConfig | None = None, plot: bool = True) -> CalibrationResult:
    """Bracket (from ``camera`` or ``folder``), fit, write ``out`` (JSON) and ``out``'s .png plot.

    Exposures: ``exposures_s`` as given, else :func:`bracket_plan` around ``base_exposure_s``
    (default: the camera's exposure cycle). Raises CalibrationError when the bracket cannot
    calibrate; nothing is written then.
    """
    if (camera is None) == (folder is None):
        raise ValueError("calibrate needs exactly one source: a camera or a folder")
    described: dict[str, Any] = {}
    if camera is not None:
        if exposures_s is None:
            base = base_exposure_s if base_exposure_s is not None else default_base_exposure(camera)
            exposures_s = bracket_plan(base, count, step_stops)
        bracket = bracket_from_camera(camera, exposures_s, frames_each)
        describe = getattr(camera, "describe", None)
        described = describe() if callable(describe) else {}
    else:
        bracket = bracket_from_folder(folder)  # type: ignore[arg-type]
    crf, report = fit_inverse_crf(bracket, fit)
    out = Path(out)
    json_path = write_crf_json(out, crf, report, described)
    plot_path = plot_curves(out.with_suffix(".png"), crf, report) if plot else None
    return CalibrationResult(crf, report, json_path, plot_path, described)
