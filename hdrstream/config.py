"""Config files: TOML sections mapped onto the stages' config dataclasses.

Each stage owns a dataclass (``SimConfig``, ``PreprocessConfig``, ``SinkConfig`` …); a config
file has one table per section, and ``HDRSTREAM_<SECTION>_<FIELD>`` environment variables
override single fields (handy in containers). Unknown keys are errors, not silent typos.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Bring a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{where}: cannot use {value!r} as {typ}")
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        out = [_coerce(v, inner, where) for v in items]
        return tuple(out) if origin is tuple else out
    if typ is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{where}: {value!r} is not a boolean")
        return bool(value)
    if typ in (int, float, str):
        try:
            return typ(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {value!r} is not of type {typ.__name__}") from None
    return value


def section(cls: type[T], data: dict[str, Any], name: str, env: dict[str, str] | None = None) -> T:
    """Build dataclass ``cls`` from ``data[name]`` plus ``HDRSTREAM_<NAME>_<FIELD>`` overrides."""
    env = os.environ if env is None else env
    raw = dict(data.get(name, {}))
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(f"[{name}] unknown key(s) {unknown}; known: {sorted(fields)}")
    prefix = f"HDRSTREAM_{name.upper()}_"
    for key, value in env.items():
        if key.startswith(prefix):
            field = key[len(prefix):].lower()
            if field not in fields:
                raise ValueError(f"{key}: {cls.__name__} has no field {field!r}")
            raw[field] = value
    kwargs = {k: _coerce(v, hints[k], f"[{name}].{k}") for k, v in raw.items()}
    return cls(**kwargs)
