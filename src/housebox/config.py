"""Presets (small YAML files) and command-line overrides, translated into typed dataclasses.

A preset has one section per thing it configures, e.g. `vqvae` (VQVAEConfig), `vqvae_train`
(TrainConfig) and `vqvae_data` (AudioDataConfig). `--set vqvae.width=32` overrides one field; the value
is read as YAML, so `--set vqvae.downs=[2,4]` works too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
T = TypeVar("T")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict[str, dict]:
    """A preset by name (`tiny`, `small`, `jukebox`) or a path to a YAML file of the same shape."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ValueError(f"unknown preset {name_or_path!r}; choose one of {', '.join(preset_names())} or a .yaml path")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: a preset maps section names to mappings of fields")
    return data


def apply_overrides(preset: dict[str, dict], overrides: list[str] | None) -> dict[str, dict]:
    """Return a copy of `preset` with each `section.field=value` applied."""
    out = {k: dict(v) for k, v in preset.items()}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise ValueError(f"--set {item!r}: expected section.field=value, e.g. vqvae.width=32")
        if section not in out:
            raise ValueError(f"--set {item!r}: no section {section!r}; sections are {', '.join(sorted(out))}")
        out[section][field] = yaml.safe_load(text)
    return out


def build(cls: type[T], values: dict[str, Any] | None, section: str = "") -> T:
    """Instantiate the frozen dataclass `cls` from a mapping, naming any unknown field."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} in section {section or cls.__name__}; "
                         f"valid: {', '.join(sorted(known))}")
    for f in dataclasses.fields(cls):  # YAML has lists where the dataclass has tuples
        if isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def as_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a JSON-friendly dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
