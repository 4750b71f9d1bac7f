"""`housebox demo`: the whole pipeline on the built-in corpus, on CPU, in minutes.

corpus -> prepare -> `train all` (VQ-VAE, code cache, top prior, two masked upsamplers) -> sample three tracks
per artist -> evaluate (does each artist keep its tempo and kick?). Everything lands under one folder;
re-running continues where the last run stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from housebox.config import apply_overrides, load_preset


@dataclass(frozen=True)
class DemoPlan:
    minutes: float  # of corpus
    vqvae_steps: int
    prior_steps: int
    upsampler_steps: int
    seconds: float  # per generated track
    per_artist: int = 1  # generated tracks per artist (the evaluation reports their median tempo)
    temperature: float = 0.95  # below 1, as Jukebox samples: fewer unlikely codes that derail the beat (README)
    overrides: tuple[str, ...] = ()
    cpu_overrides: tuple[str, ...] = ()  # only when training on a CPU with native bf16


# What it took to learn the corpus (measured; see the README): 15 minutes of audio (112 k top-level
# tokens), rotary positions and 3,000 prior steps keep each artist's tempo and kick; with 6 minutes and
# 600 steps the top prior memorised its data, with 2,000 steps and learned positions only the artist
# whose beat is a whole number of tokens kept its tempo. The upsamplers need 1,500 steps to keep the kick.
# The upsamplers are masked (4 passes a window) and learn from level-above codes with 15% of them replaced by
# random ones (`upper_noise`): trained so, they keep every artist's kick from the top prior's own codes
# (periodicity 0.28 / 0.33 / 0.28); without the noise they kept 0.19 / 0.20 / 0.18 from the same top prior,
# against the 0.2 asked (README, "Masked upsamplers"). Upsampling is several times faster than autoregressive.
# On a CPU with native bf16 (AMX / AVX-512 BF16) the priors train under bf16 autocast, ~20% faster; on
# others bf16 is emulated and several times slower, so they stay fp32 (on CUDA `auto` picks bf16 or fp16).
UPSAMPLERS = ("upsampler.kind=masked", "upsampler.upper_noise=0.15")
FULL = DemoPlan(minutes=15.0, vqvae_steps=400, prior_steps=3000, upsampler_steps=1500, seconds=30.0, per_artist=3,
                overrides=UPSAMPLERS,
                cpu_overrides=("prior_train.precision=bf16", "upsampler_train.precision=bf16"))
QUICK = DemoPlan(minutes=1.0, vqvae_steps=20, prior_steps=20, upsampler_steps=10, seconds=3.0, overrides=(
    *UPSAMPLERS,
    "vqvae.width=16", "vqvae.depth=1", "vqvae.codebook_size=64", "vqvae.code_width=16",
    "vqvae_data.chunk_seconds=0.256", "vqvae_train.batch_size=4",
    "prior.width=32", "prior.depth=2", "prior.n_ctx=64", "prior_train.batch_size=4",
    "upsampler.width=32", "upsampler.depth=2", "upsampler.n_ctx=64", "upsampler_train.batch_size=4",
))


_STARTED = [0.0]
RESUME_HINT = "run the same `housebox demo` command again to continue where it stopped"


def _stage(number: int, total: int, text: str) -> None:
    elapsed = time.time() - _STARTED[0]
    print(f"\n[{number}/{total}] {text}  (at {elapsed / 60:.1f} min)", flush=True)


def run_demo(out: Path, quick: bool = False, seed: int = 0, device: str = "auto") -> dict:
    from housebox.data.demo_corpus import make_demo_corpus
    from housebox.data.prepare import PrepareSettings, prepare
    from housebox.evaluate.run import evaluate_run, print_summary
    from housebox.generate.pipeline import load_run
    from housebox.train.distributed import pick_device
    from housebox.train.all import train_all
    from housebox.models.precision import cpu_has_native_bf16

    plan = QUICK if quick else FULL
    started = _STARTED[0] = time.time()
    out = Path(out)
    corpus, data, run = out / "corpus", out / "data", out / "run"
    bf16_cpu = pick_device(device).type == "cpu" and cpu_has_native_bf16()
    preset = apply_overrides(load_preset("tiny"), [
        *plan.overrides, *(plan.cpu_overrides if bf16_cpu else ()),
        f"vqvae_train.steps={plan.vqvae_steps}", f"prior_train.steps={plan.prior_steps}",
        f"upsampler_train.steps={plan.upsampler_steps}",
        f"vqvae_train.seed={seed}", f"prior_train.seed={seed}", f"upsampler_train.seed={seed}",
    ])
    sample_rate = preset["vqvae"]["sample_rate"]
    total = 5

    _stage(1, total, f"rendering {plan.minutes:g} min of built-in house music into {corpus}")
    info = make_demo_corpus(corpus, minutes=plan.minutes, seed=seed, sample_rate=22050)
    _stage(2, total, f"preparing {len(info.tracks)} tracks at {sample_rate} Hz into {data}")
    prepare(corpus, data, PrepareSettings(sample_rate=sample_rate, seed=seed), labels_csv=info.labels_csv)

    _stage(3, total, f"training every model with `train all` into {run}: the VQ-VAE ({plan.vqvae_steps} steps), "
                     f"the code cache, the top prior ({plan.prior_steps} steps) and two masked upsamplers "
                     f"({plan.upsampler_steps} steps each)")
    result = train_all(data, run, preset, minutes=None, resume=True, device=device, resume_hint=RESUME_HINT)
    if result.interrupted:  # stop the demo: the next stage must not start from a half-trained model
        raise KeyboardInterrupt

    tracks = "one" if plan.per_artist == 1 else str(plan.per_artist)
    _stage(4, total, f"sampling {tracks} {plan.seconds:g}-second track(s) per artist, then evaluating")
    loaded = load_run(run, pick_device(device))  # sampling and evaluation on the chosen device too
    report = evaluate_run(loaded, data, out / "evaluation", seconds=plan.seconds, per_artist=plan.per_artist,
                          seed=seed + 1000, temperature=plan.temperature)
    _stage(5, total, "summary")
    print_summary(report)
    minutes = (time.time() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min. Listen: open {out / 'evaluation' / 'samples'}/*/index.html")
    for artist in report["generated"]:
        print(f"  {artist['artist']}: {artist['samples_dir']}/sample_*.wav")
    print(f"plots: {out / 'evaluation' / 'evaluation.png'}, {out / 'evaluation' / 'vqvae_spectrograms.png'}, "
          f"{corpus / 'spectrogram.png'}, loss curves in {run}/*/loss.png")
    return report
