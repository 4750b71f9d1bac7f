"""From a trained run to audio: top-level codes, upsampling level by level, decoding, files on disk.

A run is a folder holding a VQ-VAE and priors as model directories side by side (any names; each
says what it is in its config.json). `upsample(codes_above, level, ...)` is the one interface through
which finer levels are made, so a parallel upsampler can replace the autoregressive one later.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from housebox.generate.sampling import sample_codes, sample_masked
from housebox.models.conditioning import Labels
from housebox.models.load import load_prior, load_vqvae
from housebox.models.precision import cpu_has_native_bf16
from housebox.models.prior import Prior
from housebox.models.vqvae import VQVAE
from housebox.store import read_config, weights_hash

CODES_FORMAT_VERSION = 1
UPSAMPLER_KINDS = ("autoregressive", "masked")
# Where a level holds an upsampler of each kind, the one used unless chosen: masked (a few passes per window,
# measured faster and no worse from the same top codes: README, "Masked upsamplers").
PREFERRED_UPSAMPLERS = ("masked", "autoregressive")


@dataclass(frozen=True)
class SampleSettings:
    artist: str | None = None
    genres: tuple[str, ...] = ()
    seconds: float = 10.0
    n: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0
    beat_guidance: float = 2.0  # top level: guidance by the beat clock (1: off; measured on both sets, README)
    seed: int = 0
    hop_fraction: float = 0.5
    levels: int | None = None  # levels to generate, top down; None: every level the run has a model for
    prime: str | None = None
    prime_seconds: float = 4.0
    continue_codes: str | None = None  # codes.npz whose top-level codes are continued
    upsample_only: bool = False  # take the top-level codes of continue_codes as they are
    bpm: float | None = None  # tempo of the beat clock; None: the prime's beat grid, else the artist's median tempo
    # a masked upsampler: passes per window, and window starts as a share of a window (0.875: each window
    # recomputes an eighth of the one before) -- both chosen by measurement (README, "Masked upsamplers")
    upsample_steps: int = 4
    upsample_hop: float = 0.875
    # which of a pass's draws a masked upsampler keeps: the most confident after Gumbel noise of this scale
    # (inf: a random order, independent of the model) -- README, "Masked upsamplers"
    upsample_noise: float = 10.0
    compile: bool = False  # one-token steps through torch.compile (CUDA graphs on a GPU); eager by default


@dataclass
class Run:
    root: Path
    vqvae: VQVAE
    vqvae_dir: Path
    priors: dict[int, Prior]
    prior_dirs: dict[int, Path]
    artists: tuple[str, ...]
    genres: tuple[str, ...]
    artist_bpm: dict[str, float] = field(default_factory=dict)  # median track tempo per artist, from training
    # every upsampler in the folder, level -> kind -> model directory (a level may hold one of each kind)
    upsamplers: dict[int, dict[str, Path]] = field(default_factory=dict)

    @property
    def upsampler_kinds(self) -> list[str]:
        """The upsampler kinds the folder holds at any level, in UPSAMPLER_KINDS order."""
        return [k for k in UPSAMPLER_KINDS if any(k in kinds for kinds in self.upsamplers.values())]

    def with_upsamplers(self, kind: str) -> Run:
        """This run with the `kind` upsampler at every level that has one (other levels keep theirs)."""
        if kind not in self.upsampler_kinds:
            have = ", ".join(self.upsampler_kinds) or "none"
            raise ValueError(f"{self.root}: no {kind} upsampler in this run (upsamplers here: {have})")
        device = next(self.vqvae.parameters()).device
        priors, dirs = dict(self.priors), dict(self.prior_dirs)
        for level, kinds in self.upsamplers.items():
            if kind in kinds and dirs.get(level) != kinds[kind]:
                priors[level], dirs[level] = load_prior(kinds[kind], device), kinds[kind]
        return replace(self, priors=priors, prior_dirs=dirs)

    @property
    def clocked(self) -> bool:
        """Whether any of the run's priors runs a beat clock."""
        return any(p.config.beat_clock for p in self.priors.values())

    @property
    def top(self) -> int:
        return self.vqvae.config.levels - 1


