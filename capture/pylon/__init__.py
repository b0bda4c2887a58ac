"""Basler cameras through pypylon (and the pylon camera emulator) as frame sources.

``PylonCamera(PylonConfig(...))`` is a :class:`hdrstream.stage.Source`. pypylon is
imported only when a camera is opened, so this package imports without it.
"""
from capture.pylon.camera import CameraStats, PylonCamera, load_pylon
from capture.pylon.config import PylonConfig
from capture.pylon.exposure import parse_cycle

__all__ = ["CameraStats", "PylonCamera", "PylonConfig", "load_pylon", "parse_cycle"]
