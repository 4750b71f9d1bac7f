import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from housebox.store import load_train_state, load_weights, write_json
from housebox.train.loop import (
    StepOutput,
    TrainConfig,
    TrainResult,
    autocast_settings,
    lr_at,
    train,
)

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


def test_precision_choice(monkeypatch):
    import housebox.train.loop as loop

    for native, expected in ((False, (None, False)), (True, (torch.bfloat16, False))):  # emulated bf16 is slow
        monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda native=native: native)
        assert autocast_settings("auto", torch.device("cpu")) == expected
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


def test_fp16_gradient_scaler_skips_overflowing_steps_and_resumes_its_scale(tmp_path, monkeypatch):
    """The fp16 path (CUDA's, run here on the CPU, where autocast to float16 works if slowly): the loss is
    scaled, a step whose gradients overflow is skipped (weights stay finite) and halves the scale, and the
    scale is checkpointed and restored on resume. Fails without the scaler (NaN weights), and when resume
    forgets its state (the scale starts over at 65536)."""
    import housebox.train.loop as loop

    sys.path.insert(0, str(ROOT / "tests"))
    from toy_train import batch_fn, make_model

    monkeypatch.setattr(loop, "autocast_settings", lambda precision, device: (torch.float16, True))
    calls = []

    def step_fn(model, batch):
        calls.append(1)
        out = model(batch["x"])
        assert out.dtype == torch.float16  # autocast really ran in fp16
        loss = torch.nn.functional.mse_loss(out.float(), batch["y"])
        if len(calls) == 5:  # one overflowing step: its gradients are inf
            loss = loss * torch.tensor(float("inf"))
        return StepOutput(loss=loss, metrics={})

    def run(steps, resume=False):
        config = TrainConfig(steps=steps, lr=1e-2, warmup_steps=2, checkpoint_every=10, log_every=1,
                             precision="fp16")
        return train(make_model(), step_fn=step_fn, batch_fn=batch_fn, out_dir=tmp_path, config=config,
                     describe={"kind": "toy", "model": {}}, device="cpu", progress=False, resume=resume)

    run(10)
    state = load_train_state(tmp_path / "train_state.pt")
    assert state["scaler"]["scale"] == 65536.0 / 2  # halved once, by the one overflowing step
    assert all(torch.isfinite(w).all() for w in load_weights(tmp_path / "model.safetensors").values())
    calls.append(1)  # the resumed run counts on: no step overflows any more
    run(40, resume=True)
    state = load_train_state(tmp_path / "train_state.pt")
    assert state["step"] == 40 and state["scaler"]["scale"] == 65536.0 / 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and math.isfinite(r["loss"])]
    assert losses[-1] < 0.5 * losses[0]


def test_resume_refuses_other_model_settings_but_takes_settings_added_since(tmp_path, capsys):
    """Resuming with a changed model setting is refused, naming it; a setting the saved run does not name
    (added to housebox since it was saved) is taken as now set, and said."""
    sys.path.insert(0, str(ROOT / "tests"))
    from toy_train import batch_fn, make_model

    def step_fn(model, batch):
        return StepOutput(loss=torch.nn.functional.mse_loss(model(batch["x"]), batch["y"]), metrics={})

    def run(steps, model_settings, resume):
        return train(make_model(), step_fn=step_fn, batch_fn=batch_fn, out_dir=tmp_path, progress=False,
                     config=TrainConfig(steps=steps, checkpoint_every=2, log_every=2), device="cpu", resume=resume,
                     describe={"kind": "toy", "model": model_settings})

    run(2, {"width": 32}, False)
    with pytest.raises(ValueError, match=r"differ from the run being resumed \(width\)"):
        run(4, {"width": 64}, True)
    with pytest.raises(ValueError, match=r"\(width\)"):
        run(4, {"depth": 2}, True)  # a saved setting gone is a difference too
    assert run(4, {"width": 32, "upper_noise": 0.0}, True).step == 4
    assert "settings newer than this run, resumed as now set: upper_noise=0.0" in capsys.readouterr().out


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
    assert proc.returncode == 0 and "interrupted=True" in out and "checkpoint saved" in out + err
    step = load_train_state(stopped / "train_state.pt")["step"]
    assert 4 <= step < 30
    assert run_toy(stopped, "--steps", "30", "--checkpoint-every", "100", "--resume").returncode == 0
    assert same_weights(full, stopped)


