"""bench/fetch_realmusic.py without the network: tempo folding, selection, composer labels, the files it
writes (read back by housebox's own LabelCsv / prepare walk), and apt failures reported per package."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import music_like, write

from housebox.data.labels import LabelCsv, resolve_labels
from housebox.data.prepare import find_files

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "fetch_realmusic.py"


@pytest.fixture(scope="module")
def fr():
    spec = importlib.util.spec_from_file_location("fetch_realmusic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_realmusic"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


# ---- tempo folding and selection ------------------------------------------------------------------


def test_fold_tempo_into_range(fr):
    assert fr.fold_tempo(125.0, 110, 140) == 125.0
    assert fr.fold_tempo(62.5, 110, 140) == 125.0  # half-time reading doubled
    assert fr.fold_tempo(250.0, 110, 140) == 125.0  # double-time reading halved
    assert fr.fold_tempo(110.0, 110, 140) == 110.0 and fr.fold_tempo(140.0, 110, 140) == 140.0
    assert fr.fold_tempo(100.0, 110, 140) is None  # 200 and 50 are out too
    assert fr.fold_tempo(150.0, 110, 140) is None
    assert fr.fold_tempo(None, 110, 140) is None and fr.fold_tempo(0.0, 110, 140) is None


def test_excerpt_window(fr):
    assert fr.excerpt_window(300.0, 10.0, 90.0) == (10.0, 90.0)
    assert fr.excerpt_window(95.0, 10.0, 90.0) == (5.0, 90.0)  # pulled back to fit
    assert fr.excerpt_window(70.0, 10.0, 90.0) == (0.0, 70.0)  # the whole short track


def _rec(artist, kick, bpm=125.0, seconds=120.0, sha1=None, **extra):
    return {"artist": artist, "kick": kick, "full": 0.5, "raw_bpm": bpm, "seconds": seconds, "sha1": sha1, **extra}


def test_select_thresholds_and_reasons(fr):
    records = [
        _rec("a", 0.8, sha1="x1"),                    # kept
        _rec("a", 0.9, bpm=63.0, sha1="x2"),          # half-time: folded to 126, kept
        _rec("a", 0.9, bpm=100.0, sha1="x3"),         # out of range even folded
        _rec("a", 0.2, sha1="x4"),                    # weak kick
        _rec("a", 0.9, seconds=59.0, sha1="x5"),      # too short
        _rec("b", 0.95, sha1="x1"),                   # same content as the first: duplicate
        _rec("b", 0.9, sha1="x6", error="boom"),      # analysis failed
        {"artist": "b", "seconds": None, "error": "soundfile cannot read it", "sha1": "x7"},
    ]
    out = fr.select(records, 110, 140, 60, 0.5, 10)
    assert [r["selected"] for r in out] == [True, True, False, False, False, False, False, False]
    assert out[1]["bpm"] == pytest.approx(126.0)
    assert out[2]["bpm"] is None and "outside" in out[2]["reason"]
    assert "kick periodicity 0.20" in out[3]["reason"]
    assert "shorter" in out[4]["reason"]
    assert "duplicate" in out[5]["reason"]
    assert "analysis failed: boom" in out[6]["reason"]
    assert out[7]["reason"].startswith("unreadable")
    # the threshold is inclusive and actually used: lowering it admits the weak-kick track
    again = fr.select([dict(r) for r in records[:4]], 110, 140, 60, 0.2, 10)
    assert [r["selected"] for r in again] == [True, True, False, True]


def test_select_caps_each_artist_keeping_the_most_periodic(fr):
    records = [_rec("a", k, sha1=f"a{i}") for i, k in enumerate([0.5, 0.9, 0.7, 0.6, 0.8])]
    records += [_rec("b", k, sha1=f"b{i}") for i, k in enumerate([0.55, 0.65])]
    fr.select(records, 110, 140, 60, 0.5, 3)
    kept_a = sorted(r["kick"] for r in records if r["artist"] == "a" and r["selected"])
    assert kept_a == [0.7, 0.8, 0.9]
    assert all("max-tracks-per-artist 3" in r["reason"] for r in records if r["artist"] == "a" and not r["selected"])
    assert all(r["selected"] for r in records if r["artist"] == "b")  # the cap is per artist


def test_select_drops_the_same_piece_shipped_twice(fr):
    records = [_rec("Maxstack", 0.6, sha1="s1", name="Through Space.ogg"),
               _rec("Maxstack", 0.7, sha1="s2", name="through_space.ogg"),  # another game's copy
               _rec("Other", 0.7, sha1="s3", name="through_space.ogg"),     # another artist's piece
               _rec("Maxstack", 0.7, sha1="s4", name="through_space_2.ogg")]
    fr.select(records, 110, 140, 60, 0.5, 10)
    assert [r["selected"] for r in records] == [True, False, True, True]
    assert "same artist and title" in records[1]["reason"]


# ---- composers ----------------------------------------------------------------------------------------

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: game

Files: *
Copyright: 2011-2021 Some Developer <dev@example.org>
License: GPL-2+

Files: data/music/*
Copyright: 2010 Marek Moeckel <wansti@example.org>
License: CC-BY-SA-3.0

Files: base/music/David01.ogg
       base/music/Psymong*.ogg
Copyright: David Reeves (Destructavator)
           Simon Green (Psymong)
License: GPL-2

Files: music/hr3-*
Copyright: Shawn Parrotte (http://www.example.com)
License: CC-BY-SA-3.0
"""


