"""What `check` still recognises when a copy is played faster or slower, transposed, or in other sounds.

A training set: `--tracks` demo tracks per artist (30 s, 16 kHz; the built-in artists with a melody of
each track's own, `demo_corpus.with_lead`), or the tracks of a prepared dataset (`--data`, e.g. the
real-music set). A `--seconds` passage of each is changed: its speed (resampled: tempo and pitch together,
a record played faster), its tempo alone (phase vocoder, pitch kept), its pitch alone (tempo kept), or (for
the demo set) its composition re-rendered in another artist's sounds; each copy is checked alone by three
matchers: the audio fingerprint without speed variants, with them (the default), and the melody detector.
A copy counts as caught when the right track is named at the matcher's own "suspicious" threshold
(audio: `suspicious_audio_seconds` matched; melody: `suspicious_melody_seconds` beyond what different
training tracks share). The false-alarm side: the longest passage unrelated tracks share (audio,
leave-one-out; melody: measured on the index, and how far any copy named a wrong track beyond it), and
the query time per passage of each matcher.

    taskset -c 1 python bench/bench_copy_robustness.py [--tracks 3] [--seconds 20]
    taskset -c 1 python bench/bench_copy_robustness.py --data /tmp/housebox-realmusic-bench/prepared --limit 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from housebox.audio.io import resample
from housebox.audio.stretch import pitch_shift, time_stretch
from housebox.data.demo_corpus import ARTISTS, played_by, render_track, with_lead
from housebox.data.prepare import load_track, read_manifest
from housebox.evaluate.originality import (
    OriginalityConfig,
    load_fingerprint_index,
    load_melody_index,
    match_audio,
    match_melody,
)

SR = 16000
TEMPI = (0.92, 0.95, 0.98, 1.02, 1.05, 1.08)
SEMITONES = (-2, -1, 1, 2)


def write_dataset(root: Path, tracks: list[tuple[str, str, np.ndarray]]) -> Path:
    """A minimal prepared dataset (manifest, int16 audio, beat grids) of (id, artist, float audio [T]) tracks."""
    import json

    from housebox.audio.features import track_beats

    (root / "audio").mkdir(parents=True)
    (root / "beats").mkdir()
    rows = []
    for track_id, artist, audio in tracks:
        pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
        np.save(root / "audio" / f"{track_id}.npy", pcm)
        grid = track_beats(pcm / 32767.0, SR)
        np.save(root / "beats" / f"{track_id}.npy", grid.times.astype(np.float32))
        rows.append({"id": track_id, "sha256": track_id * 4, "artist": artist, "genres": [], "samples": len(audio),
                     "seconds": len(audio) / SR, "sample_rate": SR, "split": "train", "beats": int(grid.times.size),
                     "downbeat": grid.downbeat})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def demo_tracks(per_artist: int) -> tuple[list[tuple[str, str, np.ndarray]], dict[str, tuple]]:
    """Tracks of the built-in artists, each with a melody of its own, and how to re-render each."""
    tracks, recipes = [], {}
    for a, style in enumerate(ARTISTS):
        for s in range(per_artist):
            track_id = f"{a}{s}"
            tracks.append((track_id, style.name, render_track(with_lead(style), 30.0, SR, seed=300 + 10 * a + s).mean(axis=0)))
            recipes[track_id] = (with_lead(style), with_lead(ARTISTS[(a + 1) % len(ARTISTS)]), 300 + 10 * a + s)
    return tracks, recipes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=3, help="demo tracks per artist (default 3)")
    parser.add_argument("--data", type=Path, help="a prepared dataset (with beat grids) instead of demo tracks")
    parser.add_argument("--limit", type=int, default=0, help="passages from at most this many tracks of --data")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each passage (default 20)")
    args = parser.parse_args()
    default = OriginalityConfig()
    settings = {"audio exact": replace(default, speed_factors=()), "audio variants": default, "melody": default}
    changes = [("unchanged", lambda x: x)]
    changes += [(f"speed {100 * (t - 1):+.0f}%", lambda x, t=t: resample(x.reshape(1, -1), round(SR * t), SR)[0])
                for t in TEMPI]
    changes += [(f"tempo {100 * (t - 1):+.0f}%", lambda x, t=t: time_stretch(x, t)) for t in TEMPI]
    changes += [(f"pitch {s:+d} semitone{'s' if abs(s) > 1 else ''}", lambda x, s=s: pitch_shift(x, SR, s))
                for s in SEMITONES]
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            tracks, recipes = demo_tracks(args.tracks)
            data = write_dataset(Path(tmp) / "data", tracks)
            changes.append(("other sounds +3% +2 st", None))
            what = f"{len(tracks)} demo tracks of 30 s (a melody each)"
        else:
            data, recipes = args.data, {}
            rows = [r for r in read_manifest(data) if r.get("beats")]
            rows = rows[: args.limit] if args.limit else rows
            tracks = [(r["id"], r["artist"], np.asarray(load_track(data, r["id"]), np.float32) / 32768.0) for r in rows]
            if any(r["sample_rate"] != SR for r in rows):
                raise SystemExit(f"{data}: this bench expects {SR} Hz tracks")
            what = f"{len(tracks)} tracks of {data}"
        fingerprints = load_fingerprint_index(data)
        melody = load_melody_index(data)
        print(f"{what}; {args.seconds:g}-second passages from a third into each track, changed, checked alone.\n"
              f"caught: the right track named for >= {default.suspicious_audio_seconds:g} s (audio) or "
              f">= {default.suspicious_melody_seconds:g} s beyond the {melody.natural_seconds:.1f} s different "
              f"training tracks share (melody; {melody.natural_pair})")
        results: dict[tuple[str, str], list[float]] = {}
        timings: dict[str, list[float]] = {name: [] for name in settings}
        wrong_melody = 0.0
        n = int(args.seconds * SR)
        for track_id, _, audio in tracks:
            start = min(max(0, audio.size // 3), max(0, audio.size - n))
            passage = audio[start : start + n]
            for change, fn in changes:
                if fn is None:  # the composition in the next artist's sounds, 3% faster, 2 semitones up
                    style, sounds, seed = recipes[track_id]
                    full = render_track(played_by(style, sounds, semitones=2, tempo=1.03), 30.0 / 1.03, SR, seed)
                    copy = full.mean(axis=0)[int(start / 1.03) : int(start / 1.03) + n]
                else:
                    copy = fn(passage)
                for name, config in settings.items():
                    tick = time.perf_counter()
                    if name == "melody":
                        try:
                            found = match_melody(melody, copy, SR, config)
                        except ValueError:  # no beat grid in the copy
                            found = ()
                        right = max((m.excess_seconds for m in found if m.track_id == track_id), default=0.0)
                        wrong_melody = max([wrong_melody] + [m.excess_seconds for m in found if m.track_id != track_id])
                    else:
                        right = max((m.seconds for m in match_audio(fingerprints, copy, SR, config)
                                     if m.track_id == track_id), default=0.0)
                    timings[name].append(time.perf_counter() - tick)
                    results.setdefault((change, name), []).append(right)
        false_alarm = {}
        for name in ("audio exact", "audio variants"):
            longest = []
            for i, (_, _, audio) in enumerate(tracks):
                index_i = fingerprints.track_ids.index(tracks[i][0])
                keep = fingerprints.tracks != index_i
                others = replace(fingerprints, hashes=fingerprints.hashes[keep], tracks=fingerprints.tracks[keep],
                                 times=fingerprints.times[keep])
                longest.append(max((m.seconds for m in match_audio(others, audio, SR, settings[name])), default=0.0))
            false_alarm[name] = max(longest)
    names = list(settings)
    thresholds = {"audio exact": default.suspicious_audio_seconds, "audio variants": default.suspicious_audio_seconds,
                  "melody": default.suspicious_melody_seconds}
    print(f"\n{'change':<24}" + "".join(f" {n + ': caught':>24} {'median s':>9}" for n in names))
    for change, _ in changes:
        row = f"{change:<24}"
        for name in names:
            seconds = results[(change, name)]
            caught = sum(s >= thresholds[name] for s in seconds)
            row += f" {caught:>17} of {len(seconds):<3} {statistics.median(seconds):>9.1f}"
        print(row)
    print("(melody: median seconds beyond what different training tracks share)")
    for name in ("audio exact", "audio variants"):
        print(f"{name}: longest passage unrelated tracks share {false_alarm[name]:.1f} s (suspicious at "
              f"{thresholds[name]:g} s); query {1000 * statistics.median(timings[name]):.0f} ms per passage (median)")
    print(f"melody: different training tracks share {melody.natural_seconds:.1f} s; copies named a wrong track for at "
          f"most {wrong_melody:.1f} s beyond that (suspicious at {thresholds['melody']:g} s); query "
          f"{1000 * statistics.median(timings['melody']):.0f} ms per passage (median)")


if __name__ == "__main__":
    main()
