"""Originality: landmark fingerprints find copied passages (also re-encoded), code passages (verbatim or
with slips) are found with their track and length, unrelated tracks of one artist and fresh samples are not
copies, samples of a prior overfit on one track are."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from conftest import write_prepared
from housebox.audio.io import load_audio, resample, save_audio
from housebox.cli import main
from housebox.data.demo_corpus import ARTISTS, render_track
from housebox.data.prepare import load_track, read_manifest
from housebox.evaluate.originality import (
    FingerprintConfig,
    build_fingerprint_index,
    OriginalityChecker,
    OriginalityConfig,
    build_code_index,
    check_samples,
    fingerprint,
    format_table,
    load_fingerprint_index,
    longest_code_run,
    match_audio,
)

SR = 16000
CONFIG = OriginalityConfig()


def write_dataset(root, tracks, codes=None, hop=128):
    return write_prepared(root, tracks, codes, hop, SR)


def splice(demo_data, track: int, t0: float, s0: float, seconds: float = 10.0) -> tuple[str, np.ndarray]:
    """`seconds` of a training track pasted at s0 into 20 s of music that is not in the dataset."""
    row = read_manifest(demo_data)[track]
    source = np.asarray(load_track(demo_data, row["id"]), dtype=np.float32) / 32768.0
    bed = 0.5 * render_track(ARTISTS[(track + 1) % 3], 20.0, SR, seed=987654).mean(axis=0)  # another artist
    n, a, b = int(seconds * SR), int(t0 * SR), int(s0 * SR)
    bed[b : b + n] = source[a : a + n]
    return row["id"], bed


def test_fingerprints_ignore_gain_and_stay_sparse():
    audio = render_track(ARTISTS[0], 6.0, SR, seed=5).mean(axis=0)
    loud, quiet = fingerprint(audio, SR)[0], fingerprint(audio * 10 ** (-12 / 20), SR)[0]
    assert np.array_equal(loud.hashes, quiet.hashes) and np.array_equal(loud.times, quiet.times)
    per_second = loud.hashes.size / 6.0
    assert 40 < per_second < 400, per_second  # ~8 pairs for each of the few peaks a second
    shifted = fingerprint(audio, SR, FingerprintConfig(), shifts=4)
    assert len(shifted) == 4 and [round(f.shift_seconds * 11025) for f in shifted] == [0, 32, 64, 96]


@pytest.mark.parametrize("encoding", ["wav", "mp3_22k_minus6db"])
def test_spliced_training_passage_is_flagged_with_track_and_offset(demo_data, tmp_path, encoding):
    t0, s0 = 6.2, 4.3
    track_id, audio = splice(demo_data, track=1, t0=t0, s0=s0)
    folder = tmp_path / "samples"
    folder.mkdir()
    if encoding == "wav":
        save_audio(folder / "spliced.wav", audio, SR)
    else:  # resampled 16 -> 22.05 kHz, 6 dB quieter, through an mp3 encoder
        quieter = resample(audio[None], SR, 22050)[0] * 10 ** (-6 / 20)
        sf.write(folder / "spliced.mp3", quieter, 22050, format="MP3")
        assert load_audio(folder / "spliced.mp3").sample_rate == 22050
    report = check_samples(folder, demo_data, output=tmp_path / "checks")
    (result,) = report.samples
    assert result.verdict == "copied", result
    right = [m for m in result.matches if m.track_id == track_id
             and abs((m.track_start - m.sample_start) - (t0 - s0)) <= 0.5 and abs(m.sample_start - s0) <= 0.5]
    assert right, result.matches
    assert right[0].seconds >= 8.5  # of the 10 s pasted (51 pastes measured: at least 9.2 s, 9.0 s as mp3)
    others = [m.seconds for m in result.matches if m.track_id != track_id]
    assert max(others, default=0.0) < CONFIG.suspicious_audio_seconds  # the bed is not in the dataset
    assert not (folder / "report.json").exists()  # not a sample folder: the user's folder is left alone
    written = json.loads((tmp_path / "checks" / "report.json").read_text())["originality"]
    assert written["samples"][str((folder / result.sample.split("/")[-1]).resolve())]["verdict"] == "copied"
    source = next(r for r in read_manifest(demo_data) if r["id"] == track_id)["path"].split("/")[-1]
    assert written["tracks"][track_id] == {"file": source, "artist": right[0].artist}
    assert f"{source} ({track_id})" in format_table(report)  # named by its file, not by its id alone


def test_a_copy_played_faster_or_slower_is_named_with_its_speed(tmp_path):
    """A passage resampled 5% faster (tempo and pitch up together, a record sped up) or 7% slower is found in
    the right track by the speed variants, which the exact matcher alone misses."""
    from dataclasses import replace

    tracks = [(f"{a}0", style.name, render_track(style, 20.0, SR, seed=400).mean(axis=0))
              for a, style in enumerate(ARTISTS)]
    data = write_dataset(tmp_path / "data", tracks)
    index = load_fingerprint_index(data)
    passage = tracks[1][2][4 * SR : 14 * SR]
    for speed in (1.05, 0.93):
        copy = resample(passage.reshape(1, -1), round(SR * speed), SR)[0]
        matches = match_audio(index, copy, SR)
        best = max(matches, key=lambda m: m.seconds)
        assert best.track_id == "10" and best.seconds >= CONFIG.copied_audio_seconds, matches
        assert best.tempo == pytest.approx(speed, abs=0.011) and best.semitones == pytest.approx(
            12 * np.log2(best.tempo), abs=1e-3)
        assert best.track_start == pytest.approx(4.0 + best.sample_start * best.tempo, abs=0.3)  # where it was taken
        exact = match_audio(index, copy, SR, replace(CONFIG, speed_factors=()))
        assert max((m.seconds for m in exact), default=0.0) < CONFIG.suspicious_audio_seconds


def test_unrelated_tracks_of_one_artist_are_not_copies(tmp_path):
    """The demo artists reuse their sounds and patterns: leave-one-out, no track may look copied."""
    tracks = [(f"{a}{s}", style.name, render_track(style, 20.0, SR, seed=100 + s).mean(axis=0))
              for a, style in enumerate(ARTISTS) for s in range(3)]
    data = write_dataset(tmp_path / "data", tracks)
    index = load_fingerprint_index(data)
    longest = []
    for i, (track_id, artist, audio) in enumerate(tracks):
        keep = index.tracks != i
        others = type(index)(hashes=index.hashes[keep], tracks=index.tracks[keep], times=index.times[keep],
                             track_ids=index.track_ids, artists=index.artists, config=index.config)
        matches = match_audio(others, audio, SR)
        longest.append(max((m.seconds for m in matches), default=0.0))
        assert all(m.artist == artist for m in matches if m.seconds > 1.0)  # what they share is the artist's
    # measured on 60 demo tracks: at most 3.0 s; the suspicious threshold is 5 s
    assert max(longest) < 0.7 * CONFIG.suspicious_audio_seconds, longest


def test_verbatim_code_run_is_found_with_length_and_track(tmp_path):
    rng = np.random.default_rng(0)
    codes = {f"t{i}": rng.integers(0, 64, 3000) for i in range(3)}
    noise = [(t, "A", rng.normal(0, 0.1, SR).astype(np.float32)) for t in codes]
    data = write_dataset(tmp_path / "data", noise, codes)
    index = build_code_index(data, level=0)
    assert index.ngram == 6 and index.natural_tokens < index.ngram  # random tracks share nothing
    sample = rng.integers(0, 64, 1500)
    sample[200:700] = codes["t1"][900:1400]
    sample[199], sample[700] = (codes["t1"][899] + 1) % 64, (codes["t1"][1400] + 1) % 64  # run ends exactly
    run = longest_code_run(index, sample)
    assert (run.track_id, run.tokens, run.sample_token, run.track_token) == ("t1", 500, 200, 900)
    assert run.seconds == pytest.approx(500 / 125)

    checker = OriginalityChecker(data)
    copied = checker.check("x.wav", noise[0][2], SR, codes={0: sample}, vqvae_sha256="w" * 64)
    assert copied.verdict == "copied" and copied.longest_code_seconds == pytest.approx(4.0)
    other_vqvae = checker.check("x.wav", noise[0][2], SR, codes={0: sample}, vqvae_sha256="z" * 64)
    assert other_vqvae.verdict == "original" and "another VQ-VAE" in other_vqvae.notes[0]
    assert copied.detectors["audio"] == "checked" and copied.detectors["codes"] == "checked levels 0"
    assert copied.detectors["melody"] == "not checked: no training track has a beat grid (`housebox prepare` tracks the beats)"
    assert copied.longest_melody_seconds is None and copied.fired == {"codes": "copied"}
    assert other_vqvae.longest_code_seconds is None and other_vqvae.detectors["codes"].startswith("not checked")


def test_a_code_passage_with_slips_is_followed_to_its_ends(tmp_path):
    """A prior that memorised a track replays it with slips: 30% of the tokens of an 8-second copy replaced
    at random. Verbatim runs alone find a fraction of it (a few tokens between slips); the passage is found
    whole, with its track, both offsets and the share of equal tokens, and it is copied. Random codes share
    nothing, and a passage is not lengthened by a token equal by chance beside it."""
    rng = np.random.default_rng(3)
    codes = {f"t{i}": rng.integers(0, 256, 4000) for i in range(3)}
    noise = [(t, "A", rng.normal(0, 0.1, SR).astype(np.float32)) for t in codes]
    data = write_dataset(tmp_path / "data", noise, codes)
    index = build_code_index(data, level=0)
    assert index.natural_tokens < index.ngram
    sample = rng.integers(0, 256, 2000)
    copy = codes["t2"][1500:2500].copy()
    slips = rng.random(1000) < 0.3
    copy[slips] = (copy[slips] + rng.integers(1, 256, slips.sum())) % 256  # surely different
    copy[:2], copy[-2:] = codes["t2"][1500:1502], codes["t2"][2498:2500]  # the passage's ends are pairs
    sample[600:1600] = copy
    sample[597], sample[598], sample[599] = codes["t2"][1497], (codes["t2"][1498] + 1) % 256, (codes["t2"][1499] + 1) % 256
    run = longest_code_run(index, sample)
    assert (run.track_id, run.sample_token, run.track_token, run.tokens) == ("t2", 600, 1500, 1000)
    assert run.agreement == pytest.approx(1 - slips[2:-2].sum() / 1000, abs=0.005)
    verbatim = longest_code_run(index, sample, OriginalityConfig(min_code_agreement=1.0))
    assert verbatim.agreement == 1.0 and verbatim.tokens < 60
    checked = OriginalityChecker(data).check("x.wav", noise[0][2], SR, codes={0: sample}, vqvae_sha256="w" * 64)
    assert checked.verdict == "copied" and checked.longest_code_seconds == pytest.approx(8.0)
    unrelated = longest_code_run(index, rng.integers(0, 256, 2000))
    assert unrelated is None or unrelated.tokens < index.ngram
    with pytest.raises(ValueError, match="min_code_agreement"):
        OriginalityConfig(min_code_agreement=0.0)


def test_what_a_code_passage_reports_holds_for_any_codes(tmp_path):
    """Property (hypothesis): for any sample of codes (copies of training passages with slips, at any place,
    or none), a reported passage lies inside the sample and inside its track, starts and ends on equal
    codes, its `agreement` is the share of equal codes in it, and it is at least the longest verbatim run."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    rng = np.random.default_rng(5)
    codes = {f"t{i}": rng.integers(0, 16, 700 + 300 * i) for i in range(3)}  # a small codebook: chance matches
    noise = [(t, "A", np.zeros(SR, np.float32)) for t in codes]
    data = write_dataset(tmp_path / "data", noise, codes)
    index = build_code_index(data, level=0)
    verbatim = OriginalityConfig(min_code_agreement=1.0)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(seed=st.integers(0, 2**31), length=st.integers(1, 900), copies=st.integers(0, 3),
           slip=st.floats(0.0, 0.6))
    def check(seed, length, copies, slip):
        r = np.random.default_rng(seed)
        sample = r.integers(0, 16, length)
        for _ in range(copies):
            track = codes[f"t{r.integers(3)}"]
            n = int(r.integers(1, min(length, track.size) + 1))
            a, b = int(r.integers(0, length - n + 1)), int(r.integers(0, track.size - n + 1))
            piece = track[b : b + n].copy()
            slips = r.random(n) < slip
            piece[slips] = r.integers(0, 16, int(slips.sum()))
            sample[a : a + n] = piece
        run = longest_code_run(index, sample)
        exact = longest_code_run(index, sample, verbatim)
        if run is None:
            assert exact is None
            return
        track = codes[run.track_id]
        assert 0 <= run.sample_token and run.sample_token + run.tokens <= length
        assert 0 <= run.track_token and run.track_token + run.tokens <= track.size
        equal = sample[run.sample_token : run.sample_token + run.tokens] == \
            track[run.track_token : run.track_token + run.tokens]
        assert equal[0] and equal[-1]
        assert run.agreement == pytest.approx(equal.mean(), abs=0.0005)
        assert exact is not None and run.tokens >= exact.tokens and exact.agreement == 1.0

    check()


