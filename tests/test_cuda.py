"""On a CUDA GPU: every model trains a few bf16 steps through the real entry points, sampling is seeded (and
the compiled, CUDA-graph step gives the eager codes; bf16 sampling agrees with fp32),
the KV-cached step equals the full forward at `jukebox` width, and DDP runs over nccl on two GPUs.

Marked `cuda` and skipped (not failed) without CUDA. `make gpu-check` (bench/gpu_check.py) runs them with
`pytest -m cuda -q tests/test_cuda.py` next to its memory and speed figures.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

ROOT = Path(__file__).resolve().parents[1]
BF16 = "bf16"


def tiny(section: str, steps: int) -> list[str]:
    """--set flags: `steps` bf16 steps of one model of the tiny preset, checkpointed (and evaluated) at the end."""
    return ["--set", f"{section}.steps={steps}", "--set", f"{section}.precision={BF16}",
            "--set", f"{section}.checkpoint_every={steps}", "--set", f"{section}.log_every=1"]


@pytest.fixture(scope="module")
def gpu_run(demo_data, tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): the tiny preset's VQ-VAE, code cache, top prior and both upsamplers, each trained a few
    bf16 steps on the GPU through the CLI (`--device cuda`). The data is a copy: it gets its own code cache."""
    from housebox.cli import main

    root = tmp_path_factory.mktemp("cuda")
    data, run = root / "data", root / "run"
    shutil.copytree(demo_data, data, ignore=shutil.ignore_patterns("codes"))
    torch.cuda.reset_peak_memory_stats()
    common = ["--data", str(data), "--device", "cuda", "--preset", "tiny"]
    assert main(["train", "vqvae", *common, "-o", str(run / "vqvae"), *tiny("vqvae_train", 4)]) == 0
    assert main(["encode", "--data", str(data), "--vqvae", str(run / "vqvae"), "--device", "cuda"]) == 0
    assert main(["train", "prior", "--level", "2", *common, "-o", str(run / "prior_l2"), *tiny("prior_train", 4)]) == 0
    for level in (1, 0):
        assert main(["train", "upsampler", "--level", str(level), *common, "-o", str(run / f"up_l{level}"),
                     *tiny("upsampler_train", 3)]) == 0
    assert torch.cuda.max_memory_allocated() > 1e6, "the models did not train on the GPU"
    return data, run


