"""`housebox demo`: the pipeline on the built-in corpus, on CPU, in minutes."""

from __future__ import annotations

from pathlib import Path

from housebox.data.demo_corpus import make_demo_corpus
from housebox.data.prepare import PrepareSettings, prepare


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> None:
    minutes = 1.5 if quick else 6.0
    sample_rate = 16000
    corpus = out / "corpus"
    data = out / "data"
    print(f"[1/2] rendering {minutes:g} min of built-in house music into {corpus}")
    info = make_demo_corpus(corpus, minutes=minutes, seed=seed, sample_rate=22050)
    print(f"[2/2] preparing {len(info.tracks)} tracks into {data}")
    report = prepare(corpus, data, PrepareSettings(sample_rate=sample_rate, seed=seed), labels_csv=info.labels_csv)
    print(f"dataset ready: {report.tracks} tracks, {report.seconds / 60:.1f} min at {sample_rate} Hz in {data}")
    print(f"corpus spectrogram: {corpus / 'spectrogram.png'}")
    print("next: housebox train vqvae --data", data, "-o", out / "runs/vqvae", "--preset tiny")
