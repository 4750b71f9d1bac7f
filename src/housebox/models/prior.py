"""Priors over VQ-VAE codes: the top-level prior and the upsamplers are one class.

Position t of a window reads the code at t-1 (position 0 reads a start token carrying the labels) and
predicts the code at t. On top of token and position embeddings come the labels (position 0), timing
(top level: where in the track each position lies), the beat clock (where in the beat and the bar,
when `beat_clock` is on) and, for upsamplers, the codes of the level above.

`kind: masked` (upsamplers only) makes the same model a masked one (SoundStorm / MaskGIT style): a
bidirectional transformer whose position t reads the code at t itself, or a MASK token where the code
is hidden, and predicts the code at t; training hides a cosine-scheduled share of each window
(`mask_positions`) and scores the hidden positions only; decoding fills a window in a few passes
(generate/sampling.py: `sample_masked`).
Read top-down: PriorConfig -> mask_positions -> Prior (embed -> transformer -> head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from housebox.models.conditioning import (
    BeatClockEmbedding,
    Labels,
    LabelEmbedding,
    TimingEmbedding,
    UpperLevelConditioner,
)
from housebox.models.transformer import KVCache, Transformer, TransformerConfig, affine, pack_linear, step_slices


@dataclass(frozen=True)
class PriorConfig:
    level: int = 2
    codebook_size: int = 2048
    n_artists: int = 1
    n_genres: int = 1
    max_genres: int = 4
    sample_rate: int = 44100
    hop: int = 128  # samples per token at this level
    # transformer
    width: int = 128
    depth: int = 4
    heads: int = 2
    n_ctx: int = 1024
    attention: tuple[str, ...] = ("dense",)
    block_size: int = 32
    dropout: float = 0.0
    rotary: bool = False  # relative positions in attention (RoPE) on top of the learned absolute ones
    attention_width: float = 1.0  # queries/keys/values as a fraction of width (Jukebox: 0.25)
    mlp_ratio: float = 4.0  # MLP hidden width / width (Jukebox: 1.0)
    checkpoint_blocks: bool = False  # recompute each block in backward: far less activation memory (housebox plan)
    # conditioning
    timing: bool = True  # top level only
    timing_bins: int = 64
    max_seconds: float = 600.0
    upper_codebook_size: int = 0  # > 0 for upsamplers: conditioned on the level above
    upper_ratio: int = 1  # hop of the level above / hop of this level
    label_dropout: float = 0.1  # lets sampling use classifier-free guidance
    beat_clock: bool = False  # add each position's place in the beat and the bar (needs prepared beat grids)
    beat_harmonics: int = 8  # Fourier harmonics of the beat and bar phase
    beats_per_bar: int = 4
    clock_dropout: float = 0.0  # share of windows trained with the clock unknown: lets sampling guide by the clock
    kind: str = "autoregressive"  # or "masked": an upsampler that fills windows in a few passes (module docstring)
    mask_span: int = 1  # masked: hide spans of this many tokens in training
    # upsamplers: share of the level-above codes replaced by random ones in training, so that an upsampler
    # conditioned on a top prior's own (less clean) codes has seen imperfect ones (0: off)
    upper_noise: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", tuple(self.attention))
        if self.upper_codebook_size and self.n_ctx % self.upper_ratio:
            raise ValueError(f"n_ctx {self.n_ctx} must be a multiple of the upper ratio {self.upper_ratio}")
        if not 0.0 <= self.upper_noise < 1.0:
            raise ValueError(f"upper_noise must be in [0, 1), got {self.upper_noise}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.masked and not self.is_upsampler:
            raise ValueError("kind: masked is for upsamplers; the top-level prior is autoregressive")
        if self.mask_span < 1 or (self.masked and self.n_ctx % self.mask_span):
            raise ValueError(f"mask_span must be >= 1 and divide n_ctx {self.n_ctx}, got {self.mask_span}")

    @property
    def masked(self) -> bool:
        return self.kind == "masked"

    @property
    def is_upsampler(self) -> bool:
        return self.upper_codebook_size > 0

    def transformer(self) -> TransformerConfig:
        """The transformer's fields that this config also has (a new shared field needs no edit here)."""
        shared = {f.name for f in fields(TransformerConfig)} & {f.name for f in fields(self)}
        return TransformerConfig(**{name: getattr(self, name) for name in shared}, causal=not self.masked)


KINDS = ("autoregressive", "masked")


