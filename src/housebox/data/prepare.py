"""`housebox prepare`: turn a folder of music into a training dataset.

For every audio file under the source folder: hash it (sha256; a file already in the dataset is not
redone), decode, optionally remove vocals, downmix to mono, resample, loudness-normalise, estimate
tempo, key and the beat grid, and write `audio/<id>.npy` (int16, memory-mappable) and `beats/<id>.npy`
(float32 beat times in seconds; the manifest row holds their count and the downbeat). The manifest
gains one JSON line per track as soon as its audio is on disk, so a killed run loses nothing; files
that cannot be used are skipped with a one-line reason on the console and in `report.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from housebox.audio.features import BeatGrid
from housebox.audio.io import AUDIO_EXTENSIONS, AudioError, load_audio, loudness_lufs, normalize_loudness, probe
from housebox.data.labels import UNKNOWN, LabelCsv, Vocabulary, resolve_labels

MANIFEST = "manifest.jsonl"
LABELS = "labels.json"
REPORT = "report.json"
BEATS = "beats"  # beats/<id>.npy: float32 [N] beat times in seconds


@dataclass(frozen=True)
class PrepareSettings:
    sample_rate: int = 44100
    min_seconds: float = 2.0
    max_seconds: float = 1800.0
    remove_vocals: str = "none"  # none | center | repet | demucs
    target_lufs: float = -16.0
    valid_fraction: float = 0.1
    whole_track_split_from: int = 4  # artists with fewer tracks hold out the tail of each track instead
    seed: int = 0
    silence_peak: float = 1e-4  # a file whose peak stays below this is "all silent"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class PrepareReport:
    source: str
    settings: dict
    prepared: list[str] = field(default_factory=list)  # ids added by this run
    already_present: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    no_beat_grid: list[Skipped] = field(default_factory=list)  # prepared, but beat tracking failed (beats: 0)
    ignored: list[str] = field(default_factory=list)  # files without an audio extension
    tracks: int = 0
    seconds: float = 0.0
    wall_seconds: float = 0.0
    relabelled: list[str] = field(default_factory=list)  # tracks already present whose labels changed
    # artist -> {"tracks", "minutes", "labels": {where the artist name came from: tracks}}
    artists: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Present:
    """A file already in the dataset (same sha256), with the labels it resolves to now."""

    sha256: str
    path: str  # resolved; only the file a row was prepared from relabels it (not a copy elsewhere)
    artist: str
    genres: tuple[str, ...]
    source: str


def artist_summary(rows: list[dict]) -> dict[str, dict]:
    """Per artist: tracks, minutes, and where its name came from (csv, tags, folders, none)."""
    summary: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["artist"]):
        entry = summary.setdefault(row["artist"], {"tracks": 0, "minutes": 0.0, "labels": {}})
        entry["tracks"] += 1
        entry["minutes"] = round(entry["minutes"] + row["seconds"] / 60, 2)
        source = row.get("label_source", "unknown")
        entry["labels"][source] = entry["labels"].get(source, 0) + 1
    return summary


# ---- manifest -------------------------------------------------------------------------------


def read_manifest(data_dir: str | Path) -> list[dict]:
    """All rows of `manifest.jsonl` whose audio is on disk (a torn last line from a kill is ignored)."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.exists():
        return []
    rows, seen = [], set()
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["id"] in seen or not (data_dir / "audio" / f"{row['id']}.npy").exists():
            continue
        seen.add(row["id"])
        rows.append(row)
    return rows


def _rewrite_manifest(data_dir: Path, rows: list[dict]) -> None:
    tmp = data_dir / f".{MANIFEST}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, data_dir / MANIFEST)


def load_track(data_dir: str | Path, track_id: str) -> np.ndarray:
    """The int16 mono audio of one track, memory-mapped: `[T]`."""
    return np.load(Path(data_dir) / "audio" / f"{track_id}.npy", mmap_mode="r")


