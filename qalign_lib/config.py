"""Configuration as data: one YAML per model size in ``params/``, overridable key by key.

``resolve("7b", lr=1e-5)`` returns the size's settings with the overrides applied and type-checked. Unknown keys
and wrongly typed values are errors that name the key, the size file and the valid choices.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from .io import DataError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SIZES = ("tiny", "7b", "13b")


class ConfigError(ValueError):
    """A bad parameter: the message names it and the fix."""


def params_dir() -> Path:
    return Path(os.environ.get("QALIGN_PARAMS_DIR") or PROJECT_ROOT / "params")


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"missing parameter file {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of parameters at the top level")
    return data


def size_file(size: str) -> Path:
    path = params_dir() / f"{size}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in params_dir().glob("*.yaml") if not p.stem.startswith("study") and p.stem != "paper")
        raise ConfigError(f"unknown size {size!r}: no file {path}; known sizes: {', '.join(known)}")
    return path


def _coerce(key: str, value, default, source: str):
    """Make an override match the type of the size's default (papermill passes numbers and strings)."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
    elif isinstance(default, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and isinstance(default, float):
            return number
        if number is not None and number.is_integer():
            return int(number)
    elif isinstance(default, str):
        return str(value)
    elif isinstance(default, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return {**default, **value}
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # one number for every entry
            return {k: value for k in default}
    else:
        return value
    raise ConfigError(f"parameter {key}={value!r} ({source}): expected {type(default).__name__} like {default!r}")


def resolve(size: str, **overrides) -> dict:
    """Settings of ``size`` with ``overrides`` applied (None values are ignored)."""
    path = size_file(size)
    cfg = read_yaml(path)
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in cfg:
            raise ConfigError(f"unknown parameter {key!r} for size {size} ({path}); known: {', '.join(sorted(cfg))}")
        cfg[key] = _coerce(key, value, cfg[key], f"override of {path.name}")
    cfg["size"] = size
    return cfg


def overrides_from(namespace: dict, size: str) -> dict:
    """The size keys that a notebook's namespace sets (papermill injects them as variables)."""
    keys = read_yaml(size_file(size)).keys()
    return {k: namespace[k] for k in keys if namespace.get(k) is not None}


def runs_dir() -> Path:
    """Where runs are written: $QALIGN_RUNS_DIR, else runs/ in the project."""
    return Path(os.environ.get("QALIGN_RUNS_DIR") or PROJECT_ROOT / "runs").resolve()


def figures_dir() -> Path:
    return Path(os.environ.get("QALIGN_FIGURES_DIR") or PROJECT_ROOT / "figures").resolve()


__all__ = ["ConfigError", "DataError", "resolve", "overrides_from", "runs_dir", "figures_dir", "params_dir", "read_yaml"]
