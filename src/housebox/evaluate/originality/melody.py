"""Detector (c), the same music in other sounds: beat-synchronous chroma compared across keys and time.

Every training track's beats (the grids `housebox prepare` stored) get one pitch-class profile each
(`audio.features.beat_chroma`): energy compressed, centred and scaled to unit length, so a profile says
which notes sound on that beat, not how loud or in which sounds. A sample is beat-tracked and profiled
the same way. Because rows are beats, a passage played faster or slower gives the same rows; a passage
transposed by s semitones gives the rows rolled by s. The sample's rows are compared with every training
track's under all 12 rolls (a cross-similarity matrix, as in cover-song identification): a moment matches
when `window_beats` beats in a row along one diagonal agree on average; a passage is the longest run of
such moments on one diagonal of one track and one transposition. Its length counts only beyond what
*different* training tracks already share (`natural_seconds`, measured on the index when it is built):
one artist's tracks in one key and tempo share progressions and basslines.

The sample is also compared at twice its tracked beat rate (a beat tracker may pick half the tempo). The index lives in `DATA/melody/`, follows the dataset track by track, and
is memory-mapped: `chroma.npy` (float16, 24 bytes a beat) and `times.npy`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from housebox.data.prepare import load_beats, load_track, read_manifest
from housebox.evaluate.originality.common import (
    MelodyConfig,
    MelodyMatch,
    OriginalityConfig,
    OriginalityError,
    mapped_arrays,
    stored_index,
    write_index,
)

INDEX_DIR = "melody"
INDEX_VERSION = 1
ARRAYS = ("chroma", "times")


# ---- profiles --------------------------------------------------------------------------------------


def melody_features(energy: np.ndarray, config: MelodyConfig = MelodyConfig()) -> np.ndarray:
    """Beat chroma energy `[N x 12]` -> comparable profiles float32 `[N x 12]`.

    Each beat's energy is compressed, centred and scaled to unit length (which notes sound, not how
    loud); then the mean profile of the surrounding `context_beats` is taken away, so what is left is how
    this beat differs from its passage (the key and the sustained chord every track in that key shares
    count for little, the moving notes for much), and scaled to unit length again. A beat with little
    pitched energy (drums only, silence) is all zeros and matches nothing."""
    from scipy.ndimage import uniform_filter1d

    energy = np.maximum(np.asarray(energy, dtype=np.float64), 0.0) ** config.compress  # (N, 12)
    total = energy.sum(axis=1)
    pitched = total[total > 0]
    blank = total <= config.blank_fraction * (np.median(pitched) if pitched.size else 1.0)  # (N,)
    unit = _unit_rows(energy - energy.mean(axis=1, keepdims=True), blank)
    if config.context_beats > 1 and unit.shape[0] > 0:
        sums = uniform_filter1d(unit, config.context_beats, axis=0, mode="constant")
        counts = uniform_filter1d((~blank).astype(np.float64), config.context_beats, mode="constant")
        unit = _unit_rows(unit - sums / np.maximum(counts, 1e-12)[:, None], blank)
    return unit.astype(np.float32)


def _unit_rows(rows: np.ndarray, blank: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.where(blank[:, None] | (norm < 1e-9), 0.0, rows / np.maximum(norm, 1e-12))


def sound_profiles(audio: np.ndarray, sample_rate: int, beat_times: np.ndarray,
                   config: MelodyConfig = MelodyConfig()) -> np.ndarray:
    """Profiles `[N x 12]` of mono audio `[T]` at its beats (seconds)."""
    from housebox.audio.features import beat_chroma

    return melody_features(beat_chroma(audio, sample_rate, beat_times), config)


# ---- the index ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MelodyIndex:
    chroma: np.ndarray  # float16 [N x 12]: every indexed track's beat profiles, one track after another
    times: np.ndarray  # float32 [N]: each beat's time in its track (s)
    starts: np.ndarray  # int64 [tracks + 1]: where each track begins (and the last ends)
    track_ids: tuple[str, ...]
    artists: tuple[str, ...]
    config: MelodyConfig
    natural_seconds: float = 0.0  # longest passage a training track shares with a different one
    natural_pair: tuple[str, str] | None = None  # the two tracks that share it
    without_beats: tuple[str, ...] = ()  # dataset tracks with no beat grid: not searched


def _track_profiles(data_dir: Path, row: dict, config: MelodyConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """(profiles [N x 12], beat times [N]) of one prepared track, None without a beat grid."""
    grid = load_beats(data_dir, row["id"])
    if grid is None or grid.times.size < config.window_beats:
        return None
    audio = np.asarray(load_track(data_dir, row["id"]), dtype=np.float32) / 32768.0
    from housebox.audio.features import FeatureError

    try:
        return sound_profiles(audio, row["sample_rate"], grid.times, config), grid.times.astype(np.float32)
    except FeatureError:
        return None


def load_melody_index(data_dir: str | Path, config: MelodyConfig = MelodyConfig(),
                      progress: bool = False) -> MelodyIndex:
    """The index stored in `DATA/melody/`, brought up to date with the dataset and memory-mapped.

    Tracks new to the dataset (or whose audio changed) are profiled and appended, tracks gone are
    dropped, other settings rebuild it; whenever the tracks change, `natural_seconds` is measured again."""
    from tqdm import tqdm

    data_dir = Path(data_dir)
    folder = data_dir / INDEX_DIR
    rows = read_manifest(data_dir)
    if not rows:
        raise OriginalityError(f"{data_dir}: no prepared tracks (run `housebox prepare` first)")
    stored, usable = stored_index(folder, INDEX_VERSION, asdict(config), ARRAYS)
    current = {r["id"]: r for r in rows}
    known = {t["id"]: t for t in stored.get("tracks", [])} if usable else {}
    kept = [t for t, info in known.items() if t in current and current[t]["sha256"] == info["sha256"]]
    seen = set(kept) | {t for t in stored.get("without_beats", []) if usable and t in current
                        and current[t]["sha256"] == stored.get("without_beats_sha", {}).get(t)}
    new_rows = [r for r in rows if r["id"] not in seen]
    if usable and not new_rows and len(kept) == len(known) and len(seen) == len(current):
        arrays = mapped_arrays(folder, ARRAYS)
        starts = np.cumsum([0] + [known[t]["beats"] for t in kept]).astype(np.int64)
        pair = stored.get("natural_pair")
        return MelodyIndex(**arrays, starts=starts, track_ids=tuple(kept),
                           artists=tuple(current[t]["artist"] for t in kept), config=config,
                           natural_seconds=float(stored["natural_seconds"]), natural_pair=tuple(pair) if pair else None,
                           without_beats=tuple(sorted(seen - set(kept))))
    chroma, times, beats = [], [], {}
    if kept:
        old = mapped_arrays(folder, ARRAYS)
        old_starts = np.cumsum([0] + [info["beats"] for info in known.values()])
        position = {t: i for i, t in enumerate(known)}
        for t in kept:
            lo, hi = old_starts[position[t]], old_starts[position[t] + 1]
            chroma.append(np.asarray(old["chroma"][lo:hi]))
            times.append(np.asarray(old["times"][lo:hi]))
            beats[t] = int(hi - lo)
        del old
    without = sorted(seen - set(kept))
    for row in tqdm(new_rows, desc="melody index", unit="track", disable=not progress, dynamic_ncols=True):
        found = _track_profiles(data_dir, row, config)
        if found is None:
            without.append(row["id"])
            continue
        chroma.append(found[0].astype(np.float16))
        times.append(found[1])
        beats[row["id"]] = int(found[1].size)
    order = kept + [r["id"] for r in new_rows if r["id"] in beats]
    chroma_all = np.concatenate(chroma) if chroma else np.zeros((0, 12), np.float16)
    times_all = np.concatenate(times) if times else np.zeros(0, np.float32)
    index = MelodyIndex(chroma=chroma_all, times=times_all,
                        starts=np.cumsum([0] + [beats[t] for t in order]).astype(np.int64), track_ids=tuple(order),
                        artists=tuple(current[t]["artist"] for t in order), config=config,
                        without_beats=tuple(without))
    natural, pair, calibration = natural_melody(index, progress=progress,
                                                previous=stored.get("calibration") if usable else None,
                                                new_from=len(kept))
    write_index(folder, {"chroma": chroma_all, "times": times_all},
                {"version": INDEX_VERSION, "config": asdict(config), "beats": int(times_all.size),
                 "natural_seconds": natural, "natural_pair": list(pair) if pair else None, "calibration": calibration,
                 "tracks": [{"id": t, "sha256": current[t]["sha256"], "beats": beats[t]} for t in order],
                 "without_beats": without, "without_beats_sha": {t: current[t]["sha256"] for t in without}})
    return load_melody_index(data_dir, config, progress)


# ---- cross-similarity ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    beats: int  # beats covered: run of matching windows + window_beats - 1
    semitones: int  # the sample is this many semitones above the track
    sample_beat: int
    track_beat: int  # in the whole index


def _blocks(starts: np.ndarray, block_beats: int, first: int = 0) -> list[tuple[int, int]]:
    """Consecutive groups of whole tracks `(first track, last track + 1)` from track `first` on, each about
    block_beats long."""
    blocks = []
    for t in range(first + 1, starts.size):
        if starts[t] - starts[first] >= block_beats or t == starts.size - 1:
            blocks.append((first, t))
            first = t
    return blocks


def _best_runs(index: MelodyIndex, query: np.ndarray, exclude: int | None = None, first_track: int = 0) -> dict[int, _Run]:
    """For each track (from `first_track` on, not `exclude`) with a matching passage: the longest run of
    `query` `[n x 12]` profiles along one diagonal of one transposition whose `window_beats`-beat means
    reach `min_similarity`."""
    cfg = index.config
    w = cfg.window_beats
    n = query.shape[0] - w + 1  # window starts in the query
    found: dict[int, _Run] = {}
    if n <= 0 or len(index.track_ids) == 0:
        return found
    rolled = np.stack([np.roll(query, -s, axis=1) for s in range(12)])  # (12, n+w-1, 12): row s = s semitones up
    for first, last in _blocks(index.starts, cfg.block_beats, first_track):
        lo, hi = int(index.starts[first]), int(index.starts[last])
        keys = np.asarray(index.chroma[lo:hi], dtype=np.float32)  # (M, 12)
        m = hi - lo - w + 1
        if m <= 0:
            continue
        sim = rolled @ keys.T  # (12, n+w-1, M)
        window = sum(sim[:, k : k + n, k : k + m] for k in range(w)) / w  # (12, n, m)
        del sim
        valid = np.zeros(m, dtype=bool)  # a window inside one track (and not the excluded one)
        for t in range(first, last):
            a, b = int(index.starts[t]) - lo, int(index.starts[t + 1]) - lo - w + 1
            if t != exclude and b > a:
                valid[a:b] = True
        hits = (window >= cfg.min_similarity) & valid  # (12, n, m)
        run = np.zeros((12, m), dtype=np.int32)  # run of hits ending at (row i, column j), per transposition
        best = np.zeros((12, m), dtype=np.int32)
        best_row = np.zeros((12, m), dtype=np.int32)
        for i in range(n):
            step = np.zeros_like(run)
            step[:, 1:] = run[:, :-1] + 1
            step[:, 0] = 1
            run = step * hits[:, i]
            longer = run > best
            best[longer] = run[longer]
            best_row[longer] = i
        for t in range(first, last):
            a, b = int(index.starts[t]) - lo, min(int(index.starts[t + 1]) - lo, m)
            if b <= a or best[:, a:b].max() == 0:
                continue
            s, j = np.unravel_index(int(np.argmax(best[:, a:b])), (12, b - a))
            length = int(best[s, a + j])
            end_row, end_col = int(best_row[s, a + j]), a + j
            found[t] = _Run(beats=length + w - 1, semitones=int(s), sample_beat=end_row - length + 1,
                            track_beat=lo + end_col - length + 1)
    return found


def _span(times: np.ndarray, first: int, beats: int) -> float:
    """Seconds from beat `first` to the end of beat first + beats - 1 (the last one a median beat long)."""
    times = np.asarray(times, dtype=np.float64)
    last = min(first + beats - 1, times.size - 1)
    period = float(np.median(np.diff(times))) if times.size > 1 else 0.5
    return float(times[last] - times[first] + period)


def calibration_choice(track_ids: tuple[str, ...] | list[str], count: int = 32) -> list[str]:
    """The tracks whose excerpts measure what different tracks share: the `count` smallest ids (content
    hashes, so a random choice, and a stable one: adding tracks changes it only where a new id is smaller)."""
    return sorted(track_ids)[:count]


def natural_melody(index: MelodyIndex, calibration_tracks: int = 32, progress: bool = False,
                   previous: dict[str, list] | None = None,
                   new_from: int = 0) -> tuple[float, tuple[str, str] | None, dict[str, list]]:
    """Longest passage (s) a training track shares with a *different* training track, the pair, and the
    measurement of each calibration track (id -> [seconds, other id or None]).

    An excerpt of `calibration_beats` from the middle of each calibration track (`calibration_choice`) is
    compared with every other track. With `previous` (the stored measurements) only what changed is
    compared: a calibration track measured before is compared with the tracks from `new_from` on (those
    added since), unless the track it shared most with is gone."""
    from tqdm import tqdm

    cfg = index.config
    position = {t: i for i, t in enumerate(index.track_ids)}
    previous = previous or {}
    entries: dict[str, list] = {}
    for track in tqdm(calibration_choice(index.track_ids, calibration_tracks), desc="melody calibration",
                      unit="track", disable=not progress, dynamic_ncols=True):
        t = position[track]
        known = previous.get(track)
        reuse = known is not None and (known[1] is None or known[1] in position)
        longest, other_id = (float(known[0]), known[1]) if reuse else (0.0, None)
        lo, hi = int(index.starts[t]), int(index.starts[t + 1])
        middle = max(lo, (lo + hi - cfg.calibration_beats) // 2)
        stop = min(hi, middle + cfg.calibration_beats)
        query = np.asarray(index.chroma[middle:stop], dtype=np.float32)
        times = np.asarray(index.times[middle:stop])
        for other, run in _best_runs(index, query, exclude=t, first_track=new_from if reuse else 0).items():
            seconds = round(_span(times, run.sample_beat, run.beats), 2)
            if seconds > longest:
                longest, other_id = seconds, index.track_ids[other]
        entries[track] = [longest, other_id]
    if not entries:
        return 0.0, None, entries
    track = max(entries, key=lambda k: entries[k][0])
    longest, other_id = entries[track]
    return longest, ((track, other_id) if other_id else None), entries


# ---- a sample --------------------------------------------------------------------------------------


def _beat_variants(times: np.ndarray) -> list[np.ndarray]:
    """The tracked beats, and twice as many (midpoints added: a sample tracked at half the tempo of the
    training track). Half as many is not tried: coarser rows match unrelated music for twice as long
    (measured on the real-music set: other tracks up to 20.9 s instead of 13.2 s, no copy found more)."""
    return [times, np.sort(np.concatenate([times, 0.5 * (times[1:] + times[:-1])]))]


def match_melody(index: MelodyIndex, audio: np.ndarray, sample_rate: int,
                 config: OriginalityConfig = OriginalityConfig()) -> tuple[MelodyMatch, ...]:
    """The longest passage of the sample found in each training track, longest first.

    Raises `housebox.audio.features.FeatureError` when the sample has no beat grid (no steady beat)."""
    from housebox.audio.features import track_beats

    grid = track_beats(np.asarray(audio, dtype=np.float32), sample_rate)
    best: dict[int, tuple[float, MelodyMatch]] = {}
    for times in _beat_variants(grid.times):
        if times.size < index.config.window_beats:
            continue
        query = sound_profiles(audio, sample_rate, times, index.config)
        for t, run in _best_runs(index, query).items():
            seconds = _span(times, run.sample_beat, run.beats)
            track_seconds = _span(index.times[index.starts[t] : index.starts[t + 1]],
                                  run.track_beat - int(index.starts[t]), run.beats)
            rows = np.arange(run.beats)
            similarity = float(np.mean(np.sum(np.roll(query[run.sample_beat + rows], -run.semitones, axis=1)
                                              * np.asarray(index.chroma[run.track_beat + rows], np.float32), axis=1)))
            match = MelodyMatch(track_id=index.track_ids[t], artist=index.artists[t],
                                sample_start=round(float(times[run.sample_beat]), 2),
                                track_start=round(float(index.times[run.track_beat]), 2), seconds=round(seconds, 2),
                                beats=run.beats, semitones=(run.semitones + 5) % 12 - 5,
                                tempo=round(track_seconds / seconds, 3), similarity=round(similarity, 3),
                                natural_seconds=index.natural_seconds)
            if t not in best or seconds > best[t][0]:
                best[t] = (seconds, match)
    return tuple(sorted((m for _, m in best.values()), key=lambda m: -m.seconds))
