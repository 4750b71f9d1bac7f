import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from housebox.train.checkpoint import load_train_state, load_weights
from housebox.train.loop import StepOutput, TrainConfig, autocast_settings, lr_at, train

ROOT = Path(__file__).resolve().parents[1]
TOY = [sys.executable, str(ROOT / "tests" / "toy_train.py")]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}


def run_toy(out, *args, **kwargs):
    return subprocess.run([*TOY, str(out), *args], env=ENV, capture_output=True, text=True, timeout=120, **kwargs)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_schedule_warms_up_and_anneals_to_zero():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1e-3)
    lrs = [lr_at(s, config) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone after warm-up
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_precision_choice():
    assert autocast_settings("auto", torch.device("cpu")) == (None, False)
    assert autocast_settings("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        autocast_settings("fp16", torch.device("cpu"))


def test_loop_learns_and_writes_a_model_directory(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from toy_train import batch_fn, make_model

    def step_fn(model, batch):
        loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return StepOutput(loss=loss, metrics={"rmse": loss.detach().sqrt()})

    evaluated = []

    def eval_fn(model, step, writer):
        evaluated.append((step, model.training))
        return {"probe": 1.0}

    config = TrainConfig(steps=60, lr=1e-2, warmup_steps=5, checkpoint_every=30, log_every=5, ema_decay=0.9)
    model = make_model()
    result = train(model, step_fn=step_fn, batch_fn=batch_fn, out_dir=tmp_path, config=config,
                   describe={"kind": "toy", "model": {}}, eval_fn=eval_fn, device="cpu", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert result.step == 60 and not result.interrupted
    assert losses[-1] < 0.5 * losses[0]
    assert evaluated == [(30, False), (60, False)]
    assert any("eval/probe" in r for r in rows)
    for name in ("config.json", "model.safetensors", "train_state.pt", "loss.png"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "tensorboard").is_dir()
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["step"] == 60 and meta["describe"]["kind"] == "toy" and meta["format_version"] == 1
    # the saved weights are the EMA ones, not the raw ones
    state = load_train_state(tmp_path / "train_state.pt")
    saved = load_weights(tmp_path / "model.safetensors")
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)
    assert not all(torch.equal(saved[k], state["model"][k]) for k in saved)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="already holds a training run; pass --resume"):
        train(make_model(), step_fn=step_fn, batch_fn=batch_fn, out_dir=tmp_path, config=config,
              describe={"kind": "toy", "model": {}}, device="cpu", progress=False)


def wait_for_step(out: Path, at_least: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "config.json").exists():
            try:
                if json.loads((out / "config.json").read_text()).get("step", 0) >= at_least:
                    return
            except json.JSONDecodeError:
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_toy(full, "--steps", "30").returncode == 0
    proc = subprocess.Popen([*TOY, str(killed), "--steps", "30", "--sleep", "0.05"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(killed, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = load_train_state(killed / "train_state.pt")["step"]
    assert 10 <= step_at_kill < 30
    again = run_toy(killed, "--steps", "30")
    assert again.returncode != 0 and "--resume" in again.stderr  # refuses to overwrite silently
    resumed = run_toy(killed, "--steps", "30", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(full, killed)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicate metric rows after the resume


def test_sigterm_checkpoints_then_resume_equals_uninterrupted(tmp_path):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert run_toy(full, "--steps", "30", "--checkpoint-every", "100").returncode == 0
    proc = subprocess.Popen([*TOY, str(stopped), "--steps", "30", "--checkpoint-every", "4", "--sleep", "0.05"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(stopped, 4, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "interrupted=True" in out and "Continue with --resume" in out + err
    step = load_train_state(stopped / "train_state.pt")["step"]
    assert 4 <= step < 30
    assert run_toy(stopped, "--steps", "30", "--checkpoint-every", "100", "--resume").returncode == 0
    assert same_weights(full, stopped)


def test_torchrun_two_cpu_processes_stay_identical(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "toy_train.py"), str(out), "--steps", "12"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((out / "config.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_in_sync"] is True and meta["step"] == 12
