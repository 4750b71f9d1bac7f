import json
import os

import numpy as np
import pytest

from conftest import music_like, write, write_m4a
from housebox.cli import main
from housebox.data.prepare import PrepareSettings, load_track, prepare, read_manifest

SR = 16000
SETTINGS = PrepareSettings(sample_rate=SR, min_seconds=1.0, max_seconds=30.0)


def make_mixed_folder(root, is_root: bool, monkeypatch):
    """Good files in every format with labels from all three sources, plus one broken file of each kind."""
    good = {
        "Alice/deep house/a1.wav": music_like(5.0, 44100, seed=1),
        "Alice/deep house/a2.flac": music_like(5.0, 22050, seed=2),
        "Bob/garage/b1.ogg": music_like(5.0, 22050, seed=3),
        "Bob/garage/b2.mp3": music_like(5.0, 44100, seed=4),
        "loose/c1.m4a": music_like(5.0, 22050, seed=5),
    }
    for rel, x in good.items():
        sr = 44100 if rel.endswith(("a1.wav", "b2.mp3")) else 22050
        (write_m4a if rel.endswith(".m4a") else write)(root / rel, x, sr)
    # tags beat folder names: b1 is tagged with another artist
    import mutagen

    tagged = mutagen.File(str(root / "Bob/garage/b1.ogg"), easy=True)
    tagged["artist"] = "Carol"
    tagged.save()
    (root / "labels.csv").write_text("path,artist,genre\nloose/c1.m4a,Dana,tech house; garage\n")

    bad = root / "bad"
    reference = (root / "Alice/deep house/a1.wav").read_bytes()
    (bad / "x").mkdir(parents=True)
    (bad / "empty.wav").write_bytes(b"")
    (bad / "truncated.wav").write_bytes(reference[: len(reference) // 2])
    (bad / "notaudio.mp3").write_bytes(b"<html>not audio</html>" * 50)
    (bad / "zerolength.wav").write_bytes(reference[:44])
    write(bad / "silent.wav", np.zeros((2, SR * 2), np.float32), SR)
    nan = music_like(2.0, SR)
    nan[0, 100] = np.nan
    write(bad / "nan.wav", nan, SR, subtype="FLOAT")
    write(bad / "huge.flac", music_like(40.0, 8000, channels=1), 8000)
    write(bad / "short.wav", music_like(0.5, SR), SR)
    locked = write(bad / "locked.wav", music_like(2.0, SR, seed=9), SR)
    os.chmod(locked, 0)
    if is_root:  # root reads anything: make the opener refuse this one file as the kernel would
        import builtins

        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if str(file) == str(locked):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff not a picture")
    expected_reasons = {
        "empty.wav": "empty file",
        "truncated.wav": "truncated",
        "notaudio.mp3": "cannot decode",
        "zerolength.wav": "zero-length",
        "silent.wav": "all silent",
        "nan.wav": "NaN",
        "huge.flac": "too long",
        "short.wav": "too short",
        "locked.wav": "permission denied",
    }
    return good, expected_reasons


def test_prepare_mixed_folder(tmp_path, is_root, monkeypatch, capsys):
    src, data = tmp_path / "src", tmp_path / "data"
    good, expected = make_mixed_folder(src, is_root, monkeypatch)
    report = prepare(src, data, SETTINGS, labels_csv=src / "labels.csv", progress=False)

    rows = read_manifest(data)
    assert len(rows) == len(good) == len(report.prepared)
    by_name = {os.path.basename(r["path"]): r for r in rows}
    assert set(by_name) == {os.path.basename(p) for p in good}
    # labels: csv > tags > folders > unknown
    assert (by_name["a1.wav"]["artist"], by_name["a1.wav"]["genres"]) == ("Alice", ["deep house"])
    assert (by_name["b1.ogg"]["artist"], by_name["b1.ogg"]["genres"]) == ("Carol", ["garage"])
    assert (by_name["b2.mp3"]["artist"], by_name["b2.mp3"]["genres"]) == ("Bob", ["garage"])
    assert (by_name["c1.m4a"]["artist"], by_name["c1.m4a"]["genres"]) == ("Dana", ["tech house", "garage"])
    labels = json.loads((data / "labels.json").read_text())
    assert labels["artists"][0] == "unknown" and labels["genres"][0] == "unknown"
    assert set(labels["artists"]) == {"unknown", "Alice", "Bob", "Carol", "Dana"}
    assert set(labels["genres"]) == {"unknown", "deep house", "garage", "tech house"}

    for row in rows:
        audio = load_track(data, row["id"])
        assert audio.dtype == np.int16 and audio.ndim == 1
        assert isinstance(audio, np.memmap)
        assert row["sample_rate"] == SR and abs(row["seconds"] - 5.0) < 0.1
        assert len(audio) == row["samples"]
        assert row["id"] == row["sha256"][:16] and row["split"] in ("train", "valid")
        assert abs(row["bpm"] - 120) < 2  # 120 BPM material
        peak = np.abs(audio.astype(np.float32)).max() / 32767
        assert 0.05 < peak <= 0.99  # loudness-normalised, not clipped
    for artist in {r["artist"] for r in rows}:  # every artist contributes validation audio (one track each: a tail)
        assert all(r["valid_from"] is not None and r["split"] == "train" for r in rows if r["artist"] == artist)

    reasons = {os.path.basename(s.path): s.reason for s in report.skipped}
    assert set(reasons) == set(expected)
    for name, reason in expected.items():
        assert reason in reasons[name], (name, reasons[name])
    on_disk = json.loads((data / "report.json").read_text())
    assert len(on_disk["skipped"]) == len(expected)
    assert any(p.endswith("cover.jpg") for p in on_disk["ignored"])
    printed = capsys.readouterr()
    assert all(f"{name}:" in printed.out + printed.err for name in expected)


def test_prepare_is_incremental_and_never_duplicates(tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    write(src / "A/house/one.wav", music_like(3.0, SR, seed=1), SR)
    write(src / "A/house/two.wav", music_like(3.0, SR, seed=2), SR)
    first = prepare(src, data, SETTINGS, progress=False)
    assert len(first.prepared) == 2
    before = {r["id"]: r for r in read_manifest(data)}
    splits = {i: r["split"] for i, r in before.items()}

    write(src / "B/garage/three.wav", music_like(3.0, SR, seed=3), SR)
    (src / "copy_of_one.wav").write_bytes((src / "A/house/one.wav").read_bytes())
    second = prepare(src, data, SETTINGS, progress=False)
    assert len(second.prepared) == 1 and second.already_present == 3
    rows = read_manifest(data)
    assert len(rows) == 3 and len({r["id"] for r in rows}) == 3
    assert all(splits[r["id"]] == r["split"] for r in rows if r["id"] in splits)  # splits are stable
    labels = json.loads((data / "labels.json").read_text())
    assert labels["artists"][:2] == ["unknown", "A"] and labels["artists"][2] == "B"  # ids never move

    # a kill mid-write leaves a torn last line: the next run ignores it and loses nothing else
    with open(data / "manifest.jsonl", "a") as handle:
        handle.write('{"id": "torn')
    third = prepare(src, data, SETTINGS, progress=False)
    assert len(third.prepared) == 0 and len(read_manifest(data)) == 3


def test_prepare_with_workers_matches_serial(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"A/house/{i}.wav", music_like(2.0, SR, seed=i), SR)
    prepare(src, tmp_path / "serial", SETTINGS, progress=False)
    prepare(src, tmp_path / "parallel", SETTINGS, workers=2, progress=False)
    serial, parallel = read_manifest(tmp_path / "serial"), read_manifest(tmp_path / "parallel")
    strip = lambda rows: sorted((r["id"], r["split"], r["seconds"], r["bpm"]) for r in rows)  # noqa: E731
    assert strip(serial) == strip(parallel)
    for row in serial:
        assert np.array_equal(load_track(tmp_path / "serial", row["id"]), load_track(tmp_path / "parallel", row["id"]))


def test_prepare_cli(tmp_path, capsys):
    src = tmp_path / "src"
    write(src / "A/house/one.wav", music_like(5.0, 22050, seed=1), 22050)
    (src / "broken.wav").write_bytes(b"RIFF")
    code = main(["prepare", str(src), "-o", str(tmp_path / "data"), "--sr", "16000", "--min-seconds", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "prepared 1 new tracks" in out and "1 skipped" in out
    assert main(["prepare", str(tmp_path / "nope"), "-o", str(tmp_path / "data")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_center_vocal_removal_skips_mono_files(tmp_path):
    src = tmp_path / "src"
    write(src / "stereo.wav", music_like(2.0, SR, seed=1), SR)
    write(src / "mono.wav", music_like(2.0, SR, seed=2, channels=1), SR)
    settings = PrepareSettings(sample_rate=SR, min_seconds=1.0, remove_vocals="center")
    report = prepare(src, tmp_path / "data", settings, progress=False)
    assert len(report.prepared) == 1
    assert [os.path.basename(s.path) for s in report.skipped] == ["mono.wav"]
    assert "needs stereo" in report.skipped[0].reason


def test_files_that_cannot_be_prepared_are_skipped_not_fatal(tmp_path):
    """A FIFO named *.wav (would block forever), a 6-channel file with centre vocal removal (the remover
    refuses it), an m4a longer than --max-seconds (stopped while decoding): each skipped with its reason,
    the rest prepared."""
    src = tmp_path / "src"
    write(src / "good.wav", music_like(2.0, SR, seed=1), SR)
    write(src / "surround.wav", np.tile(music_like(2.0, SR, seed=2, channels=1), (6, 1)), SR)
    os.mkfifo(src / "pipe.wav")
    settings = PrepareSettings(sample_rate=SR, min_seconds=1.0, remove_vocals="center")
    report = prepare(src, tmp_path / "data", settings, progress=False)
    reasons = {os.path.basename(s.path): s.reason for s in report.skipped}
    assert len(report.prepared) == 1 and set(reasons) == {"surround.wav", "pipe.wav"}, reasons
    assert reasons["pipe.wav"] == "not a regular file" and reasons["surround.wav"].startswith("vocal removal:")

    long = tmp_path / "long"
    write_m4a(long / "long.m4a", music_like(6.0, SR, seed=3), SR)
    report = prepare(long, tmp_path / "data2", PrepareSettings(sample_rate=SR, min_seconds=1.0, max_seconds=3.0),
                     progress=False)
    assert [s.reason for s in report.skipped] == ["too long (> --max-seconds 3)"]


def test_load_audio_stops_at_max_seconds(tmp_path):
    from housebox.audio.io import AudioError, load_audio

    for name, writer in (("a.flac", write), ("a.m4a", write_m4a)):
        path = writer(tmp_path / name, music_like(4.0, SR, seed=4), SR)
        assert load_audio(path, max_seconds=5.0).seconds == pytest.approx(4.0, abs=0.1)
        with pytest.raises(AudioError, match="longer than 2 s"):
            load_audio(path, max_seconds=2.0)


def test_symlinked_artist_folders_are_followed_once(tmp_path):
    """An artist folder linked in from elsewhere is prepared under its link's name; a link back to the
    source folder (a loop) does not repeat or hang."""
    elsewhere, src = tmp_path / "elsewhere", tmp_path / "src"
    write(elsewhere / "house" / "x.wav", music_like(2.0, SR, seed=5), SR)
    write(src / "Alice" / "house" / "a.wav", music_like(2.0, SR, seed=6), SR)
    os.symlink(elsewhere, src / "Bob")
    os.symlink(src, src / "Alice" / "loop")
    report = prepare(src, tmp_path / "data", PrepareSettings(sample_rate=SR, min_seconds=1.0), progress=False)
    rows = read_manifest(tmp_path / "data")
    assert len(report.prepared) == 2 and sorted(r["artist"] for r in rows) == ["Alice", "Bob"]


def test_new_labels_relabel_tracks_already_present_without_decoding(tmp_path, monkeypatch, capsys):
    """Re-running prepare with a --labels CSV re-applies the labels to tracks already prepared (no decoding),
    keeps every vocabulary id, and the CLI prints per artist where the names came from."""
    import housebox.data.prepare as prep

    src, data = tmp_path / "src", tmp_path / "data"
    write(src / "A/house/one.wav", music_like(3.0, SR, seed=1), SR)
    write(src / "A/house/two.wav", music_like(3.0, SR, seed=2), SR)
    prepare(src, data, SETTINGS, progress=False)
    before = json.loads((data / "labels.json").read_text())
    (src / "labels.csv").write_text("path,artist,genre\nA/house/two.wav,Zed,garage\n")

    def no_decoding(*args, **kwargs):
        raise AssertionError("a track already present was decoded again")

    monkeypatch.setattr(prep, "load_audio", no_decoding)
    report = prepare(src, data, SETTINGS, labels_csv=src / "labels.csv", progress=False)
    rows = {os.path.basename(r["path"]): r for r in read_manifest(data)}
    assert len(report.relabelled) == 1 and report.already_present == 2 and not report.prepared
    assert (rows["two.wav"]["artist"], rows["two.wav"]["genres"], rows["two.wav"]["label_source"]) == (
        "Zed", ["garage"], "csv")
    assert (rows["one.wav"]["artist"], rows["one.wav"]["label_source"]) == ("A", "folders")
    after = json.loads((data / "labels.json").read_text())
    assert after["artists"][: len(before["artists"])] == before["artists"] and "Zed" in after["artists"]
    assert report.artists == {"A": {"tracks": 1, "minutes": 0.05, "labels": {"folders": 1}},
                              "Zed": {"tracks": 1, "minutes": 0.05, "labels": {"csv": 1}}}
    monkeypatch.undo()
    assert main(["prepare", str(src), "-o", str(data), "--sr", str(SR), "--min-seconds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Zed" not in printed.split("prepared")[0] and "1 relabelled" in printed  # without the CSV: folders again
    assert "folders 2" in printed


_PROCESS_FILE = prepare.__globals__["process_file"]  # the real one, before any test patches the module


def _dies_on_t1(file, *args):
    """process_file, except that t1.wav ends its process as SIGKILL would (no cleanup, no exception)."""
    if file.name == "t1.wav":
        os._exit(9)
    return _PROCESS_FILE(file, *args)


def test_a_worker_killed_mid_file_skips_that_file_and_the_run_goes_on(tmp_path, monkeypatch):
    """The OOM killer ends a worker: the pool breaks, the rest is prepared one file a process, and only the
    file that kills its process again is skipped (forked workers see the patched function)."""
    import housebox.data.prepare as prep

    src = tmp_path / "src"
    for i in range(4):
        write(src / f"t{i}.wav", music_like(2.0, SR, seed=10 + i), SR)
    monkeypatch.setattr(prep, "process_file", _dies_on_t1)
    report = prepare(src, tmp_path / "data", PrepareSettings(sample_rate=SR, min_seconds=1.0), workers=2,
                     progress=False)
    assert sorted(os.path.basename(r["path"]) for r in read_manifest(tmp_path / "data")) == ["t0.wav", "t2.wav",
                                                                                           "t3.wav"]
    assert [(os.path.basename(s.path), s.reason) for s in report.skipped] == [("t1.wav", prep.WORKER_DIED)]


def test_prepare_survives_random_files(tmp_path_factory):
    """Property: files with real audio headers and random bytes behind them, valid audio of random length,
    channels and rate, and a broken sidecar: no exception, every file either prepared or skipped with a
    one-line reason, and nothing prepared before is lost."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import soundfile as sf

    headers = st.sampled_from([b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x03\x00", b"\xff\xfb\x90\x00", b""])
    junk = st.tuples(headers, st.binary(max_size=3000), st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".opus"]))
    valid = st.tuples(st.floats(0.05, 2.5), st.integers(1, 3), st.sampled_from([8000, 11025, 16000, 44100]))

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(files=st.lists(st.one_of(junk, valid), min_size=1, max_size=4))
    def one(files):
        root = tmp_path_factory.mktemp("random")
        src, data = root / "src", root / "data"
        write(src / "keep" / "kept.wav", music_like(2.0, SR, seed=1), SR)
        first = prepare(src, data, PrepareSettings(sample_rate=SR, min_seconds=1.0), progress=False)
        assert len(first.prepared) == 1
        names = []
        for i, item in enumerate(files):
            if isinstance(item[0], bytes):
                header, body, suffix = item
                (src / f"junk{i}{suffix}").write_bytes(header + body)
                names.append(f"junk{i}{suffix}")
            else:
                seconds, channels, rate = item
                audio = np.random.default_rng(i).normal(0, 0.2, (int(seconds * rate), channels)).astype(np.float32)
                sf.write(src / f"valid{i}.wav", audio, rate)
                names.append(f"valid{i}.wav")
        (src / "valid0.wav.json").write_text("{not json")  # a broken sidecar beside the audio
        report = prepare(src, data, PrepareSettings(sample_rate=SR, min_seconds=1.0), progress=False)
        rows = read_manifest(data)
        prepared = {os.path.basename(r["path"]) for r in rows}
        skipped = {os.path.basename(s.path): s.reason for s in report.skipped}
        assert "kept.wav" in prepared  # nothing prepared before is lost
        for name in names:
            assert (name in prepared) != (name in skipped), (name, skipped)
            if name in skipped:
                assert skipped[name] and "\n" not in skipped[name]

    one()


def test_sigkill_in_the_middle_of_prepare_then_again_gives_the_same_dataset(tmp_path):
    """prepare killed (SIGKILL) after some tracks: running it again finishes, with the same rows (ids, labels,
    splits) and the same audio as one uninterrupted run, and nothing duplicated."""
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "src"
    for i in range(8):
        write(src / f"A{i % 2}" / "house" / f"t{i}.wav", music_like(2.5, SR, seed=20 + i), SR)
    command = [sys.executable, "-m", "housebox", "prepare", str(src), "--sr", str(SR), "--min-seconds", "1"]
    assert subprocess.run([*command, "-o", str(tmp_path / "full")], capture_output=True).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, "-o", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        manifest = killed / "manifest.jsonl"
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_manifest(killed)) < 8, "prepare finished before it was killed: nothing tested"
    assert subprocess.run([*command, "-o", str(killed)], capture_output=True).returncode == 0

    def rows(data):
        return sorted((r["id"], r["artist"], tuple(r["genres"]), r["split"], r["valid_from"], r["samples"])
                      for r in read_manifest(data))

    assert rows(killed) == rows(tmp_path / "full") and len(rows(killed)) == 8
    for r in read_manifest(killed):
        assert np.array_equal(load_track(killed, r["id"]), load_track(tmp_path / "full", r["id"]))
