"""`housebox train all`: every stage in order, a plan printed first, a budget split by measured step
times, and a stopped run that continues with --resume without redoing finished stages."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import TINY_PRIOR, TINY_UP, TINY_VQVAE
from housebox.cli import main
from housebox.config import apply_overrides, load_preset

STEPS = ["--set", "vqvae_train.steps=4", "--set", "prior_train.steps=6", "--set", "upsampler_train.steps=4"]


@pytest.fixture()
def data(demo_data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(demo_data, copy, ignore=shutil.ignore_patterns("codes"))  # this run encodes its own codes
    return copy


CLOCK = ["--set", "prior.beat_clock=true", "--set", "upsampler.beat_clock=true"]


def test_train_all_runs_every_stage_in_order(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "all", "--data", str(data), "-o", str(run), "--device", "cpu", "--steps-from-preset",
                 *TINY_VQVAE, *TINY_PRIOR, *TINY_UP, *STEPS, *CLOCK]) == 0
    out = capsys.readouterr().out
    assert out.index("train all: 4 models") < out.index("[1/4] vqvae") < out.index("[2/4] prior_l2") \
        < out.index("[3/4] up_l1") < out.index("[4/4] up_l0")
    plan = json.loads((run / "plan.json").read_text())
    assert [s["name"] for s in plan["stages"]] == ["vqvae", "prior_l2", "up_l1", "up_l0"]
    assert all(s["finished"] for s in plan["stages"])
    for name, steps in (("vqvae", 4), ("prior_l2", 6), ("up_l1", 4), ("up_l0", 4)):
        assert json.loads((run / name / "config.json").read_text())["step"] == steps
    # the beat clock runs at --bpm, else at the artist's median tempo, else follows a prime's own grid
    import numpy as np

    from housebox.data.prepare import load_track, read_manifest

    def sample(name: str, *extra: str) -> tuple[dict, np.ndarray]:
        assert main(["sample", str(run), "--artist", "Dawn Atlas", "--seconds", "2", "--device", "cpu",
                     "--seed", "3", "-o", str(tmp_path / name), *extra]) == 0
        report = json.loads((tmp_path / name / "report.json").read_text())
        return report, np.load(tmp_path / name / "codes.npz")["l0"]

    fast, fast_codes = sample("fast", "--bpm", "125")
    slow, slow_codes = sample("slow", "--bpm", "90")
    assert fast["beat_clock_bpm"] == [125.0] and slow["beat_clock_bpm"] == [90.0]
    assert not np.array_equal(fast_codes, slow_codes)  # same seed: only the clock differs
    rows = [r for r in read_manifest(data) if r["artist"] == "Dawn Atlas"]
    median = round(float(np.median([r["bpm"] for r in rows])), 2)
    assert sample("default")[0]["beat_clock_bpm"] == [pytest.approx(median, abs=0.01)]
    from housebox.audio.io import save_audio

    save_audio(tmp_path / "clip.wav", load_track(data, rows[0]["id"])[: 16000 * 4] / 32768.0, 16000)
    primed = sample("primed", "--prime", str(tmp_path / "clip.wav"), "--prime-seconds", "4")[0]
    assert primed["beat_clock_bpm"][0] == pytest.approx(121.0, abs=1.5)  # Dawn Atlas plays at 121 BPM
    assert main(["train", "all", "--data", str(data), "-o", str(run), "--device", "cpu", "--steps-from-preset",
                 *TINY_VQVAE]) == 2  # no --resume: refuses to overwrite
    assert "--resume" in capsys.readouterr().err


def test_budget_is_split_by_measured_step_times_and_resume_continues(data, tmp_path, monkeypatch, capsys):
    import housebox.train.all as train_all_module
    from housebox.train.loop import TrainResult

    preset = apply_overrides(load_preset("tiny"), [a for a in TINY_VQVAE + TINY_PRIOR + TINY_UP if a != "--set"])
    real = train_all_module.train_prior
    calls = []

    def stop_at_level_0(data_dir, out, level, preset, upsampler, **kwargs):
        calls.append(out.name)
        if level == 0:
            return TrainResult(step=0, interrupted=True, last_metrics={})
        return real(data_dir, out, level, preset, upsampler=upsampler, **kwargs)

    monkeypatch.setattr(train_all_module, "train_prior", stop_at_level_0)
    run = tmp_path / "run"
    first = train_all_module.train_all(data, run, preset, minutes=1.0, device="cpu", progress=False)
    assert first.interrupted and calls == ["prior_l2", "up_l1", "up_l0"]
    plan = json.loads((run / "plan.json").read_text())
    for stage in plan["stages"][:3]:
        assert stage["finished"] and stage["step_seconds"] > 0 and stage["steps"] >= 1
        assert json.loads((run / stage["name"] / "config.json").read_text())["step"] == stage["steps"]
    # the steps follow the shares: the top prior's budget is several times an upsampler's
    by = {s["name"]: s for s in plan["stages"]}
    prior_time = by["prior_l2"]["steps"] * by["prior_l2"]["step_seconds"]
    up_time = by["up_l1"]["steps"] * by["up_l1"]["step_seconds"]
    assert prior_time > 2 * up_time
    assert not by["up_l0"]["finished"] and by["up_l0"]["started"]

    monkeypatch.setattr(train_all_module, "train_prior", real)
    before = {name: (run / name / "model.safetensors").stat().st_mtime_ns for name in ("vqvae", "prior_l2", "up_l1")}
    second = train_all_module.train_all(data, run, preset, resume=True, device="cpu", progress=False)
    assert not second.interrupted
    after = {name: (run / name / "model.safetensors").stat().st_mtime_ns for name in before}
    assert after == before  # finished stages are not trained again
    plan = json.loads((run / "plan.json").read_text())
    assert plan["minutes"] == 1.0 and all(s["finished"] for s in plan["stages"])
    assert json.loads((run / "up_l0" / "config.json").read_text())["step"] == plan["stages"][3]["steps"]


def test_a_decoder_share_adds_the_adversarial_stage_last(data, tmp_path, capsys):
    from housebox.train.all import SHARES, stages_for

    preset = load_preset("tiny")
    assert [s.name for s in stages_for(preset)] == ["vqvae", "prior_l2", "up_l1", "up_l0"]  # off by default
    shared = stages_for(apply_overrides(preset, ["decoder.train_all_share=0.2"]))
    assert [s.name for s in shared][-1] == "decoder" and shared[-1].share == 0.2
    assert shared[0].share == pytest.approx(SHARES["vqvae"] * 0.8)
    assert sum(s.share for s in shared) == pytest.approx(1.0)
    run = tmp_path / "run"
    fast = ["decoder.train_all_share=0.2", "decoder_train.steps=2", "decoder_train.batch_size=2",
            "decoder.chunk_seconds=0.256", "discriminator.width=8", "prior_train.steps=2", "upsampler_train.steps=2"]
    assert main(["train", "all", "--data", str(data), "-o", str(run), "--device", "cpu", "--steps-from-preset",
                 *TINY_VQVAE, *TINY_PRIOR, *TINY_UP, *STEPS, *sum([["--set", f] for f in fast], [])]) == 0
    assert "[5/5] decoder" in capsys.readouterr().out
    vqvae = json.loads((run / "vqvae" / "config.json").read_text())
    assert vqvae["decoders"]["levels"] == [0] and (run / "vqvae" / vqvae["decoders"]["file"]).exists()
