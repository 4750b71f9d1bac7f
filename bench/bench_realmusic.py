"""Real music, end to end: `train all` on the Debian game-music set with and without the beat clock.

    .venv/bin/python bench/fetch_realmusic.py -o ~/.cache/housebox/realmusic     # once: the music
    .venv/bin/python bench/bench_realmusic.py --minutes 40 -o /tmp/realmusic-bench

The five artists with the most tracks (at least three each) are copied out, and prepared once at the `tiny` preset's 16 kHz; then each arm (beat clock on / off) gets its
own copy of the dataset (the code cache belongs to one VQ-VAE) and runs `housebox train all` for the
same wall-clock budget, pinned to its own CPU core with one thread, both arms at the same time (so
they share the machine alike). Each run then samples `--per-artist` tracks of `--seconds` per artist
(temperature 0.95, as the demo) and is evaluated: per artist, whether the tracks keep the tempo the
clock ran at and have a kick; the stage table says where the rest is lost. Prints a table and
writes `results.json`; spectrograms are in each run's evaluation/samples/*/spectrogram.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ARMS = {"clock": True, "noclock": False}
# The demo's CPU settings (bf16 priors where the CPU has native bf16; elsewhere it is emulated and slower than
# fp32), and the beat clock switched per arm.
OVERRIDES = ()


def pick_artists(music: Path, out: Path, artists: int, min_tracks: int, max_track_seconds: float) -> Path:
    """Copy the tracks of the `artists` artists with the most tracks (at least `min_tracks` no longer
    than `max_track_seconds`, so no artist's 20-minute pieces outweigh everyone else's) into OUT/music,
    with their labels: a set a 40-minute budget can learn and an evaluation can cover."""
    import csv

    seconds = {t["output"]: t["seconds"] for t in json.loads((music / "selection.json").read_text())["tracks"]
               if t.get("selected") and t.get("output")}
    with open(music / "labels.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if seconds.get(r["path"], 0.0) <= max_track_seconds]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["artist"]] = counts.get(row["artist"], 0) + 1
    chosen = sorted((a for a, n in counts.items() if n >= min_tracks), key=lambda a: (-counts[a], a))[:artists]
    if not chosen:
        raise SystemExit(f"{music}: no artist has {min_tracks} tracks of at most {max_track_seconds:g} s")
    subset = out / "music"
    kept = [r for r in rows if r["artist"] in chosen]
    for row in kept:
        target = subset / "tracks" / row["path"]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(music / "tracks" / row["path"], target)
    with open(subset / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "artist", "genre"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("path", "artist", "genre")} for r in kept)
    for artist in chosen:
        mine = [seconds[r["path"]] for r in kept if r["artist"] == artist]
        print(f"  {artist}: {len(mine)} tracks, {sum(mine) / 60:.1f} min")
    return subset


def prepare_once(music: Path, out: Path) -> Path:
    from housebox.config import load_preset
    from housebox.data.prepare import PrepareSettings, prepare

    data = out / "prepared"
    sample_rate = load_preset("tiny")["vqvae"]["sample_rate"]
    labels = music / "labels.csv"
    report = prepare(music / "tracks", data, PrepareSettings(sample_rate=sample_rate),
                     labels_csv=labels if labels.exists() else None, workers=2, progress=False)
    print(f"prepared {report.tracks} tracks, {report.seconds / 60:.1f} min at {sample_rate} Hz -> {data}")
    return data


def run_arm(name: str, data: Path, out: Path, minutes: float, core: int, seconds: float, per_artist: int) -> subprocess.Popen:
    """Start one arm as its own process, pinned to `core` with one thread."""
    arm = out / name
    if not (arm / "data").exists():
        shutil.copytree(data, arm / "data", ignore=shutil.ignore_patterns("codes"))
    clock = str(ARMS[name]).lower()
    from housebox.train.loop import cpu_has_native_bf16

    overrides = list(OVERRIDES) + (["prior_train.precision=bf16", "upsampler_train.precision=bf16"]
                                   if cpu_has_native_bf16() else [])
    script = f"""
import sys, torch
torch.set_num_threads(1)
from housebox.cli import main
code = main(["train", "all", "--data", {str(arm / 'data')!r}, "-o", {str(arm / 'run')!r}, "--preset", "tiny",
             "--minutes", {str(minutes)!r}, "--resume", "--device", "cpu",
             *sum([["--set", s] for s in {overrides!r} + ["prior.beat_clock={clock}", "upsampler.beat_clock={clock}"]], [])])
if code:
    sys.exit(code)
