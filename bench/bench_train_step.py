"""A prior's training step on CPU: fp32, bf16 autocast (attention in fp32, the default on a CPU), and bf16
with attention in bf16 too (what autocast alone does), timed interleaved in one process.

Models: every prior of a preset (`--preset tiny small`: the top prior and each upsampler, as `train`
builds them) and Jukebox's test prior (`--jukebox`: width 128, depth 4, 2 heads, context 1024, 2048 codes,
attention a quarter as wide, MLP ratio 1, factorised rows of 64 and dense). One step = forward, backward
and an AdamW update on random codes (`--batch` windows of the model's context, labels, the level above
and a beat clock where the model takes them). Every round times every case once; medians over rounds.
bf16 needs a CPU with it natively (AVX-512 BF16 or AMX: `housebox.models.precision.cpu_has_native_bf16`);
elsewhere it is emulated and slow, and the bench says so.

    taskset -c 1 .venv/bin/python bench/bench_train_step.py --preset tiny small --jukebox [--rounds 5] [--torch-loss]

`--torch-loss` adds each model with F.cross_entropy as the loss (what the prior used before
`token_cross_entropy`).

`--products` also prints, per model and mode, the floor a step cannot go below while it multiplies the same
matrices: every matrix product one step dispatches (forward and backward: mm, addmm, bmm, baddbmm, i.e. the
linear layers and the output head; attention runs inside SDPA's fused kernels and is not counted), recorded with
its shapes, strides and types and replayed alone on random tensors, timed in the same rounds. The step's time over that
floor says how much is left outside the products; another tool's step over the floor bounds how much faster
than it any step of the same products can get.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import housebox.models.prior as prior_module
import housebox.models.transformer as transformer
from housebox.config import load_preset
from housebox.heap import keep_freed_memory
from housebox.models.conditioning import Labels
from housebox.models.precision import cpu_has_native_bf16
from housebox.models.prior import Conditioning, Prior, PriorConfig
from housebox.train.plan import prior_configs

MODES = ("fp32", "bf16", "bf16, bf16 attention")
TORCH_LOSS = ("fp32, F.cross_entropy", "bf16, F.cross_entropy")  # --torch-loss: the loss before token_cross_entropy


def torch_loss(logits, targets):
    return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=prior_module.IGNORE)


def jukebox_configs() -> list[tuple[str, PriorConfig]]:
    shape = dict(level=2, codebook_size=2048, n_artists=1, n_genres=1, sample_rate=22050, hop=128, width=128,
                 depth=4, heads=2, n_ctx=1024, block_size=64, timing=True, attention_width=0.25, mlp_ratio=1.0)
    return [(f"Jukebox test prior, {name}", PriorConfig(attention=attention, **shape))
            for name, attention in (("factorised", ("row", "column", "prev_block")), ("dense", ("dense",)))]


def make_case(config: PriorConfig, batch: int, mode: str, seed: int = 0):
    """A closure running one training step of a fresh model of `config` in `mode`."""
    torch.manual_seed(seed)
    model = Prior(config).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = config.n_ctx
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, config.codebook_size, (batch, n), generator=g)
    genres = torch.full((batch, 4), -1, dtype=torch.long)
    genres[:, 0] = 0
    upper = (torch.randint(0, config.upper_codebook_size, (batch, n // config.upper_ratio), generator=g)
             if config.is_upsampler else None)
    beats = torch.rand(batch, n, generator=g) * 4 if config.beat_clock else None
    cond = Conditioning(labels=Labels(artist=torch.zeros(batch, dtype=torch.long), genres=genres),
                        start=torch.zeros(batch, dtype=torch.long), total_tokens=torch.full((batch,), 10 * n),
                        upper=upper, beats=beats)
    bf16 = mode.startswith("bf16")
    bf16_attention = mode == "bf16, bf16 attention"
    loss_fn = torch_loss if mode.endswith("F.cross_entropy") else prior_module.token_cross_entropy

    def step() -> None:
        default, default_loss = transformer.fp32_attention, prior_module.token_cross_entropy
        prior_module.token_cross_entropy = loss_fn
        if bf16_attention:  # what autocast alone does: attention in bf16 as well
            transformer.fp32_attention = lambda q: False
        try:
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = model(codes, cond).loss
            loss.backward()
            optimiser.step()
        finally:
            transformer.fp32_attention, prior_module.token_cross_entropy = default, default_loss

    return step


PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
            torch.ops.aten.baddbmm.default}


@dataclass(frozen=True)
class TensorSpec:
    """What a replayed product needs of a recorded tensor argument."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def random(self, generator: torch.Generator) -> torch.Tensor:
        """A random tensor of this shape, dtype and layout (strides over storage just large enough)."""
        size = 1 + sum((n - 1) * step for n, step in zip(self.shape, self.stride))
        return torch.randn(size, generator=generator).to(self.dtype).as_strided(self.shape, self.stride)


