"""Checking samples with every detector: the verdict, report.json, the sample page and the CLI table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from housebox.data.prepare import read_manifest
from housebox.evaluate.originality.codes import CodeIndex, load_code_index, longest_code_run
from housebox.evaluate.originality.common import (
    VERDICTS,
    CheckReport,
    OriginalityConfig,
    OriginalityError,
    SampleOriginality,
)
from housebox.evaluate.originality.landmarks import load_fingerprint_index, match_audio, matched_seconds
from housebox.evaluate.originality.melody import MelodyIndex, load_melody_index, match_melody


# ---- checking samples ----------------------------------------------------------------------------


class OriginalityChecker:
    """A dataset's indexes, built or loaded once (the web server keeps one), and checks against them."""

    def __init__(self, data_dir: str | Path, config: OriginalityConfig = OriginalityConfig(), progress: bool = False):
        self.data_dir = Path(data_dir)
        self.config = config
        self.rows = read_manifest(self.data_dir)
        if not self.rows:
            raise OriginalityError(f"{self.data_dir}: no prepared tracks (is this a `housebox prepare` dataset?)")
        self.fingerprints = load_fingerprint_index(self.data_dir, config.fingerprint, progress)
        meta_path = self.data_dir / "codes" / "meta.json"
        self.codes_meta: dict | None = json.loads(meta_path.read_text()) if meta_path.exists() else None
        self._code_indexes: dict[int, CodeIndex | str] = {}  # level -> index, or why there is none
        self.melody: MelodyIndex = load_melody_index(self.data_dir, config.melody, progress)

    def melody_status(self) -> str | None:
        """Why no sample can be compared by melody (None when it can)."""
        if not self.melody.track_ids:
            return "no training track has a beat grid (`housebox prepare` tracks the beats)"
        return None

    def check_melody(self, audio: np.ndarray, sample_rate: int) -> tuple[tuple, str]:
        """(melody matches, detector status) of one sample."""
        from housebox.audio.features import FeatureError

        why = self.melody_status()
        if why is not None:
            return (), f"not checked: {why}"
        try:
            matches = match_melody(self.melody, audio, sample_rate, self.config)
        except FeatureError as err:
            return (), f"not checked: no beat grid in the sample ({err})"
        status = f"checked against {len(self.melody.track_ids)} tracks"
        if self.melody.without_beats:
            status += f"; {len(self.melody.without_beats)} training tracks without a beat grid not searched"
        return matches, status

    def code_index(self, level: int) -> CodeIndex | str:
        """The level's k-gram index (stored in DATA/code_index/, memory-mapped), or a one-line reason why it
        cannot be searched."""
        if level not in self._code_indexes:
            try:
                self._code_indexes[level] = load_code_index(self.data_dir, level, self.config)
            except OriginalityError as err:
                self._code_indexes[level] = str(err)
        return self._code_indexes[level]

    def check(self, name: str, audio: np.ndarray, sample_rate: int, codes: dict[int, np.ndarray] | None = None,
              vqvae_sha256: str | None = None) -> SampleOriginality:
        """Verdict on one sample: mono audio `[T]`, optionally its codes per level (int `[T_level]`)."""
        cfg = self.config
        matches = match_audio(self.fingerprints, audio, sample_rate, cfg)
        runs, checked, skipped = [], [], []
        if not codes:
            skipped.append("no codes for this sample (`housebox sample` writes them to codes.npz beside it)")
        elif self.codes_meta is None:
            skipped.append("the dataset has no code cache")
        elif vqvae_sha256 != self.codes_meta.get("weights_sha256"):
            skipped.append("the dataset's code cache was made by another VQ-VAE")
        else:
            for level in sorted(codes, reverse=True):
                index = self.code_index(level)
                if isinstance(index, str):
                    skipped.append(f"level {level}: {index}")
                    continue
                checked.append(level)
                run = longest_code_run(index, codes[level], cfg)
                if run is not None:
                    runs.append(run)
        notes = [f"codes not checked: {why}" for why in skipped] if codes else []  # a sample without codes: none
        if checked:
            codes_status = "checked levels " + ", ".join(map(str, checked))
            codes_status += f"; not checked: {'; '.join(skipped)}" if skipped else ""
        else:
            codes_status = f"not checked: {'; '.join(skipped)}"
        melody, melody_status = self.check_melody(audio, sample_rate)
        longest_audio = max((m.seconds for m in matches), default=0.0)
        longest_code = max((r.excess_seconds for r in runs), default=0.0) if checked else None
        longest_melody = (max((m.excess_seconds for m in melody), default=0.0)
                          if melody_status.startswith("checked") else None)
        measured = (longest_audio, longest_code or 0.0, longest_melody or 0.0)
        return SampleOriginality(sample=name, verdict=cfg.verdict(*measured),
                                 matched_seconds=matched_seconds(matches, cfg.fingerprint.frames_per_second),
                                 longest_match_seconds=longest_audio, longest_code_seconds=longest_code,
                                 matches=matches[:10], code_runs=tuple(runs), notes=tuple(notes),
                                 detectors={"audio": "checked", "melody": melody_status, "codes": codes_status},
                                 longest_melody_seconds=longest_melody, melody_matches=melody[:10],
                                 fired=cfg.fired(*measured))

    def track_names(self, results: list[SampleOriginality]) -> dict[str, dict]:
        """id -> {"file", "artist"} of every training track the results name (ids alone say nothing)."""
        named = {m.track_id for r in results for m in (*r.matches, *r.melody_matches, *r.code_runs)}
        return {row["id"]: {"file": Path(row.get("path", row["id"])).name, "artist": row["artist"]}
                for row in self.rows if row["id"] in named}

    def check_folder(self, folder: str | Path, names: list[str] | None = None,
                     record: bool | None = None) -> list[SampleOriginality]:
        """Check the audio files of one folder (and their rows of its codes.npz, if any). The verdicts
        go into its report.json (and index.html) when it is a `housebox sample` folder, or when `record`
        says so; never, by default, into a folder of someone's music."""
        from housebox.audio.io import load_audio

        folder = Path(folder)
        report = _read_json(folder / "report.json")
        names = names or [p.name for p in sorted(folder.iterdir()) if _is_audio(p)]
        ordered = list(report.get("samples") or [])
        codes = _read_codes(folder / "codes.npz")
        sha = report.get("models", {}).get("vqvae", {}).get("sha256")
        results = []
        for name in names:
            audio = load_audio(folder / name, mono=True)
            row = ordered.index(name) if name in ordered else None
            own = {lv: c[row] for lv, c in codes.items() if row is not None and row < c.shape[0]} or None
            results.append(self.check(name, audio.samples[0], audio.sample_rate, own, sha))
        if record or (record is None and "settings" in report):
            _record(folder, report, results, self)
        return results


