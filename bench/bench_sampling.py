"""Sampling speed of the prior's transformer on CPU: KV-cache steps versus a no-cache baseline.

Jukebox's test prior (`--shape jukebox`, the default): width 128, depth 4, 2 heads, context 1024, 2048
codes, attention a quarter as wide and an MLP ratio of 1 (0.59 M parameters); housebox's reference
prior (`--shape reference`: full-width attention, MLP ratio 4, 1.47 M); or the `small` preset's top prior
(`--shape small-top`: width 256, depth 8, 4 heads, 6.3 M, 25 MB of weights: more than a core's cache).
Dense and factorised attention, and dense with rotary positions (what it costs to rotate queries and keys).
Every cached variant packs the layer weights in one column slice per thread (the default of
`Transformer.new_cache`) but "factorised, unpacked", which reads the module's own tensors.
A throwaway token + position embedding and a linear head (no LayerNorm) around
`housebox.models.transformer.Transformer` make each step token-in, logits-out; the next token is
drawn by inverse-CDF sampling (softmax -> cumsum -> searchsorted, one uniform per row).

Every round measures every variant once, interleaved, so that the machine's drift hits them alike;
the figures are medians over rounds. Tokens/s counts every sampled token (batch x steps). Ratios are to
this run's own no-cache baseline and to the floor at batch 1, measured here too: one pass reading every
weight a step reads (transformer and head, from the cache, as one sum) bounds the steps per second.
Jukebox's side is not in the project: `../shared/jukebox-bench/` times its code beside housebox's on the
same shape, and the README gives those figures with how they were measured.

    PYTHONPATH=src .venv/bin/python bench/bench_sampling.py [--rounds 5] [--threads 1 2] [--batches 1 8]
    PYTHONPATH=src taskset -c 1 .venv/bin/python bench/bench_sampling.py --compiled [--shape jukebox]

`--compiled` times the real path instead, `housebox.generate.sampling.sample_codes` on a `Prior` of the
shape (labels, timing, the progress bar), eager against `compiled=True` (`housebox sample --compile`: one
torch.compile graph a token with inductor's C++ wrapper, the attention over a fixed window of the cache as
plain products that inductor fuses, the draw inside the graph, guards checked on the first two steps only),
interleaved, with the time the first call takes to compile. The toy loop above has no compiled variant: its
lessons went into the real step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from housebox.models.transformer import Transformer, TransformerConfig

SHAPES = {
    "jukebox": dict(width=128, depth=4, heads=2, attention_width=0.25, mlp_ratio=1.0),
    "reference": dict(width=128, depth=4, heads=2, attention_width=1.0, mlp_ratio=4.0),
    "small-top": dict(width=256, depth=8, heads=4, attention_width=1.0, mlp_ratio=4.0),  # `small`'s top prior
}


@dataclass(frozen=True)
class ToyPrior:
    """The transformer plus throwaway embeddings and head; vocab codes, n_ctx positions."""

    transformer: Transformer
    token_embedding: Tensor  # (vocab, D)
    position_embedding: Tensor  # (n_ctx, D)
    head: Tensor  # (vocab, D)


def make_prior(*, attention: tuple[str, ...], vocab: int = 2048, seed: int = 0, rotary: bool = False,
               shape: str = "jukebox") -> ToyPrior:
    """The prior of one SHAPES with random weights (GPT-2 init for the transformer)."""
    torch.manual_seed(seed)
    config = TransformerConfig(n_ctx=1024, attention=attention, block_size=32, rotary=rotary, **SHAPES[shape])
    transformer = Transformer(config).eval()
    D = config.width
    return ToyPrior(
        transformer=transformer,
        token_embedding=torch.randn(vocab, D) * 0.02,
        position_embedding=torch.randn(config.n_ctx, D) * 0.01,
        head=torch.randn(vocab, D) * 0.02,
    )


def inverse_cdf_sample(logits: Tensor, uniform: Tensor) -> Tensor:
    """One draw per row: logits Tensor[B x V], uniform Tensor[B x 1] in [0, 1) -> LongTensor[B x 1]."""
    cdf = torch.softmax(logits, dim=-1).cumsum_(dim=-1)  # (B, V)
    return torch.searchsorted(cdf, uniform).clamp_(max=logits.shape[-1] - 1)


def sample_cached(prior: ToyPrior, *, batch: int, tokens: int, seed: int = 0,
                  slices: int | None | str = "auto") -> Tensor:
    """Ancestral sampling with the KV cache: LongTensor[B x tokens]. `slices`: how the cache packs the layer
    weights (`Transformer.new_cache`; None: the module's own tensors)."""
    step = prior.transformer.step
    with torch.inference_mode():
        cache = prior.transformer.new_cache(batch, slices=slices)
        uniforms = torch.rand(tokens, batch, 1, generator=torch.Generator().manual_seed(seed))  # all at once
        out = torch.zeros(batch, tokens, dtype=torch.long)
        token = torch.zeros(batch, 1, dtype=torch.long)  # (B, 1)
        for pos in range(tokens):
            x = F.embedding(token, prior.token_embedding) + prior.position_embedding[pos]  # (B, 1, D)
            h = step(x, cache, pos)  # (B, 1, D)
            token = inverse_cdf_sample(F.linear(h[:, 0], prior.head), uniforms[pos])  # (B, 1)
            out[:, pos : pos + 1] = token
    return out


def sample_uncached(prior: ToyPrior, *, batch: int, tokens: int, seed: int = 0) -> Tensor:
    """The baseline: a full forward over the growing prefix for every token. LongTensor[B x tokens]."""
    with torch.inference_mode():
        uniforms = torch.rand(tokens, batch, 1, generator=torch.Generator().manual_seed(seed))  # (tokens, B, 1)
        out = torch.zeros(batch, tokens + 1, dtype=torch.long)  # column 0 is the start token
        for pos in range(tokens):
            x = F.embedding(out[:, : pos + 1], prior.token_embedding) + prior.position_embedding[: pos + 1]  # (B, T, D)
            h = prior.transformer(x)  # (B, T, D)
            out[:, pos + 1 : pos + 2] = inverse_cdf_sample(F.linear(h[:, -1], prior.head), uniforms[pos])
    return out[:, 1:]


def weights_floor(prior: ToyPrior, repeats: int = 200) -> float:
    """Steps per second if a step did nothing but read the weights it needs once (median of 5 timings of
    `repeats` sums over one flat copy of them: the transformer's parameters and the head)."""
    flat = torch.cat([p.detach().reshape(-1) for p in prior.transformer.parameters()] + [prior.head.reshape(-1)])
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            flat.sum()
        times.append((time.perf_counter() - start) / repeats)
    return 1.0 / statistics.median(times)


@dataclass(frozen=True)
class Rate:
    """Tokens per second of one run, by the wall clock and by this process's CPU time.

    On a shared machine the CPU-time figure is what the code would do alone on its cores; with
    several threads it counts all of them (spinning included).
    """

    wall: float
    cpu: float


def measure(run: Callable[[], Tensor], *, batch: int, tokens: int) -> Rate:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return Rate(wall=batch * tokens / (time.perf_counter() - wall), cpu=batch * tokens / (time.process_time() - cpu))


def usable_threads(requested: list[int], *, busy_ok: bool) -> list[int]:
    """The thread counts worth timing now: 1, and those that fit in the idle cores.

    On a busy machine OpenMP threads wait on descheduled peers at every barrier: two threads
    with one idle core ran ~10x slower than one, which measures the neighbours, not this code.
    """
    idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    kept = [count for count in requested if busy_ok or count == 1 or count <= idle + 0.5]
    if kept != requested:
        print(f"skipping {sorted(set(requested) - set(kept))} threads: load average {os.getloadavg()[0]:.1f} on"
              f" {os.cpu_count()} cores leaves {max(idle, 0.0):.1f} idle (pass --busy-ok to time them anyway)")
    return kept or [1]


def real_prior(attention: tuple[str, ...], shape: str, seed: int = 0):
    """A `Prior` of the shape (2048 codes, n_ctx 1024, rows of 64 as Jukebox's blocks of 16), eval mode."""
    from housebox.models.prior import Prior, PriorConfig

    torch.manual_seed(seed)
    config = PriorConfig(level=2, codebook_size=2048, n_artists=1, n_genres=1, sample_rate=22050, hop=128, n_ctx=1024,
                         attention=attention, block_size=64, timing=True, **SHAPES[shape])
    return Prior(config).eval()


def compiled_section(args: argparse.Namespace) -> None:
    """`sample_codes` eager against compiled, one thread, interleaved rounds: tokens/s and compiled / eager."""
    from housebox.generate.sampling import sample_codes
    from housebox.models.conditioning import Labels

    torch.set_num_threads(1)

    def run(prior, batch: int, compiled: bool) -> Tensor:
        genres = torch.full((batch, 4), -1, dtype=torch.long)
        genres[:, 0] = 0
        labels = Labels(artist=torch.zeros(batch, dtype=torch.long), genres=genres)
        return sample_codes(prior, n_tokens=args.tokens, labels=labels, generator=torch.Generator().manual_seed(0),
                            progress=False, compiled=compiled)

    priors = {"dense": real_prior(("dense",), args.shape),
              "row/column/prev_block": real_prior(("row", "column", "prev_block"), args.shape)}
    print(f"shape {args.shape}, the real sampling path (sample_codes), 1 thread, torch {torch.__version__}")
    for name, prior in priors.items():
        for batch in args.batches:
            start = time.perf_counter()
            differ = run(prior, batch, True) != run(prior, batch, False)  # (B, tokens)
            # the fused attention rounds differently (~1e-7), so a draw on a boundary can differ, and the rest
            # of that row with it: where the first difference falls
            first = [int(row.nonzero()[0]) if row.any() else args.tokens for row in differ]
            print(f"{name}, batch {batch}: first compiled call (compiling) and an eager one"
                  f" {time.perf_counter() - start:.1f} s; rows equal to the eager codes: {first.count(args.tokens)} of"
                  f" {batch}, first difference at {min(first)}")
    results: dict[tuple[str, int, bool], list[float]] = {}
    for _ in range(args.rounds):
        for name, prior in priors.items():
            for batch in args.batches:
                for compiled in (False, True):
                    rate = measure(lambda: run(prior, batch, compiled), batch=batch, tokens=args.tokens)
                    results.setdefault((name, batch, compiled), []).append(rate.wall)
    floor = weights_floor(make_prior(attention=("dense",), shape=args.shape))  # the same weights a step reads
    print(f"floor at batch 1: reading the weights once takes {1e6 / floor:.0f} us -> {floor:,.0f} tokens/s")
    print(f"{'attention':22s} {'batch':>5s} {'eager tok/s':>11s} {'compiled tok/s':>14s} {'compiled / eager':>16s}"
          f" {'of floor (eager, compiled)':>27s}")
    for name in priors:
        for batch in args.batches:
            eager, compiled = (results[(name, batch, c)] for c in (False, True))
            ratio = statistics.median(c / e for c, e in zip(compiled, eager))  # per round
            of_floor = "-" if batch > 1 else "%.0f%%, %.0f%%" % tuple(100 * statistics.median(r) / floor
                                                                     for r in (eager, compiled))
            print(f"{name:22s} {batch:5d} {statistics.median(eager):11.0f} {statistics.median(compiled):14.0f}"
                  f" {ratio:15.2f}x {of_floor:>27s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens sampled per sequence with the cache")
    parser.add_argument("--baseline-tokens", type=int, default=256, help="tokens sampled per sequence without it")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--busy-ok", action="store_true", help="time thread counts above the idle cores too")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="jukebox",
                        help="Jukebox's test prior (default) or housebox's reference prior")
    parser.add_argument("--compiled", action="store_true",
                        help="time the real path, sample_codes, eager against compiled (sample --compile)")
    args = parser.parse_args()
    if args.compiled:
        compiled_section(args)
        return
    threads = usable_threads(args.threads, busy_ok=args.busy_ok)

    priors = {
        "dense": make_prior(attention=("dense",), shape=args.shape),
        "row/column/prev_block": make_prior(attention=("row", "column", "prev_block"), shape=args.shape),
        "dense, rotary": make_prior(attention=("dense",), rotary=True, shape=args.shape),  # rotating q and k
    }
    parameters = sum(p.numel() for p in priors["dense"].transformer.parameters())
    print(f"shape {args.shape}: {parameters / 1e6:.2f} M transformer parameters")
    variants: dict[str, tuple[Callable[[int], Tensor], int]] = {}
    for name, prior in priors.items():
        variants[f"cache {name}"] = (lambda b, p=prior: sample_cached(p, batch=b, tokens=args.tokens), args.tokens)
    factorised = priors["row/column/prev_block"]
    variants["cache factorised, unpacked"] = (  # the layer weights as the module holds them, one slice
        lambda b: sample_cached(factorised, batch=b, tokens=args.tokens, slices=None), args.tokens
    )
    dense = priors["dense"]
    variants["no cache dense"] = (
        lambda b: sample_uncached(dense, batch=b, tokens=args.baseline_tokens), args.baseline_tokens
    )

    for name, prior in priors.items():  # the cache changes the speed, not the samples
        same = torch.equal(sample_cached(prior, batch=2, tokens=96), sample_uncached(prior, batch=2, tokens=96))
        print(f"{name}: cached and uncached sampling draw the same 2 x 96 tokens: {same}")
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {args.rounds} rounds, medians of tokens/s (batch x steps / s)")
    for count in threads:  # warm-up
        torch.set_num_threads(count)
        for run, _ in variants.values():
            for batch in args.batches:
                run(batch)
    results: dict[tuple[str, int, int], list[Rate]] = {}
    for _ in range(args.rounds):
        for count in threads:
            torch.set_num_threads(count)
            for name, (run, tokens) in variants.items():
                for batch in args.batches:
                    rate = measure(lambda: run(batch), batch=batch, tokens=tokens)
                    results.setdefault((name, count, batch), []).append(rate)

    torch.set_num_threads(1)
    floor = weights_floor(priors["dense"])
    print(f"load average before/after: {load_before} / {os.getloadavg()} on {os.cpu_count()} cores")
    print(f"floor at batch 1: reading the weights once takes {1e6 / floor:.0f} us -> {floor:,.0f} tokens/s (1 thread)")
    print(f"{'variant':28s} {'threads':>7s} {'batch':>5s} {'tokens/s':>9s} {'vs no cache':>11s} {'of floor':>8s}"
          f" {'CPU-time tokens/s':>17s}")  # fmt: skip
    for (name, count, batch), rates in results.items():
        wall = statistics.median(rate.wall for rate in rates)
        cpu = statistics.median(rate.cpu for rate in rates)
        baseline = statistics.median(rate.wall for rate in results[("no cache dense", count, batch)])
        of_floor = f"{100 * wall / floor:7.0f}%" if batch == 1 else f"{'-':>8s}"
        print(f"{name:28s} {count:7d} {batch:5d} {wall:9.0f} {wall / baseline:10.1f}x {of_floor} {cpu:17.0f}")
    print("packed / unpacked layer weights, factorised (medians of this run):")
    for count in threads:
        for batch in args.batches:
            packed, unpacked = (statistics.median(rate.wall for rate in results[(name, count, batch)])
                                for name in ("cache row/column/prev_block", "cache factorised, unpacked"))
            print(f"  {count} thread(s), batch {batch}: {packed / unpacked:.2f}x")


if __name__ == "__main__":
    main()
