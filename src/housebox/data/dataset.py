"""Random training windows drawn from a prepared dataset: audio chunks for the VQ-VAE.

Every draw takes a `torch.Generator`, so the training loop can make each step's batch a pure function
of (seed, step, rank) — the basis of exact resumption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from housebox.data.prepare import load_track, read_manifest


@dataclass(frozen=True)
class AudioDataConfig:
    chunk_seconds: float = 1.0


def tracks_for(data_dir: str | Path, split: str, sample_rate: int) -> list[dict]:
    """Manifest rows of one split, checked against the sample rate the model expects."""
    rows = read_manifest(data_dir)
    if not rows:
        raise ValueError(f"{data_dir}: no prepared tracks (run `housebox prepare SRC -o {data_dir}` first)")
    rates = {r["sample_rate"] for r in rows}
    if rates != {sample_rate}:
        raise ValueError(f"{data_dir} holds audio at {sorted(rates)} Hz but the model expects {sample_rate} Hz; "
                         f"prepare with --sr {sample_rate} or override the model's sample_rate")
    chosen = [r for r in rows if r["split"] == split]
    if not chosen and split == "valid":  # a one-track dataset: validate on the training track
        chosen = rows
    if not chosen:
        raise ValueError(f"{data_dir}: no tracks in split {split!r}")
    return chosen


class AudioChunks:
    """Draws batches `Tensor[B x 1 x T]` of random windows, tracks weighted by their length."""

    def __init__(self, data_dir: str | Path, rows: list[dict], batch_size: int, chunk_samples: int):
        self.data_dir = Path(data_dir)
        self.rows = rows
        self.batch_size = batch_size
        self.chunk = chunk_samples
        lengths = np.array([max(1, r["samples"] - chunk_samples + 1) for r in rows], dtype=np.float64)
        self.weights = torch.tensor(lengths / lengths.sum())
        self._audio: dict[str, np.ndarray] = {}

    def track(self, track_id: str) -> np.ndarray:
        if track_id not in self._audio:
            self._audio[track_id] = load_track(self.data_dir, track_id)
        return self._audio[track_id]

    def __call__(self, generator: torch.Generator) -> Tensor:
        picks = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=generator).tolist()
        starts = torch.rand(self.batch_size, generator=generator, dtype=torch.float64).tolist()
        batch = np.zeros((self.batch_size, 1, self.chunk), dtype=np.float32)
        for i, (pick, u) in enumerate(zip(picks, starts)):
            audio = self.track(self.rows[pick]["id"])
            start = int(u * max(0, len(audio) - self.chunk + 1))
            window = audio[start : start + self.chunk]
            batch[i, 0, : len(window)] = window / 32768.0
        return torch.from_numpy(batch)


# ---- code windows for the priors ---------------------------------------------------------------


@dataclass(frozen=True)
class PriorBatch:
    codes: Tensor  # LongTensor[B x n_ctx]
    mask: Tensor  # BoolTensor[B x n_ctx]: False where a short track was padded
    artist: Tensor  # LongTensor[B]
    genres: Tensor  # LongTensor[B x G], -1 padded
    start: Tensor  # LongTensor[B]: token index of the window in its track
    total: Tensor  # LongTensor[B]: track length in tokens
    upper: Tensor  # LongTensor[B x n_ctx / ratio] (empty [B x 0] for the top level)


def label_ids(row: dict, vocab, max_genres: int) -> tuple[int, list[int]]:
    """(artist id, genre ids padded with -1 to max_genres) of one manifest row."""
    artist = vocab.artist_id(row["artist"]) if row["artist"] in vocab.artists else 0
    genres = [vocab.genres.index(g) for g in row["genres"] if g in vocab.genres][:max_genres] or [0]
    return artist, genres + [-1] * (max_genres - len(genres))


class CodeWindows:
    """Random windows of `n_ctx` codes at one level, with labels, timing and (for upsamplers) the
    codes of the level above. A window's start is a multiple of `ratio` so both levels line up."""

    def __init__(self, data_dir: str | Path, rows: list[dict], level: int, n_ctx: int, batch_size: int, vocab,
                 max_genres: int, ratio: int = 1, upper: bool = False):
        from housebox.data.codes import load_codes

        self.n_ctx, self.batch_size, self.ratio, self.with_upper = n_ctx, batch_size, ratio, upper
        self.codes = [load_codes(data_dir, r["id"], level) for r in rows]
        self.upper = [load_codes(data_dir, r["id"], level + 1) for r in rows] if upper else None
        self.labels = [label_ids(r, vocab, max_genres) for r in rows]
        lengths = np.array([max(1, len(c) - n_ctx + 1) for c in self.codes], dtype=np.float64)
        self.weights = torch.tensor(lengths / lengths.sum())

    def window(self, index: int, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes [n_ctx], mask [n_ctx], upper [n_ctx / ratio]) of track `index` from token `start`."""
        codes = np.zeros(self.n_ctx, dtype=np.int64)
        piece = self.codes[index][start : start + self.n_ctx]
        codes[: len(piece)] = piece
        mask = np.arange(self.n_ctx) < len(piece)
        upper = np.zeros(self.n_ctx // self.ratio if self.with_upper else 0, dtype=np.int64)
        if self.with_upper:
            above = self.upper[index][start // self.ratio : start // self.ratio + len(upper)]
            upper[: len(above)] = above
        return codes, mask, upper

    def batch(self, picks: list[int], starts: list[int]) -> PriorBatch:
        parts = [self.window(i, s) for i, s in zip(picks, starts)]
        return PriorBatch(
            codes=torch.from_numpy(np.stack([p[0] for p in parts])),
            mask=torch.from_numpy(np.stack([p[1] for p in parts])),
            artist=torch.tensor([self.labels[i][0] for i in picks]),
            genres=torch.tensor([self.labels[i][1] for i in picks]),
            start=torch.tensor(starts),
            total=torch.tensor([len(self.codes[i]) for i in picks]),
            upper=torch.from_numpy(np.stack([p[2] for p in parts])),
        )

    def __call__(self, generator: torch.Generator) -> PriorBatch:
        picks = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=generator).tolist()
        draws = torch.rand(self.batch_size, generator=generator, dtype=torch.float64).tolist()
        starts = []
        for i, u in zip(picks, draws):
            room = max(0, len(self.codes[i]) - self.n_ctx)
            starts.append(int(u * (room + 1)) // self.ratio * self.ratio)
        return self.batch(picks, starts)

    def fixed(self, count: int) -> PriorBatch:
        """A deterministic spread of windows over the tracks (for validation)."""
        picks, starts = [], []
        for k in range(count):
            i = k % len(self.codes)
            room = max(0, len(self.codes[i]) - self.n_ctx)
            picks.append(i)
            starts.append(int(room * ((k // len(self.codes)) * 0.37 % 1.0)) // self.ratio * self.ratio)
        return self.batch(picks, starts)
