"""The model-directory format: `config.json` + `model.safetensors` (EMA weights) + `train_state.pt`, and
the atomic writes and hashes every layer uses (models, data and generation read model directories; training
writes them).

Every file is written to a temporary name and renamed, so a kill never leaves a torn checkpoint.
Loading never unpickles: weights come from safetensors, and `train_state.pt` (optimiser, raw weights,
step) is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def strict_json(data: Any) -> Any:
    """`data` with every non-finite float as the string "inf", "-inf" or "nan": Python's json writes them as
    Infinity / NaN, which strict readers (a browser's JSON.parse, jq) refuse; float("inf") reads the string."""
    if isinstance(data, float) and not math.isfinite(data):
        return "nan" if math.isnan(data) else ("inf" if data > 0 else "-inf")
    if isinstance(data, dict):
        return {key: strict_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(value) for value in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON that strict readers accept (non-finite floats as strings, see strict_json)."""
    text = json.dumps(strict_json(data), indent=1, default=str, allow_nan=False)
    _replace_atomically(Path(path), lambda tmp: tmp.write_text(text))


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    _replace_atomically(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_train_state(path: Path, state: dict) -> None:
    _replace_atomically(Path(path), lambda tmp: torch.save(state, tmp))


def load_train_state(path: Path, device: torch.device | str = "cpu") -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: unreadable training state ({str(err).splitlines()[0][:120]})") from None


def load_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:
        raise ValueError(f"{path}: unreadable weights ({str(err).splitlines()[0][:120]})") from None


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{model_dir}: no {CONFIG} here; is this a housebox model directory?")
    data = json.loads(path.read_text())
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer housebox (format {data['format_version']} > {FORMAT_VERSION})")
    return data


def weights_hash(model_dir: str | Path, name: str = WEIGHTS) -> str:
    """sha256 of a model directory's weights file, for reports and code-cache bookkeeping."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / name, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
