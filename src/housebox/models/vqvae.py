"""Hierarchical VQ-VAE on raw mono audio, after Jukebox (Dhariwal et al., 2020).

Every level has its own encoder and decoder straight from / to the waveform (the levels are not
stacked): level l downsamples by 2 ** downs[l] (hops 8 / 32 / 128 by default) and quantises with
its own EMA codebook. Read top-down: Conv1d, ConvTranspose1d -> ResidualUnit -> ResidualStack ->
EncoderBlock -> Encoder, DecoderBlock -> Decoder, then VQVAEConfig -> VQVAE.

Input length: T must be a multiple of `VQVAE.multiple()` (the largest hop) for `forward`, and of
the largest requested hop for `encode`; `VQVAE.pad_to_multiple` zero-pads on the right. Nothing
depends on global statistics of the input, so long tracks can be encoded chunk by chunk.

Memory layout: inside an encoder or decoder, activations travel as time-major frames,
Tensor[B x C x 1 x T] in channels-last memory (each time step's C channels side by side), and every
Conv1d runs as the equivalent 2-D convolution with a 1 x k kernel, which oneDNN (PyTorch's CPU
backend) runs faster than channel-major 1-D convolutions, most of all under bf16 autocast; 1 x 1
convolutions become plain matrix products. The parameters are the usual Conv1d ones, so weights and
checkpoints are unchanged, and the modules still accept ordinary Tensor[B x C x T] input.
bench/bench_vqvae.py measures the gain (a training step of the Jukebox-size model on one core:
about 1.2x in fp32 and 1.4x under bf16 autocast).

Weight gradients in fp32 on a CPU: oneDNN's kernel for a convolution's weight gradient slows down
more than in proportion on long frames (3-4x the forward convolution at 11,008 frames of 48
channels, 8x at 22,016), so there `TapConvolution` computes it as one matrix product per kernel tap
over the frames; the input gradient and everything else stay torch's. Under bf16 autocast, on other
devices, and without gradients the convolutions are torch's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from housebox.models.codebook import EMACodebook, QuantizedResult
from housebox.models.losses import (
    ReferenceSpectra,
    default_fft_sizes,
    l2_loss,
    reference_spectra,
    spectral_and_mel_loss,
)


class VQVAEInputError(ValueError):
    """Bad configuration, waveform or code input for the VQ-VAE."""


def to_frames(x: Tensor) -> Tensor:
    """Tensor[B x C x T] -> the same values as Tensor[B x C x 1 x T] in channels-last (time-major) memory."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (B, C, 1, T), strides (T*C, 1, T*C, C)


def from_frames(x: Tensor) -> Tensor:
    """Tensor[B x C x 1 x T] -> Tensor[B x C x T] (a view: no copy, memory stays time-major)."""
    return x.squeeze(2)


