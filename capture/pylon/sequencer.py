"""Program the camera's sequencer for the exposure cycle, turn chunks on, read them back.

Why the sequencer: changing ExposureTime from software while the camera free-runs lands
on some unknown later frame, so the exposure of a frame would be a guess. Sequencer sets
switch in the camera on every frame start, and the chunk data appended to each frame
says which set and which exposure it really was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capture.pylon.nodes import FeatureNames, Nodes, NodeError

AUTO_FUNCTIONS = ("ExposureAuto", "GainAuto", "BalanceWhiteAuto")


def autos_off(nodes: Nodes) -> list[str]:
    """Auto functions fight a fixed exposure cycle (and the sequencer refuses to run with them)."""
    return [name for name in AUTO_FUNCTIONS if nodes.try_set(name, "Off")]


def sequencer_off(nodes: Nodes, names: FeatureNames) -> None:
    """Leave sequencer mode, so single parameters can be written again."""
    if names.sequencer == "sfnc2":
        nodes.try_set("SequencerMode", "Off")
    elif names.sequencer == "sfnc1":
        nodes.try_set("SequenceEnable", False)


def program_sequencer(nodes: Nodes, names: FeatureNames, cycle_us: tuple[float, ...], gain_db: float | None) -> None:
    """Sets 0..n-1 hold the exposures; each frame start advances to the next set, the last
    wraps to 0, and acquisition starts at set 0. The camera's other current settings (ROI,
    pixel format) are stored in every set, because no set is loaded before it is saved.
    """
    n = len(cycle_us)
    if names.sequencer == "sfnc2":
        nodes.set("SequencerMode", "Off")
        nodes.set("SequencerConfigurationMode", "On")
        for s, t_us in enumerate(cycle_us):
            nodes.set("SequencerSetSelector", s)
            nodes.set(names.exposure, float(t_us))
            if gain_db is not None and names.gain:
                nodes.set(names.gain, float(gain_db))
            nodes.set("SequencerPathSelector", 0)
            nodes.set("SequencerSetNext", (s + 1) % n)
            nodes.set("SequencerTriggerSource", "FrameStart")
            nodes.execute("SequencerSetSave")
        nodes.set("SequencerSetStart", 0)
        nodes.set("SequencerConfigurationMode", "Off")
        nodes.set("SequencerMode", "On")
    elif names.sequencer == "sfnc1":
        nodes.set("SequenceEnable", False)
        nodes.try_set("SequenceConfigurationMode", "On")
        nodes.set("SequenceAdvanceMode", "Auto")
        nodes.set("SequenceSetTotalNumber", n)
        for s, t_us in enumerate(cycle_us):
            nodes.set("SequenceSetIndex", s)
            nodes.set(names.exposure, float(t_us))
            if gain_db is not None and names.gain:
                nodes.set(names.gain, float(gain_db))
            nodes.try_set("SequenceSetExecutions", 1)
            nodes.execute("SequenceSetStore")
        nodes.try_set("SequenceConfigurationMode", "Off")
        nodes.set("SequenceEnable", True)
    else:
        raise NodeError(f"{nodes.where} has no sequencer (neither SequencerMode nor SequenceEnable); "
                        "use mode='software'")


def chunk_selectors(names: FeatureNames) -> tuple[str, ...]:
    wanted = ["ExposureTime", "Timestamp"]
    if names.chunk_set:
        wanted.append(names.chunk_set)
    wanted.append("Gain" if names.sfnc == 2 else "GainAll")
    return tuple(wanted)


def enable_chunks(nodes: Nodes, names: FeatureNames) -> list[str]:
    """Turn on the chunks we read per frame; returns the ones the camera has."""
    if not nodes.writable("ChunkModeActive"):
        return []
    nodes.set("ChunkModeActive", True)
    available = set(nodes.symbolics("ChunkSelector"))
    enabled = []
    for sel in chunk_selectors(names):
        if sel in available:
            nodes.set("ChunkSelector", sel)
            nodes.set("ChunkEnable", True)
            enabled.append(sel)
    return enabled


def chunks_off(nodes: Nodes) -> None:
    nodes.try_set("ChunkModeActive", False)


@dataclass
class ChunkData:
    """What a frame's chunks said (None: not sent)."""

    exposure_us: float | None = None
    timestamp: int | None = None
    set: int | None = None
    gain_db: float | None = None


def read_chunks(result: Any, names: FeatureNames) -> ChunkData:
    """Chunk values of one grab result; missing or unreadable chunks stay None."""
    try:
        if not result.IsChunkDataAvailable():
            return ChunkData()
        chunks = Nodes(result.GetChunkDataNodeMap(), "chunk data")
    except Exception:
        return ChunkData()
    exposure = chunks.get("ChunkExposureTime")
    timestamp = chunks.get("ChunkTimestamp")
    set_ = chunks.get("ChunkSequencerSetActive" if names.sequencer != "sfnc1" else "ChunkSequenceSetIndex")
    gain = chunks.get("ChunkGain") if names.sfnc == 2 else None  # SFNC 1 GainAll is raw, not dB
    return ChunkData(
        exposure_us=float(exposure) if exposure is not None else None,
        timestamp=int(timestamp) if timestamp is not None else None,
        set=int(set_) if set_ is not None else None,
        gain_db=float(gain) if gain is not None else None,
    )
