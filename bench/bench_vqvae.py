"""VQ-VAE speed on CPU: what encoding, decoding and training cost, and how the step compares with Jukebox.

    PYTHONPATH=src python bench/bench_vqvae.py            # 1 and 2 threads, 2-5 minutes (longer under load)
    PYTHONPATH=src python bench/bench_vqvae.py --quick    # 1 thread, about a minute

Prints three tables:
 1. encode / decode real-time factors per level of the `small` preset model (seconds of audio per
    wall second, batch 1, random weights: speed does not depend on training);
 2. training-step throughput of the `tiny` and `small` presets at their own batch and chunk sizes,
    fp32 and bf16 autocast (audio seconds per wall second);
 3. a Jukebox-size VQ-VAE (width 48, depth 4, 2048 x 64 codes, 3 levels, ~1.45 M parameters) on 1 s
    of 22.05 kHz audio, batch 1: seconds per training step, each as a ratio to this run's own
    baseline (the channel-major layout it replaced, fp32, one thread), then what each speed idea gives
    on that step (the time-major layout, the per-tap weight gradients of fp32 (against torch's own; under
    bf16 both rows run torch's), bf16 autocast, a fused AdamW for the loop, and, timed on their
    own, the nearest-code search and the shared reference STFT). Jukebox's own step is not in the
    project: `../shared/jukebox-bench/` times it beside this one, and the README gives those figures.

A training step here is what the shared loop does (`housebox.train.loop`): zero grads, forward under
autocast, backward, gradient clipping, AdamW, EMA of the weights. Machines are shared, so variants are
measured in interleaved rounds (every variant once per round) and the tables give medians and minima;
the load average is printed before and after each table.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

# oneDNN keeps 1024 compiled convolution kernels by default. One model in one precision needs about
# 150 (training shapes: forward, backward-data, backward-weights), but the eight interleaved variants
# of table 3 need more, and with the default they evict each other's kernels and every step
# recompiles (a bf16 step measured 2x slower than alone).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

import torch  # noqa: E402  (after the oneDNN setting, which is read when torch loads oneDNN)
from torch import Tensor, nn  # noqa: E402

from housebox.config import build, load_preset  # noqa: E402
from housebox.data.dataset import AudioDataConfig  # noqa: E402
from housebox.models.codebook import nearest_codes  # noqa: E402
from housebox.models.losses import multi_resolution_stft_loss, reference_spectra, spectral_loss  # noqa: E402
from housebox.models.vqvae import VQVAE, Decoder, Encoder, VQVAEConfig, use_tap_gradients  # noqa: E402
from housebox.train.loop import TrainConfig, _ema_update, _weight_decay_groups  # noqa: E402
from housebox.train.vqvae import vqvae_step  # noqa: E402

JUKEBOX_SIZE = VQVAEConfig(sample_rate=22050, downs=(3, 5, 7), width=48, depth=4, codebook_size=2048, code_width=64)


# ------------------------------------------------------------------------------------ measuring


@dataclass(frozen=True)
class Case:
    """One thing to time: `run()` does one unit of work with torch set to `threads` intra-op threads."""

    name: str
    threads: int
    run: Callable[[], None]


@dataclass(frozen=True)
class Timing:
    """Wall seconds of one case over the rounds."""

    name: str
    threads: int
    median: float
    minimum: float
    rounds: int


def measure(cases: list[Case], *, rounds: int, warmup: int = 1) -> list[Timing]:
    """Time every case once per round, interleaved, after `warmup` untimed calls each."""
    seconds: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for _ in range(warmup):
        for case in cases:
            torch.set_num_threads(case.threads)
            case.run()
    for _ in range(rounds):
        for i, case in enumerate(cases):
            torch.set_num_threads(case.threads)
            start = time.perf_counter()
            case.run()
            seconds[i].append(time.perf_counter() - start)
    return [
        Timing(case.name, case.threads, statistics.median(seconds[i]), min(seconds[i]), rounds)
        for i, case in enumerate(cases)
    ]


def load_average() -> str:
    """The 1-minute load average (other workers share these cores)."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def test_signal(*, batch: int, samples: int, sample_rate: int, seed: int = 0) -> Tensor:
    """Tensor[batch x 1 x samples]: a chord of three sines plus quiet white noise (deterministic)."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / sample_rate  # (T,)
    chord = sum(0.2 * torch.sin(2 * torch.pi * f * t) for f in (110.0, 277.2, 440.0))
    return (chord + 0.02 * torch.randn(batch, 1, samples, generator=generator)).float()


def preset_configs(name: str) -> tuple[VQVAEConfig, TrainConfig, AudioDataConfig]:
    """The VQ-VAE model, training and data settings of a preset."""
    preset = load_preset(name)
    return (
        build(VQVAEConfig, preset.get("vqvae"), "vqvae"),
        build(TrainConfig, preset.get("vqvae_train"), "vqvae_train"),
        build(AudioDataConfig, preset.get("vqvae_data"), "vqvae_data"),
    )


def chunk_samples(model: VQVAE, seconds: float) -> int:
    """Samples in a training chunk of `seconds`, rounded as `train_vqvae` does."""
    multiple = model.multiple()
    return max(multiple, round(seconds * model.config.sample_rate / multiple) * multiple)


# ---------------------------------------------------------------------------------- train steps


def train_step(
    model: VQVAE, batch: Tensor, *, bf16: bool, lr: float = 3e-4, fused_adamw: bool = False
) -> Callable[[], None]:
    """One optimiser step as the shared loop takes it, on a fixed batch Tensor[B x 1 x T].
    fused_adamw: AdamW(fused=True) instead of the loop's default (a Python loop over parameters on CPU)."""
    config = TrainConfig()
    optimizer = torch.optim.AdamW(
        _weight_decay_groups(model, config.weight_decay), lr=lr, betas=config.betas, fused=fused_adamw or None
    )
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            out = vqvae_step(model, batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        _ema_update(ema, model, config.ema_decay)

    return step


class ChannelMajorEncoder(Encoder):
    """The encoder as it ran before the time-major layout: nn.Conv1d on Tensor[B x C x T] throughout."""

    forward = nn.Sequential.forward


class ChannelMajorDecoder(Decoder):
    """The decoder as it ran before the time-major layout."""

    forward = nn.Sequential.forward


def channel_major(model: VQVAE) -> VQVAE:
    """The same model (shared weights) with channel-major encoders and decoders, for comparison."""
    for encoder in model.encoders:
        encoder.__class__ = ChannelMajorEncoder
    for decoder in model.decoders:
        decoder.__class__ = ChannelMajorDecoder
    return model


def torch_weight_gradients(model: VQVAE) -> VQVAE:
    """The same model with torch's own convolution weight gradients instead of `TapConvolution`'s (fp32, CPU)."""
    return use_tap_gradients(model, False)


def fresh_model(config: VQVAEConfig, seed: int = 0) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(config)


def check_layouts_agree(config: VQVAEConfig, batch: Tensor) -> float:
    """Largest relative difference between the time-major and channel-major encoders and decoders
    (same weights) on batch Tensor[B x 1 x T]; raises AssertionError above 1e-4."""
    now, before = fresh_model(config).eval(), channel_major(fresh_model(config)).eval()
    worst = 0.0
    with torch.no_grad():
        for level in range(config.levels):
            z_now, z_before = now.encoders[level](batch), before.encoders[level](batch)
            y_now, y_before = now.decoders[level](z_before), before.decoders[level](z_before)
            for a, b in ((z_now, z_before), (y_now, y_before)):
                worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)))
    if worst > 1e-4:
        raise AssertionError(f"time-major and channel-major layouts disagree: relative difference {worst:.2e}")
    return worst


