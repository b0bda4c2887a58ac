"""GenICam node-map access with clear errors, and the feature names a camera speaks.

Basler USB cameras use SFNC 2 names (``ExposureTime``, ``SequencerMode``), older GigE
models SFNC 1 (``ExposureTimeAbs``, ``SequenceEnable``). :func:`feature_names` picks by
what the node map actually has, never by model, so one code path serves both.

Only a handful of node methods are used (``IsValid``/``IsReadable``/``IsWritable``,
``GetValue``/``SetValue``, ``GetMin``/``GetMax``/``GetInc``, ``GetSymbolics``,
``Execute``), which keeps the fakes in the tests small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class NodeError(RuntimeError):
    """A camera feature that is missing, read-only, or refused a value."""


class Nodes:
    """Thin wrapper around a pylon node map."""

    def __init__(self, node_map: Any, where: str = "camera") -> None:
        self.node_map = node_map
        self.where = where

    def node(self, name: str) -> Any | None:
        """The node, or None when the map lacks it (pypylon ≥ 26 returns a placeholder)."""
        try:
            node = self.node_map.GetNode(name)
        except Exception:  # older pypylon raises LogicalErrorException for unknown names
            return None
        if node is None:
            return None
        is_valid = getattr(node, "IsValid", None)
        if is_valid is not None and not is_valid():
            return None
        return node

    def has(self, name: str) -> bool:
        return self.node(name) is not None

    def readable(self, name: str) -> bool:
        node = self.node(name)
        return node is not None and bool(node.IsReadable())

    def writable(self, name: str) -> bool:
        node = self.node(name)
        return node is not None and bool(node.IsWritable())

    def first(self, *names: str) -> str | None:
        """The first of ``names`` the node map has."""
        return next((n for n in names if self.has(n)), None)

    def _need(self, name: str) -> Any:
        node = self.node(name)
        if node is None:
            raise NodeError(f"{self.where} has no {name} feature")
        return node

    def get(self, name: str, default: Any = None) -> Any:
        """Value of a readable node, else ``default``."""
        node = self.node(name)
        if node is None or not node.IsReadable():
            return default
        try:
            return node.GetValue()
        except Exception:
            return default

    def set(self, name: str, value: Any) -> None:
        node = self._need(name)
        if not node.IsWritable():
            raise NodeError(f"{self.where}: {name} is not writable now (is the camera grabbing, or another "
                            "program holding it?)")
        try:
            node.SetValue(value)
        except Exception as exc:
            raise NodeError(f"{self.where}: setting {name} = {value!r} failed: {exc}") from exc

    def try_set(self, name: str, value: Any) -> bool:
        """Set when present and writable; returns whether it was set."""
        if not self.writable(name):
            return False
        self.set(name, value)
        return True

    def execute(self, name: str) -> None:
        node = self._need(name)
        try:
            node.Execute()
        except Exception as exc:
            raise NodeError(f"{self.where}: command {name} failed: {exc}") from exc

    def limits(self, name: str) -> tuple[float, float]:
        node = self._need(name)
        return node.GetMin(), node.GetMax()

    def increment(self, name: str) -> int:
        node = self._need(name)
        try:
            return int(node.GetInc())
        except Exception:
            return 1

    def symbolics(self, name: str) -> list[str]:
        node = self.node(name)
        if node is None:
            return []
        return [str(s) for s in node.GetSymbolics()]

    def check_range(self, name: str, value: float, unit: str = "") -> None:
        """Raise ValueError naming the node's range when ``value`` is outside it."""
        lo, hi = self.limits(name)
        if not lo <= value <= hi:
            raise ValueError(f"{name} {value:g}{unit} is out of range for this camera: {lo:g}..{hi:g}{unit}")


@dataclass(frozen=True)
class FeatureNames:
    """Which spelling of each feature this camera uses (None: it has none)."""

    sfnc: int  # 2 or 1
    exposure: str
    gain: str | None  # in dB
    frame_rate: str | None
    sequencer: str | None  # "sfnc2" (Sequencer*), "sfnc1" (Sequence*), None
    chunk_set: str | None  # ChunkSelector entry for the active sequencer set
    timestamp_tick_hz: str | None  # node giving camera clock ticks per second (GigE), None = ns


def feature_names(nodes: Nodes) -> FeatureNames:
    exposure = nodes.first("ExposureTime", "ExposureTimeAbs")
    if exposure is None:
        raise NodeError(f"{nodes.where} has neither ExposureTime (SFNC 2) nor ExposureTimeAbs (SFNC 1)")
    sequencer = "sfnc2" if nodes.has("SequencerMode") else "sfnc1" if nodes.has("SequenceEnable") else None
    chunk_set = None
    if sequencer == "sfnc2":
        chunk_set = "SequencerSetActive"
    elif sequencer == "sfnc1":
        chunk_set = "SequenceSetIndex"
    return FeatureNames(
        sfnc=2 if exposure == "ExposureTime" else 1,
        exposure=exposure,
        gain=nodes.first("Gain", "GainAbs"),
        frame_rate=nodes.first("AcquisitionFrameRate", "AcquisitionFrameRateAbs"),
        sequencer=sequencer,
        chunk_set=chunk_set,
        timestamp_tick_hz=nodes.first("GevTimestampTickFrequency"),
    )
