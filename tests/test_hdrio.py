"""EXR/HDR file I/O: real round trips, and no partial file when a write fails."""
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from hdrstream.hdrio import atomic_write, read_exr, read_hdr_image, write_exr


def hdr_image(h=20, w=30):
    rng = np.random.default_rng(1)
    return (2.0 ** rng.uniform(-8, 10, (h, w, 3))).astype(np.float32)


def test_exr_round_trip_half_and_full_float(tmp_path):
    img = hdr_image()
    write_exr(tmp_path / "h.exr", img)
    np.testing.assert_allclose(read_exr(tmp_path / "h.exr"), img, rtol=1e-3)
    write_exr(tmp_path / "f.exr", img, half=False)
    np.testing.assert_array_equal(read_exr(tmp_path / "f.exr"), img)


def test_radiance_hdr_is_read_as_rgb(tmp_path):
    img = hdr_image()
    img[..., 0] *= 4  # make the channels distinguishable
    cv2.imwrite(str(tmp_path / "x.hdr"), img[..., ::-1].copy())
    got = read_hdr_image(tmp_path / "x.hdr")
    # RGBE shares one exponent per pixel: ~8 bits of mantissa relative to the brightest channel
    assert np.all(np.abs(got - img) <= 0.01 * img.max(axis=-1, keepdims=True))
    assert got[..., 0].mean() > 2 * got[..., 2].mean()


def test_unreadable_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.exr").write_bytes(b"not an exr")
    with pytest.raises(ValueError, match="cannot read EXR"):
        read_exr(tmp_path / "bad.exr")
    with pytest.raises(FileNotFoundError):
        read_exr(tmp_path / "missing.exr")
    with pytest.raises(ValueError, match="not an HDR image"):
        read_hdr_image(tmp_path / "x.png")


def test_failed_write_leaves_no_file(tmp_path):
    def boom(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "out.exr", boom)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"needs \(H, W, 3\)"):
        write_exr(tmp_path / "x.exr", np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_get_the_mode_a_plain_open_would_give(tmp_path):
    """Not mkstemp's private 0600: other users and containers sharing the volume read them."""
    mask = os.umask(0o022)
    os.umask(mask)
    plain = tmp_path / "plain"
    plain.write_text("x")
    exr = write_exr(tmp_path / "a.exr", np.ones((4, 4, 3), np.float32))
    report = atomic_write(tmp_path / "r.json", lambda tmp: Path(tmp).write_text("{}"))
    for p in (exr, report):
        assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask
