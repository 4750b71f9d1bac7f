"""How well the VQ-VAE reconstructs held-out audio, level by level, and how it uses its codebooks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from housebox.data.dataset import validation_clips
from housebox.models.reconstruction import LevelReport, level_metrics, reconstruct
from housebox.models.vqvae import VQVAE


@dataclass(frozen=True)
class VQVAEReport:
    tracks: int
    seconds: float
    levels: list[LevelReport]

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_vqvae(model: VQVAE, data_dir: str | Path, out_dir: str | Path | None = None,
                   seconds: float = 8.0, max_tracks: int = 16) -> VQVAEReport:
    """Reconstruction metrics per level on validation tracks; with `out_dir`, also JSON and PNGs."""
    config = model.config
    clips = validation_clips(data_dir, config.sample_rate, seconds, max_tracks, model.multiple())
    recons, codes = reconstruct(model, clips)
    report = VQVAEReport(tracks=clips.shape[0], seconds=round(clips.shape[0] * clips.shape[-1] / config.sample_rate, 2),
                         levels=level_metrics(model, clips, recons, codes))
    if out_dir is not None:
        write_report(report, Path(out_dir), clips, recons, codes, model)
    return report


def write_report(report: VQVAEReport, out_dir: Path, clips: Tensor, recons: list[Tensor], codes: list[Tensor],
                 model: VQVAE) -> None:
    from housebox.report.plots import save_histogram, save_spectrograms
    from housebox.store import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "vqvae_eval.json", report.to_dict())
    sr = model.config.sample_rate
    titles = ["original"] + [
        f"level {r.level} (hop {r.hop}, {r.bitrate_kbps:.1f} kbps): SC {r.spectral_convergence_db:.1f} dB, "
        f"SI-SDR {r.si_sdr_db:.1f} dB" for r in report.levels
    ]
    signals = [clips[0, 0].numpy()] + [recon[0, 0].numpy() for recon in recons]
    save_spectrograms(out_dir / "vqvae_spectrograms.png", signals, sr, titles)
    panels = {}
    for r, level_codes in zip(report.levels, codes):
        counts = torch.bincount(level_codes.flatten(), minlength=model.config.codebook_size)
        ordered = torch.sort(counts, descending=True).values.numpy()
        panels[f"level {r.level}: {r.codes_used_percent:.0f}% of codes used, perplexity {r.perplexity:.0f}"] = ordered
    save_histogram(out_dir / "vqvae_codebook_usage.png", panels, xlabel="codes, most used first")


def print_report(report: VQVAEReport) -> None:
    print(f"VQ-VAE on {report.tracks} validation clips ({report.seconds:.0f} s):")
    print(" level  hop   kbps  SC dB  MR-STFT  mel-L1  SI-SDR dB  codes used  perplexity")
    for r in report.levels:
        print(f"  {r.level:>3}  {r.hop:>4}  {r.bitrate_kbps:5.1f}  {r.spectral_convergence_db:5.1f}  {r.mr_stft:7.3f}"
              f"  {r.mel_l1:6.3f}  {r.si_sdr_db:9.1f}  {r.codes_used_percent:9.1f}%  {r.perplexity:10.1f}")
