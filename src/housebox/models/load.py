"""Rebuild a trained model from its model directory alone (config.json + model.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch

from housebox.config import build
from housebox.models.prior import Prior, PriorConfig
from housebox.models.vqvae import VQVAE, VQVAEConfig
from housebox.train.checkpoint import WEIGHTS, load_weights, read_config


def _load(model_dir: str | Path, kinds: tuple[str, ...], device: torch.device | str):
    meta = read_config(model_dir)
    describe = meta.get("describe", {})
    if describe.get("kind") not in kinds:
        raise ValueError(f"{model_dir}: holds a {describe.get('kind')!r} model, not {' or '.join(kinds)}")
    if describe["kind"] == "vqvae":
        model = VQVAE(build(VQVAEConfig, describe["model"], "vqvae"))
    else:
        model = Prior(build(PriorConfig, describe["model"], describe["kind"]))
    model.load_state_dict(load_weights(Path(model_dir) / WEIGHTS))
    return model.to(device).eval()


def load_vqvae(model_dir: str | Path, device: torch.device | str = "cpu") -> VQVAE:
    """The EMA weights of a trained VQ-VAE, in eval mode."""
    return _load(model_dir, ("vqvae",), device)


def load_prior(model_dir: str | Path, device: torch.device | str = "cpu") -> Prior:
    """The EMA weights of a trained top-level prior or upsampler, in eval mode."""
    return _load(model_dir, ("prior", "upsampler"), device)
