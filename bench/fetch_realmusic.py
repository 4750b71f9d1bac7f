"""A real-music development set: free game music from Debian packages, filtered to steady-beat tracks.

    .venv/bin/python bench/fetch_realmusic.py -o ~/.cache/housebox/realmusic

1. `apt-get download` each package (into OUT/cache/debs, reused on re-runs; `apt-get update` runs
   only when a package cannot be located), `dpkg-deb -x` it into OUT/cache/unpacked/PKG, pulls the
   audio out of game archives (.pk3/.zip) and lists what `soundfile` reads (wav, flac, ogg, opus,
   mp3) of at least `--min-seconds`.
2. Analyses an excerpt of each track (`--analyse-seconds`, from `--analyse-offset`; the offset steps
   over intros and is pulled back for tracks too short to hold it) at 16 kHz mono with housebox's
   own features: tempo (`estimate_tempo`), kick periodicity (`beat_periodicity`, its default
   20-150 Hz band) and full-band periodicity (band=None), both at the folded tempo. Results are cached
   in OUT/cache/analysis.json, so re-runs only analyse new files.
3. Selects tracks whose tempo, folded by an octave where that lands it in [--min-bpm, --max-bpm],
   is in range, that last at least --min-seconds and whose kick periodicity is at least
   --min-periodicity; keeps the --max-tracks-per-artist most periodic per artist.
4. Labels each track by composer where the package says who wrote which file (a DEP-5 copyright
   stanza naming the file or its music folder, a `credits.txt` of `file=name` lines or an
   `album.json` next to the file, or the sole upstream author of a music-only package), else by
   package name.
5. Writes OUT/tracks/<artist>/<file> (hard links into the cache, copies across file systems; never
   symlinks, which `housebox prepare` skips), OUT/labels.csv (`path,artist,genre`, path relative to
   OUT/tracks, as `housebox prepare OUT/tracks --labels OUT/labels.csv` resolves it),
   OUT/licences/PKG.copyright, and OUT/selection.json (every track seen: package, path, seconds,
   BPM, periodicities, selected or why not, licence), then prints the periodicity distribution and a
   table per artist.

The output belongs outside the repository (default ~/.cache/housebox/realmusic): it is audio.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUTPUT = Path.home() / ".cache" / "housebox" / "realmusic"
# Debian (bookworm) packages of free game music, each under 300 MB, that hold tracks passing the default
# selection (chosen from a wider survey: warzone2100-music is mostly 80/160 BPM, lincity-ng-data,
# powermanga-data, cube2-data and marsshooter-data (kick periodicity 0.37-0.38 at best) gave none;
# openarena-data and trigger-rally-data hold no music).
# Music-only packages first: of two copies of a piece (same artist, same title), the first is kept.
DEFAULT_PACKAGES = (
    "nexuiz-music",
    "singularity-music",
    "ufoai-music",
    "planetblupi-music-ogg",
    "hyperrogue-music",
    "supertux-data",
    "hedgewars-data",
    "freedroidrpg-data",
    "colobot-common-sounds",
    "starfighter-data",
    "xmoto-data",
    "extremetuxracer-data",
    "warmux-data",
    "scorched3d-data",
)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}  # what soundfile decodes
ARCHIVE_SUFFIXES = {".pk3", ".pk4", ".zip"}  # game data archives (zip) that may hold the music
MIN_AUDIO_BYTES = 200_000  # smaller files are sound effects, not tracks: not even probed
MUSIC_DIR_WORDS = {"music", "musics", "songs", "cdtracks", "soundtrack", "soundtracks", "bgm", "tracks", "albums"}
ANALYSIS_SAMPLE_RATE = 16000
ANALYSIS_VERSION = 1  # bump when the analysis changes, to invalidate the cache
DEFAULT_GENRE = "game electronic"
YEARS = r"^(?:(?:19|20)\d\d(?:\s*[-–]\s*(?:19|20)?\d\d)?[\s,]*)+"  # '2011-2021, 2013 ' before a name


class FetchError(RuntimeError):
    """A package that could not be fetched or unpacked. The message is one line and names it."""


@dataclass
class Package:
    name: str
    version: str
    deb: Path
    deb_bytes: int
    root: Path  # where the .deb is unpacked
    copyright: Path | None  # usr/share/doc/PKG/copyright, when the package has one

    def as_json(self) -> dict:
        return {"package": self.name, "version": self.version, "deb": str(self.deb), "deb_mb": round(self.deb_bytes / 1e6, 1),
                "licence_file": str(self.copyright) if self.copyright else None,
                "licence_path_in_package": f"usr/share/doc/{self.name}/copyright"}


@dataclass
class Track:
    package: str
    file: Path  # the decodable file, in the cache
    relpath: str  # its path inside the package (archive members as ARCHIVE.d/MEMBER)
    artist: str = ""
    artist_source: str = ""
    licence: str = ""
    record: dict = field(default_factory=dict)  # the analysis


# ---- fetching ------------------------------------------------------------------------------------


class Apt:
    """`apt-get download` with one `apt-get update` at most, and only when a package cannot be located."""

    def __init__(self, debs: Path):
        self.debs = debs
        self.updated = False

    def _run(self, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise FetchError(f"{args[0]} not found: this needs a Debian-based system with apt (or the .debs in {self.debs})") from None

    def size_mb(self, name: str) -> float | None:
        """The .deb's size from `apt-cache show`, None where apt-cache does not know it."""
        if not shutil.which("apt-cache"):
            return None
        result = self._run(["apt-cache", "show", name])
        sizes = re.findall(r"^Size:\s*(\d+)", result.stdout, flags=re.MULTILINE)
        return int(sizes[0]) / 1e6 if sizes else None

    def download(self, name: str) -> Path:
        self.debs.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            result = self._run(["apt-get", "download", name], cwd=self.debs)
            if result.returncode == 0:
                break
            message = (result.stderr or result.stdout).strip()
            if "Unable to locate package" in message and not self.updated and attempt == 0:
                self.updated = True
                update = self._run(["apt-get", "update"])
                if update.returncode != 0:
                    raise FetchError(f"{name}: not in the apt lists and `apt-get update` failed: {_last_line(update.stderr)}")
                continue
            if "Unable to locate package" in message:
                raise FetchError(f"{name}: no such package in the apt sources")
            raise FetchError(f"{name}: apt-get download failed: {_last_line(message)}")
        found = cached_deb(self.debs, name)
        if found is None:
            raise FetchError(f"{name}: apt-get download succeeded but no {name}_*.deb in {self.debs}")
        return found


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip() and not line.startswith("W:")]
    return lines[-1] if lines else "(no message)"