# ------------------------------------------------------------------------------------- sections


def print_rows(header: str, rows: list[str]) -> None:
    print(header)
    for row in rows:
        print(row)
    print()


def section_real_time(*, seconds: float, threads: list[int], rounds: int) -> None:
    """Table 1: encode / decode / both, seconds of audio per wall second, per level (batch 1)."""
    config, _, _ = preset_configs("small")
    model = fresh_model(config).eval()
    signal = test_signal(batch=1, samples=int(seconds * config.sample_rate), sample_rate=config.sample_rate)
    x = model.pad_to_multiple(signal)  # (1, 1, T)
    audio_seconds = x.shape[-1] / config.sample_rate
    codes = model.encode(x)
    cases = []
    for n in threads:
        for level in range(config.levels):
            cases.append(Case(f"encode l{level}", n, lambda level=level: model.encode(x, levels=[level])))
            cases.append(Case(f"decode l{level}", n, lambda level=level: model.decode(codes[level], level)))

    def decode_inference_mode() -> None:
        with torch.inference_mode():
            model.decode(codes[0], 0)

    cases.append(Case("decode l0 inference_mode", threads[0], decode_inference_mode))
    print(f"[1] small preset (width {config.width}, depth {config.depth}, {config.sample_rate} Hz), "
          f"{audio_seconds:.1f} s of audio, batch 1, fp32, eval; {load_average()}")
    timings = {(t.name, t.threads): t for t in measure(cases, rounds=rounds)}
    rows = []
    for n in threads:
        for level in range(config.levels):
            enc, dec = timings[(f"encode l{level}", n)], timings[(f"decode l{level}", n)]
            rows.append(f"  {n:>7}  {level:>5}  {config.hops[level]:>4}  {audio_seconds / enc.median:9.1f}x"
                        f"  {audio_seconds / dec.median:9.1f}x  {audio_seconds / (enc.median + dec.median):9.1f}x")
    print_rows("  threads  level   hop     encode     decode       both   (audio s per wall s, medians)", rows)
    plain, inference = timings[("decode l0", threads[0])], timings[("decode l0 inference_mode", threads[0])]
    print(f"  decode l0 under torch.inference_mode instead of no_grad: {audio_seconds / inference.median:.1f}x "
          f"vs {audio_seconds / plain.median:.1f}x ({threads[0]} thread(s))\n")


