"""Vocal removal before training: keep the accompaniment, drop the (lead) vocal.

Three methods need no trained weights and one uses demucs when it is installed locally:

- ``center``: the vocal is usually panned to the centre. Inside the vocal band (about
  150 Hz - 8 kHz, smooth edges) each time-frequency bin's centre component is estimated from the
  smoothed cross-spectrum of L and R and subtracted from both channels. Bass and kick below the
  band, and the air above it, are left untouched.
- ``repet``: REPET-SIM. Music repeats, the vocal does not: for every frame the median of its most
  similar frames (at least ~1 s apart) models the repeating background; a soft mask keeps it.
- ``demucs``: the ``htdemucs`` source separator, only if the package and its weights are on disk.
- ``none``: the input, unchanged.

Everything works on float32 arrays ``[C x T]`` (C = 1 or 2) and returns the same shape.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage

from housebox.audio.stft import hann, spectra

METHODS = ("none", "center", "repet", "demucs")

DEMUCS_MODEL = "htdemucs"
DEMUCS_WEIGHTS_FILE = "955717e8-8726e21a.th"
DEMUCS_WEIGHTS_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/" + DEMUCS_WEIGHTS_FILE

_EPS = 1e-10


class VocalRemovalError(ValueError):
    """Vocal removal cannot run on this input or with this method."""


# ---------------------------------------------------------------------------------------------
# STFT helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StftConfig:
    """Frame settings of the spectrograms: Hann window of ``n_fft`` samples, hop ``hop_length``."""

    sample_rate: int
    n_fft: int
    hop_length: int

    @property
    def frequencies(self) -> np.ndarray:
        """Centre frequency of every bin in Hz, ``float[F]`` with F = n_fft // 2 + 1."""
        return np.fft.rfftfreq(self.n_fft, d=1.0 / self.sample_rate)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


def stft_config_for(sample_rate: int) -> StftConfig:
    """About 93 ms windows (2048 at 22.05 kHz, 4096 at 44.1 kHz), 75 % overlap."""
    n_fft = max(16, int(2 ** round(np.log2(sample_rate * 0.093))))
    return StftConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=n_fft // 4)