def track_header(data_dir: str | Path, track_id: str) -> tuple[int, int]:
    """(byte offset of the samples, number of samples) of one track's int16 `.npy`, read from its header."""
    path = Path(data_dir) / "audio" / f"{track_id}.npy"
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
        offset = handle.tell()
    if dtype != np.dtype("<i2") or len(shape) != 1 or fortran:
        raise ValueError(f"{path}: expected mono int16 samples, found {dtype} {shape}")
    return offset, int(shape[0])


def read_track_window(data_dir: str | Path, track_id: str, start: int, stop: int,
                      header: tuple[int, int] | None = None) -> np.ndarray:
    """Samples start..stop of one track (int16 `[<= stop - start]`), read and closed at once: no file stays open,
    however many tracks a dataset has (a memory map keeps a descriptor per track)."""
    offset, length = header or track_header(data_dir, track_id)
    start, stop = max(0, start), min(length, stop)
    if stop <= start:
        return np.zeros(0, dtype=np.int16)
    with open(Path(data_dir) / "audio" / f"{track_id}.npy", "rb") as handle:
        handle.seek(offset + 2 * start)
        return np.frombuffer(handle.read(2 * (stop - start)), dtype="<i2")


def load_beats(data_dir: str | Path, track_id: str) -> BeatGrid | None:
    """The beat grid of one track: times float64 `[N]` from `beats/<id>.npy`, the downbeat from its
    manifest row. None when the file is missing or the row has no grid (`beats` absent or 0)."""
    data_dir = Path(data_dir)
    path = data_dir / BEATS / f"{track_id}.npy"
    manifest = data_dir / MANIFEST
    if not path.exists() or not manifest.exists():
        return None
    stat = manifest.stat()
    row = _rows_by_id(str(manifest), stat.st_mtime_ns, stat.st_size).get(track_id)
    if row is None or not row.get("beats"):
        return None
    times = np.load(path).astype(np.float64)
    return BeatGrid(times, int(row["downbeat"]), float(60.0 / np.median(np.diff(times))))


@lru_cache(maxsize=4)
def _rows_by_id(manifest: str, mtime_ns: int, size: int) -> dict[str, dict]:
    """Manifest rows by id, read once per version of the file (mtime and size key the cache)."""
    return {row["id"]: row for row in read_manifest(Path(manifest).parent)}


# ---- one file -------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as err:
        raise AudioError(path, f"cannot read ({err.strerror})") from None
    return digest.hexdigest()