def _is_audio(path: Path) -> bool:
    from housebox.audio.io import AUDIO_EXTENSIONS

    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in AUDIO_EXTENSIONS


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise OriginalityError(f"{path}: not valid JSON") from None


def _read_codes(path: Path) -> dict[int, np.ndarray]:
    """codes.npz -> level -> int `[n x T_level]` (empty without the file)."""
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {int(k[1:]): data[k] for k in data.files if k[:1] == "l" and k[1:].isdigit()}


def _record(folder: Path, report: dict, results: list[SampleOriginality], checker: OriginalityChecker) -> None:
    from housebox.store import write_json

    cfg = checker.config
    previous = report.get("originality", {}).get("samples", {})
    previous_tracks = report.get("originality", {}).get("tracks", {})
    report["originality"] = {
        "against": str(checker.data_dir.resolve()),
        "tracks": {**previous_tracks, **checker.track_names(results)},
        "thresholds": {k: getattr(cfg, k) for k in ("suspicious_audio_seconds", "copied_audio_seconds",
                                                     "suspicious_melody_seconds", "copied_melody_seconds",
                                                     "suspicious_code_seconds", "copied_code_seconds")},
        "melody_natural_seconds": checker.melody.natural_seconds,
        "melody_natural_pair": checker.melody.natural_pair,
        "samples": {**previous, **{r.sample: r.to_dict() for r in results}},
    }
    write_json(folder / "report.json", report)
    if "settings" in report:  # a `housebox sample` folder: its page shows the verdicts
        from housebox.report.pages import write_sample_page

        write_sample_page(folder, report)


def find_samples(samples: str | Path) -> dict[Path, list[str]]:
    """An audio file, a sample folder, or a folder of sample folders -> folder -> audio file names."""
    samples = Path(samples)
    if samples.is_file():
        if not _is_audio(samples):
            raise OriginalityError(f"{samples}: not an audio file")
        return {samples.parent: [samples.name]}
    if not samples.is_dir():
        raise OriginalityError(f"{samples}: no such file or folder")
    found: dict[Path, list[str]] = {}
    for path in sorted(samples.rglob("*")):
        if _is_audio(path) and not any(part.startswith(".") for part in path.relative_to(samples).parts):
            found.setdefault(path.parent, []).append(path.name)
    if not found:
        raise OriginalityError(f"{samples}: no audio files inside")
    return found


