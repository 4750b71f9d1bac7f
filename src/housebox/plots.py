"""PNG figures: spectrograms, curves and histograms. matplotlib is imported lazily (Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_spectrogram(audio: np.ndarray, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Magnitude spectrogram in dB of a mono float signal: Tensor[F x frames] as numpy."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size < n_fft:
        audio = np.pad(audio, (0, n_fft - audio.size))
    window = np.hanning(n_fft).astype(np.float32)
    frames = 1 + (audio.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]  # (frames, n_fft)
    spec = np.abs(np.fft.rfft(audio[idx] * window, axis=1)).T  # (F, frames)
    return 20.0 * np.log10(np.maximum(spec, 1e-5))


def save_spectrograms(
    path: str | Path,
    signals: Sequence[np.ndarray],
    sample_rate: int,
    titles: Sequence[str] | None = None,
    max_hz: float | None = None,
) -> Path:
    """Write one log-frequency spectrogram panel per signal, stacked vertically, to a PNG."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(signals)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    for i, signal in enumerate(signals):
        ax = axes[i, 0]
        db = log_spectrogram(signal)
        seconds = len(signal) / sample_rate
        top = (max_hz or sample_rate / 2)
        rows = int(db.shape[0] * min(1.0, top / (sample_rate / 2)))
        ax.imshow(
            db[:rows],
            origin="lower",
            aspect="auto",
            extent=[0, seconds, 0, top],
            vmin=db.max() - 80,
            vmax=db.max(),
            cmap="magma",
        )
        ax.set_ylabel("Hz")
        if titles:
            ax.set_title(titles[i], fontsize=9)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
