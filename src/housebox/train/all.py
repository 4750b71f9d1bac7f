"""`housebox train all`: the VQ-VAE, the code cache, the top prior and the upsamplers, in order.

Given a wall-clock budget (`minutes`), each training stage gets a share of it (the demo's measured
split: VQ-VAE ~20%, top prior ~55%, upsamplers the rest), and its number of steps is that share
divided by its measured step time — so every learning-rate schedule still anneals to zero within
the budget. A stage's step time is measured just before it starts (a few steps of the real model on
real-sized batches), and the time left is re-divided among the stages still to run, so a slow stage
does not eat the next one's share. Without a budget, the preset's steps are used as they are.

The plan is written to `RUN/plan.json` before any training; `--resume` keeps the steps of stages
already started and continues the one that was interrupted. Ctrl-C stops the whole run at a
checkpoint.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from housebox.config import apply_overrides, build
from housebox.data.codes import encode_dataset
from housebox.data.labels import Vocabulary
from housebox.store import write_json
from housebox.train.loop import TrainConfig, autocast_settings, move_to
from housebox.train.distributed import pick_device
from housebox.train.prior import train_prior
from housebox.train.vqvae import train_vqvae

PLAN = "plan.json"
# Shares of the training budget, from the demo (VQ-VAE 2.4, top prior 6.3, upsamplers 2.5 minutes).
SHARES = {"vqvae": 0.2, "prior": 0.56, "upsampler": 0.12}
STEP_MARGIN = 1.15  # the loop's own work per step (EMA update, data, validation, checkpoints) on top of the step


@dataclass
class Stage:
    name: str  # the model directory under the run: vqvae, prior_l2, up_l1, up_l0
    kind: str  # vqvae | prior | upsampler
    level: int | None
    share: float
    steps: int | None = None  # decided when the stage starts (or taken from the preset)
    step_seconds: float | None = None  # measured just before the stage
    started: bool = False
    finished: bool = False


@dataclass(frozen=True)
class AllResult:
    stages: list[Stage]
    interrupted: bool
    wall_seconds: float


def stages_for(preset: dict[str, dict]) -> list[Stage]:
    from housebox.models.vqvae import VQVAEConfig

    levels = build(VQVAEConfig, preset.get("vqvae"), "vqvae").levels
    top = levels - 1
    out = [Stage("vqvae", "vqvae", None, SHARES["vqvae"]), Stage(f"prior_l{top}", "prior", top, SHARES["prior"])]
    out += [Stage(f"up_l{level}", "upsampler", level, SHARES["upsampler"]) for level in range(top - 1, -1, -1)]
    from housebox.train.decoder import DecoderTuneConfig

    decoder_share = build(DecoderTuneConfig, preset.get("decoder"), "decoder").train_all_share
    if decoder_share > 0:  # the decoders of level 0 (what generation decodes from) sharpened last
        for stage in out:
            stage.share *= 1.0 - decoder_share
        out.append(Stage("decoder", "decoder", 0, decoder_share))
    return out


def _timed(step, runs: int = 3) -> float:
    """Median seconds of `step()` over `runs` calls, after one warm-up call."""
    step()
    times = []
    for _ in range(runs):
        tick = time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def _measure(model: torch.nn.Module, step_fn, batch, config: TrainConfig, device: torch.device) -> float:
    """Seconds one optimiser step of `model` takes on `batch` (forward, backward, AdamW), autocast as in training."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9)
    amp_dtype, _ = autocast_settings(config.precision, device)
    batch = move_to(batch, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = step_fn(model, batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return _timed(step) * config.grad_accum * STEP_MARGIN


def measure_vqvae_step(data_dir: Path, preset: dict[str, dict], device: torch.device) -> float:
    from housebox.data.dataset import AudioDataConfig, training_chunks
    from housebox.models.vqvae import VQVAE, VQVAEConfig
    from housebox.train.vqvae import vqvae_step

    config = build(VQVAEConfig, preset.get("vqvae"), "vqvae")
    train_config = build(TrainConfig, preset.get("vqvae_train"), "vqvae_train")
    data_config = build(AudioDataConfig, preset.get("vqvae_data"), "vqvae_data")
    model = VQVAE(config)
    chunks = training_chunks(data_dir, config.sample_rate, model.multiple(), data_config.chunk_seconds,
                             train_config.batch_size)
    return _measure(model, vqvae_step, chunks(torch.Generator().manual_seed(0)), train_config, device)


def measure_prior_step(data_dir: Path, preset: dict[str, dict], level: int, upsampler: bool,
                       device: torch.device) -> float:
    """Step time of a prior on random codes of the right shapes (the code cache may not exist yet)."""
    from housebox.data.dataset import PriorBatch
    from housebox.models.prior import Prior
    from housebox.models.vqvae import VQVAEConfig
    from housebox.train.prior import make_step, prior_config

    name = "upsampler" if upsampler else "prior"
    vq = build(VQVAEConfig, preset.get("vqvae"), "vqvae")
    meta = {"hops": list(vq.hops), "codebook_size": vq.codebook_size, "sample_rate": vq.sample_rate}
    config = prior_config(dict(preset.get(name) or {}), level, meta, Vocabulary.load(data_dir / "labels.json"), name)
    train_config = build(TrainConfig, preset.get(f"{name}_train"), f"{name}_train")
    b, n = train_config.batch_size, config.n_ctx
    g = torch.Generator().manual_seed(0)
    batch = PriorBatch(
        codes=torch.randint(0, config.codebook_size, (b, n), generator=g), mask=torch.ones(b, n, dtype=torch.bool),
        artist=torch.zeros(b, dtype=torch.long), genres=torch.zeros(b, config.max_genres, dtype=torch.long),
        start=torch.zeros(b, dtype=torch.long), total=torch.full((b,), 10 * n),
        upper=torch.randint(0, config.codebook_size, (b, n // config.upper_ratio if upsampler else 0), generator=g),
        beats=torch.rand(b, n if config.beat_clock else 0, generator=g) * 64)
    return _measure(Prior(config), make_step(config), batch, train_config, device)


def measure_decoder_step(data_dir: Path, preset: dict[str, dict], device: torch.device) -> float:
    """Step time of the adversarial decoder fine-tune of level 0 (an untrained VQ-VAE of the same shape)."""
    from housebox.data.dataset import training_chunks
    from housebox.models.discriminator import MultiScaleSTFTDiscriminator
    from housebox.models.vqvae import VQVAE, VQVAEConfig
    from housebox.train.decoder import DecoderGAN, DecoderTuneConfig, decoder_step, discriminator_config

    config = build(VQVAEConfig, preset.get("vqvae"), "vqvae")
    tune = build(DecoderTuneConfig, preset.get("decoder"), "decoder")
    train_config = build(TrainConfig, preset.get("decoder_train"), "decoder_train")
    model = DecoderGAN(VQVAE(config), MultiScaleSTFTDiscriminator(discriminator_config(preset, config.sample_rate)),
                       (0,), tune.adversarial_weight, tune.feature_weight)
    chunks = training_chunks(data_dir, config.sample_rate, model.vqvae.multiple(), tune.chunk_seconds,
                             train_config.batch_size)
    return _measure(model, decoder_step, chunks(torch.Generator().manual_seed(0)), train_config, device)


def _section(stage: Stage) -> str:
    return {"vqvae": "vqvae_train", "prior": "prior_train", "upsampler": "upsampler_train",
            "decoder": "decoder_train"}[stage.kind]


def _describe(stages: list[Stage], minutes: float | None) -> str:
    lines = [f"train all: {len(stages)} models" + (f" in {minutes:g} minutes" if minutes else ", preset steps")]
    for s in stages:
        what = {"vqvae": "VQ-VAE", "decoder": "adversarial decoder, level 0"}.get(s.kind, f"{s.kind} level {s.level}")
        steps = f"{s.steps} steps" if s.steps else "steps set when it starts"
        when = f" (~{s.steps * s.step_seconds / 60:.1f} min at {s.step_seconds:.2f} s/step)" if s.step_seconds and s.steps else ""
        share = f", {s.share:.0%} of the budget" if minutes else ""
        lines.append(f"  {s.name:<9} {what}: {steps}{when}{share}{' (done)' if s.finished else ''}")
    return "\n".join(lines)


def _load_plan(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def train_all(data_dir: str | Path, run_dir: str | Path, preset: dict[str, dict], minutes: float | None = None,
              resume: bool = False, device: str = "auto", progress: bool = True, log=print,
              resume_hint: str = "continue with the same command and --resume") -> AllResult:
    """Train every model of a run on `data_dir` into `run_dir` (see the module docstring). `resume_hint`: what
    to tell a person whose run was stopped (the demo resumes by itself)."""
    started = time.time()
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if minutes is not None and minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {minutes:g}")
    plan_path = run_dir / PLAN
    saved = _load_plan(plan_path)
    if saved and not resume:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another -o")
    stages = stages_for(preset)
    if saved:
        by_name = {s["name"]: s for s in saved["stages"]}
        stages = [Stage(**by_name[s.name]) if s.name in by_name else s for s in stages]
        minutes = saved.get("minutes")
        budget_used = float(saved.get("seconds_used", 0.0))
    else:
        budget_used = 0.0
    if minutes is None:
        for s in stages:
            s.steps = s.steps or build(TrainConfig, preset.get(_section(s)), _section(s)).steps
    torch_device = pick_device(device)
    run_dir.mkdir(parents=True, exist_ok=True)

    def save_plan() -> None:
        write_json(plan_path, {"minutes": minutes, "seconds_used": round(budget_used + time.time() - started, 1),
                               "data": str(data_dir.resolve()), "stages": [asdict(s) for s in stages]})

    save_plan()
    log(_describe(stages, minutes))
    log("  then the code cache (after the VQ-VAE, before the priors; its time comes out of what is left)")

    interrupted, encoded = False, False
    for index, stage in enumerate(stages):
        if stage.finished:
            continue
        if stage.kind != "vqvae" and not encoded:  # incremental: a cache already complete is kept as it is
            log(f"encoding {data_dir} with {run_dir / stages[0].name}")
            encode_dataset(data_dir, run_dir / stages[0].name, device=str(torch_device), progress=progress)
            encoded = True
        if minutes is not None and not stage.started:
            if stage.kind == "vqvae":
                stage.step_seconds = measure_vqvae_step(data_dir, preset, torch_device)
            elif stage.kind == "decoder":
                stage.step_seconds = measure_decoder_step(data_dir, preset, torch_device)
            else:
                stage.step_seconds = measure_prior_step(data_dir, preset, stage.level, stage.kind == "upsampler",
                                                        torch_device)
            left = minutes * 60.0 - (budget_used + time.time() - started)
            waiting = sum(s.share for s in stages[index:] if not s.finished)
            stage.steps = max(1, int(left * stage.share / waiting / stage.step_seconds))
        stage.started = True
        save_plan()
        section = _section(stage)
        overrides = [f"{section}.steps={stage.steps}"]
        current = preset.get(section) or {}
        if "eval_every" not in current:  # about ten validations (not more often than every 25 steps)
            overrides.append(f"{section}.eval_every={max(25, stage.steps // 10)}")
        stage_preset = apply_overrides(preset, overrides)
        log(f"\n[{index + 1}/{len(stages)}] {stage.name}: {stage.steps} steps "
            f"(at {(budget_used + time.time() - started) / 60:.1f} min)")
        out = run_dir / stage.name
        resuming = (out / "train_state.pt").exists()
        if stage.kind == "vqvae":
            result = train_vqvae(data_dir, out, stage_preset, resume=resuming, device=device, progress=progress)
        elif stage.kind == "decoder":
            from housebox.train.decoder import train_decoder

            result = train_decoder(run_dir, data_dir, out, stage_preset, levels=(stage.level,), resume=resuming,
                                   device=device, progress=progress)
        else:
            result = train_prior(data_dir, out, stage.level, stage_preset, upsampler=stage.kind == "upsampler",
                                 resume=resuming, device=device, progress=progress)
        if result.interrupted:
            interrupted = True
            save_plan()
            log(f"stopped in {stage.name} at step {result.step}; {resume_hint}")
            break
        stage.finished = True
        save_plan()
        if result.stop_requested:  # Ctrl-C during the stage's last step: it finished, nothing after it starts
            interrupted = True
            log(f"stopped after {stage.name}; {resume_hint}")
            break
    return AllResult(stages=stages, interrupted=interrupted, wall_seconds=time.time() - started)

