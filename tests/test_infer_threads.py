"""The infer stage with several threads: same HDR frames, same order, failures counted;
and the reference method on unwarped windows."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from capture.sim import SimCamera, SimConfig
from infer.stage import InferStage
from preprocess.stage import PreprocessConfig, Preprocessor


def sim_windows(defer: bool, frames: int = 8) -> list:
    cam = SimCamera(SimConfig(width=160, height=96, frames=frames, exposures=2, seed=3, motion=2.0))
    pre = Preprocessor(PreprocessConfig(defer_warp=defer))
    return [w for f in cam.frames() for w in pre.process(f)] + pre.finish()


def run(stage: InferStage, windows: list) -> list:
    out = [h for w in windows for h in stage.process(w)]
    return out + stage.finish()


def test_threads_give_the_same_frames_in_window_order():
    windows = sim_windows(defer=True)
    one = run(InferStage("classical", compare=["reference"], threads=1), windows)
    two_stage = InferStage("classical", compare=["reference"], threads=2)
    two = run(two_stage, windows)
    assert [(h.seq, h.meta["method"]) for h in two] == [(h.seq, h.meta["method"]) for h in one]
    assert [h.seq for h in two if h.meta["method"] == "classical"] == [w.seq for w in windows]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.data, b.data)  # each thread's own merge: the same pixels
    assert two_stage.windows == len(windows) and two_stage.failed == 0


def test_a_window_failing_on_a_thread_is_counted_and_the_rest_go_on(caplog):
    windows = sim_windows(defer=True, frames=6)
    bad = windows[2]
    broken = replace(bad, meta={k: v for k, v in bad.meta.items() if k != "warps"})
    stage = InferStage("classical", threads=2)
    with caplog.at_level(logging.ERROR):
        out = run(stage, windows[:2] + [broken] + windows[3:])
    assert [h.seq for h in out] == [w.seq for w in windows if w is not bad]
    assert stage.failed == 1 and f"window seq {bad.seq}" in caplog.text


def test_streaming_network_methods_refuse_threads():
    with pytest.raises(ValueError, match="threads=1"):
        InferStage("net", threads=2)
    assert InferStage("net", threads=None).threads == 1  # auto: one thread for a network


def test_the_reference_method_folds_warps_with_the_same_pixels():
    """Unwarped windows (codes windows, ``defer_warp``; classical's own equivalence is tested in
    test_classical) against preprocess's warped ones: no apply_warps for a method that reads
    only the reference."""
    deferred, warped = sim_windows(defer=True), sim_windows(defer=False)
    assert any(not np.allclose(w.meta["warps"], [1, 0, 0, 0, 1, 0]) for w in warped)  # the camera moved
    stage = InferStage("reference", compare=["classical"])
    assert all(rec.folds_warps for rec in stage.methods)
    for d, w in zip(deferred, warped, strict=True):
        assert d.meta["warped"] is False and w.meta["warped"] is True
        np.testing.assert_array_equal(stage.process(d)[0].data, stage.process(w)[0].data)
    moved = dict(deferred[0].meta, warps=[[1, 0, 2.5, 0, 1, -1.0]] * len(deferred[0].meta["warps"]))
    shifted = stage.process(replace(deferred[0], meta=moved))[0].data
    assert not np.array_equal(shifted, stage.process(deferred[0])[0].data)  # a moved reference is resampled
