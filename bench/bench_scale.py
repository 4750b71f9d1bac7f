"""Scale: what a catalogue of thousands of tracks costs, stage by stage, and what 50 hours would cost.

    taskset -c 0,1 env OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_scale.py          # 1,000 x 15 s (~4.2 h)
    PYTHONPATH=src python bench/bench_scale.py --tracks 60 --seconds 5                           # a quick look
    PYTHONPATH=src python bench/bench_scale.py --work /tmp/scale --keep                          # keep what it wrote

It writes a synthetic catalogue (generated here, never downloaded: `--tracks` tracks of `--seconds` s,
44.1 kHz stereo 16-bit wav by default, four-on-the-floor kick, off-beat hats, a bassline and chords,
seeded per track, in `artist/genre/` folders as `housebox prepare` reads them), then runs each stage
of the pipeline in its own child process and measures it from outside:

- **prepare** at the `--preset`'s sample rate (`small`: 22.05 kHz), with 1 and with 2 workers
  (`--workers`, prepare's own option): throughput in audio hours per wall hour;
- **train vqvae**, a few steps (`--vqvae-steps`) of the `--vqvae-preset` (default `tiny`, at the data's
  sample rate) with the CLI: only to have weights for encode;
- **VQ-VAE chunks**: `training_chunks` of the `--preset`'s VQ-VAE data settings: batches/s and audio s/s;
- **encode** with that VQ-VAE (the code cache; `tiny` encodes faster than `small`, same hops and cache size);
- **prior windows** and **upsampler windows** (`CodeWindows` as `train prior` / `train upsampler` build
  them from the `--preset`): windows/s;
- **check index**: the originality checker `housebox check` builds, the fingerprint index (stored in
  DATA/fingerprints) and the k-gram index of each level of the code cache (in memory, built when a
  sample brings its codes): build time and size.

For every stage: wall time, the peak RSS of its largest process (from wait4, which covers the
process and the workers it reaped), the peak sum of RSS over the process tree and the largest number
of open file descriptors of any process of the tree (both sampled from /proc every 20 ms while it
runs; stages run in this script also count their own at the moments of most files). Drawing speeds
are medians of `--repeats` timed repeats after one untimed warm-up (the warm-up also reads the
track headers AudioChunks caches; its speed is printed as "cold").

Cores: this script pins itself and every stage to one CPU (`--core`, default the last one it may use)
and runs the 2-worker prepare on two; run it under `taskset -c 0,1` with OMP_NUM_THREADS=1. The
machine may be shared: the load average is printed before and after.

Last, a table extrapolates to 50 hours (~700 tracks of ~4.3 min) linearly in audio hours from the
measured figures: prepare wall time at 1 and 2 workers, disk use of the prepared audio and the code
cache, the check index's size and build time. It is an extrapolation, not a measurement; per-track
costs (file opens, process start-up per task) are spread over fewer, longer tracks at 50 hours.
`--nofile N` runs every stage under RLIMIT_NOFILE N (e.g. 1024, the usual desktop limit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GENRES = ("deep_house", "tech_house", "garage", "minimal")
SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor
TARGET_HOURS = 50.0
TARGET_TRACKS = 700
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------- the catalogue


def _hz(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _steps(values: np.ndarray, step: float, n: int) -> np.ndarray:
    """One value per step of `step` samples -> float64 `[n]`, held for the whole step."""
    index = np.minimum((np.arange(n) / step).astype(np.int64), len(values) - 1)
    return values[index]


def synth_track(seed: int, seconds: float, sample_rate: int, bpm: float, root: int) -> np.ndarray:
    """A seeded synthetic house loop: float32 `[T x 2]` at -1 dBFS peak.

    Kick on every beat (a falling sine), noise hats on the off-beats, a bassline of random scale notes in
    eighths and a three-note chord per bar with a stab envelope on random sixteenths; fast (numpy, one
    pass per voice), so a thousand tracks take a couple of minutes."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    beat = 60.0 / bpm * sample_rate  # samples per beat
    left, right = np.zeros(n), np.zeros(n)
    # kick
    k = np.arange(int(0.3 * sample_rate)) / sample_rate
    freq = _hz(root - 24) + 110.0 * np.exp(-k / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-k / 0.12)
    for start in (np.arange(0, n, beat)).astype(np.int64):
        piece = kick[: n - start]
        left[start : start + len(piece)] += 0.9 * piece
        right[start : start + len(piece)] += 0.9 * piece
    # hats: 60 ms of differenced noise on each off-beat, panned
    h = int(0.06 * sample_rate)
    hat_env = np.exp(-np.arange(h) / (0.015 * sample_rate))
    pan = rng.uniform(0.3, 0.7)
    for start in (np.arange(0.5 * beat, n, beat)).astype(np.int64):
        noise = np.diff(rng.standard_normal(h + 1)) * hat_env * 0.15
        noise = noise[: n - start]
        left[start : start + len(noise)] += (1 - pan) * noise
        right[start : start + len(noise)] += pan * noise
    # bass: random scale notes in eighths
    eighths = int(np.ceil(n / (beat / 2))) + 1
    notes = root - 12 + np.array(SCALE)[rng.integers(0, len(SCALE), eighths)]
    bass_f = _steps(_hz(notes), beat / 2, n)
    phase = 2 * np.pi * np.cumsum(bass_f) / sample_rate
    gate = 1.0 - 0.7 * ((np.arange(n) % (beat / 2)) / (beat / 2))
    bass = (np.sin(phase) + 0.3 * np.sin(2 * phase)) * gate * 0.35
    left += bass
    right += bass
    # chords: one triad a bar, stabs on random sixteenths
    bars = int(np.ceil(n / (4 * beat))) + 1
    degrees = rng.integers(0, len(SCALE), bars)
    sixteenth = beat / 4
    stabs = rng.random(int(np.ceil(n / sixteenth)) + 1) < 0.3
    position = (np.arange(n) % sixteenth) / sample_rate
    stab_env = _steps(stabs.astype(np.float64), sixteenth, n) * np.exp(-position / 0.08)
    for voice, offset in enumerate((0, 2, 4)):
        midi = root + np.array(SCALE + tuple(s + 12 for s in SCALE))[degrees + offset]
        f = _steps(_hz(midi), 4 * beat, n) * (1.0 + 0.002 * (voice - 1))
        tone = np.sin(2 * np.pi * np.cumsum(f) / sample_rate) * stab_env * 0.12
        left += tone * (1.0 - 0.3 * voice / 2)
        right += tone * (0.7 + 0.3 * voice / 2)
    mix = np.stack([left, right], axis=1)  # (T, 2)
    mix *= 10 ** (-1.0 / 20.0) / max(1e-9, float(np.abs(mix).max()))
    return mix.astype(np.float32)


