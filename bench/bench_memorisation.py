"""Does `housebox check` tell a prior that memorised a track from one that learned its data? On any prepared set.

    .venv/bin/python bench/bench_memorisation.py --data DATA -o /tmp/memorisation

On a prepared dataset (the real-music set: `bench/fetch_realmusic.py`, then `housebox prepare` at 16 kHz;
or the demo corpus), at the `tiny` preset, one thread:
1. trains a VQ-VAE for --vqvae-steps on a copy of the dataset and encodes it (a code cache belongs to one
   VQ-VAE);
2. trains a top prior on every track for --prior-steps (best validation weights kept): "fresh";
3. trains a top prior on one training track alone for --overfit-steps, without dropout, keeping the last
   weights: "overfit" (the track: --track, else the shortest of at least 20 s);
4. samples --per-artist tracks of --seconds for each artist from the fresh prior, and --overfit-samples from
   the overfit one asked for that track's artist, tempo and length (at most --max-seconds), all decoded from
   the top level;
5. checks every sample against the dataset twice: with passages with slips (the default) and verbatim runs
   only (min_code_agreement 1), and prints what different training tracks share at the top level and, per
   sample, the verdict and the longest code passage (seconds beyond that, share of equal codes, track).

Each stage is skipped when its output is already in OUT, so a re-run only redoes what is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def stage(name: str, done: bool, fn) -> None:
    if done:
        print(f"{name}: done before, kept")
        return
    tick = time.perf_counter()
    fn()
    print(f"{name}: {time.perf_counter() - tick:.0f} s", flush=True)


def call(*argv: str) -> None:
    from housebox.cli import main

    code = main(list(argv))
    if code:
        raise SystemExit(f"housebox {' '.join(argv[:2])} failed ({code})")


def one_track_dataset(data: Path, out: Path, row: dict) -> Path:
    """A dataset of one track that shares the full dataset's files (audio, beats, codes, labels)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    for name in ("audio", "beats", "codes", "labels.json"):
        if (data / name).exists() and not (out / name).exists():
            (out / name).symlink_to((data / name).resolve())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset (16 kHz, the tiny preset's rate)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--vqvae-steps", type=int, default=1000)
    parser.add_argument("--prior-steps", type=int, default=1500)
    parser.add_argument("--overfit-steps", type=int, default=1500)
    parser.add_argument("--track", help="id of the track to overfit (default: the shortest of at least 20 s)")
    parser.add_argument("--per-artist", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--overfit-samples", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()

    import torch

    from housebox.data.prepare import read_manifest
    from housebox.evaluate.originality import OriginalityConfig, check_samples

    torch.set_num_threads(1)
    out = args.output
    data, run = out / "data", out / "run"
    if not (data / "manifest.jsonl").exists():
        shutil.copytree(args.data, data, ignore=shutil.ignore_patterns("codes", "fingerprints", "melody", "checks",
                                                                       "code_index"))
    rows = read_manifest(data)
    train = [r for r in rows if r.get("split", "train") == "train"]  # the overfit track is one the prior saw
    artists = sorted({r["artist"] for r in rows})
    print(f"{len(rows)} tracks, {sum(r['seconds'] for r in rows) / 60:.1f} min, {len(artists)} artists")
    cpu = ["--device", "cpu", "--threads", "1"]
    stage("VQ-VAE", (run / "vqvae" / "model.safetensors").exists(),
          lambda: call("train", "vqvae", "--data", str(data), "-o", str(run / "vqvae"), *cpu,
                       "--set", f"vqvae_train.steps={args.vqvae_steps}"))
    stage("encode", (data / "codes" / "meta.json").exists(),
          lambda: call("encode", "--data", str(data), "--vqvae", str(run / "vqvae"), *cpu))
    stage("fresh prior", (run / "prior_l2" / "model.safetensors").exists(),
          lambda: call("train", "prior", "--level", "2", "--data", str(data), "-o", str(run / "prior_l2"), *cpu,
                       "--set", f"prior_train.steps={args.prior_steps}"))

    candidates = [r for r in train if r["seconds"] >= 20] or train
    track = next(r for r in rows if r["id"] == args.track) if args.track else min(candidates, key=lambda r: r["seconds"])
    over = out / "overfit"
    one = one_track_dataset(data, out / "one_track", track)
    if not (over / "vqvae").exists():
        over.mkdir(parents=True, exist_ok=True)
        (over / "vqvae").symlink_to((run / "vqvae").resolve())
    stage(f"overfit prior on {track['id']} ({track['artist']}, {track['seconds']:.0f} s)",
          (over / "prior_l2" / "model.safetensors").exists(),
          lambda: call("train", "prior", "--level", "2", "--data", str(one), "-o", str(over / "prior_l2"), *cpu,
                       "--set", "prior.dropout=0.0", "--set", f"prior_train.steps={args.overfit_steps}",
                       "--set", f"prior_train.checkpoint_every={args.overfit_steps}"))

    samples = out / "samples"
    for i, artist in enumerate(artists):
        folder = samples / f"fresh_{i}"
        stage(f"fresh samples of {artist}", (folder / "report.json").exists(),
              lambda artist=artist, folder=folder: call(
                  "sample", str(run), "--artist", artist, "--seconds", str(args.seconds), "-n", str(args.per_artist),
                  "--seed", "1000", *cpu, "-o", str(folder)))
    seconds = min(track["seconds"], args.max_seconds)
    bpm = ["--bpm", str(track["bpm"])] if track.get("bpm") else []
    stage("overfit samples", (samples / "overfit" / "report.json").exists(),
          lambda: call("sample", str(over), "--artist", track["artist"], *bpm, "--seconds", f"{seconds:.2f}",
                       "-n", str(args.overfit_samples), "--seed", "1000", *cpu,
                       "-o", str(samples / "overfit")))

    rate = json.loads((data / "codes" / "meta.json").read_text())
    tps = rate["sample_rate"] / rate["hops"][2]
    results, natural = {}, {}
    for name, config in (("verbatim", OriginalityConfig(min_code_agreement=1.0)), ("passages", OriginalityConfig())):
        report = check_samples(samples, data, config)  # the sample folders' report.json keep the last: passages
        results[name] = {r.sample: r for r in report.samples}
        # the index is rebuilt for each setting: what different tracks share, measured the same way
        natural[name] = json.loads((data / "code_index" / "l2" / "meta.json").read_text())["natural_tokens"] / tps
    print(f"\ndifferent training tracks share at the top level: {natural['passages']:.2f} s as passages with "
          f"slips, {natural['verbatim']:.2f} s verbatim; the figures below are beyond these")
    print(f"overfit track: {track['id']} ({track['artist']}, {track['seconds']:.0f} s)")
    print(f"{'sample':<28} {'verdict':<20} {'passage':>8} {'(all)':>7} {'equal':>6} {'verbatim':>9}  track")
    table = []
    for sample, result in results["passages"].items():
        exact = results["verbatim"][sample]
        run_ = max(result.code_runs, key=lambda c: c.seconds, default=None)
        name = "/".join(Path(sample).parts[-2:])
        verdict = result.verdict + (f" ({', '.join(result.fired)})" if result.fired else "")
        row = {"sample": name, "verdict": result.verdict, "fired": result.fired,
               "passage_excess_seconds": result.longest_code_seconds, "verbatim_excess_seconds": exact.longest_code_seconds,
               "passage_seconds": run_.seconds if run_ else None, "agreement": run_.agreement if run_ else None,
               "track": run_.track_id if run_ else None}
        table.append(row)
        print(f"{name:<28} {verdict:<20} {result.longest_code_seconds or 0:>7.2f}s {(run_.seconds if run_ else 0):>6.2f}s "
              f"{(run_.agreement if run_ else 0):>6.2f} {exact.longest_code_seconds or 0:>8.2f}s  "
              f"{'' if run_ is None else run_.track_id + (' (the overfit track)' if run_.track_id == track['id'] else '')}")
    (out / "results.json").write_text(json.dumps({"track": track, "natural_seconds": natural,
                                                  "samples": table}, indent=1))


if __name__ == "__main__":
    main()
