"""`housebox evaluate RUN --data DATA`: everything measurable about a trained run, in one report.

- VQ-VAE reconstruction per level on validation tracks (see evaluate/vqvae.py).
- Each prior's validation loss in bits per token.
- Generated tracks, one batch per artist, against held-out audio of that artist: tempo, key, loudness,
  spectral centroid, four-on-the-floor strength, and a Fréchet distance on mel + chroma statistics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from housebox.data.dataset import CodeWindows, tracks_for
from housebox.data.labels import Vocabulary
from housebox.data.prepare import load_track, read_manifest
from housebox.evaluate.music import frechet_distance, mel_chroma_features, track_stats
from housebox.evaluate.vqvae import evaluate_vqvae
from housebox.generate.pipeline import Run, SampleSettings, generate, write_outputs
from housebox.train.checkpoint import write_json
from housebox.train.loop import move_to
from housebox.train.prior import bits_per_token

# "Learned the corpus" per artist: the median generated tempo within this many BPM of the artist's ...
TEMPO_TOLERANCE_BPM = 3.0
# ... and a kick at the beat: low-band onset periodicity at least this. Training tracks of the demo corpus
# measure 0.6-0.9; noise, or onsets at no steady tempo, 0-0.1 (audio/features.py, tests/test_features.py).
KICK_DETECTED = 0.2


@dataclass(frozen=True)
class ArtistReport:
    artist: str
    genres: list[str]
    reference_bpm: float | None  # median tempo of the artist's training tracks
    reference_key: str | None  # most common key of the artist's tracks
    generated_bpm: list[float | None]
    median_bpm: float | None
    bpm_error: float | None
    key_match: float  # share of generated tracks in the artist's key
    kick_periodicity: float  # median over generated tracks
    reference_kick_periodicity: float  # median over held-out tracks
    lufs: float | None
    centroid_hz: float
    reference_centroid_hz: float
    samples_dir: str
    tempo_kept: bool | None  # bpm_error <= TEMPO_TOLERANCE_BPM (None: no reference tempo or none measured)
    kick_detected: bool  # kick_periodicity >= KICK_DETECTED


@torch.no_grad()
def prior_bits_per_token(run: Run, data_dir: Path, windows: int = 16) -> dict[str, float]:
    vocab = Vocabulary(artists=run.artists, genres=run.genres)
    out = {}
    for level, prior in sorted(run.priors.items()):
        config = prior.config
        rows = tracks_for(data_dir, "valid", config.sample_rate)
        data = CodeWindows(data_dir, rows, level, config.n_ctx, windows, vocab, config.max_genres,
                           ratio=config.upper_ratio, upper=config.is_upsampler)
        batch = move_to(data.fixed(windows), prior.head.weight.device)
        out[f"level_{level}"] = round(bits_per_token(prior, batch), 4)
    return out


def evaluate_run(run: Run, data_dir: str | Path, out_dir: str | Path, seconds: float = 30.0, per_artist: int = 1,
                 seed: int = 1000, temperature: float = 1.0, progress: bool = True) -> dict:
    """Evaluate `run` on `data_dir`, writing samples, evaluation.json and PNGs under `out_dir`."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(data_dir)
    sr = run.vqvae.config.sample_rate
    vq = evaluate_vqvae(run.vqvae, data_dir, out_dir, seconds=8.0)
    bits = prior_bits_per_token(run, data_dir)

    artists = sorted({r["artist"] for r in rows if r["artist"] in run.artists and r["artist"] != "unknown"})
    held_out = [r for r in rows if r["split"] == "valid"] or rows
    reference_features = np.concatenate([mel_chroma_features(_audio(data_dir, r), sr) for r in held_out])
    generated_features, reports = [], []
    for i, artist in enumerate(artists):
        mine = [r for r in rows if r["artist"] == artist]
        genres = tuple(Counter(g for r in mine for g in r["genres"]).most_common(1)[0][0:1])
        settings = SampleSettings(artist=artist, genres=genres, seconds=seconds, n=per_artist, seed=seed + i,
                                  temperature=temperature)
        generation = generate(run, settings, progress=progress)
        samples_dir = out_dir / "samples" / _slug(artist)
        write_outputs(samples_dir, generation, settings, run)
        stats = [track_stats(a, sr) for a in generation.audio]
        generated_features.append(np.concatenate([mel_chroma_features(a, sr) for a in generation.audio]))
        reference = [track_stats(_audio(data_dir, r), sr) for r in mine[:6]]
        bpms = [s.bpm for s in stats]
        known_bpms = [b for b in bpms if b is not None]
        ref_bpms = [r["bpm"] for r in mine if r.get("bpm")]
        ref_bpm = round(float(np.median(ref_bpms)), 2) if ref_bpms else None
        median = float(np.median(known_bpms)) if known_bpms else None
        ref_key = Counter(r.get("key") for r in mine).most_common(1)[0][0]
        bpm_error = round(abs(median - ref_bpm), 2) if median is not None and ref_bpm is not None else None
        kick = float(np.median([s.kick_periodicity or 0.0 for s in stats]))
        reports.append(ArtistReport(
            artist=artist, genres=list(genres), reference_bpm=ref_bpm, reference_key=ref_key, generated_bpm=bpms,
            median_bpm=median,
            bpm_error=bpm_error,
            key_match=float(np.mean([s.key == ref_key for s in stats])),
            kick_periodicity=kick,
            reference_kick_periodicity=float(np.median([s.kick_periodicity or 0.0 for s in reference])),
            lufs=_median([s.lufs for s in stats]),
            centroid_hz=float(np.median([s.centroid_hz for s in stats])),
            reference_centroid_hz=float(np.median([s.centroid_hz for s in reference])),
            samples_dir=str(samples_dir),
            tempo_kept=None if bpm_error is None else bpm_error <= TEMPO_TOLERANCE_BPM,
            kick_detected=kick >= KICK_DETECTED,
        ))
    generated = np.concatenate(generated_features) if generated_features else np.zeros((0, 44))
    distance = frechet_distance(generated, reference_features) if len(generated) > 1 else None
    # a yardstick for the distance: train tracks against held-out tracks, as many per artist as are held out
    train_rows = []
    for artist, count in Counter(r["artist"] for r in held_out).items():
        train_rows += [r for r in rows if r["split"] == "train" and r["artist"] == artist][:count]
    baseline = frechet_distance(np.concatenate([mel_chroma_features(_audio(data_dir, r), sr) for r in train_rows]),
                                reference_features) if train_rows else None
    report = {
        "vqvae": vq.to_dict(),
        "prior_bits_per_token": bits,
        "generated": [asdict(r) for r in reports],
        "frechet_mel_chroma_distance": distance,
        "frechet_mel_chroma_distance_train_vs_heldout": baseline,
        "settings": {"seconds": seconds, "per_artist": per_artist, "seed": seed, "temperature": temperature},
        "criteria": {"tempo_tolerance_bpm": TEMPO_TOLERANCE_BPM, "kick_detected_at": KICK_DETECTED},
    }
    write_json(out_dir / "evaluation.json", report)
    _plot(out_dir / "evaluation.png", reports)
    return report


