"""Whole-pipeline real-time factor: seconds of audio per wall second, for the `small` preset on CPU.

Speed does not depend on what the weights learned, so the models are freshly initialised from the
preset (22.05 kHz; top prior + two upsamplers with factorised attention, n_ctx 1024). Prints the time
of each level and of decoding, for 1 and 2 threads of the decoder; sampling runs on torch's threads
(pin them with taskset / OMP_NUM_THREADS). `--compare-unpacked` interleaves rounds whose sampling steps
read the module's own weights instead of the packed column slices (`Transformer.new_cache`).
For reference: Jukebox needed ~540 wall seconds per audio second on a V100 for its 5B model.

    python bench/bench_pipeline.py [--seconds 4] [--n 1] [--preset small] [--upsampler-kind masked --upsample-steps 4]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch

from housebox.config import build, load_preset
from housebox.generate.pipeline import Run, SampleSettings, decode, generate, sampling_dtype
from housebox.models.prior import Prior
from housebox.models.vqvae import VQVAE, VQVAEConfig
from housebox.train.plan import prior_configs


def build_run(preset_name: str, upsampler_kind: str | None = None, precision: str = "fp32") -> Run:
    preset = load_preset(preset_name)
    if upsampler_kind:
        preset = {**preset, "upsampler": {**preset["upsampler"], "kind": upsampler_kind}}
    torch.manual_seed(0)
    vqvae = VQVAE(build(VQVAEConfig, preset["vqvae"])).eval()
    priors = {config.level: Prior(config).eval().to(sampling_dtype(precision, "cpu", config.masked))
              for _, config, _ in prior_configs(preset, artists=2, genres=2)}
    return Run(root=Path("."), vqvae=vqvae, vqvae_dir=Path("."), priors=priors, prior_dirs={},
               artists=("unknown", "a"), genres=("unknown", "house"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio seconds per track (default 4)")
    parser.add_argument("--n", type=int, default=1, help="tracks per batch (default 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--upsampler-kind", choices=["autoregressive", "masked"],
                        help="kind of both upsamplers (default: the preset's)")
    parser.add_argument("--upsample-steps", type=int, default=SampleSettings.upsample_steps,
                        help=f"passes per window of masked upsamplers (default {SampleSettings.upsample_steps})")
    parser.add_argument("--upsample-hop", type=float, default=SampleSettings.upsample_hop,
                        help=f"masked window hop, share of a window (default {SampleSettings.upsample_hop})")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                        help="the priors' type, as `housebox sample --precision` (default fp32)")
    parser.add_argument("--compare-unpacked", action="store_true",
                        help="also time, interleaved, sampling steps on the module's own (unpacked) weights")
    args = parser.parse_args()
    run = build_run(args.preset, args.upsampler_kind, args.precision)
    packed_cache = Prior.new_cache
    unpacked_cache = functools.partialmethod(packed_cache, slices=None)
    modes = ["packed", "unpacked"] if args.compare_unpacked else ["packed"]
    params = {lv: sum(p.numel() for p in pr.parameters()) / 1e6 for lv, pr in run.priors.items()}
    print(f"preset {args.preset}: {run.vqvae.config.sample_rate} Hz, prior parameters (M) per level: "
          + ", ".join(f"l{lv} {m:.2f}" for lv, m in sorted(params.items())))
    settings = SampleSettings(artist="a", genres=("house",), seconds=args.seconds, n=args.n,
                              upsample_steps=args.upsample_steps, upsample_hop=args.upsample_hop)
    totals = {mode: [] for mode in modes}
    levels = {mode: {lv: [] for lv in run.priors} for mode in modes}
    decode_times = {1: [], 2: []}
    sampling_threads = torch.get_num_threads()  # the decode timings below change torch's setting
    for _ in range(args.rounds):
        for mode in modes:
            Prior.new_cache = packed_cache if mode == "packed" else unpacked_cache
            torch.set_num_threads(sampling_threads)
            started = time.perf_counter()
            generation = generate(run, settings, progress=False)
            totals[mode].append(time.perf_counter() - started)
            for lv, rate in generation.tokens_per_second.items():
                levels[mode][lv].append(rate)
        Prior.new_cache = packed_cache
        for threads in (1, 2):
            torch.set_num_threads(threads)
            tick = time.perf_counter()
            decode(run.vqvae, generation.codes[0], 0)
            decode_times[threads].append(time.perf_counter() - tick)
    audio = args.seconds * args.n
    print(f"sampling on {sampling_threads} thread(s)")
    for mode in modes:
        wall = statistics.median(totals[mode])
        print(f"{mode}: generated {args.n} x {args.seconds:g} s in {wall:.1f} s (median of {args.rounds}): "
              f"real-time factor {audio / wall:.3f} audio s per wall s ({wall / audio:.1f} wall s per audio s)")
        for lv in sorted(run.priors, reverse=True):
            rate = statistics.median(levels[mode][lv])
            per_second = run.vqvae.config.tokens_per_second(lv)
            print(f"  level {lv}: {rate:,.0f} tokens/s sampled ({per_second:,.0f} tokens per audio second)")
    if len(modes) == 2:
        print(f"packed / unpacked, whole pipeline: "
              f"{statistics.median(totals['unpacked']) / statistics.median(totals['packed']):.2f}x")
    for threads, times in decode_times.items():
        print(f"  decode level 0 with {threads} thread(s): {audio / statistics.median(times):.1f}x real time")
    print("Jukebox 5B on a V100: ~540 wall s per audio s (Dhariwal et al., 2020).")


if __name__ == "__main__":
    main()
