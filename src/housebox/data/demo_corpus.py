"""A built-in, deterministic corpus of synthetic house music (numpy only), for demos and tests.

Three "artists", each a fixed style (tempo, key, genre, sound): four-on-the-floor kick tuned to the
key, off-beat open hats, claps on beats 2 and 4, a bassline and chord stabs following one of the
artist's favourite progressions, sidechain-style ducking on every kick, arranged in phrases with
small seeded variations. Same arguments, byte-identical files.

    out_dir/<artist>/<genre>/<track_id>.wav   16-bit stereo
    out_dir/labels.csv                        path,artist,genre (genre may hold "a;b")
    out_dir/corpus.json                       ground truth per track: bpm, key, seconds, seed
    out_dir/spectrogram.png                   the first seconds of one track per artist
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PEAK = 10 ** (-1.0 / 20.0)  # -1 dBFS
FORMATS = ("wav", "flac")
STEPS_PER_BAR = 16  # sixteenth notes

BassNote = tuple[int, int, int]  # (start step in the bar, length in steps, semitones above the chord root)


class DemoCorpusError(ValueError):
    """Bad arguments to the demo corpus generator. The message is one line."""


@dataclass(frozen=True)
class ArtistStyle:
    """One artist: tempo, key, genre and sound stay the same on every track."""

    name: str
    bpm: float
    key: str  # "<tonic> major|minor", sharps, e.g. "A minor"
    genre: str  # one genre, or several separated by ";" (the first names the folder)
    # kick: a sine falling from kick_start_hz to the key's tonic (40-80 Hz)
    kick_start_hz: float
    kick_pitch_decay_s: float
    kick_decay_s: float
    kick_click: float  # level of a 2 ms noise click on the attack, 0..1
    # bass: additive tone, harmonic k at 1/k**bass_tilt, lowpassed at bass_cutoff_hz
    bass_tilt: float
    bass_cutoff_hz: float
    bass_patterns: tuple[tuple[BassNote, ...], ...]
    # chord stabs: detuned additive saws, lowpassed, decaying, on the given steps of each bar
    chord_size: int  # 3 triads, 4 sevenths
    stab_voices: int
    stab_detune_cents: float
    stab_cutoff_hz: float
    stab_decay_s: float
    stab_steps: tuple[int, ...]
    stab_width: float  # 0 mono .. 1 voices hard left/right
    pad_level: float  # sustained chord under the stabs, 0 for none
    # hats: highpassed noise; closed 16ths at closed_hat_level; swing delays odd 16ths
    hat_cutoff_hz: float
    hat_decay_s: float
    hat_width: float  # side/mid noise ratio, 0 mono
    closed_hat_level: float
    swing: float  # fraction of a 16th by which odd 16ths are late
    sidechain_depth: float  # 0..1 gain dip of bass/chords on each kick
    progressions: tuple[tuple[int, ...], ...]  # favourite progressions, scale degrees (0 = tonic), one chord a bar
    phrase_bars: int
    # lead: a seeded four-bar melody of each track (eighth notes on the key's scale, from G4 up), repeated;
    # 0 for none (the built-in artists have none). Its tone: harmonic k at 1/k**1.5, lowpassed at lead_cutoff_hz
    lead_level: float = 0.0
    lead_cutoff_hz: float = 2500.0

    @property
    def slug(self) -> str:
        """Folder-safe name: lower case, spaces to underscores."""
        return self.name.lower().replace(" ", "_")

    @property
    def folder_genre(self) -> str:
        return self.genre.split(";")[0].strip().replace(" ", "_")


ARTISTS: tuple[ArtistStyle, ...] = (
    ArtistStyle(
        name="Dawn Atlas", bpm=121.0, key="A minor", genre="deep house",
        kick_start_hz=110.0, kick_pitch_decay_s=0.035, kick_decay_s=0.32, kick_click=0.0,
        bass_tilt=2.5, bass_cutoff_hz=260.0,
        bass_patterns=(((2, 2, 0), (6, 2, 0), (10, 2, 0), (14, 2, 0)),
                       ((2, 2, 0), (6, 1, 12), (10, 2, 0), (13, 2, 7))),
        chord_size=4, stab_voices=2, stab_detune_cents=7.0, stab_cutoff_hz=1100.0, stab_decay_s=0.35,
        stab_steps=(3, 10), stab_width=0.5, pad_level=0.35,
        hat_cutoff_hz=6500.0, hat_decay_s=0.09, hat_width=0.35, closed_hat_level=0.0, swing=0.0,
        sidechain_depth=0.55, progressions=((0, 0, 3, 4), (0, 5, 3, 0), (0, 3, 0, 6)), phrase_bars=8,
    ),
    ArtistStyle(
        name="Kinetic Unit", bpm=125.0, key="F minor", genre="tech house",
        kick_start_hz=190.0, kick_pitch_decay_s=0.022, kick_decay_s=0.24, kick_click=0.5,
        bass_tilt=3.0, bass_cutoff_hz=380.0,
        bass_patterns=(((2, 1, 0), (3, 1, 0), (6, 1, 0), (7, 1, 12), (10, 1, 0), (11, 1, 0), (14, 1, 0), (15, 1, 7)),
                       ((2, 2, 0), (6, 2, 0), (10, 1, 0), (11, 1, 12), (14, 2, 0))),
        chord_size=3, stab_voices=3, stab_detune_cents=14.0, stab_cutoff_hz=2400.0, stab_decay_s=0.18,
        stab_steps=(6, 14), stab_width=0.7, pad_level=0.0,
        hat_cutoff_hz=8000.0, hat_decay_s=0.06, hat_width=0.5, closed_hat_level=0.35, swing=0.0,
        sidechain_depth=0.35, progressions=((0, 0, 5, 6), (0, 3, 0, 5)), phrase_bars=8,
    ),
    ArtistStyle(
        name="South Lane", bpm=128.0, key="D major", genre="garage;deep house",
        kick_start_hz=150.0, kick_pitch_decay_s=0.028, kick_decay_s=0.28, kick_click=0.2,
        bass_tilt=1.8, bass_cutoff_hz=420.0,
        bass_patterns=(((0, 3, 0), (6, 2, 12), (10, 3, 0), (14, 2, 7)),
                       ((3, 2, 0), (6, 2, 0), (11, 2, 12), (14, 2, 0))),
        chord_size=4, stab_voices=2, stab_detune_cents=4.0, stab_cutoff_hz=1800.0, stab_decay_s=0.22,
        stab_steps=(3, 6, 11), stab_width=0.6, pad_level=0.0,
        hat_cutoff_hz=7000.0, hat_decay_s=0.07, hat_width=0.45, closed_hat_level=0.25, swing=0.3,
        sidechain_depth=0.45, progressions=((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4)), phrase_bars=4,
    ),
)


# what an artist sounds like, as opposed to what it plays (tempo, key, patterns, progressions, phrases)
SOUND_FIELDS = ("kick_start_hz", "kick_pitch_decay_s", "kick_decay_s", "kick_click", "bass_tilt", "bass_cutoff_hz",
                "stab_voices", "stab_detune_cents", "stab_cutoff_hz", "stab_decay_s", "stab_width", "pad_level",
                "hat_cutoff_hz", "hat_decay_s", "hat_width", "closed_hat_level", "sidechain_depth", "lead_cutoff_hz")
# progressions common in house music, for styles whose tracks should not all share two or three
COMMON_PROGRESSIONS = ((0, 0, 3, 4), (0, 5, 3, 0), (0, 3, 0, 6), (0, 4, 5, 3), (0, 6, 5, 4), (0, 2, 5, 4))


def with_lead(style: ArtistStyle, level: float = 0.3) -> ArtistStyle:
    """The style with a melody of each track's own, and any of COMMON_PROGRESSIONS: its tracks differ in
    their tunes, as a real artist's do (the built-in styles share two or three progressions and no lead)."""
    from dataclasses import replace

    return replace(style, lead_level=level, progressions=COMMON_PROGRESSIONS)


