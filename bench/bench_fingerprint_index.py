"""`check`'s fingerprint index at catalogue scale: build time, size on disk, adding tracks, query time.

Writes a synthetic prepared dataset of `--hours` of audio (30-second tracks of tone-and-noise events at
16 kHz; fingerprinting costs the same whatever the music), then measures: building the index from scratch,
loading it again (memory-mapped), adding `--add` new tracks (only they are fingerprinted, then merged),
dropping them again, and the median query time of `match_audio` for 30-second samples (5 queries).
Peak RSS is printed after each step: the index is read through memory maps, not into memory.

    taskset -c 1 python bench/bench_fingerprint_index.py --hours 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from housebox.evaluate.originality import load_fingerprint_index, match_audio
from housebox.evaluate.originality.landmarks import INDEX_DIR

SR, SECONDS = 16000, 30.0


def synthetic_track(seed: int) -> np.ndarray:
    """30 s of short tones and noise bursts at random times and pitches: float32 [T]."""
    rng = np.random.default_rng(seed)
    n = int(SR * SECONDS)
    audio = np.zeros(n, np.float32)
    t = np.arange(int(0.25 * SR)) / SR
    envelope = np.exp(-t * 12.0).astype(np.float32)
    for start in rng.integers(0, n - t.size, int(SECONDS * 6)):
        if rng.random() < 0.7:
            tone = np.sin(2 * np.pi * rng.uniform(80, 4000) * t).astype(np.float32)
        else:
            tone = rng.normal(0, 0.5, t.size).astype(np.float32)
        audio[start : start + t.size] += 0.2 * tone * envelope
    return audio


def write_rows(data: Path, first: int, count: int) -> list[dict]:
    rows = []
    for i in range(first, first + count):
        track_id = f"t{i:05d}"
        np.save(data / "audio" / f"{track_id}.npy", (np.clip(synthetic_track(i), -1, 1) * 32767).astype(np.int16))
        rows.append({"id": track_id, "sha256": f"{i:064x}", "artist": f"a{i % 20}", "genres": [],
                     "samples": int(SR * SECONDS), "seconds": SECONDS, "sample_rate": SR, "split": "train"})
    return rows


def write_manifest(data: Path, rows: list[dict]) -> None:
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=1.0, help="hours of audio in the index (default 1)")
    parser.add_argument("--add", type=int, default=4, help="tracks added to the built index (default 4)")
    args = parser.parse_args()
    tracks = max(1, int(args.hours * 3600 / SECONDS))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        (data / "audio").mkdir(parents=True)
        rows = write_rows(data, 0, tracks)
        extra = write_rows(data, tracks, args.add)
        write_manifest(data, rows)
        print(f"{tracks} synthetic tracks, {tracks * SECONDS / 3600:.2f} h at {SR} Hz")

        tick = time.perf_counter()
        index = load_fingerprint_index(data)
        build = time.perf_counter() - tick
        disk = sum(p.stat().st_size for p in (data / INDEX_DIR).iterdir())
        print(f"build from scratch: {build:.1f} s ({build / tracks * 1000:.0f} ms a track), {index.hashes.size:,} "
              f"hashes, {disk / 2**20:.1f} MiB on disk ({disk / (tracks * SECONDS / 3600) / 2**20:.1f} MiB an hour); "
              f"peak RSS {rss_mib():.0f} MiB")
        del index
        tick = time.perf_counter()
        index = load_fingerprint_index(data)
        print(f"load (memory-mapped): {1000 * (time.perf_counter() - tick):.0f} ms; peak RSS {rss_mib():.0f} MiB")

        write_manifest(data, rows + extra)
        tick = time.perf_counter()
        index = load_fingerprint_index(data)
        added = time.perf_counter() - tick
        print(f"add {args.add} tracks: {added:.1f} s (only they are fingerprinted; the rest merged), "
              f"{index.hashes.size:,} hashes; peak RSS {rss_mib():.0f} MiB")
        write_manifest(data, rows)
        tick = time.perf_counter()
        index = load_fingerprint_index(data)
        print(f"drop them again: {time.perf_counter() - tick:.1f} s")

        times = []
        for seed in range(5):
            sample = synthetic_track(10_000_000 + seed)
            tick = time.perf_counter()
            match_audio(index, sample, SR)
            times.append(time.perf_counter() - tick)
        print(f"query: {statistics.median(times):.2f} s per 30-second sample (median of 5, default speed variants); "
              f"peak RSS {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