def cached_deb(debs: Path, name: str) -> Path | None:
    """The newest already-downloaded .deb of package `name` (apt names them NAME_VERSION_ARCH.deb)."""
    found = sorted(debs.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def deb_field(deb: Path, name: str) -> str:
    try:
        result = subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise FetchError(f"{deb.name}: dpkg-deb not found (needs a Debian-based system)") from None
    if result.returncode != 0:
        raise FetchError(f"{deb.name}: not a readable .deb ({_last_line(result.stderr)})")
    return result.stdout.strip()


def unpack(deb: Path, dest: Path) -> None:
    """`dpkg-deb -x` into `dest`, unless `dest` already holds this very .deb's files."""
    marker = dest / ".housebox-unpacked"
    if marker.exists() and marker.read_text().strip() == deb.name:
        return
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FetchError(f"{deb.name}: dpkg-deb -x failed ({_last_line(result.stderr)})")
    extract_archives(dest)
    marker.write_text(deb.name + "\n")


def extract_archives(root: Path) -> list[Path]:
    """Audio members (>= MIN_AUDIO_BYTES) of the zip archives (.pk3 ...) under `root`, to ARCHIVE.d/MEMBER."""
    out = []
    for archive in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in ARCHIVE_SUFFIXES):
        try:
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    member = Path(info.filename)
                    if info.is_dir() or member.suffix.lower() not in AUDIO_SUFFIXES or info.file_size < MIN_AUDIO_BYTES:
                        continue
                    if member.is_absolute() or ".." in member.parts:
                        continue
                    target = archive.with_name(archive.name + ".d") / member
                    if not (target.exists() and target.stat().st_size == info.file_size):
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with zipped.open(info) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                    out.append(target)
        except zipfile.BadZipFile:
            continue  # not every .zip/.pk3 is one
    return out