def _draw(track_id: str, settings: PrepareSettings) -> float:
    """A seeded, per-track number in [0, 1]: stable when the dataset grows."""
    return int(hashlib.sha256(f"{settings.seed}:{track_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def process_file(file: Path, root: Path, data_dir: Path, settings: PrepareSettings, known: frozenset[str],
                 table: LabelCsv | None) -> dict | Skipped | Present:
    """Prepare one file: a manifest row, a Skipped, or a file already in the dataset with its labels now
    (so a new --labels CSV or retagged files relabel it without decoding it again)."""
    from housebox.audio.vocals import VocalRemovalError

    if not file.is_file():  # a FIFO, socket or device named *.wav would block or never end when read
        return Skipped(str(file), "not a regular file")
    try:
        sha = sha256_of(file)
        if sha in known:
            labels = resolve_labels(file, root, table)
            return Present(sha, str(file.resolve()), labels.artist, tuple(labels.genres), labels.source)
        info = probe(file)
        if info.seconds is not None and info.seconds > settings.max_seconds:
            return Skipped(str(file), f"too long ({info.seconds:.0f} s > --max-seconds {settings.max_seconds:g})")
        try:  # containers that do not say their length (m4a) stop decoding at the limit
            audio = load_audio(file, max_seconds=settings.max_seconds)
        except AudioError as err:
            if err.problem.startswith("longer than"):
                return Skipped(str(file), f"too long (> --max-seconds {settings.max_seconds:g})")
            raise
        seconds = audio.seconds
        if seconds > settings.max_seconds:
            return Skipped(str(file), f"too long ({seconds:.0f} s > --max-seconds {settings.max_seconds:g})")
        if seconds < settings.min_seconds:
            return Skipped(str(file), f"too short ({seconds:.2f} s < --min-seconds {settings.min_seconds:g})")
        if float(np.abs(audio.samples).max()) < settings.silence_peak:
            return Skipped(str(file), "all silent")
        samples = audio.samples
        if settings.remove_vocals != "none":
            from housebox.audio.vocals import remove_vocals

            if settings.remove_vocals == "center" and audio.channels < 2:
                return Skipped(str(file), "mono file: center vocal removal needs stereo (try --remove-vocals repet)")
            samples = remove_vocals(samples, audio.sample_rate, settings.remove_vocals)
        from housebox.audio.io import resample, to_mono

        mono = resample(to_mono(samples), audio.sample_rate, settings.sample_rate)
        source_lufs = loudness_lufs(mono, settings.sample_rate)
        mono = normalize_loudness(mono, settings.sample_rate, settings.target_lufs)
        if not np.all(np.isfinite(mono)):
            return Skipped(str(file), "processing produced NaN samples")
        pcm = np.round(np.clip(mono[0], -1.0, 1.0) * 32767).astype(np.int16)
    except AudioError as err:
        return Skipped(str(file), err.problem)
    except VocalRemovalError as err:  # e.g. a 6-channel file: this file cannot have its vocals removed
        return Skipped(str(file), f"vocal removal: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    except MemoryError:
        return Skipped(str(file), "out of memory while decoding (lower --max-seconds)")

    track_id = sha[:16]
    out = data_dir / "audio" / f"{track_id}.npy"
    tmp = out.with_name(f".{track_id}.{os.getpid()}.tmp.npy")
    np.save(tmp, pcm)
    os.replace(tmp, out)
    labels = resolve_labels(file, root, table)
    bpm, key = _tempo_and_key(mono[0], settings.sample_rate)
    grid = _beat_grid(pcm, settings.sample_rate, bpm, data_dir, track_id)
    return {
        "id": track_id,
        "path": str(file.resolve()),
        "sha256": sha,
        "artist": labels.artist,
        "genres": list(labels.genres),
        "label_source": labels.source,
        "seconds": round(len(pcm) / settings.sample_rate, 3),
        "samples": int(len(pcm)),
        "sample_rate": settings.sample_rate,
        "source_sample_rate": audio.sample_rate,
        "source_channels": audio.channels,
        "source_lufs": round(source_lufs, 2) if np.isfinite(source_lufs) else None,
        "vocals_removed": settings.remove_vocals,
        "bpm": bpm,
        "key": key,
        **grid,
        "split": "train",  # assign_splits decides, once every track of the artist is known
    }


def _tempo_and_key(mono: np.ndarray, sample_rate: int) -> tuple[float | None, str | None]:
    from housebox.audio.features import estimate_key, estimate_tempo

    clip = mono[: sample_rate * 120]  # two minutes are plenty for tempo and key
    try:
        return round(float(estimate_tempo(clip, sample_rate)), 2), estimate_key(clip, sample_rate)
    except ValueError:
        return None, None


def _beat_grid(pcm: np.ndarray, sample_rate: int, bpm: float | None, data_dir: Path, track_id: str) -> dict:
    """Track the beats of a track's int16 audio `[T]` (as stored, so a grid computed later from the
    file is the same) near `bpm`, write `beats/<id>.npy` atomically (float32 seconds) and return the
    manifest fields: {"beats": N, "downbeat": k}, or when tracking fails
    {"beats": 0, "downbeat": None, "beats_error": reason} and no file."""
    from housebox.audio.features import FeatureError, track_beats

    out = data_dir / BEATS / f"{track_id}.npy"
    try:
        grid = track_beats(pcm.astype(np.float32) / 32767.0, sample_rate, bpm=bpm)
    except FeatureError as err:
        out.unlink(missing_ok=True)
        return {"beats": 0, "downbeat": None, "beats_error": str(err)}
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_name(f".{track_id}.{os.getpid()}.tmp.npy")
    np.save(tmp, grid.times.astype(np.float32))
    os.replace(tmp, out)
    return {"beats": int(grid.times.size), "downbeat": grid.downbeat}


def _stored_beat_grid(data_dir: Path, row: dict) -> dict:
    """`_beat_grid` of a track already in the dataset, from its stored audio."""
    return _beat_grid(load_track(data_dir, row["id"]), row["sample_rate"], row.get("bpm"), data_dir, row["id"])


def backfill_beat_grids(data_dir: Path, rows: list[dict], report: PrepareReport, workers: int = 1,
                        progress: bool = True) -> None:
    """Give every row without a `beats` field (prepared before beat grids) its grid, from the stored
    audio, saving the manifest every 30 s so a killed run keeps what it did; then report each track
    of this run whose beat tracking failed (kept with beats: 0)."""
    missing = [r for r in rows if "beats" not in r]
    bar = tqdm(total=len(missing), desc="beat grid", unit="track", disable=not progress or not missing,
               dynamic_ncols=True)
    saved = time.time()
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(missing) > 1 else nullcontext() as pool:
        grids = (pool.map if pool else map)(_stored_beat_grid, [data_dir] * len(missing), missing)
        for row, fields in zip(missing, grids):
            row.update(fields)
            bar.update()
            if time.time() - saved > 30.0:
                _rewrite_manifest(data_dir, rows)
                saved = time.time()
    bar.close()
    checked = set(report.prepared) | {r["id"] for r in missing}
    for row in rows:
        if row["id"] in checked and row["beats"] == 0:
            report.no_beat_grid.append(Skipped(row["path"], row.get("beats_error", "beat tracking failed")))
            tqdm.write(f"no beat grid for {row['path']}: {row.get('beats_error', 'beat tracking failed')}")


# ---- the folder -----------------------------------------------------------------------------


def find_files(source: Path) -> tuple[list[Path], list[Path]]:
    """(audio files by extension, other files), both sorted, hidden files left out. Symlinked folders are
    followed (an artist folder linked in from another disk), each real folder once (a link loop ends)."""
    audio, other = [], []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in seen)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            (audio if path.suffix.lower() in AUDIO_EXTENSIONS else other).append(path)
    return audio, other


def prepare(source: str | Path, data_dir: str | Path, settings: PrepareSettings = PrepareSettings(),
            labels_csv: str | Path | None = None, workers: int = 1, progress: bool = True) -> PrepareReport:
    """Prepare every audio file under `source` into `data_dir` (incremental: re-running adds only new files)."""
    started = time.time()
    source, data_dir = Path(source), Path(data_dir)
    if not source.is_dir():
        raise ValueError(f"{source}: not a folder")
    (data_dir / "audio").mkdir(parents=True, exist_ok=True)
    table = LabelCsv(labels_csv) if labels_csv else None
    rows = read_manifest(data_dir)
    _rewrite_manifest(data_dir, rows)  # drop torn lines and rows whose audio went missing
    known = frozenset(r["sha256"] for r in rows)
    files, other = find_files(source)
    report = PrepareReport(source=str(source.resolve()), settings=asdict(settings), ignored=[str(p) for p in other])

    by_sha = {r["sha256"]: r for r in rows}

    def handle(result: dict | Skipped | Present, manifest) -> None:
        if isinstance(result, Present):
            report.already_present += 1
            row = by_sha[result.sha256]
            now = {"artist": result.artist, "genres": list(result.genres), "label_source": result.source}
            if row.get("path") == result.path and any(row.get(k) != v for k, v in now.items()):
                row.update(now)
                report.relabelled.append(row["id"])
        elif isinstance(result, Skipped):
            report.skipped.append(result)
            tqdm.write(f"skipped {result.path}: {result.reason}")
        elif result["sha256"] in known or result["id"] in {r["id"] for r in rows}:
            report.skipped.append(Skipped(result["path"], f"duplicate of track {result['id']} (same sha256)"))
            tqdm.write(f"skipped {result['path']}: duplicate content")
        else:
            rows.append(result)
            report.prepared.append(result["id"])
            manifest.write(json.dumps(result) + "\n")
            manifest.flush()

    bar = tqdm(total=len(files), desc="prepare", unit="file", disable=not progress, dynamic_ncols=True)
    args = (source, data_dir, settings, known, table)
    with open(data_dir / MANIFEST, "a") as manifest:
        if workers <= 1:
            for file in files:
                handle(process_file(file, *args), manifest)
                bar.update()
        else:
            for result in _process_in_pool(files, args, workers):
                handle(result, manifest)
                bar.update()
    bar.close()

    backfill_beat_grids(data_dir, rows, report, workers, progress)
    rows = assign_splits(rows, settings)
    _rewrite_manifest(data_dir, rows)
    vocab = Vocabulary.load(data_dir / LABELS)
    vocab = vocab.extended([r["artist"] for r in rows], [g for r in rows for g in r["genres"]])
    vocab.save(data_dir / LABELS)
    report.tracks = len(rows)
    report.seconds = round(sum(r["seconds"] for r in rows), 2)
    report.artists = artist_summary(rows)
    report.wall_seconds = round(time.time() - started, 2)
    write_report(data_dir / REPORT, report)
    return report


WORKER_DIED = "the worker process died while preparing it (out of memory? lower --max-seconds or --workers)"


def _process_in_pool(files: list[Path], args: tuple, workers: int):
    """`process_file` over `files` in a process pool, results in file order. A worker killed (the OOM killer)
    breaks the pool: the files it left unfinished are then prepared one by one, each in a fresh process,
    and the one that kills its process again is skipped with WORKER_DIED; the run goes on."""
    from concurrent.futures.process import BrokenProcessPool

    done = 0
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(process_file, file, *args) for file in files]
            for future in futures:
                result = future.result()
                done += 1
                yield result
    except BrokenProcessPool:
        for file in files[done:]:
            try:
                with ProcessPoolExecutor(max_workers=1) as alone:
                    result = alone.submit(process_file, file, *args).result()
            except BrokenProcessPool:
                tqdm.write(f"skipped {file}: {WORKER_DIED}")
                result = Skipped(str(file), WORKER_DIED)
            yield result


