"""Reconstruction losses for the VQ-VAE and audio-quality metrics for evaluation.

Waveforms are `Tensor[B x 1 x T]` (mono, the VQ-VAE's layout), `Tensor[B x T]` or `Tensor[T]`.
Losses return a scalar Tensor. Metrics return one value per item, `Tensor[B]` (a 0-dim Tensor for
a `Tensor[T]` input). Spectra are always computed in float32, whatever the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_FFT_SIZE = 16


class AudioShapeError(ValueError):
    """Waveforms with an unsupported or mismatched shape."""


def _as_batch(x: Tensor) -> Tensor:
    """Tensor[B x 1 x T], Tensor[B x T] or Tensor[T] -> float32 Tensor[B x T]."""
    if x.dim() == 3 and x.shape[1] == 1:
        return x.float().squeeze(1)  # (B, T)
    if x.dim() == 2:
        return x.float()
    if x.dim() == 1:
        return x.float().unsqueeze(0)  # (1, T)
    raise AudioShapeError(f"expected a mono waveform [B x 1 x T], [B x T] or [T], got shape {tuple(x.shape)}")


def _pair(ref: Tensor, est: Tensor) -> tuple[Tensor, Tensor]:
    """Both waveforms as Tensor[B x T], after checking that they have the same shape."""
    if ref.shape != est.shape:
        raise AudioShapeError(f"reference and estimate differ in shape: {tuple(ref.shape)} vs {tuple(est.shape)}")
    return _as_batch(ref), _as_batch(est)


def _per_item(values: Tensor, like: Tensor) -> Tensor:
    """values Tensor[B] -> Tensor[B], or a 0-dim Tensor when the input was a single Tensor[T]."""
    return values.squeeze(0) if like.dim() == 1 else values


def l2_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared error over all samples of two same-shaped waveforms -> scalar Tensor."""
    if x.shape != x_hat.shape:
        raise AudioShapeError(f"waveforms differ in shape: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    return F.mse_loss(x_hat.float(), x.float())


def default_fft_sizes(sample_rate: int, *, base_sizes: tuple[int, ...] = (2048, 1024, 512)) -> tuple[int, ...]:
    """FFT sizes for the multi-resolution STFT loss: `base_sizes` are for 44.1 kHz, scaled to the
    same durations at `sample_rate` and rounded to powers of two (22.05 kHz -> 1024, 512, 256)."""
    if sample_rate <= 0:
        raise AudioShapeError(f"sample_rate must be positive, got {sample_rate}")
    scale = sample_rate / 44100
    sizes = (max(MIN_FFT_SIZE, 2 ** round(math.log2(size * scale))) for size in base_sizes)
    return tuple(dict.fromkeys(sizes))


def fit_fft_sizes(fft_sizes: tuple[int, ...], length: int) -> tuple[int, ...]:
    """The FFT sizes that fit a signal of `length` samples; when none does, the largest power of two
    that fits. Raises AudioShapeError for signals shorter than MIN_FFT_SIZE."""
    if length < MIN_FFT_SIZE:
        raise AudioShapeError(f"signal of {length} samples is too short for an STFT (need >= {MIN_FFT_SIZE})")
    fitting = tuple(size for size in fft_sizes if size <= length)
    return fitting or (2 ** int(math.log2(length)),)


def stft_magnitude(x: Tensor, *, n_fft: int, hop_length: int, eps: float = 1e-8) -> Tensor:
    """Magnitude spectrogram of x Tensor[B x T] (Hann window, centred frames)
    -> Tensor[B x (n_fft // 2 + 1) x frames]. Differentiable everywhere (eps inside the sqrt)."""
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True)
    return torch.view_as_real(spec).pow(2).sum(-1).add(eps).sqrt()  # (B, F, frames)


@dataclass(frozen=True)
class ReferenceSpectra:
    """The reference side of `multi_resolution_stft_loss`, computed once and reusable against several
    estimates (the VQ-VAE compares one input with one reconstruction per level).

    length: samples per item. fft_sizes: the sizes used (after `fit_fft_sizes`). hop_fraction, eps:
    as in `multi_resolution_stft_loss`. magnitudes: per size, Tensor[B x (n_fft // 2 + 1) x frames].
    log_magnitudes: log(magnitude + eps), same shapes. norms: per size, ||S||_F over the batch clamped
    to eps (scalar Tensors). All float32.
    """

    length: int
    fft_sizes: tuple[int, ...]
    hop_fraction: float
    eps: float
    magnitudes: tuple[Tensor, ...]
    log_magnitudes: tuple[Tensor, ...]
    norms: tuple[Tensor, ...]


