"""`housebox train vqvae`: the VQ-VAE's step function, evaluation hook and data, handed to the shared loop."""

from __future__ import annotations

from pathlib import Path

import torch

from housebox.config import as_dict, build
from housebox.data.dataset import AudioDataConfig, training_chunks, validation_clips
from housebox.models.reconstruction import level_metrics, reconstruct
from housebox.models.vqvae import VQVAE, VQVAEConfig
from housebox.train.loop import StepOutput, TrainConfig, TrainResult, train

SELECT = "mean_spectral_convergence_db"  # the validation value that picks the kept weights (lower is better)


def vqvae_step(model: torch.nn.Module, batch: torch.Tensor) -> StepOutput:
    out = model(batch)
    metrics = {"recon_loss": out.recon_loss, "spectral_loss": out.spectral_loss, "commit_loss": out.commit_loss}
    if getattr(model, "module", model).config.mel_weight > 0:  # DDP wraps the model
        metrics["mel_loss"] = out.mel_loss
    for level, m in enumerate(out.levels):
        metrics[f"l{level}/usage"] = m.usage
        metrics[f"l{level}/recon_loss"] = m.recon_loss
    return StepOutput(loss=out.loss, metrics=metrics)


def make_eval_fn(data_dir: Path, config: VQVAEConfig, multiple: int):
    """Per-level spectral convergence on fixed validation clips, and its mean over levels (SELECT);
    audio to TensorBoard."""

    clips = validation_clips(data_dir, config.sample_rate, seconds=2.0, max_tracks=4, multiple=multiple)

    def evaluate(model: VQVAE, step: int, writer) -> dict[str, float]:
        recons, codes = reconstruct(model, clips)
        results = {}
        for report in level_metrics(model, clips, recons, codes):
            results[f"l{report.level}/spectral_convergence_db"] = report.spectral_convergence_db
            results[f"l{report.level}/codes_used_percent"] = report.codes_used_percent
        levels = [v for k, v in results.items() if k.endswith("/spectral_convergence_db")]
        results[SELECT] = sum(levels) / len(levels)
        if writer is not None:
            if step == 0 or not getattr(evaluate, "logged_original", False):
                writer.add_audio("original", clips[0, 0], step, sample_rate=config.sample_rate)
                evaluate.logged_original = True
            for level, recon in enumerate(recons):
                writer.add_audio(f"reconstruction/level_{level}", recon[0, 0].clamp(-1, 1), step,
                                 sample_rate=config.sample_rate)
        return results

    return evaluate


def train_vqvae(data_dir: str | Path, out_dir: str | Path, preset: dict[str, dict], resume: bool = False,
                device: str = "auto", progress: bool = True) -> TrainResult:
    data_dir = Path(data_dir)
    model_config = build(VQVAEConfig, preset.get("vqvae"), "vqvae")
    train_config = build(TrainConfig, preset.get("vqvae_train"), "vqvae_train")
    data_config = build(AudioDataConfig, preset.get("vqvae_data"), "vqvae_data")
    torch.manual_seed(train_config.seed)
    model = VQVAE(model_config)
    multiple = model.multiple()
    batches = training_chunks(data_dir, model_config.sample_rate, multiple, data_config.chunk_seconds,
                              train_config.batch_size)
    describe = {
        "kind": "vqvae",
        "model": as_dict(model_config),
        "data": {"dir": str(data_dir.resolve()), **as_dict(data_config), "chunk_samples": batches.chunk,
                 "train_tracks": len(batches.rows)},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return train(model, step_fn=vqvae_step, batch_fn=batches, out_dir=out_dir, config=train_config,
                 describe=describe, eval_fn=make_eval_fn(data_dir, model_config, multiple), resume=resume,
                 device=device, progress=progress, select=SELECT)
