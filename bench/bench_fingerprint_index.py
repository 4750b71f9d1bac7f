"""`check`'s indexes at catalogue scale (audio fingerprints, melody, codes): build time, size, adding tracks,
query time.

Writes a synthetic prepared dataset of `--hours` of audio (30-second tracks of tone-and-noise events at
16 kHz with a steady 120 BPM beat grid; both indexes cost the same whatever the music), then measures for
each index: building it from scratch (for the melody index: profiling, then calibrating what different
tracks share, timed apart), loading it again (memory-mapped), adding `--add` new tracks (only they are
processed), dropping them again, and the median query time for 30-second samples (5 queries: synthetic
events for the fingerprint, demo tracks for the melody, which needs a beat to track, random codes for the
code index). The code cache is synthetic too: random codes of 2,048 at `jukebox`'s top-level rate (44.1 kHz,
hop 128: 344.5 tokens a second). Peak RSS is printed after each step: the indexes are read through memory
maps, not into memory.

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

from housebox.data.demo_corpus import ARTISTS, render_track
from housebox.evaluate.originality import (
    load_code_index,
    load_fingerprint_index,
    load_melody_index,
    longest_code_run,
    match_audio,
    match_melody,
)
from housebox.evaluate.originality.melody import natural_melody

SR, SECONDS = 16000, 30.0
CODE_RATE, CODE_HOP, CODEBOOK = 44100, 128, 2048  # `jukebox`'s top level
CODE_TOKENS = int(SECONDS * CODE_RATE / CODE_HOP)


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


def write_rows(data: Path, first: int, count: int, audio: bool = True) -> list[dict]:
    """Manifest rows of tracks first.. first + count - 1 with their beat grids, codes and audio (a track's
    audio is rendered only when an index that reads it is measured; else an empty file marks it present)."""
    rows = []
    for i in range(first, first + count):
        track_id = f"t{i:05d}"
        pcm = synthetic_track(i) if audio else np.zeros(0, np.float32)
        np.save(data / "audio" / f"{track_id}.npy", (np.clip(pcm, -1, 1) * 32767).astype(np.int16))
        beats = np.arange(0.25, SECONDS, 0.5, dtype=np.float32)  # 120 BPM
        np.save(data / "beats" / f"{track_id}.npy", beats)
        codes = np.random.default_rng(i).integers(0, CODEBOOK, CODE_TOKENS).astype(np.int16)
        np.save(data / "codes" / "l0" / f"{track_id}.npy", codes)
        rows.append({"id": track_id, "sha256": f"{i:064x}", "artist": f"a{i % 20}", "genres": [],
                     "samples": int(SR * SECONDS), "seconds": SECONDS, "sample_rate": SR, "split": "train",
                     "beats": int(beats.size), "downbeat": 0})
    return rows


def write_manifest(data: Path, rows: list[dict]) -> None:
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=1.0, help="hours of audio in the index (default 1)")
    parser.add_argument("--add", type=int, default=4, help="tracks added to the built index (default 4)")
    parser.add_argument("--indexes", default="fingerprint,melody,code",
                        help="which indexes to measure, comma-separated (default all three)")
    args = parser.parse_args()
    wanted = set(args.indexes.split(","))
    if not wanted <= {"fingerprint", "melody", "code"}:
        parser.error(f"--indexes: unknown {sorted(wanted - {'fingerprint', 'melody', 'code'})}")
    audio = bool(wanted & {"fingerprint", "melody"})
    tracks = max(1, int(args.hours * 3600 / SECONDS))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        (data / "audio").mkdir(parents=True)
        (data / "beats").mkdir()
        (data / "codes" / "l0").mkdir(parents=True)
        (data / "codes" / "meta.json").write_text(json.dumps({"hops": [CODE_HOP], "sample_rate": CODE_RATE,
                                                              "codebook_size": CODEBOOK, "weights_sha256": "0" * 64}))
        rows = write_rows(data, 0, tracks, audio)
        extra = write_rows(data, tracks, args.add, audio)
        write_manifest(data, rows)
        print(f"{tracks} synthetic tracks, {tracks * SECONDS / 3600:.2f} h at {SR} Hz")

        for name, load, match, folder, samples in (
                ("fingerprint", load_fingerprint_index, match_audio, "fingerprints",
                 [synthetic_track(10_000_000 + seed) for seed in range(5)]),
                ("melody", load_melody_index, match_melody, "melody",
                 [render_track(ARTISTS[seed % 3], SECONDS, SR, seed).mean(axis=0) for seed in range(5)]),
                ("code", lambda d: load_code_index(d, 0), lambda index, codes, _: longest_code_run(index, codes),
                 "code_index/l0", [np.random.default_rng(20_000_000 + seed).integers(0, CODEBOOK, CODE_TOKENS)
                                   for seed in range(5)])):
            if name not in wanted:
                continue
            print(f"-- {name} index")
            tick = time.perf_counter()
            index = load(data)
            build = time.perf_counter() - tick
            disk = sum(p.stat().st_size for p in (data / folder).iterdir())
            print(f"build from scratch: {build:.1f} s ({build / tracks * 1000:.0f} ms a track), "
                  f"{disk / 2**20:.1f} MiB on disk ({disk / (tracks * SECONDS / 3600) / 2**20:.2f} MiB an hour); "
                  f"peak RSS {rss_mib():.0f} MiB")
            if name == "melody":
                tick = time.perf_counter()
                natural_melody(index)  # from scratch
                print(f"  of which calibration (what different tracks share): {time.perf_counter() - tick:.1f} s")
            del index
            tick = time.perf_counter()
            index = load(data)
            print(f"load (memory-mapped): {1000 * (time.perf_counter() - tick):.0f} ms; peak RSS {rss_mib():.0f} MiB")

            write_manifest(data, rows + extra)
            tick = time.perf_counter()
            index = load(data)
            added = time.perf_counter() - tick
            print(f"add {args.add} tracks: {added:.1f} s (only they are processed; the melody calibration "
                  f"compares only them, the code calibration is measured again); peak RSS {rss_mib():.0f} MiB")
            write_manifest(data, rows)
            tick = time.perf_counter()
            index = load(data)
            print(f"drop them again: {time.perf_counter() - tick:.1f} s")

            times = []
            for sample in samples:
                tick = time.perf_counter()
                match(index, sample, SR)
                times.append(time.perf_counter() - tick)
            print(f"query: {statistics.median(times):.2f} s per 30-second sample (median of 5, default settings); "
                  f"peak RSS {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
