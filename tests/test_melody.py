"""The melody detector: a composition played in other sounds, faster and higher is named with its track;
what different training tracks already share is not evidence; the index follows the dataset."""

import json

import numpy as np
import pytest

from conftest import write_prepared
from housebox.audio.features import beat_chroma
from housebox.data.demo_corpus import ARTISTS, beat_times, played_by, render_track, with_lead
from housebox.evaluate.originality import OriginalityChecker, OriginalityConfig
from housebox.evaluate.originality.melody import load_melody_index, match_melody, melody_features

SR = 16000
A, B = with_lead(ARTISTS[0]), with_lead(ARTISTS[1])  # Dawn Atlas and Kinetic Unit, a melody in every track


def mono(style, seconds, seed):
    return render_track(style, seconds, SR, seed).mean(axis=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six tracks of A and three of B, 24 s each, with their beat grids."""
    tracks = [(f"a{s}", A.name, mono(A, 24.0, s)) for s in range(1, 7)]
    tracks += [(f"b{s}", B.name, mono(B, 24.0, 10 + s)) for s in range(1, 4)]
    return write_prepared(tmp_path_factory.mktemp("melody") / "data", tracks, beats=True)


def test_beat_profiles_follow_the_beats_not_the_clock():
    """The same bars at 121 and 128 BPM give the same profile on each beat; a transposition rolls them."""
    slow, fast = A, played_by(A, A, tempo=128 / 121)
    profiles = []
    for style in (slow, fast, played_by(A, A, semitones=3)):
        seconds = 32 * 60 / style.bpm  # eight bars
        audio = mono(style, seconds, 4)
        profiles.append(melody_features(beat_chroma(audio, SR, beat_times(style, seconds, SR))))
    same = np.sum(profiles[0] * profiles[1], axis=1)  # (beats,) cosine beat by beat
    pitched = np.any(profiles[0], axis=1)
    assert profiles[0].shape == profiles[1].shape == (32, 12) and np.median(same[pitched]) > 0.9
    rolled = np.sum(np.roll(profiles[2], -3, axis=1) * profiles[0], axis=1)
    unrolled = np.sum(profiles[2] * profiles[0], axis=1)
    assert np.median(rolled[pitched]) > 0.8 > 0.3 > np.median(unrolled[pitched])


def test_a_composition_in_other_sounds_faster_and_higher_is_named_with_its_track(corpus):
    """The issue's case: track a1's chords, bassline and melody played with B's sounds, 3% faster and two
    semitones up: flagged by the melody detector, with the right track, key and tempo; a1 and the others
    of A are not confused, fresh compositions of A (same key, tempo, sounds) are original."""
    checker = OriginalityChecker(corpus)
    index = checker.melody
    assert 0 < index.natural_seconds < 12  # tracks of A share progressions, for bars, not whole tracks
    copy = mono(played_by(A, B, semitones=2, tempo=1.03), 20.0, seed=1)
    result = checker.check("copy.wav", copy, SR)
    assert result.matched_seconds < 5  # the audio fingerprint sees other sounds: not this detector's case
    assert result.verdict == "copied" and set(result.fired) == {"melody"}
    best = result.melody_matches[0]
    assert (best.track_id, best.semitones) == ("a1", 2) and best.tempo == pytest.approx(1.03, abs=0.01)
    assert best.seconds > 18 and best.track_start < 1 and best.sample_start < 1
    others = [m for m in result.melody_matches if m.track_id != "a1"]
    assert all(m.excess_seconds == 0 for m in others)  # no other track of A is named beyond what they share
    for seed in (97, 98, 99):
        fresh = checker.check("fresh.wav", mono(A, 20.0, seed), SR)
        assert fresh.verdict == "original" and fresh.longest_melody_seconds < checker.config.suspicious_melody_seconds


def test_what_training_tracks_share_is_not_evidence(corpus, tmp_path):
    """A dataset holding one composition twice (in A's and in B's sounds): its natural overlap is the whole
    track, so a third rendering of it matches for as long, yet is not flagged by melody."""
    tracks = [("x", A.name, mono(A, 24.0, 5)), ("y", B.name, mono(played_by(A, B), 24.0, 5)),
              ("z", A.name, mono(A, 24.0, 6))]
    data = write_prepared(tmp_path / "data", tracks, beats=True)
    checker = OriginalityChecker(data)
    assert checker.melody.natural_seconds > 20 and set(checker.melody.natural_pair) == {"x", "y"}
    again = checker.check("again.wav", mono(played_by(A, ARTISTS[2]), 20.0, 5), SR)
    assert again.melody_matches[0].seconds > 15 and again.longest_melody_seconds == 0
    assert "melody" not in again.fired


def test_the_melody_index_follows_the_dataset(corpus, tmp_path, monkeypatch):
    """Stored once; a new track is profiled alone, a removed one dropped; other settings rebuild it; a
    track without a beat grid is listed, not searched; a sample without a beat says not checked."""
    import shutil

    import housebox.evaluate.originality.melody as melody

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    shutil.rmtree(data / "melody", ignore_errors=True)
    first = load_melody_index(data)
    assert len(first.track_ids) == 9 and (data / "melody" / "chroma.npy").exists()
    profiled = []
    real = melody._track_profiles
    monkeypatch.setattr(melody, "_track_profiles", lambda d, row, c: profiled.append(row["id"]) or real(d, row, c))
    again = load_melody_index(data)
    assert profiled == [] and isinstance(again.chroma, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.chroma), np.asarray(first.chroma))

    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    first_calibration = json.loads((data / "melody" / "meta.json").read_text())["calibration"]
    assert sorted(first_calibration) == sorted(first.track_ids)  # fewer than 32 tracks: every one
    extra = write_prepared(tmp_path / "extra", [("c1", "C", mono(with_lead(ARTISTS[2]), 24.0, 21))], beats=True)
    for sub in ("audio", "beats"):
        shutil.copy(extra / sub / "c1.npy", data / sub / "c1.npy")
    new_row = json.loads((extra / "manifest.jsonl").read_text())
    no_grid = dict(new_row, id="c2", sha256="c2" * 4, beats=0)
    shutil.copy(extra / "audio" / "c1.npy", data / "audio" / "c2.npy")
    kept = [r for r in rows if r["id"] != "a3"]
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept + [new_row, no_grid]))
    searched = []  # first track of every comparison made while calibrating
    real_runs = melody._best_runs
    monkeypatch.setattr(melody, "_best_runs", lambda index, query, exclude=None, first_track=0: searched.append(
        first_track) or real_runs(index, query, exclude, first_track))
    updated = load_melody_index(data)
    assert profiled == ["c1", "c2"]  # only the new tracks
    # calibration: the 8 tracks measured before are compared with c1 alone (track 8 on), unless what they
    # shared most was with a3 (gone); c1 with every track
    redo = sum(1 for track, (_, other) in first_calibration.items() if track != "a3" and other == "a3")
    assert len(updated.track_ids) == 9 and sorted(searched) == [0] * (1 + redo) + [8] * (8 - redo)
    scratch = melody.natural_melody(updated)
    assert (updated.natural_seconds, updated.natural_pair) == scratch[:2]  # as if measured from scratch
    assert "a3" not in updated.track_ids and updated.track_ids[-1] == "c1" and updated.without_beats == ("c2",)
    monkeypatch.setattr(melody, "_best_runs", real_runs)
    a1 = updated.track_ids.index("a1")
    old = first.track_ids.index("a1")
    np.testing.assert_array_equal(np.asarray(updated.chroma[updated.starts[a1] : updated.starts[a1 + 1]]),
                                  np.asarray(first.chroma[first.starts[old] : first.starts[old + 1]]))
    profiled.clear()
    assert load_melody_index(data).without_beats == ("c2",) and profiled == []  # c2 is not retried
    checker = OriginalityChecker(data, OriginalityConfig())
    result = checker.check("short.wav", mono(A, 1.5, 3), SR)  # shorter than four beats
    assert result.longest_melody_seconds is None
    assert result.detectors["melody"].startswith("not checked: no beat grid in the sample")
    status = checker.check("a.wav", mono(A, 12.0, 40), SR).detectors["melody"]
    assert status == "checked against 9 tracks; 1 training tracks without a beat grid not searched"
    from dataclasses import replace

    from housebox.evaluate.originality import MelodyConfig

    load_melody_index(data, replace(MelodyConfig(), window_beats=6))
    assert sorted(profiled) == sorted(updated.track_ids + ("c2",))  # other settings: everything again


def test_match_reports_offsets_in_both_sounds(corpus):
    """A 12-second excerpt from 8 s into b2, pasted 5 s into 20 s of A, is found there and at 8 s of b2."""
    from housebox.data.prepare import load_track

    index = load_melody_index(corpus)
    source = np.asarray(load_track(corpus, "b2"), np.float32) / 32768
    bed = 0.7 * mono(A, 20.0, 77)
    bed[5 * SR : 17 * SR] = source[8 * SR : 20 * SR]
    best = [m for m in match_melody(index, bed, SR) if m.track_id == "b2"][0]
    assert best.seconds > 9 and best.semitones == 0 and best.tempo == pytest.approx(1.0, abs=0.02)
    assert best.sample_start == pytest.approx(5.0, abs=1.0) and best.track_start - best.sample_start == pytest.approx(
        3.0, abs=0.3)
