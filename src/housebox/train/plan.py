"""`housebox plan`: memory and disk a preset needs, estimated from the model definitions.

For every model a preset trains (VQ-VAE, top prior, each upsampler):
- parameters, counted on a model built on the `meta` device (no memory, no time);
- fixed bytes: float32 weights, gradients, AdamW's two moments and the loop's EMA copy
  (16 + 4 bytes per parameter; autocast keeps float32 weights);
- activations per batch item: the bytes autograd keeps for the backward pass, counted by a
  saved-tensor hook during one training forward (unique storages). Priors are traced on the `meta`
  device, so even the 617 M-parameter `jukebox` prior costs nothing to trace; the VQ-VAE, whose
  codebook looks at its data, runs one real item on the CPU (it is small). Under bf16 autocast the
  trace runs a bf16 copy of the model, which keeps every activation in bf16: an estimate, as
  autocast keeps LayerNorm and the loss in float32;
- with activation checkpointing (`checkpoint_blocks`): what is kept outside the blocks, each
  block's input, and one block's activations while it is recomputed in the backward pass;
- a workspace for the backward pass: the gradient of the largest activation is alive next to it,
  so the largest saved tensor is counted once more per item.
The sum is a peak estimate for one training step; a test holds it within 25% of the peak resident
memory measured on the CPU for small shapes, and `make gpu-check` compares it with CUDA's peak.
DDP adds gradient buckets (about one more copy of the gradients) on top.

Disk for `--hours` of audio: prepared audio (int16 at the preset's rate), the code cache
(int16 codes at every level) and the originality index (landmark hashes on disk, at most what the
fingerprint settings allow; the k-gram code index `check` keeps in DATA/code_index/).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from housebox.config import build
from housebox.models.conditioning import Labels
from housebox.models.prior import Conditioning, Prior, PriorConfig
from housebox.models.vqvae import VQVAE, VQVAEConfig
from housebox.data.labels import Vocabulary
from housebox.train.loop import TrainConfig, autocast_settings
from housebox.train.prior import prior_config

GIB = 1024**3
FLOAT32 = 4
# float32 weights, gradients, AdamW's exp_avg and exp_avg_sq, and the loop's EMA copy of the weights
FIXED_COPIES = {"weights": 1, "gradients": 1, "optimizer": 2, "ema": 1}


class PlanError(ValueError):
    """A preset that cannot be planned."""


@dataclass(frozen=True)
class ModelPlan:
    """Memory of one model's training step. Byte counts; `activations*` per batch item."""

    name: str
    parameters: int
    batch_size: int  # the preset's micro-batch
    grad_accum: int
    dtype: str  # activations' dtype: float32 or bfloat16
    activations: int
    activations_checkpointed: int | None  # None: the model has no checkpointing option
    workspace: int  # per item: gradient of the largest activation during backward
    checkpointing: bool  # what the preset asks for

    @property
    def fixed(self) -> int:
        return sum(FIXED_COPIES.values()) * FLOAT32 * self.parameters

    def per_item(self, checkpointed: bool | None = None) -> int:
        checkpointed = self.checkpointing if checkpointed is None else checkpointed
        if checkpointed and self.activations_checkpointed is not None:
            return self.activations_checkpointed + self.workspace
        return self.activations + self.workspace

    def peak(self, batch: int | None = None, checkpointed: bool | None = None) -> int:
        """Estimated peak bytes of a training step at `batch` items (the preset's by default)."""
        return self.fixed + (self.batch_size if batch is None else batch) * self.per_item(checkpointed)

    def largest_batch(self, memory_bytes: float, checkpointed: bool | None = None) -> int:
        """Most items per micro-batch that fit `memory_bytes` (0: not even the weights and one item)."""
        return max(0, int((memory_bytes - self.fixed) // self.per_item(checkpointed)))


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash / memory-efficient, on CUDA and the CPU) keeps for backward:
    queries, keys, values, the output and a float32 log-sum-exp per query. Stands in for
    scaled_dot_product_attention while tracing on `meta`, whose fallback would keep the T x T weights."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # never run: traces only count what forward keeps
        raise NotImplementedError


def _fused_sdpa(q: Tensor, k: Tensor, v: Tensor, *args, **kwargs) -> Tensor:
    return _FusedAttention.apply(q, k, v)


def saved_bytes(run: Callable[[], Tensor], modules: list[nn.Module] | None = None,
                exclude: list[Tensor] = ()) -> dict:
    """Bytes autograd keeps for backward while `run()` builds a graph, counted once per storage.

    modules: blocks whose share is reported separately ("blocks": bytes saved inside each, "inputs":
    bytes of each one's input), for the checkpointed estimate. exclude: tensors not to count (weights).
    Returns {"total", "largest", "outside", "blocks", "inputs"}.
    """
    skip = {t.untyped_storage()._cdata for t in exclude}
    seen: dict[int, tuple[int, int | None]] = {}  # storage -> (bytes, block index or None)
    current: list[int | None] = [None]
    inputs: list[int] = []
    hooks = []
    for index, module in enumerate(modules or []):
        def enter(_module, args, index=index):
            current[0] = index
            inputs.append(args[0].numel() * args[0].element_size())

        def leave(_module, _args, _output):
            current[0] = None

        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in skip and storage._cdata not in seen:
            seen[storage._cdata] = (storage.nbytes(), current[0])
        return tensor

    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = run()
        del loss
    finally:
        torch.nn.functional.scaled_dot_product_attention = real_sdpa
        for hook in hooks:
            hook.remove()
    blocks = [0] * len(modules or [])
    for size, block in seen.values():
        if block is not None:
            blocks[block] += size
    total = sum(size for size, _ in seen.values())
    return {"total": total, "largest": max((size for size, _ in seen.values()), default=0),
            "outside": total - sum(blocks), "blocks": blocks, "inputs": inputs}


def _dtype(train: TrainConfig, device: str) -> torch.dtype:
    """The autocast dtype the training loop picks on `device` (`autocast_settings`); for a GPU this machine may
    not have, `auto` is taken as bf16, what the loop picks on any GPU that supports it."""
    if train.precision == "auto" and device == "cuda":
        return torch.bfloat16
    return autocast_settings(train.precision, torch.device(device))[0] or torch.float32


def plan_prior(config: PriorConfig, train: TrainConfig, name: str, dtype: torch.dtype = torch.float32) -> ModelPlan:
    """A prior's plan, traced on the meta device at batch 1 (a full window of n_ctx tokens)."""
    with torch.device("meta"):
        model = Prior(config).to(dtype).train()
    parameters = sum(p.numel() for p in model.parameters())
    n = config.n_ctx
    with torch.device("meta"):
        codes = torch.zeros(1, n, dtype=torch.long)
        cond = Conditioning(
            labels=Labels(artist=torch.zeros(1, dtype=torch.long), genres=torch.zeros(1, config.max_genres,
                                                                                         dtype=torch.long)),
            start=torch.zeros(1, dtype=torch.long), total_tokens=torch.full((1,), n, dtype=torch.long),
            upper=torch.zeros(1, n // config.upper_ratio, dtype=torch.long) if config.is_upsampler else None,
            beats=torch.zeros(1, n, dtype=dtype) if config.beat_clock else None,
        )
        hidden = torch.ones(1, n, dtype=torch.bool) if config.masked else None  # a masked model's targets
    traces = {}
    for checkpointed in (False, True):
        model.transformer.config = dataclasses.replace(model.transformer.config, checkpoint_blocks=checkpointed)
        traces[checkpointed] = saved_bytes(lambda: model(codes, cond, None, hidden).loss, list(model.transformer.blocks),
                                           exclude=list(model.parameters()))
    plain, recomputed = traces[False], traces[True]
    # With checkpointing, backward recomputes one block at a time: its activations live next to the kept inputs.
    checkpointed_bytes = recomputed["outside"] + sum(plain["inputs"]) + max(plain["blocks"], default=0)
    return ModelPlan(name=name, parameters=parameters, batch_size=train.batch_size, grad_accum=train.grad_accum,
                     dtype=str(dtype).removeprefix("torch."), activations=plain["total"],
                     activations_checkpointed=checkpointed_bytes, workspace=plain["largest"],
                     checkpointing=config.checkpoint_blocks)


def plan_vqvae(config: VQVAEConfig, train: TrainConfig, chunk_seconds: float,
               dtype: torch.dtype = torch.float32) -> ModelPlan:
    """The VQ-VAE's plan: one real item of `chunk_seconds` through a fresh model on the CPU."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in VQVAE(config).parameters())
    torch.manual_seed(0)
    model = VQVAE(config).train()
    multiple = model.multiple()
    samples = max(multiple, int(chunk_seconds * config.sample_rate) // multiple * multiple)
    x = torch.randn(1, 1, samples) * 0.1

    def run() -> Tensor:  # the real autocast, on the CPU
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return model(x).loss

    trace = saved_bytes(run, exclude=list(model.parameters()))
    return ModelPlan(name="vqvae", parameters=parameters, batch_size=train.batch_size, grad_accum=train.grad_accum,
                     dtype=str(dtype).removeprefix("torch."), activations=trace["total"],
                     activations_checkpointed=None, workspace=trace["largest"], checkpointing=False)


def prior_configs(preset: dict[str, dict], artists: int = 1, genres: int = 1) -> list[tuple[str, PriorConfig, str]]:
    """(name, config, train section) for the top prior and every upsampler of a preset, as training builds them."""
    vq = build(VQVAEConfig, preset.get("vqvae"), "vqvae")
    meta = {"hops": list(vq.hops), "codebook_size": vq.codebook_size, "sample_rate": vq.sample_rate}  # as encode writes
    vocab = Vocabulary(artists=tuple(f"a{i}" for i in range(artists)), genres=tuple(f"g{i}" for i in range(genres)))
    top = vq.levels - 1
    out = []
    for level in range(top, -1, -1):
        section = "prior" if level == top else "upsampler"
        config = prior_config(dict(preset.get(section) or {}), level, meta, vocab, section)
        name = f"prior (level {level})" if level == top else f"upsampler (level {level})"
        out.append((name, config, f"{section}_train"))
    return out


def plan_models(preset: dict[str, dict], device: str = "cuda", artists: int = 1, genres: int = 1) -> list[ModelPlan]:
    """Plans of every model of a preset, for training on `device` ('cuda' or 'cpu': decides the autocast dtype)."""
    vq = build(VQVAEConfig, preset.get("vqvae"), "vqvae")
    vq_train = build(TrainConfig, preset.get("vqvae_train"), "vqvae_train")
    chunk = float((preset.get("vqvae_data") or {}).get("chunk_seconds", 0.5))
    plans = [plan_vqvae(vq, vq_train, chunk, _dtype(vq_train, device))]
    for name, config, train_section in prior_configs(preset, artists, genres):
        train = build(TrainConfig, preset.get(train_section), train_section)
        plans.append(plan_prior(config, train, name, _dtype(train, device)))
    return plans


@dataclass(frozen=True)
class DiskPlan:
    hours: float
    audio: int  # prepared audio: int16 mono at the preset's rate
    codes: int  # code cache: int16 codes at every level
    fingerprints: int  # landmark index on disk, at most (peaks_per_second x fan_out hashes of 12 bytes a second)
    code_index: int  # k-gram index of the levels `check` searches, on disk (DATA/code_index/, memory-mapped)
    unchecked_levels: tuple[int, ...]  # levels over max_index_tokens: `check` cannot search their codes


def plan_disk(preset: dict[str, dict], hours: float, check) -> DiskPlan:
    """Disk (and the check's index memory) for `hours` of prepared audio, from the preset and the check's
    settings `check` (an evaluate.originality.OriginalityConfig: its `fingerprint` and `max_index_tokens`)."""
    vq = build(VQVAEConfig, preset.get("vqvae"), "vqvae")
    seconds = hours * 3600.0
    tokens = [seconds * vq.tokens_per_second(level) for level in range(vq.levels)]
    fp = check.fingerprint
    entry = 4 + 4 + 4  # uint32 hash, int32 track, int32 frame
    searched = [level for level in range(vq.levels) if tokens[level] <= check.max_index_tokens]
    return DiskPlan(
        hours=hours,
        audio=int(seconds * vq.sample_rate * 2),
        codes=int(sum(tokens) * 2),
        fingerprints=int(seconds * fp.peaks_per_second * fp.fan_out * entry),
        code_index=int(sum(tokens[level] for level in searched) * (4 + 8 + 8)),  # int32 codes, uint64 hashes, int64 positions
        unchecked_levels=tuple(level for level in range(vq.levels) if level not in searched),
    )


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def format_plan(plans: list[ModelPlan], memory_gib: float | None, disk: DiskPlan | None) -> str:
    """The table `housebox plan` prints."""
    lines = []
    head = f"{'model':<20} {'params':>9} {'weights':>10} {'grads':>10} {'AdamW':>10} {'EMA':>10} " \
           f"{'act/item':>10} {'ckpt/item':>10} {'batch':>5} {'peak':>10}"
    if memory_gib:
        head += f" {'max batch':>9} {'ckpt':>6}"
    lines.append(head)
    for p in plans:
        per = FLOAT32 * p.parameters
        ckpt = gib(p.activations_checkpointed + p.workspace) if p.activations_checkpointed is not None else "-"
        row = (f"{p.name:<20} {p.parameters / 1e6:>8.1f}M {gib(per):>10} {gib(per):>10} {gib(2 * per):>10} "
               f"{gib(per):>10} {gib(p.activations + p.workspace):>10} {ckpt:>10} {p.batch_size:>5} {gib(p.peak()):>10}")
        if memory_gib:
            limit = memory_gib * GIB
            with_ckpt = str(p.largest_batch(limit, True)) if p.activations_checkpointed is not None else "-"
            row += f" {p.largest_batch(limit, False):>9} {with_ckpt:>6}"
        lines.append(row)
    lines.append("peak: weights + gradients + AdamW + EMA + batch x (activations + backward workspace), "
                 f"activations in {', '.join(sorted({p.dtype for p in plans}))}"
                 + ("; with checkpointing where the preset asks for it" if any(p.checkpointing for p in plans) else ""))
    if memory_gib:
        lines.append(f"max batch: items per micro-batch within {memory_gib:g} GiB without / with checkpoint_blocks "
                     "(grad_accum multiplies the effective batch); DDP adds about one more copy of the gradients")
        short = [p.name for p in plans if p.largest_batch(memory_gib * GIB, p.checkpointing) < p.batch_size]
        if short:
            lines.append(f"does not fit at the preset's batch: {', '.join(short)} "
                         "(lower the batch, raise grad_accum, or set checkpoint_blocks: true)")
    if disk is not None:
        lines.append(f"for {disk.hours:g} hours of audio: prepared audio {gib(disk.audio)}, code cache {gib(disk.codes)}, "
                     f"originality indexes at most {gib(disk.fingerprints)} (fingerprints) + {gib(disk.code_index)} "
                     "(codes) on disk")
        if disk.unchecked_levels:
            levels = ", ".join(map(str, disk.unchecked_levels))
            lines.append(f"  `check` cannot search the codes of level(s) {levels} at this size (over max_index_tokens)")
    return "\n".join(lines)