def mask_positions(valid: Tensor, span: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Which positions a masked model's training window hides: BoolTensor[B x T] of the same shape as `valid`.

    Each window draws u ~ U(0, 1) and hides round(cos(pi u / 2) * T / span) of its T / span spans (at least
    one): the cosine schedule of MaskGIT, so that training sees every share decoding passes through, more of
    the heavily masked ones. Spans are contiguous runs of `span` tokens. T must be a multiple of span.
    Only positions that are `valid` (inside the track) are counted as hidden."""
    b, t = valid.shape
    spans = t // span
    u = torch.rand(b, generator=generator)
    hidden = (torch.cos(math.pi / 2 * u) * spans).round().clamp(min=1).long()  # (B,) spans to hide
    scores = torch.rand(b, spans, generator=generator)  # a random order of the spans of each window
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, spans): each span's place in that order
    chosen = (rank < hidden[:, None]).repeat_interleave(span, dim=1).to(valid.device) & valid  # (B, T)
    first_valid = torch.zeros_like(valid).scatter_(1, valid.long().argmax(dim=1, keepdim=True), True) & valid
    return torch.where(chosen.any(dim=1, keepdim=True), chosen, first_valid)  # a target in every window that has one


IGNORE = -100  # a target that is not one (padding past a track, a code a masked model sees)


class _TokenCrossEntropy(torch.autograd.Function):
    """`token_cross_entropy`'s forward and backward: the gradient straight from the saved log-probabilities."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V), float32 whatever the logits
        keep = targets != IGNORE
        picked = targets.masked_fill(~keep, 0)[:, None]  # (N, 1)
        count = keep.sum()
        loss = -(log_probs.gather(1, picked).squeeze(1) * keep).sum() / count
        ctx.save_for_backward(log_probs, picked, keep, count)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        log_probs, picked, keep, count = ctx.saved_tensors
        probs = log_probs.exp_()  # d loss / d logits = (softmax - one-hot) / count on kept rows, 0 elsewhere
        probs.scatter_add_(1, picked, torch.full_like(picked, -1, dtype=probs.dtype))
        probs.mul_((grad * keep / count)[:, None])
        return probs.to(ctx.logits_dtype), None


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy in nats of logits Tensor[N x V] (any float type; computed in float32) against
    targets LongTensor[N], rows whose target is IGNORE left out: `F.cross_entropy(logits.float(), targets,
    ignore_index=IGNORE)`, in fewer passes over the N x V floats. Its backward turns the saved
    log-probabilities into the gradient in place (exp, minus one at each target, times the scale) where
    torch's fills a fresh N x V tensor with zeros, scatters, and runs log-softmax's own backward: measured
    1.35x faster at 1,024 x 2,048 bf16 logits (Jukebox's test prior, batch 1; 3-4% of its whole step) and
    1.7x at 8,192 x 2,048."""
    return _TokenCrossEntropy.apply(logits, targets)


@dataclass(frozen=True)
class Conditioning:
    """Everything a window is conditioned on besides its own codes."""

    labels: Labels
    start: Tensor  # LongTensor[B]: token index of the window's first position within the track
    total_tokens: Tensor  # LongTensor[B]: length of the whole track in tokens at this level
    upper: Tensor | None = None  # LongTensor[B x n_ctx / ratio]: codes of the level above for this window
    beats: Tensor | None = None  # FloatTensor[B x n_ctx]: beat position of each token (NaN or None: no clock)


@dataclass(frozen=True)
class PriorOutput:
    logits: Tensor  # [B x T x V]
    loss: Tensor  # mean cross-entropy in nats per token over valid targets
    tokens: Tensor  # number of valid targets


class Prior(nn.Module):
    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        v, d = config.codebook_size, config.width
        self.start_id = v
        self.mask_id = v + 1 if config.masked else None
        self.token = nn.Embedding(v + (2 if config.masked else 1), d)  # + the start token (+ the MASK token)
        self.position = nn.Embedding(config.n_ctx, d)
        self.labels = LabelEmbedding(n_artists=config.n_artists, n_genres=config.n_genres, width=d)
        self.timing = (TimingEmbedding(bins=config.timing_bins, max_seconds=config.max_seconds, width=d)
                       if config.timing else None)
        self.beat_clock = (BeatClockEmbedding(harmonics=config.beat_harmonics, beats_per_bar=config.beats_per_bar,
                                              width=d) if config.beat_clock else None)
        self.upper = (UpperLevelConditioner(codebook_size=config.upper_codebook_size, ratio=config.upper_ratio,
                                            width=d) if config.is_upsampler else None)
        self.transformer = Transformer(config.transformer())
        self.head = nn.Linear(d, v, bias=False)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.01)

    def seconds_per_token(self) -> float:
        return self.config.hop / self.config.sample_rate

    def context(self, cond: Conditioning) -> Tensor:
        """The conditioning added at each of the n_ctx positions of a window: Tensor[B x n_ctx x D]."""
        b, n = cond.labels.artist.shape[0], self.config.n_ctx
        device = self.position.weight.device
        extra = self.position.weight[None].expand(b, n, -1)  # (B, n_ctx, D)
        labels = self.labels(cond.labels)  # (B, D)
        extra = torch.cat([extra[:, :1] + labels[:, None], extra[:, 1:]], dim=1)
        if self.timing is not None:
            positions = cond.start[:, None] + torch.arange(n, device=device)[None]  # (B, n_ctx)
            offset = positions.float() * self.seconds_per_token()
            total = cond.total_tokens.float() * self.seconds_per_token()
            extra = extra + self.timing(offset, total)
        if self.beat_clock is not None:
            beats = cond.beats
            if beats is None or beats.shape[1] == 0:  # no clock: the "unknown" vector the model also trained on
                beats = torch.full((b, n), float("nan"), device=device)
            extra = extra + self.beat_clock(beats[:, :n])
        if self.upper is not None:
            if cond.upper is None:
                raise ValueError("an upsampler needs the codes of the level above")
            extra = extra + self.upper(cond.upper)[:, :n]
        return extra

    def inputs(self, codes: Tensor) -> Tensor:
        """Codes LongTensor[B x T] -> input ids [B x T]: start token, then the codes shifted right by one."""
        start = torch.full_like(codes[:, :1], self.start_id)
        return torch.cat([start, codes[:, :-1]], dim=1)

    def window_logits(self, ids: Tensor, context: Tensor) -> Tensor:
        """Logits Tensor[B x T x V] for input ids LongTensor[B x T] over a whole window from position 0,
        `context` = `self.context(cond)`. One transformer pass (a masked model's decoding pass)."""
        x = self.token(ids) + context[:, : ids.shape[1]]  # (B, T, D)
        return self.head(self.transformer(x))

    def forward(self, codes: Tensor, cond: Conditioning, targets_mask: Tensor | None = None,
                hidden: Tensor | None = None) -> PriorOutput:
        """Logits for codes LongTensor[B x T] (T <= n_ctx); `targets_mask` BoolTensor[B x T] marks real codes.

        Autoregressive: teacher-forced, every real code is a target. Masked: `hidden` BoolTensor[B x T]
        (from `mask_positions`) says which codes the model sees as MASK; only those are targets."""
        if self.config.masked:
            if hidden is None:
                raise ValueError("a masked model needs `hidden`: which positions to predict (mask_positions)")
            outside = hidden if targets_mask is None else hidden | ~targets_mask  # past the track: MASK, as decoding
            ids = codes.masked_fill(outside, self.mask_id)
            targets_mask = hidden if targets_mask is None else hidden & targets_mask
        else:
            ids = self.inputs(codes)
        logits = self.window_logits(ids, self.context(cond))  # (B, T, V)
        targets = codes if targets_mask is None else codes.masked_fill(~targets_mask, IGNORE)
        loss = token_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        tokens = (targets != IGNORE).sum()
        return PriorOutput(logits=logits, loss=loss, tokens=tokens)

    # ---- incremental decoding (sampling) ------------------------------------------------------

    def new_cache(self, batch: int, slices: int | None | str = "auto") -> KVCache:
        """The transformer's cache (`Transformer.new_cache`: "auto" packs the weights on a CPU), holding the
        output head packed likewise when the layer weights are."""
        weight = self.head.weight
        if slices == "auto":
            slices = step_slices(weight.device)
        cache = self.transformer.new_cache(batch, weight.device, weight.dtype, slices=slices)
        return cache if slices is None else replace(cache, head_t=pack_linear(weight.t(), None, slices)[0])

    def graph_step(self, ids: Tensor, context: Tensor, cache: KVCache, pos: Tensor) -> Tensor:
        """`step` for one position given as a 0-dim LongTensor: LongTensor[B x 1] -> logits Tensor[B x V], every
        shape fixed whatever the position, so `torch.compile` (on CUDA with CUDA graphs) makes one graph."""
        x = self.token(ids) + context.index_select(1, pos.view(1))  # (B, 1, D)
        return self.head(self.transformer.graph_step(x, cache, pos))[:, 0]

    def step(self, ids: Tensor, context: Tensor, cache: KVCache, pos: int) -> Tensor:
        """Logits for positions pos..pos+t-1 given their input ids LongTensor[B x t] -> Tensor[B x t x V].

        `context` is `self.context(cond)` for the window, computed once per window."""
        B, t = ids.shape
        # the modules' functions on their parameters, without the module calls (~3 us each, a token is ~400 us)
        x = F.embedding(ids, self.token.weight) + context.narrow(1, pos, t)  # (B, t, D)
        h = self.transformer.step(x, cache, pos)
        if cache.head_t is None:
            return F.linear(h, self.head.weight, self.head.bias)
        return affine(h.view(B * t, -1), cache.head_t, None).view(B, t, -1)
