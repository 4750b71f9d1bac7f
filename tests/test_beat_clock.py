"""The beat clock: each token's place in the beat and the bar, embedded and added like the timing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from housebox.models.conditioning import BeatClockEmbedding, Labels
from housebox.models.prior import Conditioning, Prior, PriorConfig

V = 32


def clocked_prior(upsampler: bool = False, rotary: bool = True) -> Prior:
    torch.manual_seed(0)
    config = PriorConfig(level=1 if upsampler else 2, codebook_size=V, n_artists=3, n_genres=4, max_genres=2,
                         sample_rate=16000, hop=32 if upsampler else 128, width=32, depth=2, heads=2, n_ctx=32,
                         block_size=8, timing=not upsampler, timing_bins=8, max_seconds=10.0,
                         upper_codebook_size=V if upsampler else 0, upper_ratio=4 if upsampler else 1,
                         rotary=rotary, beat_clock=True, beat_harmonics=4)
    return Prior(config).eval()


def cond(prior: Prior, beats: torch.Tensor | None) -> Conditioning:
    b = 2
    upper = torch.randint(0, V, (b, prior.config.n_ctx // 4), generator=torch.Generator().manual_seed(1)) \
        if prior.config.is_upsampler else None
    return Conditioning(labels=Labels(artist=torch.tensor([0, 1]), genres=torch.tensor([[1, -1], [2, 3]])),
                        start=torch.full((b,), 40), total_tokens=torch.full((b,), 500), upper=upper, beats=beats)


def steady(n: int, tokens_per_beat: float, offset: float = 0.0) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float32) / tokens_per_beat + offset)[None].repeat(2, 1)


def test_clock_vectors_repeat_every_bar_and_differ_within_it():
    clock = BeatClockEmbedding(harmonics=4, beats_per_bar=4, width=16)
    beats = torch.tensor([[0.25, 4.25, 1.25, 0.5, float("nan")]])
    out = clock(beats)[0]  # (5, 16)
    assert torch.allclose(out[0], out[1], atol=1e-5)  # one bar later: the same place
    assert not torch.allclose(out[0], out[2], atol=1e-3)  # same place in the beat, another beat of the bar
    assert not torch.allclose(out[0], out[3], atol=1e-3)  # another place in the beat
    features = clock.features(beats)[0]
    assert features[4, -1] == 0 and torch.count_nonzero(features[4]) == 0  # unknown: no waves, flag off
    assert (features[:4, -1] == 1).all()
    assert torch.allclose(features[0, :4], torch.sin(2 * math.pi * 0.25 * torch.arange(1, 5.0)), atol=1e-5)


@pytest.mark.parametrize("upsampler", [False, True])
def test_cached_steps_equal_full_forward_with_the_clock(upsampler):
    prior = clocked_prior(upsampler)
    c = cond(prior, steady(32, 7.3, offset=-0.4))
    codes = torch.randint(0, V, (2, 32), generator=torch.Generator().manual_seed(2))
    full = prior(codes, c).logits
    context = prior.context(c)
    ids = prior.inputs(codes)
    cache = prior.new_cache(2)
    steps = [prior.step(ids[:, :5], context, cache, 0)]
    steps += [prior.step(ids[:, t : t + 1], context, cache, t) for t in range(5, 32)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_the_clock_reaches_the_logits_and_none_means_unknown():
    prior = clocked_prior()
    codes = torch.randint(0, V, (2, 32), generator=torch.Generator().manual_seed(3))
    on_beat = prior(codes, cond(prior, steady(32, 8.0))).logits
    shifted = prior(codes, cond(prior, steady(32, 8.0, offset=0.5))).logits
    assert not torch.allclose(on_beat, shifted, atol=1e-4)
    unknown = prior(codes, cond(prior, torch.full((2, 32), float("nan")))).logits
    assert torch.allclose(prior(codes, cond(prior, None)).logits, unknown)


def test_old_configs_have_no_clock():
    prior = Prior(PriorConfig(codebook_size=V, width=32, depth=1, heads=2, n_ctx=16))
    assert prior.beat_clock is None and not any("beat_clock" in k for k in prior.state_dict())


def test_training_windows_carry_each_tokens_place_on_the_tracks_own_grid(demo_data):
    """The demo corpus starts every track on a downbeat and puts a kick on every beat: a token at the
    time of the generator's beat k must read beat position k (so bars start at multiples of 4)."""
    import json

    import numpy as np

    from housebox.data.dataset import CodeWindows, tracks_for
    from housebox.data.labels import Vocabulary

    sr, hop, n_ctx = 16000, 128, 256
    corpus = json.loads((demo_data.parent / "corpus" / "corpus.json").read_text())
    tempo = {Path(t["path"]).name: t["bpm"] for t in corpus["tracks"]}
    rows = tracks_for(demo_data, "train", sr)
    codes_dir = demo_data / "codes" / "l2"
    codes_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:  # codes of the right length; their values do not matter here
        path = codes_dir / f"{row['id']}.npy"
        if not path.exists():
            np.save(path, np.zeros(-(-row["samples"] // hop), dtype=np.int16))
    vocab = Vocabulary.load(demo_data / "labels.json")
    windows = CodeWindows(demo_data, rows, 2, n_ctx, 8, vocab, 4, seconds_per_token=hop / sr, beat_clock=True)
    picks = list(range(len(rows)))
    starts = [windows._start(i, 0.6) for i in picks]
    batch = windows.batch(picks, starts)
    assert batch.beats.shape == (len(rows), n_ctx) and torch.isfinite(batch.beats).all()
    for i, row in enumerate(rows):
        seconds = (starts[i] + torch.arange(n_ctx, dtype=torch.float64)) * hop / sr
        expected = seconds * tempo[Path(row["path"]).name] / 60.0
        offset = torch.remainder(batch.beats[i].double() - expected + 2.0, 4.0) - 2.0  # whole bars do not matter
        error = offset.abs().max()
        assert error < 0.03, (row["artist"], float(error))  # 0.03 beats: about 15 ms
