"""Offline training of the coarse-to-fine HDR network (not a pipeline stage).

``python -m training --config coarse2`` (or ``hdrstream train``) runs one stage; see
:mod:`training.loop`. Data: :mod:`training.data` and :mod:`training.sources`; losses:
:mod:`training.losses`; configuration: :mod:`training.config` and ``training/configs/``.
"""
