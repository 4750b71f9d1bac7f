"""`housebox prepare`: turn a folder of music into a training dataset.

For every audio file under the source folder: hash it (sha256; a file already in the dataset is not
redone), decode, optionally remove vocals, downmix to mono, resample, loudness-normalise, estimate
tempo and key, and write `audio/<id>.npy` (int16, memory-mappable). The manifest gains one JSON line
per track as soon as its audio is on disk, so a killed run loses nothing; files that cannot be used are
skipped with a one-line reason on the console and in `report.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from housebox.audio.io import AUDIO_EXTENSIONS, AudioError, load_audio, loudness_lufs, normalize_loudness, probe
from housebox.data.labels import UNKNOWN, LabelCsv, Vocabulary, resolve_labels

MANIFEST = "manifest.jsonl"
LABELS = "labels.json"
REPORT = "report.json"


@dataclass(frozen=True)
class PrepareSettings:
    sample_rate: int = 44100
    min_seconds: float = 2.0
    max_seconds: float = 1800.0
    remove_vocals: str = "none"  # none | center | repet | demucs
    target_lufs: float = -16.0
    valid_fraction: float = 0.1
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
    ignored: list[str] = field(default_factory=list)  # files without an audio extension
    tracks: int = 0
    seconds: float = 0.0
    wall_seconds: float = 0.0


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


def _split_of(track_id: str, settings: PrepareSettings) -> str:
    """Seeded, per-track and stable: a track's split never changes when the dataset grows."""
    draw = int(hashlib.sha256(f"{settings.seed}:{track_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if draw < settings.valid_fraction else "train"


def process_file(file: Path, root: Path, data_dir: Path, settings: PrepareSettings, known: frozenset[str],
                 table: LabelCsv | None) -> dict | Skipped | str:
    """Prepare one file: a manifest row, a Skipped, or the sha256 of a file already in the dataset."""
    try:
        sha = sha256_of(file)
        if sha in known:
            return sha
        info = probe(file)
        if info.seconds is not None and info.seconds > settings.max_seconds:
            return Skipped(str(file), f"too long ({info.seconds:.0f} s > --max-seconds {settings.max_seconds:g})")
        audio = load_audio(file)
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
    except MemoryError:
        return Skipped(str(file), "out of memory while decoding (lower --max-seconds)")

    track_id = sha[:16]
    out = data_dir / "audio" / f"{track_id}.npy"
    tmp = out.with_name(f".{track_id}.{os.getpid()}.tmp.npy")
    np.save(tmp, pcm)
    os.replace(tmp, out)
    labels = resolve_labels(file, root, table)
    bpm, key = _tempo_and_key(mono[0], settings.sample_rate)
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
        "split": _split_of(track_id, settings),
    }


def _tempo_and_key(mono: np.ndarray, sample_rate: int) -> tuple[float | None, str | None]:
    from housebox.audio.features import estimate_key, estimate_tempo

    clip = mono[: sample_rate * 120]  # two minutes are plenty for tempo and key
    try:
        return round(float(estimate_tempo(clip, sample_rate)), 2), estimate_key(clip, sample_rate)
    except ValueError:
        return None, None


# ---- the folder -----------------------------------------------------------------------------


def find_files(source: Path) -> tuple[list[Path], list[Path]]:
    """(audio files by extension, other files), both sorted, hidden files left out."""
    audio, other = [], []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
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

    def handle(result: dict | Skipped | str, manifest) -> None:
        if isinstance(result, str):
            report.already_present += 1
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
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(process_file, file, *args) for file in files]
                for future in futures:
                    handle(future.result(), manifest)
                    bar.update()
    bar.close()

    rows = _ensure_validation_track(rows, report.prepared)
    _rewrite_manifest(data_dir, rows)
    vocab = Vocabulary.load(data_dir / LABELS)
    vocab = vocab.extended([r["artist"] for r in rows], [g for r in rows for g in r["genres"]])
    vocab.save(data_dir / LABELS)
    report.tracks = len(rows)
    report.seconds = round(sum(r["seconds"] for r in rows), 2)
    report.wall_seconds = round(time.time() - started, 2)
    write_report(data_dir / REPORT, report)
    return report


def _ensure_validation_track(rows: list[dict], new_ids: list[str]) -> list[dict]:
    """Small datasets can draw no validation track at all: then move one newly added track there."""
    if len(rows) < 2 or any(r["split"] == "valid" for r in rows):
        return rows
    candidates = [r for r in rows if r["id"] in set(new_ids)]
    if candidates:
        min(candidates, key=lambda r: r["sha256"])["split"] = "valid"
    return rows


def write_report(path: Path, report: PrepareReport) -> None:
    data = asdict(report)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def vocabulary(data_dir: str | Path) -> Vocabulary:
    return Vocabulary.load(Path(data_dir) / LABELS)


__all__ = ["PrepareSettings", "prepare", "read_manifest", "load_track", "vocabulary", "UNKNOWN"]