def fetch_package(name: str, cache: Path, apt: Apt, max_mb: float) -> Package:
    deb = cached_deb(cache / "debs", name)
    if deb is None:
        size = apt.size_mb(name)
        if size is not None and size > max_mb:
            raise FetchError(f"{name}: {size:.0f} MB, over --max-package-mb {max_mb:g}; skipped")
        deb = apt.download(name)
    version = deb_field(deb, "Version")
    root = cache / "unpacked" / name
    unpack(deb, root)
    copyright = root / "usr" / "share" / "doc" / name / "copyright"
    return Package(name=name, version=version, deb=deb, deb_bytes=deb.stat().st_size, root=root,
                   copyright=copyright if copyright.is_file() else None)


def find_audio(package: Package) -> list[Track]:
    tracks = []
    for path in sorted(package.root.rglob("*")):
        if (path.suffix.lower() in AUDIO_SUFFIXES and path.is_file() and not path.is_symlink()
                and path.stat().st_size >= MIN_AUDIO_BYTES):
            tracks.append(Track(package=package.name, file=path, relpath=path.relative_to(package.root).as_posix()))
    return tracks


# ---- composers -------------------------------------------------------------------------------------


def clean_name(text: str) -> str:
    """'2011-2021 Zeno Rogue <zeno@x.com>' -> 'Zeno Rogue'; 'Kevin MacLeod - "Hitman" [edit]' -> 'Kevin MacLeod'."""
    text = re.sub(r"<[^>]*>|\([^)]*\)|\[[^\]]*\]", " ", text)  # emails, urls in brackets, remarks
    text = re.sub(r"(https?://|www\.)\S+", " ", text)
    text = re.sub(r"\S+@\S+", " ", text)
    text = re.split(r"\s+-\s+", text)[0]  # 'Name - "Title"'
    text = re.sub(r"^(copyright|\(c\)|©)\s*", "", text.strip(), flags=re.IGNORECASE)
    text = re.sub(YEARS, "", text)
    text = text.replace('"', "").replace("'", "")
    return " ".join(text.strip(" ,;:.").split())


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "unknown"


