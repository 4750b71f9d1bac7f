"""How well a VQ-VAE reconstructs clips, level by level (the figures its training validates on and
`housebox evaluate-vqvae` reports), and how it uses its codebooks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from housebox.models.losses import mel_l1, multi_resolution_stft_loss, si_sdr, spectral_convergence_db
from housebox.models.vqvae import VQVAE


@dataclass(frozen=True)
class LevelReport:
    level: int
    hop: int
    tokens_per_second: float
    bitrate_kbps: float
    spectral_convergence_db: float  # lower is better
    mr_stft: float  # multi-resolution STFT distance, lower is better
    mel_l1: float  # lower is better
    si_sdr_db: float  # higher is better
    codes_used_percent: float
    perplexity: float


@torch.no_grad()
def reconstruct(model: VQVAE, clips: Tensor, batch_size: int = 4) -> tuple[list[Tensor], list[Tensor]]:
    """(recons per level [N x 1 x T], codes per level [N x T/hop]) through encode -> decode."""
    device = next(model.parameters()).device
    recons: list[list[Tensor]] = [[] for _ in model.config.hops]
    codes: list[list[Tensor]] = [[] for _ in model.config.hops]
    for start in range(0, clips.shape[0], batch_size):
        batch = clips[start : start + batch_size].to(device)
        for level, level_codes in enumerate(model.encode(batch)):
            codes[level].append(level_codes.cpu())
            recons[level].append(model.decode(level_codes, level).float().cpu())
    return [torch.cat(r) for r in recons], [torch.cat(c) for c in codes]


def level_metrics(model: VQVAE, clips: Tensor, recons: list[Tensor], codes: list[Tensor]) -> list[LevelReport]:
    config = model.config
    out = []
    for level, (recon, level_codes) in enumerate(zip(recons, codes)):
        counts = torch.bincount(level_codes.flatten(), minlength=config.codebook_size).double()
        probs = counts / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        tokens = config.tokens_per_second(level)
        out.append(LevelReport(
            level=level,
            hop=config.hops[level],
            tokens_per_second=round(tokens, 2),
            bitrate_kbps=round(tokens * math.log2(config.codebook_size) / 1000, 3),
            spectral_convergence_db=float(spectral_convergence_db(clips, recon).mean()),
            mr_stft=float(multi_resolution_stft_loss(clips, recon)),
            mel_l1=float(mel_l1(clips, recon, config.sample_rate).mean()),
            si_sdr_db=float(si_sdr(clips, recon).mean()),
            codes_used_percent=float(100.0 * (counts > 0).float().mean()),
            perplexity=float(entropy.exp()),
        ))
    return out
