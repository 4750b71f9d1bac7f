"""Decoder-only transformer of the priors, with dense or factorised attention and a KV cache.

Pre-LayerNorm blocks (LN -> attention -> residual, LN -> MLP(GELU, tanh form) -> residual) over
hidden states Tensor[B x T x D]; the prior around it owns embeddings, conditioning and the output
head. GPT-2 initialisation.

Attention kinds (Jukebox's sparse-transformer variants). Positions are arranged in rows of
`block_size`; query i may see key j when:
- dense:      j <= i
- row:        j <= i and j // block_size == i // block_size        (causal within its own row)
- column:     j <= i and j % block_size == i % block_size          (same column, earlier rows)
- prev_block: j // block_size == i // block_size - 1, or j == i    (the whole previous row, and itself)
Every query sees at least itself. The training `forward` computes the factorised kinds on
reshaped blocks, O(n * sqrt n) memory and compute when block_size ~ sqrt n_ctx; no n x n mask is built.
With `causal=False` (the masked upsamplers: every position sees the whole window) the conditions
`j <= i` are dropped: dense sees every key, row its whole row, column its whole column, prev_block
the whole previous row and its own whole row. Such a transformer has no `step` (nothing is decoded in order).

A block has one implementation, `block_apply` (torch.nn.functional on the block's own parameters; only
the attention differs, passed in as a function): `Block.forward` gives it attention over the whole
sequence, `block_step` attention against the cache. Sampling goes through `Transformer.step` with a
`KVCache` made by `Transformer.new_cache`: one preallocated key and value buffer per layer, new keys
written in place, the layer parameters fetched once per cache. At batch 1 on a CPU a small model's step is
bound by Python and dispatch overhead, so a single query attends to a view of the cache (a strided view for
`column`); a larger one's by reading its weights from memory (a matrix-vector product runs on one core),
so on a CPU the cache holds the linear weights packed in one column slice per thread (`BlockWeights.packed`),
which `affine` multiplies in one batched kernel spread over the threads. Call it under
`torch.inference_mode()` and make the cache in the same mode; `step` never applies dropout. A prime
prefilled from position 0 runs the training computation; one that starts mid-cache (t > 1, pos > 0) uses
an explicit t x (pos + t) mask, so prefill long primes from 0 or in chunks. Under autocast the cache may be
float32 or the autocast dtype.

Positions: the prior adds learned absolute embeddings to the input; with `rotary=True` the queries and
keys of every layer are also rotated by their position (RoPE, Su et al. 2021), so a query-key score
depends on how far apart the two are. A rule like "look one beat back" is then one pattern shared by
every position instead of one to learn per position pair.

Read top-down: masks -> rotary -> attention functions -> CausalSelfAttention, MLP (parameters) -> block_apply
-> Block, block_step -> TransformerConfig -> KVCache -> Transformer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

ATTENTION_KINDS = ("dense", "row", "column", "prev_block")
FACTORISED_KINDS = ("row", "column", "prev_block")


class TransformerError(ValueError):
    """Bad transformer configuration, input shape or cache position."""


# ---------------------------------------------------------------------------------------------
# Masks and attention


def attention_mask(kind: str, queries: Tensor, keys: Tensor, *, block_size: int) -> Tensor:
    """Which keys each query may see: LongTensor[Q] positions, LongTensor[K] positions -> BoolTensor[Q x K].

    Dense n x n masks are built only for prefills that start mid-cache; training never builds one.
    """
    i = queries[:, None]  # (Q, 1)
    j = keys[None, :]  # (1, K)
    if kind == "dense":
        return j <= i
    if kind == "row":
        return (j <= i) & (j // block_size == i // block_size)
    if kind == "column":
        return (j <= i) & (j % block_size == i % block_size)
    if kind == "prev_block":
        return (j // block_size == i // block_size - 1) | (j == i)
    raise TransformerError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")


def prev_block_mask(block_size: int, *, device: torch.device | str | None = None) -> Tensor:
    """What a query at offset o of its row sees of [previous row, own row]: BoolTensor[b x 2b].

    Row o is True on the b keys of the previous row and on own-row key o.
    """
    own = torch.eye(block_size, dtype=torch.bool, device=device)  # (b, b)
    previous = torch.ones(block_size, block_size, dtype=torch.bool, device=device)  # (b, b)
    return torch.cat([previous, own], dim=1)  # (b, 2b)


def with_previous_row(x: Tensor) -> Tensor:
    """Each row's keys preceded by the previous row's (zeros before the first row).

    Tensor[B x H x rows x b x hd] -> Tensor[B x H x rows x 2b x hd].
    """
    previous = F.pad(x[:, :, :-1], (0, 0, 0, 0, 1, 0))  # (B, H, rows, b, hd), shifted down one row
    return torch.cat([previous, x], dim=3)


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings


def rotary_tables(n_ctx: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of angle p * base^(-2i / head_dim) for positions p < n_ctx: 2 x Tensor[n_ctx x head_dim / 2]."""
    if head_dim % 2:
        raise TransformerError(f"rotary positions need an even head width, got {head_dim}")
    inverse = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd / 2,)
    angles = torch.arange(n_ctx, dtype=torch.float64)[:, None] * inverse[None]  # (n_ctx, hd / 2)
    return angles.cos().float(), angles.sin().float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x[i], x[i + hd/2]) by its position's angle.
    x: Tensor[... x T x hd] (e.g. B x H x T x hd); cos, sin: Tensor[T x hd / 2] -> the shape of x."""
    first, second = x.chunk(2, dim=-1)  # 2 x (B, H, T, hd / 2)
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


def blockwise_attention(
    q: Tensor, k: Tensor, v: Tensor, *, kind: str, block_size: int, dropout_p: float = 0.0, causal: bool = True
) -> Tensor:
    """Factorised causal attention on rows of `block_size` positions.

    q, k, v: Tensor[B x H x T x hd] for positions 0..T-1 -> Tensor[B x H x T x hd].
    T is zero-padded on the right to a multiple of block_size; padded positions come after every
    real one, so no real query sees them, and their outputs are dropped. With causal=False a query sees
    its whole row, column, or previous and own row; T must then be a multiple of block_size. The short sequences
    (rows, columns) are folded into the head dimension so SDPA gets 4-d inputs (its fused kernels
    take nothing else).
    """
    B, H, T, hd = q.shape
    b = block_size
    pad = -T % b
    if pad and not causal:
        raise TransformerError(f"bidirectional {kind} attention needs a length that is a multiple of {b}, got {T}")
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))  # (B, H, T + pad, hd)
    rows = (T + pad) // b
    if kind == "row":
        q, k, v = (x.reshape(B, H * rows, b, hd) for x in (q, k, v))  # (B, H * rows, b, hd): one sequence per row
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    elif kind == "column":
        q, k, v = (
            x.reshape(B, H, rows, b, hd).transpose(2, 3).reshape(B, H * b, rows, hd) for x in (q, k, v)
        )  # (B, H * b, rows, hd): one sequence per column
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
        y = y.view(B, H, b, rows, hd).transpose(2, 3)  # (B, H, rows, b, hd)
    elif kind == "prev_block":
        # rows as SDPA's head dimension and B * H as its batch, so that one mask Tensor[1 x rows x b x 2b] is
        # broadcast over the batch: a 4-d mask takes torch's fused CPU kernel, where a mask repeated to
        # (B * H * rows) sequences measured 1.7x slower forward and backward (the unfused path)
        q = q.reshape(B * H, rows, b, hd)  # (B * H, rows, b, hd)
        k, v = (with_previous_row(x.reshape(B, H, rows, b, hd)).reshape(B * H, rows, 2 * b, hd) for x in (k, v))
        if causal:
            mask = prev_block_mask(b, device=q.device).repeat(rows, 1, 1)  # (rows, b, 2b)
        else:  # the whole previous row and the whole own row
            mask = torch.ones(rows, b, 2 * b, dtype=torch.bool, device=q.device)
        mask[0, :, :b] = False  # the first row has no previous row (its keys there are zero padding)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None], dropout_p=dropout_p)  # (B * H, rows, b, hd)
    else:
        raise TransformerError(f"blockwise attention needs one of {FACTORISED_KINDS}, got {kind!r}")
    return y.reshape(B, H, rows * b, hd)[:, :, :T]  # (B, H, T, hd)


def fp32_attention(q: Tensor) -> bool:
    """Whether attention trains in fp32 although autocast runs the rest in bf16: on a CPU, where the bf16
    backward of SDPA measured 1.5-15x slower than fp32's for heads of 16-48 and for rows of 16-64 positions
    (the factorised kinds), so that a bf16 training step of Jukebox's test prior, or of the `small` preset's
    upsamplers, takes 17-20% less time with attention in fp32 (bench/bench_train_step.py). Sampling (no
    gradients) keeps bf16 attention, whose forward is as fast or faster."""
    return q.dtype == torch.bfloat16 and q.requires_grad and q.device.type == "cpu"


def causal_attention(
    q: Tensor, k: Tensor, v: Tensor, *, kind: str, block_size: int, dropout_p: float = 0.0, causal: bool = True
) -> Tensor:
    """Attention of one kind over a whole sequence from position 0 (causal=False: bidirectional).

    q, k, v: Tensor[B x H x T x hd] -> Tensor[B x H x T x hd].
    """
    if fp32_attention(q):
        with torch.autocast(q.device.type, enabled=False):
            y = causal_attention(q.float(), k.float(), v.float(), kind=kind, block_size=block_size,
                                 dropout_p=dropout_p, causal=causal)
        return y.to(q.dtype)
    if kind == "dense":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    return blockwise_attention(q, k, v, kind=kind, block_size=block_size, dropout_p=dropout_p, causal=causal)


def single_query_attention(
    q: Tensor, keys: Tensor, values: Tensor, *, kind: str, pos: int, block_size: int, prev_mask: Tensor
) -> Tensor:
    """One new query at `pos` against the cache, through views only (the sampling hot path).

    q: Tensor[B x H x 1 x hd]; keys, values: Tensor[B x H x n_ctx x hd] already holding
    positions 0..pos; prev_mask: BoolTensor[b x 2b] from `prev_block_mask` -> Tensor[B x H x 1 x hd].
    """
    if kind == "dense":
        return F.scaled_dot_product_attention(q, keys.narrow(2, 0, pos + 1), values.narrow(2, 0, pos + 1))
    row_start = pos - pos % block_size
    if kind == "row":
        row = pos + 1 - row_start
        return F.scaled_dot_product_attention(q, keys.narrow(2, row_start, row), values.narrow(2, row_start, row))
    if kind == "column":
        column = slice(pos % block_size, pos + 1, block_size)
        return F.scaled_dot_product_attention(q, keys[:, :, column], values[:, :, column])
    if row_start == 0:  # prev_block in the first row: only itself
        return values.narrow(2, pos, 1).to(q.dtype)
    offset = pos - row_start
    window = block_size + offset + 1  # the previous row, then the own row up to pos
    mask = prev_mask[offset : offset + 1, :window]  # (1, window)
    start = row_start - block_size
    return F.scaled_dot_product_attention(
        q, keys.narrow(2, start, window), values.narrow(2, start, window), attn_mask=mask
    )


def cached_attention(
    q: Tensor, keys: Tensor, values: Tensor, *, kind: str, pos: int, block_size: int, prev_mask: Tensor
) -> Tensor:
    """Queries for positions pos..pos+t-1 against a cache that already holds their keys and values.

    q: Tensor[B x H x t x hd]; keys, values: Tensor[B x H x n_ctx x hd] -> Tensor[B x H x t x hd].
    """
    t = q.shape[2]
    if t == 1:
        return single_query_attention(q, keys, values, kind=kind, pos=pos, block_size=block_size, prev_mask=prev_mask)
    if pos == 0:  # a prefill from the start is exactly the training computation
        return causal_attention(q, keys[:, :, :t], values[:, :, :t], kind=kind, block_size=block_size)
    # A prefill that starts mid-cache: explicit mask over the keys any of these queries can see.
    first = {"row": pos - pos % block_size, "prev_block": max(0, pos - pos % block_size - block_size)}.get(kind, 0)
    mask = attention_mask(
        kind,
        torch.arange(pos, pos + t, device=q.device),
        torch.arange(first, pos + t, device=q.device),
        block_size=block_size,
    )  # (t, pos + t - first)
    return F.scaled_dot_product_attention(q, keys[:, :, first : pos + t], values[:, :, first : pos + t], attn_mask=mask)


# ---------------------------------------------------------------------------------------------
# Modules


class CausalSelfAttention(nn.Module):
    """The parameters of multi-head self-attention of one kind: a fused QKV projection and the output
    projection. Queries, keys and values are A = attention_dim wide (A = D by default; Jukebox used
    A = D / 4), split into `heads` heads of A / heads. `Block` runs it (see `block_apply`)."""

    def __init__(
        self, *, width: int, heads: int, kind: str, block_size: int, dropout: float = 0.0, bias: bool = True,
        attention_dim: int | None = None, causal: bool = True,
    ) -> None:
        super().__init__()
        attention_dim = width if attention_dim is None else attention_dim
        self.qkv = nn.Linear(width, 3 * attention_dim, bias=bias)
        self.proj = nn.Linear(attention_dim, width, bias=bias)
        self.heads = heads
        self.kind = kind
        self.block_size = block_size
        self.dropout = dropout
        self.causal = causal


class MLP(nn.Module):
    """The parameters of Linear -> GELU -> Linear (`Block` runs it, see `block_apply`).

    GELU in GPT-2's tanh form: on CPU the exact (erf) form goes through a oneDNN call that costs
    ~6 us at batch 1, about an eighth of a sampling step at the reference size.
    """

    def __init__(self, *, width: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(width, hidden, bias=bias)
        self.proj = nn.Linear(hidden, width, bias=bias)


@dataclass(frozen=True)
class BlockWeights:
    """The parameters of one block, as `block_apply` takes them (fetched once per cache for `Transformer.step`).

    Views of the module's own tensors (in-place updates are seen), or copies from `packed`. Linear weights are
    transposed views, Tensor[in x out], ready for torch.addmm; biases are None when the model has none.
    """

    ln1_weight: Tensor
    ln1_bias: Tensor | None
    qkv_t: Tensor
    qkv_bias: Tensor | None
    proj_t: Tensor
    proj_bias: Tensor | None
    ln2_weight: Tensor
    ln2_bias: Tensor | None
    fc_t: Tensor
    fc_bias: Tensor | None
    out_t: Tensor
    out_bias: Tensor | None

    def packed(self, slices: int) -> BlockWeights:
        """The linear weights copied by `pack_linear` into `slices` column slices, for `affine` to spread over as
        many threads. LayerNorm parameters stay the module's own."""
        qkv_t, qkv_bias = pack_linear(self.qkv_t, self.qkv_bias, slices)
        proj_t, proj_bias = pack_linear(self.proj_t, self.proj_bias, slices)
        fc_t, fc_bias = pack_linear(self.fc_t, self.fc_bias, slices)
        out_t, out_bias = pack_linear(self.out_t, self.out_bias, slices)
        return replace(self, qkv_t=qkv_t, qkv_bias=qkv_bias, proj_t=proj_t, proj_bias=proj_bias, fc_t=fc_t,
                       fc_bias=fc_bias, out_t=out_t, out_bias=out_bias)


