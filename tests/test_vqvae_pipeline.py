"""`train vqvae`, `encode` and `evaluate-vqvae` end to end on the demo corpus, with resume and DDP."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_VQVAE
from housebox.cli import main
from housebox.config import apply_overrides, load_preset
from housebox.data.codes import encode_track, load_codes
from housebox.data.prepare import load_track, read_manifest
from housebox.models.load import load_vqvae
from housebox.store import load_weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vq") / "vqvae"
    assert main(["train", "vqvae", "--data", str(demo_data), "-o", str(out), "--device", "cpu", *TINY_VQVAE,
                 "--set", "vqvae_train.steps=8", "--set", "vqvae_train.checkpoint_every=4"]) == 0
    return out


def test_train_writes_a_loadable_model_directory(trained, demo_data):
    meta = json.loads((trained / "config.json").read_text())
    assert meta["step"] == 8 and meta["describe"]["kind"] == "vqvae"
    assert meta["describe"]["model"]["width"] == 16  # the --set override reached the model
    model = load_vqvae(trained)
    assert model.config.hops == (8, 32, 128) and not model.training
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/l0/spectral_convergence_db" in r for r in rows)
    assert (trained / "loss.png").stat().st_size > 1000
    events = list((trained / "tensorboard").glob("events.*"))
    assert events and max(e.stat().st_size for e in events) > 10_000  # scalars plus audio


def test_encode_writes_the_code_cache_and_is_resumable(trained, demo_data, capsys):
    assert main(["encode", "--data", str(demo_data), "--vqvae", str(trained), "--device", "cpu"]) == 0
    rows = read_manifest(demo_data)
    for row in rows:
        for level, hop in enumerate((8, 32, 128)):
            codes = load_codes(demo_data, row["id"], level)
            assert codes.dtype == np.int16
            assert len(codes) == -(-row["samples"] // 128) * 128 // hop
            assert 0 <= codes.min() and codes.max() < 64
    meta = json.loads((demo_data / "codes" / "meta.json").read_text())
    assert meta["hops"] == [8, 32, 128] and len(meta["weights_sha256"]) == 64
    capsys.readouterr()
    assert main(["encode", "--data", str(demo_data), "--vqvae", str(trained), "--device", "cpu"]) == 0
    assert f"encoded 0 tracks ({len(rows)} already cached)" in capsys.readouterr().out


def test_windowed_encoding_matches_whole_track(trained, demo_data):
    model = load_vqvae(trained)
    audio = np.asarray(load_track(demo_data, read_manifest(demo_data)[0]["id"]))[: 16000 * 5]
    whole = encode_track(model, audio, window_seconds=60.0)
    windowed = encode_track(model, audio, window_seconds=1.0, margin_seconds=0.5, batch_size=3)
    for a, b in zip(whole, windowed):
        assert a.shape == b.shape
        assert (a == b).mean() > 0.995


def test_evaluate_vqvae_reports_every_level(trained, demo_data, tmp_path, capsys):
    assert main(["evaluate-vqvae", str(trained), "--data", str(demo_data), "-o", str(tmp_path),
                 "--seconds", "2", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "vqvae_eval.json").read_text())
    levels = report["levels"]
    assert [lv["hop"] for lv in levels] == [8, 32, 128]
    assert levels[0]["bitrate_kbps"] == pytest.approx(2000 * 6 / 1000)
    for lv in levels:
        assert np.isfinite(lv["spectral_convergence_db"]) and 0 < lv["codes_used_percent"] <= 100
        assert 1 <= lv["perplexity"] <= 64
        assert np.isfinite(lv["si_sdr_db"]) and lv["mel_l1"] > 0 and lv["mr_stft"] > 0
    for name in ("vqvae_spectrograms.png", "vqvae_codebook_usage.png"):
        assert (tmp_path / name).stat().st_size > 5000
    assert "codes used" in capsys.readouterr().out


def _preset(steps: int) -> dict:
    sets = [TINY_VQVAE[i + 1] for i in range(0, len(TINY_VQVAE), 2)]
    return apply_overrides(load_preset("tiny"), sets + [f"vqvae_train.steps={steps}", "vqvae_train.checkpoint_every=100"])


def test_interrupted_vqvae_run_resumes_exactly(demo_data, tmp_path, monkeypatch):
    from housebox.data.dataset import AudioChunks
    from housebox.train.vqvae import train_vqvae

    full = train_vqvae(demo_data, tmp_path / "full", _preset(10), device="cpu", progress=False)
    assert full.step == 10 and not full.interrupted

    draw = AudioChunks.__call__
    calls = {"n": 0}

    def draw_then_sigterm(self, generator):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster scheduler would
        return draw(self, generator)

    monkeypatch.setattr(AudioChunks, "__call__", draw_then_sigterm)
    stopped = train_vqvae(demo_data, tmp_path / "run", _preset(10), device="cpu", progress=False)
    assert stopped.interrupted and stopped.step == 4
    monkeypatch.setattr(AudioChunks, "__call__", draw)
    resumed = train_vqvae(demo_data, tmp_path / "run", _preset(10), resume=True, device="cpu", progress=False)
    assert resumed.step == 10
    a, b = load_weights(tmp_path / "full" / "model.safetensors"), load_weights(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # codebooks included


def test_torchrun_two_processes_train_identical_vqvaes(demo_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "housebox",
           "train", "vqvae", "--data", str(demo_data), "-o", str(out), "--device", "cpu", *TINY_VQVAE,
           "--set", "vqvae_train.steps=4", "--set", "vqvae_train.checkpoint_every=4"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((out / "config.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_in_sync"] is True


def test_code_cache_type_holds_every_code(tmp_path):
    """int16 up to 32,768 codes; beyond, the cache must not wrap (a 40,000-code codebook keeps code 39,999)."""
    from housebox.data.codes import code_dtype

    for size in (2048, 32768, 40000, 65536):
        codes = np.array([0, size - 1])
        np.save(tmp_path / "c.npy", codes.astype(code_dtype(size)))
        assert np.load(tmp_path / "c.npy").tolist() == [0, size - 1], size


def test_sigkill_in_the_middle_of_encode_then_again_gives_the_same_codes(trained, demo_data, tmp_path):
    """encode killed (SIGKILL) after some tracks: the same command again encodes the rest, and every
    track's codes equal those of an uninterrupted encode; no half-written file is taken for a code file."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    full, killed = tmp_path / "full", tmp_path / "killed"
    for target in (full, killed):
        shutil.copytree(demo_data, target, ignore=shutil.ignore_patterns("codes", "fingerprints", "melody"))
    command = [sys.executable, "-m", "housebox", "encode", "--vqvae", str(trained), "--device", "cpu", "--data"]
    assert subprocess.run([*command, str(full)], capture_output=True).returncode == 0
    proc = subprocess.Popen([*command, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / "codes" / "l2").glob("*.npy"))) >= 1 if (killed / "codes" / "l2").exists() else False:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = read_manifest(full)
    done = len(list((killed / "codes" / "l2").glob("*.npy")))
    assert done < len(rows), "encode finished before it was killed: nothing tested"
    assert subprocess.run([*command, str(killed)], capture_output=True).returncode == 0
    for row in rows:
        for level in range(3):
            np.testing.assert_array_equal(load_codes(killed, row["id"], level), load_codes(full, row["id"], level))