def test_a_detector_that_could_not_run_says_not_checked_never_a_number(tmp_path):
    """A level over max_index_tokens, or a sample without codes: `not checked` and why, in the result, the CLI
    table, the sample page and the web page's summary, and the verdict rests on what was checked."""
    from dataclasses import asdict

    from housebox.evaluate.originality import CheckReport, format_table
    from housebox.report.pages import _originality_table
    from housebox.web.server import _summary

    rng = np.random.default_rng(1)
    codes = {f"t{i}": rng.integers(0, 64, 3000) for i in range(3)}
    noise = [(t, "A", rng.normal(0, 0.1, SR).astype(np.float32)) for t in codes]
    data = write_dataset(tmp_path / "data", noise, codes)
    sample = codes["t1"][:1500].copy()  # 12 s verbatim: copied, when the codes are searched
    searched = OriginalityChecker(data).check("a.wav", noise[0][2], SR, codes={0: sample}, vqvae_sha256="w" * 64)
    assert searched.verdict == "copied" and searched.longest_code_seconds > 10
    too_big = OriginalityChecker(data, OriginalityConfig(max_index_tokens=5000))  # 9,000 training tokens
    skipped = too_big.check("b.wav", noise[0][2], SR, codes={0: sample}, vqvae_sha256="w" * 64)
    assert skipped.longest_code_seconds is None and skipped.code_runs == ()
    assert skipped.detectors["codes"].startswith("not checked: level 0: 9000 training tokens at level 0")
    assert skipped.verdict == "original"  # from the audio alone, which was checked
    no_codes = too_big.check("c.wav", noise[0][2], SR)
    assert no_codes.detectors["codes"].startswith("not checked: no codes for this sample")

    table = format_table(CheckReport(str(data), (searched, skipped, no_codes)))
    rows = table.splitlines()
    # the melody column says not checked on every row (no beat grids); the codes column on two
    assert "12.00s" in rows[2] and [rows[i].count("not checked") for i in (2, 3, 4)] == [1, 2, 2]
    assert any("9000 training tokens" in line for line in rows) and any("no codes" in line for line in rows)
    page = _originality_table({"against": str(data), "samples": {r.sample: r.to_dict() for r in
                                                                (searched, skipped)}})
    assert "12.00 s" in page and page.count("not checked") >= 2  # the cell, and its tooltip's reason
    assert "codes not checked: level 0" in _summary(asdict(skipped), None)["detail"]
    assert "codes 12.00 s beyond what training tracks share" in _summary(asdict(searched), None)["detail"]
    # only the codes fired: the page and the summary name the track the codes follow
    assert "codes of A (t1) at 0.0 s, from 0.0 s here, level 0, 12.0 s" in page
    assert "best match: codes of A (t1) at 0.0 s" in _summary(asdict(searched), None)["detail"]


