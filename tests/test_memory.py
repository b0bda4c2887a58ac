"""The allocator tuning every hdrstream process applies (hdrstream.memory)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_keeps_freed_image_buffers_in_the_process():
    """In a fresh process: mallopt takes the settings, and full-size images and windows
    freed and allocated again, on the main thread or another, come back without the kernel
    faulting their pages in again."""
    code = """
import resource, threading, numpy as np
from hdrstream.memory import keep_freed_memory
assert keep_freed_memory() and keep_freed_memory()  # once, then remembered
def frame_of_work():  # four full-size images and a five-frame window (75 MB, above any mmap
    # threshold) alive at once, then all freed, as a stage does
    return [np.ones((814, 1536, 3), np.float32) for _ in range(4)] + [np.ones((5, 814, 1536, 3), np.float32)]
def on_a_thread():  # as the pipeline's stage threads allocate
    t = threading.Thread(target=frame_of_work)
    t.start()
    t.join()
frame_of_work()
on_a_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    frame_of_work()
    on_a_thread()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert faults < 500  # 5 here; ~2,200 with the images alone tuned (each window mmap'd afresh)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_tuning_can_be_turned_off_by_the_environment():
    """HDRSTREAM_KEEP_MEMORY=0: glibc keeps its defaults (a process on a shared machine that
    should hand memory back)."""
    code = "from hdrstream.memory import keep_freed_memory; print(keep_freed_memory())"
    env = {**os.environ, "HDRSTREAM_KEEP_MEMORY": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
