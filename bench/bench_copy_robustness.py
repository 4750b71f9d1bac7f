"""What the audio fingerprint still recognises when a copy is played faster or slower, or transposed.

Renders `--tracks` demo tracks per artist (30 s, 16 kHz) as a training set, takes a 10-second passage of
each, changes its speed (resampled: tempo and pitch together, a record played faster), its tempo alone
(phase vocoder, pitch kept) or its pitch alone (tempo kept), and checks the passage alone against the
set, once with the fingerprint's speed variants off (the exact-copy matcher) and once with the default
variants (`OriginalityConfig.speed_factors`). A copy counts as caught when the right track is named for at least
`suspicious_audio_seconds` (5 s of the 10). Also: the longest passage that unrelated tracks of the set
share (leave-one-out, the false-alarm side) and the query time per 10-second sample, each setting.

    taskset -c 1 python bench/bench_copy_robustness.py [--tracks 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from housebox.audio.io import resample
from housebox.audio.stretch import pitch_shift, time_stretch
from housebox.data.demo_corpus import ARTISTS, render_track
from housebox.evaluate.originality import OriginalityConfig, load_fingerprint_index, match_audio

SR = 16000
TEMPI = (0.92, 0.95, 0.98, 1.02, 1.05, 1.08)
SEMITONES = (-2, -1, 1, 2)


def write_dataset(root: Path, tracks: list[tuple[str, str, np.ndarray]]) -> Path:
    """A minimal prepared dataset (manifest + int16 audio) of (id, artist, float audio [T]) tracks."""
    (root / "audio").mkdir(parents=True)
    rows = []
    for track_id, artist, audio in tracks:
        np.save(root / "audio" / f"{track_id}.npy", np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16))
        rows.append({"id": track_id, "sha256": track_id * 4, "artist": artist, "genres": [], "samples": len(audio),
                     "seconds": len(audio) / SR, "sample_rate": SR, "split": "train"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=3, help="tracks per demo artist (default 3)")
    args = parser.parse_args()
    tracks = [(f"{a}{s}", style.name, render_track(style, 30.0, SR, seed=300 + s).mean(axis=0))
              for a, style in enumerate(ARTISTS) for s in range(args.tracks)]
    settings = {"exact only": replace(OriginalityConfig(), speed_factors=()),
                "with variants": OriginalityConfig()}
    default = settings["with variants"]
    print(f"{len(tracks)} demo tracks of 30 s; 10-second passages (5-15 s) of each, changed; caught = the right "
          f"track named for >= {default.suspicious_audio_seconds:g} s. Variants: speeds {default.speed_factors}")
    changes = [("unchanged", lambda x: x)]
    changes += [(f"speed {100 * (t - 1):+.0f}%", lambda x, t=t: resample(x.reshape(1, -1), round(SR * t), SR)[0])
                for t in TEMPI]
    changes += [(f"tempo {100 * (t - 1):+.0f}%", lambda x, t=t: time_stretch(x, t)) for t in TEMPI]
    changes += [(f"pitch {s:+d} semitone{'s' if abs(s) > 1 else ''}", lambda x, s=s: pitch_shift(x, SR, s))
                for s in SEMITONES]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(Path(tmp) / "data", tracks)
        index = load_fingerprint_index(data)
        results: dict[tuple[str, str], list[float]] = {}
        timings: dict[str, list[float]] = {name: [] for name in settings}
        for i, (track_id, _, audio) in enumerate(tracks):
            passage = audio[5 * SR : 15 * SR]
            for change, fn in changes:
                copy = fn(passage)
                for name, config in settings.items():
                    tick = time.perf_counter()
                    matches = match_audio(index, copy, SR, config)
                    timings[name].append(time.perf_counter() - tick)
                    right = max((m.seconds for m in matches if m.track_id == track_id), default=0.0)
                    results.setdefault((change, name), []).append(right)
        false_alarm = {}
        for name, config in settings.items():
            longest = []
            for i, (_, _, audio) in enumerate(tracks):
                keep = index.tracks != i
                others = replace(index, hashes=index.hashes[keep], tracks=index.tracks[keep], times=index.times[keep])
                longest.append(max((m.seconds for m in match_audio(others, audio, SR, config)), default=0.0))
            false_alarm[name] = max(longest)
    threshold = default.suspicious_audio_seconds
    names = list(settings)
    print(f"\n{'change':<20}" + "".join(f" {n + ': caught':>22} {'median s':>9}" for n in names))
    for change, _ in changes:
        row = f"{change:<20}"
        for name in names:
            seconds = results[(change, name)]
            row += f" {sum(s >= threshold for s in seconds):>15} of {len(seconds):<3} {statistics.median(seconds):>9.1f}"
        print(row)
    for name in names:
        print(f"{name}: longest passage unrelated tracks share {false_alarm[name]:.1f} s (suspicious at "
              f"{threshold:g} s); query {1000 * statistics.median(timings[name]):.0f} ms per 10-s sample (median)")


if __name__ == "__main__":
    main()