def test_code_index_is_stored_and_follows_the_code_cache(tmp_path, monkeypatch):
    """DATA/code_index/: built once and memory-mapped; a track added to the cache is hashed alone and merged,
    and the index then equals one built from scratch (runs and calibration included); a track removed, or
    codes from other VQ-VAE weights, rebuild it."""
    import json

    import housebox.evaluate.originality.codes as codes_module
    from housebox.evaluate.originality import load_code_index

    rng = np.random.default_rng(3)
    codes = {f"t{i}": rng.integers(0, 64, 2000) for i in range(4)}
    codes["t3"][500:900] = codes["t0"][100:500]  # two tracks share a passage: a calibration to keep
    tracks = [(t, "A", rng.normal(0, 0.1, SR).astype(np.float32)) for t in codes]
    data = write_dataset(tmp_path / "data", tracks[:3], {t: codes[t] for t in ("t0", "t1", "t2")})
    hashed = []
    kgrams = codes_module._kgrams
    monkeypatch.setattr(codes_module, "_kgrams", lambda c, *a, **k: hashed.append(len(c)) or kgrams(c, *a, **k))

    def same(a, b) -> bool:
        return (a.track_ids == b.track_ids and a.natural_tokens == b.natural_tokens and a.ngram == b.ngram
                and all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ("codes", "starts", "hashes", "positions")))

    first = load_code_index(data, 0)
    assert hashed == [6000] and isinstance(first.hashes, np.memmap)
    assert same(load_code_index(data, 0), build_code_index(data, 0)) and hashed == [6000, 6000]  # (from scratch)
    hashed.clear()
    load_code_index(data, 0)
    assert hashed == []  # stored: nothing hashed again

    # a fourth track encoded: only it is hashed, and the result is what a full build gives
    np.save(data / "codes" / "l0" / "t3.npy", codes["t3"].astype(np.int16))
    np.save(data / "audio" / "t3.npy", np.zeros(SR, np.int16))
    row = {"id": "t3", "sha256": "t3" * 4, "artist": "A", "genres": [], "samples": SR, "seconds": 1.0,
           "sample_rate": SR, "split": "train"}
    with open(data / "manifest.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    grown = load_code_index(data, 0)
    assert hashed == [2000] and same(grown, build_code_index(data, 0)) and grown.natural_tokens >= 400
    sample = codes["t3"][:1200]
    assert longest_code_run(grown, sample).tokens == longest_code_run(build_code_index(data, 0), sample).tokens
    hashed.clear()

    # a track removed, or codes of other weights: built anew
    rows = [r for r in read_manifest(data) if r["id"] != "t1"]
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_code_index(data, 0).track_ids == ("t0", "t2", "t3") and hashed == [6000]
    meta = json.loads((data / "codes" / "meta.json").read_text())
    (data / "codes" / "meta.json").write_text(json.dumps({**meta, "weights_sha256": "v" * 64}))
    hashed.clear()
    load_code_index(data, 0)
    assert hashed == [6000]


def test_silence_like_code_runs_do_not_count(tmp_path):
    """k-grams that fill the training codes (silence, held notes) identify no passage."""
    rng = np.random.default_rng(1)
    codes = {"t0": np.concatenate([np.full(2000, 7), rng.integers(0, 64, 1000)]), "t1": rng.integers(0, 64, 3000)}
    data = write_dataset(tmp_path / "data", [(t, "A", np.zeros(SR, np.float32) + 0.01) for t in codes], codes)
    index = build_code_index(data, level=0)
    assert longest_code_run(index, np.full(800, 7)) is None
    assert longest_code_run(index, np.concatenate([np.full(300, 7), codes["t0"][2000:2400]])).tokens >= 400


def test_fingerprint_index_is_stored_and_follows_the_dataset(demo_data, tmp_path, monkeypatch):
    """Stored once, memory-mapped; a new track is fingerprinted alone and merged, a removed one dropped, and
    the index is then the same as one built from scratch; other settings rebuild it."""
    from housebox.evaluate.originality import landmarks as fingerprint_module

    data = tmp_path / "data"
    shutil.copytree(demo_data, data, ignore=shutil.ignore_patterns("codes", "fingerprints"))
    rows = (data / "manifest.jsonl").read_text().splitlines()
    (data / "manifest.jsonl").write_text("\n".join(rows[:-1]) + "\n")  # all but the last track, at first
    first = load_fingerprint_index(data)
    assert isinstance(first.hashes, np.memmap) and len(first.track_ids) == len(rows) - 1
    stored = data / "fingerprints" / "hashes.npy"
    stamp = stored.stat().st_mtime_ns
    again = load_fingerprint_index(data)
    assert stored.stat().st_mtime_ns == stamp and np.array_equal(first.hashes, again.hashes)

    def triples(index):
        """The index as a set of (hash, track id, time): independent of the track numbering."""
        ids = np.array(index.track_ids)
        return set(zip(np.asarray(index.hashes).tolist(), ids[np.asarray(index.tracks)].tolist(),
                       np.asarray(index.times).tolist()))

    calls = []
    real = fingerprint_module.fingerprint
    monkeypatch.setattr(fingerprint_module, "fingerprint", lambda *a, **k: calls.append(1) or real(*a, **k))
    (data / "manifest.jsonl").write_text("\n".join(rows) + "\n")  # the last track arrives
    grown = load_fingerprint_index(data)
    assert len(calls) == 1 and len(grown.track_ids) == len(rows)  # only the new track was fingerprinted
    assert np.all(np.diff(np.asarray(grown.hashes).astype(np.int64)) >= 0)  # still sorted
    monkeypatch.setattr(fingerprint_module, "fingerprint", real)
    fresh = build_fingerprint_index(data)
    assert triples(grown) == triples(fresh)

    (data / "manifest.jsonl").write_text("\n".join(rows[1:]) + "\n")  # the first track is gone
    smaller = load_fingerprint_index(data)
    assert len(smaller.track_ids) == len(rows) - 1 and smaller.hashes.size < grown.hashes.size
    assert triples(smaller) == triples(build_fingerprint_index(data))
    other = load_fingerprint_index(data, FingerprintConfig(fan_out=4))  # other settings: rebuilt
    assert other.hashes.size < smaller.hashes.size and triples(other) == triples(
        build_fingerprint_index(data, FingerprintConfig(fan_out=4)))


def test_check_cli_errors_are_one_line(demo_data, tmp_path, capsys):
    assert main(["check", str(tmp_path / "nothing"), "--against", str(demo_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such file or folder" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    save_audio(tmp_path / "empty" / "a.wav", np.zeros(SR, np.float32), SR)
    assert main(["check", str(tmp_path / "empty"), "--against", str(tmp_path)]) == 2
    assert "no prepared tracks" in capsys.readouterr().err


# ---- a tiny trained run ----------------------------------------------------------------------

# The tiny preset's VQ-VAE at 150 steps: 125-200 of its 256 top-level codes in each demo track, and different
# tracks share no passage of codes (a 6-step one uses 2-20 codes, the same in every track: every sample would
# "follow" every track)
VQVAE_STEPS = 150
PRIOR_STEPS = 200  # the tiny preset's top prior learns the corpus (measured: ~3.1 of 8 bits/token held out)


@pytest.fixture(scope="module")
def run_dir(demo_data, tmp_path_factory):
    """A VQ-VAE and a top-level prior that has learned its data (its own copy of the demo dataset, encoded
    by this VQ-VAE, in run_dir.parent / "data"): samples are decoded from the top level."""
    root = tmp_path_factory.mktemp("run")
    data, run = root / "data", root / "run"
    shutil.copytree(demo_data, data, ignore=shutil.ignore_patterns("codes", "fingerprints", "melody", "checks",
                                                                   "code_index"))
    assert main(["train", "vqvae", "--data", str(data), "-o", str(run / "vqvae"), "--device", "cpu",
                 "--set", f"vqvae_train.steps={VQVAE_STEPS}"]) == 0
    assert main(["encode", "--data", str(data), "--vqvae", str(run / "vqvae"), "--device", "cpu"]) == 0
    assert main(["train", "prior", "--level", "2", "--data", str(data), "-o", str(run / "prior_l2"), "--device", "cpu",
                 "--set", f"prior_train.steps={PRIOR_STEPS}", "--set", "prior_train.checkpoint_every=100"]) == 0
    return run


def test_fresh_samples_of_a_prior_that_learned_its_data_are_original(run_dir, tmp_path, capsys):
    """The top prior predicts held-out codes at under half the bits of a uniform guess (it learned the
    corpus, it is not a 10-step prior that can only babble), yet its samples are original. In the same
    check, a "sample" that is a training track's own top-level codes, decoded the same way, is flagged:
    the check can fire on this run, so "original" is a finding, not the only possible answer."""
    import math

    import torch

    from housebox.data.dataset import tracks_for
    from housebox.generate.pipeline import Generation, SampleSettings, decode, load_run, write_outputs
    from housebox.store import read_config

    prior = read_config(run_dir / "prior_l2")  # `best`: the kept weights' step and validation bits/token
    assert prior["best"]["bits_per_token"] < 0.5 * math.log2(prior["describe"]["model"]["codebook_size"]), prior["best"]

    out = tmp_path / "fresh"
    assert main(["sample", str(run_dir), "--artist", "Dawn Atlas", "--seconds", "4", "-n", "2", "--seed", "4242",
                 "--device", "cpu", "--check", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 original, 0 suspicious, 0 copied" in printed
    report = json.loads((out / "report.json").read_text())
    checked = report["originality"]["samples"]
    assert sorted(checked) == ["sample_000.wav", "sample_001.wav"]
    for result in checked.values():
        assert result["verdict"] == "original"
        assert result["longest_match_seconds"] < 1.0 and result["longest_code_seconds"] < CONFIG.suspicious_code_seconds
        assert result["notes"] == []  # the codes were checked: same VQ-VAE as the dataset's code cache
    assert 'class="verdict original"' in (out / "index.html").read_text()

    # the control: 12 s of a training track's own top codes, decoded as a sample is
    run = load_run(run_dir, "cpu")
    data = run_dir.parent / "data"
    track = tracks_for(data, "train", 16000)[0]["id"]
    true = torch.from_numpy(np.load(data / "codes" / "l2" / f"{track}.npy").astype(np.int64))
    rate = run.vqvae.config.tokens_per_second(2)
    codes = true[int(2 * rate): int(14 * rate)][None]  # (1, T)
    copied = Generation(codes={2: codes}, audio=decode(run.vqvae, codes, 2), sample_rate=16000, lowest_level=2)
    write_outputs(tmp_path / "copied", copied, SampleSettings(artist="Dawn Atlas", seconds=12.0), run)
    assert main(["check", str(tmp_path / "copied"), "--against", str(data)]) == 0
    verdict = json.loads((tmp_path / "copied" / "report.json").read_text())["originality"]["samples"]["sample_000.wav"]
    assert verdict["verdict"] != "original" and verdict["longest_code_seconds"] >= CONFIG.suspicious_code_seconds
    assert "codes" in verdict["fired"]


def test_samples_of_a_prior_overfit_on_one_track_are_flagged_with_that_track(run_dir, tmp_path, capsys):
    """A top prior trained past memorising one training track (600 steps on its codes alone, no dropout,
    the last weights kept), asked for the track's artist, tempo and length, replays it with slips: its
    samples are copied by the codes detector, naming that track, its offset and the share of equal tokens.
    Verbatim runs alone find a fraction of each passage."""
    data = run_dir.parent / "data"
    track = read_manifest(data)[0]
    one = tmp_path / "one"  # a dataset of that track alone, sharing the others' files
    one.mkdir()
    (one / "manifest.jsonl").write_text(json.dumps(track) + "\n")
    for name in ("audio", "beats", "codes", "labels.json"):
        (one / name).symlink_to(data / name)
    over = tmp_path / "overfit"
    over.mkdir()
    (over / "vqvae").symlink_to(run_dir / "vqvae")
    assert main(["train", "prior", "--level", "2", "--data", str(one), "-o", str(over / "prior_l2"), "--device", "cpu",
                 "--set", "prior.dropout=0.0", "--set", "prior_train.steps=600",
                 "--set", "prior_train.checkpoint_every=600"]) == 0
    out = tmp_path / "samples"
    assert main(["sample", str(over), "--artist", track["artist"], "--bpm", str(track["bpm"]), "--seconds",
                 str(track["seconds"]), "-n", "2", "--seed", "4242", "--device", "cpu", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["check", str(out), "--against", str(data)]) == 0
    assert "0 original, 0 suspicious, 2 copied" in capsys.readouterr().out
    checked = json.loads((out / "report.json").read_text())["originality"]["samples"]
    for result in checked.values():
        assert result["fired"] == {"codes": "copied"}
        run = result["code_runs"][0]
        assert run["track_id"] == track["id"] and run["level"] == 2 and run["natural_seconds"] == 0.0
        assert run["excess_seconds"] >= 2 * CONFIG.copied_code_seconds and 0.5 <= run["agreement"] < 1.0
        assert abs(run["sample_start"] - run["track_start"]) < 0.1  # in step with the track
    page = (out / "index.html").read_text()
    assert f"codes of {track['artist']} ({track['id']}) at " in page and "of the codes equal" in page
    verbatim = check_samples(out, data, OriginalityConfig(min_code_agreement=1.0))
    # each passage is longer than its longest verbatim run, by seconds over the two samples (measured: 1.7 / 14.5
    # and 5.8 / 9.9 s on an AVX-512 CPU, 4.7 / 6.1 and 10.6 / 12.6+ s on an AVX2 one: training's rounding differs)
    gains = [checked[r.sample.split("/")[-1]]["longest_code_seconds"] - r.longest_code_seconds for r in verbatim.samples]
    assert min(gains) > 0 and sum(gains) >= 2.0, format_table(verbatim)


def test_sigkill_while_check_builds_its_indexes_then_again_gives_the_same_verdicts(demo_data, tmp_path):
    """`housebox check` killed (SIGKILL) while it fingerprints the training set: the same command again
    builds usable indexes and gives the verdicts of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    track_id, audio = splice(demo_data, track=2, t0=3.0, s0=5.0)
    samples = tmp_path / "samples"
    samples.mkdir()
    save_audio(samples / "spliced.wav", audio, SR)
    full, killed = tmp_path / "full", tmp_path / "killed"
    for target in (full, killed):
        shutil.copytree(demo_data, target, ignore=shutil.ignore_patterns("fingerprints", "melody", "checks", "code_index"))
    command = [sys.executable, "-m", "housebox", "check", str(samples), "--against"]
    assert subprocess.run([*command, str(full), "-o", str(tmp_path / "out_full")], capture_output=True).returncode == 0
    proc = subprocess.Popen([*command, str(killed), "-o", str(tmp_path / "out_killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    seen = b""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and b"fingerprint" not in seen:
        seen += os.read(proc.stderr.fileno(), 256)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out_killed" / "report.json").exists(), "check finished before it was killed"
    again = subprocess.run([*command, str(killed), "-o", str(tmp_path / "out_killed")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr

    def verdicts(out):
        samples_ = json.loads((out / "report.json").read_text())["originality"]["samples"]
        return {os.path.basename(k): (v["verdict"], v["longest_match_seconds"], v["fired"]) for k, v in samples_.items()}

    assert verdicts(tmp_path / "out_killed") == verdicts(tmp_path / "out_full")
    assert verdicts(tmp_path / "out_full")["spliced.wav"][0] == "copied"