def check_samples(samples: str | Path, data_dir: str | Path, config: OriginalityConfig = OriginalityConfig(),
                  progress: bool = False, output: str | Path | None = None) -> CheckReport:
    """Check every audio file under `samples` against the dataset in `data_dir`. Verdicts go to the
    report.json of each `housebox sample` folder; those of other audio files to `output`/report.json
    (default `DATA/checks/`), keyed by their full path, never into the folders that hold them."""
    folders = find_samples(samples)
    checker = OriginalityChecker(data_dir, config, progress)
    results, elsewhere = [], []
    for folder, names in folders.items():
        sample_folder = "settings" in _read_json(folder / "report.json")
        for r in checker.check_folder(folder, names):
            results.append(replace(r, sample=str(folder / r.sample)))
            if not sample_folder:
                elsewhere.append(replace(r, sample=str((folder / r.sample).resolve())))
    written = []
    if elsewhere:
        out = Path(output) if output is not None else Path(data_dir) / "checks"
        out.mkdir(parents=True, exist_ok=True)
        _record(out, _read_json(out / "report.json"), elsewhere, checker)
        written.append(str(out / "report.json"))
    return CheckReport(data_dir=str(data_dir), samples=tuple(results), config=config,
                       tracks=checker.track_names(results), written=tuple(written))


def best_match(s: SampleOriginality, tracks: dict[str, dict] | None = None) -> str:
    """The strongest evidence of one sample, in words: the detector that fired (audio, then melody, then
    codes), else the longest audio match."""
    order = [d for d in ("audio", "melody", "codes") if d in s.fired] + ["audio", "melody", "codes"]
    for detector in order:
        if detector == "audio" and s.matches:
            m = s.matches[0]
            return f"audio: {_track(m, tracks)} at {m.track_start:.1f} s (sample {m.sample_start:.1f} s)"
        if detector == "melody" and s.melody_matches and detector in s.fired:
            m = s.melody_matches[0]
            return (f"melody: {_track(m, tracks)} at {m.track_start:.1f} s (sample {m.sample_start:.1f} s, "
                    f"{m.semitones:+d} st, {m.tempo:.2f}x, {m.seconds:.1f} s)")
        if detector == "codes" and s.code_runs:
            r = max(s.code_runs, key=lambda r: r.seconds)
            slips = f", {r.agreement:.0%} of the codes equal" if r.agreement < 1 else ""
            return f"codes l{r.level}: {_track(r, tracks)} at {r.track_start:.1f} s ({r.seconds:.1f} s{slips})"
    return ""


def _track(match, tracks: dict[str, dict] | None) -> str:
    """'artist file.wav (id)' where the file is known, else 'artist id'."""
    known = (tracks or {}).get(match.track_id)
    return f"{match.artist} {known['file']} ({match.track_id})" if known else f"{match.artist} {match.track_id}"


def format_table(report: CheckReport) -> str:
    """A plain-text summary: one line per sample."""
    header = (f"{'sample':<40} {'verdict':<20} {'matched':>8} {'longest':>8} {'melody':>11} {'codes':>11}"
              "  best match")
    lines = [header, "-" * len(header)]
    for s in report.samples:
        name = s.sample if len(s.sample) <= 40 else "..." + s.sample[-37:]
        verdict = s.verdict + (f" ({', '.join(s.fired)})" if s.fired else "")
        code = "not checked" if s.longest_code_seconds is None else f"{s.longest_code_seconds:.2f}s"
        melody = "not checked" if s.longest_melody_seconds is None else f"{s.longest_melody_seconds:.2f}s"
        lines.append(f"{name:<40} {verdict:<20} {s.matched_seconds:>7.1f}s {s.longest_match_seconds:>7.1f}s "
                     f"{melody:>11} {code:>11}  {best_match(s, report.tracks)}")
    for detector, what in (("melody", "melody"), ("codes", "codes")):
        statuses = [s.detectors.get(detector, "") for s in report.samples]
        for status in sorted({st for st in statuses if "not checked" in st}):
            lines.append(f"{what} of {statuses.count(status)} sample(s): {status}")
    counts = {v: sum(s.verdict == v for s in report.samples) for v in VERDICTS}
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items()) + f" (against {report.data_dir})")
    lines.append("melody and codes: seconds beyond what different training tracks already share")
    for path in report.written:
        lines.append(f"verdicts of audio outside `housebox sample` folders: {path}")
    return "\n".join(lines)


def training_data(run_dir: str | Path) -> Path:
    """The dataset a run's top-level prior was trained on (its config.json: describe.data.dir)."""
    from housebox.store import read_config

    found = []
    for sub in sorted(p for p in Path(run_dir).iterdir() if (p / "config.json").exists()):
        describe = read_config(sub).get("describe", {})
        if describe.get("kind") == "prior" and describe.get("data", {}).get("dir"):
            found.append((int(describe.get("level", 0)), Path(describe["data"]["dir"])))
    if not found:
        raise OriginalityError(f"{run_dir}: no prior that names its training data; use `housebox check --against DATA`")
    data_dir = max(found)[1]
    if not (data_dir / "manifest.jsonl").exists():
        raise OriginalityError(f"{run_dir} was trained on {data_dir}, which is gone; "
                               "use `housebox check --against DATA`")
    return data_dir
