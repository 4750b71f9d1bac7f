"""Detector (a), the same audio: landmark fingerprints of the training set, and matching a sample's."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from housebox.audio.stft import log_spectrogram
from housebox.data.prepare import load_track, read_manifest
from housebox.evaluate.originality.common import (
    DT_BITS,
    FREQ_BITS,
    AudioMatch,
    Fingerprint,
    FingerprintConfig,
    OriginalityConfig,
    OriginalityError,
    mapped_arrays,
    stored_index,
    write_index,
)

INDEX_DIR = "fingerprints"
INDEX_VERSION = 2  # 2: one .npy per array, memory-mapped, updated track by track


# ---- landmark fingerprints -----------------------------------------------------------------------


def fingerprint_spectrogram(audio: np.ndarray, config: FingerprintConfig) -> np.ndarray:
    """Mono float audio `[T]` at config.sample_rate -> dB magnitudes float32 `[F x frames]` (audio.stft)."""
    return log_spectrogram(audio, config.n_fft, config.hop, floor=1e-9)


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
                shifts: int = 1, variants: tuple[tuple[float, float], ...] = ()) -> list[Fingerprint]:
    """Landmark hashes of mono float audio `[T]` at any sample rate, on `shifts` frame grids hop/shifts apart.

    The index holds one grid per track; a query on several grids finds the one that lines up with it
    within hop / (2 * shifts), which keeps far more of its peaks (and hashes) equal. Each (tempo, semitones)
    of `variants` adds one more fingerprint of the first grid with its peaks mapped back to the training
    track's time and pitch (frames x tempo, bins / 2^(semitones/12)): a copy played faster or transposed
    then hashes as the original does.
    """
    from housebox.audio.io import resample

    audio = np.asarray(audio, dtype=np.float32).reshape(1, -1)
    audio = resample(audio, sample_rate, config.sample_rate)[0]  # (T',)
    out = []
    for k in range(shifts):
        shift = k * config.hop // shifts
        spec = fingerprint_spectrogram(audio[shift:], config)
        bins, frames = find_peaks(spec, config)
        hashes, times = landmark_hashes(bins, frames, config)
        out.append(Fingerprint(hashes=hashes, times=times, frames=spec.shape[1],
                               shift_seconds=shift / config.sample_rate))
        for tempo, semitones in variants if k == 0 else ():
            if tempo == 1.0 and semitones == 0.0:
                continue
            mapped_bins = np.round(bins / 2.0 ** (semitones / 12.0)).astype(np.int32)
            mapped_frames = np.round(frames * tempo).astype(np.int32)
            keep = (mapped_bins >= 1) & (mapped_bins <= config.n_fft // 2)
            order = np.lexsort((mapped_bins[keep], mapped_frames[keep]))  # by time, then frequency
            hashes, times = landmark_hashes(mapped_bins[keep][order], mapped_frames[keep][order], config)
            out.append(Fingerprint(hashes=hashes, times=times, frames=int(np.ceil(spec.shape[1] * tempo)) + 1,
                                   tempo=tempo, semitones=round(semitones, 3)))
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


def _fingerprint_rows(data_dir: Path, rows: list[dict], first: int, config: FingerprintConfig,
                      progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, tracks, times) of `rows`, numbered from `first`, sorted by hash."""
    from tqdm import tqdm

    hashes, tracks, times = [np.zeros(0, np.uint32)], [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]
    for i, row in enumerate(tqdm(rows, desc="fingerprint", unit="track", disable=not progress, dynamic_ncols=True)):
        audio = np.asarray(load_track(data_dir, row["id"]), dtype=np.float32) / 32768.0  # (T,)
        fp = fingerprint(audio, row["sample_rate"], config)[0]
        hashes.append(fp.hashes)
        times.append(fp.times)
        tracks.append(np.full(fp.hashes.size, first + i, dtype=np.int32))
    hashes_all = np.concatenate(hashes)
    order = np.argsort(hashes_all, kind="stable")
    return hashes_all[order], np.concatenate(tracks)[order], np.concatenate(times)[order]


