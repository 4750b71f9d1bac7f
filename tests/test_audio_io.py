import numpy as np
import pytest

from conftest import music_like, write, write_m4a
from housebox.audio.io import AudioError, load_audio, loudness_lufs, normalize_loudness, resample, save_audio, to_mono


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_soundfile_formats_round_trip(tmp_path, ext):
    x = music_like(2.0, 16000)
    path = write(tmp_path / f"a.{ext}", x, 16000)
    audio = load_audio(path)
    assert audio.sample_rate == 16000 and audio.channels == 2
    assert abs(audio.samples.shape[1] - x.shape[1]) <= 2048  # lossy codecs pad a little
    n = min(audio.samples.shape[1], x.shape[1])
    if ext in ("wav", "flac"):  # lossless: equal up to 16-bit quantisation
        assert np.abs(audio.samples[:, :n] - x[:, :n]).max() < 1e-4


def test_m4a_through_pyav(tmp_path):
    x = music_like(2.0, 22050)
    audio = load_audio(write_m4a(tmp_path / "a.m4a", x, 22050))
    assert audio.sample_rate == 22050 and audio.channels == 2
    assert abs(audio.seconds - 2.0) < 0.1
    # AAC is lossy but the loudness must survive within a dB
    assert abs(loudness_lufs(audio.samples, 22050) - loudness_lufs(x, 22050)) < 1.0


def test_m4a_without_decoder_names_missing_piece(tmp_path, monkeypatch):
    import builtins

    path = write_m4a(tmp_path / "a.m4a", music_like(1.0, 16000), 16000)
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("no av")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(AudioError, match=r"a\.m4a: cannot decode \.m4a without PyAV or ffmpeg: run `pip install av`"):
        load_audio(path)


def test_resample_and_mono(tmp_path):
    x = music_like(1.0, 44100)
    y = resample(x, 44100, 16000)
    assert y.shape == (2, 16000) and y.dtype == np.float32
    assert to_mono(y).shape == (1, 16000)
    # the chord's partials keep their frequencies (1 Hz bins): 220 Hz stands 20 dB above 200 Hz
    spectrum = np.abs(np.fft.rfft(to_mono(y)[0]))
    assert spectrum[219:222].max() > 10 * spectrum[195:205].max()


def test_loudness_of_reference_tone():
    # BS.1770: a 997 Hz full-scale sine in one channel reads -3.01 LUFS
    sr = 48000
    t = np.arange(sr * 3) / sr
    tone = np.sin(2 * np.pi * 997 * t)[None].astype(np.float32)
    assert loudness_lufs(tone, sr) == pytest.approx(-3.01, abs=0.05)
    # and is independent of the sample rate the filters were designed for
    assert loudness_lufs(resample(tone, sr, 16000), 16000) == pytest.approx(-3.01, abs=0.1)


def test_normalize_loudness_hits_target_without_clipping():
    x = music_like(3.0, 16000) * 0.05
    y = normalize_loudness(x, 16000, target_lufs=-16.0)
    assert loudness_lufs(y, 16000) == pytest.approx(-16.0, abs=0.1)
    loud = normalize_loudness(x, 16000, target_lufs=0.0)  # would clip: limited to the peak instead
    assert np.abs(loud).max() <= 0.98 + 1e-6
    silent = np.zeros((1, 16000), np.float32)
    assert np.array_equal(normalize_loudness(silent, 16000), silent)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_save_audio_is_atomic_and_readable(tmp_path, ext):
    x = music_like(1.0, 16000)
    path = save_audio(tmp_path / f"out.{ext}", x, 16000)
    assert not list(tmp_path.glob(".*tmp"))
    back = load_audio(path)
    assert np.abs(back.samples - x).max() < 1e-4


def test_bad_files_raise_one_line_errors(tmp_path):
    good = write(tmp_path / "good.wav", music_like(2.0, 16000), 16000)
    data = good.read_bytes()
    cases = {
        "empty.wav": (b"", "empty file"),
        "text.mp3": (b"this is not audio, just text" * 10, "cannot decode"),
        "half.wav": (data[: len(data) // 2], "truncated"),
        "header_only.wav": (data[:44], "zero-length audio"),
    }
    for name, (content, problem) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AudioError) as err:
            load_audio(tmp_path / name)
        assert problem in str(err.value) and name in str(err.value)
        assert "\n" not in str(err.value)
    nan = np.full((1, 16000), np.nan, np.float32)
    write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")


def gated_loudness(alone: float, segments: list[tuple[float, float]]) -> float:
    """BS.1770-4 integrated loudness, from its definition, of a steady tone of loudness `alone` played in
    `segments` of (seconds, gain dB; None for silence): 400 ms blocks every 100 ms, blocks below -70 LUFS
    dropped, then those more than 10 LU below the mean of the rest."""
    steps = np.concatenate([np.full(int(round(10 * sec)), 0.0 if gain is None else 10 ** (gain / 10))
                            for sec, gain in segments])  # relative power of each 100 ms
    blocks = np.array([steps[i : i + 4].mean() for i in range(len(steps) - 3)])
    with np.errstate(divide="ignore"):
        lufs = alone + 10 * np.log10(blocks)
    kept = blocks[lufs > -70]
    relative = alone + 10 * np.log10(kept.mean()) - 10
    with np.errstate(divide="ignore"):
        kept = kept[alone + 10 * np.log10(kept) > relative]
    return alone + 10 * np.log10(kept.mean())


def test_loudness_gates_silence_and_quiet_passages():
    """Gating exercised: silence after a tone (absolute gate: only the blocks straddling the edge count),
    a passage 20 dB quieter (relative gate: dropped), one 6 dB quieter (kept), against the definition."""
    sr = 48000
    t = np.arange(5 * sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 997 * t))[None].astype(np.float32)  # (1, T)
    alone = loudness_lufs(tone, sr)
    assert alone == pytest.approx(-3.01 - 6.02, abs=0.05)
    for gain in (None, -20.0, -6.0):
        other = np.zeros_like(tone) if gain is None else tone * 10 ** (gain / 20)
        measured = loudness_lufs(np.concatenate([tone, other], axis=1), sr)
        assert measured == pytest.approx(gated_loudness(alone, [(5.0, 0.0), (5.0, gain)]), abs=0.05), gain
    # and the gates matter: ungated, the quiet half would pull the figure down by ~2.6 dB
    assert gated_loudness(alone, [(5.0, 0.0), (5.0, -20.0)]) > alone - 0.3


@pytest.mark.parametrize("sr", [48000, 44100, 22050, 16000])
def test_loudness_agrees_with_pyloudnorm_on_music_with_quiet_passages_and_silence(sr):
    """A stereo demo track, then the same 26 dB quieter (the relative gate drops it), then silence (the
    absolute gate): within 0.2 LU of pyloudnorm, an independent BS.1770-4 implementation."""
    import pyloudnorm

    from housebox.data.demo_corpus import ARTISTS, render_track

    music = np.asarray(render_track(ARTISTS[0], 20.0, sr, seed=1), dtype=np.float32)  # (2, T)
    audio = np.concatenate([music, 0.05 * music, np.zeros_like(music[:, : 3 * sr])], axis=1)
    reference = pyloudnorm.Meter(sr).integrated_loudness(audio.T.astype(np.float64))
    assert loudness_lufs(audio, sr) == pytest.approx(reference, abs=0.2)