def section_train_throughput(*, presets: list[str], threads: list[int], rounds: int) -> None:
    """Table 2: training steps of each preset at its own batch and chunk, fp32 and bf16."""
    print("[2] training step (forward + backward + clip + AdamW + EMA) at each preset's batch and chunk; "
          f"{load_average()}")
    rows = []
    for name in presets:
        config, train_config, data_config = preset_configs(name)
        models = {bf16: fresh_model(config) for bf16 in (False, True)}
        samples = chunk_samples(models[False], data_config.chunk_seconds)
        batch = test_signal(batch=train_config.batch_size, samples=samples, sample_rate=config.sample_rate)
        audio = batch.shape[0] * samples / config.sample_rate
        steps = {bf16: train_step(models[bf16], batch, bf16=bf16, lr=train_config.lr) for bf16 in models}
        cases = [Case(f"{'bf16' if bf16 else 'fp32'}", n, steps[bf16]) for n in threads for bf16 in (False, True)]
        for t in measure(cases, rounds=rounds):
            chunk = samples / config.sample_rate
            rows.append(f"  {name:>6}  {train_config.batch_size:>5} x {chunk:5.3f} s  {t.name:>5}"
                        f"  {t.threads:>7}  {t.median:8.3f} s  {t.minimum:8.3f} s  {audio / t.median:8.2f}")
    print_rows("  preset  batch x chunk      prec  threads    median       min   audio s / wall s", rows)
    print(f"  after: {load_average()}\n")


def section_jukebox(*, threads: list[int], rounds: int, quick: bool) -> None:
    """Table 3: the Jukebox-size step, as a ratio to the channel-major fp32 baseline, and what each idea gives."""
    config = JUKEBOX_SIZE
    probe = fresh_model(config)
    batch = probe.pad_to_multiple(test_signal(batch=1, samples=config.sample_rate, sample_rate=config.sample_rate))
    parameters = sum(p.numel() for p in probe.parameters())
    agreement = check_layouts_agree(config, batch)
    print(f"[3] Jukebox-size VQ-VAE: width {config.width}, depth {config.depth}, {config.codebook_size} x "
          f"{config.code_width} codes, {config.levels} levels, {parameters / 1e6:.2f} M parameters; "
          f"{batch.shape[-1]} samples (1 s at {config.sample_rate} Hz padded to a multiple of {probe.multiple()}), "
          f"batch 1; {load_average()}")
    print(f"  time-major and channel-major layouts agree to {agreement:.1e} (relative, fp32)")
    variants = {
        "time-major layout (now)": lambda bf16: train_step(fresh_model(config), batch, bf16=bf16),
        "channel-major (before)": lambda bf16: train_step(channel_major(fresh_model(config)), batch, bf16=bf16),
        "torch's weight gradients": lambda bf16: train_step(torch_weight_gradients(fresh_model(config)), batch,
                                                            bf16=bf16),
    }
    if not quick:
        variants["now + fused AdamW (loop)"] = lambda bf16: train_step(fresh_model(config), batch, bf16=bf16,
                                                                        fused_adamw=True)
    cases = []
    for n in threads:
        for name, make in variants.items():
            if n != threads[0] and name != "time-major layout (now)":
                continue  # the comparisons are made at the first thread count only
            for bf16 in (False, True):
                cases.append(Case(f"{name}|{'bf16' if bf16 else 'fp32'}", n, make(bf16)))
    rows = []
    timings = measure(cases, rounds=rounds)
    baseline = next(t.median for t in timings if t.name == "channel-major (before)|fp32" and t.threads == threads[0])
    for t in timings:
        name, precision = t.name.split("|")
        rows.append(f"  {name:<26} {precision:>5}  {t.threads:>7}  {t.median:7.3f} s  {t.minimum:7.3f} s"
                    f"  {baseline / t.median:6.2f}x")
    header = f"  variant                     prec  threads   median      min   vs channel-major fp32 ({baseline:.3f} s)"
    print_rows(header, rows)
    if not quick:
        section_parts(batch, rounds=rounds, threads=threads[0])
    print(f"  after: {load_average()}\n")