def safe_file_name(name: str) -> str:
    stem, suffix = os.path.splitext(name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "track"
    return stem + suffix.lower()


@dataclass(frozen=True)
class Dep5Stanza:
    patterns: tuple[str, ...]
    holders: tuple[str, ...]  # as written, less leading years: 'Marek Moeckel <wansti@gmx.de>'
    licence: str


def parse_dep5(text: str) -> list[Dep5Stanza]:
    """The `Files:` stanzas of a machine-readable debian/copyright (empty for free-form files)."""
    stanzas = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" not in fields:
            continue
        holders = []
        for line in fields.get("copyright", "").splitlines():
            raw = re.sub(YEARS, "", line.strip())
            if clean_name(raw) and raw not in holders:
                holders.append(raw)
        licence = fields.get("license", "").splitlines()[0].strip() if fields.get("license") else ""
        stanzas.append(Dep5Stanza(patterns=tuple(fields["files"].split()), holders=tuple(holders), licence=licence))
    return stanzas


def pattern_score(pattern: str, relpath: str) -> tuple[int, str] | None:
    """How specifically a DEP-5 `Files:` pattern names `relpath` (literal characters matched), or None.

    Source-tree patterns and installed paths differ in their leading folders (`data/audio/music/*`
    against `usr/share/games/x/audio/music/a.ogg`), so leading components of the pattern may be
    dropped, as long as a literal component is left (a bare `*` only counts as itself)."""
    parts = [p for p in pattern.strip().strip("/").split("/") if p]
    for drop in range(len(parts)):
        sub = "/".join(parts[drop:])
        literal = len(re.sub(r"[*?]", "", sub))
        if drop and literal == 0:
            break
        regex = "(?:^|/)" + re.escape(sub).replace(r"\*", ".*").replace(r"\?", ".") + "$"
        if re.search(regex, relpath, flags=re.IGNORECASE):
            return literal, sub
    return None


def _pattern_level(sub: str) -> str | None:
    """'file' when a matched pattern names the track itself ('hr3-*.ogg', 'David01.ogg'), 'folder' when
    it names its music folder ('music/*'), None when it names neither ('*', 'data/*')."""
    parts = sub.split("/")
    if re.sub(r"[*?.]|ogg|opus|mp3|flac|wav", "", parts[-1].lower()):
        return "file"
    if len(parts) > 1 and parts[-2].lower() in MUSIC_DIR_WORDS:
        return "folder"
    return None


def _tokens(text: str) -> list[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def holder_for_file(holders: tuple[str, ...], file_name: str) -> str | None:
    """The one holder whose name (a word of 4+ letters, or the whole name run together) the file name holds."""
    stem = re.sub(r"[^a-z0-9]", "", Path(file_name).stem.lower())
    file_words = [w for w in _tokens(Path(file_name).stem) if len(w) >= 4 and not w.isdigit()]
    hits = []
    for holder in holders:
        words = [w for w in _tokens(re.sub(r"\S+@\S+|(https?://|www\.)\S+", " ", holder)) if len(w) >= 4 and not w.isdigit()]
        joined = "".join(_tokens(clean_name(holder)))
        found = any(w in stem for w in words) or (len(joined) >= 4 and joined in stem)
        found = found or any(any(w.startswith(fw) for w in words) for fw in file_words)
        if found:
            hits.append(holder)
    return hits[0] if len(hits) == 1 else None


def dep5_composer(stanzas: list[Dep5Stanza], relpath: str) -> tuple[str | None, str | None, str]:
    """(raw holder or None, 'file'/'folder' level, licence) from the most specific stanza naming the file;
    ties go to the later stanza, as in DEP-5. Several holders: the one the file name names, if any."""
    best, best_score, best_sub = None, -1, ""
    for stanza in stanzas:
        for pattern in stanza.patterns:
            hit = pattern_score(pattern, relpath)
            if hit is not None and hit[0] >= best_score:
                best, best_score, best_sub = stanza, hit[0], hit[1]
    if best is None:
        return None, None, ""
    level = _pattern_level(best_sub)
    if level is None or not best.holders:
        return None, None, best.licence
    if len(best.holders) == 1:
        return best.holders[0], level, best.licence
    return holder_for_file(best.holders, Path(relpath).name), level, best.licence


def upstream_author(text: str) -> str | None:
    """The sole name under 'Upstream Author(s):' of a free-form debian/copyright, if there is exactly one."""
    match = re.search(r"^Upstream Authors?:[ \t]*(.*?)(?:\n[ \t]*\n|\Z)", text, flags=re.MULTILINE | re.DOTALL | re.IGNORECASE)
    if not match:
        return None
    names = [line.strip() for line in match.group(1).splitlines() if clean_name(line)]
    return names[0] if len(names) == 1 else None


def credits_composer(file: Path) -> str | None:
    """`credits.txt` next to the file, with lines `File.ogg=Composer <url>` (file names compared case-blind)."""
    for name in ("credits.txt", "CREDITS", "CREDITS.txt", "Credits.txt"):
        credits = file.parent / name
        if credits.is_file():
            for line in credits.read_text(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip().lower() == file.name.lower() and clean_name(value):
                    return value.strip()
    return None


def album_composer(file: Path) -> str | None:
    """`album.json` next to the file (Warzone 2100's layout): the track's author, else the album's."""
    album = file.parent / "album.json"
    if not album.is_file():
        return None
    try:
        data = json.loads(album.read_text(errors="replace"))
    except ValueError:
        return None
    for track in data.get("tracks") or []:
        if str(track.get("filename", "")).lower() == file.name.lower() and track.get("author"):
            return str(track["author"])
    return str(data["author"]) if data.get("author") else None


NOT_NAMES = {"unknown", "various", "various artists", "anonymous", "none", "artist"}


def tag_composer(file: Path) -> str | None:
    """The file's own artist tag (mutagen), unless it is empty, a bare URL or a placeholder."""
    try:
        import mutagen

        tagged = mutagen.File(str(file), easy=True)
    except Exception:  # mutagen raises many types for odd files: then there is no tag
        return None
    if tagged is None or not tagged.tags:
        return None
    for value in tagged.tags.get("artist") or []:
        if clean_name(value) and clean_name(value).lower() not in NOT_NAMES:
            return value.strip()
    return None


def canonical_name(raw: str, known: list[str]) -> str:
    """One name per person: `raw` becomes the known name (a copyright holder, another tag) whose words hold
    all of its words ('Wansti' -> 'Marek Moeckel <wansti@gmx.de>', 'elysis' -> 'Gerd (elysis) Raudenbusch'),
    or whose 2+ words it holds ('Christian "Crystan" Hoffmann' -> 'Christian Hoffmann'). Then cleaned."""
    mine = {t for t in _tokens(raw) if len(t) >= 3}
    if mine:
        for other in known:
            theirs = {t for t in _tokens(other) if len(t) >= 3}
            if other == raw or not theirs:
                continue
            if mine < theirs or (len(theirs) >= 2 and theirs < mine and clean_name(other)):
                return clean_name(other)
    return clean_name(raw)


def label_tracks(package: Package, tracks: list[Track]) -> None:
    """Set each track's artist and licence. The composer is taken from, in order: the folder's
    album.json or credits.txt, a copyright stanza naming the file, the file's artist tag, a stanza
    naming its music folder, the sole upstream author of a music-only package; else the package name.
    Names are merged per person where one holds the other's words (see `canonical_name`)."""
    text = package.copyright.read_text(errors="replace") if package.copyright else ""
    stanzas = parse_dep5(text)
    sole_author = upstream_author(text) if re.search(r"music|songs", package.name) else None
    found_per_track = []
    for track in tracks:
        holder, level, licence = dep5_composer(stanzas, track.relpath) if stanzas else (None, None, "")
        track.licence = licence
        found_per_track.append([("album.json", album_composer(track.file)), ("credits.txt", credits_composer(track.file)),
                                ("copyright", holder if level == "file" else None), ("tags", tag_composer(track.file)),
                                ("copyright", holder if level == "folder" else None), ("upstream author", sole_author)])
    known = [h for s in stanzas for h in s.holders]
    known += sorted({name for found in found_per_track for _, name in found if name}, key=lambda n: -len(_tokens(n)))
    for track, found in zip(tracks, found_per_track):
        for source, name in found:
            if name:
                track.artist, track.artist_source = canonical_name(name, known), source
                break
        else:
            track.artist, track.artist_source = package.name, "package"


# ---- analysis ------------------------------------------------------------------------------------


def fold_tempo(bpm: float | None, min_bpm: float, max_bpm: float) -> float | None:
    """`bpm` itself when in [min_bpm, max_bpm], else its double or half when that is in range, else None."""
    if bpm is None or not bpm > 0:
        return None
    for candidate in (bpm, bpm * 2.0, bpm / 2.0):
        if min_bpm <= candidate <= max_bpm:
            return candidate
    return None


def excerpt_window(total_seconds: float, offset: float, seconds: float) -> tuple[float, float]:
    """(start, length) of the analysed excerpt: from `offset`, pulled back so it fits in the track."""
    length = min(seconds, total_seconds)
    start = max(0.0, min(offset, total_seconds - length))
    return start, length


def load_excerpt(path: Path, start: float, length: float, sample_rate: int = ANALYSIS_SAMPLE_RATE):
    """Mono float32 `[T]` of `length` seconds from `start`, at `sample_rate`.

    Only the excerpt is decoded (soundfile seeks), then downmixed and resampled with housebox's own
    `to_mono`/`resample`; anything soundfile cannot seek falls back to `load_audio` of the whole file."""
    import soundfile as sf

    from housebox.audio.io import load_audio, resample, to_mono

    try:
        with sf.SoundFile(str(path)) as handle:
            sr = handle.samplerate
            handle.seek(int(start * sr))
            data = handle.read(int(length * sr), dtype="float32", always_2d=True)  # (T, C)
        samples = resample(to_mono(data.T), sr, sample_rate)[0]
    except Exception:  # soundfile cannot seek this one: decode it whole
        audio = load_audio(path, sample_rate=sample_rate, mono=True)
        samples = audio.samples[0, int(start * sample_rate): int((start + length) * sample_rate)]
    return samples


def analyse(path: Path, total_seconds: float, offset: float, seconds: float, min_bpm: float, max_bpm: float) -> dict:
    """Tempo and beat periodicities of an excerpt; `error` holds a one-line reason when it fails."""
    from housebox.audio.features import beat_periodicity, estimate_tempo

    start, length = excerpt_window(total_seconds, offset, seconds)
    record: dict = {"excerpt": [round(start, 2), round(length, 2)]}
    try:
        audio = load_excerpt(path, start, length)
        raw = estimate_tempo(audio, ANALYSIS_SAMPLE_RATE)
        bpm = fold_tempo(raw, min_bpm, max_bpm)
        at = bpm if bpm is not None else raw
        record.update(raw_bpm=round(raw, 2), periodicity_bpm=round(at, 2),
                      kick=round(beat_periodicity(audio, ANALYSIS_SAMPLE_RATE, at), 4),
                      full=round(beat_periodicity(audio, ANALYSIS_SAMPLE_RATE, at, band=None), 4))
    except Exception as err:  # FeatureError, AudioError, decoder errors: one line, keep going
        record["error"] = " ".join(str(err).split()) or type(err).__name__
    return record


def track_seconds(path: Path) -> float | None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # libsndfile raises several types for bad headers
        return None
    return info.frames / info.samplerate if info.samplerate else None


def _file_key(track: Track, settings: dict) -> str:
    stat = track.file.stat()
    raw = json.dumps([ANALYSIS_VERSION, track.package, track.relpath, stat.st_size, settings], sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class AnalysisCache:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, record: dict) -> None:
        self.entries[key] = record

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True))
        os.replace(tmp, self.path)


def analyse_tracks(tracks: list[Track], cache: AnalysisCache, args: argparse.Namespace, progress: bool = True) -> None:
    from tqdm import tqdm

    settings = {"offset": args.analyse_offset, "seconds": args.analyse_seconds, "min_bpm": args.min_bpm,
                "max_bpm": args.max_bpm, "sr": ANALYSIS_SAMPLE_RATE, "min_seconds": args.min_seconds}
    todo = []
    for track in tracks:
        key = _file_key(track, settings)
        cached = cache.get(key)
        if cached is not None:
            track.record = dict(cached)
        else:
            todo.append((key, track))
    bar = tqdm(todo, desc="analyse", unit="track", disable=not progress or not todo, dynamic_ncols=True)
    last_save = time.time()
    for key, track in bar:
        bar.set_postfix_str(f"{track.package}: {track.file.name}", refresh=True)
        record: dict = {"sha1": sha1_of(track.file)}
        seconds = track_seconds(track.file)
        record["seconds"] = round(seconds, 2) if seconds else None
        if seconds is None:
            record["error"] = "soundfile cannot read it"
        elif seconds >= args.min_seconds:
            record.update(analyse(track.file, seconds, args.analyse_offset, args.analyse_seconds, args.min_bpm, args.max_bpm))
        track.record = record
        cache.put(key, dict(record))
        if time.time() - last_save > 20:
            cache.save()
            last_save = time.time()
    cache.save()


# ---- selection -----------------------------------------------------------------------------------


def title_key(artist: str, name: str | None) -> tuple[str, str] | None:
    """('maxstack', 'throughspace') for Maxstack's 'Through Space.ogg' and 'through_space.ogg' alike."""
    title = re.sub(r"[^a-z0-9]", "", Path(name).stem.lower()) if name else ""
    return (artist.lower(), title) if title else None


def select(records: list[dict], min_bpm: float, max_bpm: float, min_seconds: float, min_periodicity: float,
           max_per_artist: int) -> list[dict]:
    """Mark each record (keys: artist, name, seconds, raw_bpm, kick, sha1, error) `selected` with a `reason`.

    Order of the checks: duplicates (same sha1, or same artist and title as an earlier record: one
    piece shipped by two games), unreadable, too short, failed analysis, tempo out of range even at
    double/half, kick periodicity under the threshold; then per artist only the `max_per_artist` most
    periodic are kept. Sets `bpm` to the folded tempo. Returns the records, in their order."""
    seen: set[str] = set()
    titles: set[tuple[str, str]] = set()
    passing: dict[str, list[dict]] = {}
    for rec in records:
        rec["selected"] = False
        rec["bpm"] = fold_tempo(rec.get("raw_bpm"), min_bpm, max_bpm)
        title = title_key(rec.get("artist", ""), rec.get("name"))
        if rec.get("sha1") and rec["sha1"] in seen:
            rec["reason"] = "duplicate of an earlier file (same content)"
            continue
        if title and title in titles:
            rec["reason"] = "duplicate of an earlier file (same artist and title)"
            continue
        if rec.get("sha1"):
            seen.add(rec["sha1"])
        if title:
            titles.add(title)
        if rec.get("seconds") is None:
            rec["reason"] = f"unreadable: {rec.get('error', 'no duration')}"
        elif rec["seconds"] < min_seconds:
            rec["reason"] = f"shorter than {min_seconds:g} s"
        elif rec.get("error"):
            rec["reason"] = f"analysis failed: {rec['error']}"
        elif rec["bpm"] is None:
            rec["reason"] = f"tempo {rec.get('raw_bpm')} BPM outside {min_bpm:g}-{max_bpm:g} (also at double/half)"
        elif rec.get("kick", 0.0) < min_periodicity:
            rec["reason"] = f"kick periodicity {rec.get('kick', 0.0):.2f} < {min_periodicity:g}"
        else:
            passing.setdefault(rec.get("artist", ""), []).append(rec)
    for group in passing.values():
        group.sort(key=lambda r: -r["kick"])
        for rank, rec in enumerate(group):
            if rank < max_per_artist:
                rec["selected"], rec["reason"] = True, "steady beat"
            else:
                rec["reason"] = f"over --max-tracks-per-artist {max_per_artist} (kick {rec['kick']:.2f})"
    return records


# ---- output ----------------------------------------------------------------------------------------


def place(src: Path, dst: Path) -> str:
    """Hard-link `src` at `dst`, or copy it where a link cannot be made. Returns 'link' or 'copy'."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return "link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def write_selection(out: Path, tracks: list[Track], packages: list[Package], genre: str, settings: dict) -> list[dict]:
    """OUT/tracks/<artist>/<file>, OUT/labels.csv, OUT/licences/, OUT/selection.json. Returns the rows written."""
    tracks_dir = out / "tracks"
    if tracks_dir.exists():
        if not (out / "selection.json").exists():
            raise FetchError(f"{tracks_dir} exists and was not written by this script (no selection.json): refusing to replace it")
        shutil.rmtree(tracks_dir)
    tracks_dir.mkdir(parents=True)
    rows, used = [], set()
    for track in tracks:
        rec = track.record
        rec["output"] = None
        if not rec.get("selected"):
            continue
        folder = slugify(track.artist)
        name = safe_file_name(track.file.name)
        if f"{folder}/{name}" in used:
            name = safe_file_name(f"{track.package}_{track.file.parent.name}_{track.file.name}")
        used.add(f"{folder}/{name}")
        place(track.file, tracks_dir / folder / name)
        rec["output"] = f"{folder}/{name}"
        rows.append({"path": f"{folder}/{name}", "artist": track.artist, "genre": genre})
    tmp = out / ".labels.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "artist", "genre"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "labels.csv")
    licences = out / "licences"
    licences.mkdir(exist_ok=True)
    for package in packages:
        if package.copyright:
            shutil.copyfile(package.copyright, licences / f"{package.name}.copyright")
    doc = {
        "settings": settings,
        "packages": [p.as_json() for p in packages],
        "tracks": [{**t.record, "package": t.package, "path": t.relpath, "file": str(t.file), "artist": t.artist,
                    "artist_source": t.artist_source, "licence": t.licence,
                    "licence_file": f"usr/share/doc/{t.package}/copyright"} for t in tracks],
    }
    tmp = out / ".selection.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "selection.json")
    return rows


def distribution(records: list[dict], min_seconds: float) -> str:
    """Deciles of kick and full-band periodicity over the analysed tracks with an in-range tempo."""
    kick = sorted(r["kick"] for r in records if r.get("bpm") is not None and "kick" in r and (r.get("seconds") or 0) >= min_seconds)
    full = sorted(r["full"] for r in records if r.get("bpm") is not None and "full" in r and (r.get("seconds") or 0) >= min_seconds)
    if not kick:
        return "periodicity: no analysed track has a tempo in range"
    def deciles(values):
        return " ".join(f"{values[min(len(values) - 1, int(q * len(values)))]:.2f}" for q in (0, .1, .2, .3, .4, .5, .6, .7, .8, .9)) + f" {values[-1]:.2f}"
    return (f"periodicity over {len(kick)} tracks with tempo in range (min, deciles 10..90 %, max):\n"
            f"  kick (20-150 Hz): {deciles(kick)}\n  full band:        {deciles(full)}")


def summary_table(tracks: list[Track]) -> str:
    groups: dict[str, list[Track]] = {}
    for track in tracks:
        groups.setdefault(track.artist, []).append(track)
    lines = [f"{'artist':28} {'package':22} {'seen':>4} {'long':>4} {'sel':>4} {'min':>6} {'BPM range':>13} {'kick med':>8} {'full med':>8}"]
    total_sel, total_min = 0, 0.0
    for artist in sorted(groups, key=lambda a: (-sum(t.record.get("selected", False) for t in groups[a]), a)):
        group = groups[artist]
        chosen = [t.record for t in group if t.record.get("selected")]
        long = sum(1 for t in group if "kick" in t.record)
        minutes = sum(r["seconds"] for r in chosen) / 60
        total_sel += len(chosen)
        total_min += minutes
        bpms = [r["bpm"] for r in chosen]
        bpm_range = f"{min(bpms):.1f}-{max(bpms):.1f}" if bpms else "-"
        kick = f"{statistics.median(r['kick'] for r in chosen):.2f}" if chosen else "-"
        full = f"{statistics.median(r['full'] for r in chosen):.2f}" if chosen else "-"
        packages = ",".join(sorted({t.package for t in group}))
        lines.append(f"{artist[:28]:28} {packages[:22]:22} {len(group):4d} {long:4d} {len(chosen):4d} {minutes:6.1f} {bpm_range:>13} {kick:>8} {full:>8}")
    lines.append(f"{'total':28} {'':22} {len(tracks):4d} {'':4} {total_sel:4d} {total_min:6.1f}")
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"output folder (default {DEFAULT_OUTPUT})")
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), help="Debian packages to fetch")
    parser.add_argument("--max-tracks-per-artist", type=int, default=12)
    parser.add_argument("--min-bpm", type=float, default=110.0)
    parser.add_argument("--max-bpm", type=float, default=140.0)
    parser.add_argument("--min-periodicity", type=float, default=0.4,
                        help="least kick (20-150 Hz) beat periodicity, 0..1 (default 0.4; over 153 surveyed game tracks "
                             "with a tempo in range, the median was 0.35, the upper quartile 0.55)")
    parser.add_argument("--min-seconds", type=float, default=60.0, help="shortest track kept (default 60)")
    parser.add_argument("--analyse-seconds", type=float, default=90.0, help="length of the analysed excerpt (default 90)")
    parser.add_argument("--analyse-offset", type=float, default=10.0,
                        help="where the excerpt starts, to step over intros (default 10 s; pulled back for short tracks)")
    parser.add_argument("--genre", default=DEFAULT_GENRE, help=f"genre label of every track (default {DEFAULT_GENRE!r})")
    parser.add_argument("--max-package-mb", type=float, default=300.0, help="skip packages whose .deb is larger (default 300)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.min_bpm < args.max_bpm:
        parser.error("need 0 < --min-bpm < --max-bpm")
    if args.max_tracks_per_artist < 1:
        parser.error("--max-tracks-per-artist must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    out = args.output.expanduser()
    cache_dir = out / "cache"
    apt = Apt(cache_dir / "debs")
    packages: list[Package] = []
    tracks: list[Track] = []
    for name in args.packages:
        try:
            package = fetch_package(name, cache_dir, apt, args.max_package_mb)
        except FetchError as err:
            print(f"skipping {err}", file=sys.stderr)
            continue
        found = find_audio(package)
        label_tracks(package, found)
        packages.append(package)
        tracks.extend(found)
        print(f"{package.name} {package.version}: {package.deb_bytes / 1e6:.0f} MB, {len(found)} audio files")
    fetched = time.time()
    if not tracks:
        print("no audio found in any package", file=sys.stderr)
        return 1
    cache = AnalysisCache(cache_dir / "analysis.json")
    analyse_tracks(tracks, cache, args, progress=not args.no_progress)
    analysed = time.time()
    records = []
    for track in tracks:
        track.record["artist"] = track.artist
        track.record["name"] = track.file.name
        records.append(track.record)
    select(records, args.min_bpm, args.max_bpm, args.min_seconds, args.min_periodicity, args.max_tracks_per_artist)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    try:
        rows = write_selection(out, tracks, packages, args.genre, settings)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(distribution(records, args.min_seconds))
    print(summary_table(tracks))
    minutes = sum(t.record["seconds"] for t in tracks if t.record.get("selected")) / 60
    print(f"{len(rows)} tracks, {minutes:.0f} min from {len(packages)} packages -> {out / 'tracks'} and {out / 'labels.csv'}")
    print(f"wall time: fetch+unpack {fetched - started:.0f} s, analysis {analysed - fetched:.0f} s, total {time.time() - started:.0f} s")
    print(f"next: housebox prepare {out / 'tracks'} -o data/ --labels {out / 'labels.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
