"""Tempo, key and periodicity features on synthetic signals whose answer is known."""

import numpy as np
import pytest

from housebox.audio.features import (
    PITCH_CLASSES,
    FeatureError,
    beat_periodicity,
    chroma,
    estimate_key,
    estimate_tempo,
    onset_envelope,
)

SR = 22050


def click_track(bpm: float, seconds: float = 12.0, click_hz: float = 1000.0, seed: int = 0) -> np.ndarray:
    """Short decaying sine blips on every beat plus quiet noise: Tensor[T]."""
    rng = np.random.default_rng(seed)
    audio = 0.01 * rng.standard_normal(int(seconds * SR))
    t = np.arange(int(0.03 * SR)) / SR
    blip = np.sin(2 * np.pi * click_hz * t) * np.exp(-t / 0.005)
    for onset in np.arange(0.0, seconds, 60.0 / bpm):
        start = int(round(onset * SR))
        audio[start : start + blip.size] += blip[: audio.size - start]
    return audio


def chord_progression(chords: list[list[int]], seconds_per_chord: float = 1.0, repeats: int = 3) -> np.ndarray:
    """Each chord (MIDI notes, first one the bass) as decaying 3-harmonic tones: Tensor[T]."""
    t = np.arange(int(seconds_per_chord * SR)) / SR
    pieces = []
    for notes in chords:
        tone = sum(np.sin(2 * np.pi * 440.0 * 2 ** ((m - 69) / 12) * h * t) / h for m in notes for h in (1, 2, 3))
        pieces.append(tone * np.exp(-t / 0.8))
    return np.concatenate(pieces * repeats)


C_MAJOR_CADENCE = [[48, 60, 64, 67], [53, 60, 65, 69], [55, 59, 62, 67], [48, 60, 64, 67]]  # I IV V I
A_MINOR_CADENCE = [[45, 57, 60, 64], [50, 57, 62, 65], [52, 56, 59, 64], [45, 57, 60, 64]]  # i iv V i


@pytest.mark.parametrize("bpm", [100.0, 122.5, 140.0, 118.0, 128.0])
def test_tempo_of_click_tracks_within_one_bpm(bpm):
    # measured errors are 0.01-0.14 BPM; 1 BPM is the brief's tolerance
    assert abs(estimate_tempo(click_track(bpm), SR) - bpm) < 1.0


def test_tempo_prefers_the_fast_reading_of_an_octave_ambiguity():
    # clicks at 175 BPM line up at 87.5 BPM too; both lie near 90-180, the faster one is the beat
    assert abs(estimate_tempo(click_track(175.0), SR) - 175.0) < 1.0


def test_tempo_does_not_depend_on_gain():
    audio = click_track(122.5)
    assert estimate_tempo(audio, SR) == pytest.approx(estimate_tempo(0.05 * audio, SR), abs=1e-6)


@pytest.mark.parametrize(
    "chords, key",
    [(C_MAJOR_CADENCE, "C major"), (A_MINOR_CADENCE, "A minor")],
)
@pytest.mark.parametrize("transpose", [0, 3, 7])
def test_key_of_cadences(chords, key, transpose):
    shifted = [[m + transpose for m in chord] for chord in chords]
    tonic, mode = key.split()
    expected = f"{PITCH_CLASSES[(PITCH_CLASSES.index(tonic) + transpose) % 12]} {mode}"
    assert estimate_key(chord_progression(shifted), SR) == expected


def test_chroma_of_a_pure_tone():
    t = np.arange(SR * 2) / SR
    profile = chroma(np.sin(2 * np.pi * 440.0 * t), SR)
    assert profile.shape == (12,)
    assert profile.sum() == pytest.approx(1.0)
    assert PITCH_CLASSES[int(np.argmax(profile))] == "A"
    assert profile.max() > 0.8  # a single partial: all of the profile on one class (measured 1.0)


def test_onset_envelope_shape_gain_and_band():
    audio = click_track(120.0, seconds=4.0, click_hz=1000.0)
    full = onset_envelope(audio, SR, hop=512)
    assert full.shape == (1 + audio.size // 512,)
    np.testing.assert_allclose(full, onset_envelope(0.1 * audio, SR, hop=512), rtol=1e-9)
    low = onset_envelope(audio, SR, hop=512, band=(20.0, 150.0))
    assert low.sum() < 0.1 * full.sum()  # 1 kHz clicks hardly reach the kick band


def test_beat_periodicity_separates_beats_from_noise():
    rng = np.random.default_rng(1)
    kicks = click_track(124.0, click_hz=60.0)  # low clicks on every beat: a four-on-the-floor kick
    noise = rng.standard_normal(12 * SR)
    random_clicks = 0.001 * rng.standard_normal(12 * SR)
    blip = np.sin(2 * np.pi * 80.0 * np.arange(300) / SR)
    for start in rng.integers(0, random_clicks.size - 300, size=25):  # about as many clicks, random times
        random_clicks[start : start + 300] += blip
    steady = beat_periodicity(kicks, SR, 124.0)
    assert steady > 0.6  # measured about 0.9
    assert beat_periodicity(noise, SR, 124.0) < 0.15  # measured 0.01-0.06 over seeds
    assert beat_periodicity(random_clicks, SR, 124.0) < 0.15  # measured about 0.03


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: estimate_tempo(np.zeros((2, SR * 5)), SR), "mono"),
        (lambda: estimate_tempo(np.zeros(SR * 5), SR), "silent"),
        (lambda: estimate_tempo(click_track(120.0, seconds=1.0), SR), "too short"),
        (lambda: onset_envelope(click_track(120.0, seconds=1.0), SR, band=(200.0, 100.0)), "band"),
        (lambda: estimate_key(np.full(SR, np.nan), SR), "NaN"),
        (lambda: beat_periodicity(click_track(120.0), SR, 0.0), "bpm"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(FeatureError, match=match):
        call()
    assert issubclass(FeatureError, ValueError)