def transpose_key(key: str, semitones: int) -> str:
    """'A minor', 2 -> 'B minor'."""
    _parse_key(key)
    tonic, mode = key.split()
    return f"{PITCH_CLASSES[(PITCH_CLASSES.index(tonic) + semitones) % 12]} {mode}"


def played_by(style: ArtistStyle, sounds: ArtistStyle, semitones: int = 0, tempo: float = 1.0) -> ArtistStyle:
    """`style`'s music in the sounds of `sounds`, `semitones` higher and `tempo` times faster: with the same
    seed, `render_track` plays the same composition (progression, bassline, arrangement, melody)."""
    from dataclasses import replace

    return replace(style, **{f: getattr(sounds, f) for f in SOUND_FIELDS}, key=transpose_key(style.key, semitones),
                   bpm=style.bpm * tempo)


@dataclass(frozen=True)
class DemoTrack:
    """One rendered track; `path` is relative to the corpus folder."""

    path: str
    artist: str
    genre: str
    bpm: float
    key: str
    seconds: float
    seed: int


@dataclass(frozen=True)
class CorpusInfo:
    out_dir: Path
    tracks: tuple[DemoTrack, ...]
    labels_csv: Path
    corpus_json: Path
    spectrogram_png: Path
    seconds_total: float


# ---- pitch ---------------------------------------------------------------------------------------


