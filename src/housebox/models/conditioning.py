"""What a prior is conditioned on, turned into vectors added to its token embeddings.

- Labels: an artist embedding plus the sum of genre embeddings, placed at position 0. Each has an
  extra "dropped" id: training drops labels at random so that sampling can use classifier-free guidance.
- Timing (top level): where in the track each position lies, as range embeddings of the total length,
  the offset in seconds and the fraction of the track done, added at every position.
- The beat clock (optional, every level): where each position lies within its beat and its bar, from
  the track's beat grid in training and from the requested tempo (or a prime's grid) when sampling.
- The level above (upsamplers): its codes, embedded and upsampled by the hop ratio with a transposed
  convolution, added at every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Labels:
    artist: Tensor  # LongTensor[B]
    genres: Tensor  # LongTensor[B x G], padded with -1


class LabelEmbedding(nn.Module):
    """(artist, genres) -> Tensor[B x D]. Id `n_artists` / `n_genres` means "dropped" (no label)."""

    def __init__(self, *, n_artists: int, n_genres: int, width: int) -> None:
        super().__init__()
        self.n_artists, self.n_genres = n_artists, n_genres
        self.artist = nn.Embedding(n_artists + 1, width)
        self.genre = nn.Embedding(n_genres + 2, width, padding_idx=n_genres + 1)  # last id: padding
        nn.init.normal_(self.artist.weight, std=0.02)
        nn.init.normal_(self.genre.weight, std=0.02)
        with torch.no_grad():
            self.genre.weight[n_genres + 1].zero_()

    def drop(self, labels: Labels, p: float, generator: torch.Generator | None = None) -> Labels:
        """Replace each item's labels by the dropped id with probability p (for classifier-free guidance)."""
        if p <= 0:
            return labels
        mask = torch.rand(labels.artist.shape, generator=generator).to(labels.artist.device) < p  # (B,)
        return self.dropped_like(labels, mask)

    def dropped_like(self, labels: Labels, mask: Tensor | None = None) -> Labels:
        mask = torch.ones_like(labels.artist, dtype=torch.bool) if mask is None else mask
        artist = torch.where(mask, torch.full_like(labels.artist, self.n_artists), labels.artist)
        genres = torch.full_like(labels.genres, -1)
        genres[:, 0] = self.n_genres
        genres = torch.where(mask[:, None], genres, labels.genres)
        return Labels(artist=artist, genres=genres)

    def forward(self, labels: Labels) -> Tensor:
        genres = torch.where(labels.genres < 0, torch.full_like(labels.genres, self.n_genres + 1), labels.genres)
        return self.artist(labels.artist) + self.genre(genres).sum(dim=1)  # (B, D)


class RangeEmbedding(nn.Module):
    """A continuous value in [low, high] -> the embedding of its bin: Tensor[...] -> Tensor[... x D]."""

    def __init__(self, *, bins: int, low: float, high: float, width: int) -> None:
        super().__init__()
        self.bins, self.low, self.high = bins, low, high
        self.embedding = nn.Embedding(bins, width)
        nn.init.normal_(self.embedding.weight, std=0.01)

    def forward(self, value: Tensor) -> Tensor:
        scaled = (value.float() - self.low) / (self.high - self.low)
        index = (scaled * self.bins).long().clamp(0, self.bins - 1)
        return self.embedding(index)


class TimingEmbedding(nn.Module):
    """Per-position timing: total length, offset and fraction done (seconds) -> Tensor[B x T x D]."""

    def __init__(self, *, bins: int, max_seconds: float, width: int) -> None:
        super().__init__()
        self.total = RangeEmbedding(bins=bins, low=0.0, high=max_seconds, width=width)
        self.offset = RangeEmbedding(bins=bins, low=0.0, high=max_seconds, width=width)
        self.fraction = RangeEmbedding(bins=bins, low=0.0, high=1.0, width=width)

    def forward(self, offset_seconds: Tensor, total_seconds: Tensor) -> Tensor:
        """offset_seconds Tensor[B x T], total_seconds Tensor[B] -> Tensor[B x T x D]."""
        total = total_seconds[:, None].expand_as(offset_seconds)  # (B, T)
        fraction = offset_seconds / total.clamp(min=1e-3)
        return self.total(total) + self.offset(offset_seconds) + self.fraction(fraction)


class BeatClockEmbedding(nn.Module):
    """Beat positions Tensor[B x T] (beats since a downbeat, float; NaN: no clock) -> Tensor[B x T x D].

    Fourier features of the phase within the beat and within the bar (harmonics 1..`harmonics` of each,
    so the finest detail is 1 / (2 * harmonics) of a beat), plus a flag saying the clock is known, through
    one linear layer. A continuous phase: the same beat position means the same vector at any token rate.
    """

    def __init__(self, *, harmonics: int, beats_per_bar: int, width: int) -> None:
        super().__init__()
        self.beats_per_bar = beats_per_bar
        self.register_buffer("orders", torch.arange(1, harmonics + 1, dtype=torch.float32), persistent=False)
        self.project = nn.Linear(4 * harmonics + 1, width, bias=False)
        nn.init.normal_(self.project.weight, std=0.02)

    def features(self, beats: Tensor) -> Tensor:
        """Tensor[B x T] -> Tensor[B x T x (4 * harmonics + 1)]."""
        known = torch.isfinite(beats)
        beats = torch.where(known, beats, torch.zeros_like(beats)).float()
        beat_phase = 2 * torch.pi * beats[..., None] * self.orders  # (B, T, H)
        bar_phase = beat_phase / self.beats_per_bar  # (B, T, H)
        waves = torch.cat([beat_phase.sin(), beat_phase.cos(), bar_phase.sin(), bar_phase.cos()], dim=-1)
        waves = waves * known[..., None]
        return torch.cat([waves, known[..., None].float()], dim=-1)

    def forward(self, beats: Tensor) -> Tensor:
        return self.project(self.features(beats).to(self.project.weight.dtype))


class UpperLevelConditioner(nn.Module):
    """Codes of the level above -> per-position vectors at this level's rate.

    LongTensor[B x N] -> Tensor[B x N * ratio x D]: embed, a residual conv, then a transposed conv that
    upsamples by `ratio` (the hop ratio between the levels).
    """

    def __init__(self, *, codebook_size: int, ratio: int, width: int) -> None:
        super().__init__()
        self.ratio = ratio
        self.embedding = nn.Embedding(codebook_size, width)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.mix = nn.Sequential(nn.GELU(), nn.Conv1d(width, width, kernel_size=3, padding=1))
        self.up = nn.ConvTranspose1d(width, width, kernel_size=ratio, stride=ratio)
        self.norm = nn.LayerNorm(width)

    def forward(self, upper: Tensor) -> Tensor:
        x = self.embedding(upper).transpose(1, 2)  # (B, D, N)
        x = x + self.mix(x)
        x = self.up(x).transpose(1, 2)  # (B, N * ratio, D)
        return self.norm(x)
