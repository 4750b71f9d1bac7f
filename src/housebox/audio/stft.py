"""The one framing of every numpy spectrogram in housebox: which samples a frame holds and its window.

A frame is `n_fft` samples, frames are `hop` apart, and every frame is weighted by the same window: the
Hann window as numpy defines it (`np.hanning`, symmetric; the beat grids `prepare` stores, and so every
prior trained on them, were computed with it). The models' torch STFT losses keep torch's own window.
`center=True` pads `n_fft // 2` zeros at both ends, so frame i is centred on sample `i * hop` and a signal
of T samples gives `T // hop + 1` frames; `center=False` starts frame 0 at sample 0. A signal shorter than
one frame is zero-padded to one frame. Long signals are transformed a block of frames at a time, so the
only large array is the result.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

BLOCK_FRAMES = 4096  # frames per FFT call: bounded memory for hour-long tracks


def hann(n_fft: int, dtype=np.float64) -> np.ndarray:
    """The Hann window `[n_fft]`: 0.5 - 0.5 cos(2 pi n / (n_fft - 1)), n = 0 .. n_fft - 1."""
    return np.hanning(n_fft).astype(dtype)


def frames(audio: np.ndarray, n_fft: int, hop: int, center: bool = False) -> np.ndarray:
    """Mono audio `[T]` -> its frames `[N x n_fft]` (a read-only view where no padding was needed), unwindowed."""
    if n_fft <= 0 or hop <= 0:
        raise ValueError(f"n_fft and hop must be positive, got {n_fft} and {hop}")
    audio = np.asarray(audio).reshape(-1)
    if center:
        audio = np.pad(audio, (n_fft // 2, n_fft // 2))
    if audio.size < n_fft:
        audio = np.pad(audio, (0, n_fft - audio.size))
    return np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]


def spectra(audio: np.ndarray, n_fft: int, hop: int, center: bool = False,
            block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Complex spectra of the windowed frames, yielded in blocks `[frames x n_fft//2+1]` (in audio's float type)."""
    framed = frames(audio, n_fft, hop, center)
    window = hann(n_fft, framed.dtype if framed.dtype.kind == "f" else np.float64)
    for start in range(0, framed.shape[0], block_frames):
        yield np.fft.rfft(framed[start : start + block_frames] * window, axis=1)


def stft(audio: np.ndarray, n_fft: int, hop: int, center: bool = False) -> np.ndarray:
    """Complex spectrogram `[frames x n_fft//2+1]` of mono audio `[T]`."""
    return np.concatenate(list(spectra(audio, n_fft, hop, center)), axis=0)


def log_spectrogram(audio: np.ndarray, n_fft: int = 2048, hop: int = 512, floor: float = 1e-5) -> np.ndarray:
    """Magnitudes in dB, float32 `[F x frames]` (frequency up, as plotted), of mono float audio `[T]`."""
    out = [20.0 * np.log10(np.maximum(np.abs(block), floor)).T
           for block in spectra(np.asarray(audio, dtype=np.float32), n_fft, hop)]
    return np.concatenate(out, axis=1).astype(np.float32)
