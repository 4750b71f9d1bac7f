"""How well the VQ-VAE reconstructs held-out audio, level by level, and how it uses its codebooks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from housebox.data.dataset import tracks_for
from housebox.data.prepare import load_track
from housebox.models.losses import mel_l1, multi_resolution_stft_loss, si_sdr, spectral_convergence_db
from housebox.models.vqvae import VQVAE


@dataclass(frozen=True)
class LevelReport:
    level: int
    hop: int
    tokens_per_second: float
    bitrate_kbps: float
    spectral_convergence_db: float  # lower is better
    mr_stft: float  # multi-resolution STFT distance, lower is better
    mel_l1: float  # lower is better
    si_sdr_db: float  # higher is better
    codes_used_percent: float
    perplexity: float


@dataclass(frozen=True)
class VQVAEReport:
    tracks: int
    seconds: float
    levels: list[LevelReport]

    def to_dict(self) -> dict:
        return asdict(self)


def validation_clips(data_dir: str | Path, sample_rate: int, seconds: float, max_tracks: int, multiple: int) -> Tensor:
    """One clip from the middle of each held-out piece (a validation track, or a track's held-out tail):
    Tensor[N x 1 x T], T a multiple of `multiple`."""
    rows = tracks_for(data_dir, "valid", sample_rate)[:max_tracks]
    length = max(multiple, int(seconds * sample_rate) // multiple * multiple)
    clips = np.zeros((len(rows), 1, length), dtype=np.float32)
    for i, row in enumerate(rows):
        audio = load_track(data_dir, row["id"])
        lo, hi = (min(len(audio), int(round(t * sample_rate))) for t in row["segment"])
        start = lo + max(0, (hi - lo - length) // 2)
        window = audio[start : min(hi, start + length)]
        clips[i, 0, : len(window)] = window / 32768.0
    return torch.from_numpy(clips)


@torch.no_grad()
def reconstruct(model: VQVAE, clips: Tensor, batch_size: int = 4) -> tuple[list[Tensor], list[Tensor]]:
    """(recons per level [N x 1 x T], codes per level [N x T/hop]) through encode -> decode."""
    device = next(model.parameters()).device
    recons: list[list[Tensor]] = [[] for _ in model.config.hops]
    codes: list[list[Tensor]] = [[] for _ in model.config.hops]
    for start in range(0, clips.shape[0], batch_size):
        batch = clips[start : start + batch_size].to(device)
        for level, level_codes in enumerate(model.encode(batch)):
            codes[level].append(level_codes.cpu())
            recons[level].append(model.decode(level_codes, level).float().cpu())
    return [torch.cat(r) for r in recons], [torch.cat(c) for c in codes]


def level_metrics(model: VQVAE, clips: Tensor, recons: list[Tensor], codes: list[Tensor]) -> list[LevelReport]:
    config = model.config
    out = []
    for level, (recon, level_codes) in enumerate(zip(recons, codes)):
        counts = torch.bincount(level_codes.flatten(), minlength=config.codebook_size).double()
        probs = counts / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        tokens = config.tokens_per_second(level)
        out.append(LevelReport(
            level=level,
            hop=config.hops[level],
            tokens_per_second=round(tokens, 2),
            bitrate_kbps=round(tokens * math.log2(config.codebook_size) / 1000, 3),
            spectral_convergence_db=float(spectral_convergence_db(clips, recon).mean()),
            mr_stft=float(multi_resolution_stft_loss(clips, recon)),
            mel_l1=float(mel_l1(clips, recon, config.sample_rate).mean()),
            si_sdr_db=float(si_sdr(clips, recon).mean()),
            codes_used_percent=float(100.0 * (counts > 0).float().mean()),
            perplexity=float(entropy.exp()),
        ))
    return out


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
    from housebox.plots import save_histogram, save_spectrograms
    from housebox.train.checkpoint import write_json

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
