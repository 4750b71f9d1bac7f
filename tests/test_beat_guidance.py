"""Guidance by the beat clock: clock dropout in training, the clock-unknown branch in sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from housebox.generate.sampling import guided_logits, sample_codes
from housebox.models.conditioning import Labels
from housebox.models.prior import Conditioning, Prior, PriorConfig
from housebox.train.prior import drop_clock

V = 16
KICK = 0  # the code the synthetic tracks play on every beat
TOKENS_PER_BEAT = 8


def test_one_branch_is_classifier_free_guidance_and_branches_compose():
    torch.manual_seed(0)
    cond, no_labels, no_clock = torch.randn(3, 4, V).unbind(0)
    one = guided_logits(torch.cat([cond, no_clock]), [3.0])
    assert torch.allclose(one, no_clock + 3.0 * (cond - no_clock), atol=1e-6)
    assert torch.equal(guided_logits(torch.cat([cond, no_clock]), [1.0]), cond)
    both = guided_logits(torch.cat([cond, no_labels, no_clock]), [2.0, 3.0])
    assert torch.allclose(both, cond + 1.0 * (cond - no_labels) + 2.0 * (cond - no_clock), atol=1e-6)


def test_clock_dropout_hides_whole_windows():
    beats = torch.arange(40, dtype=torch.float32).reshape(4, 10) / 8
    assert drop_clock(beats, 0.0) is beats and drop_clock(None, 0.5) is None
    assert torch.isnan(drop_clock(beats, 1.0)).all()
    many = torch.zeros(4000, 3)
    dropped = torch.isnan(drop_clock(many, 0.25, torch.Generator().manual_seed(0)))
    assert (dropped.all(dim=1) == dropped.any(dim=1)).all()  # a window loses all of its clock or none
    assert 0.22 < dropped.all(dim=1).float().mean() < 0.28


def kick_prior(clock_dropout: float) -> Prior:
    torch.manual_seed(0)
    return Prior(PriorConfig(level=2, codebook_size=V, n_artists=1, n_genres=1, max_genres=1, sample_rate=16000,
                             hop=128, width=48, depth=2, heads=2, n_ctx=32, block_size=8, timing=False,
                             beat_clock=True, beat_harmonics=4, clock_dropout=clock_dropout, label_dropout=0.0))


def beat_grid(b: int, n: int, offsets: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)[None] / TOKENS_PER_BEAT + offsets[:, None]  # (B, n)


def synthetic_windows(b: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes where every beat plays KICK half of the time (any other code otherwise), with their beats."""
    offsets = torch.randint(0, TOKENS_PER_BEAT, (b,), generator=generator).float() / TOKENS_PER_BEAT
    beats = beat_grid(b, n, offsets)
    codes = torch.randint(1, V, (b, n), generator=generator)
    on_beat = (beats * TOKENS_PER_BEAT).round().long() % TOKENS_PER_BEAT == 0
    kick = on_beat & (torch.rand(b, n, generator=generator) < 0.5)
    return torch.where(kick, torch.full_like(codes, KICK), codes), beats


def train_kick_prior(clock_dropout: float, steps: int = 300) -> Prior:
    prior = kick_prior(clock_dropout)
    optimiser = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    labels = Labels(artist=torch.zeros(16, dtype=torch.long), genres=torch.zeros(16, 1, dtype=torch.long))
    for _ in range(steps):
        codes, beats = synthetic_windows(16, 32, generator)
        cond = Conditioning(labels=labels, start=torch.zeros(16, dtype=torch.long),
                            total_tokens=torch.full((16,), 1000), beats=drop_clock(beats, clock_dropout, generator))
        loss = prior(codes, cond).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return prior.eval()


def kick_rate_on_beats(prior: Prior, beat_guidance: float, seed: int = 0) -> tuple[float, torch.Tensor]:
    n, b = 96, 8
    beats = beat_grid(b, n, torch.zeros(b))
    codes = sample_codes(prior, n_tokens=n, labels=Labels(artist=torch.zeros(b, dtype=torch.long),
                                                          genres=torch.zeros(b, 1, dtype=torch.long)),
                         beats=beats, beat_guidance=beat_guidance, generator=torch.Generator().manual_seed(seed),
                         progress=False)
    on_beat = torch.arange(n) % TOKENS_PER_BEAT == 0
    return float((codes[:, on_beat] == KICK).float().mean()), codes


@pytest.fixture(scope="module")
def trained():
    return train_kick_prior(clock_dropout=0.2)


def test_guidance_by_the_clock_puts_more_kicks_on_the_beat(trained):
    plain, _ = kick_rate_on_beats(trained, 1.0)
    guided, codes = kick_rate_on_beats(trained, 4.0)
    assert 0.25 < plain < 0.75  # the model learnt the data: about half of the beats kick
    assert guided > plain + 0.15  # guidance sharpens what the clock says
    off_beat = torch.arange(codes.shape[1]) % TOKENS_PER_BEAT != 0
    assert float((codes[:, off_beat] == KICK).float().mean()) < 0.1  # and does not kick off the beat
    assert torch.equal(kick_rate_on_beats(trained, 4.0)[1], codes)  # same seed, same codes


def test_guidance_is_off_for_priors_trained_without_clock_dropout(trained):
    never_dropped = dataclasses.replace(trained.config, clock_dropout=0.0)
    prior = Prior(never_dropped).eval()
    prior.load_state_dict(trained.state_dict())
    assert torch.equal(kick_rate_on_beats(prior, 4.0)[1], kick_rate_on_beats(prior, 1.0)[1])
    assert not torch.equal(kick_rate_on_beats(trained, 4.0)[1], kick_rate_on_beats(trained, 1.0)[1])
