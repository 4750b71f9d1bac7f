"""`housebox train decoder`: fine-tuning of the VQ-VAE decoders, codes unchanged.

The encoders and codebooks are frozen (so the code cache and every prior trained on it stay valid); each
chosen level's decoder learns from the VQ-VAE's own L2 and spectral losses, a multi-scale log-mel loss, and,
when their weights are set, a multi-scale STFT discriminator (hinge loss) and the matching of its feature maps
on real audio. Measured on the demo corpus and on real music (README), the log-mel loss is what pays at a CPU
budget and the adversarial terms do not yet, so the presets weigh them 0. One step updates the decoders and
the discriminator together (simultaneous gradient steps, each with its own gradient-norm clip) through the
shared training loop: resume, EMA, DDP and progress as for every model. When it finishes, the decoders are
installed into the run's VQ-VAE directory as `decoders_adversarial.safetensors` beside the untouched
`model.safetensors`, and its config.json names the file (`load_vqvae(..., adversarial=False)` reads the old).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from housebox.audio.features import spectral_flatness
from housebox.config import as_dict, build
from housebox.data.dataset import training_chunks, validation_clips
from housebox.models.discriminator import (
    DiscriminatorConfig,
    MultiScaleSTFTDiscriminator,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
)
from housebox.models.load import ADVERSARIAL_DECODERS, load_vqvae
from housebox.models.losses import l2_loss, reference_spectra, spectral_and_mel_loss
from housebox.models.vqvae import VQVAE
from housebox.store import WEIGHTS, load_weights, read_config, save_weights, write_json
from housebox.train.loop import StepOutput, TrainConfig, TrainResult, train


@dataclass(frozen=True)
class DecoderTuneConfig:
    levels: tuple[int, ...] = ()  # () = every level
    adversarial_weight: float = 0.0  # the presets' values (measured, README)
    feature_weight: float = 0.0
    chunk_seconds: float = 0.5
    train_all_share: float = 0.0  # share of `train all --minutes` for this stage (0: train all skips it)
    l2_weight: float | None = None  # the reconstruction losses' weights; None: the VQ-VAE's own
    spectral_weight: float | None = None
    mel_weight: float = 5.0  # log-mel L1 at the spectral loss's FFT sizes (`losses.mel_loss`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(int(x) for x in self.levels))
        weights = (self.adversarial_weight, self.feature_weight, self.l2_weight, self.spectral_weight, self.mel_weight)
        if min(w for w in weights if w is not None) < 0 or self.chunk_seconds <= 0:
            raise ValueError("decoder: weights must be >= 0 and chunk_seconds > 0")
        if not 0 <= self.train_all_share < 1:
            raise ValueError(f"decoder.train_all_share must be in [0, 1), got {self.train_all_share}")


class DecoderGAN(nn.Module):
    """A VQ-VAE whose chosen decoders train against a discriminator; everything else frozen."""

    def __init__(self, vqvae: VQVAE, discriminator: MultiScaleSTFTDiscriminator, levels: tuple[int, ...],
                 adversarial_weight: float, feature_weight: float, l2_weight: float | None = None,
                 spectral_weight: float | None = None, mel_weight: float = 0.0) -> None:
        super().__init__()
        self.vqvae, self.discriminator = vqvae, discriminator
        self.levels = tuple(levels)
        self.adversarial_weight, self.feature_weight = adversarial_weight, feature_weight
        self.l2_weight = vqvae.config.l2_weight if l2_weight is None else l2_weight
        self.spectral_weight = vqvae.config.spectral_weight if spectral_weight is None else spectral_weight
        self.mel_weight = mel_weight
        vqvae.requires_grad_(False)
        for level in self.levels:
            vqvae.decoders[level].requires_grad_(True)

    def train(self, mode: bool = True) -> DecoderGAN:
        super().train(mode)
        self.vqvae.encoders.eval()  # frozen: the codebooks never update their EMA statistics or restart
        self.vqvae.codebooks.eval()
        return self

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameters clipped separately: the decoders, the discriminator."""
        decoders = [p for level in self.levels for p in self.vqvae.decoders[level].parameters()]
        return [decoders, list(self.discriminator.parameters())]

    @torch.no_grad()
    def latents(self, audio: Tensor, level: int) -> Tensor:
        """The quantised latents the decoder of `level` sees for audio Tensor[B x 1 x T]."""
        codebook = self.vqvae.codebooks[level]
        return codebook.dequantize(codebook.quantize(self.vqvae.encoders[level](audio)))

    def forward(self, audio: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Audio Tensor[B x 1 x T] -> (decoders' loss + discriminator's loss, detached metrics)."""
        spectral_terms = self.spectral_weight > 0 or self.mel_weight > 0  # both read the same spectrograms
        spectra = reference_spectra(audio, fft_sizes=self.vqvae.fft_sizes) if spectral_terms else None
        fakes = [self.vqvae.decoders[level](self.latents(audio, level)) for level in self.levels]

        real = self.discriminator(audio)  # the discriminator's own step: real vs decoded, decoders untouched
        fake = self.discriminator(torch.cat(fakes).detach())
        repeat = len(self.levels)
        real_repeated = [(r.repeat(repeat, 1, 1, 1), maps) for r, maps in real]
        d_loss = discriminator_hinge_loss(real_repeated, fake)

        self.discriminator.requires_grad_(False)  # the decoders' step: gradients reach the decoders only
        try:
            metrics: dict[str, Tensor] = {}
            g_loss = audio.new_zeros(())
            for level, decoded in zip(self.levels, fakes):
                judged = self.discriminator(decoded)
                recon = l2_loss(audio, decoded)
                spectral, mel = spectral_and_mel_loss(spectra, decoded, self.vqvae.config.sample_rate,
                                                      spectral=self.spectral_weight > 0, mel=self.mel_weight > 0)
                adversarial = generator_hinge_loss(judged)
                features = feature_matching_loss(real, judged)
                g_loss = g_loss + (self.l2_weight * recon + self.spectral_weight * spectral + self.mel_weight * mel
                                   + self.adversarial_weight * adversarial + self.feature_weight * features)
                metrics.update({f"l{level}/recon_loss": recon.detach(), f"l{level}/spectral_loss": spectral.detach(),
                                f"l{level}/mel_loss": mel.detach(),
                                f"l{level}/adversarial": adversarial.detach(), f"l{level}/features": features.detach()})
        finally:
            self.discriminator.requires_grad_(True)
        metrics.update({"decoder_loss": g_loss.detach(), "discriminator_loss": d_loss.detach(),
                        "real_logit": torch.stack([r.mean() for r, _ in real]).mean().detach(),
                        "fake_logit": torch.stack([f.mean() for f, _ in fake]).mean().detach()})
        return g_loss + d_loss, metrics


def decoder_step(model: nn.Module, batch: Tensor) -> StepOutput:
    loss, metrics = model(batch)
    return StepOutput(loss=loss, metrics=metrics)


def make_eval_fn(data_dir: Path, model: DecoderGAN):
    """Per trained level: spectral convergence and spectral flatness of the reconstructions of fixed
    validation clips, beside the clips' own flatness."""
    from housebox.models.losses import spectral_convergence_db

    def flatness(audio: Tensor) -> float:
        return float(np.median([spectral_flatness(clip[0]) for clip in audio.float().cpu().numpy()]))

    config = model.vqvae.config
    clips = validation_clips(data_dir, config.sample_rate, seconds=2.0, max_tracks=4,
                             multiple=model.vqvae.multiple())
    reference_flatness = flatness(clips)

    def evaluate(ema: DecoderGAN, step: int, writer) -> dict[str, float]:
        device = next(ema.parameters()).device
        audio = clips.to(device)
        results = {"heldout_flatness": reference_flatness}
        for level in ema.levels:
            decoded = ema.vqvae.decoders[level](ema.latents(audio, level)).float()
            results[f"l{level}/spectral_convergence_db"] = float(spectral_convergence_db(audio, decoded).mean())
            results[f"l{level}/flatness"] = flatness(decoded)
            if writer is not None:
                writer.add_audio(f"decoded/level_{level}", decoded[0, 0].clamp(-1, 1).cpu(), step,
                                 sample_rate=config.sample_rate)
        return results

    return evaluate


def discriminator_config(preset: dict[str, dict], sample_rate: int) -> DiscriminatorConfig:
    """The preset's discriminator section at the VQ-VAE's sample rate."""
    return build(DiscriminatorConfig, {**(preset.get("discriminator") or {}), "sample_rate": sample_rate},
                 "discriminator")


def find_vqvae_dir(run_dir: Path) -> Path:
    for sub in sorted(p for p in run_dir.iterdir() if (p / "config.json").exists()):
        if read_config(sub).get("describe", {}).get("kind") == "vqvae":
            return sub
    raise ValueError(f"{run_dir}: no VQ-VAE model directory inside (train one with `housebox train vqvae`)")


def install_decoders(vqvae_dir: Path, decoder_dir: Path, levels: tuple[int, ...], step: int) -> Path:
    """Copy the fine-tuned decoders (EMA) into the VQ-VAE directory and name them in its config.json."""
    state = load_weights(decoder_dir / WEIGHTS)
    prefix = "vqvae."
    keep = {k[len(prefix):]: v for k, v in state.items()
            if any(k.startswith(f"{prefix}decoders.{level}.") for level in levels)}
    target = vqvae_dir / ADVERSARIAL_DECODERS
    save_weights(target, keep, metadata={"levels": ",".join(map(str, levels)), "step": str(step)})
    meta = read_config(vqvae_dir)
    meta["decoders"] = {"file": ADVERSARIAL_DECODERS, "levels": list(levels), "step": step,
                        "trained_in": str(decoder_dir.resolve())}
    write_json(vqvae_dir / "config.json", meta)
    return target


def train_decoder(run_dir: str | Path, data_dir: str | Path, out_dir: str | Path | None, preset: dict[str, dict],
                  levels: tuple[int, ...] = (), resume: bool = False, device: str = "auto",
                  progress: bool = True) -> TrainResult:
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "decoder"
    vqvae_dir = find_vqvae_dir(run_dir)
    tune = build(DecoderTuneConfig, preset.get("decoder"), "decoder")
    train_config = build(TrainConfig, preset.get("decoder_train"), "decoder_train")
    vqvae = load_vqvae(vqvae_dir, "cpu", adversarial=False)
    config = vqvae.config
    levels = tuple(levels) or tune.levels or tuple(range(config.levels))
    for level in levels:
        if not 0 <= level < config.levels:
            raise ValueError(f"--level {level}: the VQ-VAE has levels 0..{config.levels - 1}")
    disc_config = discriminator_config(preset, config.sample_rate)
    torch.manual_seed(train_config.seed)
    model = DecoderGAN(vqvae, MultiScaleSTFTDiscriminator(disc_config), levels, tune.adversarial_weight,
                       tune.feature_weight, tune.l2_weight, tune.spectral_weight, tune.mel_weight)
    batches = training_chunks(data_dir, config.sample_rate, vqvae.multiple(), tune.chunk_seconds,
                              train_config.batch_size)
    describe = {
        "kind": "decoder",
        "model": {"vqvae": as_dict(config), "discriminator": as_dict(disc_config), "levels": list(levels),
                  **as_dict(tune)},
        "vqvae_dir": str(vqvae_dir.resolve()),
        "data": {"dir": str(data_dir.resolve()), "chunk_samples": batches.chunk, "train_tracks": len(batches.rows)},
        "parameters": {"decoders": sum(p.numel() for g in model.clip_groups()[:1] for p in g),
                       "discriminator": sum(p.numel() for p in model.discriminator.parameters())},
    }
    result = train(model, step_fn=decoder_step, batch_fn=batches, out_dir=out_dir, config=train_config,
                   describe=describe, eval_fn=make_eval_fn(data_dir, model), resume=resume, device=device,
                   progress=progress, clip_groups=model.clip_groups)
    main_process = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if not result.interrupted and main_process and (out_dir / WEIGHTS).exists():
        install_decoders(vqvae_dir, out_dir, levels, result.step)
    return result
