"""Originality: does a generated sample copy its training set? Two independent checks, one verdict.

(a) Audio fingerprints: spectral-peak landmark hashing, numpy only. Every sound is resampled to one
    internal rate (11.025 kHz); local maxima of its log spectrogram, chosen relative to their
    neighbourhood and to the loudest bin (never by absolute level, so gain does not matter), are
    paired into `(f1, f2, dt)` hashes anchored at the first peak's frame. The training tracks' hashes
    are indexed once, in `DATA/fingerprints/`, and rebuilt when the dataset or the settings change.
    A sample is fingerprinted on a few frame grids (lossy re-encoding and resampling move peaks by
    less than a frame or a bin; each hash is also looked up with f1, f2, dt nudged by one); its hashes
    vote for `(track, offset)`. A moment of the sample matches a track when, in the window around it,
    enough of its hashes agree on that track at one offset, weighted by rarity (a hash that several
    training tracks hold, such as an artist's stock kick, counts less). A passage is a run of such
    moments. (Chromaprint's `fpcalc` is not used: it compares whole files, not passages.)
(b) Verbatim codes: k-gram hashes of the training code cache (`DATA/codes/l<level>`). A sample's
    k-grams found in a row on one diagonal (training position minus sample position) seed a run that
    is checked and extended token by token. k-grams very frequent in the training codes (silence,
    held notes) identify no passage and are skipped; a run counts only beyond the longest run that
    *different* training tracks already share at that level (coarse codes of similar music repeat).

Thresholds that turn these measurements into "original" / "suspicious" / "copied" are in
`OriginalityConfig`; `check_samples` writes each verdict into its sample folder's report.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from housebox.data.prepare import load_track, read_manifest

INDEX_DIR = "fingerprints"
INDEX_VERSION = 1
VERDICTS = ("original", "suspicious", "copied")
FREQ_BITS, DT_BITS = 10, 7  # a landmark hash: f1 (10 bits) | f2 (10 bits) | dt (7 bits), in a uint32


class OriginalityError(ValueError):
    """Inputs the originality check cannot use. The message is one line."""


# ---- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FingerprintConfig:
    """How sounds become landmark hashes (changing any field rebuilds the index)."""

    sample_rate: int = 11025  # everything is resampled to this first: up to 5.5 kHz, what lossy coding keeps
    n_fft: int = 512  # 46 ms; 257 bins
    hop: int = 128  # 11.6 ms frames
    peak_bins: int = 12  # a peak is the maximum of +-peak_bins ...
    peak_frames: int = 8  # ... by +-peak_frames around it
    min_prominence_db: float = 6.0  # above the mean of that neighbourhood
    floor_db: float = 70.0  # ignore peaks this far below the loudest bin of the sound
    peaks_per_second: int = 24  # the most prominent ones, per second of sound
    fan_out: int = 8  # pairs per anchor peak
    max_dt_frames: int = 90  # target zone: up to ~1 s after the anchor

    def __post_init__(self):
        if self.n_fft // 2 + 1 > 1 << FREQ_BITS or not 1 <= self.max_dt_frames < 1 << DT_BITS:
            raise OriginalityError(f"fingerprint: n_fft must be at most {2 * (1 << FREQ_BITS) - 2} and "
                                   f"max_dt_frames 1..{(1 << DT_BITS) - 1}")

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop


@dataclass(frozen=True)
class OriginalityConfig:
    """Matching settings and the verdict thresholds (seconds of audio or codes)."""

    fingerprint: FingerprintConfig = FingerprintConfig()
    window_seconds: float = 1.5  # a moment of the sample matches when the window centred on it holds ...
    min_window_hashes: int = 5  # ... at least this many hashes agreeing on one (track, offset) ...
    min_window_fraction: float = 0.3  # ... that are at least this share of all its hashes (rarity-weighted)
    offset_tolerance_frames: int = 2  # votes within +-this many frames agree on one offset
    max_candidates: int = 32  # (track, offset) pairs examined per sample, most voted first
    query_shifts: int = 4  # frame grids a sample is fingerprinted on (the index has one)
    hash_jitter: int = 1  # also look up each hash with f1, f2, dt moved by up to this much
    ngram_seconds: float = 0.05  # k of the code k-grams, in seconds of tokens (at least min_ngram)
    min_ngram: int = 4
    max_ngram_count: int = 256  # k-grams more frequent than this in the training codes are ignored
    max_index_tokens: int = 50_000_000  # levels with more training tokens are not searched
    # longest passage matching one training track. Measured on the demo corpus (synthetic: an artist's
    # tracks share sample-identical sounds): unrelated tracks of one artist match for at most 3.0 s
    # (60 tracks, leave-one-out), new renders of an artist for at most 3.6 s (180 renders, against a
    # corpus with one or four tracks per artist); 10 s pasted from a training track match for at least
    # 9.2 s, and 9.0 s as mp3 at 22.05 kHz, 6 dB quieter (51 pastes each)
    suspicious_audio_seconds: float = 5.0
    copied_audio_seconds: float = 7.0
    # longest verbatim run of codes at any level, beyond the longest run that different training
    # tracks share at that level (measured on the dataset; tiny-VQ-VAE demo: up to 7.8 s at the top level)
    suspicious_code_seconds: float = 1.0
    copied_code_seconds: float = 3.0
    calibration_tracks: int = 32  # tracks used to measure what different training tracks share

    def verdict(self, audio_seconds: float, code_seconds: float) -> str:
        """From the longest matching passage and the longest verbatim code run (beyond the natural one)."""
        if audio_seconds >= self.copied_audio_seconds or code_seconds >= self.copied_code_seconds:
            return "copied"
        if audio_seconds >= self.suspicious_audio_seconds or code_seconds >= self.suspicious_code_seconds:
            return "suspicious"
        return "original"


# ---- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    hashes: np.ndarray  # uint32 [H]: f1 << 17 | f2 << 7 | dt
    times: np.ndarray  # int32 [H]: frame of the anchor peak
    frames: int  # length of the sound in frames
    shift_seconds: float = 0.0  # frame 0 starts this far into the sound


@dataclass(frozen=True)
class AudioMatch:
    """A passage of the sample found in one training track at one offset."""

    track_id: str
    artist: str
    sample_start: float  # seconds into the sample
    track_start: float  # seconds into the training track
    seconds: float
    hashes: int  # agreeing hashes in the passage
    fraction: float  # their share of the sample's hashes in the passage (weighted by rarity)


@dataclass(frozen=True)
class CodeRun:
    """The longest run of one level's codes found verbatim in the training code cache."""

    level: int
    track_id: str
    artist: str
    sample_token: int
    track_token: int
    tokens: int
    seconds: float
    sample_start: float
    track_start: float
    natural_seconds: float = 0.0  # what different training tracks share at this level

    @property
    def excess_seconds(self) -> float:
        """How far the run goes beyond what unrelated training tracks share: the evidence of copying."""
        return round(max(0.0, self.seconds - self.natural_seconds), 3)