def write_catalogue(folder: Path, tracks: int, seconds: float, sample_rate: int, fmt: str,
                    artists: int) -> tuple[int, float]:
    """`folder/artist_XX/<genre>/track_XXXX.<fmt>`: (bytes written, wall seconds)."""
    import soundfile as sf

    started = time.perf_counter()
    size = 0
    rng = np.random.default_rng(12)
    styles = [(float(rng.uniform(118.0, 130.0)), int(rng.integers(45, 57))) for _ in range(artists)]  # (bpm, root)
    for t in range(tracks):
        a = t % artists
        bpm, root = styles[a]
        path = folder / f"artist_{a:03d}" / GENRES[a % len(GENRES)] / f"track_{t:05d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        audio = synth_track(1000 + t, seconds, sample_rate, bpm, root)
        sf.write(path, audio, sample_rate, subtype="PCM_16", format=fmt.upper())
        size += path.stat().st_size
    return size, time.perf_counter() - started


# ------------------------------------------------------------------------------- measuring a stage


@dataclass
class Stage:
    name: str
    wall: float = 0.0
    rc: int = 0
    cpu: float = 0.0  # user + system seconds of the child and the descendants it reaped (wait4)
    max_rss: int = 0  # bytes, largest process (wait4: the child and the descendants it reaped)
    tree_rss: int = 0  # bytes, largest sampled sum over the process tree
    fds: int = 0  # largest open descriptors of one process (sampled, and the stage's own count)
    processes: int = 1  # most processes seen at once in the tree
    samples: int = 0
    result: dict = field(default_factory=dict)  # what a stage run by this script printed
    log: str = ""


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def run_stage(name: str, argv: list[str], cpus: set[int], log_dir: Path, nofile: int | None,
              interval: float = 0.02) -> Stage:
    """Run one stage as a child process pinned to `cpus`, sampling its tree until it ends."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}

    log = log_dir / f"{name.replace(' ', '_')}.log"
    stage = Stage(name)
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        os.sched_setaffinity(proc.pid, cpus)  # before it imports anything (workers it starts inherit both)
        if nofile:
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
        pids, refreshed = [proc.pid], 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter()
            if now - refreshed > 0.5:
                pids, refreshed = _tree(proc.pid), now
                stage.processes = max(stage.processes, len(pids))
            stage.fds = max([stage.fds] + [_fd_count(p) for p in pids])
            stage.tree_rss = max(stage.tree_rss, sum(_rss(p) for p in pids))
            stage.samples += 1
            time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it
    stage.wall = time.perf_counter() - started
    stage.rc = proc.returncode
    stage.max_rss = usage.ru_maxrss * 1024  # KiB on Linux
    stage.cpu = usage.ru_utime + usage.ru_stime
    stage.tree_rss = max(stage.tree_rss, stage.max_rss)
    stage.log = log.read_text(errors="replace")
    for line in stage.log.splitlines():
        if line.startswith("RESULT "):
            stage.result = json.loads(line[len("RESULT "):])
            stage.fds = max(stage.fds, int(stage.result.get("fds", 0)))
    if stage.rc != 0:
        print(f"  ! {name} exited with {stage.rc}; last lines of {log}:")
        print("    " + "\n    ".join(stage.log.strip().splitlines()[-8:]))
    return stage


def disk(path: Path) -> int:
    """Bytes of the files under `path` (apparent sizes)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _own_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------------------- stages run here


