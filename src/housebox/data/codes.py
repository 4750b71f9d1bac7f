"""`housebox encode`: the code cache the priors train on, `codes/l<level>/<id>.npy` (int16; int32 for
codebooks over 32,768 codes).

Tracks are encoded in windows of `window_seconds` with `margin_seconds` of real audio on both sides
(cropped away afterwards), so a window's codes match whole-track encoding while memory stays bounded.
A track whose files all exist is not encoded again; a cache made by other VQ-VAE weights is discarded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from housebox.data.prepare import load_track, read_manifest
from housebox.models.load import load_vqvae
from housebox.models.vqvae import VQVAE
from housebox.store import weights_hash, write_json

META = "meta.json"


def code_paths(data_dir: Path, track_id: str, levels: int) -> list[Path]:
    return [data_dir / "codes" / f"l{level}" / f"{track_id}.npy" for level in range(levels)]


@torch.no_grad()
def encode_track(model: VQVAE, audio: np.ndarray, window_seconds: float = 20.0, margin_seconds: float = 1.0,
                 batch_size: int = 4) -> list[np.ndarray]:
    """int16 mono `[T]` -> codes per level, int64 `[ceil(T / hop_max) * hop_max / hop_l]`."""
    device = next(model.parameters()).device
    sr, top = model.config.sample_rate, model.multiple()
    total = -(-len(audio) // top) * top
    window = max(top, min(int(window_seconds * sr) // top * top, total))  # a short track: one window its length
    margin = int(margin_seconds * sr) // top * top
    signal = np.zeros(total + 2 * margin, dtype=np.float32)
    signal[margin : margin + len(audio)] = audio / 32768.0
    starts = list(range(0, total, window))
    pieces: list[list[np.ndarray]] = [[] for _ in model.config.hops]
    for first in range(0, len(starts), batch_size):
        group = starts[first : first + batch_size]
        batch = np.zeros((len(group), 1, window + 2 * margin), dtype=np.float32)
        for i, start in enumerate(group):
            chunk = signal[start : start + window + 2 * margin]
            batch[i, 0, : len(chunk)] = chunk
        codes = model.encode(torch.from_numpy(batch).to(device))
        for level, (level_codes, hop) in enumerate(zip(codes, model.config.hops)):
            for i, start in enumerate(group):
                keep = min(window, total - start) // hop
                pieces[level].append(level_codes[i, margin // hop : margin // hop + keep].cpu().numpy())
    return [np.concatenate(p) for p in pieces]


def code_dtype(codebook_size: int) -> type:
    """The smallest integer type the cache stores codes of this codebook in: int16 up to 32,768 codes,
    int32 beyond (int16 would wrap silently)."""
    return np.int16 if codebook_size <= np.iinfo(np.int16).max + 1 else np.int32


def encode_dataset(data_dir: str | Path, vqvae_dir: str | Path, device: str = "cpu", window_seconds: float = 20.0,
                   margin_seconds: float = 1.0, progress: bool = True) -> dict:
    """Encode every prepared track; returns a summary (tracks encoded, reused, tokens per level)."""
    data_dir = Path(data_dir)
    model = load_vqvae(vqvae_dir, device)
    config = model.config
    rows = read_manifest(data_dir)
    if not rows:
        raise ValueError(f"{data_dir}: no prepared tracks to encode")
    if {r["sample_rate"] for r in rows} != {config.sample_rate}:
        raise ValueError(f"{data_dir}: audio is not at the VQ-VAE's {config.sample_rate} Hz")
    codes_dir = data_dir / "codes"
    meta = {"vqvae": str(Path(vqvae_dir).resolve()), "weights_sha256": weights_hash(vqvae_dir),
            "hops": list(config.hops), "codebook_size": config.codebook_size, "sample_rate": config.sample_rate}
    if (codes_dir / META).exists():
        old = json.loads((codes_dir / META).read_text())
        if old.get("weights_sha256") != meta["weights_sha256"]:
            print(f"{codes_dir} was made by other VQ-VAE weights; encoding again")
            shutil.rmtree(codes_dir)
    for level in range(config.levels):
        (codes_dir / f"l{level}").mkdir(parents=True, exist_ok=True)
    write_json(codes_dir / META, meta)

    encoded = reused = 0
    bar = tqdm(rows, desc="encode", unit="track", disable=not progress, dynamic_ncols=True)
    for row in bar:
        paths = code_paths(data_dir, row["id"], config.levels)
        if all(p.exists() for p in paths):
            reused += 1
            continue
        codes = encode_track(model, load_track(data_dir, row["id"]), window_seconds, margin_seconds)
        for path, level_codes in zip(paths, codes):
            tmp = path.with_name(f".{path.stem}.tmp.npy")
            np.save(tmp, level_codes.astype(code_dtype(config.codebook_size)))
            os.replace(tmp, path)
        encoded += 1
    tokens = [sum(int(np.load(code_paths(data_dir, r["id"], config.levels)[lv], mmap_mode="r").shape[0]) for r in rows)
              for lv in range(config.levels)]
    return {"encoded": encoded, "reused": reused, "tracks": len(rows), "tokens_per_level": tokens}


def load_codes(data_dir: str | Path, track_id: str, level: int) -> np.ndarray:
    """Memory-mapped codes `[N]` of one track at one level (int16, or int32 for codebooks over 32,768 codes)."""
    return np.load(Path(data_dir) / "codes" / f"l{level}" / f"{track_id}.npy", mmap_mode="r")