def test_dep5_picks_the_most_specific_stanza(fr):
    stanzas = fr.parse_dep5(COPYRIGHT)
    assert len(stanzas) == 4
    holder, level, licence = fr.dep5_composer(stanzas, "usr/share/games/x/music/hr3-caves.ogg")
    assert fr.clean_name(holder) == "Shawn Parrotte" and level == "file" and licence == "CC-BY-SA-3.0"
    holder, level, _ = fr.dep5_composer(stanzas, "usr/share/games/x/music/theme.ogg")  # via 'music/*'
    assert fr.clean_name(holder) == "Marek Moeckel" and level == "folder"
    holder, level, licence = fr.dep5_composer(stanzas, "usr/share/x/sounds/boom.ogg")  # only 'Files: *'
    assert holder is None and licence == "GPL-2+"
    # several holders: the one the file name names
    holder, _, _ = fr.dep5_composer(stanzas, "usr/share/x/base/0music.pk3.d/music/PsymongN1.ogg")
    assert fr.clean_name(holder) == "Simon Green"
    holder, _, _ = fr.dep5_composer(stanzas, "usr/share/x/base/0music.pk3.d/music/David01.ogg")
    assert fr.clean_name(holder) == "David Reeves"


def test_names_are_cleaned_and_merged_per_person(fr):
    assert fr.clean_name("2011-2021, 2013 Zeno Rogue <zeno@example.org>") == "Zeno Rogue"
    assert fr.clean_name('Kevin MacLeod - "Hitman" [edit]') == "Kevin MacLeod"
    assert fr.clean_name("4T Thieves") == "4T Thieves"
    assert fr.clean_name("www.example.org") == ""
    known = ["Marek Moeckel <wansti@example.org>", "Gerd (elysis) Raudenbusch", "Christian Hoffmann"]
    assert fr.canonical_name("Wansti", known) == "Marek Moeckel"
    assert fr.canonical_name("elysis", known) == "Gerd Raudenbusch"
    assert fr.canonical_name('Christian "Crystan" Hoffmann', known) == "Christian Hoffmann"
    assert fr.canonical_name("Obsidian Shell", known) == "Obsidian Shell"
    assert fr.slugify("Gerd Raudenbusch") == "gerd-raudenbusch" and fr.slugify("!!") == "unknown"


def _package(fr, root: Path, name: str, copyright: str | None) -> object:
    doc = root / "usr" / "share" / "doc" / name / "copyright"
    if copyright is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(copyright)
    return fr.Package(name=name, version="1.0-1", deb=root / f"{name}_1.0-1_all.deb", deb_bytes=0, root=root,
                      copyright=doc if copyright is not None else None)