def _timed_draws(draw, batches: int, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the warm-up repeat, seconds of each timed repeat) of `batches` draws."""
    import torch

    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(batches):
            draw(generator)
        times.append(time.perf_counter() - start)
    return times[0], times[1:]


def stage_chunks(args: argparse.Namespace) -> dict:
    from housebox.config import build, load_preset
    from housebox.data.dataset import AudioDataConfig, training_chunks
    from housebox.models.vqvae import VQVAEConfig
    from housebox.train.loop import TrainConfig

    preset = load_preset(args.preset)
    vq = build(VQVAEConfig, preset.get("vqvae"), "vqvae")
    data = build(AudioDataConfig, preset.get("vqvae_data"), "vqvae_data")
    batch = build(TrainConfig, preset.get("vqvae_train"), "vqvae_train").batch_size
    start = time.perf_counter()
    chunks = training_chunks(args.data, vq.sample_rate, max(vq.hops), data.chunk_seconds, batch)
    setup = time.perf_counter() - start
    fds = _own_fds()
    cold, times = _timed_draws(chunks, args.batches, args.repeats)
    fds = max(fds, _own_fds())
    per_batch_audio = batch * chunks.chunk / vq.sample_rate
    rate = args.batches / statistics.median(times)
    return {"setup_s": setup, "batch": batch, "chunk_samples": chunks.chunk, "tracks": len(chunks.rows),
            "batches_per_s": rate, "audio_s_per_s": rate * per_batch_audio, "cold_batches_per_s": args.batches / cold,
            "fds": fds}


def stage_windows(args: argparse.Namespace) -> dict:
    from housebox.config import build, load_preset
    from housebox.data.labels import Vocabulary
    from housebox.train.loop import TrainConfig
    from housebox.train.prior import code_cache_meta, code_windows, prior_config

    data = Path(args.data)
    preset = load_preset(args.preset)
    meta = code_cache_meta(data)
    vocab = Vocabulary.load(data / "labels.json")
    kind = "prior" if args.level == len(meta["hops"]) - 1 else "upsampler"
    config = prior_config(dict(preset.get(kind) or {}), args.level, meta, vocab, kind)
    batch = build(TrainConfig, preset.get(f"{kind}_train"), f"{kind}_train").batch_size
    start = time.perf_counter()
    windows = code_windows(data, "train", config, batch, vocab)
    setup = time.perf_counter() - start
    fds = _own_fds()
    held = sum(c.nbytes for c in windows.codes) + sum(c.nbytes for c in (windows.upper or []))
    cold, times = _timed_draws(windows, args.batches, args.repeats)
    fds = max(fds, _own_fds())
    rate = args.batches / statistics.median(times)
    return {"kind": kind, "level": args.level, "setup_s": setup, "batch": batch, "n_ctx": config.n_ctx,
            "tracks": len(windows.codes), "batches_per_s": rate, "windows_per_s": rate * batch,
            "tokens_per_s": rate * batch * config.n_ctx, "cold_batches_per_s": args.batches / cold, "codes_in_memory_bytes": held,
            "beat_clock": config.beat_clock, "fds": fds}


def stage_index(args: argparse.Namespace) -> dict:
    from housebox.evaluate.originality import INDEX_DIR, OriginalityChecker

    data = Path(args.data)
    fds_peak = [_own_fds()]

    # the code index holds every track's memory-mapped codes at once while it concatenates them: count
    # descriptors at that moment by wrapping np.concatenate inside the module
    from housebox.evaluate.originality import codes as originality  # the verbatim-code detector

    real = np.concatenate

    class _Counting:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def concatenate(*a, **k):
            fds_peak.append(_own_fds())
            return real(*a, **k)

    originality.np = _Counting()
    try:
        start = time.perf_counter()
        checker = OriginalityChecker(data)
        fingerprint_s = time.perf_counter() - start
        levels, code = len(checker.codes_meta["hops"]) if checker.codes_meta else 0, {}
        for level in range(levels):
            tick = time.perf_counter()
            index = checker.code_index(level)
            seconds = time.perf_counter() - tick
            if isinstance(index, str):
                code[level] = {"error": index, "seconds": seconds}
            else:
                code[level] = {"seconds": seconds, "bytes": int(index.codes.nbytes + index.hashes.nbytes
                                                               + index.positions.nbytes + index.starts.nbytes),
                               "ngram": index.ngram, "tokens": int(index.codes.size)}
    finally:
        originality.np = np
    tick = time.perf_counter()
    OriginalityChecker(data)  # a second `check`: loads the stored fingerprint index
    load_s = time.perf_counter() - tick
    fp = checker.fingerprints
    return {"fingerprint_build_s": fingerprint_s, "fingerprint_load_s": load_s, "hashes": int(fp.hashes.size),
            "fingerprint_bytes_on_disk": disk(data / INDEX_DIR),
            "fingerprint_bytes_in_memory": int(fp.hashes.nbytes + fp.tracks.nbytes + fp.times.nbytes),
            "code_levels": code, "max_index_tokens": checker.config.max_index_tokens,
            "fds": max(fds_peak + [_own_fds()])}


STAGES = {"chunks": stage_chunks, "windows": stage_windows, "index": stage_index}


# ------------------------------------------------------------------------------- the report


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def load_average() -> str:
    return f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=1000, help="tracks in the catalogue (default 1000)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per track (default 15)")
    parser.add_argument("--artists", type=int, default=50, help="artists, spread evenly (default 50)")
    parser.add_argument("--source-rate", type=int, default=44100, help="sample rate of the files (default 44100)")
    parser.add_argument("--format", choices=("wav", "flac"), default="wav", help="file format (default wav)")
    parser.add_argument("--preset", default="small", help="preset whose sample rate, data and batch settings are "
                                                          "measured (default small)")
    parser.add_argument("--vqvae-preset", default="tiny", help="preset of the VQ-VAE trained for encode, at the "
                                                               "data's sample rate (default tiny)")
    parser.add_argument("--vqvae-set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a field of that preset, e.g. vqvae.width=8 for a faster encode (repeatable)")
    parser.add_argument("--vqvae-steps", type=int, default=10, help="training steps of that VQ-VAE (default 10)")
    parser.add_argument("--workers", default="1,2", help="prepare worker counts to measure (default 1,2)")
    parser.add_argument("--batches", type=int, default=50, help="batches per timed repeat of drawing (default 50)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of drawing (default 5)")
    parser.add_argument("--core", type=int, help="CPU for the one-core stages (default: the last one allowed)")
    parser.add_argument("--nofile", type=int, help="RLIMIT_NOFILE of every stage (default: unchanged)")
    parser.add_argument("--work", help="work folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    # a stage run by this script in a child process
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--level", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print("RESULT " + json.dumps(STAGES[args.stage](args)), flush=True)
        return

    began = time.perf_counter()
    allowed = sorted(os.sched_getaffinity(0))
    one = {args.core if args.core is not None else allowed[-1]}
    two = set(allowed[-2:])
    os.sched_setaffinity(0, one)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work, one, two, workers, began)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, one: set[int], two: set[int], workers: list[int], began: float) -> None:
    from housebox.config import load_preset

    rate = int(load_preset(args.preset).get("vqvae", {}).get("sample_rate", 44100))
    python, me = sys.executable, str(Path(__file__).resolve())
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    print(f"bench_scale: {args.tracks} tracks x {args.seconds:g} s = {args.tracks * args.seconds / 3600:.2f} h of "
          f"{args.source_rate} Hz stereo {args.format}, {args.artists} artists; preset {args.preset} ({rate} Hz); "
          f"one-core stages on CPU {sorted(one)}, 2-worker prepare on CPUs {sorted(two)}; work folder {work}")
    if args.nofile:
        print(f"every stage runs under RLIMIT_NOFILE {args.nofile}")
    print(load_average())

    source = work / "catalogue"
    if not source.exists():
        print("\nwriting the catalogue ...", flush=True)
        source_bytes, seconds = write_catalogue(source, args.tracks, args.seconds, args.source_rate, args.format,
                                                args.artists)
        print(f"  {args.tracks} files, {size(source_bytes)} in {duration(seconds)}")
    else:
        source_bytes = disk(source)
        print(f"\nreusing the catalogue in {source} ({size(source_bytes)})")

    stages: list[Stage] = []
    prepared: dict[int, dict] = {}
    data = work / "data"

    def stage(name: str, argv: list[str], cpus: set[int] = one) -> Stage:
        print(f"\n{name} ... ({load_average()})", flush=True)
        s = run_stage(name, argv, cpus, logs, args.nofile)
        stages.append(s)
        extra = f"; {s.processes} processes" if s.processes > 1 else ""
        print(f"  {duration(s.wall)} wall, {duration(s.cpu)} CPU, peak RSS {mib(s.max_rss)} MiB (tree {mib(s.tree_rss)} MiB), "
              f"max open fds {s.fds}{extra}", flush=True)
        return s

    for n in workers:
        out = data if n == workers[0] else work / f"data_w{n}"
        shutil.rmtree(out, ignore_errors=True)
        s = stage(f"prepare {n} worker{'s' if n > 1 else ''}",
                  [python, "-m", "housebox", "prepare", str(source), "-o", str(out), "--preset", args.preset,
                   "--workers", str(n)], cpus=one if n == 1 else two)
        report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
        prepared[n] = {"stage": s, "wall": report.get("wall_seconds", s.wall), "seconds": report.get("seconds", 0.0),
                       "tracks": report.get("tracks", 0), "skipped": len(report.get("skipped", []))}
        hours = prepared[n]["seconds"] / 3600
        print(f"  {prepared[n]['tracks']} tracks ({prepared[n]['skipped']} skipped), {hours:.2f} audio h in "
              f"{prepared[n]['wall']:.1f} s (prepare's own clock): {hours / (prepared[n]['wall'] / 3600):,.0f} audio h "
              f"per wall h")
        if out != data:
            shutil.rmtree(out, ignore_errors=True)
    audio_bytes = disk(data / "audio")
    beats_bytes = disk(data / "beats") + disk(data / "manifest.jsonl") + disk(data / "labels.json")
    audio_hours = prepared[workers[0]]["seconds"] / 3600

    vqvae_dir = work / "vqvae"
    shutil.rmtree(vqvae_dir, ignore_errors=True)
    steps = args.vqvae_steps
    stage(f"train vqvae ({args.vqvae_preset}, {steps} steps)",
          [python, "-m", "housebox", "train", "vqvae", "--data", str(data), "-o", str(vqvae_dir),
           "--preset", args.vqvae_preset, "--device", "cpu", "--set", f"vqvae.sample_rate={rate}",
           "--set", f"vqvae_train.steps={steps}", "--set", f"vqvae_train.checkpoint_every={steps}",
           "--set", "vqvae_train.warmup_steps=1", "--set", f"vqvae_train.log_every={max(1, steps // 2)}",
           *[a for item in args.vqvae_set for a in ("--set", item)]])
    chunks = stage("VQ-VAE chunks", [python, me, "--stage", "chunks", "--data", str(data), "--preset", args.preset,
                                     "--batches", str(args.batches), "--repeats", str(args.repeats)])
    vq_name = args.vqvae_preset + "".join(f", {item}" for item in args.vqvae_set)
    encode = stage(f"encode ({args.vqvae_preset}{'*' if args.vqvae_set else ''} VQ-VAE)",
                   [python, "-m", "housebox", "encode", "--data", str(data), "--vqvae", str(vqvae_dir),
                    "--device", "cpu"])
    codes_bytes = disk(data / "codes")
    # encode works in windows of `window_seconds` (plus a margin each side), so a track shorter than a
    # window costs a whole one: scale encode by windows, not by hours
    import inspect

    from housebox.data.codes import encode_dataset

    window_s = inspect.signature(encode_dataset).parameters["window_seconds"].default
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    encode_windows = sum(-(-r["seconds"] // window_s) for r in rows)
    meta = json.loads((data / "codes" / "meta.json").read_text()) if (data / "codes" / "meta.json").exists() else {}
    levels = len(meta.get("hops", []))
    windows = []
    for level in reversed(range(levels)):
        kind = "prior" if level == levels - 1 else "upsampler"
        windows.append(stage(f"{kind} l{level} windows",
                             [python, me, "--stage", "windows", "--data", str(data), "--preset", args.preset,
                              "--level", str(level), "--batches", str(args.batches), "--repeats", str(args.repeats)]))
    index = stage("check index", [python, me, "--stage", "index", "--data", str(data)])
    print(f"\n{load_average()}")

    # ---- tables
    tracks = prepared[workers[0]]["tracks"]
    print(f"\n== stages: {tracks} tracks, {audio_hours:.2f} audio h at {rate} Hz (each stage a child process; "
          f"RSS = largest process, tree = sampled sum; fds = most open by one process) ==")
    header = f"{'stage':<30} {'wall':>9} {'CPU':>9} {'peak RSS':>10} {'tree RSS':>10} {'max fds':>8}  throughput"
    print(header)
    print("-" * (len(header) + 30))
    for s in stages:
        note = ""
        if s.name.startswith("prepare"):
            p = next(v for v in prepared.values() if v["stage"] is s)
            note = f"{p['seconds'] / 3600 / (p['wall'] / 3600):,.0f} audio h / wall h"
        elif s.name.startswith("encode") and s.rc == 0:
            note = (f"{audio_hours / (s.wall / 3600):,.0f} audio h / wall h (incl. start-up); "
                    f"{s.wall / max(1, encode_windows):.2f} s per {window_s:g} s window")
        elif s.result.get("windows_per_s"):
            note = f"{s.result['windows_per_s']:,.0f} windows/s"
        elif s.result.get("batches_per_s"):
            note = f"{s.result['batches_per_s']:,.0f} batches/s"
        elif s.result.get("fingerprint_build_s") is not None:
            note = f"index built in {s.result['fingerprint_build_s']:.1f} s"
        if s.fds >= max(64, tracks // 2):
            note += f"  <- fds grow with tracks ({s.fds} for {tracks} tracks)"
        if s.rc != 0:
            note += f"  FAILED (exit {s.rc})"
        print(f"{s.name:<30} {duration(s.wall):>9} {duration(s.cpu):>9} {mib(s.max_rss):>6} MiB {mib(s.tree_rss):>6} MiB {s.fds:>8}  {note}")

    print(f"\n== data drawing ({args.preset} preset settings; median of {args.repeats} x {args.batches} batches "
          f"after one warm-up) ==")
    header = f"{'model':<18} {'batch':>5} {'setup':>8} {'batches/s':>10} {'windows/s':>10} {'audio s/s':>10}  notes"
    print(header)
    print("-" * (len(header) + 20))
    if chunks.result:
        r = chunks.result
        print(f"{'VQ-VAE chunks':<18} {r['batch']:>5} {r['setup_s']:>7.2f}s {r['batches_per_s']:>10,.0f} "
              f"{r['batches_per_s'] * r['batch']:>10,.0f} {r['audio_s_per_s']:>10,.0f}  "
              f"{r['chunk_samples']} samples a chunk; cold (first repeat) {r['cold_batches_per_s']:,.0f} batches/s")
    for s in windows:
        if not s.result:
            continue
        r = s.result
        seconds_per_window = r["n_ctx"] * meta["hops"][r["level"]] / meta["sample_rate"]
        print(f"{r['kind'] + ' l' + str(r['level']):<18} {r['batch']:>5} {r['setup_s']:>7.2f}s "
              f"{r['batches_per_s']:>10,.0f} {r['windows_per_s']:>10,.0f} "
              f"{r['windows_per_s'] * seconds_per_window:>10,.0f}  n_ctx {r['n_ctx']}, "
              f"codes held {size(r['codes_in_memory_bytes'])}, beat clock {'on' if r['beat_clock'] else 'off'}")

    index_build = index_bytes = 0.0
    if index.result:
        r = index.result
        code_s = sum(v["seconds"] for v in r["code_levels"].values())
        index_build, index_bytes = r["fingerprint_build_s"], r["fingerprint_bytes_on_disk"]
        print(f"\n== check index ==\nfingerprint index: {r['hashes']:,} hashes, built and stored in "
              f"{r['fingerprint_build_s']:.1f} s, {size(r['fingerprint_bytes_on_disk'])} on disk "
              f"({size(r['fingerprint_bytes_in_memory'])} memory-mapped, not read in), loaded again in {r['fingerprint_load_s']:.2f} s")
        for level, v in sorted(r["code_levels"].items(), key=lambda kv: -int(kv[0])):
            if "error" in v:
                print(f"code index l{level}: not built: {v['error']}")
            else:
                print(f"code index l{level}: {v['tokens']:,} tokens, k={v['ngram']}, built in {v['seconds']:.2f} s, "
                      f"{size(v['bytes'])} in memory (not stored)")
        print(f"all code levels: {code_s:.1f} s")

    # ---- extrapolation
    scale = TARGET_HOURS / audio_hours if audio_hours else 0.0
    print(f"\n== extrapolation to {TARGET_HOURS:g} h (~{TARGET_TRACKS} tracks of ~{TARGET_HOURS * 60 / TARGET_TRACKS:.1f} "
          f"min): linear in audio hours from the {audio_hours:.2f} h measured above; an extrapolation, "
          f"not a measurement ==")
    header = f"{'quantity':<44} {'measured':>12} {'at ' + format(TARGET_HOURS, 'g') + ' h':>12}"
    print(header)
    print("-" * len(header))
    for n, p in prepared.items():
        label = f"prepare wall time, {n} worker{'s' if n > 1 else ''}"
        print(f"{label:<44} {duration(p['wall']):>12} {duration(p['wall'] * scale):>12}")
    rows = [("disk: prepared audio (audio/)", audio_bytes),
            ("disk: beats, manifest, labels", beats_bytes),
            (f"disk: code cache (codes/, {levels} levels, int16)", codes_bytes),
            ("disk: check fingerprint index", index_bytes)]
    for label, value in rows:
        print(f"{label:<44} {size(value):>12} {size(value * scale):>12}")
    print(f"{'check fingerprint index build time':<44} {duration(index_build):>12} {duration(index_build * scale):>12}")
    if index.result:  # built in memory per level, when a sample brings codes; refused above max_index_tokens
        limit = index.result["max_index_tokens"]
        for level, v in sorted(index.result["code_levels"].items(), key=lambda kv: -int(kv[0])):
            if "error" in v:
                continue
            tokens = v["tokens"] * scale
            if tokens > limit:
                print(f"{'check code index l' + str(level) + ' build time / memory':<44} "
                      f"{duration(v['seconds']):>12} {'not built':>12}  ({tokens / 1e6:,.0f} M tokens > "
                      f"max_index_tokens {limit / 1e6:,.0f} M: `check` skips the level)")
            else:
                print(f"{'check code index l' + str(level) + ' build time / memory':<44} "
                      f"{duration(v['seconds']):>12} {duration(v['seconds'] * scale):>12}  "
                      f"({size(v['bytes'])} -> {size(v['bytes'] * scale)} in memory, {tokens / 1e6:,.0f} M tokens)")
    if encode.rc == 0:
        target_windows = TARGET_TRACKS * -(-(TARGET_HOURS * 3600 / TARGET_TRACKS) // window_s)
        print(f"{'encode wall time (1 core; by ' + format(window_s, 'g') + ' s windows)':<44} "
              f"{duration(encode.wall):>12} {duration(encode.wall * target_windows / encode_windows):>12}")
        print(f"  (encode used the {vq_name} VQ-VAE: {encode_windows:,.0f} windows measured, "
              f"{target_windows:,.0f} at {TARGET_HOURS:g} h)")
    print(f"(source catalogue: {size(source_bytes)} of {args.source_rate} Hz stereo {args.format}, not part of the "
          f"dataset)")
    print(f"\ntotal {duration(time.perf_counter() - began)}")


if __name__ == "__main__":
    main()
