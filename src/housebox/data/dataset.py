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

from housebox.data.prepare import load_track, read_manifest, read_track_window, track_header


@dataclass(frozen=True)
class AudioDataConfig:
    chunk_seconds: float = 1.0


def split_range(row: dict, split: str) -> tuple[float, float] | None:
    """The seconds (start, end) of a manifest row that belong to `split`, or None when none do.

    A `valid` row is held out whole; a `train` row is training data up to its `valid_from` (when set),
    and its tail from there on is held out (see data/prepare.py: assign_splits)."""
    tail = row.get("valid_from")
    if row["split"] == "valid":
        return (0.0, row["seconds"]) if split == "valid" else None
    if split == "train":
        return (0.0, tail if tail is not None else row["seconds"])
    return (tail, row["seconds"]) if tail is not None else None


def tracks_for(data_dir: str | Path, split: str, sample_rate: int) -> list[dict]:
    """Manifest rows with audio in `split`, checked against the sample rate the model expects.

    Each row is a copy with `segment: (start, end)` in seconds: the part of the track in that split."""
    rows = read_manifest(data_dir)
    if not rows:
        raise ValueError(f"{data_dir}: no prepared tracks (run `housebox prepare SRC -o {data_dir}` first)")
    rates = {r["sample_rate"] for r in rows}
    if rates != {sample_rate}:
        raise ValueError(f"{data_dir} holds audio at {sorted(rates)} Hz but the model expects {sample_rate} Hz; "
                         f"prepare with --sr {sample_rate} or override the model's sample_rate")
    chosen = [{**r, "segment": split_range(r, split)} for r in rows if split_range(r, split) is not None]
    if not chosen and split == "valid":  # a dataset prepared before tails existed, one track: validate on it
        chosen = [{**r, "segment": (0.0, r["seconds"])} for r in rows]
    if not chosen:
        raise ValueError(f"{data_dir}: no tracks in split {split!r}")
    return chosen


def held_out_segments(data_dir: str | Path, sample_rate: int) -> list[tuple[dict, float, float]]:
    """(row, start s, end s) of every held-out piece: whole validation tracks and held-out tails."""
    return [(r, *r["segment"]) for r in tracks_for(data_dir, "valid", sample_rate)]


def training_segments(data_dir: str | Path, sample_rate: int) -> list[tuple[dict, float, float]]:
    """(row, start s, end s) of every piece of training audio."""
    return [(r, *r["segment"]) for r in tracks_for(data_dir, "train", sample_rate)]


def _segment_samples(row: dict, rate: float, length: int) -> tuple[int, int]:
    """The segment of `row` as [first, last) indices of a sequence at `rate` items per second."""
    start, end = row.get("segment") or (0.0, row["seconds"])
    return min(length, int(round(start * rate))), min(length, int(round(end * rate)))


class AudioChunks:
    """Draws batches `Tensor[B x 1 x T]` of random windows, tracks weighted by their length."""

    def __init__(self, data_dir: str | Path, rows: list[dict], batch_size: int, chunk_samples: int):
        self.data_dir = Path(data_dir)
        self.rows = rows
        self.batch_size = batch_size
        self.chunk = chunk_samples
        self.bounds = [_segment_samples(r, r["sample_rate"], r["samples"]) for r in rows]
        lengths = np.array([max(1, hi - lo - chunk_samples + 1) for lo, hi in self.bounds], dtype=np.float64)
        self.weights = torch.tensor(lengths / lengths.sum())
        self._headers: dict[str, tuple[int, int]] = {}  # id -> (byte offset, samples): no file is kept open

    def window(self, track_id: str, start: int, stop: int) -> np.ndarray:
        if track_id not in self._headers:
            self._headers[track_id] = track_header(self.data_dir, track_id)
        return read_track_window(self.data_dir, track_id, start, stop, self._headers[track_id])

    def __call__(self, generator: torch.Generator) -> Tensor:
        picks = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=generator).tolist()
        starts = torch.rand(self.batch_size, generator=generator, dtype=torch.float64).tolist()
        batch = np.zeros((self.batch_size, 1, self.chunk), dtype=np.float32)
        for i, (pick, u) in enumerate(zip(picks, starts)):
            lo, hi = self.bounds[pick]
            start = lo + int(u * max(0, hi - lo - self.chunk + 1))
            window = self.window(self.rows[pick]["id"], start, min(hi, start + self.chunk))
            batch[i, 0, : len(window)] = window / 32768.0
        return torch.from_numpy(batch)


def training_chunks(data_dir: str | Path, sample_rate: int, multiple: int, seconds: float,
                    batch_size: int) -> AudioChunks:
    """Batches of the train split's audio in windows of about `seconds`, a whole multiple of `multiple`
    samples (the VQ-VAE's largest hop); `.chunk` and `.rows` say what was chosen."""
    chunk = max(multiple, round(seconds * sample_rate / multiple) * multiple)
    return AudioChunks(data_dir, tracks_for(data_dir, "train", sample_rate), batch_size, chunk)


# ---- code windows for the priors ---------------------------------------------------------------


@dataclass(frozen=True)
class PriorBatch:
    codes: Tensor  # LongTensor[B x n_ctx]
    mask: Tensor  # BoolTensor[B x n_ctx]: False where a short track (or segment) was padded
    artist: Tensor  # LongTensor[B]
    genres: Tensor  # LongTensor[B x G], -1 padded
    start: Tensor  # LongTensor[B]: token index of the window in its track
    total: Tensor  # LongTensor[B]: track length in tokens
    upper: Tensor  # LongTensor[B x n_ctx / ratio] (empty [B x 0] for the top level)
    beats: Tensor  # FloatTensor[B x n_ctx]: beat position of each token (NaN: no beat grid); [B x 0] without a clock


