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
