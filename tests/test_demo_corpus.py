"""The built-in demo corpus: files, determinism, and that the music carries its artist's tempo and key."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from housebox.audio.features import beat_periodicity, estimate_key, estimate_tempo
from housebox.data.demo_corpus import (
    ARTISTS,
    PEAK,
    DemoCorpusError,
    make_demo_corpus,
    render_track,
)

SR = 22050
MINUTES = 2.4  # 48 s per artist: two tracks of about 24 s each, six in all


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_demo_corpus(tmp_path_factory.mktemp("demo"), minutes=MINUTES, seed=3, sample_rate=SR)


@pytest.fixture(scope="module")
def loaded(corpus):
    """(track, audio Tensor[2 x T]) for every track of the corpus."""
    pairs = []
    for track in corpus.tracks:
        audio, sample_rate = sf.read(corpus.out_dir / track.path, dtype="float32", always_2d=True)
        assert sample_rate == SR
        pairs.append((track, audio.T))
    return pairs


def test_artists_follow_the_brief():
    assert len(ARTISTS) == 3
    genres = {g for style in ARTISTS for g in style.genre.split(";")}
    assert 2 <= len(genres) <= 3
    assert all(118 <= style.bpm <= 128 for style in ARTISTS)
    assert len({style.key for style in ARTISTS}) == 3


def test_files_csv_and_json_agree(corpus):
    with open(corpus.labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    description = json.loads(corpus.corpus_json.read_text())
    assert [r["path"] for r in rows] == [t["path"] for t in description["tracks"]] == [t.path for t in corpus.tracks]
    by_name = {style.name: style for style in ARTISTS}
    for row, entry in zip(rows, description["tracks"]):
        assert (corpus.out_dir / row["path"]).is_file()
        style = by_name[row["artist"]]
        assert row["genre"] == entry["genre"] == style.genre
        assert (entry["bpm"], entry["key"]) == (style.bpm, style.key)
        parts = row["path"].split("/")
        assert parts[:2] == [style.slug, style.folder_genre] and parts[2].endswith(".wav")
    assert {r["artist"] for r in rows} == set(by_name)
    assert any(";" in r["genre"] for r in rows)  # one artist carries two genres
    assert corpus.seconds_total == pytest.approx(MINUTES * 60, abs=0.05)


def test_audio_is_stereo_in_range_and_the_right_length(loaded):
    for track, audio in loaded:
        assert audio.shape == (2, round(track.seconds * SR))
        assert 15.0 <= track.seconds <= 45.0
        assert np.all(np.isfinite(audio))
        assert np.abs(audio).max() == pytest.approx(PEAK, abs=2e-3)  # -1 dBFS, 16-bit rounding
        rms = float(np.sqrt(np.mean(audio**2)))
        assert rms > 0.05  # measured 0.2-0.31: not silent
        side = float(np.sqrt(np.mean((audio[0] - audio[1]) ** 2)))
        assert side > 0.03 * rms  # measured 0.06-0.26 of the rms: genuinely stereo


def test_tempo_key_and_kick_of_every_track(loaded):
    keys_right = 0
    for track, audio in loaded:
        mono = audio.mean(axis=0)
        assert abs(estimate_tempo(mono, SR) - track.bpm) < 1.0, track.path  # measured within 0.05 BPM
        keys_right += estimate_key(mono, SR) == track.key
        # the kick band repeats every beat: measured 0.47-0.93 (garage's bass also hits the band off-beat)
        assert beat_periodicity(mono, SR, track.bpm) > 0.35, track.path
    assert keys_right >= 0.8 * len(loaded)  # measured: all 108 tracks of seeds 0-5 right, at 16-44.1 kHz


def test_noise_of_the_same_length_has_no_beat(loaded):
    track, audio = loaded[0]
    noise = np.random.default_rng(0).standard_normal(audio.shape[1]) * 0.2
    assert beat_periodicity(noise, SR, track.bpm) < 0.15  # the bound above is 0.35


def test_spectrogram_png_is_valid(corpus):
    data = corpus.spectrogram_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 400 and height >= 3 * 150  # one panel per artist


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_two_runs_are_byte_identical(tmp_path, fmt):
    first = make_demo_corpus(tmp_path / "a", minutes=0.3, seed=5, sample_rate=16000, fmt=fmt)
    second = make_demo_corpus(tmp_path / "b", minutes=0.3, seed=5, sample_rate=16000, fmt=fmt)
    files = sorted(p.relative_to(first.out_dir) for p in first.out_dir.rglob("*") if p.is_file())
    assert len(files) == 3 + 3  # three tracks, labels.csv, corpus.json, spectrogram.png
    for relative in files:
        assert (first.out_dir / relative).read_bytes() == (second.out_dir / relative).read_bytes(), relative


def test_render_track_is_seeded():
    style = ARTISTS[0]
    one = render_track(style, 6.0, 16000, seed=1)
    assert one.dtype == np.float32 and one.shape == (2, 96000)
    np.testing.assert_array_equal(one, render_track(style, 6.0, 16000, seed=1))
    other = render_track(style, 6.0, 16000, seed=2)
    assert not np.array_equal(one, other)  # drum noise and arrangement change with the seed


@pytest.mark.parametrize(
    "kwargs, match",
    [({"fmt": "mp3"}, "fmt"), ({"minutes": 0.0}, "minutes"), ({"sample_rate": 4000}, "sample_rate")],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    with pytest.raises(DemoCorpusError, match=match):
        make_demo_corpus(tmp_path, **kwargs)
