"""Shared test helpers: small synthetic signals and files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def music_like(seconds: float, sample_rate: int, seed: int = 0, channels: int = 2) -> np.ndarray:
    """A few seconds of a kick on every beat plus a chord, float32 [C x T], decorrelated between channels."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    beat = (t * 2.0) % 1.0  # 120 BPM
    kick = np.sin(2 * np.pi * 55 * t) * np.exp(-beat * 12)
    chord = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (220.0, 277.2, 329.6)) / 6
    out = []
    for c in range(channels):
        noise = rng.normal(0, 0.02, t.size)
        out.append(0.5 * kick + 0.3 * chord * (1 + 0.2 * c) + noise)
    return np.stack(out).astype(np.float32)


def write(path: Path, samples: np.ndarray, sample_rate: int, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples.T, sample_rate, **kwargs)
    return path


def write_m4a(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """AAC in an MP4 container through PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "stereo" if samples.shape[0] == 2 else "mono"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.astype(np.float32)), format="fltp", layout=stream.layout.name
        )
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_prepared(root: Path, tracks, codes=None, hop: int = 128, sample_rate: int = 16000,
                   beats: bool = False) -> Path:
    """A minimal prepared dataset: tracks = [(id, artist, float audio [T])], codes = {id: int [N]} at level 0;
    with beats, each track's beat grid as `housebox prepare` stores it."""
    import json

    from housebox.audio.features import track_beats

    (root / "audio").mkdir(parents=True)
    rows = []
    for track_id, artist, audio in tracks:
        pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
        np.save(root / "audio" / f"{track_id}.npy", pcm)
        row = {"id": track_id, "sha256": track_id * 4, "artist": artist, "genres": [], "samples": len(audio),
               "seconds": len(audio) / sample_rate, "sample_rate": sample_rate, "split": "train"}
        if beats:
            grid = track_beats(pcm / 32767.0, sample_rate)
            (root / "beats").mkdir(exist_ok=True)
            np.save(root / "beats" / f"{track_id}.npy", grid.times.astype(np.float32))
            row.update(beats=int(grid.times.size), downbeat=grid.downbeat)
        rows.append(row)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if codes:
        (root / "codes" / "l0").mkdir(parents=True)
        for track_id, c in codes.items():
            np.save(root / "codes" / "l0" / f"{track_id}.npy", c.astype(np.int16))
        meta = {"hops": [hop], "sample_rate": sample_rate, "codebook_size": 64, "weights_sha256": "w" * 64}
        (root / "codes" / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A prepared 16 kHz dataset from one minute of the built-in demo corpus (made once per session)."""
    from housebox.data.demo_corpus import make_demo_corpus
    from housebox.data.prepare import PrepareSettings, prepare

    root = tmp_path_factory.mktemp("demo")
    info = make_demo_corpus(root / "corpus", minutes=1.0, seed=0, sample_rate=16000)
    prepare(root / "corpus", root / "data", PrepareSettings(sample_rate=16000), labels_csv=info.labels_csv,
            progress=False)
    return root / "data"


TINY_VQVAE = [
    "--set", "vqvae.width=16", "--set", "vqvae.depth=1", "--set", "vqvae.codebook_size=64",
    "--set", "vqvae.code_width=16", "--set", "vqvae_data.chunk_seconds=0.256", "--set", "vqvae_train.batch_size=4",
    "--set", "vqvae_train.warmup_steps=2", "--set", "vqvae_train.log_every=2",
]

TINY_PRIOR = ["--set", "prior.width=32", "--set", "prior.depth=2", "--set", "prior.n_ctx=64",
              "--set", "prior_train.batch_size=4", "--set", "prior_train.log_every=5"]
TINY_UP = ["--set", "upsampler.width=32", "--set", "upsampler.depth=2", "--set", "upsampler.n_ctx=64",
           "--set", "upsampler_train.batch_size=4", "--set", "upsampler_train.log_every=5"]


def train_tiny_run(data: Path, run: Path, vqvae_steps: int, prior_steps: int, upsampler_steps: int = 0) -> Path:
    """A tiny run through the CLI: VQ-VAE, code cache, top prior and (when upsampler_steps) both upsamplers.
    It re-encodes `data`, so each test module builds its run in its own module-scoped fixture."""
    from housebox.cli import main

    assert main(["train", "vqvae", "--data", str(data), "-o", str(run / "vqvae"), "--device", "cpu",
                 *TINY_VQVAE, "--set", f"vqvae_train.steps={vqvae_steps}"]) == 0
    assert main(["encode", "--data", str(data), "--vqvae", str(run / "vqvae"), "--device", "cpu"]) == 0
    assert main(["train", "prior", "--level", "2", "--data", str(data), "-o", str(run / "prior_l2"),
                 "--device", "cpu", *TINY_PRIOR, "--set", f"prior_train.steps={prior_steps}"]) == 0
    for level in (1, 0) if upsampler_steps else ():
        assert main(["train", "upsampler", "--level", str(level), "--data", str(data), "-o",
                     str(run / f"up_l{level}"), "--device", "cpu", *TINY_UP,
                     "--set", f"upsampler_train.steps={upsampler_steps}"]) == 0
    return run
