"""Rebuild a trained model from its model directory alone (config.json + model.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch

from housebox.config import build
from housebox.models.prior import Prior, PriorConfig
from housebox.models.vqvae import VQVAE, VQVAEConfig
from housebox.store import WEIGHTS, load_weights, read_config

ADVERSARIAL_DECODERS = "decoders_adversarial.safetensors"  # written by `housebox train decoder`


def _load(model_dir: str | Path, kinds: tuple[str, ...], device: torch.device | str, adversarial: bool = True):
    meta = read_config(model_dir)
    describe = meta.get("describe", {})
    if describe.get("kind") not in kinds:
        raise ValueError(f"{model_dir}: holds a {describe.get('kind')!r} model, not {' or '.join(kinds)}")
    if describe["kind"] == "vqvae":
        model = VQVAE(build(VQVAEConfig, describe["model"], "vqvae"))
    else:
        model = Prior(build(PriorConfig, describe["model"], describe["kind"]))
    model.load_state_dict(load_weights(Path(model_dir) / WEIGHTS))
    decoders = meta.get("decoders")
    if adversarial and decoders:  # fine-tuned decoders replace the original ones of their levels
        path = Path(model_dir) / decoders["file"]
        if not path.exists():
            raise ValueError(f"{model_dir}: config.json names decoder weights {decoders['file']} that are missing; "
                             f"remove its \"decoders\" entry to use the original decoders")
        state = load_weights(path)
        expected = {k for k in model.state_dict() if any(k.startswith(f"decoders.{lv}.") for lv in decoders["levels"])}
        if set(state) != expected:
            raise ValueError(f"{path}: does not hold the decoders of levels {decoders['levels']} of this VQ-VAE")
        model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def load_vqvae(model_dir: str | Path, device: torch.device | str = "cpu", adversarial: bool = True) -> VQVAE:
    """The EMA weights of a trained VQ-VAE, in eval mode; with the adversarially fine-tuned decoders where
    `housebox train decoder` installed them (`adversarial=False`: the original decoders)."""
    return _load(model_dir, ("vqvae",), device, adversarial)


def load_prior(model_dir: str | Path, device: torch.device | str = "cpu") -> Prior:
    """The EMA weights of a trained top-level prior or upsampler, in eval mode."""
    return _load(model_dir, ("prior", "upsampler"), device)
