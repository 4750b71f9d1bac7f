"""Validation that tells the truth: every artist holds out audio, and no held-out audio is trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from housebox.data.dataset import AudioChunks, CodeWindows, split_range, tracks_for
from housebox.data.labels import Vocabulary
from housebox.data.prepare import PrepareSettings, assign_splits


def rows_for(counts: dict[str, int], seconds: float = 100.0) -> list[dict]:
    return [{"id": f"{artist[:3]}{i:013d}", "artist": artist, "seconds": seconds, "split": "train"}
            for artist, count in counts.items() for i in range(count)]


def test_every_artist_holds_out_audio_whole_tracks_or_tails():
    rows = assign_splits(rows_for({"Many": 12, "Four": 4, "Three": 3, "One": 1}), PrepareSettings())
    by = {a: [r for r in rows if r["artist"] == a] for a in ("Many", "Four", "Three", "One")}
    for artist in ("Many", "Four"):  # enough tracks: whole tracks held out, at least one, no tails
        held = [r for r in by[artist] if r["split"] == "valid"]
        assert 1 <= len(held) < len(by[artist]) and all(r["valid_from"] is None for r in by[artist])
    for artist in ("Three", "One"):  # too few: every track trains on its head and holds out its tail
        assert all(r["split"] == "train" for r in by[artist])
        assert all(r["valid_from"] == pytest.approx(80.0) for r in by[artist])  # min(20 s, a quarter) > 10%
    again = assign_splits([dict(r) for r in rows], PrepareSettings())
    assert [(r["split"], r["valid_from"]) for r in again] == [(r["split"], r["valid_from"]) for r in rows]


def test_split_ranges_never_overlap():
    whole = {"split": "valid", "seconds": 30.0}
    tail = {"split": "train", "seconds": 30.0, "valid_from": 22.5}
    plain = {"split": "train", "seconds": 30.0}
    assert split_range(whole, "valid") == (0.0, 30.0) and split_range(whole, "train") is None
    assert split_range(tail, "train") == (0.0, 22.5) and split_range(tail, "valid") == (22.5, 30.0)
    assert split_range(plain, "train") == (0.0, 30.0) and split_range(plain, "valid") is None


@pytest.fixture()
def tail_dataset(tmp_path):
    """Two tracks of one artist: the first 80% train, the tail held out. Audio and codes count up, so
    every sample says where it came from."""
    sr, hop, seconds = 1000, 10, 20.0
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    (data / "codes" / "l0").mkdir(parents=True)
    rows = []
    for i in range(2):
        track_id = f"{i:016d}"
        n = int(seconds * sr)
        np.save(data / "audio" / f"{track_id}.npy", np.arange(n, dtype=np.int16))
        np.save(data / "codes" / "l0" / f"{track_id}.npy", np.arange(n // hop, dtype=np.int16))
        rows.append({"id": track_id, "artist": "A", "genres": ["house"], "seconds": seconds, "samples": n,
                     "sample_rate": sr, "split": "train", "bpm": 120.0})
    assign_splits(rows, PrepareSettings())
    import json

    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Vocabulary(artists=("unknown", "A"), genres=("unknown", "house")).save(data / "labels.json")
    return data, sr, hop, rows[0]["valid_from"]


def test_training_windows_stay_in_the_head_and_validation_in_the_tail(tail_dataset):
    data, sr, hop, valid_from = tail_dataset
    assert valid_from == pytest.approx(15.0)
    vocab = Vocabulary.load(data / "labels.json")
    train_rows, valid_rows = tracks_for(data, "train", sr), tracks_for(data, "valid", sr)
    chunks = AudioChunks(data, train_rows, batch_size=64, chunk_samples=500)
    for seed in range(5):
        batch = chunks(torch.Generator().manual_seed(seed))  # values are sample indices / 32768
        assert float(batch.max()) * 32768 < valid_from * sr
    boundary = int(valid_from * sr / hop)
    train = CodeWindows(data, train_rows, 0, 64, 64, vocab, 4, seconds_per_token=hop / sr)
    for seed in range(5):
        b = train(torch.Generator().manual_seed(seed))
        assert int(b.codes[b.mask].max()) < boundary and int(b.codes[b.mask].min()) >= 0
    valid = CodeWindows(data, valid_rows, 0, 64, 8, vocab, 4, seconds_per_token=hop / sr)
    b = valid.fixed(8)
    assert int(b.codes[b.mask].min()) >= boundary and bool(b.mask.any())
    assert (b.start >= boundary).all()