def test_label_tracks_sources_in_order(fr, tmp_path):
    root = tmp_path / "pkg"
    music = root / "usr" / "share" / "games" / "x" / "music"
    files = {name: write(music / name, music_like(1.0, 8000, channels=1), 8000) for name in
             ("hr3-caves.wav", "theme.wav", "credited.wav")}
    (music / "credits.txt").write_text("Credited.wav=HSR <http://example.org>\n")
    write(music / "albums" / "a" / "t1.wav", music_like(1.0, 8000, channels=1), 8000)
    (music / "albums" / "a" / "album.json").write_text(json.dumps(
        {"author": "Album Person", "tracks": [{"filename": "t1.wav", "author": "Track Person"}]}))
    package = _package(fr, root, "x-music", COPYRIGHT)
    tracks = [fr.Track(package="x-music", file=p, relpath=p.relative_to(root).as_posix())  # tiny: not via find_audio
              for p in sorted(music.rglob("*.wav"))]
    fr.label_tracks(package, tracks)
    by_name = {t.file.name: (t.artist, t.artist_source) for t in tracks}
    assert by_name["hr3-caves.wav"] == ("Shawn Parrotte", "copyright")
    assert by_name["theme.wav"] == ("Marek Moeckel", "copyright")
    assert by_name["credited.wav"] == ("HSR", "credits.txt")  # credits.txt beats the music/* stanza
    assert by_name["t1.wav"] == ("Track Person", "album.json")
    # no copyright at all: the package name
    bare = _package(fr, tmp_path / "bare", "y-data", None)
    track = fr.Track(package="y-data", file=files["theme.wav"], relpath="usr/share/y/theme.wav")
    fr.label_tracks(bare, [track])
    assert (track.artist, track.artist_source) == ("y-data", "package")


def test_upstream_author_only_when_sole(fr):
    text = "This package was debianized by X.\n\nUpstream Authors:\n\t Max McCracken\n\nCopyright (C) 2007 Max McCracken\n"
    assert fr.clean_name(fr.upstream_author(text)) == "Max McCracken"
    assert fr.upstream_author("Upstream Authors:\n A One\n B Two\n\nrest") is None
    assert fr.upstream_author("nothing here") is None


# ---- the files it writes ----------------------------------------------------------------------------