def _audio(data_dir: Path, row: dict) -> np.ndarray:
    return np.asarray(load_track(data_dir, row["id"]), dtype=np.float32) / 32768.0


def _median(values) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "unknown"


def _plot(path: Path, reports: list[ArtistReport]) -> None:
    from housebox.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    names = [r.artist for r in reports]
    x = np.arange(len(reports))
    axes[0].bar(x - 0.2, [r.reference_bpm or 0 for r in reports], 0.4, label="training tracks")
    axes[0].bar(x + 0.2, [r.median_bpm or 0 for r in reports], 0.4, label="generated")
    low = min([r.reference_bpm or 120 for r in reports] + [r.median_bpm or 120 for r in reports]) - 10
    axes[0].set_ylim(max(0, low), None)
    axes[0].set_xticks(x, names, fontsize=8)
    axes[0].set_ylabel("BPM")
    axes[0].legend(fontsize=8)
    axes[0].set_title("tempo per artist", fontsize=9)
    axes[1].bar(x - 0.2, [r.reference_kick_periodicity for r in reports], 0.4, label="training tracks")
    axes[1].bar(x + 0.2, [r.kick_periodicity for r in reports], 0.4, label="generated")
    axes[1].set_xticks(x, names, fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("four-on-the-floor strength (low-band onset periodicity)", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def print_summary(report: dict) -> None:
    print("prior bits/token:", ", ".join(f"{k} {v:.3f}" for k, v in report["prior_bits_per_token"].items()))
    for level in report["vqvae"]["levels"]:
        print(f"VQ-VAE level {level['level']}: spectral convergence {level['spectral_convergence_db']:.1f} dB, "
              f"{level['codes_used_percent']:.0f}% codes used")
    for r in report["generated"]:
        verdict = "tempo kept" if r["tempo_kept"] else "tempo LOST"
        verdict += ", kick detected" if r["kick_detected"] else ", NO kick"
        print(f"{r['artist']:>16}: generated {r['median_bpm']} BPM (median of {r['generated_bpm']}) vs "
              f"{r['reference_bpm']} in training, kick periodicity {r['kick_periodicity']:.2f} "
              f"(training {r['reference_kick_periodicity']:.2f}), key match {r['key_match']:.0%}: {verdict}")
    fd, base = report["frechet_mel_chroma_distance"], report["frechet_mel_chroma_distance_train_vs_heldout"]
    if fd is not None:
        yardstick = f"training audio itself: {base:.2f}" if base is not None else "no training audio of those artists"
        print(f"Fréchet mel+chroma distance to held-out audio: {fd:.2f} ({yardstick})")
