"""Training steps with freed memory kept for the next step (`housebox.heap`) against glibc malloc's defaults.

malloc's settings hold for a whole process, so every measurement is a child process of this script,
pinned to one core with one thread: the same model's steps once with HOUSEBOX_KEEP_HEAP=1 and once with
=0, alternately, round after round (the machine's drift hits both alike); medians over rounds, and the
ratio default / kept of each round, medianed. Each child warms up, then times `--steps` steps and also
counts the minor page faults they took (pages the kernel had to hand out again).

Cases: Jukebox's test prior (bench_train_step.jukebox_configs: factorised and dense, batch 1, fp32, and
bf16 where the CPU has it natively), a VQ-VAE at Jukebox's size (bench_vqvae.JUKEBOX_SIZE, 1 s at 22.05 kHz,
batch 1, as the shared loop steps it), and the `small` preset's top prior (batch 2).

    .venv/bin/python bench/bench_heap.py [--rounds 5] [--steps 10] [--core 1] [--cases prior-fact-fp32 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("prior-fact-fp32", "prior-fact-bf16", "prior-dense-fp32", "prior-dense-bf16", "vqvae-fp32", "vqvae-bf16",
         "small-top-bf16")


def make_step(case: str):
    """A closure running one training step of `case` (see the module docstring)."""
    sys.path.insert(0, str(HERE))
    if case.startswith("prior-"):
        from bench_train_step import jukebox_configs, make_case

        _, kind, mode = case.split("-")
        config = dict(jukebox_configs())[f"Jukebox test prior, {'factorised' if kind == 'fact' else 'dense'}"]
        return make_case(config, 1, mode)
    if case.startswith("vqvae-"):
        from bench_vqvae import JUKEBOX_SIZE, fresh_model, test_signal, train_step

        model = fresh_model(JUKEBOX_SIZE)
        samples = (22050 // model.multiple()) * model.multiple()
        batch = test_signal(batch=1, samples=samples, sample_rate=JUKEBOX_SIZE.sample_rate)
        return train_step(model, batch, bf16=case.endswith("bf16"), fused_adamw=True)
    if case == "small-top-bf16":
        from bench_train_step import make_case

        from housebox.config import load_preset
        from housebox.train.plan import prior_configs

        _, config, _ = prior_configs(load_preset("small"))[0]
        return make_case(config, 2, "bf16")
    raise SystemExit(f"unknown case {case}")


def child(case: str, steps: int) -> None:
    import resource

    import torch

    from housebox.heap import keep_freed_memory

    torch.set_num_threads(1)
    kept = keep_freed_memory()  # what `housebox train` does first; off under HOUSEBOX_KEEP_HEAP=0
    step = make_step(case)
    for _ in range(3):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"kept": kept, "ms": statistics.median(times) * 1000, "faults_per_step": faults / steps}))


def run_child(case: str, keep: bool, steps: int, core: int) -> dict:
    env = {**os.environ, "HOUSEBOX_KEEP_HEAP": "1" if keep else "0", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", case, "--steps", str(steps)]
    if hasattr(os, "sched_setaffinity"):
        command = ["taskset", "-c", str(core)] + command
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{case}: child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per child (median)")
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=None, help=f"default: all of {', '.join(CASES)} (bf16 ones "
                        "only on a CPU with native bf16)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.steps)
        return 0
    from housebox.models.precision import cpu_has_native_bf16

    cases = args.cases or [c for c in CASES if cpu_has_native_bf16() or not c.endswith("bf16")]
    rows: dict[str, dict[bool, list[dict]]] = {c: {True: [], False: []} for c in cases}
    for r in range(args.rounds):
        for case in cases:
            for keep in ((True, False) if r % 2 == 0 else (False, True)):
                rows[case][keep].append(run_child(case, keep, args.steps, args.core))
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    print(f"training step, ms: median of {args.rounds} rounds (each a child process timing {args.steps} steps, "
          f"core {args.core}, 1 thread); speed-up = default / kept, per round, medianed")
    print("| case | malloc defaults | freed memory kept | speed-up | page faults per step, defaults / kept |")
    print("|---|---|---|---|---|")
    for case in cases:
        kept, default = rows[case][True], rows[case][False]
        ratio = statistics.median(d["ms"] / k["ms"] for d, k in zip(default, kept))
        print(f"| {case} | {statistics.median(d['ms'] for d in default):.1f} | "
              f"{statistics.median(k['ms'] for k in kept):.1f} | {ratio:.2f}x | "
              f"{statistics.median(d['faults_per_step'] for d in default):,.0f} / "
              f"{statistics.median(k['faults_per_step'] for k in kept):,.0f} |")
    if not all(k["kept"] for case in cases for k in rows[case][True]):
        print("note: malloc's settings could not be changed here (not glibc): both columns ran with the defaults")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
