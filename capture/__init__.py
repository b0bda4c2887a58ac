"""Cameras: the simulated camera (``capture.sim``) and the folder cameras.

Submodules are imported where they are used, so ``import capture`` stays cheap.
"""
