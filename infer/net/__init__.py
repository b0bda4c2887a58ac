"""The coarse-to-fine HDR video network (Chen et al., ICCV 2021) in PyTorch.

``model`` holds the public API (``HDRNet``, ``NetConfig``, weight files); the other modules
are its building blocks: ``flow`` and ``weights`` (CoarseNet's two sub-networks), ``coarse``,
``refine`` (RefineNet), ``deform`` (modulated deformable convolution) and ``ops``.
"""
from infer.net.model import (
    HDRNet,
    NetConfig,
    WeightsError,
    count_parameters,
    load_weights,
    read_metadata,
    save_weights,
)

__all__ = [
    "HDRNet",
    "NetConfig",
    "WeightsError",
    "count_parameters",
    "load_weights",
    "read_metadata",
    "save_weights",
]
