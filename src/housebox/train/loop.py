"""One training loop for every housebox model.

The loop knows nothing about the model: it takes a `step_fn(model, batch) -> StepOutput` that computes
the loss, and a `batch_fn(generator) -> batch` that draws a batch. It owns the rest: AdamW, warm-up then
cosine annealing to 0, gradient accumulation and clipping, an EMA of the weights (the saved weights are
the EMA ones), autocast, DDP under torchrun, atomic checkpoints every N steps and on SIGINT/SIGTERM,
exact resumption, metrics.jsonl, TensorBoard and a progress bar.

With `select`, the name of one of eval_fn's results (lower is better), model.safetensors holds the EMA
weights of the best evaluation so far and is written only when that value improves; train_state.pt
keeps the last state for --resume. A warning is printed when the value has not improved for `patience`
evaluations in a row.

Exact resumption works by construction: the global RNG and the data generator are re-seeded at every
step from (seed, step, rank), so a resumed run draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from housebox.heap import keep_freed_memory
from housebox.models.precision import cpu_has_native_bf16
from housebox.store import (
    CONFIG,
    FORMAT_VERSION,
    TRAIN_STATE,
    WEIGHTS,
    load_train_state,
    save_train_state,
    save_weights,
    write_json,
)
from housebox.train.distributed import Runtime, any_rank, check_shared_folder, init_runtime


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    checkpoint_every: int = 500
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at every checkpoint
    patience: int = 3  # evaluations without improvement of the selected metric before warning
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class StepOutput:
    loss: Tensor  # scalar to backpropagate
    metrics: dict[str, Tensor]  # detached scalars, converted to floats only on logging steps


@dataclass(frozen=True)
class TrainResult:
    step: int
    interrupted: bool
    last_metrics: dict[str, float]  # training metrics of the last logged step
    best_step: int | None = None  # step of the kept weights when selecting; None: the last weights are kept
    best_metrics: dict[str, float] = field(default_factory=dict)  # eval_fn's results at best_step
    last_eval: dict[str, float] = field(default_factory=dict)  # eval_fn's results at the last evaluation
    stop_requested: bool = False  # SIGINT/SIGTERM arrived, also during the last step (then not `interrupted`)

    def validation_summary(self, metric: str, unit: str) -> str:
        """`validation 5.920 bits/token at step 1800 (kept), 6.250 now`; '' when `metric` was never evaluated."""
        if metric not in self.last_eval:
            return ""
        now = self.last_eval[metric]
        if self.best_step is None or metric not in self.best_metrics:
            return f"validation {now:.3f} {unit} (last weights kept)"
        best = self.best_metrics[metric]
        kept = f"validation {best:.3f} {unit} at step {self.best_step} (kept)"
        return kept if now == best else f"{kept}, {now:.3f} now"


StepFn = Callable[[nn.Module, Any], StepOutput]
BatchFn = Callable[[torch.Generator], Any]
EvalFn = Callable[[nn.Module, int, Any], dict[str, float]]  # (ema model, step, tensorboard writer or None)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values, stable across processes and Python runs."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine annealing to 0 at `steps`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def autocast_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a gradient scaler is needed). `auto`: bf16 (or fp16) on
    CUDA; on a CPU bf16 only where it is native (`cpu_has_native_bf16`), else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp32":
        return None, False
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"fp16 autocast is for CUDA; on {device.type} use precision=bf16 or fp32")
        return torch.float16, True
    return torch.bfloat16, False


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    if hasattr(batch, "__dataclass_fields__"):
        return type(batch)(**{k: move_to(getattr(batch, k), device) for k in batch.__dataclass_fields__})
    return batch


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (then it checkpoints and stops)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers, the loop still runs
            pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class _Best:
    """Bookkeeping for `select`: the evaluation with the lowest `metric` so far and how many came after it."""

    metric: str
    patience: int
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # eval_fn's results at `step`
    stale: int = 0  # evaluations since the best one

    @property
    def value(self) -> float:
        return self.metrics.get(self.metric, math.inf)

    def observe(self, step: int, values: dict[str, float]) -> bool:
        """Record one evaluation; True when it is the new best (NaN never is)."""
        if self.metric not in values:
            raise ValueError(f"select={self.metric!r} is not among eval_fn's results ({', '.join(values)})")
        if values[self.metric] < self.value:
            self.step, self.metrics, self.stale = step, dict(values), 0
            return True
        self.stale += 1
        return False

    def warning(self, step: int, value: float) -> str | None:
        """The overfitting warning, once per run of `patience` evaluations without a new best."""
        if self.step is None or self.stale != self.patience:
            return None
        return (f"overfitting: best {self.value:.3f} {self.metric} at step {self.step}, now {value:.3f} "
                f"at step {step}; keeping step {self.step}")

    def summary(self) -> dict | None:
        return None if self.step is None else {"step": self.step, self.metric: self.value}

    def state_dict(self) -> dict:
        return {"metric": self.metric, "step": self.step, "metrics": self.metrics, "stale": self.stale}

    def load_state_dict(self, state: dict | None) -> None:
        if state and state.get("metric") == self.metric:  # a run resumed with another metric starts afresh
            self.step, self.metrics, self.stale = state["step"], dict(state["metrics"]), int(state["stale"])


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        ema_params = [p for p in ema.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)


def _weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and conv kernels; leave biases, norms and embeddings' gains alone."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 and "norm" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= up_to_step:
            rows.append(row)
    return rows


def _check_same_model(out_dir: Path, saved: dict | None, current: dict | None, say: bool) -> None:
    """Refuse to resume with other model settings. A setting the saved run does not name at all was added to
    housebox since it was saved: resuming takes it as set now, and says so."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        if saved != current:
            raise ValueError(f"{out_dir}: the model settings differ from the run being resumed; use the same preset")
        return
    differ = sorted(k for k in saved if current.get(k, object()) != saved[k])
    if differ:
        raise ValueError(f"{out_dir}: the model settings differ from the run being resumed ({', '.join(differ)}); "
                         "use the same preset")
    new = {k: v for k, v in current.items() if k not in saved}
    if new and say:
        print(f"{out_dir}: settings newer than this run, resumed as now set: "
              + ", ".join(f"{k}={v}" for k, v in sorted(new.items())))


