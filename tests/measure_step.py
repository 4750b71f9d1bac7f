"""Child process of tests/test_plan.py: the peak resident memory that two real training steps of one model add
(float32 on the CPU: weights, AdamW, the loop's EMA copy, forward and backward), printed as JSON.

Run with MALLOC_MMAP_THRESHOLD_ set low, so that freed tensors go back to the system at once and the
resident high-water mark follows the live tensors rather than the allocator's fragmentation."""

from __future__ import annotations

import copy
import gc
import json
import sys

import torch

from housebox.config import build
from housebox.models.conditioning import Labels
from housebox.models.prior import Conditioning, Prior
from housebox.models.vqvae import VQVAE, VQVAEConfig
from housebox.train.plan import prior_configs


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    torch.set_num_threads(1)
    spec = json.loads(sys.argv[1])
    preset, which, batch = spec["preset"], spec["model"], spec["batch"]
    torch.manual_seed(0)
    if which == "vqvae":
        config = build(VQVAEConfig, preset["vqvae"], "vqvae")
        multiple = max(config.hops)
        samples = int(preset["vqvae_data"]["chunk_seconds"] * config.sample_rate) // multiple * multiple
        x = torch.randn(batch, 1, samples) * 0.1

        def make():
            return VQVAE(config)

        def loss_of(model):
            return model(x).loss
    else:
        config = next(c for name, c, _ in prior_configs(preset) if name == which)
        n = config.n_ctx
        codes = torch.randint(config.codebook_size, (batch, n))
        cond = Conditioning(
            labels=Labels(artist=torch.zeros(batch, dtype=torch.long),
                          genres=torch.zeros(batch, config.max_genres, dtype=torch.long)),
            start=torch.zeros(batch, dtype=torch.long), total_tokens=torch.full((batch,), n),
            upper=torch.randint(config.codebook_size, (batch, n // config.upper_ratio)) if config.is_upsampler else None,
            beats=torch.rand(batch, n) * 8 if config.beat_clock else None,
        )

        def make():
            return Prior(config)

        def loss_of(model):
            return model(codes, cond).loss

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark starts again from the current resident size
    base = status("VmRSS")
    model = make().train()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss_of(model).backward()
        optimizer.step()
    del ema
    print(json.dumps({"peak": status("VmHWM") - base}))


if __name__ == "__main__":
    main()
