"""Multi-scale STFT discriminator and the adversarial losses that sharpen the VQ-VAE decoders.

The decoders, trained on L2 and spectral-magnitude losses only, average what they cannot tell apart into
a noise floor. A discriminator that looks at complex spectrograms at several resolutions (the idea of
EnCodec, Défossez et al. 2022; MelGAN / HiFi-GAN style feature matching) pushes them toward audio that
is sharp in time and in pitch. Shapes: waveforms Tensor[B x 1 x T]; each scale returns logits
Tensor[B x 1 x frames x bins'] and its feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from housebox.models.losses import default_fft_sizes


@dataclass(frozen=True)
class DiscriminatorConfig:
    sample_rate: int = 44100
    width: int = 32  # channels of every convolution
    fft_sizes: tuple[int, ...] = ()  # () = default_fft_sizes(sample_rate): the spectral loss's resolutions

    def __post_init__(self) -> None:
        object.__setattr__(self, "fft_sizes", tuple(int(n) for n in self.fft_sizes))
        if self.width < 1 or any(n < 16 or n & (n - 1) for n in self.fft_sizes):
            raise ValueError(f"discriminator: width must be >= 1 and FFT sizes powers of two >= 16, got "
                             f"width {self.width}, fft_sizes {self.fft_sizes}")

    def sizes(self) -> tuple[int, ...]:
        return self.fft_sizes or default_fft_sizes(self.sample_rate)


class STFTDiscriminator(nn.Module):
    """One resolution: real and imaginary STFT parts as two channels, 2-D convolutions over (time, frequency)
    with growing dilation in time and stride 2 in frequency."""

    def __init__(self, n_fft: int, width: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.layers = nn.ModuleList([nn.Conv2d(2, width, (3, 9), padding=(1, 4))])
        for dilation in (1, 2, 4):
            self.layers.append(nn.Conv2d(width, width, (3, 9), stride=(1, 2), dilation=(dilation, 1),
                                         padding=(dilation, 4)))
        self.layers.append(nn.Conv2d(width, width, (3, 3), padding=(1, 1)))
        self.out = nn.Conv2d(width, 1, (3, 3), padding=(1, 1))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        spec = torch.stft(audio[:, 0].float(), self.n_fft, hop_length=self.hop, window=self.window,
                          return_complex=True)  # (B, bins, frames)
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, frames, bins)
        features = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            features.append(x)
        return self.out(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.scales = nn.ModuleList(STFTDiscriminator(n, config.width) for n in config.sizes())

    def forward(self, audio: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        """Waveform Tensor[B x 1 x T] -> per scale (logits, feature maps)."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"discriminator: expected Tensor[B x 1 x T], got {tuple(audio.shape)}")
        return [scale(audio) for scale in self.scales]


def discriminator_hinge_loss(real: list[tuple[Tensor, list[Tensor]]], fake: list[tuple[Tensor, list[Tensor]]]) -> Tensor:
    """Hinge loss of the discriminator: real logits pushed above +1, decoded ones below -1 (mean over scales)."""
    losses = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(real, fake)]
    return torch.stack(losses).mean()


def generator_hinge_loss(fake: list[tuple[Tensor, list[Tensor]]]) -> Tensor:
    """Hinge loss of the decoder: its audio's logits pushed above +1 (mean over scales)."""
    return torch.stack([F.relu(1 - f).mean() for f, _ in fake]).mean()


def feature_matching_loss(real: list[tuple[Tensor, list[Tensor]]], fake: list[tuple[Tensor, list[Tensor]]]) -> Tensor:
    """L1 distance between the discriminator's feature maps of real and decoded audio, each relative to the
    mean magnitude of the real map (so every layer counts alike), averaged over layers and scales."""
    terms = []
    for (_, real_maps), (_, fake_maps) in zip(real, fake):
        for r, f in zip(real_maps, fake_maps):
            r = r.detach()
            terms.append((f - r).abs().mean() / (r.abs().mean() + 1e-5))
    return torch.stack(terms).mean()
