"""Statistics of generated music against held-out training audio.

Per track: tempo (onset autocorrelation), key and chroma profile, loudness (LUFS), spectral centroid,
and the strength of a four-on-the-floor kick (low-band onset periodicity at the beat). Across tracks,
two distances between the distributions of per-second mel + chroma statistics (named for those
features, since no pretrained audio embedding can be downloaded here):

- the Fréchet distance (FAD-style): Gaussians fitted to both sets. Biased upwards on small sets — a
  few dozen vectors of the same distribution already score well above 0 — so it is only comparable
  between sets of the same size;
- the kernel distance (KAD, Chung et al. 2025): the unbiased estimate of the squared maximum mean
  discrepancy (Gretton et al. 2012) under a Gaussian kernel. Its expectation is 0 for two samples of
  one distribution whatever their sizes, so per-artist figures from a few tracks mean something.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from housebox.audio.features import (
    FeatureError,
    beat_periodicity,
    chroma,
    estimate_key,
    estimate_tempo,
    spectral_centroid,
)
from housebox.audio.io import loudness_lufs
from housebox.audio.stft import stft


@dataclass(frozen=True)
class TrackStats:
    bpm: float | None
    key: str | None
    lufs: float | None
    centroid_hz: float
    kick_periodicity: float | None  # at the estimated tempo
    chroma: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def track_stats(audio: np.ndarray, sample_rate: int) -> TrackStats:
    """The per-track statistics of mono float audio `[T]`."""
    def safe(fn, *args):
        try:
            return fn(*args)
        except FeatureError:
            return None

    bpm = safe(estimate_tempo, audio, sample_rate)
    lufs = loudness_lufs(audio[None].astype(np.float32), sample_rate)
    profile = safe(chroma, audio, sample_rate)
    return TrackStats(
        bpm=round(float(bpm), 2) if bpm is not None else None,
        key=safe(estimate_key, audio, sample_rate),
        lufs=round(lufs, 2) if np.isfinite(lufs) else None,
        centroid_hz=round(spectral_centroid(audio, sample_rate), 1),
        kick_periodicity=round(float(safe(beat_periodicity, audio, sample_rate, bpm) or 0.0), 3) if bpm else None,
        chroma=[round(float(c), 4) for c in (profile if profile is not None else np.zeros(12))],
    )


def mel_chroma_features(audio: np.ndarray, sample_rate: int, seconds: float = 1.0, n_mels: int = 32) -> np.ndarray:
    """One vector per `seconds` segment: mean log-mel energies and the chroma profile. -> [segments x (n_mels+12)]."""
    from housebox.models.losses import mel_filterbank

    n_fft = 1024 if sample_rate <= 24000 else 2048
    filters = mel_filterbank(sample_rate, n_fft, n_mels=n_mels).numpy()  # (n_mels, F)
    length = int(seconds * sample_rate)
    out = []
    for start in range(0, len(audio) - length + 1, length):
        segment = np.asarray(audio[start : start + length], dtype=np.float64)
        power = np.abs(stft(segment, n_fft, n_fft // 4)) ** 2  # (frames, F)
        log_mel = np.log(power @ filters.T + 1e-8).mean(axis=0)  # (n_mels,)
        try:
            profile = chroma(segment, sample_rate)
        except FeatureError:
            profile = np.zeros(12)
        out.append(np.concatenate([log_mel, profile * 10.0]))
    return np.stack(out) if out else np.zeros((0, n_mels + 12))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N x D] and b [M x D]."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two feature vectors on each side")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # trace(sqrt(A B)) is the sum of the square roots of the eigenvalues of A B (real, >= 0 for covariances)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b).real
    trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def kernel_distance(a: np.ndarray, b: np.ndarray, scale: np.ndarray | None = None, block: int = 2048) -> float:
    """Kernel (audio) distance: the unbiased MMD² between feature sets a [N x D] and b [M x D], b the reference.

    1. Each feature is divided by `scale` [D] (default: its standard deviation in `b`, the reference
       set; constant features by 1), so no dimension dominates by its units.
    2. The kernel is k(x, y) = exp(-|x - y|² / (2 σ²)), σ the median distance between distinct pairs of the
       pooled set (the median heuristic; from an evenly spaced subset of at most 1,000 vectors).
    3. MMD²_u = mean k(a_i, a_j) over i != j + mean k(b_i, b_j) over i != j - 2 mean k(a_i, b_j)
       (Gretton et al. 2012, eq. 3): the diagonals k(x, x) = 1 are left out, which removes the bias.

    About 0 (a little below is possible) for two samples of one distribution; it grows as they part, and
    is symmetric in a and b for a given `scale`.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the kernel distance needs at least two feature vectors on each side")
    if scale is None:
        scale = b.std(axis=0)
    scale = np.where(np.asarray(scale, dtype=np.float64) > 1e-12, scale, 1.0)
    a, b = a / scale, b / scale
    pooled = np.concatenate([a, b])
    subset = pooled[np.linspace(0, len(pooled) - 1, min(len(pooled), 1000)).astype(int)]
    distances = np.sqrt(_squared_distances(subset, subset)[np.triu_indices(len(subset), k=1)])
    sigma = float(np.median(distances[distances > 0])) if (distances > 0).any() else 1.0
    gamma = 1.0 / (2.0 * sigma**2)
    n, m = len(a), len(b)
    within_a = (_kernel_sum(a, a, gamma, block) - n) / (n * (n - 1))  # the diagonal sums to n
    within_b = (_kernel_sum(b, b, gamma, block) - m) / (m * (m - 1))
    across = _kernel_sum(a, b, gamma, block) / (n * m)
    return float(within_a + within_b - 2.0 * across)


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|x_i - y_j|² for x [N x D], y [M x D] -> [N x M], clipped at 0 against rounding."""
    return np.maximum((x**2).sum(axis=1)[:, None] + (y**2).sum(axis=1)[None, :] - 2.0 * x @ y.T, 0.0)


def _kernel_sum(x: np.ndarray, y: np.ndarray, gamma: float, block: int) -> float:
    """Sum of exp(-gamma |x_i - y_j|²) over all pairs, `block` rows of x at a time (bounded memory)."""
    return float(sum(np.exp(-gamma * _squared_distances(x[i : i + block], y)).sum() for i in range(0, len(x), block)))
