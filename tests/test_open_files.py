"""Training data keeps no file open per track: a catalogue of hundreds of tracks trains under a small
RLIMIT_NOFILE (issue 12: 700 tracks died with 'Too many open files' under the desktop limit of 1,024)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from housebox.data.dataset import AudioChunks
from housebox.data.prepare import read_track_window, track_header

TRACKS = 300


def catalogue(root: Path, tracks: int = TRACKS, samples: int = 4000) -> list[dict]:
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(tracks):
        audio = (np.arange(samples) * (i + 1) % 30000).astype(np.int16)
        np.save(root / "audio" / f"t{i:04d}.npy", audio)
        rows.append({"id": f"t{i:04d}", "sample_rate": 1000, "samples": samples, "seconds": samples / 1000})
    return rows


def test_a_window_is_the_slice_of_the_track(tmp_path):
    catalogue(tmp_path, tracks=2)
    full = np.load(tmp_path / "audio" / "t0001.npy")
    assert track_header(tmp_path, "t0001")[1] == len(full)
    assert np.array_equal(read_track_window(tmp_path, "t0001", 123, 1123), full[123:1123])
    assert np.array_equal(read_track_window(tmp_path, "t0001", 3900, 5000), full[3900:])  # clipped at the end
    assert read_track_window(tmp_path, "t0001", 5000, 6000).size == 0


@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd")
def test_drawing_from_hundreds_of_tracks_under_a_small_open_file_limit(tmp_path):
    rows = catalogue(tmp_path)
    chunks = AudioChunks(tmp_path, rows, batch_size=16, chunk_samples=512)
    before = len(list(Path("/proc/self/fd").iterdir()))
    for seed in range(60):
        batch = chunks(torch.Generator().manual_seed(seed))
    assert batch.shape == (16, 1, 512) and batch.abs().sum() > 0
    assert len({r for r in chunks._headers}) > 200  # most tracks were drawn from
    assert len(list(Path("/proc/self/fd").iterdir())) <= before + 2  # and none of them stayed open
    script = (f"import resource, torch; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
              f"from housebox.data.dataset import AudioChunks\nfrom pathlib import Path\n"
              f"rows = {rows!r}\nchunks = AudioChunks(Path({str(tmp_path)!r}), rows, 16, 512)\n"
              f"[chunks(torch.Generator().manual_seed(s)) for s in range(60)]\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd")
def test_code_windows_of_hundreds_of_tracks_keep_no_file_open(tmp_path):
    from housebox.data.dataset import CodeWindows
    from housebox.data.labels import Vocabulary

    rows = []
    for level in (1, 2):
        (tmp_path / "codes" / f"l{level}").mkdir(parents=True)
    for i in range(TRACKS):
        for level, n in ((1, 400), (2, 100)):
            np.save(tmp_path / "codes" / f"l{level}" / f"t{i:04d}.npy", (np.arange(n) % 64).astype(np.int16))
        rows.append({"id": f"t{i:04d}", "artist": "unknown", "genres": ["unknown"], "seconds": 1.0})
    before = len(list(Path("/proc/self/fd").iterdir()))
    windows = CodeWindows(tmp_path, rows, 1, 64, 8, Vocabulary(), 1, ratio=4, upper=True)
    batch = windows(torch.Generator().manual_seed(0))
    assert batch.codes.shape == (8, 64) and batch.upper.shape == (8, 16)
    assert len(list(Path("/proc/self/fd").iterdir())) <= before + 2