def pack_linear(weight_t: Tensor, bias: Tensor | None, slices: int) -> tuple[Tensor, Tensor | None]:
    """A linear layer's weight_t Tensor[in x out] and bias Tensor[out] as `affine` takes them packed: copies,
    Tensor[S x in x out/S] and Tensor[S x 1 x out/S]; contiguous Tensor[in x out] and the bias itself when
    S is 1 or does not divide out (a transposed view is read ~1.4x slower once the weights outgrow the cache)."""
    n_in, n_out = weight_t.shape
    if slices <= 1 or n_out % slices:
        return weight_t.contiguous(), bias
    w = weight_t.reshape(n_in, slices, n_out // slices).permute(1, 0, 2).contiguous()
    return w, None if bias is None else bias.reshape(slices, 1, n_out // slices).clone()


def step_slices(device: torch.device | str) -> int | None:
    """How many column slices a cache packs its weights into by default: one per torch thread on a CPU with
    more than one (a sampling step there is bound by reading the weights), else None: the module's own
    tensors (on one thread, contiguous copies would read ~1.4x faster, but round differently from what
    the recorded demo codes were sampled with; `slices=1` asks for them)."""
    threads = torch.get_num_threads()
    return threads if torch.device(device).type == "cpu" and threads > 1 else None


def affine(x: Tensor, weight_t: Tensor, bias: Tensor | None) -> Tensor:
    """x Tensor[N x in] @ weight_t (+ bias) -> Tensor[N x out], one kernel.

    weight_t is Tensor[in x out] with bias Tensor[out], or, packed by `BlockWeights.packed`, Tensor[S x in x out/S]
    with bias Tensor[S x 1 x out/S]: S slices of the output columns, which one batched kernel spreads over S
    threads (a CPU sampling step is bound by reading the weights from memory, and a single matrix-vector
    product runs on one core)."""
    if weight_t.dim() == 2:
        return torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)
    x_s = x.expand(weight_t.shape[0], *x.shape)  # (S, N, in), no copy
    y = torch.bmm(x_s, weight_t) if bias is None else torch.baddbmm(bias, x_s, weight_t)  # (S, N, out / S)
    return y.transpose(0, 1).reshape(x.shape[0], -1)


def block_apply(x: Tensor, w: BlockWeights, attend: Callable[[Tensor], Tensor], dropout_p: float = 0.0) -> Tensor:
    """The one implementation of a pre-LayerNorm block, for training, a whole window and the cached step.

    x: Tensor[N x D] (rows of any batch and positions); `attend` maps the fused projections
    Tensor[N x 3A] (queries, keys, values) to the attention output Tensor[N x A], the only part that differs
    between a whole sequence and a cached step. dropout_p: residual dropout (0 when not training).
    """
    D = x.shape[1]
    h = F.layer_norm(x, (D,), w.ln1_weight, w.ln1_bias)
    y = affine(attend(affine(h, w.qkv_t, w.qkv_bias)), w.proj_t, w.proj_bias)  # (N, D)
    x = x + (F.dropout(y, dropout_p) if dropout_p else y)
    h = F.layer_norm(x, (D,), w.ln2_weight, w.ln2_bias)
    y = affine(F.gelu(affine(h, w.fc_t, w.fc_bias), approximate="tanh"), w.out_t, w.out_bias)  # (N, D)
    return x + (F.dropout(y, dropout_p) if dropout_p else y)


class Block(nn.Module):
    """Pre-LayerNorm transformer block. Tensor[B x T x D] -> Tensor[B x T x D] (see `block_apply`)."""

    def __init__(
        self, *, width: int, heads: int, kind: str, block_size: int, attention_dim: int, mlp_dim: int,
        dropout: float, bias: bool, causal: bool = True,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width, bias=bias)
        self.attn = CausalSelfAttention(
            width=width, heads=heads, kind=kind, block_size=block_size, dropout=dropout, bias=bias,
            attention_dim=attention_dim, causal=causal,
        )
        self.ln2 = nn.LayerNorm(width, bias=bias)
        self.mlp = MLP(width=width, hidden=mlp_dim, bias=bias)
        self.dropout = dropout

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`rotary`: (cos, sin) Tensor[>= T x hd / 2] from `rotary_tables`, or None."""
        B, T, D = x.shape
        attn = self.attn
        dropout_p = self.dropout if self.training else 0.0

        def attend(qkv: Tensor) -> Tensor:  # (B * T, 3A) -> (B * T, A), the whole sequence at once
            A = qkv.shape[1] // 3
            q, k, v = qkv.view(B, T, 3, attn.heads, A // attn.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
            if rotary is not None:
                cos, sin = rotary[0][:T], rotary[1][:T]
                q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            y = causal_attention(q, k, v, kind=attn.kind, block_size=attn.block_size, dropout_p=dropout_p,
                                 causal=attn.causal)  # (B, H, T, hd)
            return y.transpose(1, 2).reshape(B * T, A)

        return block_apply(x.reshape(B * T, D), self.weights(), attend, dropout_p).view(B, T, D)

    def weights(self) -> BlockWeights:
        """This block's parameters as plain references, for the cached step."""
        return BlockWeights(
            ln1_weight=self.ln1.weight, ln1_bias=self.ln1.bias,
            qkv_t=self.attn.qkv.weight.t(), qkv_bias=self.attn.qkv.bias,
            proj_t=self.attn.proj.weight.t(), proj_bias=self.attn.proj.bias,
            ln2_weight=self.ln2.weight, ln2_bias=self.ln2.bias,
            fc_t=self.mlp.fc.weight.t(), fc_bias=self.mlp.fc.bias,
            out_t=self.mlp.proj.weight.t(), out_bias=self.mlp.proj.bias,
        )  # fmt: skip


def block_step(
    x: Tensor, w: BlockWeights, keys: Tensor, values: Tensor, *, kind: str, pos: int, block_size: int, prev_mask: Tensor,
    rotary: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """`block_apply` for positions pos..pos+t-1 of B sequences, writing their keys and values into the cache.

    x: Tensor[(B * t) x D], batch-major; keys, values: Tensor[B x H x n_ctx x hd] -> Tensor[(B * t) x D].
    rotary: (cos, sin) of positions pos..pos+t-1, Tensor[t x hd / 2] each, or None. The cache holds rotated keys.
    """
    B, H, hd = keys.shape[0], keys.shape[1], keys.shape[3]
    t = x.shape[0] // B

    def attend(qkv: Tensor) -> Tensor:  # (B * t, 3A) -> (B * t, A), A = H * hd, against the cache
        if t == 1:  # sampling: a view, no permute
            heads = qkv.view(B, 3, H, 1, hd)  # (B, 3, H, 1, hd)
            q, k, v = heads.unbind(1)  # 3 x (B, H, 1, hd)
            if rotary is not None:  # queries and keys in one rotation: half the kernel launches
                q, k = rotate(heads[:, :2], *rotary).unbind(1)
        else:
            q, k, v = qkv.view(B, t, 3, H, hd).permute(2, 0, 3, 1, 4)  # 3 x (B, H, t, hd)
            if rotary is not None:
                q, k = rotate(torch.stack((q, k)), *rotary).unbind(0)
        keys.narrow(2, pos, t).copy_(k)
        values.narrow(2, pos, t).copy_(v)
        y = cached_attention(q, keys, values, kind=kind, pos=pos, block_size=block_size, prev_mask=prev_mask)
        return y.transpose(1, 2).reshape(B * t, H * hd)

    return block_apply(x, w, attend)


def window_positions(kind: str, pos: Tensor, *, n_ctx: int, block_size: int) -> tuple[Tensor | None, Tensor]:
    """The cache positions a query at `pos` (a 0-dim LongTensor) may read, as many whatever the position:
    LongTensor[W] positions inside the cache (None: all of them, in order) and BoolTensor[W] which of them it
    sees (`attention_mask`'s rule). W is n_ctx for dense, block_size for row, n_ctx / block_size for column,
    2 * block_size for prev_block (the previous row, then the own row); positions before 0 read position 0 unseen."""
    b = block_size
    row_start = pos - pos % b
    if kind == "dense":
        return None, torch.arange(n_ctx, device=pos.device) <= pos
    if kind == "row":
        index = row_start + torch.arange(b, device=pos.device)
    elif kind == "column":
        index = pos % b + b * torch.arange(n_ctx // b, device=pos.device)
    elif kind == "prev_block":
        index = row_start - b + torch.arange(2 * b, device=pos.device)
        seen = ((index >= 0) & (index < row_start)) | (index == pos)
        return index.clamp(min=0), seen
    else:
        raise TransformerError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
    return index, index <= pos


def window_attention(q: Tensor, keys: Tensor, values: Tensor, index: Tensor | None, seen: Tensor) -> Tensor:
    """One query per sequence against the cache positions `index` (those `seen` only), written as plain
    products and a softmax so that a compiler fuses them into one loop: on a CPU, torch's attention kernel
    called on the whole cache under a mask took ~60 us a layer at n_ctx 1024 (profiled), and a compiled token
    step of Jukebox's test-prior shape ran 1.35x faster written this way.

    q: Tensor[B x H x 1 x hd]; keys, values: Tensor[B x H x n_ctx x hd]; index: LongTensor[W] or None (the
    whole cache: no gathered copy); seen: BoolTensor[W] -> Tensor[B x H x 1 x hd]."""
    k, v = (keys, values) if index is None else (keys.index_select(2, index), values.index_select(2, index))
    scores = (q * k).sum(-1, dtype=torch.float32) * q.shape[-1] ** -0.5  # (B, H, W)
    weights = torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1).to(v.dtype)
    return (weights.unsqueeze(-1) * v).sum(2, keepdim=True)  # (B, H, 1, hd)


def block_graph_step(
    x: Tensor, w: BlockWeights, keys: Tensor, values: Tensor, *, kind: str, pos: Tensor, block_size: int,
    rotary: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """`block_step` for one new position of B sequences, with `pos` a 0-dim LongTensor: every shape fixed
    whatever the position (the new key and value go in by index, attention reads the fixed-size window of
    `window_positions`), so that one compiled graph, or one CUDA graph, serves every step.

    x: Tensor[B x D]; keys, values: Tensor[B x H x n_ctx x hd].
    """
    B, H, n_ctx, hd = keys.shape
    at = pos.view(1)

    def attend(qkv: Tensor) -> Tensor:  # (B, 3A) -> (B, A)
        heads = qkv.view(B, 3, H, 1, hd)
        q, k, v = heads.unbind(1)  # 3 x (B, H, 1, hd)
        if rotary is not None:
            q, k = rotate(heads[:, :2], *rotary).unbind(1)
        keys.index_copy_(2, at, k)
        values.index_copy_(2, at, v)
        index, seen = window_positions(kind, pos, n_ctx=n_ctx, block_size=block_size)
        return window_attention(q, keys, values, index, seen).transpose(1, 2).reshape(B, H * hd)

    return block_apply(x, w, attend)


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of a prior's transformer.

    attention: kinds cycled over the layers, e.g. ("row", "column", "prev_block") as in Jukebox.
    block_size: row length of the factorised kinds; n_ctx must be a multiple of it when any is used.
    attention_width: width of queries, keys and values as a fraction of `width` (Jukebox: 0.25);
        each head is width * attention_width / heads wide (flash-attention kernels take at most 256).
    mlp_ratio: the MLP's hidden width as a multiple of `width` (GPT-2: 4, Jukebox: 1).
    checkpoint_blocks: in training, keep only each block's input and recompute the rest in the
        backward pass (torch.utils.checkpoint): activations of one block instead of all, ~1/3 more compute.
    causal: False for a bidirectional transformer (masked upsamplers; see the module docstring).
    """

    width: int = 128
    depth: int = 4
    heads: int = 2
    n_ctx: int = 1024
    attention: tuple[str, ...] = ("dense",)
    block_size: int = 32
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    rotary: bool = False  # rotate queries and keys by position (relative positions); see the module docstring
    attention_width: float = 1.0
    checkpoint_blocks: bool = False
    causal: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", tuple(self.attention))  # YAML gives lists
        for name in ("width", "depth", "heads", "n_ctx", "block_size"):
            if getattr(self, name) < 1:
                raise TransformerError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mlp_ratio", "attention_width"):
            if not getattr(self, name) > 0:
                raise TransformerError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.attention_width * self.width != self.attention_dim or self.attention_dim % self.heads:
            raise TransformerError(
                f"width={self.width} x attention_width={self.attention_width} is not a whole multiple of heads={self.heads}"
            )
        if self.mlp_ratio * self.width != self.mlp_dim:
            raise TransformerError(f"width={self.width} x mlp_ratio={self.mlp_ratio} is not a whole number")
        if not self.attention:
            raise TransformerError(f"attention pattern is empty; use kinds from {ATTENTION_KINDS}")
        unknown = [kind for kind in self.attention if kind not in ATTENTION_KINDS]
        if unknown:
            raise TransformerError(f"unknown attention kind(s) {unknown}; expected kinds from {ATTENTION_KINDS}")
        if self.factorised and self.n_ctx % self.block_size:
            raise TransformerError(
                f"n_ctx={self.n_ctx} is not a multiple of block_size={self.block_size} (needed by factorised attention)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise TransformerError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rotary and self.head_dim % 2:
            raise TransformerError(f"rotary positions need an even head width, got {self.head_dim}")

    @property
    def attention_dim(self) -> int:
        """Width of queries, keys and values (all heads together)."""
        return int(round(self.width * self.attention_width))

    @property
    def head_dim(self) -> int:
        return self.attention_dim // self.heads

    @property
    def mlp_dim(self) -> int:
        return int(round(self.width * self.mlp_ratio))

    @property
    def factorised(self) -> bool:
        """True when any layer uses row, column or prev_block attention."""
        return any(kind in FACTORISED_KINDS for kind in self.attention)

    def layer_kinds(self) -> tuple[str, ...]:
        """The attention kind of every layer (the pattern cycled over depth)."""
        return tuple(self.attention[i % len(self.attention)] for i in range(self.depth))


@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for one sampling run, preallocated to n_ctx.

    keys, values: one Tensor[B x H x n_ctx x hd] per layer; position p lives at [:, :, p].
    weights: every block's parameters, fetched once: the module's own tensors, or packed copies for a
        CPU (`BlockWeights.packed`); make a new cache after changing parameters.
    final_weight, final_bias: the final LayerNorm's parameters, fetched likewise.
    prev_mask: BoolTensor[b x 2b] from `prev_block_mask`.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    weights: tuple[BlockWeights, ...]
    final_weight: Tensor
    final_bias: Tensor | None
    prev_mask: Tensor
    head_t: Tensor | None = None  # a prior's output projection, packed likewise (`Prior.new_cache`), or None

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def tensors(self) -> list[Tensor]:
        """Every tensor the cache holds (buffers, weights, masks): what stays at one address for a sampling run."""
        held = [*self.keys, *self.values, self.final_weight, self.final_bias, self.prev_mask, self.head_t]
        for weights in self.weights:
            held.extend(getattr(weights, field.name) for field in fields(weights))
        return [t for t in held if t is not None]


class Transformer(nn.Module):
    """Stack of pre-LayerNorm blocks and a final LayerNorm over hidden states.
    Tensor[B x T x D] -> Tensor[B x T x D], causal, T <= n_ctx."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.kinds = config.layer_kinds()
        self.blocks = nn.ModuleList(
            Block(
                width=config.width, heads=config.heads, kind=kind, block_size=config.block_size,
                attention_dim=config.attention_dim, mlp_dim=config.mlp_dim, dropout=config.dropout, bias=config.bias,
                causal=config.causal,
            )
            for kind in self.kinds
        )  # fmt: skip
        self.ln_f = nn.LayerNorm(config.width, bias=config.bias)
        if config.rotary:  # not saved: recomputed from the config
            cos, sin = rotary_tables(config.n_ctx, config.head_dim)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.depth)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2 init: linear weights N(0, 0.02), biases 0; LayerNorm 1 and 0."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B x T x D] for positions 0..T-1 -> Tensor[B x T x D]."""
        if x.dim() != 3 or x.shape[2] != self.config.width:
            raise TransformerError(f"expected input [B x T x {self.config.width}], got {list(x.shape)}")
        if x.shape[1] > self.config.n_ctx:
            raise TransformerError(f"sequence length {x.shape[1]} exceeds n_ctx={self.config.n_ctx}")
        rotary = self.rotary()
        recompute = self.config.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # the RNG state is kept, so dropout draws the same masks when recomputed
                x = checkpoint(block, x, rotary, use_reentrant=False)
            else:
                x = block(x, rotary)
        return self.ln_f(x)

    def rotary(self) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) tables Tensor[n_ctx x hd / 2] when the config asks for rotary positions, else None."""
        return (self.rotary_cos, self.rotary_sin) if self.config.rotary else None

    def new_cache(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        slices: int | None | str = "auto",
    ) -> KVCache:
        """Zeroed key/value buffers for `batch` sequences: one Tensor[B x H x n_ctx x hd] each per layer.

        Make it in the mode `step` runs in (under torch.inference_mode() for sampling).
        device / dtype default to the parameters'. `slices`: the layer weights the cache holds, packed by
        `BlockWeights.packed` into that many column slices (copies: make a new cache after changing the
        parameters); None: the module's own tensors; "auto": `step_slices` (one per torch thread on a CPU).
        """
        c = self.config
        reference = self.ln_f.weight
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        if slices == "auto":
            slices = step_slices(device)
        shape = (batch, c.heads, c.n_ctx, c.head_dim)

        def buffers() -> tuple[Tensor, ...]:
            return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(c.depth))

        return KVCache(
            keys=buffers(),
            values=buffers(),
            weights=tuple(block.weights() if slices is None else block.weights().packed(slices)
                          for block in self.blocks),
            final_weight=self.ln_f.weight,
            final_bias=self.ln_f.bias,
            prev_mask=prev_block_mask(c.block_size, device=device),
        )

    def graph_step(self, x: Tensor, cache: KVCache, pos: Tensor) -> Tensor:
        """`step` for one position given as a 0-dim LongTensor: Tensor[B x 1 x D] -> Tensor[B x 1 x D], with
        shapes that do not depend on the position (see `block_graph_step`), for `torch.compile` / CUDA graphs."""
        B, _, D = x.shape
        rotary = None
        if self.config.rotary:
            at = pos.view(1)
            rotary = (self.rotary_cos.index_select(0, at), self.rotary_sin.index_select(0, at))  # 2 x (1, hd / 2)
        x = x.reshape(B, D)
        for kind, weights, keys, values in zip(self.kinds, cache.weights, cache.keys, cache.values):
            x = block_graph_step(x, weights, keys, values, kind=kind, pos=pos, block_size=self.config.block_size,
                                 rotary=rotary)
        return F.layer_norm(x, (D,), cache.final_weight, cache.final_bias).view(B, 1, D)

    def step(self, x: Tensor, cache: KVCache, pos: int) -> Tensor:
        """Hidden states for positions pos..pos+t-1, given the cache filled for positions < pos.

        x: Tensor[B x t x D] (t = 1 to sample, t > 1 to prefill a prime) -> Tensor[B x t x D],
        equal to forward(whole sequence)[:, pos : pos + t]. Writes their keys and values into `cache`.
        """
        B, t, D = x.shape
        if not self.config.causal:
            raise TransformerError("a bidirectional transformer has no cached step: run forward on the whole window")
        if B != cache.batch or D != self.config.width:
            raise TransformerError(f"expected input [{cache.batch} x t x {self.config.width}], got {list(x.shape)}")
        if pos < 0 or pos + t > self.config.n_ctx:
            raise TransformerError(f"positions {pos}..{pos + t - 1} fall outside the context of {self.config.n_ctx}")
        block_size, prev_mask = self.config.block_size, cache.prev_mask
        rotary = None
        if self.config.rotary:
            rotary = (self.rotary_cos.narrow(0, pos, t), self.rotary_sin.narrow(0, pos, t))  # 2 x (t, hd / 2)
        x = x.reshape(B * t, D)  # (B * t, D)
        for kind, weights, keys, values in zip(self.kinds, cache.weights, cache.keys, cache.values):
            x = block_step(x, weights, keys, values, kind=kind, pos=pos, block_size=block_size, prev_mask=prev_mask,
                           rotary=rotary)
        return F.layer_norm(x, (D,), cache.final_weight, cache.final_bias).view(B, t, D)
