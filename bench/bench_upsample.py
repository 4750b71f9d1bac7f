"""Upsampling speed, autoregressive against masked, at the same level, width and depth (issue 13).

The level-0 upsampler of a preset (freshly initialised: speed does not depend on what the weights
learned) fills `--seconds` of audio from random level-1 codes, once one token per step with the KV
cache (`sample_codes`, what `housebox sample` runs for `kind: autoregressive`), once in K passes per
window (`sample_masked`, `kind: masked`) for each K of `--steps`. Rounds are interleaved (every
variant once per round) and the medians printed, as upsampled audio seconds per wall second, at each
batch of `--batches` and thread count of `--threads`; the last column is masked / autoregressive.

    taskset -c 1 python bench/bench_upsample.py                      # tiny, one core
    taskset -c 0,1 python bench/bench_upsample.py --preset small --threads 1,2

This times the sampling alone, not its quality: what K keeps the music is measured by training both
kinds (README, "Masked upsamplers").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from housebox.config import load_preset
from housebox.generate.pipeline import sampling_dtype
from housebox.generate.sampling import sample_codes, sample_masked
from housebox.models.conditioning import Labels
from housebox.models.prior import Prior
from housebox.train.plan import prior_configs


def upsampler(preset: dict, kind: str) -> Prior:
    """The preset's level-0 upsampler of `kind`, as training builds it (without the beat clock: it costs the
    same in both kinds), freshly initialised."""
    preset = {**preset, "upsampler": {**preset["upsampler"], "kind": kind, "beat_clock": False}}
    _, config, _ = prior_configs(preset, artists=2, genres=2)[-1]  # top level first, level 0 last
    torch.manual_seed(0)
    return Prior(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seconds", type=float, default=2.0, help="audio seconds upsampled per run (default 2)")
    parser.add_argument("--steps", default="4,8,12,16", help="passes per window of the masked kind (default 4,8,12,16)")
    parser.add_argument("--batches", default="1,4", help="batch sizes (default 1,4)")
    parser.add_argument("--threads", default="1", help="torch threads, e.g. 1,2 (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--masked-hops", default="0.5",
                        help="masked windows start this share of a window apart, e.g. 0.5,0.875 (default 0.5)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                        help="the models' type, as `housebox sample --precision` (default fp32; auto: bf16 for the "
                             "masked one on a CPU with native bf16)")
    args = parser.parse_args()
    preset = load_preset(args.preset)
    models = {kind: upsampler(preset, kind).to(sampling_dtype(args.precision, "cpu", kind == "masked"))
              for kind in ("autoregressive", "masked")}
    config = models["masked"].config
    n_tokens = int(args.seconds * config.sample_rate / config.hop) // config.n_ctx * config.n_ctx or config.n_ctx
    seconds = n_tokens * config.hop / config.sample_rate
    params = sum(p.numel() for p in models["masked"].parameters()) / 1e6
    print(f"preset {args.preset}, level 0: width {config.width}, depth {config.depth}, n_ctx {config.n_ctx}, "
          f"{config.attention}, {params:.2f} M parameters; {n_tokens} tokens = {seconds:.2f} audio s per run")
    variants = [("autoregressive", 0, 0.0)] + [("masked", int(k), float(h)) for h in args.masked_hops.split(",")
                                               for k in args.steps.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    times: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for threads in thread_counts:
            for batch in batches:
                labels = Labels(artist=torch.zeros(batch, dtype=torch.long), genres=torch.zeros(batch, config.max_genres,
                                                                                                  dtype=torch.long))
                upper = torch.randint(config.codebook_size, (batch, n_tokens // config.upper_ratio),
                                      generator=torch.Generator().manual_seed(1))
                for kind, steps, hop in variants:
                    common = dict(n_tokens=n_tokens, labels=labels, upper=upper, progress=False, threads=threads,
                                  generator=torch.Generator().manual_seed(2))
                    tick = time.perf_counter()
                    if kind == "masked":
                        sample_masked(models[kind], steps=steps, hop_fraction=hop, **common)
                    else:
                        sample_codes(models[kind], **common)
                    times.setdefault((threads, batch, kind, steps, hop), []).append(time.perf_counter() - tick)
    print(f"\nupsampled audio seconds per wall second (median of {args.rounds} interleaved rounds; x batch)")
    print(f"{'threads':>7} {'batch':>5} {'kind':<16} {'passes':>6} {'hop':>5} {'audio s / s':>12} {'vs AR':>7}")
    for threads in thread_counts:
        for batch in batches:
            ar = statistics.median(times[(threads, batch, "autoregressive", 0, 0.0)])
            for kind, steps, hop in variants:
                wall = statistics.median(times[(threads, batch, kind, steps, hop)])
                print(f"{threads:>7} {batch:>5} {kind:<16} {steps or '-':>6} {hop or '-':>5} {seconds * batch / wall:>12.2f} "
                      f"{ar / wall:>6.1f}x")


if __name__ == "__main__":
    main()
