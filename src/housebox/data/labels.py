"""Artist and genre labels for each track, and the vocabularies that turn them into ids.

Precedence, per track: a labels CSV, then the file's own tags (mutagen), then `artist/genre/` folder
names under the source folder. Whatever is still unknown becomes `unknown` (id 0).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

UNKNOWN = "unknown"
GENRE_SEPARATORS = (";", "|", "/")


@dataclass(frozen=True)
class TrackLabels:
    artist: str
    genres: tuple[str, ...]
    source: str  # "csv", "tags", "folders" or "none"


def _clean(text: str | None) -> str:
    return " ".join(str(text or "").strip().split())


def split_genres(text: str | None) -> tuple[str, ...]:
    """'deep house; garage' -> ('deep house', 'garage'), lower-cased, without duplicates."""
    text = _clean(text)
    for sep in GENRE_SEPARATORS[1:]:
        text = text.replace(sep, GENRE_SEPARATORS[0])
    out: list[str] = []
    for part in text.split(GENRE_SEPARATORS[0]):
        part = _clean(part).lower()
        if part and part not in out:
            out.append(part)
    return tuple(out)


class LabelCsv:
    """A CSV with columns `path,artist,genre` (genre may hold several, separated by `;`).

    `path` is matched against the file's path relative to the source folder, then its absolute path,
    then its bare file name.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[str, tuple[str, tuple[str, ...]]] = {}
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                fields = {f.strip().lower() for f in (reader.fieldnames or [])}
                if "path" not in fields:
                    raise ValueError(f"{self.path}: labels CSV needs a 'path' column (has {sorted(fields)})")
                for row in reader:
                    row = {k.strip().lower(): v for k, v in row.items() if k}
                    key = _clean(row.get("path"))
                    if key:
                        self.rows[key] = (_clean(row.get("artist")), split_genres(row.get("genre") or row.get("genres")))
        except OSError as err:
            raise ValueError(f"{self.path}: cannot read labels CSV ({err.strerror})") from None

    def lookup(self, file: Path, root: Path) -> tuple[str, tuple[str, ...]] | None:
        for key in (file.relative_to(root).as_posix(), str(file), file.name):
            if key in self.rows:
                return self.rows[key]
        return None


def tags_of(file: Path) -> tuple[str, tuple[str, ...]]:
    """Artist and genres from the file's own tags; empty where absent or unreadable."""
    try:
        import mutagen
    except ImportError:
        return "", ()
    try:
        tagged = mutagen.File(str(file), easy=True)
    except Exception:
        return "", ()
    if tagged is None or not tagged.tags:
        return "", ()
    artist = _clean((tagged.tags.get("artist") or [""])[0])
    genres = split_genres(";".join(tagged.tags.get("genre") or []))
    return artist, genres


def folders_of(file: Path, root: Path) -> tuple[str, tuple[str, ...]]:
    """`root/artist/genre/x.wav` -> (artist, (genre,)); `root/artist/x.wav` -> (artist, ())."""
    parents = file.relative_to(root).parts[:-1]
    if len(parents) >= 2:
        return _clean(parents[-2]), split_genres(parents[-1])
    if len(parents) == 1:
        return _clean(parents[0]), ()
    return "", ()


def resolve_labels(file: Path, root: Path, table: LabelCsv | None) -> TrackLabels:
    """Artist and genres for one file, field by field in order CSV > tags > folder names."""
    candidates = []
    if table is not None:
        found = table.lookup(file, root)
        if found is not None:
            candidates.append(("csv", *found))
    candidates.append(("tags", *tags_of(file)))
    candidates.append(("folders", *folders_of(file, root)))
    artist = next(((src, a) for src, a, _ in candidates if a), ("none", UNKNOWN))
    genres = next(((src, g) for src, _, g in candidates if g), ("none", (UNKNOWN,)))
    return TrackLabels(artist=artist[1], genres=genres[1], source=artist[0])


@dataclass(frozen=True)
class Vocabulary:
    """Stable name -> id maps. `unknown` is id 0; new names are appended, never reordered."""

    artists: tuple[str, ...] = (UNKNOWN,)
    genres: tuple[str, ...] = (UNKNOWN,)

    def artist_id(self, name: str) -> int:
        return self.artists.index(name)

    def genre_ids(self, names: tuple[str, ...] | list[str]) -> list[int]:
        return [self.genres.index(n) for n in names]

    def extended(self, artists: list[str], genres: list[str]) -> "Vocabulary":
        new_artists = list(self.artists) + sorted({a for a in artists if a not in self.artists})
        new_genres = list(self.genres) + sorted({g for g in genres if g not in self.genres})
        return Vocabulary(artists=tuple(new_artists), genres=tuple(new_genres))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"artists": list(self.artists), "genres": list(self.genres)}, indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(artists=tuple(data["artists"]), genres=tuple(data["genres"]))
