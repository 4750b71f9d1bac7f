"""Detector (b), the same codes: passages of a sample's codes that follow one training track in the code cache,
verbatim or with slips."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from housebox.data.prepare import read_manifest
from housebox.evaluate.originality.common import (
    CodeRun,
    OriginalityConfig,
    OriginalityError,
    mapped_arrays,
    stored_index,
    write_index,
)
from housebox.evaluate.originality.landmarks import _expand


# ---- verbatim runs of codes ----------------------------------------------------------------------

HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2**64


@dataclass(frozen=True)
class CodeIndex:
    """One level of the training code cache with its k-gram hashes."""

    level: int
    ngram: int  # k
    tokens_per_second: float
    codes: np.ndarray  # int [N]: every track's codes, one after the other (int32 when stored)
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


INDEX_DIR = "code_index"  # DATA/code_index/l<level>/: the k-gram index of one level, on disk
INDEX_VERSION = 2  # 2: the calibration measures passages with slips, not only verbatim runs
ARRAYS = ("codes", "starts", "hashes", "positions")


def _level_paths(data_dir: Path, level: int, config: OriginalityConfig) -> tuple[dict, list[dict], list[Path], list[int]]:
    """(the code cache's meta.json, the manifest rows with codes at `level`, their files, their lengths in
    tokens); OriginalityError when the level cannot be indexed."""
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
    lengths = [int(np.load(p, mmap_mode="r").shape[0]) for p in paths]
    total = sum(lengths)
    if total > config.max_index_tokens:
        raise OriginalityError(f"{total} training tokens at level {level}, more than max_index_tokens "
                               f"({config.max_index_tokens})")
    return meta, rows, paths, lengths


def _kgrams(codes: np.ndarray, starts: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, positions) of the k-grams of `codes` (tracks one after another, `starts` [tracks + 1]) that
    lie inside one track, sorted by hash; positions shifted by `offset`."""
    hashes = ngram_hashes(codes, k)  # (N - k + 1,)
    positions = np.arange(hashes.size, dtype=np.int64)
    track = np.searchsorted(starts, positions, side="right") - 1
    inside = positions + k <= starts[track + 1]  # k-grams across two tracks do not exist
    hashes, positions = hashes[inside], positions[inside] + offset
    order = np.argsort(hashes, kind="stable")
    return hashes[order], positions[order]


def build_code_index(data_dir: str | Path, level: int, config: OriginalityConfig = OriginalityConfig()) -> CodeIndex:
    """k-gram index of one level of `DATA/codes` (written by `housebox encode`), in memory (no caching;
    see `load_code_index`)."""
    data_dir = Path(data_dir)
    meta, rows, paths, lengths = _level_paths(data_dir, level, config)
    tokens_per_second = meta["sample_rate"] / meta["hops"][level]
    k = ngram_size(tokens_per_second, config)
    codes = np.concatenate([np.load(p).astype(np.int64) for p in paths])  # (N,): each file read and closed
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hashes, positions = _kgrams(codes, starts, k)
    index = CodeIndex(level=level, ngram=k, tokens_per_second=tokens_per_second, codes=codes, starts=starts,
                      hashes=hashes, positions=positions, track_ids=tuple(r["id"] for r in rows),
                      artists=tuple(r["artist"] for r in rows))
    return replace(index, natural_tokens=natural_overlap(index, config))


def load_code_index(data_dir: str | Path, level: int, config: OriginalityConfig = OriginalityConfig()) -> CodeIndex:
    """The level's index stored in `DATA/code_index/l<level>/`, brought up to date and memory-mapped.

    Tracks added to the code cache since are appended (their k-grams merged into the sorted arrays, the
    calibration measured again); a track gone, or a code cache from other VQ-VAE weights, rebuilds it. The
    arrays are .npy files read through memory maps (four descriptors, whatever the number of tracks),
    replaced atomically, meta.json last (common.write_index)."""
    data_dir = Path(data_dir)
    meta, rows, _, _ = _level_paths(data_dir, level, config)
    folder = data_dir / INDEX_DIR / f"l{level}"
    tokens_per_second = meta["sample_rate"] / meta["hops"][level]
    k = ngram_size(tokens_per_second, config)
    settings = {"ngram": k, "weights_sha256": meta.get("weights_sha256"), "calibration_tracks": config.calibration_tracks,
                "max_ngram_count": config.max_ngram_count, "code_window_seconds": config.code_window_seconds,
                "min_code_agreement": config.min_code_agreement}
    stored, usable = stored_index(folder, INDEX_VERSION, settings, ARRAYS)
    known = [t["id"] for t in stored.get("tracks", [])] if usable else []
    current = {r["id"]: r for r in rows}
    audio = {t["id"]: t.get("sha256") for t in stored.get("tracks", [])}
    if known and any(t not in current or current[t]["sha256"] != audio[t] for t in known):
        known = []  # a track left the cache or changed: positions after it would move, so build anew
    new_rows = [r for r in rows if r["id"] not in set(known)]
    if known and not new_rows:
        arrays = mapped_arrays(folder, ARRAYS)
        return CodeIndex(level=level, ngram=k, tokens_per_second=tokens_per_second, **arrays,
                         track_ids=tuple(known), artists=tuple(current[t]["artist"] for t in known),
                         natural_tokens=int(stored["natural_tokens"]))
    if known:
        old = mapped_arrays(folder, ARRAYS)
        codes, starts = np.asarray(old["codes"]), np.asarray(old["starts"])
        hashes, positions = np.asarray(old["hashes"]), np.asarray(old["positions"])
        del old
    else:
        codes, starts = np.zeros(0, np.int32), np.zeros(1, np.int64)
        hashes, positions = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    added = [np.load(data_dir / "codes" / f"l{level}" / f"{r['id']}.npy").astype(np.int32) for r in new_rows]
    added_starts = np.concatenate([[0], np.cumsum([a.shape[0] for a in added])]).astype(np.int64)
    add_hashes, add_positions = _kgrams(np.concatenate(added), added_starts, k, offset=int(starts[-1]))
    at = np.searchsorted(hashes, add_hashes, side="right")  # merge two sorted arrays; equal hashes keep order
    hashes, positions = np.insert(hashes, at, add_hashes), np.insert(positions, at, add_positions)
    codes = np.concatenate([codes] + added)
    starts = np.concatenate([starts, starts[-1] + added_starts[1:]])
    order = known + [r["id"] for r in new_rows]
    index = CodeIndex(level=level, ngram=k, tokens_per_second=tokens_per_second, codes=codes, starts=starts,
                      hashes=hashes, positions=positions, track_ids=tuple(order),
                      artists=tuple(current[t]["artist"] for t in order))
    natural = natural_overlap(index, config)
    write_index(folder, {"codes": codes, "starts": starts, "hashes": hashes, "positions": positions},
                {"version": INDEX_VERSION, "config": settings, "natural_tokens": natural,
                 "tracks": [{"id": t, "sha256": current[t]["sha256"]} for t in order]})
    return load_code_index(data_dir, level, config)


