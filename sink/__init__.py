"""The sink stage: reorders HDR frames by seq, writes EXRs, previews and report.json.

Kept light: ``import sink`` loads nothing heavy; ``sink.Sink`` / ``sink.SinkConfig``
import :mod:`sink.stage` (OpenCV, OpenEXR) on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Sink", "SinkConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sink import stage

        return getattr(stage, name)
    raise AttributeError(f"module 'sink' has no attribute {name!r}")