def build_fingerprint_index(data_dir: str | Path, config: FingerprintConfig = FingerprintConfig(),
                            progress: bool = False) -> FingerprintIndex:
    """Fingerprint every track of a prepared dataset (no caching; see `load_fingerprint_index`)."""
    rows = read_manifest(data_dir)
    if not rows:
        raise OriginalityError(f"{data_dir}: no prepared tracks (run `housebox prepare` first)")
    hashes, tracks, times = _fingerprint_rows(Path(data_dir), rows, 0, config, progress)
    return FingerprintIndex(hashes=hashes, tracks=tracks, times=times, track_ids=tuple(r["id"] for r in rows),
                            artists=tuple(r["artist"] for r in rows), config=config)


ARRAYS = ("hashes", "tracks", "times")


def load_fingerprint_index(data_dir: str | Path, config: FingerprintConfig = FingerprintConfig(),
                           progress: bool = False) -> FingerprintIndex:
    """The index stored in `DATA/fingerprints/`, brought up to date with the dataset and memory-mapped.

    Only tracks new to the dataset (or whose audio changed) are fingerprinted and merged into the sorted
    arrays; tracks gone from the dataset are dropped; other settings rebuild it. The arrays are .npy files
    read through memory maps (three descriptors, whatever the number of tracks), replaced atomically."""
    data_dir = Path(data_dir)
    folder = data_dir / INDEX_DIR
    rows = read_manifest(data_dir)
    if not rows:
        raise OriginalityError(f"{data_dir}: no prepared tracks (run `housebox prepare` first)")
    stored, usable = stored_index(folder, INDEX_VERSION, asdict(config), ARRAYS)
    known = {t["id"]: (i, t["sha256"]) for i, t in enumerate(stored.get("tracks", []))} if usable else {}
    current = {r["id"]: r for r in rows}
    kept = [t for t, (_, sha) in known.items() if t in current and current[t]["sha256"] == sha]  # stored order
    unchanged = set(kept)
    new_rows = [r for r in rows if r["id"] not in unchanged]
    if usable and not new_rows and len(kept) == len(known):
        return FingerprintIndex(**mapped_arrays(folder, ARRAYS), track_ids=tuple(kept), artists=tuple(current[t]["artist"] for t in kept),
                                config=config)
    if kept:
        old = mapped_arrays(folder, ARRAYS)
        renumber = np.full(len(known), -1, dtype=np.int32)  # old track number -> new, -1: dropped
        renumber[[known[t][0] for t in kept]] = np.arange(len(kept), dtype=np.int32)
        keep = renumber[old["tracks"]] >= 0
        hashes, times = np.asarray(old["hashes"])[keep], np.asarray(old["times"])[keep]
        tracks = renumber[np.asarray(old["tracks"])[keep]]
        del old
    else:
        hashes, tracks, times = np.zeros(0, np.uint32), np.zeros(0, np.int32), np.zeros(0, np.int32)
    add_hashes, add_tracks, add_times = _fingerprint_rows(data_dir, new_rows, len(kept), config, progress)
    at = np.searchsorted(hashes, add_hashes, side="right")  # merge two sorted arrays; equal hashes keep track order
    hashes, tracks, times = (np.insert(hashes, at, add_hashes), np.insert(tracks, at, add_tracks),
                             np.insert(times, at, add_times))
    order = kept + [r["id"] for r in new_rows]
    write_index(folder, {"hashes": hashes, "tracks": tracks, "times": times},
                {"version": INDEX_VERSION, "config": asdict(config), "hashes": int(hashes.size),
                 "manifest": manifest_key(rows), "tracks": [{"id": t, "sha256": current[t]["sha256"]} for t in order]})
    (folder / "index.npz").unlink(missing_ok=True)  # the single-file format before version 2
    return load_fingerprint_index(data_dir, config, progress)


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
            # frames are the track's time scale: the sample's own seconds are divided by the tempo
            matches.append(AudioMatch(track_id=index.track_ids[t], artist=index.artists[t],
                                      sample_start=round(start / fps / fp.tempo + fp.shift_seconds, 3),
                                      track_start=round((start + off) / fps, 3),
                                      seconds=round((end - start) / fps / fp.tempo, 3), hashes=int(inside.size),
                                      fraction=round(float(weight[rows][chosen].sum() / max(total, 1e-9)), 3),
                                      tempo=fp.tempo, semitones=fp.semitones))
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
    variants = tuple((speed, 12.0 * float(np.log2(speed))) for speed in config.speed_factors)
    found = [m for fp in fingerprint(audio, sample_rate, config.fingerprint, config.query_shifts, variants)
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