def label_ids(row: dict, vocab, max_genres: int) -> tuple[int, list[int]]:
    """(artist id, genre ids padded with -1 to max_genres) of one manifest row."""
    artist = vocab.artist_id(row["artist"]) if row["artist"] in vocab.artists else 0
    genres = [vocab.genres.index(g) for g in row["genres"] if g in vocab.genres][:max_genres] or [0]
    return artist, genres + [-1] * (max_genres - len(genres))


def token_beats(grid, first: int, count: int, seconds_per_token: float) -> np.ndarray:
    """Beat positions float32 `[count]` of tokens first..first+count-1 (NaN everywhere without a grid)."""
    if grid is None:
        return np.full(count, np.nan, dtype=np.float32)
    from housebox.audio.features import beat_positions

    at = (first + np.arange(count)) * seconds_per_token
    return beat_positions(grid.times, grid.downbeat, at).astype(np.float32)


class CodeWindows:
    """Random windows of `n_ctx` codes at one level, with labels, timing, the beat clock and (for
    upsamplers) the codes of the level above. A window's start is a multiple of `ratio` so both levels
    line up. Each row's `segment` (see tracks_for) bounds its windows: training never reads a held-out tail.

    Codes and beat grids are read into memory once (they are small): no file stays open per track."""

    def __init__(self, data_dir: str | Path, rows: list[dict], level: int, n_ctx: int, batch_size: int, vocab,
                 max_genres: int, ratio: int = 1, upper: bool = False, seconds_per_token: float | None = None,
                 beat_clock: bool = False):
        from housebox.data.codes import load_codes

        self.n_ctx, self.batch_size, self.ratio, self.with_upper = n_ctx, batch_size, ratio, upper
        self.codes = [np.array(load_codes(data_dir, r["id"], level)) for r in rows]
        self.upper = [np.array(load_codes(data_dir, r["id"], level + 1)) for r in rows] if upper else None
        self.labels = [label_ids(r, vocab, max_genres) for r in rows]
        self.seconds_per_token = seconds_per_token
        self.grids = None
        if beat_clock:
            from housebox.data.prepare import load_beats

            if not seconds_per_token:
                raise ValueError("the beat clock needs seconds_per_token")
            self.grids = [load_beats(data_dir, r["id"]) for r in rows]
        self.bounds = []
        for row, codes in zip(rows, self.codes):
            rate = len(codes) / row["seconds"] if seconds_per_token is None else 1.0 / seconds_per_token
            lo, hi = _segment_samples(row, rate, len(codes))
            self.bounds.append((lo // ratio * ratio, max(hi, lo // ratio * ratio + 1)))
        lengths = np.array([max(1, hi - lo - n_ctx + 1) for lo, hi in self.bounds], dtype=np.float64)
        self.weights = torch.tensor(lengths / lengths.sum())

    def window(self, index: int, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(codes [n_ctx], mask [n_ctx], upper [n_ctx / ratio], beats [n_ctx] or [0]) of track `index` from `start`."""
        end = self.bounds[index][1]
        codes = np.zeros(self.n_ctx, dtype=np.int64)
        piece = self.codes[index][start : min(end, start + self.n_ctx)]
        codes[: len(piece)] = piece
        mask = np.arange(self.n_ctx) < len(piece)
        upper = np.zeros(self.n_ctx // self.ratio if self.with_upper else 0, dtype=np.int64)
        if self.with_upper:
            first = start // self.ratio
            above = self.upper[index][first : min(first + len(upper), -(-end // self.ratio))]
            upper[: len(above)] = above
        beats = (token_beats(self.grids[index], start, self.n_ctx, self.seconds_per_token)
                 if self.grids is not None else np.zeros(0, dtype=np.float32))
        return codes, mask, upper, beats

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
            beats=torch.from_numpy(np.stack([p[3] for p in parts])),
        )

    def _start(self, index: int, u: float) -> int:
        lo, hi = self.bounds[index]
        room = max(0, hi - lo - self.n_ctx)
        return (lo + int(u * (room + 1))) // self.ratio * self.ratio

    def __call__(self, generator: torch.Generator) -> PriorBatch:
        picks = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=generator).tolist()
        draws = torch.rand(self.batch_size, generator=generator, dtype=torch.float64).tolist()
        return self.batch(picks, [self._start(i, u) for i, u in zip(picks, draws)])

    def fixed(self, count: int) -> PriorBatch:
        """A deterministic spread of windows over the tracks (for validation)."""
        picks = [k % len(self.codes) for k in range(count)]
        starts = [self._start(i, (k // len(self.codes)) * 0.37 % 1.0) for k, i in enumerate(picks)]
        return self.batch(picks, starts)


def validation_clips(data_dir: str | Path, sample_rate: int, seconds: float, max_tracks: int, multiple: int) -> Tensor:
    """One clip from the middle of each held-out piece (a validation track, or a track's held-out tail):
    Tensor[N x 1 x T], T a multiple of `multiple`."""
    rows = tracks_for(data_dir, "valid", sample_rate)[:max_tracks]
    length = max(multiple, int(seconds * sample_rate) // multiple * multiple)
    clips = np.zeros((len(rows), 1, length), dtype=np.float32)
    for i, row in enumerate(rows):
        audio = load_track(data_dir, row["id"])
        lo, hi = (min(len(audio), int(round(t * sample_rate))) for t in row["segment"])
        start = lo + max(0, (hi - lo - length) // 2)
        window = audio[start : min(hi, start + length)]
        clips[i, 0, : len(window)] = window / 32768.0
    return torch.from_numpy(clips)
