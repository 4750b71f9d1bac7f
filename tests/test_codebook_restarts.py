"""Codebook restarts that scale with the batch (issue 12): the `jukebox` VQ-VAE's top-level codebook
restarts a small, bounded share of its codes per step at batch 1 and at batch 16. The old absolute
threshold of 1.0 restarted nearly every code every step at batch 1 and most of them at batch 16."""

from __future__ import annotations

import pytest
import torch

from housebox.config import build, load_preset
from housebox.models.codebook import EMACodebook
from housebox.models.vqvae import VQVAEConfig

STEPS = 240


def restart_shares(batch: int, **restart) -> tuple[float, float]:
    """Mean and largest share of the codebook restarted per step, after the first third of the steps.

    The encoder is stood in for by a stationary stream: vectors around 4,096 sounds used with
    Zipf-like frequencies (a few common, many rare), as a catalogue's frames are."""
    preset = load_preset("jukebox")
    config = build(VQVAEConfig, preset["vqvae"], "vqvae")
    top_hop = config.hops[-1]
    per_item = int(preset["vqvae_data"]["chunk_seconds"] * config.sample_rate) // top_hop  # 137 vectors at level 2
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4096, config.code_width, generator=generator)
    weights = 1.0 / torch.arange(1, 4097).float()
    torch.manual_seed(0)
    codebook = EMACodebook(codebook_size=config.codebook_size, code_width=config.code_width,
                           decay=config.ema_decay, **restart).train()
    shares = []
    for step in range(STEPS):
        picked = torch.multinomial(weights, batch * per_item, replacement=True, generator=generator)
        vectors = centres[picked] + 0.3 * torch.randn(batch * per_item, config.code_width, generator=generator)
        z = vectors.view(batch, per_item, -1).transpose(1, 2).contiguous()  # (B, D, N)
        share = float(codebook(z).restarts)
        if step >= STEPS // 3:
            shares.append(share)
    return sum(shares) / len(shares), max(shares)


def preset_restarts() -> dict:
    vqvae = load_preset("jukebox")["vqvae"]
    return {k: vqvae[k] for k in ("restart_threshold", "restart_relative", "restart_max_share")}


@pytest.mark.parametrize("batch", [1, 16])
def test_jukebox_codebook_restarts_a_bounded_share_at_any_batch(batch: int) -> None:
    restart = preset_restarts()
    assert restart["restart_relative"]
    mean, largest = restart_shares(batch, **restart)
    assert largest <= restart["restart_max_share"] + 1e-6
    assert 0.0 < mean < 0.015  # codes do still restart, about one in a hundred per step


@pytest.mark.parametrize("batch", [1, 16])
def test_an_absolute_threshold_restarts_most_codes(batch: int) -> None:
    """What the relative threshold fixes (and what the test above would catch)."""
    mean, _ = restart_shares(batch, restart_threshold=1.0)
    assert mean > 0.7


def test_relative_threshold_is_the_even_share() -> None:
    """K = 4 codes, 8 vectors a step: the even share is 2; threshold 0.5 -> restart below a count of 1."""
    codebook = EMACodebook(codebook_size=4, code_width=2, decay=0.5, restart_threshold=0.5, restart_relative=True)
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = points.repeat(2, 1).T[None]  # (1, 2, 8): each point twice
    codebook(z)  # initialise
    with torch.no_grad():  # one code on each point, count 2 (initialisation may draw a point twice)
        codebook.embeddings.copy_(points)
        codebook.ema_sums.copy_(points * 2.0)
        codebook.ema_counts.fill_(2.0)
    lopsided = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 0.0]] + [[0.0, 1.0]] + [[1.0, 1.0]]).T[None]
    out = codebook(lopsided)  # counts -> 0.5 * 2 + 0.5 * (5, 1, 1, 1) = (3.5, 1.5, 1.5, 1.5): none below 1
    assert float(out.restarts) == 0.0
    out = codebook(torch.zeros(1, 2, 8))  # all on code 0: the others fall to 0.75 < 1 and restart
    assert float(out.restarts) == pytest.approx(3 / 4)


def test_restart_share_is_capped_least_used_first() -> None:
    codebook = EMACodebook(codebook_size=8, code_width=2, restart_threshold=0.5, restart_relative=True,
                           restart_max_share=0.25)
    codebook(torch.randn(1, 2, 64))
    with torch.no_grad():
        codebook.ema_counts.copy_(torch.tensor([9.0, 0.1, 8.0, 0.3, 0.2, 8.0, 0.4, 8.0]))
    before = codebook.embeddings.clone()
    codebook._restart_dead(torch.randn(64, 2) + 100.0, total=64)
    moved = (codebook.embeddings - before).norm(dim=1) > 50  # restarted onto the far-away vectors
    assert moved.tolist() == [False, True, False, False, True, False, False, False]
    assert float(codebook.restarted) == pytest.approx(2 / 8)
