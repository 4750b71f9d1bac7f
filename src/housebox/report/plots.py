"""PNG figures: spectrograms, curves and histograms. matplotlib is imported lazily (Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from housebox.audio.stft import log_spectrogram


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def save_curves(
    path: str | Path,
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    log_y: bool = True,
    marks: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """One panel per named (x, y) curve: loss curves and evaluation metrics over training steps.

    `marks` rings one (x, y) point on the named curves, e.g. the step whose weights were kept."""
    plt = _pyplot()
    path = Path(path)
    n = len(curves)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.2 * n), squeeze=False)
    for ax, (name, (x, y)) in zip(axes[:, 0], curves.items()):
        ax.plot(x, y, lw=1.2)
        if marks and name in marks:
            mx, my = marks[name]
            ax.plot([mx], [my], "o", ms=8, mfc="none", color="C3", label=f"kept: step {mx:g}")
            ax.legend(fontsize=7, loc="best")
        positive = len(y) > 0 and min(y) > 0
        if log_y and positive and max(y) / max(min(y), 1e-12) > 20:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path


def save_histogram(path: str | Path, panels: dict[str, Sequence[float]], xlabel: str = "code") -> Path:
    """Bar chart per named panel, e.g. codebook usage counts per level."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(panels)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.2 * n), squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], panels.items()):
        ax.bar(np.arange(len(values)), values, width=1.0)
        ax.set_title(name, fontsize=9)
    axes[-1, 0].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
