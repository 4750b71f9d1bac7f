"""GPU check (`make gpu-check`): on a CUDA machine, under 8 minutes, does housebox train, sample and fit as planned?

    python bench/gpu_check.py            # about 4-6 minutes on one GPU (each part has a time budget, below)
    python bench/gpu_check.py --quick    # about 2-3 minutes: a 12-layer prior for the memory part, fewer tokens

Three parts, each within its own time budget (a part that runs out skips what is left and says so):
 1. tests (budget 270 s, --quick 210 s): `pytest -m cuda -q tests/test_cuda.py` in a subprocess: every model
    a few bf16 training steps on the GPU through the real entry points, seeded GPU sampling, the KV-cached step
    against the full forward at `jukebox` width, DDP over nccl when there are 2 GPUs; pass / fail / skip counts;
 2. peak training memory (budget 100 s, --quick 60 s): a few training steps of the `jukebox` preset's top prior
    (617 M parameters, width 1024, 48 layers, n_ctx 8192; `--set prior.depth=N` for a shallower one, --quick
    uses 12 layers) as the shared loop takes them (`housebox.train.loop`): bf16 autocast, gradient clipping,
    fused AdamW and an EMA copy of the weights, at the preset's batch with checkpoint_blocks, then at batch 1
    without checkpointing where `housebox plan` says it fits. CUDA's peak allocated bytes
    (`torch.cuda.max_memory_allocated`) beside `housebox plan`'s estimate, and their ratio;
 3. sampling speed (budget 50 s, --quick 30 s): tokens per second of `sample_codes` (what `housebox sample`
    runs: fp32, KV cache) for a `jukebox`-width top prior (width 1024, 8 heads of 128, row / column /
    prev_block attention, n_ctx 8192) of --sample-depth layers (default 8, --quick 4) at batch 1 and 8,
    random weights (speed does not depend on training), median of 3 runs after a warm-up;
 4. upsampling (budget 40 s, --quick 25 s): the `jukebox` level-0 upsampler at --sample-depth layers, both
    kinds at batch 1: tokens per second of the autoregressive one (--sample-tokens tokens, KV cache) against
    the masked one (`sample_masked` at sampling's defaults, 4 passes a window, windows 7/8 of a window apart,
    over two windows' worth of tokens), and their ratio: what the masked kind gains on this GPU.
Then ONE markdown table, to paste into the README.

Without CUDA it prints one line and exits 0. Exit status 1 when a test fails or a part raises.
`--device cpu` (a debugging aid, not in --help) runs parts 2 and 3 on the CPU at a tiny size to catch
Python errors; memory figures are then left out (CUDA's allocator statistics only).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from housebox.config import apply_overrides, build, load_preset
from housebox.data.dataset import PriorBatch
from housebox.generate.sampling import sample_codes, sample_masked
from housebox.models.conditioning import Labels
from housebox.models.prior import Prior, PriorConfig
from housebox.train.loop import TrainConfig, _ema_update, _weight_decay_groups, move_to
from housebox.train.plan import gib, plan_prior, prior_configs
from housebox.train.prior import make_step

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"tests": 270, "memory": 100, "speed": 50, "upsample": 40}  # seconds per part: 7.7 minutes in all
QUICK_BUDGETS = {"tests": 210, "memory": 60, "speed": 30, "upsample": 25}
# --device cpu: shapes small enough for one CPU core, the same code paths
CPU_DEBUG = ["prior.width=128", "prior.heads=2", "prior.depth=2", "prior.n_ctx=512",
             "upsampler.width=128", "upsampler.heads=2", "upsampler.depth=2", "upsampler.n_ctx=512"]


@dataclass(frozen=True)
class Row:
    """One row of the final table."""

    part: str
    setting: str
    result: str
    planned: str = ""
    ratio: str = ""


class Budget:
    """Seconds left for one part."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ 1. tests