def reference_spectra(
    x: Tensor, *, fft_sizes: tuple[int, ...] = (2048, 1024, 512), hop_fraction: float = 0.25, eps: float = 1e-5
) -> ReferenceSpectra:
    """Spectra of the reference waveform x (see module docstring for shapes) for `spectral_loss`."""
    ref = _as_batch(x)
    sizes = fit_fft_sizes(fft_sizes, ref.shape[-1])
    magnitudes = tuple(stft_magnitude(ref, n_fft=n, hop_length=max(1, int(n * hop_fraction))) for n in sizes)
    return ReferenceSpectra(
        length=ref.shape[-1],
        fft_sizes=sizes,
        hop_fraction=hop_fraction,
        eps=eps,
        magnitudes=magnitudes,
        log_magnitudes=tuple(torch.log(m + eps) for m in magnitudes),
        norms=tuple(torch.linalg.vector_norm(m).clamp(min=eps) for m in magnitudes),
    )


def estimate_magnitudes(reference: ReferenceSpectra, x_hat: Tensor) -> tuple[Tensor, ...]:
    """Magnitude spectrograms of the estimate x_hat at the reference's FFT sizes and hops, for `spectral_loss`
    and `mel_loss` to share. x_hat must have the reference's batch size and length."""
    est = _as_batch(x_hat)
    if est.shape != reference.magnitudes[0].shape[:1] + (reference.length,):
        shape = (reference.magnitudes[0].shape[0], reference.length)
        raise AudioShapeError(f"estimate of shape {tuple(x_hat.shape)} does not match the reference [B x T] {shape}")
    return tuple(stft_magnitude(est, n_fft=n, hop_length=max(1, int(n * reference.hop_fraction)))
                 for n in reference.fft_sizes)


def spectral_loss(reference: ReferenceSpectra, x_hat: Tensor, magnitudes: tuple[Tensor, ...] | None = None) -> Tensor:
    """`multi_resolution_stft_loss` of the estimate x_hat against precomputed reference spectra
    -> scalar Tensor. x_hat must have the reference's batch size and length; `magnitudes`: its
    `estimate_magnitudes`, when already computed."""
    magnitudes = estimate_magnitudes(reference, x_hat) if magnitudes is None else magnitudes
    total = magnitudes[0].new_zeros(())
    for mag_est, mag_ref, log_ref, norm in zip(magnitudes, reference.magnitudes, reference.log_magnitudes,
                                               reference.norms):
        convergence = torch.linalg.vector_norm(mag_ref - mag_est) / norm
        log_l1 = (log_ref - torch.log(mag_est + reference.eps)).abs().mean()
        total = total + convergence + log_l1
    return total / len(reference.fft_sizes)