def train(
    model: nn.Module,
    *,
    step_fn: StepFn,
    batch_fn: BatchFn,
    out_dir: str | Path,
    config: TrainConfig,
    describe: dict,
    eval_fn: EvalFn | None = None,
    resume: bool = False,
    device: str = "auto",
    runtime: Runtime | None = None,
    progress: bool = True,
    select: str | None = None,
    clip_groups: Callable[[], list[list[nn.Parameter]]] | None = None,
) -> TrainResult:
    """Train `model` for `config.steps` optimiser steps, writing a model directory to `out_dir`.

    `describe` (model kind and config, data settings) goes into config.json so the directory can be
    loaded on its own later. With `resume`, training continues exactly from the last checkpoint.
    With `select` (a key of eval_fn's results, lower is better), the weights kept are those of the best
    evaluation; without it, or without eval_fn, the last ones. `clip_groups` splits the parameters into
    groups whose gradient norms are clipped separately (a GAN's generator and discriminator).
    """
    keep_freed_memory()  # a step's large buffers are reused by the next, not faulted in afresh
    runtime = runtime or init_runtime(device)
    out_dir = Path(out_dir)
    state_path = out_dir / TRAIN_STATE
    if state_path.exists() and not resume:
        raise ValueError(f"{out_dir} already holds a training run; pass --resume to continue it or choose another -o")
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    check_shared_folder(out_dir, runtime)

    model.to(runtime.device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        _weight_decay_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
        fused=runtime.device.type in ("cpu", "cuda") or None,
    )
    amp_dtype, needs_scaler = autocast_settings(config.precision, runtime.device)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=needs_scaler)

    best = _Best(select, config.patience) if select and eval_fn is not None else None
    last_eval: dict[str, float] = {}
    start_step = 0
    if resume and state_path.exists():
        state = load_train_state(state_path, runtime.device)
        saved_describe = json.loads((out_dir / CONFIG).read_text()).get("describe", {})
        _check_same_model(out_dir, saved_describe.get("model"), json.loads(json.dumps(describe.get("model"), default=str)),
                          runtime.is_main)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        last_eval = dict(state.get("last_eval") or {})
        if best is not None:
            best.load_state_dict(state.get("selection"))
        if runtime.is_main:
            print(f"resuming {out_dir} from step {start_step}")

    trained = model
    if runtime.distributed:
        ids = [runtime.device] if runtime.device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    metrics_path = out_dir / "metrics.jsonl"
    history = _read_metrics(metrics_path, start_step) if runtime.is_main else []
    writer = _tensorboard(out_dir) if runtime.is_main else None
    meta = {"format_version": FORMAT_VERSION, "describe": json.loads(json.dumps(describe, default=str)),
            "train": asdict(config), "world_size": runtime.world_size}

    def run_config(step: int) -> dict:
        return {**meta, "step": step, **({"best": best.summary()} if best is not None else {})}

    def save(step: int, improved: bool = False) -> None:
        """Checkpoint at `step`; the weights file is the last EMA, or with `select` the best one when it improved.

        The weights go first: a kill before train_state.pt is written resumes from the previous checkpoint,
        which evaluates this step again and rewrites them."""
        if not runtime.is_main:
            return
        kind = str(describe.get("kind"))
        if best is None:
            save_weights(out_dir / WEIGHTS, ema.state_dict(), metadata={"step": str(step), "kind": kind})
        elif improved:
            save_weights(out_dir / WEIGHTS, ema.state_dict(), metadata={
                "step": str(best.step), "kind": kind, "selected_by": best.metric, best.metric: repr(best.value)})
        save_train_state(state_path, {
            "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if needs_scaler else None,
            "selection": best.state_dict() if best is not None else None, "last_eval": last_eval,
        })
        write_json(out_dir / CONFIG, run_config(step))
        tmp = metrics_path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
        tmp.replace(metrics_path)
        kept = (f"eval/{best.metric}", best.step, best.value) if best is not None and best.step is not None else None
        _plot_history(out_dir / "loss.png", history, kept)

    def evaluate(step: int) -> bool:
        """Run eval_fn on the EMA model; True when the selected metric reached a new best."""
        nonlocal last_eval
        if eval_fn is None or not runtime.is_main:
            return False
        ema.eval()
        with torch.no_grad():
            values = {k: float(v) for k, v in eval_fn(ema, step, writer).items()}
        last_eval = values
        history.append({"step": step, **{f"eval/{k}": v for k, v in values.items()}})
        if progress:
            tqdm.write(f"step {step} validation: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(f"eval/{k}", v, step)
        if best is None:
            return False
        improved = best.observe(step, values)
        warning = best.warning(step, values[best.metric])
        if warning:
            tqdm.write(warning)
            history.append({"step": step, "event": "overfitting", "metric": best.metric, "best_step": best.step,
                            "best": best.value, "value": values[best.metric]})
        return improved

    last: dict[str, float] = {}
    step = start_step
    interrupted = False
    bar = tqdm(total=config.steps, initial=start_step, desc=str(describe.get("kind", "train")), unit="step",
               disable=not (progress and runtime.is_main), dynamic_ncols=True)
    started = time.time()
    with _StopRequest() as stop:
        model.train()
        while step < config.steps:
            torch.manual_seed(derive_seed(config.seed, step, runtime.rank, "model"))
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            accumulated: dict[str, Tensor] = {}
            for micro in range(config.grad_accum):
                generator = torch.Generator().manual_seed(derive_seed(config.seed, step, micro, runtime.rank, "data"))
                batch = move_to(batch_fn(generator), runtime.device)
                sync = micro == config.grad_accum - 1 or not runtime.distributed
                with (nullcontext() if sync else trained.no_sync()):
                    with torch.autocast(runtime.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        out = step_fn(trained, batch)
                    scaler.scale(out.loss / config.grad_accum).backward()
                for k, v in {"loss": out.loss.detach(), **out.metrics}.items():
                    accumulated[k] = accumulated.get(k, 0) + v.detach().float() / config.grad_accum
            scaler.unscale_(optimizer)
            if clip_groups is None:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            else:
                grad_norm = torch.stack([torch.nn.utils.clip_grad_norm_(group, config.grad_clip)
                                         for group in clip_groups()]).max()
            scaler.step(optimizer)
            scaler.update()
            _ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
            step += 1
            bar.update()

            if step % config.log_every == 0 or step == config.steps:
                last = {k: float(v) for k, v in accumulated.items()}
                last.update(lr=lr, grad_norm=float(grad_norm))
                if runtime.is_main:
                    elapsed = time.time() - started
                    history.append({"step": step, "time": round(elapsed, 3), **last})
                    with open(metrics_path, "a") as handle:
                        handle.write(json.dumps(history[-1]) + "\n")
                    if writer is not None:
                        for k, v in last.items():
                            writer.add_scalar(f"train/{k}", v, step)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}")
            checkpoint_due = step % config.checkpoint_every == 0 or step == config.steps
            if checkpoint_due or (config.eval_every and step % config.eval_every == 0):
                improved = evaluate(step)
                if checkpoint_due or improved:  # a new best between checkpoints is checkpointed with it
                    save(step, improved)
            if any_rank(stop.requested, runtime) and step < config.steps:
                interrupted = True
                save(step)
                if runtime.is_main:
                    tqdm.write(f"stopped at step {step}; checkpoint saved")  # the caller says how to continue
                break
    bar.close()
    stop_requested = any_rank(stop.requested, runtime)  # every rank stops after this run when any was asked to
    if writer is not None:
        writer.close()
    in_sync = ranks_agree(model, runtime)
    if runtime.is_main and runtime.distributed:
        write_json(out_dir / CONFIG, {**run_config(step), "ranks_in_sync": in_sync})
    if not in_sync:
        raise RuntimeError("DDP ranks ended with different weights; please report this as a bug")
    return TrainResult(step=step, interrupted=interrupted, last_metrics=last, stop_requested=stop_requested,
                       best_step=best.step if best is not None else None,
                       best_metrics=dict(best.metrics) if best is not None else {}, last_eval=last_eval)


def state_fingerprint(model: nn.Module) -> Tensor:
    """Two float64 numbers that change when any parameter or buffer changes: Tensor[2]."""
    total = torch.zeros(2, dtype=torch.float64)
    for i, tensor in enumerate(model.state_dict().values()):
        values = tensor.detach().double().flatten().cpu()
        weights = torch.arange(1, values.numel() + 1, dtype=torch.float64) / max(1, values.numel())
        total += torch.stack([values.sum(), (values * weights).sum() * (i + 1)])
    return total


def ranks_agree(model: nn.Module, runtime: Runtime) -> bool:
    """True when every rank holds bit-identical weights (always true when running alone)."""
    if not runtime.distributed:
        return True
    import torch.distributed as dist

    mine = state_fingerprint(model).to(runtime.device)
    gathered = [torch.empty_like(mine) for _ in range(runtime.world_size)]
    dist.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a broken install should not stop training
        print("tensorboard is not importable: logging to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _plot_history(path: Path, history: list[dict], kept: tuple[str, int, float] | None = None) -> None:
    """Training loss and every eval curve; `kept` = (curve, step, value) rings the step whose weights are kept."""
    from housebox.report.plots import save_curves

    train_rows = [r for r in history if "loss" in r]
    eval_rows = [r for r in history if any(k.startswith("eval/") for k in r)]
    curves = {"train loss": ([r["step"] for r in train_rows], [r["loss"] for r in train_rows])}
    for key in sorted({k for r in eval_rows for k in r if k.startswith("eval/")}):
        rows = [r for r in eval_rows if key in r]
        curves[key] = ([r["step"] for r in rows], [r[key] for r in rows])
    if train_rows:
        save_curves(path, curves, marks={kept[0]: (kept[1], kept[2])} if kept and kept[0] in curves else None)
