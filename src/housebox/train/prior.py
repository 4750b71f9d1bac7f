"""`housebox train prior` / `train upsampler`: priors over the code cache, through the shared loop."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from housebox.config import as_dict, build
from housebox.data.dataset import CodeWindows, PriorBatch, tracks_for
from housebox.data.labels import Vocabulary
from housebox.data.prepare import read_manifest
from housebox.models.conditioning import Labels
from housebox.models.prior import Conditioning, Prior, PriorConfig, mask_positions
from housebox.train.loop import StepOutput, TrainConfig, TrainResult, move_to, train

DERIVED = ("level", "codebook_size", "n_artists", "n_genres", "sample_rate", "hop", "timing",
           "upper_codebook_size", "upper_ratio")


def code_cache_meta(data_dir: Path) -> dict:
    path = data_dir / "codes" / "meta.json"
    if not path.exists():
        raise ValueError(f"{data_dir}: no code cache; run `housebox encode --data {data_dir} --vqvae VQVAE_DIR` first")
    return json.loads(path.read_text())


def prior_config(section: dict, level: int, meta: dict, vocab: Vocabulary, name: str) -> PriorConfig:
    """The preset's section plus what the data decides (vocabularies, hops, level above)."""
    clash = sorted(set(section) & set(DERIVED))
    if clash:
        raise ValueError(f"{', '.join(clash)} in section {name} come from the data and cannot be set")
    levels = len(meta["hops"])
    if not 0 <= level < levels:
        raise ValueError(f"level {level} out of range: the code cache has levels 0..{levels - 1}")
    top = level == levels - 1
    derived = dict(level=level, codebook_size=meta["codebook_size"], n_artists=len(vocab.artists),
                   n_genres=len(vocab.genres), sample_rate=meta["sample_rate"], hop=meta["hops"][level], timing=top,
                   upper_codebook_size=0 if top else meta["codebook_size"],
                   upper_ratio=1 if top else meta["hops"][level + 1] // meta["hops"][level])
    return build(PriorConfig, {**section, **derived}, name)


def conditioning(batch: PriorBatch, upsampler: bool) -> Conditioning:
    return Conditioning(labels=Labels(artist=batch.artist, genres=batch.genres), start=batch.start,
                        total_tokens=batch.total, upper=batch.upper if upsampler else None,
                        beats=batch.beats if batch.beats.shape[1] else None)


def code_windows(data_dir: Path, split: str, config: PriorConfig, batch_size: int, vocab: Vocabulary) -> CodeWindows:
    """Windows of one split for a prior of this config (the split's segments, its beat grids when clocked)."""
    rows = tracks_for(data_dir, split, config.sample_rate)
    windows = CodeWindows(data_dir, rows, config.level, config.n_ctx, batch_size, vocab, config.max_genres,
                          ratio=config.upper_ratio, upper=config.is_upsampler,
                          seconds_per_token=config.hop / config.sample_rate, beat_clock=config.beat_clock)
    if config.beat_clock and all(g is None for g in windows.grids):
        raise ValueError(f"{data_dir}: no beat grids for the beat clock; run `housebox prepare` again to add them "
                         f"(or --set {'upsampler' if config.is_upsampler else 'prior'}.beat_clock=false)")
    return windows


def artist_tempi(rows: list[dict]) -> dict[str, float]:
    """Each artist's median track tempo (BPM): where the beat clock runs when sampling asks for no tempo."""
    tempi: dict[str, list[float]] = {}
    for row in rows:
        if row.get("bpm"):
            tempi.setdefault(row["artist"], []).append(float(row["bpm"]))
    return {artist: round(float(np.median(values)), 2) for artist, values in sorted(tempi.items())}


def drop_clock(beats: Tensor | None, p: float, generator: torch.Generator | None = None) -> Tensor | None:
    """Each window's beat positions replaced by NaN (clock unknown) with probability p, for guidance."""
    if beats is None or p <= 0:
        return beats
    mask = torch.rand(beats.shape[0], generator=generator).to(beats.device) < p  # (B,)
    return torch.where(mask[:, None], torch.full_like(beats, float("nan")), beats)


def corrupt_upper(upper: Tensor | None, p: float, codebook_size: int) -> Tensor | None:
    """Each code of the level above replaced by a uniformly random one with probability p (training only)."""
    if upper is None or p <= 0:
        return upper
    replace = torch.rand(upper.shape).to(upper.device) < p
    return torch.where(replace, torch.randint(0, codebook_size, upper.shape).to(upper.device), upper)


def make_step(config: PriorConfig):
    def prior_step(model: torch.nn.Module, batch: PriorBatch) -> StepOutput:
        prior = model.module if hasattr(model, "module") else model
        cond = conditioning(batch, config.is_upsampler)
        cond = dataclasses.replace(cond, labels=prior.labels.drop(cond.labels, config.label_dropout),
                                   beats=drop_clock(cond.beats, config.clock_dropout),
                                   upper=corrupt_upper(cond.upper, config.upper_noise, config.upper_codebook_size))
        hidden = mask_positions(batch.mask, config.mask_span) if config.masked else None
        out = model(batch.codes, cond, batch.mask, hidden)
        return StepOutput(loss=out.loss, metrics={"bits_per_token": out.loss.detach() / math.log(2)})

    return prior_step


@torch.no_grad()
def bits_per_token(prior: Prior, batch: PriorBatch) -> float:
    """Teacher-forced cross-entropy of `prior` on a batch already on its device, in bits per token.
    A masked model is scored on the positions a fixed draw of the training schedule hides (seed 0)."""
    hidden = None
    if prior.config.masked:
        hidden = mask_positions(batch.mask, prior.config.mask_span, torch.Generator().manual_seed(0))
    out = prior(batch.codes, conditioning(batch, prior.config.is_upsampler), batch.mask, hidden)
    return float(out.loss) / math.log(2)


def make_eval_fn(windows: CodeWindows, config: PriorConfig, data_dir: Path, vqvae_dir: str | None):
    """Validation bits per token on fixed windows; for the top prior, a decoded sample in TensorBoard."""
    batch = windows.fixed(8)

    def evaluate(model: Prior, step: int, writer) -> dict[str, float]:
        device = next(model.parameters()).device
        moved = move_to(batch, device)
        results = {"bits_per_token": bits_per_token(model, moved)}
        if writer is not None and not config.is_upsampler and vqvae_dir and Path(vqvae_dir).exists():
            from housebox.generate.sampling import sample_codes
            from housebox.models.load import load_vqvae

            vqvae = load_vqvae(vqvae_dir, device)
            labels = Labels(artist=moved.artist[:1], genres=moved.genres[:1])
            codes = sample_codes(model, n_tokens=config.n_ctx, labels=labels, total_tokens=config.n_ctx,
                                 generator=torch.Generator().manual_seed(step), progress=False)
            audio = vqvae.decode(codes, config.level)[0, 0].float().clamp(-1, 1).cpu()
            writer.add_audio("sample", audio, step, sample_rate=config.sample_rate)
        return results

    return evaluate


def train_prior(data_dir: str | Path, out_dir: str | Path, level: int, preset: dict[str, dict], upsampler: bool,
                resume: bool = False, device: str = "auto", progress: bool = True) -> TrainResult:
    data_dir = Path(data_dir)
    name = "upsampler" if upsampler else "prior"
    meta = code_cache_meta(data_dir)
    vocab = Vocabulary.load(data_dir / "labels.json")
    config = prior_config(dict(preset.get(name) or {}), level, meta, vocab, name)
    if upsampler != config.is_upsampler:
        top = len(meta["hops"]) - 1
        raise ValueError(f"level {level} needs `train {'upsampler' if config.is_upsampler else 'prior'}`: "
                         f"the top-level prior is level {top}, upsamplers are levels 0..{top - 1}")
    train_config = build(TrainConfig, preset.get(f"{name}_train"), f"{name}_train")
    torch.manual_seed(train_config.seed)
    model = Prior(config)

    train_windows = code_windows(data_dir, "train", config, train_config.batch_size, vocab)
    describe = {
        "kind": name,
        "level": level,
        "model": as_dict(config),
        "vocabulary": {"artists": list(vocab.artists), "genres": list(vocab.genres)},
        "artist_bpm": artist_tempi(read_manifest(data_dir)),
        "data": {"dir": str(data_dir.resolve()), "vqvae": meta.get("vqvae"), "vqvae_sha256": meta.get("weights_sha256")},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    eval_fn = make_eval_fn(code_windows(data_dir, "valid", config, 8, vocab), config, data_dir, meta.get("vqvae"))
    return train(model, step_fn=make_step(config), batch_fn=train_windows, out_dir=out_dir, config=train_config,
                 describe=describe, eval_fn=eval_fn, resume=resume, device=device, progress=progress,
                 select="bits_per_token")
