"""`housebox plan`: estimates from the model definitions, checked against the memory real training
steps take on the CPU (issue 12: Jukebox's most common issues are out-of-memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from housebox.cli import main
from housebox.config import apply_overrides, build, load_preset
from housebox.train.loop import TrainConfig
from housebox.models.vqvae import VQVAEConfig
from housebox.evaluate.originality import OriginalityConfig
from housebox.train.plan import GIB, ModelPlan, plan_disk, plan_prior, plan_vqvae, prior_configs, saved_bytes

CHILD = Path(__file__).with_name("measure_step.py")
MB = 1e6


def measured_peak(preset: dict, model: str, batch: int) -> int:
    """Peak resident bytes two real fp32 training steps of `model` add, in a fresh process."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(CHILD), json.dumps({"preset": preset, "model": model, "batch": batch})],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def model_plan(preset: dict, model: str) -> ModelPlan:
    """One model's plan for CPU training (fp32), without planning the others."""
    if model == "vqvae":
        train = build(TrainConfig, preset["vqvae_train"], "vqvae_train")
        return plan_vqvae(build(VQVAEConfig, preset["vqvae"], "vqvae"), train, preset["vqvae_data"]["chunk_seconds"])
    name, config, section = next(c for c in prior_configs(preset) if c[0] == model)
    return plan_prior(config, build(TrainConfig, preset[section], section), name)


def test_saved_bytes_counts_each_storage_once_and_skips_weights() -> None:
    weight = torch.randn(64, 32, requires_grad=True)
    x = torch.randn(100, 64)

    def run():
        y = x @ weight  # saves x (25.6 kB) and the weight (excluded)
        z = torch.relu(y)  # saves its output z (12.8 kB)
        w = x[:50] * z[:50, :1]  # saves views of x and z: storages already counted ... and the second factor's storage
        return w.sum() + z.sum()

    counted = saved_bytes(run, exclude=[weight])
    assert counted["total"] == 100 * 64 * 4 + 100 * 32 * 4
    assert counted["largest"] == 100 * 64 * 4


SHAPES = [  # small configurations whose activations dominate, so the comparison tests the activations
    pytest.param("tiny", ["prior.n_ctx=1024", "prior.width=256", "prior.heads=4", "prior.dropout=0.0"],
                 "prior (level 2)", id="prior-dense"),
    pytest.param("tiny", ["upsampler.n_ctx=2048", "upsampler.width=128"], "upsampler (level 0)", id="upsampler-factorised"),
    pytest.param("small", ["prior.attention_width=0.25", "prior.mlp_ratio=1.0", "prior.n_ctx=2048"],
                 "prior (level 2)", id="prior-jukebox-shape"),
    pytest.param("tiny", ["vqvae_data.chunk_seconds=2.048"], "vqvae", id="vqvae"),
]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc high-water mark")
@pytest.mark.parametrize(("preset_name", "overrides", "model"), SHAPES)
def test_plan_is_within_a_quarter_of_the_measured_peak(preset_name: str, overrides: list[str], model: str) -> None:
    preset = apply_overrides(load_preset(preset_name), overrides)
    plan = model_plan(preset, model)
    small, large = 4, 8
    peaks = {batch: measured_peak(preset, model, batch) for batch in (small, large)}
    per_item = (peaks[large] - peaks[small]) / (large - small)
    assert per_item == pytest.approx(plan.per_item(), rel=0.25), f"per item: measured {per_item / MB:.1f} MB"
    assert peaks[large] == pytest.approx(plan.peak(large), rel=0.25), f"peak: measured {peaks[large] / MB:.1f} MB"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc high-water mark")
def test_checkpointed_blocks_lower_the_measured_peak_as_planned() -> None:
    shape = ["prior.n_ctx=1024", "prior.width=256", "prior.heads=4", "prior.dropout=0.0", "prior.depth=6"]
    peaks, plans = {}, {}
    for checkpointed in (False, True):
        preset = apply_overrides(load_preset("tiny"), [*shape, f"prior.checkpoint_blocks={str(checkpointed).lower()}"])
        plans[checkpointed] = model_plan(preset, "prior (level 2)")
        peaks[checkpointed] = measured_peak(preset, "prior (level 2)", 8)
    assert peaks[True] < 0.6 * peaks[False]
    assert peaks[True] == pytest.approx(plans[True].peak(8), rel=0.25)
    assert plans[True].peak(8) < 0.6 * plans[False].peak(8)


def test_plan_from_the_definitions() -> None:
    """Parameters counted from the model; fixed bytes are 20 per parameter; checkpointing keeps far less."""
    preset = load_preset("tiny")
    name, config, section = prior_configs(preset)[0]
    plan = plan_prior(config, build(TrainConfig, preset[section], section), name)
    from housebox.models.prior import Prior

    assert plan.parameters == sum(p.numel() for p in Prior(config).parameters())
    assert plan.fixed == 20 * plan.parameters
    assert plan.activations_checkpointed < plan.activations
    assert plan.largest_batch(plan.peak(5)) == 5
    assert plan.largest_batch(plan.fixed) == 0


def test_jukebox_preset_fits_one_24_gb_gpu_with_flash_eligible_heads() -> None:
    preset = load_preset("jukebox")
    for name, config, section in prior_configs(preset)[:2]:  # the top prior and the first upsampler
        assert config.transformer().head_dim <= 128
        assert config.checkpoint_blocks
        train = build(TrainConfig, preset[section], section)
        plan = plan_prior(config, train, name, torch.bfloat16)
        assert plan.parameters > 500e6
        assert train.batch_size >= 1 and plan.largest_batch(24 * GIB, checkpointed=True) >= train.batch_size
        assert plan.largest_batch(24 * GIB, checkpointed=False) < train.batch_size  # without it, it would not fit


def test_disk_plan_for_hours_of_audio() -> None:
    disk = plan_disk(load_preset("tiny"), 2.0, OriginalityConfig())
    assert disk.audio == 2 * 3600 * 16000 * 2  # int16 at 16 kHz
    assert disk.codes == int((2000 + 500 + 125) * 7200 * 2)  # int16 codes at hops 8, 32, 128
    assert disk.unchecked_levels == () and disk.code_index == (2000 + 500 + 125) * 7200 * 20  # on disk, 20 B a token
    # 50 hours of `jukebox`: level 2 (62 M tokens) is searched, levels 1 and 0 are over max_index_tokens
    assert plan_disk(load_preset("jukebox"), 50.0, OriginalityConfig()).unchecked_levels == (0, 1)


def test_plan_command_prints_every_model(capsys) -> None:
    assert main(["plan", "--preset", "tiny", "--gpu-memory", "1", "--hours", "2", "--set", "prior.depth=2"]) == 0
    out = capsys.readouterr().out
    for row in ("vqvae", "prior (level 2)", "upsampler (level 1)", "upsampler (level 0)", "max batch", "2 hours"):
        assert row in out