class _RecordProducts(TorchDispatchMode):
    """Records each matrix product run under it: (op, its arguments with tensors as `TensorSpec`, kwargs)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            described = [TensorSpec(tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a
                         for a in args]
            self.calls.append((func, described, dict(kwargs)))
        return func(*args, **kwargs)


def products_of(step) -> list[tuple]:
    """The matrix products one call of `step` runs, in order (see `_RecordProducts`)."""
    recorder = _RecordProducts()
    with recorder:
        step()
    return recorder.calls


def replay_products(calls: list[tuple], seed: int = 0):
    """A closure running the same products alone, on random tensors laid out as the recorded ones."""
    g = torch.Generator().manual_seed(seed)
    prepared = [(func, [a.random(g) if isinstance(a, TensorSpec) else a for a in described], kwargs)
                for func, described, kwargs in calls]

    def run() -> None:
        for func, args, kwargs in prepared:
            func(*args, **kwargs)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="*", default=["tiny"], help="presets whose priors to time (default tiny)")
    parser.add_argument("--jukebox", action="store_true", help="also Jukebox's test prior, factorised and dense")
    parser.add_argument("--batch", type=int, default=0, help="windows per step (default: 8 for tiny, 2 otherwise)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch-loss", action="store_true",
                        help="also time each model with F.cross_entropy in place of token_cross_entropy")
    parser.add_argument("--products", action="store_true",
                        help="also time each step's matrix products alone: the floor of a step doing the same products")
    args = parser.parse_args(argv)
    modes = MODES + (TORCH_LOSS if args.torch_loss else ())
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `housebox train` does
    if not cpu_has_native_bf16():
        print("note: this CPU has no native bf16: the bf16 columns are emulated and not what a user would run")
    models = [(name, config, args.batch or (8 if preset == "tiny" else 2))
              for preset in args.preset for name, config, _ in prior_configs(load_preset(preset))
              for name in [f"{preset}: {name}"]]
    if args.jukebox:
        models += [(name, config, args.batch or 1) for name, config in jukebox_configs()]
    cases = {(name, mode): make_case(config, batch, mode) for name, config, batch in models for mode in modes}
    for step in cases.values():  # warm up: kernels, allocations
        step()
    floors, counts = {}, {}
    if args.products:
        for key, step in cases.items():
            calls = products_of(step)  # recorded once a case: one more training step
            floors[key] = replay_products(calls)
            counts[key] = len(calls)
        for run in floors.values():
            run()
    timed = {**{(key, "step"): step for key, step in cases.items()},
             **{(key, "products"): run for key, run in floors.items()}}
    times: dict[tuple, list[float]] = {key: [] for key in timed}
    for _ in range(args.rounds):
        for key, step in timed.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    print(f"training step, ms (median of {args.rounds} interleaved rounds, {args.threads} thread(s)); "
          f"ratio = fp32 time / this time")
    print(f"| model | batch | {' | '.join(modes)} |")
    print("|---|---|" + "---|" * len(modes))
    for name, _, batch in models:
        ms = {mode: statistics.median(times[((name, mode), "step")]) * 1000 for mode in modes}
        cells = [f"{ms[m]:.1f} ({ms['fp32'] / ms[m]:.2f}x)" for m in modes]
        print(f"| {name} | {batch} | {' | '.join(cells)} |")
    if floors:
        print(f"\nmatrix products alone, ms (the floor of a step doing the same products; its share of the step; "
              f"median of {args.rounds} rounds)")
        print(f"| model | products a step | {' | '.join(modes)} |")
        print("|---|---|" + "---|" * len(modes))
        for name, _, _ in models:
            cells = []
            for mode in modes:
                floor = statistics.median(times[((name, mode), "products")]) * 1000
                step_ms = statistics.median(times[((name, mode), "step")]) * 1000
                cells.append(f"{floor:.1f} ({100 * floor / step_ms:.0f}%)")
            print(f"| {name} | {counts[(name, 'fp32')]} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