def run_tests(timeout: float) -> tuple[Row, bool]:
    """`pytest -m cuda -q tests/test_cuda.py` in a subprocess (its own process group, killed at `timeout`).
    -> (table row, whether nothing failed)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and whatever it started (torchrun and its ranks)
        output, _ = proc.communicate()
        print(output[-4000:])
        return Row("tests", "`pytest -m cuda tests/test_cuda.py`", f"timed out after {timeout:.0f} s"), False
    seconds = time.perf_counter() - started
    counts = summary_counts(output)
    ok = proc.returncode == 0 and not counts.get("failed") and not counts.get("error")
    lines = output.strip().splitlines()
    print("\n".join(lines if not ok else lines[-12:]))  # all of it when something failed
    if counts:
        result = ", ".join(f"{n} {word}" for word, n in counts.items()) + f" in {seconds:.0f} s"
    else:
        result = f"pytest exited {proc.returncode} without a summary"
    return Row("tests", "`pytest -m cuda tests/test_cuda.py`", result), ok


def summary_counts(output: str) -> dict[str, int]:
    """{'passed': 9, 'skipped': 1, ...} from pytest's closing line ('9 passed, 1 skipped in 80.1s')."""
    words = r"passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?"
    for line in reversed(output.strip().splitlines()):
        found = re.findall(rf"(\d+) ({words})\b", line)
        if found and re.search(r"\bin [\d.]+s\b", line):
            counts: dict[str, int] = {}
            for n, word in found:
                word = {"errors": "error", "warnings": "warning"}.get(word, word)
                counts[word] = counts.get(word, 0) + int(n)
            return counts
    return {}


# --------------------------------------------------------------------------------- 2. peak memory


