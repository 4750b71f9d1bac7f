"""Tempo and pitch, each changed without the other (a phase vocoder), to test what the originality check
still recognises: a copy played 5% faster, or transposed by a semitone.

`time_stretch(audio, rate)`: rate 1.05 plays 5% faster (the result is 1/1.05 as long), pitch kept.
`pitch_shift(audio, sample_rate, semitones)`: the same length, every frequency times 2^(semitones/12).
A plain phase vocoder: transients smear a little, which is what a DJ's time-stretch does too.
"""

from __future__ import annotations

import numpy as np

from housebox.audio.stft import hann, stft


def time_stretch(audio: np.ndarray, rate: float, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Mono float audio `[T]` played `rate` times faster at the same pitch: float32 `[~T / rate]`."""
    if rate <= 0:
        raise ValueError(f"time_stretch: rate must be > 0, got {rate}")
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    window = hann(n_fft)
    spectrum = stft(np.pad(audio, (0, n_fft)), n_fft, hop, center=True)  # (frames, bins): one frame past the end
    magnitude, phase_in = np.abs(spectrum), np.angle(spectrum)
    advance = 2.0 * np.pi * hop * np.arange(spectrum.shape[1]) / n_fft  # expected phase step per hop, per bin
    steps = np.arange(0.0, spectrum.shape[0] - 1, rate)  # analysis positions, one per output frame
    phase = phase_in[0].copy()
    out = np.zeros(len(steps) * hop + n_fft)
    for k, position in enumerate(steps):
        i, frac = int(position), position - int(position)
        mag = (1.0 - frac) * magnitude[i] + frac * magnitude[i + 1]
        out[k * hop : k * hop + n_fft] += np.fft.irfft(mag * np.exp(1j * phase), n_fft) * window
        deviation = phase_in[i + 1] - phase_in[i] - advance
        phase += advance + (deviation - 2.0 * np.pi * np.round(deviation / (2.0 * np.pi)))
    out /= (window ** 2).sum() / hop  # overlap-added squared windows at this hop: a constant gain
    length = int(round(audio.size / rate))
    return out[n_fft // 2 : n_fft // 2 + length].astype(np.float32)


def pitch_shift(audio: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Mono float audio `[T]` transposed by `semitones` at the same tempo: float32 `[T]`."""
    from housebox.audio.io import resample

    ratio = 2.0 ** (semitones / 12.0)
    longer = time_stretch(audio, 1.0 / ratio)  # ratio times as long, same pitch ...
    shifted = resample(longer.reshape(1, -1), int(round(sample_rate * ratio)), sample_rate)[0]  # ... played faster
    size = np.asarray(audio).reshape(-1).size
    return np.pad(shifted, (0, max(0, size - shifted.size)))[:size].astype(np.float32)
