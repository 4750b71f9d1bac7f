"""A toy regression trained through the shared loop; the loop tests run it as a subprocess
(directly or under torchrun) so that it can be killed, interrupted and resumed."""

import argparse
import sys
import time

import torch
from torch import nn

from housebox.train.distributed import init_runtime, shutdown
from housebox.train.loop import StepOutput, TrainConfig, train


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))


def batch_fn(generator: torch.Generator) -> dict:
    x = torch.randn(16, 8, generator=generator)
    y = torch.tanh(0.5 * x[:, :4].sum(dim=1, keepdim=True) - 0.3 * x[:, 4:5])
    return {"x": x, "y": y}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--select", action="store_true", help="keep the best weights by a scripted validation score")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    args = parser.parse_args(argv)
    runtime = init_runtime("cpu")

    def step_fn(model, batch):
        time.sleep(args.sleep)
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return StepOutput(loss=loss, metrics={})

    def eval_fn(model, step, writer):  # falls to its best at step 10, then rises
        return {"score": abs(step - 10) + 1.0}

    config = TrainConfig(steps=args.steps, batch_size=16, lr=3e-3, warmup_steps=3,
                         checkpoint_every=args.checkpoint_every, log_every=1, ema_decay=0.9, grad_accum=args.grad_accum)
    result = train(make_model(), step_fn=step_fn, batch_fn=batch_fn, out_dir=args.out, config=config,
                   describe={"kind": "toy", "model": {"width": 32}}, resume=args.resume, runtime=runtime,
                   progress=False, eval_fn=eval_fn if args.select else None, select="score" if args.select else None)
    print(f"finished step={result.step} interrupted={result.interrupted} best_step={result.best_step}")
    shutdown(runtime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
