"""Settings, results and errors shared by the originality detectors (see the package's docstring)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

VERDICTS = ("original", "suspicious", "copied")
FREQ_BITS, DT_BITS = 10, 7  # a landmark hash: f1 (10 bits) | f2 (10 bits) | dt (7 bits), in a uint32


class OriginalityError(ValueError):
    """Inputs the originality check cannot use. The message is one line."""


# ---- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FingerprintConfig:
    """How sounds become landmark hashes (changing any field rebuilds the index)."""

    sample_rate: int = 11025  # everything is resampled to this first: up to 5.5 kHz, what lossy coding keeps
    n_fft: int = 512  # 46 ms; 257 bins
    hop: int = 128  # 11.6 ms frames
    peak_bins: int = 12  # a peak is the maximum of +-peak_bins ...
    peak_frames: int = 8  # ... by +-peak_frames around it
    min_prominence_db: float = 6.0  # above the mean of that neighbourhood
    floor_db: float = 70.0  # ignore peaks this far below the loudest bin of the sound
    peaks_per_second: int = 24  # the most prominent ones, per second of sound
    fan_out: int = 8  # pairs per anchor peak
    max_dt_frames: int = 90  # target zone: up to ~1 s after the anchor

    def __post_init__(self):
        if self.n_fft // 2 + 1 > 1 << FREQ_BITS or not 1 <= self.max_dt_frames < 1 << DT_BITS:
            raise OriginalityError(f"fingerprint: n_fft must be at most {2 * (1 << FREQ_BITS) - 2} and "
                                   f"max_dt_frames 1..{(1 << DT_BITS) - 1}")

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop


@dataclass(frozen=True)
class MelodyConfig:
    """How beat-synchronous chroma is compared (changing any field rebuilds the melody index)."""

    window_beats: int = 8  # a moment of the sample matches when this many beats in a row (two bars) ...
    min_similarity: float = 0.7  # ... agree on average (cosine of the profiles) with one track, one transposition
    blank_fraction: float = 0.1  # a beat with less pitched energy than this share of the sound's median is blank
    compress: float = 0.5  # chroma energy ** compress before comparing (the bass would outweigh the rest)
    context_beats: int = 32  # each profile less the mean of this many beats around it (8 bars)
    calibration_beats: int = 128  # excerpt of each calibration track compared with every other track
    block_beats: int = 16384  # training beats compared at once (memory: ~100 bytes x sample beats x this)

    def __post_init__(self):
        if self.window_beats < 2 or not 0 < self.min_similarity <= 1:
            raise OriginalityError("melody: window_beats must be at least 2 and min_similarity in (0, 1]")


@dataclass(frozen=True)
class OriginalityConfig:
    """Matching settings and the verdict thresholds (seconds of audio or codes)."""

    fingerprint: FingerprintConfig = FingerprintConfig()
    melody: MelodyConfig = MelodyConfig()
    window_seconds: float = 1.5  # a moment of the sample matches when the window centred on it holds ...
    min_window_hashes: int = 5  # ... at least this many hashes agreeing on one (track, offset) ...
    min_window_fraction: float = 0.3  # ... that are at least this share of all its hashes (rarity-weighted)
    offset_tolerance_frames: int = 2  # votes within +-this many frames agree on one offset
    max_candidates: int = 32  # (track, offset) pairs examined per sample, most voted first
    query_shifts: int = 4  # frame grids a sample is fingerprinted on (the index has one)
    hash_jitter: int = 1  # also look up each hash with f1, f2, dt moved by up to this much
    # a copy played faster or slower, as a record or a resampled file is (tempo and pitch together): the
    # sample's peaks are also mapped back by each of these speeds (1.05: 5% faster and 0.84 semitones higher),
    # on the first frame grid; the index is unchanged. One speed catches copies within +-0.5% of it (measured
    # on a 5%-faster copy), hence 1% steps; bench/bench_copy_robustness.py measures what is caught
    speed_factors: tuple[float, ...] = tuple(round(1.0 + k / 100, 2) for k in range(-8, 9) if k)
    ngram_seconds: float = 0.05  # k of the code k-grams, in seconds of tokens (at least min_ngram)
    min_ngram: int = 4
    max_ngram_count: int = 256  # k-grams more frequent than this in the training codes are ignored
    # levels with more training tokens are not searched: the index (DATA/code_index/, memory-mapped when
    # checking) takes ~20 bytes a token on disk and ~40 while it is built (100 M: 50 hours of `jukebox` level 2)
    max_index_tokens: int = 100_000_000
    # longest passage matching one training track. Measured on the demo corpus (synthetic: an artist's
    # tracks share sample-identical sounds): unrelated tracks of one artist match for at most 3.0 s
    # (60 tracks, leave-one-out), new renders of an artist for at most 3.6 s (180 renders, against a
    # corpus with one or four tracks per artist); 10 s pasted from a training track match for at least
    # 9.2 s, and 9.0 s as mp3 at 22.05 kHz, 6 dB quieter (51 pastes each)
    suspicious_audio_seconds: float = 5.0
    copied_audio_seconds: float = 7.0
    # a passage of codes follows one training track (on one alignment) where every window of
    # code_window_seconds inside it has at least min_code_agreement of its tokens equal to the track's; it
    # runs from the first pair of equal tokens to the last. A prior that memorised a track replays it with slips
    # (measured: 40-100% of each quarter second equal, on one alignment for 14 s); unrelated codes agree at
    # chance (1 / codebook size). A verbatim run is a passage with every token equal
    code_window_seconds: float = 1.0
    min_code_agreement: float = 0.5
    # longest passage of codes at any level, beyond the longest that different training tracks share at
    # that level (measured on the dataset; tiny-VQ-VAE demo: whole tracks at the top level)
    suspicious_code_seconds: float = 1.0
    copied_code_seconds: float = 3.0
    # longest passage following one training track's notes beat by beat (any sounds, key and tempo), beyond
    # the longest passage different training tracks share (measured on the index). Measured: 30 s excerpts
    # of the real-music set found in their own track for a median 30 s (as they are, 5% slower, 5% faster,
    # one semitone up), other tracks for at most 3.1 s beyond; re-rendered demo compositions (other sounds,
    # 3% faster, two semitones up) 12 s beyond, fresh ones 0 s
    suspicious_melody_seconds: float = 4.0
    copied_melody_seconds: float = 8.0
    calibration_tracks: int = 32  # tracks used to measure what different training tracks share

    def __post_init__(self):
        if not 0 < self.min_code_agreement <= 1 or not self.code_window_seconds > 0:
            raise OriginalityError("originality: min_code_agreement must be in (0, 1] and code_window_seconds above 0")

    def fired(self, audio_seconds: float, code_seconds: float, melody_seconds: float = 0.0) -> dict[str, str]:
        """Detector -> "copied" or "suspicious", for each detector whose measurement reaches a threshold
        (the longest matching passage, code passage and melody passage, the last two beyond what
        different training tracks share)."""
        levels = {}
        for name, value, suspicious, copied in (
                ("audio", audio_seconds, self.suspicious_audio_seconds, self.copied_audio_seconds),
                ("melody", melody_seconds, self.suspicious_melody_seconds, self.copied_melody_seconds),
                ("codes", code_seconds, self.suspicious_code_seconds, self.copied_code_seconds)):
            if value >= copied:
                levels[name] = "copied"
            elif value >= suspicious:
                levels[name] = "suspicious"
        return levels

    def verdict(self, audio_seconds: float, code_seconds: float, melody_seconds: float = 0.0) -> str:
        """The strongest level any detector reached, "original" when none did."""
        levels = set(self.fired(audio_seconds, code_seconds, melody_seconds).values())
        return "copied" if "copied" in levels else "suspicious" if levels else "original"


# ---- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    hashes: np.ndarray  # uint32 [H]: f1 << 17 | f2 << 7 | dt
    times: np.ndarray  # int32 [H]: frame of the anchor peak
    frames: int  # length of the sound in frames
    shift_seconds: float = 0.0  # frame 0 starts this far into the sound
    tempo: float = 1.0  # peaks mapped back as if the sound ran this many times faster than a training track ...
    semitones: float = 0.0  # ... and this many semitones higher (frames and times are then the track's)


@dataclass(frozen=True)
class AudioMatch:
    """A passage of the sample found in one training track at one offset."""

    track_id: str
    artist: str
    sample_start: float  # seconds into the sample
    track_start: float  # seconds into the training track
    seconds: float
    hashes: int  # agreeing hashes in the passage
    fraction: float  # their share of the sample's hashes in the passage (weighted by rarity)
    tempo: float = 1.0  # the sample plays the passage this many times faster than the training track
    semitones: float = 0.0  # and this many semitones higher


@dataclass(frozen=True)
class CodeRun:
    """The longest passage of one level's codes that follows one training track in the code cache: verbatim
    (agreement 1) or with slips (OriginalityConfig.min_code_agreement)."""

    level: int
    track_id: str
    artist: str
    sample_token: int
    track_token: int
    tokens: int
    seconds: float
    sample_start: float
    track_start: float
    natural_seconds: float = 0.0  # what different training tracks share at this level
    agreement: float = 1.0  # share of the passage's tokens equal to the track's

    @property
    def excess_seconds(self) -> float:
        """How far the passage goes beyond what unrelated training tracks share: the evidence of copying."""
        return round(max(0.0, self.seconds - self.natural_seconds), 3)


@dataclass(frozen=True)
class MelodyMatch:
    """The longest passage of the sample whose notes, beat by beat, follow one training track's."""

    track_id: str
    artist: str
    sample_start: float  # seconds into the sample
    track_start: float  # seconds into the training track
    seconds: float  # length of the passage in the sample
    beats: int
    semitones: int  # the sample plays it this many semitones higher (-5..6)
    tempo: float  # and this many times faster
    similarity: float  # mean cosine of the beat profiles along the passage
    natural_seconds: float = 0.0  # what different training tracks share (measured on the index)

    @property
    def excess_seconds(self) -> float:
        return round(max(0.0, self.seconds - self.natural_seconds), 3)