sys.exit(main(["evaluate", {str(arm / 'run')!r}, "--data", {str(arm / 'data')!r}, "--device", "cpu",
               "--seconds", {str(seconds)!r}, "--per-artist", {str(per_artist)!r}, "--temperature", "0.95"]))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(arm / "log.txt", "a")
    return subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", script], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


def summarise(out: Path) -> dict:
    results = {}
    for name in ARMS:
        path = out / name / "run" / "evaluation" / "evaluation.json"
        if not path.exists():
            results[name] = None
            continue
        report = json.loads(path.read_text())
        plan = json.loads((out / name / "run" / "plan.json").read_text())
        results[name] = {"evaluation": report, "plan": plan}
    return results


GOAL_BPM, GOAL_KICK = 3.0, 0.2  # the goal: every artist at the requested tempo +-3 BPM, kick >= 0.2


def requested_tempi(samples_dir: str) -> list[float] | None:
    """The tempo each sample's beat clock ran at (None for a run without a clock)."""
    report = Path(samples_dir) / "report.json"
    return json.loads(report.read_text()).get("beat_clock_bpm") if report.exists() else None


def goal_met(artist: dict) -> bool:
    """The artist's generated tracks at the tempo the clock ran at (+-3 BPM, median) with a kick >= 0.2."""
    asked = requested_tempi(artist["samples_dir"])
    made = artist.get("generated_bpm") or []
    if not asked or not made:
        return False
    errors = [abs(m - a) for m, a in zip(made, asked) if m is not None]
    return bool(errors) and sorted(errors)[len(errors) // 2] <= GOAL_BPM and artist["kick_periodicity"] >= GOAL_KICK


def print_table(results: dict) -> None:
    from housebox.evaluate.run import format_stage_table

    for name, result in results.items():
        if result is None:
            print(f"{name}: no evaluation (see {name}/log.txt)")
            continue
        plan = result["plan"]
        steps = ", ".join(f"{s['name']} {s['steps']}" for s in plan["stages"])
        print(f"\n== {name}: {steps} steps in {plan['seconds_used'] / 60:.1f} min")
        met = 0
        for artist in result["evaluation"]["generated"]:
            asked = requested_tempi(artist["samples_dir"])
            ok = goal_met(artist)
            met += ok
            print(f"  {artist['artist'][:24]:<24} asked {asked or '-'} BPM, made {artist.get('generated_bpm')}, "
                  f"kick {artist['kick_periodicity']:.2f} (training {artist['reference_kick_periodicity']:.2f}), "
                  f"nearest track tempo kept {artist['tempo_kept']}; goal {'met' if ok else 'NOT met'}")
        print(f"  goal (requested tempo +-{GOAL_BPM:g} BPM, kick >= {GOAL_KICK}): "
              f"{met} of {len(result['evaluation']['generated'])} artists")
        stages = result["evaluation"].get("stages")
        if stages:
            print("\n".join(format_stage_table({k: {"all": v["all"]} for k, v in stages.items()})))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--music", type=Path, default=Path.home() / ".cache/housebox/realmusic",
                        help="the folder bench/fetch_realmusic.py wrote (tracks/ and labels.csv)")
    parser.add_argument("-o", "--output", type=Path, default=Path("/tmp/housebox-realmusic-bench"))
    parser.add_argument("--minutes", type=float, default=40.0, help="train all budget per arm (default 40)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated track (default 30)")
    parser.add_argument("--per-artist", type=int, default=3, help="generated tracks per artist (default 3)")
    parser.add_argument("--arms", default="clock,noclock", help="comma-separated: clock, noclock")
    parser.add_argument("--artists", type=int, default=5, help="artists with the most tracks to use (default 5)")
    parser.add_argument("--min-tracks", type=int, default=3, help="tracks an artist needs to be used (default 3)")
    parser.add_argument("--max-track-seconds", type=float, default=420.0,
                        help="leave out longer tracks (default 420: seven minutes)")
    args = parser.parse_args(argv)
    if not (args.music / "tracks").is_dir():
        print(f"skipped: {args.music} has no tracks/ folder; build the set first with "
              f"`python bench/fetch_realmusic.py -o {args.music}` (or `make realmusic`)")
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    data = prepare_once(pick_artists(args.music, args.output, args.artists, args.min_tracks,
                                                  args.max_track_seconds), args.output)
    started = time.time()
    arms = [a for a in args.arms.split(",") if a]
    procs = {name: run_arm(name, data, args.output, args.minutes, core % (os.cpu_count() or 1), args.seconds,
                           args.per_artist) for core, name in enumerate(arms)}
    codes = {name: proc.wait() for name, proc in procs.items()}
    print(f"arms finished in {(time.time() - started) / 60:.1f} min: {codes}")
    results = summarise(args.output)
    (args.output / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print_table(results)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