def _tap_rows(n_in: int, n_out: int, offset: int, stride: int) -> tuple[int, int]:
    """The rows [lo, hi) of an n_out-row side whose partner row t * stride + offset lies in [0, n_in)."""
    lo = -(offset // stride) if offset < 0 else 0  # ceil(-offset / stride)
    hi = min(n_out, (n_in - 1 - offset) // stride + 1) if offset <= n_in - 1 else 0
    return lo, max(lo, hi)


def _tap_products(a: Tensor, b: Tensor, *, taps: int, stride: int, padding: int, dilation: int) -> Tensor:
    """For each tap j, the sum over rows t of a[:, t]^T b[:, t * stride + j * dilation - padding] (rows outside b
    count as zeros): frames a Tensor[B x Ta x Ca], b Tensor[B x Tb x Cb] -> Tensor[Ca x Cb x taps]."""
    products = []
    for j in range(taps):
        offset = j * dilation - padding
        lo, hi = _tap_rows(b.shape[1], a.shape[1], offset, stride)
        if hi == lo:
            products.append(a.new_zeros(a.shape[2], b.shape[2]))
            continue
        first = lo * stride + offset
        partner = b[:, first : first + (hi - lo - 1) * stride + 1 : stride]  # (B, hi - lo, Cb), strided rows
        products.append(torch.bmm(a[:, lo:hi].transpose(1, 2), partner).sum(0))
    return torch.stack(products, dim=-1)


def _time_major_rows(x: Tensor) -> Tensor:
    """Frames Tensor[B x C x 1 x T] -> Tensor[B x T x C] (a view when x is time-major, else a copy)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[3], x.shape[1])


def convolve_frames(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int, dilation: int,
                    transposed: bool, output_padding: int, groups: int = 1) -> Tensor:
    """A 1-D convolution (or transposed convolution) of frames Tensor[B x Cin x 1 x T] as the 2-D one with a 1 x k
    kernel: weight Tensor[Cout x Cin/groups x 1 x k] (transposed: Tensor[Cin x Cout/groups x 1 x k])."""
    if transposed:
        return F.conv_transpose2d(x, weight, bias, stride=(1, stride), padding=(0, padding),
                                  output_padding=(0, output_padding), groups=groups, dilation=(1, dilation))
    return F.conv2d(x, weight, bias, stride=(1, stride), padding=(0, padding), dilation=(1, dilation), groups=groups)


class TapConvolution(torch.autograd.Function):
    """F.conv2d (or F.conv_transpose2d) of time-major frames Tensor[B x Cin x 1 x T] with a 1 x k kernel whose
    weight gradient is k matrix products, one per tap, over the frames (`_tap_products`); the forward
    pass and the input gradient are torch's own. See the module docstring for when it is used."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int, dilation: int,
                transposed: bool, output_padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.settings = (stride, padding, dilation, transposed, output_padding, bias is not None)
        return convolve_frames(x, weight, bias, stride, padding, dilation, transposed, output_padding)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, transposed, output_padding, has_bias = ctx.settings
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, stride], [0, padding], [1, dilation], transposed, [0, output_padding], 1,
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            # conv: out row t reads in row t * stride + j * dilation - padding through tap j;
            # transposed: in row t writes out row t * stride + j * dilation - padding
            rows_x, rows_grad = _time_major_rows(x), _time_major_rows(grad)
            a, b = (rows_x, rows_grad) if transposed else (rows_grad, rows_x)
            grad_weight = _tap_products(a, b, taps=weight.shape[-1], stride=stride, padding=padding,
                                        dilation=dilation).unsqueeze(2)  # (Cout, Cin, 1, k) or (Cin, Cout, 1, k)
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


def _tap_gradients(module: nn.Module, x: Tensor) -> bool:
    """Whether a convolution of frames x takes `TapConvolution`: fp32 on a CPU, gradients wanted, one group."""
    return (module.tap_gradients and x.device.type == "cpu" and x.dtype == torch.float32 and module.groups == 1
            and torch.is_grad_enabled() and module.weight.requires_grad and not torch.is_autocast_enabled("cpu"))


def use_tap_gradients(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every Conv1d / ConvTranspose1d of `model` to `TapConvolution`'s weight gradients where they apply
    (enabled, the default) or to torch's own (for comparison); returns the model."""
    for module in model.modules():
        if isinstance(module, (Conv1d, ConvTranspose1d)):
            module.tap_gradients = enabled
    return model


class Conv1d(nn.Conv1d):
    """nn.Conv1d (same parameters and state dict) that also takes time-major frames Tensor[B x Cin x 1 x T]
    and returns frames Tensor[B x Cout x 1 x T']; Tensor[B x Cin x T] input behaves as in nn.Conv1d.
    Zero padding only. `tap_gradients` False: torch's own weight gradient (for comparison)."""

    tap_gradients = True

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            return super().forward(x)
        (kernel,), (stride,), (padding,), (dilation,) = self.kernel_size, self.stride, self.padding, self.dilation
        if self.groups == 1 and kernel == 1 and stride == 1 and padding == 0:
            # A 1 x 1 convolution is a matrix product over channels: (B, 1, T, Cin) @ (Cin, Cout).
            y = F.linear(x.permute(0, 2, 3, 1), self.weight.squeeze(2), self.bias)  # (B, 1, T, Cout)
            return y.permute(0, 3, 1, 2)  # (B, Cout, 1, T), channels-last
        if self.in_channels == 1 and dilation == 1:
            # One input channel: the k taps as features, (B, 1, T', k) @ (k, Cout), so that the output
            # is time-major from the start (oneDNN would write this case channel-major).
            taps = F.pad(x[:, 0], (padding, padding)).unfold(-1, kernel, stride)  # (B, 1, T', k)
            y = F.linear(taps, self.weight.squeeze(1), self.bias)  # (B, 1, T', Cout)
            return y.permute(0, 3, 1, 2)  # (B, Cout, 1, T'), channels-last
        settings = (x, self.weight.unsqueeze(2), self.bias, stride, padding, dilation, False, 0)  # (Cout, Cin/g, 1, k)
        if _tap_gradients(self, x):
            return TapConvolution.apply(*settings)
        return convolve_frames(*settings, groups=self.groups)


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (same parameters and state dict) that also maps time-major frames
    Tensor[B x Cin x 1 x N] -> Tensor[B x Cout x 1 x T]; Tensor[B x Cin x N] input behaves as in nn.ConvTranspose1d.
    `tap_gradients` as in Conv1d."""

    tap_gradients = True

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if x.dim() != 4:
            return super().forward(x, output_size)
        settings = (x, self.weight.unsqueeze(2), self.bias, self.stride[0], self.padding[0], self.dilation[0], True,
                    self.output_padding[0])  # weight (Cin, Cout / groups, 1, k)
        if _tap_gradients(self, x):
            return TapConvolution.apply(*settings)
        return convolve_frames(*settings, groups=self.groups)


def dilations(*, depth: int, growth: int, cycle: int | None) -> list[int]:
    """Dilation of each residual unit in a stack: growth ** d, d cycling modulo `cycle` when set."""
    return [growth ** (d % cycle if cycle else d) for d in range(depth)]


class ResidualUnit(nn.Module):
    """ReLU -> Conv1d(k3, dilation) -> ReLU -> Conv1d(k1), added back scaled by res_scale.
    Tensor[B x width x T] -> Tensor[B x width x T] (or frames Tensor[B x width x 1 x T], see module doc)."""

    def __init__(self, *, width: int, dilation: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            Conv1d(width, width, kernel_size=3, dilation=dilation, padding=dilation),
            nn.ReLU(inplace=True),  # its input is a fresh conv output that nothing else keeps
            Conv1d(width, width, kernel_size=1),
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return torch.add(x, self.block(x), alpha=self.res_scale)  # x + res_scale * block(x), one pass


class ResidualStack(nn.Sequential):
    """`depth` residual units with growing dilations (reversed in decoders).
    Tensor[B x width x T] -> Tensor[B x width x T]."""

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        dilation_growth: int,
        dilation_cycle: int | None,
        res_scale: float,
        reverse: bool = False,
    ) -> None:
        steps = dilations(depth=depth, growth=dilation_growth, cycle=dilation_cycle)
        if reverse:
            steps = steps[::-1]
        super().__init__(*(ResidualUnit(width=width, dilation=d, res_scale=res_scale) for d in steps))


class EncoderBlock(nn.Sequential):
    """Conv1d(kernel 4, stride 2) then a residual stack. Tensor[B x width x T] -> Tensor[B x width x T/2]."""

    def __init__(self, *, width: int, **stack: object) -> None:
        super().__init__(
            Conv1d(width, width, kernel_size=4, stride=2, padding=1),
            ResidualStack(width=width, **stack),
        )


class Encoder(nn.Sequential):
    """Waveform Tensor[B x 1 x T] -> latents Tensor[B x code_width x T / 2**downs]."""

    def __init__(self, *, downs: int, width: int, code_width: int, **stack: object) -> None:
        super().__init__(
            Conv1d(1, width, kernel_size=3, padding=1),
            *(EncoderBlock(width=width, **stack) for _ in range(downs)),
            Conv1d(width, code_width, kernel_size=3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B x 1 x T] -> Tensor[B x code_width x N], time-major in memory."""
        return from_frames(super().forward(to_frames(x)))


class DecoderBlock(nn.Sequential):
    """A residual stack (reversed dilations) then ConvTranspose1d(kernel 4, stride 2).
    Tensor[B x width x N] -> Tensor[B x width x 2N]."""

    def __init__(self, *, width: int, **stack: object) -> None:
        super().__init__(
            ResidualStack(width=width, reverse=True, **stack),
            ConvTranspose1d(width, width, kernel_size=4, stride=2, padding=1),
        )


class Decoder(nn.Sequential):
    """Latents Tensor[B x code_width x N] -> waveform Tensor[B x 1 x N * 2**ups]."""

    def __init__(self, *, ups: int, width: int, code_width: int, **stack: object) -> None:
        super().__init__(
            Conv1d(code_width, width, kernel_size=3, padding=1),
            *(DecoderBlock(width=width, **stack) for _ in range(ups)),
            Conv1d(width, 1, kernel_size=3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Tensor[B x code_width x N] -> Tensor[B x 1 x N * 2**ups]."""
        return from_frames(super().forward(to_frames(z)))


@dataclass(frozen=True)
class VQVAEConfig:
    """Shape and loss weights of a VQ-VAE; the defaults are the `jukebox` preset (44.1 kHz)."""

    sample_rate: int = 44100
    downs: tuple[int, ...] = (3, 5, 7)  # stride-2 downsamplings per level -> hops 8, 32, 128
    width: int = 64
    depth: int = 4
    dilation_growth: int = 3
    dilation_cycle: int | None = None
    res_scale: float = 1.0
    codebook_size: int = 2048
    code_width: int = 64
    ema_decay: float = 0.99
    restart_threshold: float = 1.0
    restart_relative: bool = False  # threshold as a share of an even spread of the step's vectors (codebook.py)
    restart_max_share: float = 1.0  # at most this share of the codebook restarted in one step
    commitment_weight: float = 0.02
    spectral_weight: float = 0.1  # multi-resolution STFT loss; Jukebox added a spectral term too
    l2_weight: float = 1.0
    mel_weight: float = 0.0  # multi-scale log-mel L1 (losses.mel_loss): weighs the quiet highs the L2 neglects

    def __post_init__(self) -> None:
        object.__setattr__(self, "downs", tuple(int(d) for d in self.downs))  # YAML gives lists
        if not self.downs or min(self.downs) < 1:
            raise VQVAEInputError(f"downs must be a non-empty sequence of integers >= 1, got {self.downs}")
        for name in ("sample_rate", "width", "depth", "dilation_growth", "codebook_size", "code_width"):
            if getattr(self, name) < 1:
                raise VQVAEInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dilation_cycle is not None and self.dilation_cycle < 1:
            raise VQVAEInputError(f"dilation_cycle must be None or >= 1, got {self.dilation_cycle}")
        if min(self.commitment_weight, self.spectral_weight, self.l2_weight, self.mel_weight) < 0:
            raise VQVAEInputError("loss weights must be >= 0")

    @property
    def levels(self) -> int:
        return len(self.downs)

    @property
    def hops(self) -> tuple[int, ...]:
        """Samples per token at each level."""
        return tuple(2**d for d in self.downs)

    def tokens_per_second(self, level: int) -> float:
        return self.sample_rate / self.hops[level]


@dataclass(frozen=True)
class LevelMetrics:
    """Detached per-level numbers: unweighted losses and codebook use in the batch (scalar Tensors)."""

    recon_loss: Tensor
    spectral_loss: Tensor
    mel_loss: Tensor
    commit_loss: Tensor
    usage: Tensor
    perplexity: Tensor
    restarts: Tensor


@dataclass(frozen=True)
class VQVAEOutput:
    """What `VQVAE.forward` returns.

    loss: scalar Tensor to backpropagate, sum over levels of
        l2_weight * recon + spectral_weight * spectral + mel_weight * mel + commitment_weight * commit.
    recons: per level, Tensor[B x 1 x T]. codes: per level, LongTensor[B x T / hop].
    recon_loss, spectral_loss, mel_loss, commit_loss: unweighted sums over levels (detached scalar Tensors).
    levels: per-level detached metrics.
    """

    loss: Tensor
    recons: list[Tensor]
    codes: list[Tensor]
    recon_loss: Tensor
    spectral_loss: Tensor
    mel_loss: Tensor
    commit_loss: Tensor
    levels: list[LevelMetrics]

    def scalars(self) -> dict[str, float]:
        """Flat name -> float view for logging (one device sync)."""
        names = ["loss", "recon_loss", "spectral_loss", "mel_loss", "commit_loss"]
        values = [self.loss, self.recon_loss, self.spectral_loss, self.mel_loss, self.commit_loss]
        for level, metrics in enumerate(self.levels):
            for field in ("recon_loss", "spectral_loss", "mel_loss", "commit_loss", "usage", "perplexity", "restarts"):
                names.append(f"l{level}/{field}")
                values.append(getattr(metrics, field))
        numbers = torch.stack([v.detach().float() for v in values]).tolist()
        return dict(zip(names, numbers))


class VQVAE(nn.Module):
    """Jukebox-style hierarchical VQ-VAE: one encoder, codebook and decoder per level."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        stack = dict(
            depth=config.depth,
            dilation_growth=config.dilation_growth,
            dilation_cycle=config.dilation_cycle,
            res_scale=config.res_scale,
        )
        shape = dict(width=config.width, code_width=config.code_width)
        self.encoders = nn.ModuleList(Encoder(downs=d, **shape, **stack) for d in config.downs)
        self.decoders = nn.ModuleList(Decoder(ups=d, **shape, **stack) for d in config.downs)
        self.codebooks = nn.ModuleList(
            EMACodebook(
                codebook_size=config.codebook_size,
                code_width=config.code_width,
                decay=config.ema_decay,
                restart_threshold=config.restart_threshold,
                restart_relative=config.restart_relative,
                restart_max_share=config.restart_max_share,
            )
            for _ in config.downs
        )
        self.fft_sizes = default_fft_sizes(config.sample_rate)

    def multiple(self) -> int:
        """Input lengths must be a multiple of this (the largest hop) for `forward`."""
        return max(self.config.hops)

    def pad_to_multiple(self, x: Tensor) -> Tensor:
        """Zero-pad Tensor[B x 1 x T] on the right to the next multiple of `multiple()`."""
        return F.pad(x, (0, -x.shape[-1] % self.multiple()))

    def _check_levels(self, levels: list[int] | tuple[int, ...] | None) -> list[int]:
        chosen = list(range(self.config.levels)) if levels is None else list(levels)
        for level in chosen:
            if not 0 <= level < self.config.levels:
                raise VQVAEInputError(f"level {level} out of range: the model has {self.config.levels} levels")
        return chosen

    def _check_audio(self, x: Tensor, multiple: int) -> None:
        if x.dim() != 3 or x.shape[1] != 1:
            raise VQVAEInputError(f"expected mono audio Tensor[B x 1 x T], got shape {tuple(x.shape)}")
        if x.shape[-1] == 0 or x.shape[-1] % multiple:
            raise VQVAEInputError(
                f"length {x.shape[-1]} is not a positive multiple of {multiple}; use VQVAE.pad_to_multiple"
            )

    def _level_forward(
        self, x: Tensor, level: int, spectra: ReferenceSpectra | None
    ) -> tuple[Tensor, QuantizedResult, LevelMetrics, Tensor]:
        """Encode, quantise and decode x Tensor[B x 1 x T] at one level; the last item is its loss.
        spectra: the STFT side of x, shared by all levels (None when the spectral and mel weights are 0)."""
        quantized = self.codebooks[level](self.encoders[level](x))
        recon = self.decoders[level](quantized.z_q)  # (B, 1, T)
        recon_loss = l2_loss(x, recon)
        spectral, mel = spectral_and_mel_loss(spectra, recon, self.config.sample_rate,
                                              spectral=self.config.spectral_weight > 0, mel=self.config.mel_weight > 0)
        loss = (
            self.config.l2_weight * recon_loss
            + self.config.spectral_weight * spectral
            + self.config.mel_weight * mel
            + self.config.commitment_weight * quantized.commit_loss
        )
        metrics = LevelMetrics(
            recon_loss=recon_loss.detach(),
            spectral_loss=spectral.detach(),
            mel_loss=mel.detach(),
            commit_loss=quantized.commit_loss.detach(),
            usage=quantized.usage.detach(),
            perplexity=quantized.perplexity.detach(),
            restarts=quantized.restarts.detach(),
        )
        return recon, quantized, metrics, loss

    def forward(self, x: Tensor) -> VQVAEOutput:
        """Reconstruct x Tensor[B x 1 x T] at every level (T a multiple of `multiple()`).
        In training mode the codebooks update themselves (EMA, restarts)."""
        self._check_audio(x, self.multiple())
        spectral_terms = self.config.spectral_weight > 0 or self.config.mel_weight > 0
        spectra = reference_spectra(x, fft_sizes=self.fft_sizes) if spectral_terms else None
        recons, codes, metrics, losses = [], [], [], []
        for level in range(self.config.levels):
            recon, quantized, level_metrics, loss = self._level_forward(x, level, spectra)
            recons.append(recon)
            codes.append(quantized.codes)
            metrics.append(level_metrics)
            losses.append(loss)
        return VQVAEOutput(
            loss=torch.stack(losses).sum(),
            recons=recons,
            codes=codes,
            recon_loss=torch.stack([m.recon_loss for m in metrics]).sum(),
            spectral_loss=torch.stack([m.spectral_loss for m in metrics]).sum(),
            mel_loss=torch.stack([m.mel_loss for m in metrics]).sum(),
            commit_loss=torch.stack([m.commit_loss for m in metrics]).sum(),
            levels=metrics,
        )

    @torch.no_grad()
    def encode(self, x: Tensor, levels: list[int] | tuple[int, ...] | None = None) -> list[Tensor]:
        """Codes of x Tensor[B x 1 x T] -> one LongTensor[B x T / hop_l] per requested level (default
        all). Never updates the codebooks; T must be a multiple of the largest requested hop."""
        chosen = self._check_levels(levels)
        self._check_audio(x, max(self.config.hops[level] for level in chosen))
        return [self.codebooks[level].quantize(self.encoders[level](x)) for level in chosen]

    @torch.no_grad()
    def decode(self, codes: Tensor, level: int) -> Tensor:
        """Waveform of codes LongTensor[B x N] at `level` -> Tensor[B x 1 x N * hop]."""
        (level,) = self._check_levels([level])
        return self.decoders[level](self.codebooks[level].dequantize(codes))