def stft(audio: np.ndarray, config: StftConfig, *, block_frames: int = 512) -> np.ndarray:
    """Complex spectrogram of every channel (audio.stft's window and framing, frames centred on ``t * hop``).

    Frames are transformed ``block_frames`` at a time, so the only large array is the result.

    Args:
        audio: ``float[C x T]``.
    Returns:
        ``complex64[C x F x N]`` with F = n_fft // 2 + 1 and N = T // hop + 1.
    """
    n_fft, hop = config.n_fft, config.hop_length
    count = audio.shape[-1] // hop + 1
    spec = np.empty((audio.shape[0], n_fft // 2 + 1, count), dtype=np.complex64)
    for channel in range(audio.shape[0]):
        for start, block in zip(range(0, count, block_frames),
                                spectra(audio[channel].astype(np.float32), n_fft, hop, center=True,
                                        block_frames=block_frames)):
            spec[channel, :, start:start + block_frames] = block.T  # (F, B)
    return spec


def istft(spec: np.ndarray, config: StftConfig, *, length: int, block_frames: int = 512) -> np.ndarray:
    """Inverse of :func:`stft` by weighted overlap-add, cut to ``length`` samples.

    Args:
        spec: ``complex[C x F x N]``.
    Returns:
        ``float32[C x length]``.
    """
    n_fft, hop = config.n_fft, config.hop_length
    per_frame = n_fft // hop  # hop-sized pieces in one frame
    frames = spec.shape[-1]
    window = _window(config)
    norm = _overlap_add(np.broadcast_to(window**2, (frames, n_fft)), hop)  # (N + R - 1, hop)
    audio = np.zeros((spec.shape[0], length), dtype=np.float32)
    for channel in range(spec.shape[0]):
        pieces = np.zeros((frames + per_frame - 1, hop), dtype=np.float32)
        for start in range(0, frames, block_frames):
            block = scipy.fft.irfft(spec[channel, :, start:start + block_frames].T, n=n_fft, axis=-1)  # (B, n_fft)
            pieces[start:start + block.shape[0] + per_frame - 1] += _overlap_add(block * window, hop)
        signal_ = (pieces / np.maximum(norm, 1e-8)).reshape(-1)[n_fft // 2:]  # (T' - n_fft/2,)
        audio[channel, :min(length, signal_.size)] = signal_[:length]
    return audio


def _window(config: StftConfig) -> np.ndarray:
    """audio.stft's Hann window, ``float32[n_fft]``."""
    return hann(config.n_fft, np.float32)


def _overlap_add(frames: np.ndarray, hop: int) -> np.ndarray:
    """Sum frames placed ``hop`` apart: ``[B x n_fft] -> [(B + n_fft/hop - 1) x hop]``."""
    count, n_fft = frames.shape
    per_frame = n_fft // hop
    pieces = frames.reshape(count, per_frame, hop)  # (B, R, hop)
    out = np.zeros((count + per_frame - 1, hop), dtype=np.float32)
    for offset in range(per_frame):
        out[offset:offset + count] += pieces[:, offset]
    return out


def band_weights(frequencies: np.ndarray, *, low_hz: float, high_hz: float | None,
                 transition: float = 0.2) -> np.ndarray:
    """Smooth band-pass weights: 0 below ``low_hz``, 1 inside, 0 above ``high_hz``.

    Each edge is a raised cosine from ``edge * (1 - transition)`` to ``edge * (1 + transition)``;
    ``high_hz=None`` means no upper edge.

    Args:
        frequencies: ``float[F]`` in Hz.
    Returns:
        ``float32[F]`` in [0, 1].
    """
    weights = _rising_edge(frequencies, low_hz, transition)
    if high_hz is not None:
        weights = weights * (1.0 - _rising_edge(frequencies, high_hz, transition))
    return weights.astype(np.float32)


def _rising_edge(frequencies: np.ndarray, edge_hz: float, transition: float) -> np.ndarray:
    """Raised-cosine step from 0 to 1 centred on ``edge_hz``; ``float[F]``."""
    start, stop = edge_hz * (1.0 - transition), edge_hz * (1.0 + transition)
    position = np.clip((frequencies - start) / (stop - start), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * position)


# ---------------------------------------------------------------------------------------------
# center: subtract the centre-panned component inside the vocal band
# ---------------------------------------------------------------------------------------------


def center_weights(spec: np.ndarray, config: StftConfig, *, low_hz: float = 150.0,
                   high_hz: float = 8000.0, smooth_frames: int = 3, smooth_bins: int = 1) -> np.ndarray:
    """Share of the mid signal that is centre-panned, per bin, limited to the vocal band.

    Model each bin as ``L = C + a``, ``R = C + b`` with the centre C and the side parts a, b
    uncorrelated. Then ``E[L R*] = P_C`` and ``E|M|^2 = P_C + ...`` for ``M = (L + R) / 2``, so
    ``Re E[L R*] / E|M|^2`` is the Wiener gain that estimates C from M. The expectations are local
    averages over ``smooth_frames`` x ``smooth_bins``. Hard-panned or decorrelated parts give 0,
    a centred vocal gives 1.

    Args:
        spec: ``complex[2 x F x N]`` (left, right).
    Returns:
        ``float32[F x N]`` in [0, 1], already multiplied by the band weights.
    """
    left, right = spec[0], spec[1]
    mid = 0.5 * (left + right)
    size = (smooth_bins, smooth_frames)
    cross = ndimage.uniform_filter((left * np.conj(right)).real, size=size, mode="nearest")
    mid_power = ndimage.uniform_filter(np.abs(mid) ** 2, size=size, mode="nearest")
    gain = np.clip(cross / np.maximum(mid_power, _EPS), 0.0, 1.0)
    gain[mid_power <= _EPS] = 0.0
    band = band_weights(config.frequencies, low_hz=low_hz, high_hz=high_hz)
    return (gain * band[:, None]).astype(np.float32)


def subtract_center(spec: np.ndarray, weights: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Remove ``weights * mid`` from both channels (overwriting ``spec`` when ``in_place``).

    Linear in ``spec`` for fixed ``weights``, so sources can be sent through the same operator.

    Args:
        spec: ``complex[2 x F x N]``; weights: ``float[F x N]``.
    Returns:
        ``complex64[2 x F x N]``.
    """
    centre = weights * (0.5 * (spec[0] + spec[1]))  # (F, N)
    out = spec if in_place else spec.astype(np.complex64)  # (2, F, N)
    out -= centre[None]
    return out


def remove_center(audio: np.ndarray, sample_rate: int, *, low_hz: float = 150.0,
                  high_hz: float = 8000.0) -> np.ndarray:
    """Centre-channel cancellation inside ``[low_hz, high_hz]``.

    Args:
        audio: ``float32[2 x T]``.
    Returns:
        ``float32[2 x T]``.
    """
    if audio.shape[0] != 2:
        raise VocalRemovalError("center needs stereo audio; this file is mono")
    config = stft_config_for(sample_rate)
    spec = stft(audio, config)  # (2, F, N)
    weights = center_weights(spec, config, low_hz=low_hz, high_hz=high_hz)
    return istft(subtract_center(spec, weights, in_place=True), config, length=audio.shape[-1])


# ---------------------------------------------------------------------------------------------
# repet: REPET-SIM (Rafii & Pardo 2012) with a chunked similarity
# ---------------------------------------------------------------------------------------------


def pooled_magnitude(magnitude: np.ndarray, *, bands: int = 128) -> np.ndarray:
    """Average neighbouring bins into ``bands`` groups to make the similarity cheap.

    Args:
        magnitude: ``float[F x N]``.
    Returns:
        ``float32[bands x N]`` (fewer rows if F < bands).
    """
    groups = np.array_split(np.arange(magnitude.shape[0]), min(bands, magnitude.shape[0]))
    return np.stack([magnitude[g].mean(axis=0) for g in groups]).astype(np.float32)


def similar_frames(features: np.ndarray, *, num_neighbours: int, min_distance: int,
                   block_size: int = 256) -> np.ndarray:
    """For each frame, the indices of its most similar frames by cosine similarity.

    The similarity matrix is built ``block_size`` rows at a time (memory ``block_size x N``).
    Candidates are local maxima of a frame's similarity row within +-``min_distance`` frames
    (so chosen frames are at least that far apart) with positive similarity; the frame itself
    always counts. Rows with fewer candidates are padded with -1.

    Args:
        features: ``float[D x N]``.
    Returns:
        ``int64[N x num_neighbours]``, -1 where there was no candidate.
    """
    norms = np.linalg.norm(features, axis=0, keepdims=True)
    unit = features / np.maximum(norms, _EPS)  # (D, N)
    total = unit.shape[1]
    k = min(num_neighbours, total)
    result = np.full((total, num_neighbours), -1, dtype=np.int64)
    for start in range(0, total, block_size):
        rows = np.arange(start, min(start + block_size, total))
        sim = unit[:, rows].T @ unit  # (B, N)
        sim[np.arange(len(rows)), rows] = 2.0  # the frame itself is always a candidate
        local_max = ndimage.maximum_filter1d(sim, size=2 * min_distance + 1, axis=1, mode="nearest")
        score = np.where((sim >= local_max) & (sim > 0.0), sim, -np.inf)
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]  # (B, k), unordered
        valid = np.isfinite(np.take_along_axis(score, top, axis=1))
        result[rows, :k] = np.where(valid, top, -1)
    return result


def repeating_model(magnitude: np.ndarray, neighbours: np.ndarray, *, block_size: int = 256) -> np.ndarray:
    """Median of each frame's similar frames: the repeating background spectrogram.

    Args:
        magnitude: ``float[F x N]``; neighbours: ``int[N x K]`` from :func:`similar_frames`
            (-1 marks a missing neighbour; each row has at least one valid index).
    Returns:
        ``float32[F x N]``.
    """
    by_frame = np.ascontiguousarray(magnitude.T, dtype=np.float32)  # (N, F): gathers read whole rows
    model = np.empty(by_frame.shape, dtype=np.float32)  # (N, F)
    for start in range(0, by_frame.shape[0], block_size):
        idx = neighbours[start:start + block_size]  # (B, K)
        gathered = by_frame[np.maximum(idx, 0)]  # (B, K, F)
        gathered[idx < 0] = np.nan
        ordered = np.sort(gathered, axis=1)  # (B, K, F), NaNs last
        count = np.sum(idx >= 0, axis=1)[:, None, None]  # (B, 1, 1)
        low = np.take_along_axis(ordered, (count - 1) // 2, axis=1)  # (B, 1, F)
        high = np.take_along_axis(ordered, count // 2, axis=1)  # (B, 1, F)
        model[start:start + block_size] = 0.5 * (low + high)[:, 0]
    return model.T  # (F, N)


def repet_mask(spec: np.ndarray, config: StftConfig, *, num_neighbours: int = 15,
               min_distance_s: float = 1.0, keep_below_hz: float = 120.0) -> np.ndarray:
    """Soft mask of the repeating background, computed on the mid channel.

    ``mask = min(model, |X|) / |X|``; below ``keep_below_hz`` (smooth edge) the mask is 1, so bass
    and kick always stay in the background.

    Args:
        spec: ``complex[C x F x N]``.
    Returns:
        ``float32[F x N]`` in [0, 1].
    """
    magnitude = np.abs(spec.mean(axis=0)).astype(np.float32)  # (F, N) mid
    neighbours = similar_frames(
        pooled_magnitude(magnitude),
        num_neighbours=num_neighbours,
        min_distance=max(1, int(round(min_distance_s * config.frames_per_second))),
    )
    model = np.minimum(repeating_model(magnitude, neighbours), magnitude)
    mask = model / np.maximum(magnitude, _EPS)
    mask[magnitude <= _EPS] = 1.0
    vocal_band = band_weights(config.frequencies, low_hz=keep_below_hz, high_hz=None)
    return (1.0 - vocal_band[:, None] * (1.0 - mask)).astype(np.float32)


def remove_repet(audio: np.ndarray, sample_rate: int, *, num_neighbours: int = 15,
                 min_distance_s: float = 1.0) -> np.ndarray:
    """REPET-SIM background of mono or stereo audio (one mask for every channel).

    Args:
        audio: ``float32[C x T]``.
    Returns:
        ``float32[C x T]``.
    """
    config = stft_config_for(sample_rate)
    spec = stft(audio, config)  # (C, F, N)
    spec *= repet_mask(spec, config, num_neighbours=num_neighbours, min_distance_s=min_distance_s)[None]
    return istft(spec, config, length=audio.shape[-1])


# ---------------------------------------------------------------------------------------------
# demucs: only with the package and weights already on disk
# ---------------------------------------------------------------------------------------------


def demucs_weights_path() -> Path:
    """Where torch.hub looks for the htdemucs weights before it would download them."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / DEMUCS_WEIGHTS_FILE


def remove_demucs(audio: np.ndarray, sample_rate: int, *, device: str = "cpu") -> np.ndarray:
    """Sum of the non-vocal htdemucs stems; never downloads anything.

    Args:
        audio: ``float32[C x T]``.
    Returns:
        ``float32[C x T]``.
    """
    if importlib.util.find_spec("demucs") is None:
        raise VocalRemovalError(
            f"demucs is not installed: `pip install demucs` and place {DEMUCS_WEIGHTS_FILE} "
            f"(from {DEMUCS_WEIGHTS_URL}) in {demucs_weights_path().parent}"
        )
    weights = demucs_weights_path()
    if not weights.is_file():
        raise VocalRemovalError(
            f"demucs weights missing: download {DEMUCS_WEIGHTS_URL} and place it at {weights}"
        )
    import soxr
    import torch
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    model = get_model(DEMUCS_MODEL)
    model.eval()
    stereo = np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio  # (2, T)
    resampled = soxr.resample(stereo.T, sample_rate, model.samplerate).T  # (2, T')
    ref = resampled.mean(axis=0)
    offset, scale = float(ref.mean()), float(ref.std()) + 1e-8
    mix = torch.from_numpy(((resampled - offset) / scale).astype(np.float32))[None]  # (1, 2, T')
    with torch.no_grad():
        stems = apply_model(model, mix, device=device, split=True, overlap=0.25)[0]  # (S, 2, T')
    keep = [i for i, name in enumerate(model.sources) if name != "vocals"]
    background = stems[keep].sum(dim=0).cpu().numpy() * scale + offset * len(keep) / len(model.sources)
    back = soxr.resample(background.T, model.samplerate, sample_rate).T  # (2, ~T)
    if audio.shape[0] == 1:
        back = back.mean(axis=0, keepdims=True)  # (1, ~T)
    return _fit_length(back, audio.shape[-1])


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad ``[C x T']`` to ``float32[C x length]``."""
    audio = audio[..., :length]
    if audio.shape[-1] < length:
        audio = np.pad(audio, [(0, 0), (0, length - audio.shape[-1])])
    return np.ascontiguousarray(audio, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------


def _check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate ``[C x T]`` input (C = 1 or 2, finite) and return it as float32."""
    if not isinstance(audio, np.ndarray) or audio.ndim != 2 or audio.shape[0] not in (1, 2):
        shape = getattr(audio, "shape", type(audio).__name__)
        raise VocalRemovalError(f"audio must be an array [C x T] with C = 1 or 2, got {shape}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise VocalRemovalError(f"sample_rate must be a positive integer, got {sample_rate}")
    if not np.all(np.isfinite(audio)):
        raise VocalRemovalError("audio contains NaN or infinite values")
    return audio.astype(np.float32, copy=False)


def remove_vocals(audio: np.ndarray, sample_rate: int, method: str) -> np.ndarray:
    """Remove the vocal with one of :data:`METHODS`.

    Args:
        audio: ``float32[C x T]``, C = 1 or 2.
        sample_rate: in Hz.
        method: "none", "center" (stereo only), "repet" or "demucs".
    Returns:
        ``float32[C x T]``, same shape as the input.
    """
    if method not in METHODS:
        raise VocalRemovalError(f"unknown vocal removal method {method!r}; choose one of {', '.join(METHODS)}")
    audio = _check_audio(audio, sample_rate)
    if method == "center" and audio.shape[0] != 2:
        raise VocalRemovalError("center needs stereo audio; this file is mono")
    if method == "none" or audio.shape[-1] == 0:
        return audio.copy()
    if method == "center":
        out = remove_center(audio, int(sample_rate))
    elif method == "repet":
        out = remove_repet(audio, int(sample_rate))
    else:
        out = remove_demucs(audio, int(sample_rate))
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
