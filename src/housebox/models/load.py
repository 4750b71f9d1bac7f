"""Rebuild a trained model from its model directory alone (config.json + model.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch

from housebox.config import build
from housebox.models.vqvae import VQVAE, VQVAEConfig
from housebox.train.checkpoint import WEIGHTS, load_weights, read_config


def load_vqvae(model_dir: str | Path, device: torch.device | str = "cpu") -> VQVAE:
    """The EMA weights of a trained VQ-VAE, in eval mode."""
    meta = read_config(model_dir)
    describe = meta.get("describe", {})
    if describe.get("kind") != "vqvae":
        raise ValueError(f"{model_dir}: holds a {describe.get('kind')!r} model, not a VQ-VAE")
    model = VQVAE(build(VQVAEConfig, describe["model"], "vqvae"))
    model.load_state_dict(load_weights(Path(model_dir) / WEIGHTS))
    return model.to(device).eval()