@dataclass(frozen=True)
class SampleOriginality:
    sample: str  # file name
    verdict: str
    matched_seconds: float  # all matched segments, any track
    longest_match_seconds: float
    longest_code_seconds: float  # beyond what unrelated training tracks share (CodeRun.excess_seconds)
    matches: tuple[AudioMatch, ...]
    code_runs: tuple[CodeRun, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        for run, row in zip(self.code_runs, data["code_runs"]):
            row["excess_seconds"] = run.excess_seconds
        return data


@dataclass(frozen=True)
class CheckReport:
    data_dir: str
    samples: tuple[SampleOriginality, ...]
    config: OriginalityConfig = field(default_factory=OriginalityConfig)


# ---- landmark fingerprints -----------------------------------------------------------------------


def log_spectrogram(audio: np.ndarray, config: FingerprintConfig) -> np.ndarray:
    """Mono float audio `[T]` at config.sample_rate -> dB magnitudes float32 `[F x frames]`."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size < config.n_fft:
        audio = np.pad(audio, (0, config.n_fft - audio.size))
    frames = np.lib.stride_tricks.sliding_window_view(audio, config.n_fft)[:: config.hop]  # (frames, n_fft), a view
    window = np.hanning(config.n_fft).astype(np.float32)
    out = np.empty((config.n_fft // 2 + 1, frames.shape[0]), dtype=np.float32)  # (F, frames)
    for start in range(0, frames.shape[0], 4096):  # bounded memory for long tracks
        spectrum = np.abs(np.fft.rfft(frames[start : start + 4096] * window, axis=1))  # (chunk, F)
        out[:, start : start + 4096] = (20.0 * np.log10(spectrum + 1e-9)).T
    return out


def find_peaks(spec: np.ndarray, config: FingerprintConfig) -> tuple[np.ndarray, np.ndarray]:
    """Constellation of a dB spectrogram `[F x frames]`: (frequency bins int32 [P], frames int32 [P]), by time."""
    from scipy.ndimage import maximum_filter, uniform_filter

    size = (2 * config.peak_bins + 1, 2 * config.peak_frames + 1)
    local_max = maximum_filter(spec, size=size, mode="constant", cval=-np.inf)
    prominence = spec - uniform_filter(spec, size=size, mode="nearest")
    is_peak = (spec == local_max) & (prominence >= config.min_prominence_db) & (spec >= spec.max() - config.floor_db)
    is_peak[0] = False  # DC carries no landmark
    bins, frames = np.nonzero(is_peak)
    strength = prominence[bins, frames]
    per_block = max(1, round(config.frames_per_second))  # one-second blocks
    block = frames // per_block
    order = np.lexsort((-strength, block))  # by block, most prominent first
    block = block[order]
    first = np.searchsorted(block, block, side="left")
    keep = order[np.arange(order.size) - first < config.peaks_per_second]
    keep = keep[np.lexsort((bins[keep], frames[keep]))]  # by time, then frequency
    return bins[keep].astype(np.int32), frames[keep].astype(np.int32)


def _pack(f1: np.ndarray, f2: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """(f1, f2, dt) int arrays `[H]` -> uint32 hashes `[H]`."""
    return ((f1 << (FREQ_BITS + DT_BITS)) | (f2 << DT_BITS) | dt).astype(np.uint32)


def _unpack(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint32 hashes `[H]` -> (f1, f2, dt) int64 arrays `[H]`."""
    h = hashes.astype(np.int64)
    return h >> (FREQ_BITS + DT_BITS), (h >> DT_BITS) & ((1 << FREQ_BITS) - 1), h & ((1 << DT_BITS) - 1)


def landmark_hashes(bins: np.ndarray, frames: np.ndarray, config: FingerprintConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of peaks (anchor, one of the next fan_out peaks within max_dt_frames) -> (uint32 [H], int32 [H])."""
    hashes, times = [], []
    for k in range(1, config.fan_out + 1):
        f1, f2 = bins[:-k], bins[k:]
        t1, dt = frames[:-k], frames[k:] - frames[:-k]
        ok = (dt >= 1) & (dt <= config.max_dt_frames)
        hashes.append(_pack(f1[ok].astype(np.int64), f2[ok].astype(np.int64), dt[ok].astype(np.int64)))
        times.append(t1[ok])
    return np.concatenate(hashes), np.concatenate(times).astype(np.int32)


def fingerprint(audio: np.ndarray, sample_rate: int, config: FingerprintConfig = FingerprintConfig(),
                shifts: int = 1) -> list[Fingerprint]:
    """Landmark hashes of mono float audio `[T]` at any sample rate, on `shifts` frame grids hop/shifts apart.

    The index holds one grid per track; a query on several grids finds the one that lines up with it
    within hop / (2 * shifts), which keeps far more of its peaks (and hashes) equal.
    """
    from housebox.audio.io import resample

    audio = np.asarray(audio, dtype=np.float32).reshape(1, -1)
    audio = resample(audio, sample_rate, config.sample_rate)[0]  # (T',)
    out = []
    for k in range(shifts):
        shift = k * config.hop // shifts
        spec = log_spectrogram(audio[shift:], config)
        bins, frames = find_peaks(spec, config)
        hashes, times = landmark_hashes(bins, frames, config)
        out.append(Fingerprint(hashes=hashes, times=times, frames=spec.shape[1],
                               shift_seconds=shift / config.sample_rate))
    return out


# ---- the training set's fingerprint index --------------------------------------------------------


@dataclass(frozen=True)
class FingerprintIndex:
    hashes: np.ndarray  # uint32 [N], sorted
    tracks: np.ndarray  # int32 [N]: row in track_ids
    times: np.ndarray  # int32 [N]: anchor frame in that track
    track_ids: tuple[str, ...]
    artists: tuple[str, ...]
    config: FingerprintConfig


def manifest_key(rows: list[dict]) -> str:
    """sha256 of the dataset's tracks (id, content hash, length): changes whenever the dataset does."""
    ordered = sorted(rows, key=lambda r: r["id"])
    text = "\n".join(f"{r['id']} {r['sha256']} {r['samples']} {r['sample_rate']}" for r in ordered)
    return hashlib.sha256(text.encode()).hexdigest()


def build_fingerprint_index(data_dir: str | Path, config: FingerprintConfig = FingerprintConfig(),
                            progress: bool = False) -> FingerprintIndex:
    """Fingerprint every track of a prepared dataset (no caching; see `load_fingerprint_index`)."""
    from tqdm import tqdm

    rows = read_manifest(data_dir)
    if not rows:
        raise OriginalityError(f"{data_dir}: no prepared tracks (run `housebox prepare` first)")
    hashes, tracks, times = [], [], []
    for i, row in enumerate(tqdm(rows, desc="fingerprint", unit="track", disable=not progress, dynamic_ncols=True)):
        audio = np.asarray(load_track(data_dir, row["id"]), dtype=np.float32) / 32768.0  # (T,)
        fp = fingerprint(audio, row["sample_rate"], config)[0]
        hashes.append(fp.hashes)
        times.append(fp.times)
        tracks.append(np.full(fp.hashes.size, i, dtype=np.int32))
    hashes_all = np.concatenate(hashes)
    order = np.argsort(hashes_all, kind="stable")
    return FingerprintIndex(hashes=hashes_all[order], tracks=np.concatenate(tracks)[order],
                            times=np.concatenate(times)[order], track_ids=tuple(r["id"] for r in rows),
                            artists=tuple(r["artist"] for r in rows), config=config)


def load_fingerprint_index(data_dir: str | Path, config: FingerprintConfig = FingerprintConfig(),
                           progress: bool = False) -> FingerprintIndex:
    """The index stored in `DATA/fingerprints/`, rebuilt (and stored) when the dataset or the settings changed."""
    data_dir = Path(data_dir)
    folder = data_dir / INDEX_DIR
    meta = {"version": INDEX_VERSION, "manifest": manifest_key(read_manifest(data_dir)), "config": asdict(config)}
    meta_path, arrays_path = folder / "meta.json", folder / "index.npz"
    if meta_path.exists() and arrays_path.exists():
        stored = json.loads(meta_path.read_text())
        if {k: stored.get(k) for k in meta} == meta:
            with np.load(arrays_path) as data:
                return FingerprintIndex(hashes=data["hashes"], tracks=data["tracks"], times=data["times"],
                                        track_ids=tuple(stored["track_ids"]), artists=tuple(stored["artists"]),
                                        config=config)
    index = build_fingerprint_index(data_dir, config, progress)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".index.tmp.npz"
    np.savez(tmp, hashes=index.hashes, tracks=index.tracks, times=index.times)
    os.replace(tmp, arrays_path)
    from housebox.train.checkpoint import write_json

    write_json(meta_path, {**meta, "track_ids": list(index.track_ids), "artists": list(index.artists),
                           "hashes": int(index.hashes.size)})
    return index


# ---- matching a sample's fingerprint -------------------------------------------------------------


def _expand(sorted_keys: np.ndarray, queries: np.ndarray, max_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (query row, index row) pair with equal keys, skipping keys found more than max_count times:
    (int64 [M], int64 [M])."""
    lo = np.searchsorted(sorted_keys, queries, side="left")
    hi = np.searchsorted(sorted_keys, queries, side="right")
    counts = hi - lo
    counts[counts > max_count] = 0
    query_rows = np.repeat(np.arange(queries.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    index_rows = np.repeat(lo, counts) + (np.arange(query_rows.size) - first)
    return query_rows, index_rows


def _jittered(hashes: np.ndarray, jitter: int) -> tuple[np.ndarray, np.ndarray]:
    """Every hash `[H]` with f1, f2 and dt moved by up to +-jitter (peaks that lossy coding nudged by a
    bin or a frame still meet): (uint32 [V], the row in `hashes` each variant came from, int64 [V])."""
    f1, f2, dt = _unpack(hashes)
    steps = np.arange(-jitter, jitter + 1)
    a, b, c = (x.ravel() for x in np.meshgrid(steps, steps, steps, indexing="ij"))  # (J,) each, J = (2 jitter + 1)^3
    g1, g2, gdt = f1[:, None] + a, f2[:, None] + b, dt[:, None] + c  # (H, J)
    ok = (g1 >= 0) & (g1 < 1 << FREQ_BITS) & (g2 >= 0) & (g2 < 1 << FREQ_BITS) & (gdt >= 1) & (gdt < 1 << DT_BITS)
    rows = np.broadcast_to(np.arange(hashes.size)[:, None], g1.shape)
    return _pack(g1[ok], g2[ok], gdt[ok]), rows[ok]


def _hash_weights(query_rows: np.ndarray, tracks: np.ndarray, n_hashes: int) -> np.ndarray:
    """Weight of each query hash: 1 / (training tracks holding it), 1 where none does: float64 [H].

    Sounds many tracks share (an artist's usual kick, a stock chord) say little about copying one of them.
    """
    pairs = np.unique(query_rows * (int(tracks.max()) + 1) + tracks)  # distinct (query hash, track)
    holders = np.bincount(pairs // (int(tracks.max()) + 1), minlength=n_hashes)  # (H,)
    return 1.0 / np.maximum(holders, 1)


def _window_sums(counts: np.ndarray, window: int) -> np.ndarray:
    """Sum of `counts [frames]` over the `window` frames centred on each frame: `[frames]`."""
    padded = np.concatenate([[0], np.cumsum(counts)])
    frames = np.arange(counts.size)
    lo = np.clip(frames - window // 2, 0, counts.size)
    hi = np.clip(frames - window // 2 + window, 0, counts.size)
    return padded[hi] - padded[lo]


def _runs(flags: np.ndarray, bridge: int = 0) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a bool array, runs less than `bridge` apart joined."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    runs: list[tuple[int, int]] = []
    for start, end in zip(edges[::2].tolist(), edges[1::2].tolist()):
        if runs and start - runs[-1][1] < bridge:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def match_fingerprint(index: FingerprintIndex, fp: Fingerprint, config: OriginalityConfig = OriginalityConfig(),
                      max_hash_count: int = 2000) -> list[AudioMatch]:
    """Passages of one fingerprint whose hashes agree with one training track at one offset."""
    fps = config.fingerprint.frames_per_second
    if fp.hashes.size == 0:
        return []
    variants, rows = _jittered(fp.hashes, config.hash_jitter)  # (V,), (V,) -> query row
    q, d = _expand(index.hashes, variants, max_hash_count)
    q = rows[q]
    if q.size == 0:
        return []
    track, query_time = index.tracks[d].astype(np.int64), fp.times[q].astype(np.int64)
    offset = index.times[d].astype(np.int64) - query_time  # (M,) frames, track time minus sample time
    span = int(offset.max() - offset.min()) + 1
    key = track * span + (offset - offset.min())
    keys, votes = np.unique(key, return_counts=True)
    weight = _hash_weights(q, track, fp.hashes.size)  # (H,)
    window = max(1, round(config.window_seconds * fps))
    all_weight = _window_sums(np.bincount(fp.times, weights=weight, minlength=fp.frames), window)  # (frames,)
    tol, seen, matches = config.offset_tolerance_frames, [], []
    for k in keys[np.argsort(-votes, kind="stable")]:
        if len(seen) >= config.max_candidates:
            break
        t, off = int(k // span), int(k % span + offset.min())
        if any(t == st and abs(off - so) <= tol for st, so in seen):
            continue
        seen.append((t, off))
        hit = (track == t) & (np.abs(offset - off) <= tol)
        if hit.sum() < config.min_window_hashes:
            break  # candidates come by votes: the rest have fewer
        rows = np.unique(q[hit])  # (h,) each sample hash counts once
        times = fp.times[rows].astype(np.int64)
        agreeing = _window_sums(np.bincount(times, minlength=fp.frames), window)  # (frames,)
        agreeing_weight = _window_sums(np.bincount(times, weights=weight[rows], minlength=fp.frames), window)
        dense = (agreeing >= config.min_window_hashes) & (agreeing_weight >= config.min_window_fraction * all_weight)
        for first, last in _runs(dense, bridge=2 * window):  # joins passages less than a window apart
            chosen = (times >= first - window // 2) & (times < last + window // 2)
            inside = times[chosen]
            start, end = int(inside.min()), int(inside.max()) + 1
            total = weight[(fp.times >= start) & (fp.times < end)].sum()
            matches.append(AudioMatch(track_id=index.track_ids[t], artist=index.artists[t],
                                      sample_start=round(start / fps + fp.shift_seconds, 3),
                                      track_start=round((start + off) / fps, 3),
                                      seconds=round((end - start) / fps, 3), hashes=int(inside.size),
                                      fraction=round(float(weight[rows][chosen].sum() / max(total, 1e-9)), 3)))
    return matches


def _overlap(a: AudioMatch, b: AudioMatch) -> float:
    """Seconds of the sample that two matches both cover."""
    return max(0.0, min(a.sample_start + a.seconds, b.sample_start + b.seconds) - max(a.sample_start, b.sample_start))


def match_audio(index: FingerprintIndex, audio: np.ndarray, sample_rate: int,
                config: OriginalityConfig = OriginalityConfig()) -> tuple[AudioMatch, ...]:
    """Passages of mono audio `[T]` found in the training tracks, best supported first, one per place.

    Each frame grid of the query gives its own matches, and music that repeats itself matches its own
    track at several offsets (a bar apart, say): where matches of one track cover mostly the same part
    of the sample, the one with the most agreeing hashes is kept, with those at other offsets that come
    within 75 % of it (the passage recurs in that track).
    """
    found = [m for fp in fingerprint(audio, sample_rate, config.fingerprint, config.query_shifts)
             for m in match_fingerprint(index, fp, config)]
    kept: list[AudioMatch] = []
    for m in sorted(found, key=lambda m: (-m.hashes, -m.seconds)):
        same_place = [k for k in kept if k.track_id == m.track_id and _overlap(k, m) > 0.5 * min(k.seconds, m.seconds)]
        if not same_place or (m.hashes >= 0.75 * same_place[0].hashes  # a near tie: the passage recurs in the track
                              and all(abs((k.track_start - k.sample_start) - (m.track_start - m.sample_start)) > 0.1
                                      for k in same_place)):
            kept.append(m)
    return tuple(sorted(kept, key=lambda m: (-m.seconds, -m.hashes)))


def matched_seconds(matches: tuple[AudioMatch, ...], fps: float) -> float:
    """Length of the union of the matched passages, in seconds."""
    if not matches:
        return 0.0
    end = max(m.sample_start + m.seconds for m in matches)
    covered = np.zeros(int(np.ceil(end * fps)) + 1, dtype=bool)
    for m in matches:
        covered[int(round(m.sample_start * fps)) : int(round((m.sample_start + m.seconds) * fps))] = True
    return round(float(covered.sum()) / fps, 3)


# ---- verbatim runs of codes ----------------------------------------------------------------------

HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2**64


@dataclass(frozen=True)
class CodeIndex:
    """One level of the training code cache with its k-gram hashes."""

    level: int
    ngram: int  # k
    tokens_per_second: float
    codes: np.ndarray  # int64 [N]: every track's codes, one after the other
    starts: np.ndarray  # int64 [tracks + 1]: where each track begins in `codes` (and where the last ends)
    hashes: np.ndarray  # uint64 [K], sorted: k-grams that lie inside one track
    positions: np.ndarray  # int64 [K]: where each begins in `codes`
    track_ids: tuple[str, ...]
    artists: tuple[str, ...]
    natural_tokens: int = 0  # longest run that different training tracks share (see `natural_overlap`)


def ngram_hashes(codes: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash (mod 2**64) of every n consecutive codes of `[N]`: uint64 `[N - n + 1]`."""
    values = np.asarray(codes).astype(np.uint64) + np.uint64(1)
    count = values.size - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    for j in range(n):  # integer arrays wrap around silently: arithmetic mod 2**64
        hashes = hashes * HASH_BASE + values[j : j + count]
    return hashes


def ngram_size(tokens_per_second: float, config: OriginalityConfig) -> int:
    """k for a level: ngram_seconds of tokens, at least min_ngram and at most 64."""
    return int(min(64, max(config.min_ngram, round(config.ngram_seconds * tokens_per_second))))


def build_code_index(data_dir: str | Path, level: int, config: OriginalityConfig = OriginalityConfig()) -> CodeIndex:
    """k-gram index of one level of `DATA/codes` (written by `housebox encode`)."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "codes" / "meta.json"
    if not meta_path.exists():
        raise OriginalityError(f"{data_dir}: no code cache (run `housebox encode`)")
    meta = json.loads(meta_path.read_text())
    if not 0 <= level < len(meta["hops"]):
        raise OriginalityError(f"{data_dir}: the code cache has no level {level}")
    rows = [r for r in read_manifest(data_dir) if (data_dir / "codes" / f"l{level}" / f"{r['id']}.npy").exists()]
    if not rows:
        raise OriginalityError(f"{data_dir}: the code cache has no level-{level} codes")
    paths = [data_dir / "codes" / f"l{level}" / f"{r['id']}.npy" for r in rows]
    # one map at a time, closed at once (a list of maps would hold a descriptor per track)
    lengths = np.array([np.load(p, mmap_mode="r").shape[0] for p in paths], dtype=np.int64)
    if lengths.sum() > config.max_index_tokens:
        raise OriginalityError(f"level {level}: {lengths.sum()} training tokens, more than max_index_tokens "
                               f"({config.max_index_tokens})")
    tokens_per_second = meta["sample_rate"] / meta["hops"][level]
    k = ngram_size(tokens_per_second, config)
    codes = np.concatenate([np.load(p).astype(np.int64) for p in paths])  # (N,): each file read and closed
    starts = np.concatenate([[0], np.cumsum(lengths)])  # (tracks + 1,)
    hashes = ngram_hashes(codes, k)  # (N - k + 1,)
    positions = np.arange(hashes.size, dtype=np.int64)
    track = np.searchsorted(starts, positions, side="right") - 1
    inside = positions + k <= starts[track + 1]  # k-grams across two tracks do not exist
    hashes, positions = hashes[inside], positions[inside]
    order = np.argsort(hashes, kind="stable")
    index = CodeIndex(level=level, ngram=k, tokens_per_second=tokens_per_second, codes=codes, starts=starts,
                      hashes=hashes[order], positions=positions[order], track_ids=tuple(r["id"] for r in rows),
                      artists=tuple(r["artist"] for r in rows))
    return replace(index, natural_tokens=natural_overlap(index, config))


def natural_overlap(index: CodeIndex, config: OriginalityConfig = OriginalityConfig()) -> int:
    """Longest verbatim run (tokens) that a training track shares with a *different* training track,
    over up to config.calibration_tracks tracks evenly spread through the dataset.

    Coarse codes of similar music (one artist's stock sounds) repeat across unrelated tracks; a
    sample's run is evidence of copying only beyond this length.
    """
    n = len(index.track_ids)
    longest = 0
    for t in np.unique(np.linspace(0, n - 1, min(n, config.calibration_tracks)).round().astype(int)):
        lo, hi = int(index.starts[t]), int(index.starts[t + 1])
        run = longest_code_run(index, index.codes[lo:hi], config, exclude=(lo, hi))
        longest = max(longest, run.tokens if run else 0)
    return longest


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading elements of two equal-length arrays agree."""
    differ = np.flatnonzero(a != b)
    return int(differ[0]) if differ.size else int(a.size)


def longest_code_run(index: CodeIndex, codes: np.ndarray, config: OriginalityConfig = OriginalityConfig(),
                     candidates: int = 8, exclude: tuple[int, int] | None = None) -> CodeRun | None:
    """The longest run of `codes [T]` found verbatim in one training track, or None below k tokens.

    Runs of k-gram hits on one diagonal (training position minus sample position) are seeds; the
    longest few are checked token by token and extended both ways as far as the codes stay equal.
    `exclude` is a [start, end) range of the index's codes (one track) not to match against.
    """
    codes = np.asarray(codes, dtype=np.int64)
    k = index.ngram
    q, d = _expand(index.hashes, ngram_hashes(codes, k), config.max_ngram_count)
    if exclude is not None:
        outside = (index.positions[d] < exclude[0]) | (index.positions[d] >= exclude[1])
        q, d = q[outside], d[outside]
    if q.size == 0:
        return None
    diagonal = index.positions[d] - q  # (M,)
    order = np.lexsort((q, diagonal))
    q, diagonal = q[order], diagonal[order]
    new_run = np.concatenate([[True], (np.diff(diagonal) != 0) | (np.diff(q) != 1)])
    run_id = np.cumsum(new_run) - 1  # (M,)
    firsts = np.flatnonzero(new_run)
    lengths = np.bincount(run_id)
    best: CodeRun | None = None
    for r in np.argsort(-lengths, kind="stable")[:candidates]:
        i0 = int(q[firsts[r]])
        g0 = i0 + int(diagonal[firsts[r]])
        seed = int(lengths[r]) + k - 1
        if not np.array_equal(codes[i0 : i0 + seed], index.codes[g0 : g0 + seed]):
            continue  # a hash collision, not a copy
        t = int(np.searchsorted(index.starts, g0, side="right") - 1)
        lo, hi = int(index.starts[t]), int(index.starts[t + 1])
        back = min(i0, g0 - lo)
        left = _common_prefix(codes[i0 - back : i0][::-1], index.codes[g0 - back : g0][::-1])
        ahead = min(codes.size - i0 - seed, hi - g0 - seed)
        right = _common_prefix(codes[i0 + seed : i0 + seed + ahead], index.codes[g0 + seed : g0 + seed + ahead])
        tokens = left + seed + right
        if best is None or tokens > best.tokens:
            sample_token, track_token = i0 - left, g0 - left - lo
            tps = index.tokens_per_second
            best = CodeRun(level=index.level, track_id=index.track_ids[t], artist=index.artists[t],
                           sample_token=sample_token, track_token=track_token, tokens=tokens,
                           seconds=round(tokens / tps, 3), sample_start=round(sample_token / tps, 3),
                           track_start=round(track_token / tps, 3),
                           natural_seconds=round(index.natural_tokens / tps, 3))
    return best


# ---- checking samples ----------------------------------------------------------------------------


class OriginalityChecker:
    """A dataset's indexes, built or loaded once (the web server keeps one), and checks against them."""

    def __init__(self, data_dir: str | Path, config: OriginalityConfig = OriginalityConfig(), progress: bool = False):
        self.data_dir = Path(data_dir)
        self.config = config
        if not read_manifest(self.data_dir):
            raise OriginalityError(f"{self.data_dir}: no prepared tracks (is this a `housebox prepare` dataset?)")
        self.fingerprints = load_fingerprint_index(self.data_dir, config.fingerprint, progress)
        meta_path = self.data_dir / "codes" / "meta.json"
        self.codes_meta: dict | None = json.loads(meta_path.read_text()) if meta_path.exists() else None
        self._code_indexes: dict[int, CodeIndex | str] = {}  # level -> index, or why there is none

    def code_index(self, level: int) -> CodeIndex | str:
        """The level's k-gram index, or a one-line reason why it cannot be searched."""
        if level not in self._code_indexes:
            try:
                self._code_indexes[level] = build_code_index(self.data_dir, level, self.config)
            except OriginalityError as err:
                self._code_indexes[level] = str(err)
        return self._code_indexes[level]

    def check(self, name: str, audio: np.ndarray, sample_rate: int, codes: dict[int, np.ndarray] | None = None,
              vqvae_sha256: str | None = None) -> SampleOriginality:
        """Verdict on one sample: mono audio `[T]`, optionally its codes per level (int `[T_level]`)."""
        cfg = self.config
        matches = match_audio(self.fingerprints, audio, sample_rate, cfg)
        runs, notes = [], []
        if codes:
            if self.codes_meta is None:
                notes.append("codes not checked: the dataset has no code cache")
            elif vqvae_sha256 != self.codes_meta.get("weights_sha256"):
                notes.append("codes not checked: the dataset's code cache was made by another VQ-VAE")
            else:
                for level in sorted(codes, reverse=True):
                    index = self.code_index(level)
                    if isinstance(index, str):
                        notes.append(f"level {level} codes not checked: {index}")
                        continue
                    run = longest_code_run(index, codes[level], cfg)
                    if run is not None:
                        runs.append(run)
        longest_audio = max((m.seconds for m in matches), default=0.0)
        longest_code = max((r.excess_seconds for r in runs), default=0.0)
        return SampleOriginality(sample=name, verdict=cfg.verdict(longest_audio, longest_code),
                                 matched_seconds=matched_seconds(matches, cfg.fingerprint.frames_per_second),
                                 longest_match_seconds=longest_audio, longest_code_seconds=longest_code,
                                 matches=matches[:10], code_runs=tuple(runs), notes=tuple(notes))

    def check_folder(self, folder: str | Path, names: list[str] | None = None) -> list[SampleOriginality]:
        """Check the audio files of one folder (and their rows of its codes.npz, if any); record the
        verdicts in its report.json (and index.html, for a `housebox sample` folder)."""
        from housebox.audio.io import load_audio

        folder = Path(folder)
        report = _read_json(folder / "report.json")
        names = names or [p.name for p in sorted(folder.iterdir()) if _is_audio(p)]
        ordered = list(report.get("samples") or [])
        codes = _read_codes(folder / "codes.npz")
        sha = report.get("models", {}).get("vqvae", {}).get("sha256")
        results = []
        for name in names:
            audio = load_audio(folder / name, mono=True)
            row = ordered.index(name) if name in ordered else None
            own = {lv: c[row] for lv, c in codes.items() if row is not None and row < c.shape[0]} or None
            results.append(self.check(name, audio.samples[0], audio.sample_rate, own, sha))
        _record(folder, report, results, self)
        return results


def _is_audio(path: Path) -> bool:
    from housebox.audio.io import AUDIO_EXTENSIONS

    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in AUDIO_EXTENSIONS


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise OriginalityError(f"{path}: not valid JSON") from None


def _read_codes(path: Path) -> dict[int, np.ndarray]:
    """codes.npz -> level -> int `[n x T_level]` (empty without the file)."""
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {int(k[1:]): data[k] for k in data.files if k[:1] == "l" and k[1:].isdigit()}


def _record(folder: Path, report: dict, results: list[SampleOriginality], checker: OriginalityChecker) -> None:
    from housebox.train.checkpoint import write_json

    cfg = checker.config
    previous = report.get("originality", {}).get("samples", {})
    report["originality"] = {
        "against": str(checker.data_dir.resolve()),
        "thresholds": {k: getattr(cfg, k) for k in ("suspicious_audio_seconds", "copied_audio_seconds",
                                                     "suspicious_code_seconds", "copied_code_seconds")},
        "samples": {**previous, **{r.sample: r.to_dict() for r in results}},
    }
    write_json(folder / "report.json", report)
    if "settings" in report:  # a `housebox sample` folder: its page shows the verdicts
        from housebox.generate.pipeline import write_index

        write_index(folder, report)


def find_samples(samples: str | Path) -> dict[Path, list[str]]:
    """An audio file, a sample folder, or a folder of sample folders -> folder -> audio file names."""
    samples = Path(samples)
    if samples.is_file():
        if not _is_audio(samples):
            raise OriginalityError(f"{samples}: not an audio file")
        return {samples.parent: [samples.name]}
    if not samples.is_dir():
        raise OriginalityError(f"{samples}: no such file or folder")
    found: dict[Path, list[str]] = {}
    for path in sorted(samples.rglob("*")):
        if _is_audio(path) and not any(part.startswith(".") for part in path.relative_to(samples).parts):
            found.setdefault(path.parent, []).append(path.name)
    if not found:
        raise OriginalityError(f"{samples}: no audio files inside")
    return found


def check_samples(samples: str | Path, data_dir: str | Path, config: OriginalityConfig = OriginalityConfig(),
                  progress: bool = False) -> CheckReport:
    """Check every audio file under `samples` against the dataset in `data_dir`; verdicts go to report.json."""
    folders = find_samples(samples)
    checker = OriginalityChecker(data_dir, config, progress)
    results = []
    for folder, names in folders.items():
        for r in checker.check_folder(folder, names):
            results.append(replace(r, sample=str(folder / r.sample)))
    return CheckReport(data_dir=str(data_dir), samples=tuple(results), config=config)


def format_table(report: CheckReport) -> str:
    """A plain-text summary: one line per sample."""
    header = f"{'sample':<44} {'verdict':<10} {'matched':>8} {'longest':>8} {'codes':>6}  best match"
    lines = [header, "-" * len(header)]
    for s in report.samples:
        best = ""
        if s.matches:
            m = s.matches[0]
            best = f"{m.artist} {m.track_id} at {m.track_start:.1f} s (sample {m.sample_start:.1f} s)"
        elif s.code_runs:
            r = max(s.code_runs, key=lambda r: r.seconds)
            best = f"codes l{r.level}: {r.artist} {r.track_id} at {r.track_start:.1f} s"
        name = s.sample if len(s.sample) <= 44 else "..." + s.sample[-41:]
        lines.append(f"{name:<44} {s.verdict:<10} {s.matched_seconds:>7.1f}s {s.longest_match_seconds:>7.1f}s "
                     f"{s.longest_code_seconds:>5.2f}s  {best}")
    counts = {v: sum(s.verdict == v for s in report.samples) for v in VERDICTS}
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items()) + f" (against {report.data_dir})")
    return "\n".join(lines)


def training_data(run_dir: str | Path) -> Path:
    """The dataset a run's top-level prior was trained on (its config.json: describe.data.dir)."""
    from housebox.train.checkpoint import read_config

    found = []
    for sub in sorted(p for p in Path(run_dir).iterdir() if (p / "config.json").exists()):
        describe = read_config(sub).get("describe", {})
        if describe.get("kind") == "prior" and describe.get("data", {}).get("dir"):
            found.append((int(describe.get("level", 0)), Path(describe["data"]["dir"])))
    if not found:
        raise OriginalityError(f"{run_dir}: no prior that names its training data; use `housebox check --against DATA`")
    data_dir = max(found)[1]
    if not (data_dir / "manifest.jsonl").exists():
        raise OriginalityError(f"{run_dir} was trained on {data_dir}, which is gone; "
                               "use `housebox check --against DATA`")
    return data_dir
