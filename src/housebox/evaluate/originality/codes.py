"""Detector (b), the same codes: verbatim runs of a sample's codes in the training code cache."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from housebox.data.prepare import read_manifest
from housebox.evaluate.originality.common import CodeRun, OriginalityConfig, OriginalityError
from housebox.evaluate.originality.landmarks import _expand


# ---- verbatim runs of codes ----------------------------------------------------------------------

HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2**64


@dataclass(frozen=True)
class CodeIndex:
    """One level of the training code cache with its k-gram hashes."""

    level: int
    ngram: int  # k
    tokens_per_second: float
    codes: np.ndarray  # int64 [N]: every track's codes, one after the other
    starts: np.ndarray  # int64 [tracks + 1]: where each track begins in `codes` (and where the last ends)
    hashes: np.ndarray  # uint64 [K], sorted: k-grams that lie inside one track
    positions: np.ndarray  # int64 [K]: where each begins in `codes`
    track_ids: tuple[str, ...]
    artists: tuple[str, ...]
    natural_tokens: int = 0  # longest run that different training tracks share (see `natural_overlap`)


def ngram_hashes(codes: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash (mod 2**64) of every n consecutive codes of `[N]`: uint64 `[N - n + 1]`."""
    values = np.asarray(codes).astype(np.uint64) + np.uint64(1)
    count = values.size - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    for j in range(n):  # integer arrays wrap around silently: arithmetic mod 2**64
        hashes = hashes * HASH_BASE + values[j : j + count]
    return hashes


def ngram_size(tokens_per_second: float, config: OriginalityConfig) -> int:
    """k for a level: ngram_seconds of tokens, at least min_ngram and at most 64."""
    return int(min(64, max(config.min_ngram, round(config.ngram_seconds * tokens_per_second))))