def old_nearest_codes(vectors: Tensor, embeddings: Tensor) -> Tensor:
    """The nearest-code search as it was: one full M x K distance matrix, then argmin. -> LongTensor[M]."""
    distances = embeddings.pow(2).sum(dim=1) - 2.0 * vectors @ embeddings.t()  # (M, K)
    return distances.argmin(dim=1)


def section_parts(batch: Tensor, *, rounds: int, threads: int) -> None:
    """Two smaller ideas timed on their own: the codebook search and the shared reference STFT."""
    config = JUKEBOX_SIZE
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(batch.shape[-1] // config.hops[0], config.code_width, generator=generator)  # (M, D)
    embeddings = torch.randn(config.codebook_size, config.code_width, generator=generator)  # (K, D)
    if not torch.equal(old_nearest_codes(vectors, embeddings), nearest_codes(vectors, embeddings)):
        raise AssertionError("the new nearest-code search disagrees with the old one")
    recons = [  # one noisy copy of the batch per level, each Tensor[1 x 1 x T]
        (batch + 0.01 * torch.randn(batch.shape, generator=generator)).requires_grad_() for _ in range(config.levels)
    ]
    sizes = VQVAE(config).fft_sizes

    def stft_per_level() -> None:
        sum(multi_resolution_stft_loss(batch, r, fft_sizes=sizes) for r in recons).backward()

    def stft_shared() -> None:
        spectra = reference_spectra(batch, fft_sizes=sizes)
        sum(spectral_loss(spectra, r) for r in recons).backward()

    cases = [
        Case("codebook search, argmin of full matrix (before)", threads,
             lambda: old_nearest_codes(vectors, embeddings)),
        Case("codebook search, chunked [z,1].[-2e,|e|^2] + min (now)", threads,
             lambda: nearest_codes(vectors, embeddings)),
        Case("3 levels' STFT loss, reference per level (before)", threads, stft_per_level),
        Case("3 levels' STFT loss, reference once (now)", threads, stft_shared),
    ]
    timings = measure(cases, rounds=3 * rounds)
    rows = [f"  {t.name:<56} {1000 * t.median:7.2f} ms  {1000 * t.minimum:7.2f} ms" for t in timings]
    print_rows(f"  parts of the step (level 0: {vectors.shape[0]} x {config.codebook_size} distances; "
               f"fwd+bwd for the STFT), {threads} thread(s)    median       min", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one thread, fewer rounds, less audio: about a minute")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="intra-op thread counts to compare (default: 1 2; --quick: 1)")
    args = parser.parse_args()
    threads = args.threads or ([1] if args.quick else [1, 2])
    if min(threads) < 1:
        parser.error("--threads must be >= 1")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}; {load_average()}\n")
    started = time.perf_counter()
    section_real_time(seconds=4.0 if args.quick else 10.0, threads=threads, rounds=2 if args.quick else 3)
    section_train_throughput(presets=["tiny"] if args.quick else ["tiny", "small"], threads=threads,
                             rounds=2 if args.quick else 3)
    section_jukebox(threads=threads, rounds=3 if args.quick else 5, quick=args.quick)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