def test_written_labels_are_read_by_housebox(fr, tmp_path):
    root = tmp_path / "cache" / "unpacked" / "pkg"
    package = _package(fr, root, "pkg", COPYRIGHT)
    tracks = []
    specs = [("Gerd Raudenbusch", "a b.wav", True), ("Gerd Raudenbusch", "sub/a b.wav", True),
             ("blkrbt", "c.wav", True), ("blkrbt", "d.wav", False)]
    for i, (artist, rel, chosen) in enumerate(specs):
        path = write(root / "music" / rel, music_like(1.0, 8000, seed=i, channels=1), 8000)
        record = {"seconds": 1.0, "selected": chosen, "bpm": 120.0, "kick": 0.9, "full": 0.5}
        tracks.append(fr.Track(package="pkg", file=path, relpath=f"music/{rel}", artist=artist, record=record))
    out = tmp_path / "out"
    rows = fr.write_selection(out, tracks, [package], "game electronic", {"k": 1})
    assert len(rows) == 3
    with open(out / "labels.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["path", "artist", "genre"]
    table = LabelCsv(out / "labels.csv")
    audio, _ = find_files(out / "tracks")  # what `housebox prepare` walks
    assert len(audio) == 3
    for file in audio:
        assert file.is_file() and not file.is_symlink()
        labels = resolve_labels(file, out / "tracks", table)
        assert labels.source == "csv"
        assert labels.genres == ("game electronic",)
        assert labels.artist in {"Gerd Raudenbusch", "blkrbt"}
        assert file.parent.name == fr.slugify(labels.artist)
    names = sorted(p.relative_to(out / "tracks").as_posix() for p in audio)
    assert len(set(names)) == 3  # the two 'a b.wav' do not collide
    assert all(" " not in n for n in names)
    doc = json.loads((out / "selection.json").read_text())
    assert len(doc["tracks"]) == 4 and doc["packages"][0]["version"] == "1.0-1"
    assert sum(t["output"] is not None for t in doc["tracks"]) == 3
    assert (out / "licences" / "pkg.copyright").read_text() == COPYRIGHT
    # a re-run replaces its own tracks folder; a foreign one is left alone
    fr.write_selection(out, tracks[:1], [package], "game electronic", {})
    assert len(find_files(out / "tracks")[0]) == 1
    foreign = tmp_path / "foreign"
    (foreign / "tracks").mkdir(parents=True)
    with pytest.raises(fr.FetchError, match="refusing"):
        fr.write_selection(foreign, tracks, [package], "g", {})


# ---- apt failures, and a whole run from a cached .deb -------------------------------------------------


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _fake_apt(tmp_path: Path) -> Path:
    """apt-get / apt-cache that know no package; apt-get logs its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                                     "if [ \"$1\" = update ]; then exit 0; fi\n"
                                     "echo \"E: Unable to locate package $2\" >&2\nexit 100\n")
    (bin_dir / "apt-cache").write_text("#!/bin/sh\nexit 100\n")
    for tool in ("apt-get", "apt-cache"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def test_missing_package_is_one_line_and_update_runs_once(fr, tmp_path, monkeypatch):
    bin_dir = _fake_apt(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    apt = fr.Apt(tmp_path / "debs")
    with pytest.raises(fr.FetchError, match=r"^nosuch-music: no such package"):
        apt.download("nosuch-music")
    with pytest.raises(fr.FetchError, match=r"^other-music: no such package"):
        apt.download("other-music")
    calls = (tmp_path / "apt.log").read_text().split("\n")
    assert calls.count("update") == 1
    assert calls.count("download nosuch-music") == 2 and calls.count("download other-music") == 1


def test_apt_get_absent(fr, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get anywhere
    with pytest.raises(fr.FetchError, match="apt-get not found"):
        fr.Apt(tmp_path / "debs").download("x")


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")
def test_main_from_a_cached_deb_skips_missing_packages(fr, tmp_path, monkeypatch, capsys):
    bin_dir = _fake_apt(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: tiny-music\nVersion: 2.0-1\nArchitecture: all\nMaintainer: T <t@example.org>\nDescription: t\n")
    music = tree / "usr" / "share" / "games" / "tiny" / "music"
    sr = 16000
    write(music / "steady.wav", music_like(24.0, sr, seed=1, channels=1), sr)  # kick every beat at 120 BPM
    rng = np.random.default_rng(0)
    write(music / "noise.wav", (0.3 * rng.standard_normal((1, 24 * sr))).astype(np.float32), sr)
    doc = tree / "usr" / "share" / "doc" / "tiny-music"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: music/*\nCopyright: 2020 Tiny Composer\nLicense: CC0-1.0\n")
    out = tmp_path / "out"
    (out / "cache" / "debs").mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out / "cache" / "debs" / "tiny-music_2.0-1_all.deb")],
                   check=True, capture_output=True)
    argv = ["-o", str(out), "--packages", "nosuch-music", "tiny-music", "--min-seconds", "20",
            "--analyse-seconds", "20", "--analyse-offset", "2", "--min-periodicity", "0.3", "--no-progress"]
    assert fr.main(argv) == 0
    captured = capsys.readouterr()
    assert "skipping nosuch-music: no such package" in captured.err
    rows = _csv_rows(out / "labels.csv")
    assert [(r["path"], r["artist"]) for r in rows] == [("tiny-composer/steady.wav", "Tiny Composer")]
    selection = json.loads((out / "selection.json").read_text())
    by_file = {Path(t["path"]).name: t for t in selection["tracks"]}
    assert by_file["steady.wav"]["bpm"] == pytest.approx(120.0, abs=1.0)
    assert not by_file["noise.wav"]["selected"]
    assert selection["packages"][0]["version"] == "2.0-1"
    # a re-run reads the analysis cache instead of analysing again
    cache = json.loads((out / "cache" / "analysis.json").read_text())
    for value in cache.values():
        value["kick"] = 0.0  # poison it: the re-run must use these values
    (out / "cache" / "analysis.json").write_text(json.dumps(cache))
    assert fr.main(argv) == 0
    assert _csv_rows(out / "labels.csv") == []
