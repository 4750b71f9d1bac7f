"""The `housebox` command: thin verbs that parse arguments, call one function and print the result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_prepare(args: argparse.Namespace) -> int:
    from housebox.data.prepare import PrepareSettings, prepare

    settings = PrepareSettings(
        sample_rate=args.sr,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        remove_vocals=args.remove_vocals,
        target_lufs=args.target_lufs,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
    )
    report = prepare(args.src, args.output, settings, labels_csv=args.labels, workers=args.workers)
    print(
        f"prepared {len(report.prepared)} new tracks ({report.already_present} already present, "
        f"{len(report.skipped)} skipped); dataset: {report.tracks} tracks, {report.seconds / 60:.1f} min "
        f"-> {args.output}"
    )
    if report.skipped:
        print(f"reasons for skipped files are in {Path(args.output) / 'report.json'}")
    return 0


def _cmd_make_demo_corpus(args: argparse.Namespace) -> int:
    from housebox.data.demo_corpus import make_demo_corpus

    info = make_demo_corpus(args.output, minutes=args.minutes, seed=args.seed, sample_rate=args.sr)
    print(f"wrote {len(info.tracks)} tracks ({info.seconds_total / 60:.1f} min) and {info.labels_csv} to {args.output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from housebox.demo import run_demo

    run_demo(Path(args.output), quick=args.quick, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="housebox",
        description="Train a Jukebox-style music generator on your own audio catalogue and generate new tracks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('housebox').__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("prepare", help="decode, clean and label a folder of music into a dataset",
                         description="Turn a folder of audio files into a housebox dataset (incremental).")
    p.add_argument("src", help="folder of audio files (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="dataset folder to create or extend")
    p.add_argument("--sr", type=int, default=44100, help="sample rate of the dataset (default 44100)")
    p.add_argument("--labels", help="CSV with columns path,artist,genre (overrides tags and folder names)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="skip tracks shorter than this (default 2)")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="skip tracks longer than this (default 1800)")
    p.add_argument("--remove-vocals", choices=["none", "center", "repet", "demucs"], default="none",
                   help="vocal removal before training (default none)")
    p.add_argument("--target-lufs", type=float, default=-16.0, help="loudness to normalise to (default -16 LUFS)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="share of tracks held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    p.add_argument("--workers", type=int, default=1, help="processes decoding in parallel (default 1)")
    p.set_defaults(func=_cmd_prepare)

    p = verbs.add_parser("make-demo-corpus", help="write the built-in synthetic house corpus",
                         description="Render the built-in, deterministic house-music corpus with a labels CSV.")
    p.add_argument("-o", "--output", required=True, help="folder to write the corpus into")
    p.add_argument("--minutes", type=float, default=6.0, help="total length (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--sr", type=int, default=22050, help="sample rate of the files (default 22050)")
    p.set_defaults(func=_cmd_make_demo_corpus)

    p = verbs.add_parser("demo", help="the whole pipeline on the built-in corpus, on CPU",
                         description="Make the demo corpus, prepare it and run the pipeline on it.")
    p.add_argument("-o", "--output", default="demo", help="folder for everything the demo writes (default demo/)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster version (used by the tests)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, no traceback
        print(f"housebox {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"housebox {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
