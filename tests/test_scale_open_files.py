"""The whole pipeline on a catalogue of 1,000 tracks under a limit of 256 open files (issue 12, item 1).

prepare -> train vqvae -> encode -> train prior -> train upsampler (levels 1, 0) -> sample -> check -> evaluate
-> serve (one generation through the web app's job queue, checked), all through the CLI (serve through its App)
in ONE process whose RLIMIT_NOFILE is 256 before anything runs: a step that keeps a descriptor (or a memory map)
open per track dies with 'Too many open files'. Every model is a few steps of a very narrow `tiny`, and the
tracks last 1 s (every 25th 4 s, so some have beat grids and the beat clock runs), so the test is about the
number of tracks, not the amount of audio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import music_like

TRACKS = 1000
ARTISTS = 2
LIMIT = 256
SR = 16000


def catalogue(root: Path) -> None:
    """TRACKS distinct wav files as artistN/house/tNNNN.wav (labels from the folder names)."""
    rng = np.random.default_rng(0)
    for i in range(TRACKS):
        t = np.arange(int((4.0 if i % 25 == 0 else 1.0) * SR)) / SR
        kick = np.sin(2 * np.pi * 55 * t) * np.exp(-((t * 2.0) % 1.0) * 12)  # 120 BPM
        audio = 0.5 * kick + 0.2 * np.sin(2 * np.pi * (200 + i) * t) + rng.normal(0, 0.02, t.size)
        path = root / f"artist{i % ARTISTS}" / "house" / f"t{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), audio.astype(np.float32), SR, subtype="PCM_16")


def overrides(section: str, fields: dict) -> list[str]:
    return [a for k, v in fields.items() for a in ("--set", f"{section}.{k}={v}")]


STEPS = 2
VQVAE = overrides("vqvae", {"width": 4, "depth": 1, "codebook_size": 32, "code_width": 4}) + overrides(
    "vqvae_data", {"chunk_seconds": 0.256}) + overrides(
    "vqvae_train", {"steps": STEPS, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": STEPS, "log_every": 1})
PRIOR = overrides("prior", {"width": 16, "depth": 1, "heads": 1, "n_ctx": 32, "block_size": 8}) + overrides(
    "prior_train", {"steps": STEPS, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": STEPS, "log_every": 1})
UPSAMPLER = overrides("upsampler", {"width": 16, "depth": 1, "heads": 1, "n_ctx": 32, "block_size": 8}) + overrides(
    "upsampler_train", {"steps": STEPS, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": STEPS,
                        "log_every": 1})

# Runs each step in this one process, after lowering the limit; prints one JSON line per step and stops at the
# first failure (a traceback on stderr). "serve" is the web app: one generation through its queue, then checked.
DRIVER = f"""
import json, os, resource, sys, time, traceback
resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT}))
import torch
torch.set_num_threads(1)
from housebox.cli import main

def serve(run, samples):
    from housebox.web.server import App, ServerSettings
    app = App(run, ServerSettings(port=0, samples_dir=samples, max_seconds=2.0), device="cpu")
    try:
        job = app.jobs.submit(app.parse_generate({{"artist": "artist1", "seconds": 1, "seed": 2}}))
        status, deadline = app.jobs.status(job.id), time.time() + 300
        while status["state"] not in ("done", "failed") and time.time() < deadline:
            status = app.jobs.status(job.id, wait=5, seen_version=status["version"])
        if status["state"] != "done":
            print(f"serve: job {{status['state']}}: {{status['error']}}", file=sys.stderr)
            return 1
        tracks = app.sample(status["folder"])["tracks"]
        print(f"serve: {{tracks[0]['originality']}}", file=sys.stderr)
        return 0 if tracks and tracks[0]["originality"].get("verdict") else 1
    finally:
        app.close()

for name, argv in json.loads(sys.argv[1]):
    started = time.time()
    try:
        rc = serve(*argv) if name == "serve" else main(argv)
    except BaseException as err:  # e.g. OSError: [Errno 24] Too many open files
        traceback.print_exc()
        rc = f"{{type(err).__name__}}: {{err}}"
    print(json.dumps({{"step": name, "rc": rc, "seconds": round(time.time() - started, 1),
                      "open_files": len(os.listdir("/proc/self/fd"))}}), flush=True)
    if rc != 0:
        sys.exit(1)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE, /proc/self/fd")