def natural_overlap(index: CodeIndex, config: OriginalityConfig = OriginalityConfig()) -> int:
    """Longest code passage (tokens; see `longest_code_run`) that a training track shares with a *different*
    training track, over up to config.calibration_tracks tracks evenly spread through the dataset.

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


def _passage(index: CodeIndex, codes: np.ndarray, diagonal: int, track: int,
             config: OriginalityConfig) -> tuple[int, int, float] | None:
    """The longest passage of `codes [T]` that follows training track `track` on one diagonal (training
    position minus sample position, in the index's coordinates): every window of code_window_seconds in it
    has at least min_code_agreement of its tokens equal, and it runs from the first pair of equal tokens
    to the last (a lone token equal by chance at either end does not lengthen it). (sample token, tokens,
    share equal), or None."""
    lo, hi = int(index.starts[track]), int(index.starts[track + 1])
    i0, i1 = max(0, lo - diagonal), min(codes.size, hi - diagonal)
    if i1 <= i0:
        return None
    equal = codes[i0:i1] == np.asarray(index.codes[i0 + diagonal : i1 + diagonal])
    w = max(1, min(equal.size, round(config.code_window_seconds * index.tokens_per_second)))
    sums = np.concatenate([[0], np.cumsum(equal)])
    good = (sums[w:] - sums[:-w]) >= config.min_code_agreement * w  # (i1 - i0 - w + 1,): windows by first token
    edges = np.diff(np.concatenate([[0], good.astype(np.int8), [0]]))
    first_window, end_window = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if first_window.size == 0:
        return None
    paired = equal & (np.concatenate([[False], equal[:-1]]) | np.concatenate([equal[1:], [False]]))
    hits = np.concatenate([np.flatnonzero(paired), [equal.size]])  # a sentinel past the end
    first = hits[np.searchsorted(hits, first_window)]  # first paired token of what each run of windows covers ...
    last = hits[np.maximum(np.searchsorted(hits, end_window - 1 + w) - 1, 0)] + 1  # ... and one past the last
    length = np.where(last > first, last - first, 0)
    r = int(np.argmax(length))
    if length[r] == 0:
        return None
    a, b = int(first[r]), int(last[r])
    return i0 + a, b - a, float(equal[a:b].mean())


def longest_code_run(index: CodeIndex, codes: np.ndarray, config: OriginalityConfig = OriginalityConfig(),
                     candidates: int = 8, exclude: tuple[int, int] | None = None) -> CodeRun | None:
    """The longest passage of `codes [T]` that follows one training track, or None without a k-gram in common.

    Verbatim runs: runs of k-gram hits on one diagonal (training position minus sample position) are seeds;
    the longest few are checked token by token and extended both ways as far as the codes stay equal.
    Passages with slips (`_passage`): the diagonals of one track with the most k-gram hits are compared
    token by token along their whole length. The longer of the two is returned (`agreement`: the share of
    its tokens that are equal). `exclude` is a [start, end) range of the index's codes (one track) not to
    match against.
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
            best = _code_run(index, t, i0 - left, g0 - left - lo, tokens)
    # passages with slips, on the diagonals (of one track each) with the most hits
    track = np.searchsorted(index.starts, q + diagonal, side="right") - 1  # (M,), non-decreasing along a diagonal
    new_group = np.concatenate([[True], (np.diff(diagonal) != 0) | (np.diff(track) != 0)])
    group_firsts = np.flatnonzero(new_group)
    hits = np.bincount(np.cumsum(new_group) - 1)
    for g in np.argsort(-hits, kind="stable")[:candidates]:
        found = _passage(index, codes, int(diagonal[group_firsts[g]]), int(track[group_firsts[g]]), config)
        if found is None or (best is not None and found[1] <= best.tokens):
            continue
        sample_token, tokens, agreement = found
        t = int(track[group_firsts[g]])
        track_token = sample_token + int(diagonal[group_firsts[g]]) - int(index.starts[t])
        best = _code_run(index, t, sample_token, track_token, tokens, agreement)
    return best


def _code_run(index: CodeIndex, track: int, sample_token: int, track_token: int, tokens: int,
              agreement: float = 1.0) -> CodeRun:
    """A passage of `tokens` codes from `sample_token` of the sample and `track_token` of training track
    `track` (its place in the index), with its times in seconds."""
    tps = index.tokens_per_second
    return CodeRun(level=index.level, track_id=index.track_ids[track], artist=index.artists[track],
                   sample_token=sample_token, track_token=track_token, tokens=tokens, seconds=round(tokens / tps, 3),
                   sample_start=round(sample_token / tps, 3), track_start=round(track_token / tps, 3),
                   natural_seconds=round(index.natural_tokens / tps, 3), agreement=round(agreement, 3))
