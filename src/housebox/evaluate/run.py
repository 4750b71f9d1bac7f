"""`housebox evaluate RUN --data DATA`: everything measurable about a trained run, in one report.

- What the figures rest on: per artist, the held-out audio (whole tracks and held-out tails of tracks)
  and the training audio, in tracks and minutes.
- VQ-VAE reconstruction per level on validation tracks (see evaluate/vqvae.py).
- Each prior's validation loss in bits per token.
- Generated tracks, one batch per artist: tempo against every one of the artist's training tracks' tempi
  (on tempo when near any of them), key against the artist's keys, loudness, spectral centroid,
  four-on-the-floor strength.
- Fréchet and kernel distances on mel + chroma statistics, per artist and overall: generated audio
  against the artist's held-out audio, with the artist's training audio against the same as a yardstick.
- Where quality is lost, stage by stage: held-out audio itself, decoded by the VQ-VAE from its true
  codes, upsampled by the run's upsamplers from its true top-level codes, and generated from nothing.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from housebox.audio.features import (
    FeatureError,
    beat_periodicity,
    estimate_tempo,
    spectral_centroid,
    spectral_flatness,
)
from housebox.data.dataset import CodeWindows, tracks_for
from housebox.data.labels import Vocabulary
from housebox.data.prepare import load_track, read_manifest
from housebox.evaluate.music import (
    frechet_distance,
    kernel_distance,
    mel_chroma_features,
    track_stats,
)
from housebox.evaluate.vqvae import evaluate_vqvae
from housebox.generate.pipeline import Run, SampleSettings, decode, generate, write_outputs
from housebox.store import weights_hash, write_json
from housebox.train.loop import move_to
from housebox.train.prior import bits_per_token

# A generated track is on tempo when within this many BPM of any of its artist's training tracks; the
# artist keeps its tempo when the median of those distances is within it ...
TEMPO_TOLERANCE_BPM = 3.0
# ... and has a kick at the beat: low-band onset periodicity at least this. Training tracks of the demo corpus
# measure 0.6-0.9; noise, or onsets at no steady tempo, 0-0.1 (audio/features.py, tests/test_features.py).
KICK_DETECTED = 0.2
# The held-out audio the distances compare against: at most this many pieces of REFERENCE_SECONDS per artist.
REFERENCE_PIECES, REFERENCE_SECONDS = 10, 60.0

# The stages of the pipeline, in the order audio passes through them, and what each row measures.
STAGES = {
    "heldout": "the held-out audio itself (the floor to read the others against)",
    "vqvae": "the VQ-VAE decoding the true level-0 codes of the held-out pieces",
    "vqvae_top": "the VQ-VAE decoding their true top-level codes (what the top level alone keeps)",
    "upsampled": "the upsamplers filling the finer levels from their true top-level codes, then decoded",
    # a run holding an upsampler of each kind at a level: one row per kind, from the same top codes and seed
    "upsampled_autoregressive": "the autoregressive upsamplers (where a level has one) from the true top codes",
    "upsampled_masked": "the masked upsamplers (where a level has one) from the true top codes",
    "generated": "the generated tracks (top prior, upsamplers, decoder)",
}
# Which model a stage's loss points at: distance added by the stage over the one before it.
STAGE_MODEL = {"vqvae": "the VQ-VAE", "vqvae_top": "the VQ-VAE", "upsampled": "the upsamplers",
               "upsampled_autoregressive": "the autoregressive upsamplers",
               "upsampled_masked": "the masked upsamplers", "generated": "the top prior"}

Segment = tuple[dict, float, float]  # (manifest row, start s, end s)


# ---- what the figures rest on -------------------------------------------------------------------


def data_segments(data_dir: Path, sample_rate: int) -> tuple[list[Segment], list[Segment]]:
    """(held-out, training) segments of a prepared dataset, as training splits it (data/dataset.py)."""
    from housebox.data.dataset import held_out_segments, training_segments

    held = held_out_segments(data_dir, sample_rate)
    try:
        training = training_segments(data_dir, sample_rate)
    except ValueError:  # every track held out
        training = []
    return held, training


def summarize_segments(segments: list[Segment], partial: str) -> dict[str, dict]:
    """Per artist: whole tracks, partial pieces (named `partial`: "tails", "heads") and minutes of audio."""
    out: dict[str, dict] = {}
    for row, start, end in segments:
        entry = out.setdefault(row["artist"], {"tracks": 0, partial: 0, "minutes": 0.0})
        whole = start <= 1e-6 and end >= float(row["seconds"]) - 1e-6
        entry["tracks" if whole else partial] += 1
        entry["minutes"] += (end - start) / 60.0
    return {artist: {**entry, "minutes": round(entry["minutes"], 2)} for artist, entry in sorted(out.items())}


# ---- tempo and key against the artist's tracks --------------------------------------------------


@dataclass(frozen=True)
class TempoMatch:
    bpm: float | None  # the generated track's estimated tempo
    nearest_bpm: float | None  # the reference tempo closest to it
    error_bpm: float | None  # |bpm - nearest_bpm|
    on_tempo: bool | None  # error_bpm <= TEMPO_TOLERANCE_BPM (None: no tempo measured or no reference)


def match_tempo(bpm: float | None, reference: list[float]) -> TempoMatch:
    """A tempo against a list of reference tempi (one per track): the nearest one counts, not their midpoint."""
    if bpm is None or not reference:
        return TempoMatch(bpm, None, None, None)
    nearest = min(reference, key=lambda r: abs(r - bpm))
    error = round(abs(bpm - nearest), 2)
    return TempoMatch(bpm, nearest, error, error <= TEMPO_TOLERANCE_BPM)


def artist_tempo(generated_bpm: list[float | None],
                 reference_bpm: list[float]) -> tuple[list[TempoMatch], float | None]:
    """Each generated tempo against the artist's track tempi, and the artist's error: the median over generated
    tracks of the distance to the nearest reference tempo (None when none was measured)."""
    matches = [match_tempo(bpm, reference_bpm) for bpm in generated_bpm]
    return matches, _median([m.error_bpm for m in matches], 2)


def key_share(keys: list[str | None], reference: list[str | None]) -> float:
    """Share of `keys` that are among the `reference` keys (one per track)."""
    allowed = {k for k in reference if k is not None}
    return float(np.mean([k in allowed for k in keys])) if keys else 0.0


@dataclass(frozen=True)
class ArtistReport:
    artist: str
    genres: list[str]
    reference_bpm: list[float]  # tempo of each of the artist's training tracks
    reference_keys: list[str]  # key of each of the artist's training tracks
    generated_bpm: list[float | None]
    nearest_bpm: list[float | None]  # per generated track: the reference tempo closest to it
    bpm_errors: list[float | None]  # per generated track: distance to that nearest tempo
    on_tempo: list[bool | None]  # per generated track: bpm_errors <= TEMPO_TOLERANCE_BPM
    median_bpm: float | None  # of the generated tracks
    bpm_error: float | None  # median of bpm_errors
    generated_keys: list[str | None]
    key_match: float  # share of generated tracks whose key is among reference_keys
    kick_periodicity: float  # median over generated tracks, at their own estimated tempo
    reference_kick_periodicity: float  # median over pieces of the artist's training audio
    lufs: float | None
    centroid_hz: float
    reference_centroid_hz: float
    samples_dir: str
    tempo_kept: bool | None  # bpm_error <= TEMPO_TOLERANCE_BPM (None: no reference tempo or none measured)
    kick_detected: bool  # kick_periodicity >= KICK_DETECTED


# ---- pieces of audio and their codes ------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A stretch of one track on top-level token boundaries: token t covers samples [t * hop, (t + 1) * hop)."""

    row: dict
    first: int  # first top-level token
    tokens: int


