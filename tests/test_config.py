"""Config sections: TOML → dataclass, environment overrides, clear errors for typos."""
from dataclasses import dataclass

import pytest

from hdrstream.config import load_toml, section


@dataclass
class Demo:
    width: int = 640
    ratios: tuple[float, ...] | None = None
    realtime: bool = False
    gt_dir: str | None = None


def test_toml_section_with_types(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[sim]\nwidth = 320\nratios = [1, 8]\nrealtime = true\n')
    cfg = section(Demo, load_toml(f), "sim", env={})
    assert cfg == Demo(width=320, ratios=(1.0, 8.0), realtime=True)


def test_environment_overrides_a_field():
    env = {"HDRSTREAM_SIM_WIDTH": "1536", "HDRSTREAM_SIM_RATIOS": "1,4,16", "HDRSTREAM_SIM_REALTIME": "no",
           "HDRSTREAM_SIM_GT_DIR": "none"}
    assert section(Demo, {"sim": {"width": 3}}, "sim", env=env) == Demo(width=1536, ratios=(1.0, 4.0, 16.0))


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match=r"\[sim\] unknown key\(s\) \['widht'\]"):
        section(Demo, {"sim": {"widht": 3}}, "sim", env={})


def test_bad_value_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="is not of type int"):
        section(Demo, {"sim": {"width": "wide"}}, "sim", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[sim\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(FileNotFoundError):
        load_toml(tmp_path / "missing.toml")
