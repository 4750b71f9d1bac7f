"""Originality: does a generated sample copy its training set? Three independent checks, one verdict.

(a) Audio fingerprints: spectral-peak landmark hashing, numpy only. Every sound is resampled to one
    internal rate (11.025 kHz); local maxima of its log spectrogram, chosen relative to their
    neighbourhood and to the loudest bin (never by absolute level, so gain does not matter), are
    paired into `(f1, f2, dt)` hashes anchored at the first peak's frame. The training tracks' hashes
    are indexed once, in `DATA/fingerprints/`, and rebuilt when the dataset or the settings change.
    A sample is fingerprinted on a few frame grids (lossy re-encoding and resampling move peaks by
    less than a frame or a bin; each hash is also looked up with f1, f2, dt nudged by one); its hashes
    vote for `(track, offset)`. A moment of the sample matches a track when, in the window around it,
    enough of its hashes agree on that track at one offset, weighted by rarity (a hash that several
    training tracks hold, such as an artist's stock kick, counts less). A passage is a run of such
    moments. (Chromaprint's `fpcalc` is not used: it compares whole files, not passages.)
(b) The same codes: k-gram hashes of the training code cache (`DATA/codes/l<level>`). A sample's
    k-grams found in a row on one diagonal (training position minus sample position) seed a verbatim
    run that is checked and extended token by token; the diagonals with the most k-gram hits are also
    compared token by token along their length, for passages that follow a track with slips (as a
    prior that memorised it replays it): at least half of every second's codes equal. k-grams very
    frequent in the training codes (silence, held notes) identify no passage and are skipped; a passage
    counts only beyond the longest one *different* training tracks already share at that level (coarse
    codes of similar music repeat).

(c) The same music in other sounds: beat-synchronous chroma of every training track (`DATA/melody/`),
    compared with the sample's under all 12 transpositions and across time; a passage counts beyond
    the longest one different training tracks share (see `melody`).

Thresholds that turn these measurements into "original" / "suspicious" / "copied" are in
`OriginalityConfig`; the verdict names the detectors that fired (`fired`). `check_samples` writes each
verdict into its sample folder's report.json.

The package, one module per detector: `common` (settings, results), `landmarks` (a), `codes` (b),
`melody` (c), `check` (all detectors on samples, the verdict, report.json and the CLI table).
"""

from housebox.evaluate.originality.check import (
    OriginalityChecker,
    check_samples,
    find_samples,
    format_table,
    training_data,
)
from housebox.evaluate.originality.codes import (
    CodeIndex,
    build_code_index,
    load_code_index,
    longest_code_run,
    natural_overlap,
    ngram_hashes,
    ngram_size,
)
from housebox.evaluate.originality.common import (
    VERDICTS,
    AudioMatch,
    CheckReport,
    CodeRun,
    Fingerprint,
    FingerprintConfig,
    MelodyConfig,
    MelodyMatch,
    OriginalityConfig,
    OriginalityError,
    SampleOriginality,
)
from housebox.evaluate.originality.melody import MelodyIndex, load_melody_index, match_melody
from housebox.evaluate.originality.landmarks import (
    INDEX_DIR,
    INDEX_VERSION,
    FingerprintIndex,
    build_fingerprint_index,
    find_peaks,
    fingerprint,
    landmark_hashes,
    fingerprint_spectrogram,
    load_fingerprint_index,
    manifest_key,
    match_audio,
    match_fingerprint,
    matched_seconds,
)

__all__ = [
    "INDEX_DIR", "INDEX_VERSION", "VERDICTS", "AudioMatch", "CheckReport", "CodeIndex", "CodeRun", "Fingerprint",
    "FingerprintConfig", "FingerprintIndex", "MelodyConfig", "MelodyIndex", "MelodyMatch", "OriginalityChecker", "OriginalityConfig", "OriginalityError",
    "SampleOriginality", "build_code_index", "load_code_index", "build_fingerprint_index", "check_samples", "find_peaks",
    "find_samples", "fingerprint", "format_table", "landmark_hashes", "load_fingerprint_index", "load_melody_index",
    "fingerprint_spectrogram",
    "longest_code_run", "manifest_key", "match_audio", "match_fingerprint", "match_melody", "matched_seconds", "natural_overlap",
    "ngram_hashes", "ngram_size", "training_data",
]