def build_code_index(data_dir: str | Path, level: int, config: OriginalityConfig = OriginalityConfig()) -> CodeIndex:
    """k-gram index of one level of `DATA/codes` (written by `housebox encode`)."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "codes" / "meta.json"
    if not meta_path.exists():
        raise OriginalityError(f"{data_dir}: no code cache (run `housebox encode`)")
    meta = json.loads(meta_path.read_text())
    if not 0 <= level < len(meta["hops"]):
        raise OriginalityError(f"{data_dir}: the code cache has no level {level}")
    rows = [r for r in read_manifest(data_dir) if (data_dir / "codes" / f"l{level}" / f"{r['id']}.npy").exists()]
    if not rows:
        raise OriginalityError(f"{data_dir}: the code cache has no level-{level} codes")
    paths = [data_dir / "codes" / f"l{level}" / f"{r['id']}.npy" for r in rows]
    # one map at a time, closed at once (a list of maps would hold a descriptor per track)
    lengths = np.array([np.load(p, mmap_mode="r").shape[0] for p in paths], dtype=np.int64)
    if lengths.sum() > config.max_index_tokens:
        raise OriginalityError(f"{lengths.sum()} training tokens at level {level}, more than max_index_tokens "
                               f"({config.max_index_tokens})")
    tokens_per_second = meta["sample_rate"] / meta["hops"][level]
    k = ngram_size(tokens_per_second, config)
    codes = np.concatenate([np.load(p).astype(np.int64) for p in paths])  # (N,): each file read and closed
    starts = np.concatenate([[0], np.cumsum(lengths)])  # (tracks + 1,)
    hashes = ngram_hashes(codes, k)  # (N - k + 1,)
    positions = np.arange(hashes.size, dtype=np.int64)
    track = np.searchsorted(starts, positions, side="right") - 1
    inside = positions + k <= starts[track + 1]  # k-grams across two tracks do not exist
    hashes, positions = hashes[inside], positions[inside]
    order = np.argsort(hashes, kind="stable")
    index = CodeIndex(level=level, ngram=k, tokens_per_second=tokens_per_second, codes=codes, starts=starts,
                      hashes=hashes[order], positions=positions[order], track_ids=tuple(r["id"] for r in rows),
                      artists=tuple(r["artist"] for r in rows))
    return replace(index, natural_tokens=natural_overlap(index, config))


def natural_overlap(index: CodeIndex, config: OriginalityConfig = OriginalityConfig()) -> int:
    """Longest verbatim run (tokens) that a training track shares with a *different* training track,
    over up to config.calibration_tracks tracks evenly spread through the dataset.

    Coarse codes of similar music (one artist's stock sounds) repeat across unrelated tracks; a
    sample's run is evidence of copying only beyond this length.
    """
    n = len(index.track_ids)
    longest = 0
    for t in np.unique(np.linspace(0, n - 1, min(n, config.calibration_tracks)).round().astype(int)):
        lo, hi = int(index.starts[t]), int(index.starts[t + 1])
        run = longest_code_run(index, index.codes[lo:hi], config, exclude=(lo, hi))
        longest = max(longest, run.tokens if run else 0)
    return longest


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading elements of two equal-length arrays agree."""
    differ = np.flatnonzero(a != b)
    return int(differ[0]) if differ.size else int(a.size)


def longest_code_run(index: CodeIndex, codes: np.ndarray, config: OriginalityConfig = OriginalityConfig(),
                     candidates: int = 8, exclude: tuple[int, int] | None = None) -> CodeRun | None:
    """The longest run of `codes [T]` found verbatim in one training track, or None below k tokens.

    Runs of k-gram hits on one diagonal (training position minus sample position) are seeds; the
    longest few are checked token by token and extended both ways as far as the codes stay equal.
    `exclude` is a [start, end) range of the index's codes (one track) not to match against.
    """
    codes = np.asarray(codes, dtype=np.int64)
    k = index.ngram
    q, d = _expand(index.hashes, ngram_hashes(codes, k), config.max_ngram_count)
    if exclude is not None:
        outside = (index.positions[d] < exclude[0]) | (index.positions[d] >= exclude[1])
        q, d = q[outside], d[outside]
    if q.size == 0:
        return None
    diagonal = index.positions[d] - q  # (M,)
    order = np.lexsort((q, diagonal))
    q, diagonal = q[order], diagonal[order]
    new_run = np.concatenate([[True], (np.diff(diagonal) != 0) | (np.diff(q) != 1)])
    run_id = np.cumsum(new_run) - 1  # (M,)
    firsts = np.flatnonzero(new_run)
    lengths = np.bincount(run_id)
    best: CodeRun | None = None
    for r in np.argsort(-lengths, kind="stable")[:candidates]:
        i0 = int(q[firsts[r]])
        g0 = i0 + int(diagonal[firsts[r]])
        seed = int(lengths[r]) + k - 1
        if not np.array_equal(codes[i0 : i0 + seed], index.codes[g0 : g0 + seed]):
            continue  # a hash collision, not a copy
        t = int(np.searchsorted(index.starts, g0, side="right") - 1)
        lo, hi = int(index.starts[t]), int(index.starts[t + 1])
        back = min(i0, g0 - lo)
        left = _common_prefix(codes[i0 - back : i0][::-1], index.codes[g0 - back : g0][::-1])
        ahead = min(codes.size - i0 - seed, hi - g0 - seed)
        right = _common_prefix(codes[i0 + seed : i0 + seed + ahead], index.codes[g0 + seed : g0 + seed + ahead])
        tokens = left + seed + right
        if best is None or tokens > best.tokens:
            sample_token, track_token = i0 - left, g0 - left - lo
            tps = index.tokens_per_second
            best = CodeRun(level=index.level, track_id=index.track_ids[t], artist=index.artists[t],
                           sample_token=sample_token, track_token=track_token, tokens=tokens,
                           seconds=round(tokens / tps, 3), sample_start=round(sample_token / tps, 3),
                           track_start=round(track_token / tps, 3),
                           natural_seconds=round(index.natural_tokens / tps, 3))
    return best
