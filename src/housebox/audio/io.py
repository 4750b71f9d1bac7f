"""Audio in and out: decode any common format, resample, downmix, loudness-normalise, write.

Arrays are float32 `[C x T]` (channels first) throughout housebox. soundfile decodes wav, flac, ogg,
opus and mp3; m4a/aac and anything soundfile cannot read go through PyAV or the `ffmpeg` binary when
one of them is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif"}
FFMPEG_EXTENSIONS = {".m4a", ".aac", ".mp4", ".wma", ".alac"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS


class AudioError(ValueError):
    """A file that cannot be used as audio. The message is one line and names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32 [C x T]
    sample_rate: int

    @property
    def channels(self) -> int:
        return self.samples.shape[0]

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.sample_rate


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int | None  # None where the container does not say

    @property
    def seconds(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate


def probe(path: str | Path) -> AudioInfo:
    """Read the header only: sample rate, channels and length, without decoding the audio."""
    path = Path(path)
    _check_readable(path)
    if path.suffix.lower() in FFMPEG_EXTENSIONS:
        return AudioInfo(sample_rate=0, channels=0, frames=None)
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several types for bad headers
        raise AudioError(path, f"cannot decode ({_short(err)})") from None
    return AudioInfo(sample_rate=info.samplerate, channels=info.channels, frames=info.frames)


def load_audio(path: str | Path, sample_rate: int | None = None, mono: bool = False,
               max_seconds: float | None = None) -> Audio:
    """Decode `path` to float32 `[C x T]`, optionally downmixed and resampled to `sample_rate`.

    `max_seconds`: refuse (AudioError) audio longer than this before decoding more than that much of it,
    so a small file holding hours (a compressed silence) cannot fill the memory."""
    path = Path(path)
    _check_readable(path)
    if path.suffix.lower() in FFMPEG_EXTENSIONS:
        samples, sr = _load_with_ffmpeg(path, max_seconds)
    else:
        try:
            info = sf.info(str(path))
        except Exception as err:
            raise AudioError(path, f"cannot decode ({_short(err)})") from None
        if max_seconds is not None and info.frames > max_seconds * info.samplerate:
            raise AudioError(path, f"longer than {max_seconds:g} s ({info.frames / info.samplerate:.1f} s)")
        try:
            declared = info.frames
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
        except Exception as err:
            raise AudioError(path, f"cannot decode ({_short(err)})") from None
        if path.suffix.lower() == ".wav":
            declared = max(declared, _wav_declared_frames(path) or 0)
        if data.shape[0] and data.shape[0] < 0.99 * declared - 1152:  # 1152: one mp3 frame of slack
            raise AudioError(
                path, f"truncated: header promises {declared / sr:.1f} s, only {data.shape[0] / sr:.1f} s decodable"
            )
        samples = np.ascontiguousarray(data.T)  # (C, T)
    if samples.shape[1] == 0:
        raise AudioError(path, "zero-length audio")
    if not np.all(np.isfinite(samples)):
        raise AudioError(path, "contains NaN or infinite samples")
    if mono:
        samples = to_mono(samples)
    if sample_rate is not None and sample_rate != sr:
        samples = resample(samples, sr, sample_rate)
        sr = sample_rate
    return Audio(samples=samples, sample_rate=int(sr))


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "no such file")
    if not path.is_file():
        raise AudioError(path, "not a regular file")
    try:
        with open(path, "rb") as handle:
            first = handle.read(16)
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as err:
        raise AudioError(path, f"cannot read ({_short(err)})") from None
    if not first:
        raise AudioError(path, "empty file")


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the RIFF header's `data` chunk announces (libsndfile silently clamps it to the file size)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk == b"fmt ":
            block_align = int.from_bytes(head[pos + 20 : pos + 22], "little")
        elif chunk == b"data":
            return size // block_align if block_align and size < 0xFFFFFFF0 else None
        pos += 8 + size + (size & 1)
    return None


def _short(err: Exception) -> str:
    """A decoder's complaint on one short line, without the path it repeats."""
    text = str(err).strip().splitlines()
    text = text[-1] if text else type(err).__name__
    if text.startswith("Error opening"):  # libsndfile: "Error opening '<path>': <why>"
        text = text.split("': ", 1)[-1]
        if "does not exist" in text:  # what libsndfile says of an existing file it cannot parse
            text = "format not recognised"
    return text[:160]