def _parse_key(key: str) -> tuple[int, tuple[int, ...]]:
    """("A minor") -> (tonic pitch class 9, the scale's semitone offsets)."""
    parts = key.split()
    if len(parts) != 2 or parts[0] not in PITCH_CLASSES or parts[1] not in SCALES:
        raise DemoCorpusError(f"key must look like 'A minor' or 'F# major', got {key!r}")
    return PITCH_CLASSES.index(parts[0]), SCALES[parts[1]]


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _lowest_midi_at_least(pitch_class: int, low: int) -> int:
    """The first MIDI note of `pitch_class` at or above `low`."""
    return low + (pitch_class - low) % 12


def _chord(key: str, degree: int, size: int, low: int) -> tuple[int, ...]:
    """MIDI notes of the diatonic chord on scale `degree` (stacked thirds), root at or above `low`."""
    tonic, scale = _parse_key(key)
    root = _lowest_midi_at_least((tonic + scale[degree % 7]) % 12, low)
    notes = []
    for i in range(size):
        step = degree + 2 * i
        offset = scale[step % 7] + 12 * (step // 7) - scale[degree % 7] - 12 * (degree // 7)
        notes.append(root + offset)
    return tuple(notes)


# ---- one-shot sounds (all return float64 [2 x n] or [n]) ---------------------------------------------


def _tone(freq: float, n: int, sample_rate: int, tilt: float, cutoff_hz: float, phase: float) -> np.ndarray:
    """Band-limited additive tone `[n]`: harmonic k at k**-tilt, 2-pole lowpass at cutoff_hz.

    Rendered from a one-period wavetable (4096 points, linear interpolation), so its cost does not
    grow with the number of harmonics.
    """
    harmonics = np.arange(1, max(1, int(0.45 * sample_rate / freq)) + 1)  # below 0.45 * sample rate
    amps = harmonics ** -tilt / np.sqrt(1.0 + (harmonics * freq / cutoff_hz) ** 4)
    grid = np.arange(4096) / 4096.0
    table = np.sin(2.0 * np.pi * grid[:, None] * harmonics[None, :]) @ amps  # (4096,)
    table = np.append(table, table[0])  # wrap point for interpolation
    position = ((phase + freq * np.arange(n) / sample_rate) % 1.0) * 4096.0
    low = position.astype(int)
    frac = position - low
    return table[low] * (1.0 - frac) + table[low + 1] * frac


def _envelope(n: int, sample_rate: int, attack_s: float, decay_s: float, gate_s: float | None = None) -> np.ndarray:
    """Attack/exponential-decay envelope `[n]`, closed by a 10 ms release after `gate_s`."""
    t = np.arange(n) / sample_rate
    env = (1.0 - np.exp(-t / attack_s)) * np.exp(-t / decay_s)
    if gate_s is not None:
        env *= np.exp(-np.maximum(t - gate_s, 0.0) / 0.01)
    return env


def _kick(style: ArtistStyle, end_hz: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Kick `[n]`: sine gliding from kick_start_hz down to end_hz, exponential amplitude decay."""
    n = int(5 * style.kick_decay_s * sample_rate)
    t = np.arange(n) / sample_rate
    freq = end_hz + (style.kick_start_hz - end_hz) * np.exp(-t / style.kick_pitch_decay_s)
    body = np.sin(2.0 * np.pi * np.cumsum(freq) / sample_rate) * _envelope(n, sample_rate, 0.001, style.kick_decay_s)
    click = rng.standard_normal(n) * np.exp(-t / 0.002) * style.kick_click
    return body + 0.5 * click


def _filtered_noise(
    n: int, sample_rate: int, rng: np.random.Generator, low_hz: float | None, high_hz: float | None
) -> np.ndarray:
    """White noise `[n]` through a 2nd-order Butterworth high/low/band-pass."""
    from scipy.signal import butter, sosfilt

    nyquist = sample_rate / 2.0
    noise = rng.standard_normal(n)
    low = None if low_hz is None else min(low_hz, 0.9 * nyquist)
    high = None if high_hz is None or high_hz >= 0.95 * nyquist else high_hz
    if low is not None and high is not None:
        sos = butter(2, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    elif low is not None:
        sos = butter(2, low, btype="highpass", fs=sample_rate, output="sos")
    elif high is not None:
        sos = butter(2, high, btype="lowpass", fs=sample_rate, output="sos")
    else:
        return noise
    return sosfilt(sos, noise)


def _hat(style: ArtistStyle, decay_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Hat `[2 x n]`: highpassed noise, mid plus hat_width * independent side noise."""
    n = int(5 * decay_s * sample_rate)
    env = _envelope(n, sample_rate, 0.0005, decay_s)
    mid = _filtered_noise(n, sample_rate, rng, style.hat_cutoff_hz, None) * env
    side = _filtered_noise(n, sample_rate, rng, style.hat_cutoff_hz, None) * env * style.hat_width
    return np.stack([mid + side, mid - side])  # (2, n)


def _clap(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Clap `[n]`: three 10 ms-spaced noise bursts then a 120 ms tail, band-passed 900-3000 Hz."""
    n = int(0.45 * sample_rate)
    t = np.arange(n) / sample_rate
    env = np.exp(-np.maximum(t - 0.02, 0.0) / 0.12) * 0.6
    for burst in (0.0, 0.01, 0.02):
        env += np.where(t >= burst, np.exp(-(t - burst) / 0.004), 0.0)
    return _filtered_noise(n, sample_rate, rng, 900.0, 3000.0) * env


def _bass_note(style: ArtistStyle, midi: int, gate_s: float, sample_rate: int) -> np.ndarray:
    """Bass note `[n]` held for gate_s then released."""
    n = int((gate_s + 0.06) * sample_rate)
    tone = _tone(_midi_hz(midi), n, sample_rate, style.bass_tilt, style.bass_cutoff_hz, phase=0.0)
    return tone * _envelope(n, sample_rate, 0.004, 0.6, gate_s)


def _chord_sound(
    style: ArtistStyle, notes: tuple[int, ...], seconds: float, sample_rate: int, decay_s: float, attack_s: float
) -> np.ndarray:
    """Chord `[2 x n]`: stab_voices detuned tones per note, voices spread across the stereo field."""
    n = int(seconds * sample_rate)
    out = np.zeros((2, n))
    voices = style.stab_voices
    for v in range(voices):
        spread = 0.0 if voices == 1 else 2.0 * v / (voices - 1) - 1.0  # -1..1
        cents = style.stab_detune_cents * spread
        pan = 0.25 * np.pi * (1.0 + style.stab_width * spread)  # 0..pi/2, constant power
        voice = sum(
            _tone(_midi_hz(m + cents / 100.0), n, sample_rate, 1.0, style.stab_cutoff_hz, phase=0.37 * v + 0.11 * i)
            for i, m in enumerate(notes)
        )
        out += np.stack([np.cos(pan) * voice, np.sin(pan) * voice])  # (2, n)
    return out * _envelope(n, sample_rate, attack_s, decay_s, gate_s=seconds - 0.03) / (voices * np.sqrt(len(notes)))


# ---- arrangement -------------------------------------------------------------------------------


def _add(buffer: np.ndarray, sound: np.ndarray, start: int, gain: float) -> None:
    """Mix a `[n]` (centred) or `[2 x n]` sound into buffer `[2 x T]` from sample `start`, cut at the end."""
    if start >= buffer.shape[1] or gain == 0.0:
        return
    n = min(sound.shape[-1], buffer.shape[1] - start)
    buffer[:, start : start + n] += gain * sound[..., :n]


@dataclass(frozen=True)
class _Grid:
    """Where sixteenth-note steps fall, in samples."""

    bpm: float
    sample_rate: int
    swing: float

    @property
    def step_s(self) -> float:
        return 60.0 / self.bpm / 4.0

    def sample(self, bar: int, step: int) -> int:
        late = self.swing if step % 2 == 1 else 0.0
        return int(round((bar * STEPS_PER_BAR + step + late) * self.step_s * self.sample_rate))


def _drums(
    style: ArtistStyle, grid: _Grid, bars: int, hat_drops: set[int], rng: np.random.Generator, out: np.ndarray
) -> None:
    """Mix into out `[2 x T]`: kick on every beat, clap on 2 and 4, off-beat open hats (none in
    hat_drops bars), closed 16ths."""
    sr = grid.sample_rate
    tonic, _ = _parse_key(style.key)
    kick = _kick(style, _midi_hz(_lowest_midi_at_least(tonic, 28)), sr, rng)  # tonic in 41-78 Hz
    clap = _clap(sr, rng)
    open_hats = [_hat(style, style.hat_decay_s, sr, rng) for _ in range(4)]
    closed_hat = _hat(style, 0.018, sr, rng)
    for bar in range(bars):
        for beat in range(4):
            _add(out, kick, grid.sample(bar, 4 * beat), 0.9)
            if beat in (1, 3):
                _add(out, clap, grid.sample(bar, 4 * beat), 0.3)
            if bar not in hat_drops:
                _add(out, open_hats[int(rng.integers(4))], grid.sample(bar, 4 * beat + 2), 0.16)
            for sixteenth in (1, 3):
                _add(out, closed_hat, grid.sample(bar, 4 * beat + sixteenth), 0.12 * style.closed_hat_level)


def _harmony(
    style: ArtistStyle,
    grid: _Grid,
    progression: tuple[int, ...],
    bass_choice: list[int],
    stab_bars: set[int],
    out: np.ndarray,
) -> None:
    """Mix into out `[2 x T]`: bass on the chord roots (pattern bass_choice[bar]), chord stabs on
    stab_bars, and the optional pad."""
    sr = grid.sample_rate
    tonic, _ = _parse_key(style.key)
    bass_low = _lowest_midi_at_least(tonic, 31)  # bass register G1..F#2
    stab_low = _lowest_midi_at_least(tonic, 55)  # chord roots from G3
    sounds: dict[tuple, np.ndarray] = {}  # renders reused within the track
    for bar, pattern in enumerate(bass_choice):
        degree = progression[bar % len(progression)]
        chord = _chord(style.key, degree, style.chord_size, stab_low)
        root = _lowest_midi_at_least(chord[0] % 12, bass_low)
        for step, length, interval in style.bass_patterns[pattern]:
            key = ("bass", root + interval, length)
            if key not in sounds:
                sounds[key] = _bass_note(style, root + interval, length * grid.step_s * 0.9, sr)
            _add(out, sounds[key], grid.sample(bar, step), 0.5)
        if bar in stab_bars:
            stab_key = ("stab", chord)
            if stab_key not in sounds:
                sounds[stab_key] = _chord_sound(style, chord, 4 * style.stab_decay_s, sr, style.stab_decay_s, 0.003)
            for step in style.stab_steps:
                _add(out, sounds[stab_key], grid.sample(bar, step), 0.45)
        if style.pad_level > 0:
            pad_key = ("pad", chord)
            if pad_key not in sounds:
                bar_s = STEPS_PER_BAR * grid.step_s
                sounds[pad_key] = _chord_sound(style, tuple(m - 12 for m in chord), bar_s, sr, 4.0, 0.25)
            _add(out, sounds[pad_key], grid.sample(bar, 0), style.pad_level)


LeadNote = tuple[int, int, int]  # (start eighth in the four bars, length in eighths, scale step above the tonic)


def compose_lead(style: ArtistStyle, seed: int) -> tuple[LeadNote, ...]:
    """A track's four-bar melody: from each eighth, a note (1-3 eighths long) with probability 0.6, its
    pitch a random walk of scale steps (-2..+2) kept within two octaves. Seeded apart from the rest of the
    track, so a style without a lead renders exactly as before."""
    rng = np.random.default_rng([seed, 7])
    notes, position, step = [], 0, int(rng.integers(0, 5))
    while position < 32:
        if rng.random() < 0.6:
            length = int(rng.integers(1, 4))
            notes.append((position, min(length, 32 - position), step))
            step = int(np.clip(step + rng.integers(-2, 3), 0, 13))
            position += length
        else:
            position += 1
    return tuple(notes)


def _lead(style: ArtistStyle, grid: _Grid, bars: int, melody: tuple[LeadNote, ...], out: np.ndarray) -> None:
    """Mix into out `[2 x T]` the four-bar melody, repeated over `bars`, centred."""
    sr = grid.sample_rate
    tonic, scale = _parse_key(style.key)
    low = _lowest_midi_at_least(tonic, 67)
    sounds: dict[tuple[int, int], np.ndarray] = {}
    for start_bar in range(0, bars, 4):
        for position, length, step in melody:
            bar, eighth = start_bar + position // 8, position % 8
            if bar >= bars:
                continue
            midi = low + scale[step % 7] + 12 * (step // 7)
            if (midi, length) not in sounds:
                gate = length * 2 * grid.step_s * 0.85
                n = int((gate + 0.05) * sr)
                tone = _tone(_midi_hz(midi), n, sr, 1.5, style.lead_cutoff_hz, phase=0.2)
                sounds[(midi, length)] = tone * _envelope(n, sr, 0.005, 0.5, gate)
            _add(out, sounds[(midi, length)], grid.sample(bar, 2 * eighth), style.lead_level)


def _sidechain(style: ArtistStyle, n: int, sample_rate: int) -> np.ndarray:
    """Gain `[n]` dipping by sidechain_depth on every beat and recovering in about 100 ms."""
    beat_s = 60.0 / style.bpm
    since_beat = (np.arange(n) / sample_rate) % beat_s
    return 1.0 - style.sidechain_depth * np.exp(-since_beat / 0.09)


def beat_times(style: ArtistStyle, seconds: float, sample_rate: int) -> np.ndarray:
    """True beat times float64 `[N]` in seconds of a track rendered by `render_track(style, seconds, sample_rate, ...)`.

    A beat is a kick: beat b of bar k starts at `_Grid.sample(k, 4 * b)` (a whole sample; swing moves
    odd sixteenths only). Every fourth beat from index 0 is a downbeat. Beats from the end of the
    track on are left out; the rendered audio does not depend on this function.
    """
    if seconds <= 0:
        raise DemoCorpusError(f"seconds must be positive, got {seconds}")
    grid = _Grid(style.bpm, sample_rate, style.swing)
    n = int(round(seconds * sample_rate))
    bars = int(np.ceil(seconds / (STEPS_PER_BAR * grid.step_s)))
    starts = np.array([grid.sample(bar, 4 * beat) for bar in range(bars) for beat in range(4)])  # (4 * bars,)
    return starts[starts < n] / float(sample_rate)


def render_track(style: ArtistStyle, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """One track in `style`: float32 `[2 x round(seconds * sample_rate)]`, peak at -1 dBFS.

    Seeded choices: the progression (one of the artist's favourites), per phrase the bass pattern,
    a bar with the open hats dropped, whether the first phrase is an intro without stabs, the noise of
    the drums, and the melody of a style with a lead. Everything else is the artist's: the same seed in
    a style with another artist's sounds (and the same progressions, bass patterns and phrase length)
    plays the same composition in those sounds.
    """
    if seconds <= 0:
        raise DemoCorpusError(f"seconds must be positive, got {seconds}")
    if sample_rate < 8000:
        raise DemoCorpusError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    grid = _Grid(style.bpm, sample_rate, style.swing)
    bars = int(np.ceil(seconds / (STEPS_PER_BAR * grid.step_s)))
    progression = style.progressions[int(rng.integers(len(style.progressions)))]
    bass_choice, hat_drops, stab_bars = [], set(), set(range(bars))
    for phrase_start in range(0, bars, style.phrase_bars):
        bass_choice += [int(rng.integers(len(style.bass_patterns)))] * style.phrase_bars
        if rng.random() < 0.4:
            hat_drops.add(phrase_start + int(rng.integers(style.phrase_bars)))
    if bars > style.phrase_bars and rng.random() < 0.5:  # intro: drums and bass only
        stab_bars -= set(range(style.phrase_bars))
    drums, harmony = np.zeros((2, n)), np.zeros((2, n))
    _drums(style, grid, bars, hat_drops, rng, drums)
    _harmony(style, grid, progression, bass_choice[:bars], stab_bars, harmony)
    if style.lead_level > 0:
        _lead(style, grid, bars, compose_lead(style, seed), harmony)
    mix = drums + harmony * _sidechain(style, n, sample_rate)
    return _finish(mix, sample_rate)


def _finish(mix: np.ndarray, sample_rate: int) -> np.ndarray:
    """5 ms fade-in, 50 ms fade-out, peak-normalised to -1 dBFS, float32 `[2 x T]`."""
    fade_in = min(mix.shape[1], int(0.005 * sample_rate))
    fade_out = min(mix.shape[1], int(0.05 * sample_rate))
    mix[:, :fade_in] *= np.linspace(0.0, 1.0, fade_in)
    mix[:, mix.shape[1] - fade_out :] *= np.linspace(1.0, 0.0, fade_out)
    peak = np.max(np.abs(mix))
    if peak > 0:
        mix *= PEAK / peak
    return mix.astype(np.float32)


# ---- the corpus --------------------------------------------------------------------------------


def _track_seconds(budget_s: float, rng: np.random.Generator) -> list[float]:
    """Durations (about 20-40 s each, 0.01 s resolution) summing to budget_s."""
    count = max(1, int(round(budget_s / 30.0)))
    raw = rng.uniform(20.0, 40.0, size=count)
    seconds = [round(float(s), 2) for s in raw * budget_s / raw.sum()]
    seconds[-1] = round(budget_s - sum(seconds[:-1]), 2)
    return seconds


def _track_seed(seed: int, artist_index: int, track_index: int) -> int:
    return int(np.random.SeedSequence([seed, artist_index, track_index]).generate_state(1)[0])


def make_demo_corpus(
    out_dir: str | Path,
    minutes: float = 6.0,
    seed: int = 0,
    sample_rate: int = 22050,
    fmt: str = "wav",
    artists: tuple[ArtistStyle, ...] = ARTISTS,
) -> CorpusInfo:
    """Render about `minutes` of music, split evenly over `artists`, into `out_dir` (see module doc)."""
    import soundfile as sf

    from housebox.report.plots import save_spectrograms

    if fmt not in FORMATS:
        raise DemoCorpusError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if minutes <= 0:
        raise DemoCorpusError(f"minutes must be positive, got {minutes}")
    if sample_rate < 8000:
        raise DemoCorpusError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    for style in artists:
        _parse_key(style.key)
    out_dir = Path(out_dir)
    budget_s = minutes * 60.0 / len(artists)
    tracks, previews = [], []
    for a, style in enumerate(artists):
        lengths = _track_seconds(budget_s, np.random.default_rng([seed, a]))
        for t, seconds in enumerate(lengths):
            track_seed = _track_seed(seed, a, t)
            audio = render_track(style, seconds, sample_rate, track_seed)  # (2, T)
            relative = f"{style.slug}/{style.folder_genre}/{style.slug}_{t:03d}.{fmt}"
            path = out_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, audio.T, sample_rate, subtype="PCM_16", format=fmt.upper())
            tracks.append(DemoTrack(relative, style.name, style.genre, style.bpm, style.key, seconds, track_seed))
            if t == 0:
                previews.append(audio[:, : 4 * sample_rate].mean(axis=0))  # (T,) first 4 s, mono
    labels_csv = _write_labels(out_dir, tracks)
    corpus_json = out_dir / "corpus.json"
    description = {
        "sample_rate": sample_rate, "seed": seed, "minutes": minutes, "format": fmt,
        "artists": [asdict(style) for style in artists], "tracks": [asdict(track) for track in tracks],
    }
    corpus_json.write_text(json.dumps(description, indent=2) + "\n")
    titles = [f"{s.name} - {s.genre} - {s.bpm:g} BPM - {s.key}" for s in artists]
    png = save_spectrograms(out_dir / "spectrogram.png", previews, sample_rate, titles=titles, max_hz=1500)
    total = round(sum(track.seconds for track in tracks), 2)
    return CorpusInfo(out_dir, tuple(tracks), labels_csv, corpus_json, png, total)


def _write_labels(out_dir: Path, tracks: list[DemoTrack]) -> Path:
    path = out_dir / "labels.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "artist", "genre"])
        for track in tracks:
            writer.writerow([track.path, track.artist, track.genre])
    return path