def mel_loss(reference: ReferenceSpectra, magnitudes: tuple[Tensor, ...], sample_rate: int) -> Tensor:
    """Multi-scale log-mel L1 (as the mel losses of neural codecs): at each of the reference's FFT sizes,
    mean |log mel(reference) - log mel(estimate)| with n_fft / 8 mel bands (at most 64), averaged over
    the sizes -> scalar Tensor. `magnitudes`: the estimate's `estimate_magnitudes`."""
    terms = []
    for n_fft, mag_ref, mag_est in zip(reference.fft_sizes, reference.magnitudes, magnitudes):
        filters = mel_filterbank(sample_rate, n_fft, n_mels=min(64, n_fft // 8), device=mag_ref.device)
        terms.append(log_mel_difference(filters, mag_ref, mag_est, reference.eps).mean())
    return torch.stack(terms).mean()


def spectral_and_mel_loss(reference: ReferenceSpectra | None, x_hat: Tensor, sample_rate: int, *, spectral: bool,
                          mel: bool) -> tuple[Tensor, Tensor]:
    """(`spectral_loss`, `mel_loss`) of the estimate x_hat against the reference, both from one set of its STFTs;
    a term not asked for is a 0-dim zero. `reference` may be None only when neither term is asked for."""
    zero = x_hat.new_zeros((), dtype=torch.float32)
    if not (spectral or mel):
        return zero, zero
    if reference is None:
        raise ValueError("spectral_and_mel_loss needs the reference spectra for the terms it is asked for")
    magnitudes = estimate_magnitudes(reference, x_hat)
    return (spectral_loss(reference, x_hat, magnitudes) if spectral else zero,
            mel_loss(reference, magnitudes, sample_rate) if mel else zero)


def multi_resolution_stft_loss(
    x: Tensor,
    x_hat: Tensor,
    *,
    fft_sizes: tuple[int, ...] = (2048, 1024, 512),
    hop_fraction: float = 0.25,
    eps: float = 1e-5,
) -> Tensor:
    """Spectral convergence + log-magnitude L1, averaged over FFT sizes -> scalar Tensor.

    x, x_hat: same-shaped waveforms (see module docstring). FFT sizes longer than the signal are
    skipped (or clamped, see `fit_fft_sizes`). Spectral convergence is ||S - S_hat||_F / ||S||_F
    over the whole batch; the log-magnitude term is mean |log(S + eps) - log(S_hat + eps)|.
    To compare one reference with several estimates, use `reference_spectra` + `spectral_loss`.
    """
    ref, est = _pair(x, x_hat)
    return spectral_loss(reference_spectra(ref, fft_sizes=fft_sizes, hop_fraction=hop_fraction, eps=eps), est)


def spectral_convergence_db(ref: Tensor, est: Tensor, *, n_fft: int = 2048, eps: float = 1e-8) -> Tensor:
    """20 log10(||S_ref - S_est|| / ||S_ref||) per item, in dB (lower is better) -> Tensor[B].

    n_fft is clamped to the largest power of two that fits the signal."""
    ref_b, est_b = _pair(ref, est)
    n_fft = fit_fft_sizes((n_fft,), ref_b.shape[-1])[0]
    mag_ref = stft_magnitude(ref_b, n_fft=n_fft, hop_length=n_fft // 4)
    mag_est = stft_magnitude(est_b, n_fft=n_fft, hop_length=n_fft // 4)
    error = torch.linalg.vector_norm(mag_ref - mag_est, dim=(1, 2))  # (B,)
    norm = torch.linalg.vector_norm(mag_ref, dim=(1, 2)).clamp(min=eps)  # (B,)
    return _per_item(20.0 * torch.log10(error.clamp(min=eps) / norm), ref)


def si_sdr(ref: Tensor, est: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Scale-invariant signal-to-distortion ratio per item, in dB (higher is better) -> Tensor[B]."""
    ref_b, est_b = _pair(ref, est)
    ref_b = ref_b - ref_b.mean(dim=-1, keepdim=True)
    est_b = est_b - est_b.mean(dim=-1, keepdim=True)
    scale = (est_b * ref_b).sum(-1, keepdim=True) / ref_b.pow(2).sum(-1, keepdim=True).clamp(min=eps)  # (B, 1)
    target = scale * ref_b
    noise = est_b - target
    ratio = target.pow(2).sum(-1).clamp(min=eps) / noise.pow(2).sum(-1).clamp(min=eps)  # (B,)
    return _per_item(10.0 * torch.log10(ratio), ref)


def _hz_to_mel(hz: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    *,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Triangular filters on the HTK mel scale -> Tensor[n_mels x (n_fft // 2 + 1)] (peak height 1)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise AudioShapeError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}")
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, device=device)  # (F,)
    mel_min, mel_max = (float(_hz_to_mel(torch.tensor(hz))) for hz in (f_min, f_max))
    mel_edges = torch.linspace(mel_min, mel_max, n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges).to(device)  # (n_mels + 2,)
    lower, centre, upper = hz_edges[:-2, None], hz_edges[1:-1, None], hz_edges[2:, None]  # each (n_mels, 1)
    rising = (bins - lower) / (centre - lower)  # (n_mels, F)
    falling = (upper - bins) / (upper - centre)
    return torch.minimum(rising, falling).clamp(min=0.0)


def mel_l1(
    ref: Tensor,
    est: Tensor,
    sample_rate: int,
    *,
    n_fft: int | None = None,
    n_mels: int = 64,
    eps: float = 1e-5,
) -> Tensor:
    """Mean |log mel(ref) - log mel(est)| per item -> Tensor[B] (lower is better).

    n_fft defaults to the largest size of `default_fft_sizes(sample_rate)`, clamped to fit the signal."""
    ref_b, est_b = _pair(ref, est)
    n_fft = fit_fft_sizes((n_fft or default_fft_sizes(sample_rate)[0],), ref_b.shape[-1])[0]
    filters = mel_filterbank(sample_rate, n_fft, n_mels=n_mels, device=ref_b.device)  # (n_mels, F)
    mag_ref = stft_magnitude(ref_b, n_fft=n_fft, hop_length=n_fft // 4)  # (B, F, frames)
    mag_est = stft_magnitude(est_b, n_fft=n_fft, hop_length=n_fft // 4)
    distance = log_mel_difference(filters, mag_ref, mag_est, eps).mean(dim=(1, 2))  # (B,)
    return _per_item(distance, ref)


def log_mel_difference(filters: Tensor, mag_ref: Tensor, mag_est: Tensor, eps: float) -> Tensor:
    """|log mel(reference) - log mel(estimate)| of magnitude spectrograms Tensor[B x F x frames] through
    `filters` Tensor[n_mels x F] -> Tensor[B x n_mels x frames]: the one log-mel distance of `mel_l1` and `mel_loss`."""
    return (torch.log(filters @ mag_ref + eps) - torch.log(filters @ mag_est + eps)).abs()