def assign_splits(rows: list[dict], settings: PrepareSettings) -> list[dict]:
    """Every artist contributes validation data, and no audio is in both splits.

    - An artist with at least `whole_track_split_from` tracks holds out whole tracks: those whose seeded
      draw falls below `valid_fraction`, at least one. Validation then hears tracks the model never saw.
    - An artist with fewer tracks would lose a third or half of its music that way; instead the tail of
      each of its tracks is held out (`valid_fraction` of it, at least min(20 s, a quarter of the track)):
      the row stays `split: train` and `valid_from` says, in seconds, where the held-out tail begins.
    Decided again on every run from the tracks present, so an artist that grows moves to whole tracks.
    """
    by_artist: dict[str, list[dict]] = {}
    for row in rows:
        by_artist.setdefault(row["artist"], []).append(row)
    for tracks in by_artist.values():
        for row in tracks:
            row["split"], row["valid_from"] = "train", None
        if len(tracks) >= settings.whole_track_split_from:
            held = [r for r in tracks if _draw(r["id"], settings) < settings.valid_fraction]
            for row in held or [min(tracks, key=lambda r: _draw(r["id"], settings))]:
                row["split"] = "valid"
        else:
            for row in tracks:
                tail = max(settings.valid_fraction * row["seconds"], min(20.0, 0.25 * row["seconds"]))
                row["valid_from"] = round(row["seconds"] - tail, 3)
    return rows


def write_report(path: Path, report: PrepareReport) -> None:
    data = asdict(report)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def vocabulary(data_dir: str | Path) -> Vocabulary:
    return Vocabulary.load(Path(data_dir) / LABELS)


__all__ = ["PrepareSettings", "prepare", "read_manifest", "load_track", "load_beats", "vocabulary", "UNKNOWN"]