def _load_with_ffmpeg(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """m4a/aac and friends: PyAV if importable, else the ffmpeg binary, else a clear error."""
    try:
        import av  # noqa: F401
    except ImportError:
        av = None
    if av is not None:
        return _load_with_pyav(path, max_seconds)
    if shutil.which("ffmpeg"):
        return _load_with_ffmpeg_binary(path, max_seconds)
    raise AudioError(
        path,
        f"cannot decode {path.suffix} without PyAV or ffmpeg: run `pip install av` or install ffmpeg",
    )


def _too_long(path: Path, max_seconds: float) -> AudioError:
    return AudioError(path, f"longer than {max_seconds:g} s (stopped decoding there)")


def _load_with_pyav(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(path, "no audio stream")
            chunks, decoded = [], 0
            for frame in container.decode(stream):
                decoded += frame.samples
                if max_seconds is not None and decoded > max_seconds * frame.sample_rate:
                    raise _too_long(path, max_seconds)
                array = frame.to_ndarray()
                if frame.format.is_planar:  # (C, n)
                    chunks.append(array.astype(np.float32))
                else:  # packed: (1, n * C)
                    chunks.append(array.reshape(-1, frame.layout.nb_channels).T.astype(np.float32))
            sr = stream.codec_context.sample_rate
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(path, f"cannot decode ({_short(err)})") from None
    if not chunks:
        raise AudioError(path, "zero-length audio")
    samples = np.concatenate(chunks, axis=1)
    if np.issubdtype(chunks[0].dtype, np.integer):
        samples = samples / 32768.0
    return np.ascontiguousarray(samples, dtype=np.float32), int(sr)


def _load_with_ffmpeg_binary(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "decoded.wav"
        limit = [] if max_seconds is None else ["-t", f"{max_seconds + 1.0:g}"]  # one second more shows "too long"
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), *limit, "-f", "wav", "-acodec", "pcm_f32le",
               str(wav)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wav.exists():
            raise AudioError(path, f"ffmpeg cannot decode ({_short(RuntimeError(result.stderr or 'no output'))})")
        data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    if max_seconds is not None and data.shape[0] > max_seconds * sr:
        raise _too_long(path, max_seconds)
    return np.ascontiguousarray(data.T), int(sr)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """`[C x T]` -> `[1 x T]` by averaging channels."""
    return samples.mean(axis=0, keepdims=True).astype(np.float32)


def resample(samples: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample `[C x T]` with soxr (high quality)."""
    if sr_in == sr_out:
        return samples
    import soxr

    out = soxr.resample(np.ascontiguousarray(samples.T), sr_in, sr_out, quality="HQ")  # (T', C)
    return np.ascontiguousarray(np.atleast_2d(out.T if out.ndim == 2 else out[None]), dtype=np.float32)


# ---- loudness (ITU-R BS.1770 integrated loudness with gating) -------------------------------


def _biquad_k_weighting(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two BS.1770 K-weighting stages (high shelf, then high pass), designed for any rate."""
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = np.tan(np.pi * f0 / sample_rate)
    vh = 10 ** (gain_db / 20)
    vb = vh**0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf_b = np.array([(vh + vb * k / q + k * k), 2 * (k * k - vh), (vh - vb * k / q + k * k)]) / a0
    shelf_a = np.array([a0, 2 * (k * k - 1), (1 - k / q + k * k)]) / a0
    f0, q = 38.13547087602444, 0.5003270373238773
    k = np.tan(np.pi * f0 / sample_rate)
    a0 = 1 + k / q + k * k
    high_b = np.array([1.0, -2.0, 1.0])
    high_a = np.array([a0, 2 * (k * k - 1), (1 - k / q + k * k)]) / a0
    return [(shelf_b, shelf_a), (high_b, high_a)]


def loudness_lufs(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of `[C x T]` in LUFS; -inf for silence or audio shorter than one 400 ms block."""
    from scipy.signal import lfilter

    x = samples.astype(np.float64)
    for b, a in _biquad_k_weighting(sample_rate):
        x = lfilter(b, a, x, axis=1)
    block, step = int(0.4 * sample_rate), int(0.1 * sample_rate)
    if x.shape[1] < block:
        return float("-inf")
    starts = np.arange(0, x.shape[1] - block + 1, step)
    cumsum = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x * x, axis=1)], axis=1)
    power = (cumsum[:, starts + block] - cumsum[:, starts]) / block  # (C, blocks)
    block_power = power.sum(axis=0)  # channel weights are 1 for L, R and mono
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10 * np.log10(block_power)
    gated = block_power[block_lufs > -70.0]
    if gated.size == 0:
        return float("-inf")
    relative = -0.691 + 10 * np.log10(gated.mean()) - 10.0
    with np.errstate(divide="ignore"):
        gated = gated[-0.691 + 10 * np.log10(gated) > relative]
    return float(-0.691 + 10 * np.log10(gated.mean()))


def normalize_loudness(samples: np.ndarray, sample_rate: int, target_lufs: float = -16.0, peak: float = 0.98) -> np.ndarray:
    """Scale `[C x T]` to `target_lufs`, then down further if needed so no sample exceeds `peak`."""
    current = loudness_lufs(samples, sample_rate)
    if not np.isfinite(current):
        return samples
    gain = 10 ** ((target_lufs - current) / 20)
    top = float(np.abs(samples).max()) * gain
    if top > peak:
        gain *= peak / top
    return (samples * gain).astype(np.float32)


# ---- writing --------------------------------------------------------------------------------


def save_audio(path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write `[C x T]` (or `[T]`) float audio to wav/flac/ogg by extension, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(samples, dtype=np.float32)
    data = data[None] if data.ndim == 1 else data
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: can only write .wav, .flac or .ogg")
    if fmt == "OGG":
        subtype = "VORBIS"
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), np.clip(data.T, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype)
    os.replace(tmp, path)
    return path