def synthetic_batch(config: PriorConfig, batch: int, seed: int = 0) -> PriorBatch:
    """A full window per item, as `CodeWindows` draws them: random codes, one artist, a 120 BPM beat grid."""
    generator = torch.Generator().manual_seed(seed)
    n = config.n_ctx
    seconds_per_token = config.hop / config.sample_rate
    genres = torch.full((batch, config.max_genres), -1, dtype=torch.long)
    genres[:, 0] = 0
    beats = (torch.arange(n) * seconds_per_token * 2.0)[None].expand(batch, n).contiguous()  # 2 beats a second
    return PriorBatch(
        codes=torch.randint(config.codebook_size, (batch, n), generator=generator),
        mask=torch.ones(batch, n, dtype=torch.bool),
        artist=torch.zeros(batch, dtype=torch.long),
        genres=genres,
        start=torch.zeros(batch, dtype=torch.long),
        total=torch.full((batch,), 4 * n, dtype=torch.long),
        upper=(torch.randint(config.upper_codebook_size, (batch, n // config.upper_ratio), generator=generator)
               if config.is_upsampler else torch.zeros(batch, 0, dtype=torch.long)),
        beats=beats if config.beat_clock else torch.zeros(batch, 0),
    )


def train_steps(config: PriorConfig, train: TrainConfig, batch: int, steps: int,
                device: torch.device) -> tuple[int | None, float, float]:
    """`steps` training steps of a fresh prior as the shared loop takes them (bf16 autocast, clipping, fused
    AdamW, EMA). -> (CUDA peak allocated bytes over the steps, None on the CPU; median seconds per step after
    the first; the last loss)."""
    torch.manual_seed(train.seed)
    with torch.device(device):  # built where it trains: no CPU copy of 600 M parameters
        model = Prior(config)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(_weight_decay_groups(model, train.weight_decay), lr=train.lr, betas=train.betas,
                                  fused=device.type in ("cpu", "cuda") or None)
    step_fn = make_step(config)
    data = move_to(synthetic_batch(config, batch), device)
    synchronize(device)
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # from here: weights + EMA (allocated) + what the steps add
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = step_fn(model, data)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        _ema_update(ema, model, train.ema_decay)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    loss = float(out.loss.detach())
    del model, ema, optimizer, out, data
    free_memory(device)
    return peak, statistics.median(seconds[1:] or seconds), loss


def memory_part(preset: dict, *, steps: int, device: torch.device, budget: Budget) -> tuple[list[Row], bool]:
    """Table rows for the top prior at the preset's batch with checkpointing, and at batch 1 without."""
    name, config, section = prior_configs(preset)[0]  # the top prior, as training builds it
    train = dataclasses.replace(build(TrainConfig, preset.get(section), section), precision="bf16")
    with torch.device("meta"):
        parameters = sum(p.numel() for p in Prior(config).parameters())
    plan = plan_prior(config, train, name, torch.bfloat16)
    as_preset = config == prior_configs(load_preset("jukebox"))[0][1]
    shape = (f"`jukebox` top prior{'' if as_preset else ' (--set)'} ({parameters / 1e6:.0f} M params, "
             f"width {config.width}, {config.depth} layers, n_ctx {config.n_ctx})")
    ok = True
    rows = []
    for batch, checkpointed in ((train.batch_size, True), (1, False)):
        setting = (f"{shape}, batch {batch}, {'checkpoint_blocks' if checkpointed else 'no checkpointing'}, "
                   f"bf16, AdamW + EMA, {steps} steps")
        planned = plan.peak(batch, checkpointed=checkpointed)
        row = {"part": "train peak memory", "setting": setting, "planned": gib(planned)}
        print(f"  {setting}: planned {gib(planned)}", flush=True)
        if budget.left() <= 0:
            rows.append(Row(**row, result=f"skipped: over the part's {budget.seconds:.0f} s budget"))
            continue
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            if planned > 0.95 * free:
                rows.append(Row(**row, result=f"does not fit: {gib(free)} free of {gib(total)}"))
                continue
        failure = None
        try:
            peak, step_seconds, loss = train_steps(dataclasses.replace(config, checkpoint_blocks=checkpointed), train,
                                                   batch, steps, device)
        except torch.cuda.OutOfMemoryError:
            failure = "out of memory"
        except Exception as error:  # noqa: BLE001 - reported in the table, the other parts still run
            failure = f"error: {type(error).__name__}: {error}"[:200]
            ok = False
        if failure is not None:  # outside the except block: the traceback no longer holds the step's tensors
            free_memory(device)
            rows.append(Row(**row, result=failure))
            print(f"    -> {failure}", flush=True)
            continue
        finite = math.isfinite(loss)
        ok = ok and finite
        speed = f"{step_seconds:.2f} s/step, loss {loss:.2f}" + ("" if finite else " (not finite!)")
        if peak is None:
            rows.append(Row(**row, result=f"(no CUDA statistics on {device.type}); {speed}"))
        else:
            rows.append(Row(**row, result=f"{gib(peak)}; {speed}", ratio=f"{peak / planned:.2f}"))
        print(f"    -> {rows[-1].result}", flush=True)
    return rows, ok


# ------------------------------------------------------------------------------------ 3. sampling speed


def timed_sampling(prior: Prior, labels: Labels, n_tokens: int, *, seed: int, compiled: bool = False) -> float:
    """Wall seconds of one `sample_codes` run of n_tokens (the GPU's queue drained before and after)."""
    device = prior.head.weight.device
    synchronize(device)
    started = time.perf_counter()
    sample_codes(prior, n_tokens=n_tokens, labels=labels, total_tokens=prior.config.n_ctx,
                 generator=torch.Generator().manual_seed(seed), progress=False, compiled=compiled)
    synchronize(device)
    return time.perf_counter() - started


def speed_part(preset: dict, *, depth: int, tokens: int, batches: list[int], rounds: int, device: torch.device,
               budget: Budget) -> tuple[list[Row], bool]:
    """Tokens per second of `sample_codes` at each batch size, median of `rounds` runs after a short warm-up."""
    _, config, _ = prior_configs(preset)[0]
    config = dataclasses.replace(config, depth=depth, checkpoint_blocks=False)
    torch.manual_seed(0)
    with torch.device(device):
        prior = Prior(config)
    prior.eval()
    tokens = min(tokens, config.n_ctx)
    setting = (f"`sample_codes`, width {config.width}, {config.heads} heads of {config.width // config.heads}, "
               f"{depth} layers, n_ctx {config.n_ctx}, {'/'.join(config.attention)}, fp32, {tokens} tokens")
    rows, ok = [], True
    # batch 1 also in bf16 (`--precision auto` on a GPU with bf16) and compiled (`--compile`: CUDA graphs)
    bf16 = copy.deepcopy(prior).to(torch.bfloat16) if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    variants = [(1, "fp32", prior, False)] + ([(1, "bf16", bf16, False), (1, "bf16, --compile", bf16, True)]
                                              if bf16 is not None else [])
    variants += [(b, "fp32", prior, False) for b in batches if b != 1]
    for b, kind, model, compiled in variants:
        genres = torch.full((b, config.max_genres), -1, dtype=torch.long, device=device)
        genres[:, 0] = 0
        labels = Labels(artist=torch.zeros(b, dtype=torch.long, device=device), genres=genres)

        label = f"{setting.replace('fp32', kind)}, batch {b}"
        if budget.left() <= 0:
            rows.append(Row("sampling speed", label, f"skipped: over the part's {budget.seconds:.0f} s budget"))
            continue
        try:
            timed_sampling(model, labels, min(64 if compiled else 32, tokens), seed=0, compiled=compiled)  # warm-up
            seconds = []
            for seed in range(1, rounds + 1):
                if seconds and budget.left() <= 0:
                    break
                seconds.append(timed_sampling(model, labels, tokens, seed=seed, compiled=compiled))
        except Exception as error:  # noqa: BLE001 - reported in the table
            rows.append(Row("sampling speed", label, f"error: {type(error).__name__}: {error}"[:200]))
            ok = False
            continue
        median = statistics.median(seconds)
        rows.append(Row("sampling speed", label, f"{b * tokens / median:,.0f} tokens/s "
                                                 f"({1000 * median / tokens:.1f} ms a step, median of {len(seconds)})"))
        print(f"  {label}: {rows[-1].result}", flush=True)
    del prior, bf16, labels
    free_memory(device)
    return rows, ok


def upsample_part(preset: dict, *, depth: int, tokens: int, device: torch.device,
                  budget: Budget) -> tuple[list[Row], bool]:
    """Level-0 upsampling at batch 1: autoregressive tokens/s against masked tokens/s (median of 3 each)."""
    rates, settings = {}, {}
    for kind in ("autoregressive", "masked"):
        section = {**preset["upsampler"], "kind": kind, "beat_clock": False}
        _, config, _ = prior_configs({**preset, "upsampler": section})[-1]  # level 0 last
        config = dataclasses.replace(config, depth=depth, checkpoint_blocks=False)
        torch.manual_seed(0)
        with torch.device(device):
            prior = Prior(config)
        prior.eval()
        n = min(tokens, config.n_ctx) if kind == "autoregressive" else 2 * config.n_ctx
        settings[kind] = (f"width {config.width}, {depth} layers, n_ctx {config.n_ctx}, {'/'.join(config.attention)}"
                          f", {n} tokens")
        labels = Labels(artist=torch.zeros(1, dtype=torch.long, device=device),
                        genres=torch.zeros(1, config.max_genres, dtype=torch.long, device=device))

        def once(model: Prior, seed: int, count: int) -> float:
            upper = torch.randint(config.upper_codebook_size, (1, count // config.upper_ratio),
                                  generator=torch.Generator().manual_seed(seed)).to(device)
            common = dict(n_tokens=count, labels=labels, upper=upper, progress=False,
                          generator=torch.Generator().manual_seed(seed))
            synchronize(device)
            started = time.perf_counter()
            if kind == "masked":
                sample_masked(model, **common)
            else:
                sample_codes(model, **common)
            synchronize(device)
            return time.perf_counter() - started

        try:
            once(prior, 0, min(n, config.n_ctx) if kind == "masked" else min(32, n))  # warm-up
            seconds = []
            for seed in range(1, 4):
                if seconds and budget.left() <= 0:
                    break
                seconds.append(once(prior, seed, n))
            rates[kind] = n / statistics.median(seconds)
        except Exception as error:  # noqa: BLE001 - reported in the table
            return [Row("upsampling", f"level 0, {kind}", f"error: {type(error).__name__}: {error}"[:200])], False
        finally:
            del prior
            free_memory(device)
        print(f"  level 0, {kind}, {settings[kind]}: {rates[kind]:,.0f} tokens/s", flush=True)
    ratio = rates["masked"] / rates["autoregressive"]
    return [Row("upsampling", f"level 0, batch 1, autoregressive ({settings['autoregressive']})",
                f"{rates['autoregressive']:,.0f} tokens/s"),
            Row("upsampling", f"level 0, batch 1, masked, 4 passes, hop 0.875 ({settings['masked']})",
                f"{rates['masked']:,.0f} tokens/s: {ratio:.1f}x the autoregressive kind")], True


# ------------------------------------------------------------------------------------------ table


def describe_device(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device.type} (debug run: no CUDA figures), torch {torch.__version__}"
    props = torch.cuda.get_device_properties(device)
    count = torch.cuda.device_count()
    return (f"{props.name} ({props.total_memory / 1024**3:.0f} GiB){f' x {count}' if count > 1 else ''}, "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}")


def markdown_table(rows: list[Row]) -> str:
    lines = ["| part | setting | measured | `housebox plan` | measured / plan |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.part} | {r.setting} | {r.result} | {r.planned} | {r.ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter budgets, a 12-layer prior for the memory part, 4 layers and fewer tokens for speed")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a field of the jukebox preset for parts 2 and 3, e.g. prior.depth=24")
    parser.add_argument("--steps", type=int, default=3, help="training steps per memory case (default 3)")
    parser.add_argument("--sample-depth", type=int, default=None, help="layers of the sampling prior (default 8, --quick 4)")
    parser.add_argument("--sample-tokens", type=int, default=None, help="tokens per sampling run (default 512, --quick 256)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out part 1 (the pytest run)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing to check on this machine")
        return 0
    device = torch.device(args.device, torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    overrides = (["prior.depth=12"] if args.quick else []) + (CPU_DEBUG if device.type == "cpu" else []) + args.set
    preset = apply_overrides(load_preset("jukebox"), overrides)
    depth = args.sample_depth or (2 if device.type == "cpu" else 4 if args.quick else 8)
    tokens = args.sample_tokens or (64 if device.type == "cpu" else 256 if args.quick else 512)
    started = time.perf_counter()
    print(f"gpu-check on {describe_device(device)}; budgets {budgets} s"
          + (f"; --set {' '.join(overrides)}" if overrides else ""), flush=True)

    rows: list[Row] = []
    ok = True
    if not args.skip_tests:
        print(f"\n[1] tests: pytest -m cuda -q tests/test_cuda.py (budget {budgets['tests']} s)", flush=True)
        row, passed = run_tests(budgets["tests"])
        rows.append(row)
        ok = ok and passed
    print(f"\n[2] peak training memory against `housebox plan` (budget {budgets['memory']} s)", flush=True)
    memory_rows, passed = memory_part(preset, steps=args.steps, device=device, budget=Budget(budgets["memory"]))
    rows += memory_rows
    ok = ok and passed
    print(f"\n[3] sampling speed (budget {budgets['speed']} s)", flush=True)
    speed_rows, passed = speed_part(preset, depth=depth, tokens=tokens, batches=[1, 8], rounds=3, device=device,
                                    budget=Budget(budgets["speed"]))
    rows += speed_rows
    ok = ok and passed
    print(f"\n[4] upsampling, autoregressive against masked (budget {budgets['upsample']} s)", flush=True)
    upsample_rows, passed = upsample_part(preset, depth=depth, tokens=tokens, device=device,
                                          budget=Budget(budgets["upsample"]))
    rows += upsample_rows
    ok = ok and passed

    total = time.perf_counter() - started
    print(f"\ngpu-check{' --quick' if args.quick else ''}: {describe_device(device)}; {total / 60:.1f} min "
          f"({'under' if total < 480 else 'OVER'} 8); {'all passed' if ok else 'SOMETHING FAILED (above)'}\n")
    print(markdown_table(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