@pytest.mark.parametrize(("name", "steps"), [("vqvae", 4), ("prior_l2", 4), ("up_l1", 3), ("up_l0", 3)])
def test_each_model_trains_in_bf16_on_the_gpu(gpu_run, name, steps):
    _, run = gpu_run
    meta = json.loads((run / name / "config.json").read_text())
    assert meta["step"] == steps and meta["train"]["precision"] == BF16
    rows = [json.loads(line) for line in (run / name / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == steps and all(math.isfinite(v) for v in losses)
    assert all(math.isfinite(r["grad_norm"]) for r in rows if "grad_norm" in r)
    assert any(k.startswith("eval/") for r in rows for k in r)  # the validation ran on the GPU too
    assert (run / name / "model.safetensors").stat().st_size > 1000


def test_cli_sampling_on_the_gpu_is_seeded(gpu_run, tmp_path):
    """`housebox sample --device cuda` twice with one seed writes the same codes at every level; another seed not."""
    from housebox.cli import main

    _, run = gpu_run
    artist = json.loads((run / "prior_l2" / "config.json").read_text())["describe"]["vocabulary"]["artists"][0]

    def codes(seed: int, name: str) -> dict[str, np.ndarray]:
        out = tmp_path / name
        assert main(["sample", str(run), "--artist", artist, "--seconds", "1", "-n", "2", "--device", "cuda",
                     "--seed", str(seed), "-o", str(out)]) == 0
        with np.load(out / "codes.npz") as handle:
            return {k: handle[k] for k in handle.files}

    first, again, other = codes(3, "a"), codes(3, "b"), codes(4, "c")
    assert first.keys() == again.keys() and {"l0", "l1", "l2"} <= set(first)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["l2"], other["l2"])


def test_gpu_sampling_auto_precision_is_bf16_and_agrees_with_fp32(gpu_run):
    """On a GPU with bf16, `auto` samples with bf16 priors and a bf16 KV cache; the top prior's next-code
    distribution stays close to fp32's (bf16 rounds weights to 8 bits of mantissa, so codes may differ)."""
    from housebox.generate.pipeline import load_run
    from housebox.models.conditioning import Labels
    from housebox.models.prior import Conditioning

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    _, run_dir = gpu_run
    fast, exact = load_run(run_dir, "cuda", precision="auto"), load_run(run_dir, "cuda", precision="fp32")
    top = fast.top
    assert fast.priors[top].head.weight.dtype == torch.bfloat16
    assert fast.priors[top].new_cache(1).keys[0].dtype == torch.bfloat16
    n_ctx = exact.priors[top].config.n_ctx
    codes = torch.randint(0, exact.priors[top].config.codebook_size, (2, n_ctx), device="cuda")
    labels = Labels(artist=torch.zeros(2, dtype=torch.long, device="cuda"),
                    genres=torch.full((2, exact.priors[top].config.max_genres), -1, device="cuda"))
    cond = Conditioning(labels=labels, start=torch.zeros(2, dtype=torch.long, device="cuda"),
                        total_tokens=torch.full((2,), n_ctx, device="cuda"))
    with torch.inference_mode():
        p_fast = torch.softmax(fast.priors[top](codes, cond).logits.float(), -1)
        p_exact = torch.softmax(exact.priors[top](codes, cond).logits.float(), -1)
    assert (p_fast - p_exact).abs().sum(-1).mean() < 0.05  # total variation per position


@pytest.mark.parametrize("upsampler", [False, True], ids=["top", "upsampler"])
def test_sample_codes_on_the_gpu_same_seed_same_codes(upsampler):
    """`sample_codes` on the GPU, factorised attention, several windows, primed and guided: same seed, same codes."""
    from housebox.generate.sampling import sample_codes
    from housebox.models.conditioning import Labels
    from housebox.models.prior import Prior, PriorConfig

    v, device = 64, torch.device("cuda")
    torch.manual_seed(0)
    config = PriorConfig(level=1 if upsampler else 2, codebook_size=v, n_artists=3, n_genres=4, max_genres=2,
                         sample_rate=16000, hop=32 if upsampler else 128, width=64, depth=3, heads=2, n_ctx=64,
                         attention=("row", "column", "prev_block"), block_size=8, timing=not upsampler,
                         upper_codebook_size=v if upsampler else 0, upper_ratio=4 if upsampler else 1, rotary=True)
    prior = Prior(config).to(device).eval()
    with torch.no_grad():  # untrained label embeddings barely move the logits: make guidance visible
        prior.labels.artist.weight.mul_(50)
    b, n = 2, 150
    labels = Labels(artist=torch.tensor([0, 2], device=device), genres=torch.tensor([[1, -1], [2, 3]], device=device))
    upper = torch.randint(0, v, (b, n // 4), generator=torch.Generator().manual_seed(1)) if upsampler else None
    prime = torch.randint(0, v, (b, 20), generator=torch.Generator().manual_seed(2))

    def run(seed: int, compiled: bool = False) -> torch.Tensor:
        codes = sample_codes(prior, n_tokens=n, labels=labels, upper=None if upper is None else upper.to(device),
                             prime=prime, cfg_scale=2.0, top_p=0.95, compiled=compiled,
                             generator=torch.Generator().manual_seed(seed), progress=False)
        assert codes.device.type == "cuda" and codes.shape == (b, n)
        return codes.cpu()

    a, again, c = run(1), run(1), run(2)
    assert torch.equal(a, again) and not torch.equal(a, c)
    assert torch.equal(a[:, :20], prime) and int(a.max()) < v
    # `--compile`: the fixed-shape step through torch.compile in CUDA-graph mode gives the eager codes, and
    # really runs as CUDA graphs (torch counts a skip, e.g. for a written input it does not know to be static)
    from torch._dynamo.utils import counters

    counters["inductor"].clear()
    assert torch.equal(run(1, compiled=True), a)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


@pytest.mark.parametrize("rotary", [False, True], ids=["learned", "rotary"])
def test_cached_steps_equal_the_full_forward_at_jukebox_width(rotary):
    """A `jukebox`-shaped stack (width 1024, 8 heads of 128, row / column / prev_block over rows of 128, 4 layers)
    on the GPU: a prefilled prime then one token at a time through the KV cache gives the full forward's output,
    in fp32 (to TF32-free float tolerance) and under bf16 autocast with a bf16 cache (to bf16 tolerance)."""
    from housebox.models.transformer import Transformer, TransformerConfig

    device = torch.device("cuda")
    torch.manual_seed(0)
    config = TransformerConfig(width=1024, depth=4, heads=8, n_ctx=1024, attention=("row", "column", "prev_block"),
                               block_size=128, rotary=rotary)
    model = Transformer(config).to(device).eval()
    with torch.no_grad():  # larger weights than the init's: attention far from uniform, so masks matter
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.03)
    T, prime = 700, 130  # five full rows and a part; the prime ends inside the second row
    x = torch.randn(2, T, 1024, device=device, generator=torch.Generator(device).manual_seed(1))

    def steps(dtype: torch.dtype) -> torch.Tensor:
        cache = model.new_cache(2, dtype=dtype)
        out = [model.step(x[:, :prime], cache, 0)]
        out += [model.step(x[:, t : t + 1], cache, t) for t in range(prime, T)]
        return torch.cat(out, dim=1).float()

    with torch.inference_mode():
        exact = model(x)
        fp32 = steps(torch.float32)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            forward_bf16 = model(x).float()
            steps_bf16 = steps(torch.bfloat16)
    # LayerNorm-ed outputs are unit scale, so these tolerances are relative. Measured on a CPU with the same
    # shapes: fp32 5e-6; bf16 mean 0.005, max 0.04; a one-position mask error: mean 0.9, max 5.6.
    assert exact.abs().max() > 1.0
    assert (fp32 - exact).abs().max().item() < 1e-2  # loose enough for TF32 matmuls where a user enables them
    for got in (forward_bf16, steps_bf16):  # bf16 keeps 8 bits of mantissa
        assert (got - exact).abs().mean().item() < 0.02
        assert (got - exact).abs().max().item() < 0.25
    assert (steps_bf16 - forward_bf16).abs().mean().item() < 0.02


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over nccl needs at least 2 GPUs")
def test_torchrun_two_gpus_nccl_ranks_stay_identical(gpu_run, tmp_path):
    """`torchrun --nproc_per_node=2 -m housebox train prior --device cuda`: nccl, one GPU per rank, bf16, and the
    ranks end with identical weights."""
    data, _ = gpu_run
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "housebox",
           "train", "prior", "--level", "2", "--data", str(data), "-o", str(out), "--device", "cuda",
           "--preset", "tiny", *tiny("prior_train", 4)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((out / "config.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_in_sync"] is True and meta["step"] == 4
    assert meta["train"]["precision"] == BF16
