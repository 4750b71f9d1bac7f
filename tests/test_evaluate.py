"""Statistics of generated music, the Fréchet distance, and the demo end to end (quick; and the full plan,
which must keep every artist's tempo and kick)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from housebox.data.demo_corpus import ARTISTS, render_track
from housebox.evaluate.music import frechet_distance, mel_chroma_features, spectral_centroid, track_stats

SR = 16000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tracks():
    return {style.name: render_track(style, 12.0, SR, seed=3).mean(axis=0) for style in ARTISTS}


def test_track_stats_recover_each_artists_style(tracks):
    for style in ARTISTS:
        stats = track_stats(tracks[style.name], SR)
        assert abs(stats.bpm - style.bpm) < 1.0
        assert stats.key == style.key
        assert stats.kick_periodicity > 0.35
        assert -30 < stats.lufs < 0 and 100 < stats.centroid_hz < SR / 2
        assert abs(sum(stats.chroma) - 1) < 1e-3
    rng = np.random.default_rng(0)
    noise = track_stats(rng.normal(0, 0.1, SR * 12), SR)
    assert noise.kick_periodicity is None or noise.kick_periodicity < 0.15


def test_spectral_centroid_of_a_tone():
    t = np.arange(SR) / SR
    assert spectral_centroid(np.sin(2 * np.pi * 1000 * t), SR) == pytest.approx(1000, rel=0.02)


def test_frechet_distance_separates_distributions(tracks):
    a = mel_chroma_features(tracks[ARTISTS[0].name], SR)
    b = mel_chroma_features(render_track(ARTISTS[0], 12.0, SR, seed=4).mean(axis=0), SR)
    rng = np.random.default_rng(0)
    noise = mel_chroma_features(rng.normal(0, 0.1, SR * 12).astype(np.float32), SR)
    assert a.shape == (12, 44)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-3)
    same_artist = frechet_distance(a, b)
    assert same_artist < frechet_distance(a, noise) / 5
    with pytest.raises(ValueError, match="at least two"):
        frechet_distance(a[:1], b)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    from housebox.cli import main

    assert main(["demo", "-o", str(tmp_path), "--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "demo finished" in out
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert {r["artist"] for r in report["generated"]} == {a.name for a in ARTISTS}
    assert set(report["prior_bits_per_token"]) == {"level_0", "level_1", "level_2"}
    for r in report["generated"]:
        wav = tmp_path / "evaluation" / "samples" / r["samples_dir"].split("/")[-1] / "sample_000.wav"
        assert wav.exists() and (wav.parent / "index.html").exists()
        assert abs(r["reference_bpm"] - next(a.bpm for a in ARTISTS if a.name == r["artist"])) < 1.0
    assert (tmp_path / "evaluation" / "evaluation.png").stat().st_size > 5000


@pytest.mark.slow
def test_demo_learns_each_artists_tempo_and_kick(tmp_path):
    """`housebox demo` exactly as `make demo` runs it (a process of its own, torch's default thread count,
    about 14 minutes on 2 cores): three 30-second tracks per artist, their median tempo within 3 BPM of the
    artist's and a kick on the beat, for every artist."""
    from housebox.evaluate.run import KICK_DETECTED, TEMPO_TOLERANCE_BPM

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # conftest pins 1 for the small tests
    env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run([sys.executable, "-m", "housebox", "demo", "-o", str(tmp_path), "--device", "cpu"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo finished" in done.stdout
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert {r["artist"] for r in report["generated"]} == {a.name for a in ARTISTS}
    for r in report["generated"]:
        style = next(a for a in ARTISTS if a.name == r["artist"])
        assert len(r["generated_bpm"]) == 3
        assert abs(r["median_bpm"] - style.bpm) <= TEMPO_TOLERANCE_BPM, r
        assert r["kick_periodicity"] >= KICK_DETECTED, r
        assert r["tempo_kept"] and r["kick_detected"], r
        folder = tmp_path / "evaluation" / "samples" / Path(r["samples_dir"]).name
        wavs = sorted(folder.glob("sample_*.wav"))
        assert len(wavs) == 3 and all(abs(sf.info(w).duration - 30.0) < 0.1 for w in wavs)