def cut_pieces(segments: list[Segment], tokens_per_second: float, seconds: float, count: int) -> list[Piece]:
    """Up to `count` pieces of `seconds` (a shorter segment gives one piece, the whole of it) from `segments`.

    One piece per segment in turn until `count` are taken, then more from the segments long enough to hold
    them; the pieces of a segment are spread evenly over it (one piece: its middle).
    """
    length = max(1, round(seconds * tokens_per_second))
    spans = []
    for row, start, end in segments:
        lo, hi = math.ceil(start * tokens_per_second - 1e-6), math.floor(end * tokens_per_second + 1e-6)
        if hi > lo:
            spans.append((row, lo, hi))
    capacity = [max(1, (hi - lo) // length) for _, lo, hi in spans]
    taken, total = [0] * len(spans), 0
    while total < count and any(t < c for t, c in zip(taken, capacity)):
        for i in range(len(spans)):
            if total < count and taken[i] < capacity[i]:
                taken[i] += 1
                total += 1
    pieces = []
    for (row, lo, hi), k in zip(spans, taken):
        size, part = min(length, hi - lo), (hi - lo) / max(k, 1)
        pieces += [Piece(row, lo + int(part * j + (part - size) / 2), size) for j in range(k)]
    return pieces


def piece_audio(data_dir: Path, piece: Piece, hop: int) -> np.ndarray:
    """float32 [tokens * hop] of a piece."""
    audio = load_track(data_dir, piece.row["id"])[piece.first * hop : (piece.first + piece.tokens) * hop]
    return np.asarray(audio, dtype=np.float32) / 32768.0


def piece_codes(data_dir: Path, pieces: list[Piece], level: int, ratio: int) -> torch.Tensor:
    """The true codes of equally long pieces at `level` from the code cache (`ratio` level-`level` tokens per
    top-level token): LongTensor[n x tokens * ratio]."""
    from housebox.data.codes import load_codes

    rows = [np.asarray(load_codes(data_dir, p.row["id"], level)[p.first * ratio : (p.first + p.tokens) * ratio])
            for p in pieces]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def check_code_cache(run: Run, data_dir: Path) -> None:
    """The stages read the true codes from the code cache: it must have been made by the run's VQ-VAE."""
    meta = data_dir / "codes" / "meta.json"
    made_by = json.loads(meta.read_text()).get("weights_sha256") if meta.exists() else None
    if made_by != weights_hash(run.vqvae_dir):
        raise ValueError(f"{data_dir / 'codes'} was not made by {run.vqvae_dir}'s weights; run "
                         f"`housebox encode --data {data_dir} --vqvae {run.vqvae_dir}` first")


def features_of(data_dir: Path, pieces: list[Piece], hop: int, sample_rate: int) -> np.ndarray:
    """Per-second mel + chroma statistics of pieces, stacked: [seconds x 44]."""
    parts = [mel_chroma_features(piece_audio(data_dir, p, hop), sample_rate) for p in pieces]
    return np.concatenate(parts) if parts else np.zeros((0, 44))


# ---- where quality is lost -----------------------------------------------------------------------


@dataclass(frozen=True)
class StageRow:
    pieces: int
    seconds: float  # of audio measured
    beat_strength: float | None  # median kick periodicity at each piece's reference tempo
    tempo_error_bpm: float | None  # median |estimated tempo - reference tempo|
    frechet: float | None  # Fréchet mel+chroma distance to the held-out audio
    kad: float | None  # kernel distance to the held-out audio
    centroid_hz: float | None = None  # median spectral centroid (brightness)
    flatness: float | None = None  # median spectral flatness (noise: 0 tones .. 1 white noise)


@dataclass
class Measured:
    """What one stage measured on one artist's pieces, before the figures are summarised into a StageRow."""

    beats: list[float | None] = field(default_factory=list)
    errors: list[float | None] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    centroids: list[float] = field(default_factory=list)
    flatness: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, audio: np.ndarray, sample_rate: int, reference_bpm: float | None, bpm: float | None) -> None:
        """Measure one piece of float audio [T], its estimated tempo `bpm`, against its reference tempo."""
        self.beats.append(_safe(beat_periodicity, audio, sample_rate, reference_bpm) if reference_bpm else None)
        self.errors.append(round(abs(bpm - reference_bpm), 2) if bpm is not None and reference_bpm else None)
        self.features.append(mel_chroma_features(audio, sample_rate))
        self.centroids.append(spectral_centroid(audio, sample_rate))
        self.flatness.append(spectral_flatness(audio))
        self.seconds += len(audio) / sample_rate

    def row(self, reference: np.ndarray) -> StageRow:
        features = np.concatenate(self.features) if self.features else np.zeros((0, reference.shape[1]))
        frechet, kad = distances(features, reference)
        return StageRow(pieces=len(self.beats), seconds=round(self.seconds, 2), beat_strength=_median(self.beats, 3),
                        tempo_error_bpm=_median(self.errors, 2), frechet=frechet, kad=kad,
                        centroid_hz=_median(self.centroids, 1), flatness=_significant(_median(self.flatness), 4))


def distances(features: np.ndarray, reference: np.ndarray) -> tuple[float | None, float | None]:
    """(Fréchet, kernel) distance of features to reference features, None when a side has under two vectors."""
    if len(features) < 2 or len(reference) < 2:
        return None, None
    return round(frechet_distance(features, reference), 3), round(kernel_distance(features, reference), 5)


def stage_rows(measured: dict[str, dict[str, Measured]], references: dict[str, np.ndarray]) -> dict[str, dict]:
    """stage -> {"all": StageRow, artist: StageRow}: each artist against its own held-out audio, and all pieces
    together against all held-out audio."""
    pooled_reference = np.concatenate(list(references.values())) if references else np.zeros((0, 44))
    out = {}
    for stage in STAGES:
        if stage not in measured:
            continue
        everything = Measured()
        rows = {}
        for artist, m in sorted(measured[stage].items()):
            rows[artist] = asdict(m.row(references.get(artist, np.zeros((0, 44)))))
            everything.beats += m.beats
            everything.errors += m.errors
            everything.features += m.features
            everything.centroids += m.centroids
            everything.flatness += m.flatness
            everything.seconds += m.seconds
        out[stage] = {"all": asdict(everything.row(pooled_reference)), **rows}
    return out


def where_quality_is_lost(stages: dict[str, dict], upsampled: str = "upsampled") -> dict:
    """Follow audio through the pipeline (held out -> VQ-VAE -> upsamplers -> top prior) on the overall rows:
    the stage that adds the most kernel distance (Fréchet where no kernel distance was measured) and the one
    where the beat weakens most, and the model each points at. `upsampled`: the upsampler row generation used."""
    chain = ["heldout", "vqvae", upsampled, "generated"] if upsampled in stages else \
        ["heldout", "vqvae_top", "generated"]
    chain = [s for s in chain if s in stages]
    overall = {s: stages[s]["all"] for s in chain}
    metric = "kad" if all(overall[s]["kad"] is not None for s in chain) else "frechet"
    out = {"chain": chain}
    for name, key, sign in (("distance", metric, 1.0), ("beat", "beat_strength", -1.0)):
        added = {}
        for before, stage in pairwise(chain):
            a, b = overall[before][key], overall[stage][key]
            if a is not None and b is not None:
                added[stage] = round(sign * (b - a), 5)
        worst = max(added, key=added.get) if added else None
        out[name] = {"measure": key, "added": added, "stage": worst if worst and added[worst] > 0 else None,
                     "model": STAGE_MODEL[worst] if worst and added[worst] > 0 else None}
    out["train_longer"] = out["distance"]["model"]
    return out


def distance_advice(lost: dict, beat_guidance: float) -> str:
    """One line from `where_quality_is_lost`: where most distance appears and what to do about it. When it is
    the top prior's draws and they were guided by the beat clock, less guidance is the other lever (measured:
    README, "Where the generated tracks' darkness comes from")."""
    d = lost["distance"]
    if not d["stage"]:
        return "no stage adds distance"
    hint = (f", or sample with less --beat-guidance than {beat_guidance:g} (the more guidance, the more kick and the "
            f"less of the rest)" if d["stage"] == "generated" and beat_guidance > 1.0 else "")
    return (f"most distance appears at the {d['stage']} stage ({d['measure']} +{d['added'][d['stage']]:g}): "
            f"train {d['model']} longer{hint}")


# ---- the evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def prior_bits_per_token(run: Run, data_dir: Path, windows: int = 16) -> dict[str, float]:
    vocab = Vocabulary(artists=run.artists, genres=run.genres)
    out = {}
    for level, prior in sorted(run.priors.items()):
        config = prior.config
        rows = tracks_for(data_dir, "valid", config.sample_rate)
        data = CodeWindows(data_dir, rows, level, config.n_ctx, windows, vocab, config.max_genres,
                           ratio=config.upper_ratio, upper=config.is_upsampler,
                           seconds_per_token=config.hop / config.sample_rate, beat_clock=config.beat_clock)
        batch = move_to(data.fixed(windows), prior.head.weight.device)
        out[f"level_{level}"] = round(bits_per_token(prior, batch), 4)
    return out


EVALUATIONS = "evaluations.json"  # in the run folder: where `evaluate` wrote, so `serve` can list its samples


def _recorded(path: Path) -> list[str]:
    """The folders listed in an evaluations.json, oldest first ([] when it is missing or unreadable)."""
    try:
        return [f for f in json.loads(path.read_text()).get("folders", []) if isinstance(f, str)]
    except (OSError, ValueError, AttributeError):
        return []


def record_evaluation(run_dir: Path, out_dir: Path) -> None:
    """Add `out_dir` to the run's list of evaluation folders (newest last, each once)."""
    path = Path(run_dir) / EVALUATIONS
    folders = _recorded(path)
    here = str(out_dir.resolve())
    try:
        write_json(path, {"folders": [f for f in folders if f != here] + [here]})
    except OSError as err:  # a run folder we may not write to: the evaluation itself still runs
        print(f"note: {path} not written ({err.strerror}); `serve` will not list this evaluation's samples")


def evaluation_folders(run_dir: Path) -> list[Path]:
    """The evaluation folders `evaluate` recorded for the run that still exist, newest first. Only folders
    inside the run folder or directly beside it (the demo's `evaluation` beside `run`) count: a run folder
    from elsewhere cannot point the web page at the rest of the disk."""
    run_dir = Path(run_dir).resolve()
    found = []
    for folder in reversed(_recorded(run_dir / EVALUATIONS)):
        path = Path(folder).resolve()
        if path.is_dir() and (path.is_relative_to(run_dir) or path.parent == run_dir.parent):
            found.append(path)
    return found


def evaluate_run(run: Run, data_dir: str | Path, out_dir: str | Path, seconds: float = 30.0, per_artist: int = 1,
                 seed: int = 1000, temperature: float = 1.0, progress: bool = True, stage_pieces: int = 2,
                 artists: list[str] | None = None, upsample_noise: float = SampleSettings.upsample_noise,
                 beat_guidance: float = SampleSettings.beat_guidance) -> dict:
    """Evaluate `run` on `data_dir`, writing samples, evaluation.json and PNGs under `out_dir`.

    `stage_pieces`: held-out pieces of `seconds` per artist that go through the stages (each is upsampled
    once, as costly as generating a track). `artists`: only these (default: every artist of the run with data).
    `beat_guidance`: the top prior's guidance by the beat clock in the generated tracks (the stages start
    from true top codes).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_evaluation(run.root, out_dir)
    rows = read_manifest(data_dir)
    config = run.vqvae.config
    sr, top = config.sample_rate, run.top
    top_hop, top_rate = config.hops[top], config.tokens_per_second(top)
    held, training = data_segments(data_dir, sr)
    check_code_cache(run, data_dir)
    vq = evaluate_vqvae(run.vqvae, data_dir, out_dir, seconds=8.0)
    bits = prior_bits_per_token(run, data_dir)

    names = sorted({r["artist"] for r in rows if r["artist"] in run.artists and r["artist"] != "unknown"})
    names = [a for a in names if artists is None or a in artists]
    measured: dict[str, dict[str, Measured]] = {}
    references, reports, distance_table = {}, [], {}
    generated_all, training_all = [], []
    stage_list = []
    # the upsampler rows: one for the run as loaded, or one per kind where the run holds both kinds
    kinds = [k for k in run.upsampler_kinds if any(len(here) > 1 and k in here for here in run.upsamplers.values())]
    upsampled_runs = ({f"upsampled_{k}": run.with_upsamplers(k) for k in kinds} if kinds
                      else {"upsampled": run} if any(level < top for level in run.priors) else {})
    for i, artist in enumerate(names):
        mine = [r for r in rows if r["artist"] == artist]
        my_held = [s for s in held if s[0]["artist"] == artist]
        my_training = [s for s in training if s[0]["artist"] == artist]
        reference_rows = [r for r in mine if r["split"] == "train"] or mine
        reference = features_of(data_dir, cut_pieces(my_held, top_rate, REFERENCE_SECONDS, REFERENCE_PIECES),
                                top_hop, sr)
        references[artist] = reference

        # generated tracks against the artist's tracks
        genres = tuple(Counter(g for r in mine for g in r["genres"]).most_common(1)[0][0:1])
        settings = SampleSettings(artist=artist, genres=genres, seconds=seconds, n=per_artist, seed=seed + i,
                                  temperature=temperature, upsample_noise=upsample_noise,
                                  beat_guidance=beat_guidance)
        generation = generate(run, settings, progress=progress, label=f"{artist}, generated")
        samples_dir = out_dir / "samples" / _slug(artist)
        write_outputs(samples_dir, generation, settings, run)
        training_audio = [piece_audio(data_dir, p, top_hop)
                          for p in cut_pieces(my_training, top_rate, max(seconds, 30.0), 6)]
        artist_report = _artist_report(artist, genres, reference_rows, generation.audio, sr, samples_dir,
                                       training_audio)
        reports.append(artist_report)
        generated = measured.setdefault("generated", {}).setdefault(artist, Measured())
        for audio, bpm, nearest in zip(generation.audio, artist_report.generated_bpm, artist_report.nearest_bpm):
            generated.add(audio, sr, nearest or _median(artist_report.reference_bpm, 2), bpm)
        generated_features = np.concatenate(generated.features)

        # the yardstick: as much of the artist's training audio as was generated
        yardstick = features_of(data_dir, cut_pieces(my_training, top_rate, seconds, per_artist), top_hop, sr)
        distance_table[artist] = _distance_entry(generated_features, yardstick, reference)
        generated_all.append(generated_features)
        training_all.append(yardstick)

        # held-out pieces through the stages
        pieces = cut_pieces(my_held, top_rate, seconds, stage_pieces)
        stage_list += [{"artist": artist, "track": p.row["id"], "start_s": round(p.first / top_rate, 2),
                        "seconds": round(p.tokens / top_rate, 2)} for p in pieces]
        _measure_stages(run, upsampled_runs, data_dir, pieces, artist, genres, measured, seed=seed + 10_000 + i,
                        temperature=temperature, progress=progress, upsample_noise=upsample_noise)

    all_reference = np.concatenate(list(references.values())) if references else np.zeros((0, 44))
    distance_table["all"] = _distance_entry(np.concatenate(generated_all) if generated_all else np.zeros((0, 44)),
                                  np.concatenate(training_all) if training_all else np.zeros((0, 44)), all_reference)
    stages = stage_rows(measured, references)
    report = {
        "held_out": summarize_segments(held, "tails"),
        "training": summarize_segments(training, "heads"),
        "vqvae": vq.to_dict(),
        "prior_bits_per_token": bits,
        "generated": [asdict(r) for r in reports],
        "distances": distance_table,
        "stages": stages,
        "stage_pieces": stage_list,
        "stage_descriptions": {s: STAGES[s] for s in stages},
        "where_quality_is_lost": where_quality_is_lost(
            stages, f"upsampled_{run.priors[min(run.priors)].config.kind}" if kinds else "upsampled"),
        "settings": {"seconds": seconds, "per_artist": per_artist, "seed": seed, "temperature": temperature,
                     "stage_pieces": stage_pieces, "upsample_steps": SampleSettings.upsample_steps,
                     "upsample_noise": upsample_noise, "beat_guidance": beat_guidance,
                     "upsamplers": {f"level_{level}": run.priors[level].config.kind
                                    for level in sorted(run.priors) if level < top}},
        "criteria": {"tempo_tolerance_bpm": TEMPO_TOLERANCE_BPM, "kick_detected_at": KICK_DETECTED},
    }
    write_json(out_dir / "evaluation.json", report)
    _plot(out_dir / "evaluation.png", reports, stages)
    return report


def _artist_report(artist: str, genres: tuple[str, ...], reference_rows: list[dict], audio: np.ndarray, sr: int,
                   samples_dir: Path, training_audio: list[np.ndarray]) -> ArtistReport:
    stats = [track_stats(a, sr) for a in audio]
    reference = [track_stats(a, sr) for a in training_audio]
    reference_bpm = [float(r["bpm"]) for r in reference_rows if r.get("bpm")]
    reference_keys = [r["key"] for r in reference_rows if r.get("key")]
    matches, bpm_error = artist_tempo([s.bpm for s in stats], reference_bpm)
    kick = float(np.median([s.kick_periodicity or 0.0 for s in stats]))
    return ArtistReport(
        artist=artist, genres=list(genres), reference_bpm=reference_bpm, reference_keys=reference_keys,
        generated_bpm=[s.bpm for s in stats], nearest_bpm=[m.nearest_bpm for m in matches],
        bpm_errors=[m.error_bpm for m in matches], on_tempo=[m.on_tempo for m in matches],
        median_bpm=_median([s.bpm for s in stats], 2), bpm_error=bpm_error,
        generated_keys=[s.key for s in stats], key_match=key_share([s.key for s in stats], reference_keys),
        kick_periodicity=kick,
        reference_kick_periodicity=float(np.median([s.kick_periodicity or 0.0 for s in reference] or [0.0])),
        lufs=_median([s.lufs for s in stats], 2),
        centroid_hz=float(np.median([s.centroid_hz for s in stats])),
        reference_centroid_hz=float(np.median([s.centroid_hz for s in reference] or [0.0])),
        samples_dir=str(samples_dir),
        tempo_kept=None if bpm_error is None else bpm_error <= TEMPO_TOLERANCE_BPM,
        kick_detected=kick >= KICK_DETECTED,
    )


def _distance_entry(generated: np.ndarray, training: np.ndarray, reference: np.ndarray) -> dict:
    frechet, kad = distances(generated, reference)
    frechet_training, kad_training = distances(training, reference)
    return {"frechet": frechet, "kad": kad, "frechet_training": frechet_training, "kad_training": kad_training,
            "generated_seconds": len(generated), "training_seconds": len(training), "heldout_seconds": len(reference)}


def _measure_stages(run: Run, upsampled_runs: dict[str, Run], data_dir: Path, pieces: list[Piece], artist: str,
                    genres: tuple[str, ...], measured: dict[str, dict[str, Measured]], seed: int, temperature: float,
                    progress: bool, upsample_noise: float) -> None:
    """Put held-out pieces through the stages (equally long pieces in one batch) and measure each stage;
    `upsampled_runs`: stage name -> the run whose upsamplers fill that row (the same top codes and seed)."""
    config = run.vqvae.config
    sr, top = config.sample_rate, run.top
    top_hop = config.hops[top]
    device = next(run.vqvae.parameters()).device
    for tokens in sorted({p.tokens for p in pieces}):
        group = [p for p in pieces if p.tokens == tokens]
        top_codes = piece_codes(data_dir, group, top, 1)  # (n, tokens)
        outputs = {
            "heldout": np.stack([piece_audio(data_dir, p, top_hop) for p in group]),
            "vqvae": decode(run.vqvae, piece_codes(data_dir, group, 0, top_hop // config.hops[0]).to(device), 0),
            "vqvae_top": decode(run.vqvae, top_codes.to(device), top),
        }
        settings = SampleSettings(artist=artist, genres=genres, seconds=tokens / config.tokens_per_second(top),
                                  n=len(group), seed=seed, temperature=temperature, upsample_noise=upsample_noise)
        grids = [_piece_grid(data_dir, p, top_hop / sr) for p in group]
        beats = grids if run.clocked and all(g is not None for g in grids) else None  # each piece's own grid
        for stage, variant in upsampled_runs.items():
            outputs[stage] = generate(variant, settings, progress=progress, top_codes=top_codes, beats=beats,
                                      label=f"{artist}, stage {stage}").audio
        for stage, audio in outputs.items():
            for piece, one in zip(group, audio):
                measured.setdefault(stage, {}).setdefault(artist, Measured()).add(
                    one, sr, piece.row.get("bpm"), _safe(estimate_tempo, one, sr))


def _piece_grid(data_dir: Path, piece: Piece, seconds_per_token: float):
    """The track's beat grid seen from the piece's first token (None when the track has none)."""
    from housebox.audio.features import BeatGrid
    from housebox.data.prepare import load_beats

    grid = load_beats(data_dir, piece.row["id"])
    if grid is None:
        return None
    return BeatGrid(grid.times - piece.first * seconds_per_token, grid.downbeat, grid.bpm)


def _safe(fn, *args):
    try:
        return fn(*args)
    except FeatureError:
        return None


def _significant(value: float | None, digits: int) -> float | None:
    """`value` to `digits` significant digits: a flatness of a clean tone (~1e-7) stays above 0, as it is."""
    return None if value is None else float(f"{value:.{digits}g}")


def _median(values, digits: int | None = None) -> float | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    median = float(np.median(known))
    return round(median, digits) if digits is not None else median


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "unknown"


# ---- the report ----------------------------------------------------------------------------------


def _plot(path: Path, reports: list[ArtistReport], stages: dict[str, dict]) -> None:
    from housebox.report.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    names = [r.artist for r in reports]
    x = np.arange(len(reports))
    for i, r in enumerate(reports):  # each training track's tempo with its tolerance band, generated tempi as dots
        for bpm in r.reference_bpm:
            axes[0].fill_between([i - 0.3, i + 0.3], bpm - TEMPO_TOLERANCE_BPM, bpm + TEMPO_TOLERANCE_BPM,
                                 color="tab:blue", alpha=0.15, lw=0)
            axes[0].plot([i - 0.3, i + 0.3], [bpm, bpm], color="tab:blue", lw=1.5,
                         label="training tracks (± tolerance)" if i == 0 and bpm == r.reference_bpm[0] else None)
        known = [b for b in r.generated_bpm if b is not None]
        axes[0].scatter([i] * len(known), known, color="tab:orange", zorder=3, s=18,
                        label="generated" if i == 0 else None)
    axes[0].set_xticks(x, names, fontsize=8)
    axes[0].set_ylabel("BPM")
    axes[0].legend(fontsize=7)
    axes[0].set_title("tempo per artist", fontsize=9)
    axes[1].bar(x - 0.2, [r.reference_kick_periodicity for r in reports], 0.4, label="training tracks")
    axes[1].bar(x + 0.2, [r.kick_periodicity for r in reports], 0.4, label="generated")
    axes[1].set_xticks(x, names, fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("four-on-the-floor strength (low-band onset periodicity)", fontsize=9)
    axes[1].legend(fontsize=8)
    order = list(stages)
    kad = [stages[s]["all"]["kad"] or 0.0 for s in order]
    beat = [stages[s]["all"]["beat_strength"] or 0.0 for s in order]
    positions = np.arange(len(order))
    axes[2].bar(positions - 0.2, kad, 0.4, color="tab:red", label="kernel distance to held-out audio")
    axes[2].set_xticks(positions, order, fontsize=8)
    axes[2].set_ylabel("KAD", fontsize=8)
    beat_axis = axes[2].twinx()
    beat_axis.bar(positions + 0.2, beat, 0.4, color="tab:green", label="beat strength")
    beat_axis.set_ylim(0, 1)
    beat_axis.set_ylabel("beat strength", fontsize=8)
    axes[2].set_title("where quality is lost, stage by stage (all artists)", fontsize=9)
    handles = axes[2].get_legend_handles_labels()[0] + beat_axis.get_legend_handles_labels()[0]
    axes[2].legend(handles=handles, fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _count(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else word + 's'}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_stage_table(stages: dict[str, dict]) -> list[str]:
    """The stage table as aligned lines of text: every stage, all artists first, then each artist."""
    width = max([len(a) for rows in stages.values() for a in rows] + [6])
    first = max([len(s) for s in stages] + [10])
    lines = [f"  {'stage':<{first}} {'artist':<{width}} {'pieces':>6} {'beat':>5} {'tempo err':>9} "
             + f"{'Fréchet':>9} {'KAD':>8} {'centroid':>8} {'flatness':>8}"]
    for stage, rows in stages.items():
        for artist, r in rows.items():
            lines.append(f"  {stage if artist == 'all' else '':<{first}} {artist:<{width}} {r['pieces']:>6} "
                         f"{_number(r['beat_strength'], 2):>5} {_number(r['tempo_error_bpm'], 2):>9} "
                         f"{_number(r['frechet'], 2):>9} {_number(r['kad'], 4):>8} "
                         f"{_number(r.get('centroid_hz'), 0):>8} {_number(r.get('flatness'), 4):>8}")
    return lines


def describe_data(held_out: dict[str, dict], training: dict[str, dict]) -> list[str]:
    """One line per artist: what its held-out and training figures rest on."""
    lines = []
    for artist in sorted(set(held_out) | set(training)):
        h = held_out.get(artist, {"tracks": 0, "tails": 0, "minutes": 0.0})
        t = training.get(artist, {"tracks": 0, "heads": 0, "minutes": 0.0})
        lines.append(f"{artist}: held out {_count(h['tracks'], 'track')} + {_count(h['tails'], 'tail')}, "
                     f"{h['minutes']:.1f} min; trained on {_count(t['tracks'], 'track')} + "
                     f"{_count(t['heads'], 'head')}, {t['minutes']:.1f} min")
    return lines


def print_summary(report: dict) -> None:
    for line in describe_data(report["held_out"], report["training"]):
        print(line)
    print("prior bits/token:", ", ".join(f"{k} {v:.3f}" for k, v in report["prior_bits_per_token"].items()))
    for level in report["vqvae"]["levels"]:
        print(f"VQ-VAE level {level['level']}: spectral convergence {level['spectral_convergence_db']:.1f} dB, "
              f"{level['codes_used_percent']:.0f}% codes used")
    for r in report["generated"]:
        verdict = "tempo kept" if r["tempo_kept"] else "tempo LOST"
        verdict += ", kick detected" if r["kick_detected"] else ", NO kick"
        tracks = ", ".join("?" if b is None else f"{b}" if n is None else f"{b} ({e:.1f} from {n})"
                           for b, e, n in zip(r["generated_bpm"], r["bpm_errors"], r["nearest_bpm"]))
        print(f"{r['artist']:>16}: generated {tracks} BPM against training tracks at {r['reference_bpm']}, "
              f"median error {_number(r['bpm_error'], 2)}; kick periodicity {r['kick_periodicity']:.2f} "
              f"(training {r['reference_kick_periodicity']:.2f}), key among {sorted(set(r['reference_keys']))} "
              f"{r['key_match']:.0%}: {verdict}")
    for artist, d in report["distances"].items():
        if d["frechet"] is None:
            print(f"{artist:>16}: no distance (too little generated or held-out audio)")
            continue
        yardstick = ("training audio itself: Fréchet " + _number(d["frechet_training"], 2) + ", KAD "
                     + _number(d["kad_training"], 4)) if d["frechet_training"] is not None else "no training audio"
        print(f"{artist:>16}: distance to held-out audio: Fréchet {d['frechet']:.2f}, KAD {d['kad']:.4f} "
              f"({yardstick})")
    stages = report["stages"]
    if stages:
        seconds = report["settings"]["seconds"]
        print(f"where quality is lost (held-out pieces of up to {seconds:g} s through each stage; beat strength at "
              f"the reference tempo, tempo error in BPM, distances to the artist's held-out audio):")
        for line in format_stage_table(stages):
            print(line)
        lost = report["where_quality_is_lost"]
        b = lost["beat"]
        print(distance_advice(lost, report["settings"].get("beat_guidance", 1.0)))
        if b["stage"]:
            print(f"the beat weakens most at the {b['stage']} stage (-{b['added'][b['stage']]:.2f}): {b['model']}")