@dataclass
class Generation:
    codes: dict[int, Tensor]  # level -> LongTensor[n x T_level]
    audio: np.ndarray  # float32 [n x T]
    sample_rate: int
    lowest_level: int
    tokens_per_second: dict[int, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    clock_bpm: list[float] | None = None  # the tempo each sample's beat clock ran at (None: no clock)


def sampling_dtype(precision: str, device: torch.device | str, masked: bool = False) -> torch.dtype:
    """A prior's weights and KV cache type for sampling: `fp32`, `bf16`, or `auto`: bf16 on a CUDA device
    that supports it (sampling reads weights and cache at every step); on a CPU with native bf16
    (`cpu_has_native_bf16`), bf16 for a `masked` upsampler, whose passes are compute-bound (1.7x faster
    there), and fp32 for autoregressive priors, whose one-row steps ran 1.75x slower in bf16 (README,
    "Sampling on a CPU"); fp32 on other CPUs, where bf16 is emulated. The VQ-VAE always decodes in fp32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and masked and cpu_has_native_bf16()
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", upsampler_kind: str | None = None,
             precision: str = "fp32") -> Run:
    """Find the VQ-VAE and the priors among the model directories inside `run_dir`.

    A level may hold an upsampler of each kind (e.g. up_l0 autoregressive and up_l0_masked): `upsampler_kind`
    chooses; by default the first of PREFERRED_UPSAMPLERS the level has. `precision`: the priors' type for
    sampling (see `sampling_dtype`)."""
    sampling_dtype(precision, device)  # an unknown precision fails before anything is read
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: not a run folder")
    if upsampler_kind is not None and upsampler_kind not in UPSAMPLER_KINDS:
        raise ValueError(f"upsampler kind {upsampler_kind!r}: expected one of {', '.join(UPSAMPLER_KINDS)}")
    vqvae_dir, prior_dirs, upsamplers = None, {}, {}
    for sub in sorted(p for p in root.iterdir() if (p / "config.json").exists()):
        describe = read_config(sub).get("describe", {})
        if describe.get("kind") == "vqvae":
            vqvae_dir = sub
        elif describe.get("kind") == "prior":
            prior_dirs[int(describe["level"])] = sub
        elif describe.get("kind") == "upsampler":
            level, kind = int(describe["level"]), (describe.get("model") or {}).get("kind", "autoregressive")
            mine = upsamplers.setdefault(level, {})
            if kind in mine:
                raise ValueError(f"{root}: two {kind} upsamplers for level {level} ({mine[kind].name} and "
                                 f"{sub.name}); move one out of the run folder")
            mine[kind] = sub
    if vqvae_dir is None:
        raise ValueError(f"{root}: no VQ-VAE model directory inside (train one with `housebox train vqvae`)")
    if upsampler_kind is not None and upsamplers and not any(upsampler_kind in k for k in upsamplers.values()):
        raise ValueError(f"{root}: no {upsampler_kind} upsampler in this run (train one with "
                         f"`housebox train upsampler --kind {upsampler_kind}`)")
    for level, kinds in upsamplers.items():
        order = ([upsampler_kind] if upsampler_kind else []) + list(PREFERRED_UPSAMPLERS)
        prior_dirs.setdefault(level, kinds[next(k for k in order if k in kinds)])
    vqvae = load_vqvae(vqvae_dir, device)
    priors = {level: load_prior(d, device) for level, d in prior_dirs.items()}
    priors = {level: p.to(sampling_dtype(precision, device, p.config.masked)) for level, p in priors.items()}
    top = vqvae.config.levels - 1
    if top not in priors:
        raise ValueError(f"{root}: no top-level prior (level {top}); train one with `housebox train prior --level {top}`")
    describe = read_config(prior_dirs[top])["describe"]
    vocabulary = describe["vocabulary"]
    return Run(root=root, vqvae=vqvae, vqvae_dir=vqvae_dir, priors=priors, prior_dirs=prior_dirs,
               artists=tuple(vocabulary["artists"]), genres=tuple(vocabulary["genres"]),
               artist_bpm=dict(describe.get("artist_bpm") or {}), upsamplers=upsamplers)


def labels_for(run: Run, artist: str | None, genres: tuple[str, ...], n: int) -> Labels:
    """Names -> ids, with a clear error listing the known names."""
    device = next(run.vqvae.parameters()).device
    artist = artist or "unknown"
    if artist not in run.artists:
        raise ValueError(f"unknown artist {artist!r}; known artists: {', '.join(run.artists)}")
    lowered = tuple(g.lower() for g in genres) or ("unknown",)
    for g in lowered:
        if g not in run.genres:
            raise ValueError(f"unknown genre {g!r}; known genres: {', '.join(run.genres)}")
    max_genres = run.priors[run.top].config.max_genres
    ids = [run.genres.index(g) for g in lowered][:max_genres]
    ids += [-1] * (max_genres - len(ids))
    return Labels(artist=torch.full((n,), run.artists.index(artist), dtype=torch.long, device=device),
                  genres=torch.tensor([ids] * n, dtype=torch.long, device=device))


def clock_grids(run: Run, settings: SampleSettings, prime_grid=None) -> list | None:
    """The beat grid each sample's clock follows (one per sample), or None when no prior has a clock.

    `--bpm` wins; else a prime's own grid (extrapolated at its tempo past the clip); else the artist's
    median training tempo, with a downbeat at 0 s."""
    if not run.clocked:
        return None
    from housebox.audio.features import steady_beats

    if settings.bpm is None and prime_grid is not None:
        return [prime_grid] * settings.n
    bpm = settings.bpm or run.artist_bpm.get(settings.artist or "unknown")
    if bpm is None:
        known = list(run.artist_bpm.values())
        bpm = float(np.median(known)) if known else 120.0
    if not 20.0 <= bpm <= 400.0:
        raise ValueError(f"--bpm {bpm:g}: expected a tempo between 20 and 400 BPM")
    return [steady_beats(bpm, settings.seconds + 60.0)] * settings.n


def level_beats(run: Run, grids: list | None, level: int, n_tokens: int) -> Tensor | None:
    """Beat positions FloatTensor[n x n_tokens] of every token at `level` (None without a clock)."""
    from housebox.data.dataset import token_beats

    if grids is None or not run.priors[level].config.beat_clock:
        return None
    seconds_per_token = run.vqvae.config.hops[level] / run.vqvae.config.sample_rate
    rows = [token_beats(grid, 0, n_tokens, seconds_per_token) for grid in grids]
    return torch.from_numpy(np.stack(rows))


def upsample(run: Run, codes_above: Tensor, level: int, labels: Labels, settings: SampleSettings,
             generator: torch.Generator, prime: Tensor | None = None, progress: bool = True,
             grids: list | None = None, label: str = "") -> Tensor:
    """Codes at `level` from the codes of `level + 1`: LongTensor[n x N] -> LongTensor[n x N * ratio].
    `label` names the work in the progress bar (e.g. an artist and an evaluation stage)."""
    lead = f"{label}: " if label else ""
    prior = run.priors[level]
    n_tokens = codes_above.shape[1] * prior.config.upper_ratio
    if prior.config.masked:
        return sample_masked(prior, n_tokens=n_tokens, labels=labels, prime=prime, upper=codes_above,
                             beats=level_beats(run, grids, level, n_tokens), steps=settings.upsample_steps,
                             temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                             cfg_scale=settings.cfg_scale, hop_fraction=settings.upsample_hop,
                             remask_noise=settings.upsample_noise, generator=generator,
                             progress=progress, desc=f"{lead}level {level} (masked, {settings.upsample_steps} passes)")
    return sample_codes(prior, n_tokens=n_tokens, labels=labels, prime=prime, upper=codes_above,
                        beats=level_beats(run, grids, level, n_tokens),
                        temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                        cfg_scale=settings.cfg_scale, hop_fraction=settings.hop_fraction, generator=generator,
                        progress=progress, desc=f"{lead}level {level}", compiled=settings.compile)


@torch.inference_mode()
def decode(vqvae: VQVAE, codes: Tensor, level: int, window_seconds: float = 20.0, margin_seconds: float = 1.0) -> np.ndarray:
    """Waveform of codes LongTensor[n x N] at `level`, decoded in overlapping windows: float32 [n x N * hop]."""
    hop = vqvae.config.hops[level]
    per_second = vqvae.config.sample_rate / hop
    window, margin = max(1, int(window_seconds * per_second)), int(margin_seconds * per_second)
    pieces = []
    for start in range(0, codes.shape[1], window):
        lo, hi = max(0, start - margin), min(codes.shape[1], start + window + margin)
        audio = vqvae.decode(codes[:, lo:hi], level)[:, 0].float()  # (n, (hi - lo) * hop)
        keep = audio[:, (start - lo) * hop : (start - lo + min(window, codes.shape[1] - start)) * hop]
        pieces.append(keep.cpu().numpy())
    return np.clip(np.concatenate(pieces, axis=1), -1.0, 1.0)


def encode_prime(run: Run, path: str | Path, seconds: float, n: int) -> tuple[dict[int, Tensor], object]:
    """A clip's codes at every level, for priming (level -> LongTensor[n x P_level]), and its beat grid
    (None when it has too few beats to track, or no prior has a beat clock)."""
    from housebox.audio.io import load_audio, normalize_loudness

    config = run.vqvae.config
    audio = load_audio(path, sample_rate=config.sample_rate, mono=True).samples
    audio = normalize_loudness(audio, config.sample_rate)
    top_hop = max(config.hops)
    length = min(audio.shape[1], int(seconds * config.sample_rate)) // top_hop * top_hop
    if length == 0:
        raise ValueError(f"{path}: shorter than one top-level token ({top_hop / config.sample_rate:.3f} s)")
    device = next(run.vqvae.parameters()).device
    clip = torch.from_numpy(audio[:, :length]).to(device)[None]  # (1, 1, T)
    codes = run.vqvae.encode(clip)
    grid = None
    if run.clocked:
        from housebox.audio.features import FeatureError, track_beats

        try:
            grid = track_beats(audio[0, :length], config.sample_rate)
        except FeatureError:
            pass
    return {level: c.expand(n, -1).clone() for level, c in enumerate(codes)}, grid


def load_codes_file(path: str | Path, n: int) -> dict[int, Tensor]:
    with np.load(path) as data:
        levels = {int(k[1:]): torch.from_numpy(data[k].astype(np.int64)) for k in data.files if k.startswith("l")}
    if not levels:
        raise ValueError(f"{path}: no codes inside (expected arrays l0, l1, l2)")
    return {lv: c if c.shape[0] == n else c[:1].expand(n, -1).clone() for lv, c in levels.items()}


def generate(run: Run, settings: SampleSettings, progress: bool = True, *, top_codes: Tensor | None = None,
             beats: list | None = None, label: str = "") -> Generation:
    """Sample `settings.n` tracks: top-level codes, then upsampling down to the lowest level, then audio.

    `top_codes` LongTensor[n x N] replaces the top level's sampling: the upsamplers fill the finer levels
    from those codes (evaluation upsamples true codes this way). `beats` (one BeatGrid per sample) sets
    the beat clock; by default it runs at `settings.bpm` or the artist's median tempo. `label` names the
    work in the progress bars."""
    started = time.time()
    config = run.vqvae.config
    device = next(run.vqvae.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    labels = labels_for(run, settings.artist, settings.genres, settings.n)
    top = run.top
    available = [lv for lv in range(top, -1, -1) if lv in run.priors]
    wanted = settings.levels or len(available)
    levels = [lv for lv in range(top, top - wanted, -1)]
    missing = [lv for lv in levels if lv not in run.priors]
    if missing:
        raise ValueError(f"{run.root}: no model for level(s) {missing}; train `housebox train upsampler --level N`")
    n_top = max(1, round(settings.seconds * config.tokens_per_second(top)))
    primes: dict[int, Tensor] = {}
    prime_grid = None
    if settings.prime:
        primes, prime_grid = encode_prime(run, settings.prime, settings.prime_seconds, settings.n)
    if settings.continue_codes:
        primes = load_codes_file(settings.continue_codes, settings.n)
    primes = {lv: c.to(device) for lv, c in primes.items()}
    grids = beats if beats is not None else clock_grids(run, settings, prime_grid)

    codes: dict[int, Tensor] = {}
    rates: dict[int, float] = {}
    for level in levels:
        tick = time.time()
        if level == top:
            if top_codes is not None:
                codes[top] = top_codes.to(device)
                continue
            if settings.upsample_only:
                if top not in primes:
                    raise ValueError("--upsample-only needs --continue codes.npz with top-level codes")
                codes[top] = primes[top]
                continue
            codes[top] = sample_codes(run.priors[top], n_tokens=n_top, labels=labels, prime=primes.get(top),
                                      beats=level_beats(run, grids, top, n_top),
                                      temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                                      cfg_scale=settings.cfg_scale, beat_guidance=settings.beat_guidance,
                                      hop_fraction=settings.hop_fraction, generator=generator, progress=progress,
                                      desc=f"{label}: level {top}" if label else f"level {top}",
                                      compiled=settings.compile)
        else:
            prime = primes.get(level) if not settings.upsample_only else None
            codes[level] = upsample(run, codes[level + 1], level, labels, settings, generator, prime, progress, grids,
                                    label)
        rates[level] = codes[level].numel() / max(1e-9, time.time() - tick)
    lowest = levels[-1]
    audio = decode(run.vqvae, codes[lowest], lowest)
    return Generation(codes=codes, audio=audio, sample_rate=config.sample_rate, lowest_level=lowest,
                      tokens_per_second=rates, wall_seconds=time.time() - started,
                      clock_bpm=[round(g.bpm, 2) for g in grids] if grids else None)


def write_outputs(out_dir: str | Path, generation: Generation, settings: SampleSettings, run: Run) -> list[Path]:
    """sample_000.wav ..., codes.npz, spectrogram.png, report.json and index.html in `out_dir`."""
    from housebox.audio.io import save_audio
    from housebox.report.pages import write_sample_page
    from housebox.report.plots import save_spectrograms
    from housebox.store import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sr = generation.sample_rate
    wavs = [save_audio(out / f"sample_{i:03d}.wav", generation.audio[i], sr) for i in range(generation.audio.shape[0])]
    arrays = {f"l{lv}": c.cpu().numpy().astype(np.int16) for lv, c in generation.codes.items()}
    np.savez(out / "codes.npz", **arrays, format_version=np.array(CODES_FORMAT_VERSION),
             hops=np.array(run.vqvae.config.hops), sample_rate=np.array(sr))
    titles = [f"{p.name}: {settings.artist or 'unknown'}, {', '.join(settings.genres) or 'unknown'}, "
              f"level {generation.lowest_level}" for p in wavs]
    save_spectrograms(out / "spectrogram.png", list(generation.audio), sr, titles, max_hz=min(sr / 2, 8000))
    seconds = generation.audio.shape[1] / sr
    models = {"vqvae": {"dir": str(run.vqvae_dir), "sha256": weights_hash(run.vqvae_dir)}}
    decoders = read_config(run.vqvae_dir).get("decoders")
    if decoders:  # adversarially fine-tuned decoders in use (housebox train decoder)
        models["vqvae"]["decoders"] = {**decoders, "sha256": weights_hash(run.vqvae_dir, decoders["file"])}
    for level, d in sorted(run.prior_dirs.items()):
        models[f"level_{level}"] = {"dir": str(d), "sha256": weights_hash(d), "kind": run.priors[level].config.kind}
    report = {
        "settings": asdict(settings),
        "seed": settings.seed,
        "samples": [p.name for p in wavs],
        "seconds": round(seconds, 3),
        "sample_rate": sr,
        "levels_generated": sorted(generation.codes, reverse=True),
        "decoded_from_level": generation.lowest_level,
        "tokens_per_second": {f"level_{k}": round(v, 1) for k, v in generation.tokens_per_second.items()},
        "wall_seconds": round(generation.wall_seconds, 2),
        "beat_clock_bpm": generation.clock_bpm,
        "realtime_factor": round(seconds * len(wavs) / max(1e-9, generation.wall_seconds), 4),
        "models": models,
    }
    write_json(out / "report.json", report)
    write_sample_page(out, report)
    return wavs