@dataclass(frozen=True)
class SampleOriginality:
    sample: str  # file name
    verdict: str
    matched_seconds: float  # all matched segments, any track
    longest_match_seconds: float
    # beyond what unrelated training tracks share (CodeRun.excess_seconds); None: no level's codes were checked
    longest_code_seconds: float | None
    matches: tuple[AudioMatch, ...]
    code_runs: tuple[CodeRun, ...]
    notes: tuple[str, ...] = ()
    # detector -> "checked", "checked levels 2, 1; not checked: ..." or "not checked: why" (never a number)
    detectors: dict[str, str] = field(default_factory=dict)
    # beyond what different training tracks share (MelodyMatch.excess_seconds); None: not checked
    longest_melody_seconds: float | None = None
    melody_matches: tuple[MelodyMatch, ...] = ()
    fired: dict[str, str] = field(default_factory=dict)  # detector -> "suspicious" | "copied": why the verdict

    def to_dict(self) -> dict:
        data = asdict(self)
        for run, row in zip(self.code_runs, data["code_runs"]):
            row["excess_seconds"] = run.excess_seconds
        for match, row in zip(self.melody_matches, data["melody_matches"]):
            row["excess_seconds"] = match.excess_seconds
        return data


@dataclass(frozen=True)
class CheckReport:
    data_dir: str
    samples: tuple[SampleOriginality, ...]
    config: OriginalityConfig = field(default_factory=OriginalityConfig)
    tracks: dict[str, dict] = field(default_factory=dict)  # id -> {"file", "artist"} of the tracks named
    written: tuple[str, ...] = ()  # report.json files written outside sample folders


# ---- index folders -------------------------------------------------------------------------------
# An index (DATA/fingerprints/, DATA/melody/) is a folder of .npy arrays read through memory maps and a
# meta.json written last: without meta.json (a run killed while writing) the arrays are not used.


def stored_index(folder: Path, version: int, settings: dict, arrays: tuple[str, ...]) -> tuple[dict, bool]:
    """(the folder's meta.json, or {}; whether it was written by this version with these settings (its
    "config", as JSON) and every array is there)."""
    meta_path = folder / "meta.json"
    stored = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    usable = (stored.get("version") == version and stored.get("config") == settings
              and all((folder / f"{name}.npy").exists() for name in arrays))
    return stored, usable


def mapped_arrays(folder: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The index's arrays, memory-mapped (one descriptor each, whatever the number of tracks)."""
    return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}


def write_index(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Replace an index: meta.json removed first, each array written to a temporary name and renamed,
    meta.json last."""
    from housebox.store import write_json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    for name, values in arrays.items():
        tmp = folder / f".{name}.tmp.npy"
        np.save(tmp, values)
        os.replace(tmp, folder / f"{name}.npy")
    write_json(folder / "meta.json", meta)
