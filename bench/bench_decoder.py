"""Adversarial decoder fine-tuning, measured: the VQ-VAE decoding true level-0 codes of held-out audio,
before and after `housebox train decoder`, for a fixed CPU budget.

    .venv/bin/python bench/bench_decoder.py --run RUN --data DATA --minutes 15 -o /tmp/decoder-bench

The run's VQ-VAE is copied (the run itself is left alone), its level-0 decoder fine-tuned for `--minutes`
(steps set from the measured step time, so the learning rate anneals to zero in time; or a fixed `--steps`,
which compares settings run on cores of differing load by the same work), pinned to one core
with one thread. Then held-out pieces (the split training used) go through the original and the tuned
decoder: Fréchet and kernel (KAD) mel+chroma distance to the held-out audio, spectral centroid
(brightness), spectral flatness (noise) and kick periodicity at the track's tempo, each beside the
held-out audio's own figures. Prints a table, writes `results.json` and `spectrograms.png` (held-out,
before, after, for three pieces).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def decoded_rows(vqvae_dir: Path, data: Path, pieces: list, hop_top: int, reference, adversarial: bool):
    """The pieces' true level-0 codes decoded by the original or the tuned decoder: (StageRow, audio list)."""
    from housebox.audio.features import estimate_tempo
    from housebox.evaluate.run import Measured, _safe, piece_codes
    from housebox.generate.pipeline import decode
    from housebox.models.load import load_vqvae

    vqvae = load_vqvae(vqvae_dir, adversarial=adversarial)
    sr = vqvae.config.sample_rate
    measured, audios = Measured(), {}
    for tokens in sorted({p.tokens for p in pieces}):
        group = [i for i, p in enumerate(pieces) if p.tokens == tokens]
        codes = piece_codes(data, [pieces[i] for i in group], 0, hop_top // vqvae.config.hops[0])
        for i, one in zip(group, decode(vqvae, codes, 0)):
            measured.add(one, sr, pieces[i].row.get("bpm"), _safe(estimate_tempo, one, sr))
            audios[i] = one
    return measured.row(reference), [audios[i] for i in range(len(pieces))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder with a trained VQ-VAE (priors not needed)")
    parser.add_argument("--data", type=Path, required=True, help="its prepared dataset (with its code cache)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=15.0, help="fine-tuning budget (default 15)")
    budget.add_argument("--steps", type=int, default=None, help="fine-tuning steps instead of a time budget")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each held-out piece (default 20)")
    parser.add_argument("--pieces", type=int, default=12, help="held-out pieces to measure (default 12)")
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to (default 0)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("-o", "--output", type=Path, default=Path("/tmp/housebox-decoder-bench"))
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    import torch

    torch.set_num_threads(1)
    from dataclasses import asdict

    from housebox.audio.features import estimate_tempo
    from housebox.config import apply_overrides, as_dict, load_preset
    from housebox.evaluate.run import (
        Measured,
        _safe,
        check_code_cache,
        cut_pieces,
        data_segments,
        features_of,
        piece_audio,
    )
    from housebox.models.load import load_vqvae
    from housebox.report.plots import save_spectrograms
    from housebox.train.all import measure_decoder_step
    from housebox.train.decoder import find_vqvae_dir, train_decoder

    out, source = args.output, find_vqvae_dir(args.run)
    work = out / "run"
    if not (work / "vqvae" / "model.safetensors").exists():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work / "vqvae")
        meta = json.loads((work / "vqvae" / "config.json").read_text())
        if meta.pop("decoders", None):  # start from the original decoders
            (work / "vqvae" / "config.json").write_text(json.dumps(meta, indent=1))
    check_code_cache(SimpleNamespace(vqvae_dir=source), args.data)  # only the VQ-VAE is needed, no priors
    config = load_vqvae(source).config
    preset = apply_overrides(load_preset(args.preset), args.set)
    preset["vqvae"] = as_dict(config)  # the step is timed on the run's own VQ-VAE shape
    step_seconds = measure_decoder_step(args.data, preset, torch.device("cpu"))
    if args.steps is not None:
        steps = max(1, args.steps)
        budget = f"~{steps * step_seconds / 60:.1f} minutes"
    else:
        steps = max(1, int(args.minutes * 60 / step_seconds))
        budget = f"{args.minutes:g} minutes"
    print(f"decoder fine-tune: {steps} steps at {step_seconds:.2f} s/step for {budget} on core {args.core}", flush=True)
    started = time.time()
    tune = apply_overrides(preset, [f"decoder_train.steps={steps}", f"decoder_train.eval_every={max(10, steps // 6)}",
                                    f"decoder_train.checkpoint_every={max(10, steps // 3)}"])
    result = train_decoder(work, args.data, work / "decoder", tune, levels=(0,),
                           resume=(work / "decoder" / "train_state.pt").exists(), device="cpu")
    minutes = (time.time() - started) / 60

    top = config.levels - 1
    hop_top, sr = config.hops[top], config.sample_rate
    held, _ = data_segments(args.data, sr)
    pieces = cut_pieces(held, config.tokens_per_second(top), args.seconds, args.pieces)
    reference = features_of(args.data, pieces, hop_top, sr)
    heldout, audio = Measured(), {"heldout": []}
    for p in pieces:
        one = piece_audio(args.data, p, hop_top)
        heldout.add(one, sr, p.row.get("bpm"), _safe(estimate_tempo, one, sr))
        audio["heldout"].append(one)
    rows = {"heldout": asdict(heldout.row(reference))}
    rows["heldout"].update(frechet=None, kad=None)  # the reference itself
    for name, adversarial in (("before", False), ("after", True)):
        row, audio[name] = decoded_rows(work / "vqvae", args.data, pieces, hop_top, reference, adversarial)
        rows[name] = asdict(row)
    results = {"run": str(args.run), "data": str(args.data), "minutes": round(minutes, 1), "steps": result.step,
               "step_seconds": round(step_seconds, 3), "pieces": len(pieces), "seconds": args.seconds,
               "preset": args.preset, "overrides": args.set, "validation": result.last_eval, "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    picks = list(range(0, len(pieces), max(1, len(pieces) // 3)))[:3]
    signals, titles = [], []
    for i in picks:
        for name in ("heldout", "before", "after"):
            signals.append(audio[name][i][: int(8 * sr)])
            titles.append(f"{pieces[i].row['artist']}: {name}")
    save_spectrograms(out / "spectrograms.png", signals, sr, titles, max_hz=min(sr / 2, 8000))

    def cell(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    print(f"\n{len(pieces)} held-out pieces of up to {args.seconds:g} s; fine-tune {result.step} steps in {minutes:.1f} min")
    print(f"  {'decoder':<8} {'Fréchet':>9} {'KAD':>8} {'centroid':>9} {'flatness':>9} {'kick':>6}")
    for name, row in rows.items():
        print(f"  {name:<8} {cell(row['frechet'], 2):>9} {cell(row['kad'], 4):>8} {cell(row['centroid_hz'], 0):>9} "
              f"{cell(row['flatness'], 4):>9} {cell(row['beat_strength'], 2):>6}")
    print(f"spectrograms: {out / 'spectrograms.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
