"""The ground every stage stands on: the frame message and its transport, pixel formats,
config, metrics, the stage/runner base, EXR I/O, the CRF and the quality metrics.

It imports no stage and nothing of the composition root (``deploy/``); an import-linter
contract in ``make test`` keeps it so.
"""