@pytest.mark.parametrize("at_step", [3, 6])
def test_a_stop_request_is_reported_also_when_it_arrives_in_the_last_step(tmp_path, at_step):
    """SIGINT in a step: before the last, the run checkpoints and stops (interrupted); in the last, the run
    has finished but says a stop was asked, so `train all` and the demo start nothing after it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from toy_train import batch_fn, make_model

    calls = []

    def step_fn(model, batch):
        calls.append(1)
        if len(calls) == at_step:
            signal.raise_signal(signal.SIGINT)  # the loop's handler turns it into a request
        return StepOutput(loss=torch.nn.functional.mse_loss(model(batch["x"]), batch["y"]), metrics={})

    config = TrainConfig(steps=6, lr=1e-2, warmup_steps=1, checkpoint_every=100, log_every=1)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when run as a background job
    result = train(make_model(), step_fn=step_fn, batch_fn=batch_fn, out_dir=tmp_path, config=config,
                   describe={"kind": "toy", "model": {}}, device="cpu", progress=False)
    assert result.stop_requested and result.step == at_step
    assert result.interrupted == (at_step < config.steps)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_train_all_starts_no_stage_after_one_whose_last_step_was_asked_to_stop(tmp_path, monkeypatch):
    import housebox.train.all as train_all_module
    from housebox.config import load_preset

    calls = []

    def finished_but_asked_to_stop(kind):
        def fake(*args, **kwargs):
            calls.append(kind)
            return TrainResult(step=1, interrupted=False, last_metrics={}, stop_requested=kind == "prior")
        return fake

    monkeypatch.setattr(train_all_module, "train_vqvae", finished_but_asked_to_stop("vqvae"))
    monkeypatch.setattr(train_all_module, "encode_dataset", lambda *a, **k: None)
    monkeypatch.setattr(train_all_module, "train_prior", finished_but_asked_to_stop("prior"))
    run = tmp_path / "run"
    result = train_all_module.train_all(tmp_path / "data", run, load_preset("tiny"), device="cpu", progress=False,
                                        resume_hint="run it again")
    assert result.interrupted and calls == ["vqvae", "prior"]
    stages = {s["name"]: s for s in json.loads((run / "plan.json").read_text())["stages"]}
    assert stages["prior_l2"]["finished"] and not stages["up_l1"]["started"]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_torchrun_two_cpu_processes_stay_identical(tmp_path, grad_accum):
    """DDP over gloo, also with gradient accumulation (no_sync on every micro-batch but the last: a sync
    skipped on the last one would leave the ranks apart)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "toy_train.py"), str(out), "--steps", "12", "--grad-accum", str(grad_accum)]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((out / "config.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_in_sync"] is True and meta["step"] == 12
    assert meta["train"]["grad_accum"] == grad_accum
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert losses[-1] < losses[0]


# The validation score falls to 1.5 at step 15, rises for three evaluations (warning at 30), falls to a new best
# of 1.2 at step 35 and rises again (second warning at 50) while training goes on to step 60.
SCORES = {5: 3.0, 10: 2.0, 15: 1.5, 20: 1.8, 25: 1.9, 30: 2.5, 35: 1.2, 40: 1.3, 45: 1.4, 50: 1.6, 55: 1.7, 60: 1.8}


def train_scripted(out: Path, select: str | None, captured: dict, with_eval: bool = True):
    """The toy model for 60 steps, evaluated every 5 and checkpointed every 20; `captured[step]` = EMA state."""
    sys.path.insert(0, str(ROOT / "tests"))
    from toy_train import batch_fn, make_model

    def step_fn(model, batch):
        return StepOutput(loss=torch.nn.functional.mse_loss(model(batch["x"]), batch["y"]), metrics={})

    def eval_fn(model, step, writer):
        captured[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"score": SCORES[step], "other": float(step)}

    config = TrainConfig(steps=60, lr=1e-2, warmup_steps=5, checkpoint_every=20, eval_every=5, log_every=5,
                         ema_decay=0.9, patience=3)
    return train(make_model(), step_fn=step_fn, batch_fn=batch_fn, out_dir=out, config=config, select=select,
                 describe={"kind": "toy", "model": {}}, eval_fn=eval_fn if with_eval else None, device="cpu",
                 progress=False)


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return handle.metadata()


def test_select_keeps_the_best_ema_weights_and_warns_once_per_streak(tmp_path, capsys):
    captured = {}
    result = train_scripted(tmp_path, "score", captured)
    assert result.step == 60 and result.best_step == 35
    assert result.best_metrics == {"score": 1.2, "other": 35.0} and result.last_eval == {"score": 1.8, "other": 60.0}
    assert result.validation_summary("score", "units") == "validation 1.200 units at step 35 (kept), 1.800 now"
    saved = load_weights(tmp_path / "model.safetensors")
    assert equal_states(saved, captured[35])  # the EMA as evaluated at the best step (not a checkpoint step)
    assert not equal_states(saved, captured[60])
    assert weights_metadata(tmp_path) == {"step": "35", "kind": "toy", "selected_by": "score", "score": "1.2"}
    state = load_train_state(tmp_path / "train_state.pt")  # the last state, for --resume
    assert state["step"] == 60 and equal_states(state["ema"], captured[60])
    assert state["selection"]["step"] == 35 and state["selection"]["stale"] == 5
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["step"] == 60 and meta["best"] == {"step": 35, "score": 1.2} and meta["train"]["patience"] == 3
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("overfitting")]
    assert warnings == ["overfitting: best 1.500 score at step 15, now 2.500 at step 30; keeping step 15",
                        "overfitting: best 1.200 score at step 35, now 1.600 at step 50; keeping step 35"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = [(r["step"], r["best_step"], r["best"], r["value"]) for r in rows if r.get("event") == "overfitting"]
    assert events == [(30, 15, 1.5, 2.5), (50, 35, 1.2, 1.6)]
    assert [r["step"] for r in rows if "eval/score" in r] == sorted(SCORES)


@pytest.mark.parametrize("select, with_eval", [(None, True), ("score", False)], ids=["no-select", "no-eval-fn"])
def test_without_selection_the_last_ema_weights_are_kept(tmp_path, capsys, select, with_eval):
    captured = {}
    result = train_scripted(tmp_path, select, captured, with_eval=with_eval)
    state = load_train_state(tmp_path / "train_state.pt")
    assert equal_states(load_weights(tmp_path / "model.safetensors"), state["ema"])
    assert weights_metadata(tmp_path)["step"] == "60"
    assert result.best_step is None and result.best_metrics == {}
    assert "best" not in json.loads((tmp_path / "config.json").read_text())
    assert "overfitting" not in capsys.readouterr().out
    if with_eval:
        assert equal_states(state["ema"], captured[60])
        assert result.validation_summary("score", "units") == "validation 1.800 units (last weights kept)"
    else:
        assert captured == {} and result.last_eval == {} and result.validation_summary("score", "units") == ""


def test_select_must_name_a_result_of_eval_fn(tmp_path):
    with pytest.raises(ValueError, match="select='bits' is not among eval_fn's results \\(score, other\\)"):
        train_scripted(tmp_path, "bits", {})


def test_sigkill_after_the_best_then_resume_keeps_the_same_best(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    uninterrupted = run_toy(full, "--steps", "30", "--select")
    assert uninterrupted.returncode == 0 and "best_step=10" in uninterrupted.stdout
    proc = subprocess.Popen([*TOY, str(killed), "--steps", "30", "--select", "--sleep", "0.05"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(killed, 15, proc)  # the best (step 10) is behind, and one worse evaluation
    proc.send_signal(signal.SIGKILL)
    before_kill, _ = proc.communicate()
    step_at_kill = load_train_state(killed / "train_state.pt")["step"]
    assert 15 <= step_at_kill < 30
    resumed = run_toy(killed, "--steps", "30", "--select", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "best_step=10" in resumed.stdout
    assert same_weights(full, killed)
    assert weights_metadata(full) == weights_metadata(killed) == {"step": "10", "kind": "toy", "selected_by": "score",
                                                                  "score": "1.0"}
    for run in (full, killed):
        meta = json.loads((run / "config.json").read_text())
        assert meta["step"] == 30 and meta["best"] == {"step": 10, "score": 1.0}
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r.get("event") == "overfitting"] == [25]
    warning = "overfitting: best 1.000 score at step 10, now 16.000 at step 25; keeping step 10"
    assert uninterrupted.stdout.count(warning) == 1 and (before_kill + resumed.stdout).count(warning) == 1


def test_validation_summary_names_the_kept_step():
    def result(best_step, best, now):
        return TrainResult(step=50, interrupted=False, last_metrics={"loss": 0.1}, best_step=best_step,
                           best_metrics={} if best is None else {"bits": best}, last_eval={"bits": now})

    assert result(18, 5.92, 6.25).validation_summary("bits", "bits/token") == \
        "validation 5.920 bits/token at step 18 (kept), 6.250 now"
    assert result(50, 5.5, 5.5).validation_summary("bits", "bits/token") == \
        "validation 5.500 bits/token at step 50 (kept)"
    assert result(None, None, 6.25).validation_summary("bits", "bits/token") == \
        "validation 6.250 bits/token (last weights kept)"
    assert result(None, None, 6.25).validation_summary("loss", "nats") == ""


def test_write_json_is_strict_json(tmp_path):
    """Non-finite floats go out as strings (Python's default Infinity / NaN breaks a browser's JSON.parse)."""
    def refuse(name):
        raise ValueError(name)

    write_json(tmp_path / "a.json", {"noise": math.inf, "rows": [-math.inf, math.nan, 1.5], "pair": (2, "x")})
    data = json.loads((tmp_path / "a.json").read_text(), parse_constant=refuse)
    assert data == {"noise": "inf", "rows": ["-inf", "nan", 1.5], "pair": [2, "x"]}
    assert float(data["noise"]) == math.inf and math.isnan(float(data["rows"][1]))