def test_the_whole_pipeline_on_1000_tracks_under_256_open_files(tmp_path):
    source, data, run = tmp_path / "music", tmp_path / "data", tmp_path / "run"
    catalogue(source)
    assert len(list(source.rglob("*.wav"))) == TRACKS > 3 * LIMIT
    samples = run / "samples" / "first"
    cpu = ["--device", "cpu"]
    steps = [
        ("prepare", ["prepare", str(source), "-o", str(data), "--preset", "tiny", "--min-seconds", "0.5",
                     "--workers", "2"]),
        ("train vqvae", ["train", "vqvae", "--data", str(data), "-o", str(run / "vqvae"), *cpu, *VQVAE]),
        ("encode", ["encode", "--data", str(data), "--vqvae", str(run / "vqvae"), *cpu]),
        ("train prior", ["train", "prior", "--level", "2", "--data", str(data), "-o", str(run / "prior_l2"), *cpu,
                         *PRIOR]),
        *[(f"train upsampler {level}", ["train", "upsampler", "--level", str(level), "--data", str(data), "-o",
                                        str(run / f"up_l{level}"), *cpu, *UPSAMPLER]) for level in (1, 0)],
        ("sample", ["sample", str(run), "--artist", "artist0", "--genre", "house", "--seconds", "1", "-n", "1",
                    "-o", str(samples), *cpu]),
        ("check", ["check", str(samples), "--against", str(data)]),
        ("evaluate", ["evaluate", str(run), "--data", str(data), "-o", str(run / "evaluation"), "--seconds", "1",
                      "--per-artist", "1", "--stage-pieces", "1", *cpu]),
        ("serve", [str(run), str(run / "served")]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(steps)], capture_output=True, text=True,
                            timeout=900, env=env, cwd=tmp_path, check=False)
    done = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"step"')]
    print("\n".join(json.dumps(d) for d in done))  # seconds and open files per step, shown with -s or on failure
    assert result.returncode == 0 and [d["step"] for d in done] == [s[0] for s in steps], (
        f"{done}\n{result.stderr[-3000:]}")
    assert all(d["rc"] == 0 and d["open_files"] < 64 for d in done), done

    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == TRACKS and len({r["artist"] for r in rows}) == ARTISTS
    assert sum(1 for r in rows if r["beats"]) >= 20  # some grids: the beat clock ran
    assert len(list((data / "codes" / "l0").glob("*.npy"))) == TRACKS
    assert (samples / "sample_000.wav").exists()
    verdict = json.loads((samples / "report.json").read_text())["originality"]["samples"]["sample_000.wav"]
    assert not [n for n in verdict["notes"] if "not checked" in n], verdict["notes"]  # the code index was searched
    assert (run / "evaluation" / "evaluation.json").exists()


def test_a_short_track_is_encoded_in_one_window_of_its_own_length():
    """encode sizes the window to a track shorter than window_seconds (1,000 one-second tracks took minutes, each
    padded to 22 s), and the codes are those of the track inside a full, zero-padded window (up to float ties)."""
    from housebox.data.codes import encode_track
    from housebox.models.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(sample_rate=SR, width=8, depth=2, codebook_size=32, code_width=8)).eval()
    audio = np.round(music_like(1.1, SR, channels=1)[0] * 32767).astype(np.int16)
    with torch.no_grad():  # codebooks spread over the latents, so codes vary
        for encoder, codebook in zip(model.encoders, model.codebooks):
            z = encoder(torch.from_numpy(audio / 32768.0).float()[None, None])[0].T  # (N, D)
            codebook.embeddings.copy_(z.mean(0) + z.std(0) * torch.randn(32, z.shape[1]))
    lengths, encode = [], model.encode
    model.encode = lambda batch: lengths.append(batch.shape[-1]) or encode(batch)
    codes = encode_track(model, audio, window_seconds=20.0, margin_seconds=1.0)
    top, margin = model.multiple(), SR
    total = -(-len(audio) // top) * top
    assert lengths == [total + 2 * margin]  # not 20 s + margins
    padded = np.zeros(20 * SR + 2 * margin, dtype=np.float32)
    padded[margin : margin + len(audio)] = audio / 32768.0
    with torch.no_grad():
        full = encode(torch.from_numpy(padded)[None, None])
    for level, hop in enumerate(model.config.hops):
        expected = full[level][0, margin // hop : (margin + total) // hop].numpy()
        assert codes[level].shape == expected.shape and (codes[level] == expected).mean() > 0.995
