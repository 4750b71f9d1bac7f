"""The prior's transformer: cached steps equal the full forward, masks are exactly the definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from housebox.models.transformer import (
    ATTENTION_KINDS,
    Transformer,
    TransformerConfig,
    TransformerError,
    affine,
    pack_linear,
    rotary_tables,
    rotate,
    window_attention,
    window_positions,
)

PATTERNS = [(kind,) for kind in ATTENTION_KINDS] + [("row", "column", "prev_block", "dense")]
BLOCK = 4
N_CTX = 24


def tiny(attention: tuple[str, ...], *, depth: int = 4, seed: int = 0, n_ctx: int = N_CTX,
         rotary: bool = False, attention_width: float = 1.0, mlp_ratio: float = 4.0) -> Transformer:
    """A small transformer with weights large enough that attention is far from uniform."""
    torch.manual_seed(seed)
    config = TransformerConfig(width=16, depth=depth, heads=2, n_ctx=n_ctx, attention=attention, block_size=BLOCK,
                               rotary=rotary, attention_width=attention_width, mlp_ratio=mlp_ratio)
    model = Transformer(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model


def visible(kind: str, i: int, j: int, b: int = BLOCK) -> bool:
    """The definitions, written out independently of the module: may query i see key j?"""
    if kind == "dense":
        return j <= i
    if kind == "row":
        return j <= i and j // b == i // b
    if kind == "column":
        return j <= i and j % b == i % b
    return j // b == i // b - 1 or j == i  # prev_block


def mask_of(kind: str, T: int) -> torch.Tensor:
    """BoolTensor[T x T] from `visible`."""
    return torch.tensor([[visible(kind, i, j) for j in range(T)] for i in range(T)])


def reference_rotation(x: torch.Tensor) -> torch.Tensor:
    """RoPE written as complex multiplication: pair (x[i], x[i + hd/2]) at position p turns by p * 10000^(-2i/hd).
    Tensor[B x H x T x hd] -> Tensor[B x H x T x hd]."""
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    angle = torch.arange(T, dtype=torch.float64)[:, None] * 10000.0 ** (-2.0 * torch.arange(half) / hd)[None]
    turned = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([turned.real, turned.imag], dim=-1).to(x.dtype)


def reference_forward(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Slow reference: every layer attends through an explicit T x T mask and a plain softmax."""
    B, T, D = x.shape
    H = model.config.heads
    A = int(D * model.config.attention_width)  # width of queries, keys and values
    for block in model.blocks:
        h = block.ln1(x)
        q, k, v = block.attn.qkv(h).split(A, dim=-1)  # 3 x (B, T, A)
        q, k, v = (t.view(B, T, H, A // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if model.config.rotary:
            q, k = reference_rotation(q), reference_rotation(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(A // H)  # (B, H, T, T)
        scores = scores.masked_fill(~mask_of(block.attn.kind, T), float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, A)  # (B, T, A)
        x = x + block.attn.proj(y)
        x = x + block.mlp.proj(F.gelu(block.mlp.fc(block.ln2(x)), approximate="tanh"))
    return model.ln_f(x)


def gradient_pattern(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """BoolTensor[T x T]: row t is True where d output_t / d input_s is non-zero (x: Tensor[1 x T x D], requires grad)."""
    y = model(x)
    T = x.shape[1]
    seen = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        seen[t] = grad[0].abs().sum(dim=-1) > 0
    return seen


def run_steps(model: Transformer, x: torch.Tensor, chunks: list[int],
              slices: int | None | str = "auto") -> torch.Tensor:
    """Feed x Tensor[B x T x D] through `step` in chunks of the given sizes -> Tensor[B x T x D]."""
    with torch.inference_mode():
        cache = model.new_cache(x.shape[0], device=x.device, dtype=x.dtype, slices=slices)
        outputs, pos = [], 0
        for size in chunks:
            outputs.append(model.step(x[:, pos : pos + size], cache, pos))
            pos += size
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("rotary", [False, True], ids=["learned", "rotary"])
@pytest.mark.parametrize("attention", PATTERNS, ids="-".join)
@pytest.mark.parametrize("batch", [1, 3])
def test_steps_equal_forward(attention: tuple[str, ...], batch: int, rotary: bool) -> None:
    model = tiny(attention, rotary=rotary)
    T = 22  # not a multiple of the block: the forward pads the last row
    x = torch.randn(batch, T, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(x)
    one_by_one = run_steps(model, x, [1] * T)
    prefilled = run_steps(model, x, [7] + [1] * (T - 7))  # a prime from position 0, then sampling
    mid_prefill = run_steps(model, x, [3, 1, 6, 1, 5] + [1] * (T - 16))  # primes that start mid-row
    for got in (one_by_one, prefilled, mid_prefill):
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("slices", [None, 1, 2, 3])
def test_packed_weights_step_equals_forward(slices: int | None) -> None:
    """The cache's weights packed in column slices (what a CPU step reads: one slice per thread) give the
    forward's outputs; 3 slices divide the fused QKV (48 columns) but not the output projection (16), which
    stays one contiguous matrix."""
    model = tiny(("row", "column", "prev_block", "dense"))
    x = torch.randn(2, 22, 16, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = model(x)
        w = model.new_cache(2, slices=slices).weights[0]
    own = model.blocks[0].attn.qkv.weight
    if slices is None:
        assert w.qkv_t.data_ptr() == own.data_ptr()  # the module's own tensor
    else:
        assert w.qkv_t.is_contiguous() and w.qkv_t.data_ptr() != own.data_ptr()
        assert w.qkv_t.shape == ((16, 48) if slices == 1 else (slices, 16, 48 // slices))
        assert w.proj_t.shape == ((slices, 16, 16 // slices) if slices == 2 else (16, 16))
    for chunks in ([1] * 22, [7] + [1] * 15):
        assert (run_steps(model, x, chunks, slices) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("slices", [1, 2, 4, 5])
def test_affine_packed_equals_plain(slices: int) -> None:
    """`affine` on `pack_linear`'s slices is the plain x @ W^T + b, with and without a bias."""
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(3, 12, generator=g), torch.randn(20, 12, generator=g), torch.randn(20, generator=g)
    for bias in (b, None):
        expected = x @ w.t() + (0 if bias is None else bias)
        packed = pack_linear(w.t(), bias, slices)
        assert packed[0].dim() == (3 if slices > 1 and 20 % slices == 0 else 2)
        assert (affine(x, *packed) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("rotary", [False, True], ids=["learned", "rotary"])
def test_jukebox_shape_narrow_attention_and_mlp(rotary: bool) -> None:
    """attention_width 0.25 and mlp_ratio 1 (Jukebox's shape): parameters as defined, steps == forward == reference."""
    model = tiny(("row", "column", "prev_block"), rotary=rotary, attention_width=0.25, mlp_ratio=1.0)
    D, A, M = 16, 4, 16
    block = model.blocks[0]
    assert block.attn.qkv.weight.shape == (3 * A, D) and block.attn.proj.weight.shape == (D, A)
    assert block.mlp.fc.weight.shape == (M, D) and block.mlp.proj.weight.shape == (D, M)
    per_block = 3 * A * D + 3 * A + A * D + D + M * D + M + M * D + D + 4 * D  # linears + 2 LayerNorms
    assert sum(p.numel() for p in model.parameters()) == 4 * per_block + 2 * D
    x = torch.randn(2, 22, D, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model(x)
        assert (reference_forward(model, x) - expected).abs().max().item() < 1e-5
    assert model.new_cache(2).keys[0].shape == (2, 2, N_CTX, A // 2)
    for chunks in ([1] * 22, [7] + [1] * 15, [3, 1, 6, 1, 5] + [1] * 6):
        assert (run_steps(model, x, chunks) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(dropout: float) -> None:
    """Recomputing blocks in backward changes nothing but memory, dropout included (same RNG state)."""
    grads, losses = [], []
    x = torch.randn(3, 22, 16, generator=torch.Generator().manual_seed(4))
    target = torch.randn(3, 22, 16, generator=torch.Generator().manual_seed(5))
    for checkpointed in (False, True):
        torch.manual_seed(0)
        config = TransformerConfig(width=16, depth=3, heads=2, n_ctx=N_CTX, attention=("row", "column", "dense"),
                                   block_size=BLOCK, dropout=dropout, rotary=True, checkpoint_blocks=checkpointed)
        model = Transformer(config).train()
        torch.manual_seed(1)  # dropout masks
        loss = (model(x) * target).mean()  # not a square: the final LayerNorm makes that ~1 whatever the weights
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-6)


def test_step_fills_the_whole_context() -> None:
    model = tiny(("row", "column", "prev_block"), depth=3)
    x = torch.randn(2, N_CTX, 16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model(x)
    assert (run_steps(model, x, [5] + [1] * (N_CTX - 5)) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_one_layer_sees_exactly_its_mask(kind: str) -> None:
    """d output_t / d input_s is non-zero exactly where the definition lets t see s (one layer)."""
    model = tiny((kind,), depth=1)
    T = 14
    x = torch.randn(1, T, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    seen = gradient_pattern(model, x)
    assert torch.equal(seen, mask_of(kind, T)), f"{kind}: gradient pattern differs from the definition"


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_bidirectional_layer_sees_its_whole_window_row_or_column(kind: str) -> None:
    """causal=False (masked upsamplers): the definitions without j <= i; no cached step."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(width=16, depth=1, heads=2, n_ctx=N_CTX, attention=(kind,),
                                          block_size=BLOCK, causal=False))
    with torch.no_grad():  # as `tiny`: weights far from the init (a plain final LayerNorm sums to a constant)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    T = 16
    x = torch.randn(1, T, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    seen = gradient_pattern(model, x)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    expected = {"dense": torch.ones(T, T, dtype=torch.bool), "row": i // BLOCK == j // BLOCK,
                "column": i % BLOCK == j % BLOCK,
                "prev_block": (i // BLOCK == j // BLOCK) | (i // BLOCK - 1 == j // BLOCK)}[kind]
    assert torch.equal(seen, expected)
    with pytest.raises(TransformerError, match="no cached step"):
        model.step(x[:, :1].detach(), model.new_cache(1), 0)


@pytest.mark.parametrize("rotary", [False, True], ids=["learned", "rotary"])
@pytest.mark.parametrize("attention", PATTERNS, ids="-".join)
def test_deep_stack_is_causal(attention: tuple[str, ...], rotary: bool) -> None:
    model = tiny(attention, depth=4, rotary=rotary)
    T = 13
    x = torch.randn(2, T, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
    y = model(x)
    for t in range(T):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1 :].abs().sum().item() == 0.0, f"output {t} depends on later inputs"
        assert grad[:, t].abs().max().item() > 0.0


@pytest.mark.parametrize("rotary", [False, True], ids=["learned", "rotary"])
@pytest.mark.parametrize("attention", PATTERNS, ids="-".join)
def test_forward_equals_dense_masked_reference(attention: tuple[str, ...], rotary: bool) -> None:
    model = tiny(attention, rotary=rotary)
    x = torch.randn(2, 21, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (model(x) - reference_forward(model, x)).abs().max().item() < 1e-5


def test_rotary_scores_depend_only_on_distance() -> None:
    """<rotate(q, m), rotate(k, n)> is a function of m - n: the same pair 37 positions later scores the same."""
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(1, 1, 1, 32, generator=g), torch.randn(1, 1, 1, 32, generator=g)
    cos, sin = rotary_tables(128, 32)

    def score(m: int, n: int) -> float:
        at = lambda x, p: rotate(x, cos[p : p + 1], sin[p : p + 1])  # noqa: E731
        return (at(q, m) * at(k, n)).sum().item()

    for m, n in [(5, 0), (60, 3), (90, 90)]:
        assert abs(score(m, n) - score(m + 37, n + 37)) < 1e-4
    assert abs(score(5, 0) - score(6, 0)) > 1e-3  # and it does depend on the distance
    assert abs((rotate(q, cos[9:10], sin[9:10]).norm() - q.norm()).item()) < 1e-5  # a rotation keeps the norm


def test_rotary_buffers_are_not_saved() -> None:
    model = tiny(("dense",), depth=1, rotary=True)
    assert not any("rotary" in name for name in model.state_dict())
    plain = tiny(("dense",), depth=1)
    assert plain.state_dict().keys() == model.state_dict().keys()  # same weights; rotary comes from the config


def test_gpt2_init() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(width=64, depth=2, heads=2, n_ctx=64))
    block = model.blocks[0]
    # 4096..16384 samples per matrix: the sample std is within ~1.5% of the true one.
    assert abs(block.attn.qkv.weight.std().item() / 0.02 - 1) < 0.05
    assert abs(block.mlp.fc.weight.std().item() / 0.02 - 1) < 0.05
    residual = 0.02 / math.sqrt(2 * 2)
    assert abs(block.attn.proj.weight.std().item() / residual - 1) < 0.05
    assert abs(block.mlp.proj.weight.std().item() / residual - 1) < 0.05
    assert block.attn.qkv.bias.abs().max().item() == 0.0


def test_no_bias_and_dropout() -> None:
    torch.manual_seed(0)
    config = TransformerConfig(width=16, depth=2, heads=2, n_ctx=16, attention=("row", "dense"), block_size=4,
                               dropout=0.5, bias=False)  # fmt: skip
    model = Transformer(config)
    assert all(name.endswith("weight") for name, _ in model.named_parameters())
    x = torch.randn(2, 16, 16)
    assert not torch.equal(model(x), model(x))  # dropout is active in training
    model.eval()
    assert torch.equal(model(x), model(x))
    assert (run_steps(model, x, [4] + [1] * 12) - model(x)).abs().max().item() < 1e-5


def test_autocast_bf16() -> None:
    model = tiny(("row", "column", "prev_block"), depth=3)
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forward = model(x)
            steps = []
            for dtype in (torch.float32, torch.bfloat16):
                cache = model.new_cache(2, dtype=dtype)
                steps.append(torch.cat([model.step(x[:, i : i + 1], cache, i) for i in range(12)], dim=1))
    # bf16 keeps 8 bits of mantissa; outputs are LayerNorm-ed (~unit scale).
    for got in [forward, *steps]:
        assert got.shape == exact.shape
        assert (got.float() - exact).abs().max().item() < 0.15


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n_ctx": 100, "block_size": 32, "attention": ("row",)}, ["n_ctx=100", "block_size=32"]),
        ({"attention": ("dense", "diagonal")}, ["diagonal"]),
        ({"attention": ()}, ["empty"]),
        ({"width": 30, "heads": 4}, ["width=30", "heads=4"]),
        ({"block_size": 0, "attention": ("column",)}, ["block_size"]),
        ({"width": 6, "heads": 2, "rotary": True}, ["rotary", "even", "3"]),
        ({"width": 16, "heads": 2, "attention_width": 0.3}, ["attention_width=0.3", "heads=2"]),
        ({"width": 16, "mlp_ratio": 0.1}, ["mlp_ratio=0.1", "whole"]),
        ({"mlp_ratio": 0}, ["mlp_ratio", "> 0"]),
    ],
)
def test_bad_config_is_one_clear_line(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(TransformerError) as error:
        TransformerConfig(**kwargs)
    message = str(error.value)
    assert "\n" not in message
    assert all(word in message for word in words), message
    assert isinstance(error.value, ValueError)


def test_dense_needs_no_block_multiple_and_lists_are_accepted() -> None:
    assert TransformerConfig(n_ctx=100, block_size=32).n_ctx == 100
    assert TransformerConfig(attention=["row", "column"]).attention == ("row", "column")  # as read from YAML


def test_bad_inputs() -> None:
    model = tiny(("dense",), depth=1, n_ctx=8)
    with pytest.raises(TransformerError, match="exceeds n_ctx=8"):
        model(torch.randn(1, 9, 16))
    with pytest.raises(TransformerError, match="expected input"):
        model(torch.randn(1, 4, 15))
    with torch.inference_mode():
        cache = model.new_cache(2)
        with pytest.raises(TransformerError, match="outside the context of 8"):
            model.step(torch.randn(2, 2, 16), cache, 7)
        with pytest.raises(TransformerError, match=r"expected input \[2 x t x 16\], got \[1, 1, 16\]"):
            model.step(torch.randn(1, 1, 16), cache, 0)


@pytest.mark.parametrize("kind", ["row", "column", "prev_block"])
def test_factorised_forward_works_on_short_sequences(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """O(n sqrt n): every attention call of the training forward sees at most 2 x block_size keys
    (row, prev_block) or n / block_size keys (column), never the whole sequence."""
    seen: list[tuple[int, int]] = []
    sdpa = F.scaled_dot_product_attention

    def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
        seen.append((q.shape[-2], k.shape[-2]))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    n_ctx, block = 256, 16
    model = Transformer(TransformerConfig(width=8, depth=1, heads=1, n_ctx=n_ctx, attention=(kind,), block_size=block))
    model(torch.randn(1, n_ctx, 8))
    limit = {"row": block, "column": n_ctx // block, "prev_block": 2 * block}[kind]
    assert seen and all(keys <= limit for _, keys in seen), seen


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_attention_trains_in_fp32_under_cpu_bf16_autocast(kind: str, monkeypatch) -> None:
    """Training under bf16 autocast on a CPU, attention computes in fp32 from the bf16 projections (its bf16
    backward measured several times slower there) and hands bf16 on; without gradients (sampling) it stays
    bf16. The result is exactly the fp32 attention of the same inputs, rounded to bf16 once."""
    import housebox.models.transformer as transformer

    seen = []

    def recording(q, k, v, **kwargs):
        seen.append(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, **kwargs)

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 3 * BLOCK, 8, generator=g).bfloat16() for _ in range(3))
    exact = transformer.causal_attention(q.float(), k.float(), v.float(), kind=kind, block_size=BLOCK).bfloat16()
    monkeypatch.setattr(transformer, "F", type("F", (), {"scaled_dot_product_attention": staticmethod(recording),
                                                         "pad": staticmethod(F.pad)}))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        sampled = transformer.causal_attention(q, k, v, kind=kind, block_size=BLOCK)  # no gradients
    assert sampled.dtype == torch.bfloat16 and seen == [torch.bfloat16]
    seen.clear()
    q, k, v = (x.clone().requires_grad_(True) for x in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = transformer.causal_attention(q, k, v, kind=kind, block_size=BLOCK)
    assert seen == [torch.float32]
    assert trained.dtype == torch.bfloat16 and torch.equal(trained.detach(), exact)
    trained.float().square().sum().backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0 for x in (q, k, v))


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(ATTENTION_KINDS), rows=st.integers(1, 6), block=st.integers(1, 8), data=st.data())
def test_window_positions_are_exactly_what_a_query_sees(kind: str, rows: int, block: int, data) -> None:
    """The compiled step's fixed-size window (`window_positions`): for any position, the cache positions it marks
    seen are exactly those the definition lets the query see, each once, and every index lies in the cache."""
    n_ctx = rows * block
    pos = data.draw(st.integers(0, n_ctx - 1))
    index, seen = window_positions(kind, torch.tensor(pos), n_ctx=n_ctx, block_size=block)
    index = torch.arange(n_ctx) if index is None else index
    assert index.shape == seen.shape and index.min() >= 0 and index.max() < n_ctx
    marked = sorted(index[seen].tolist())
    assert marked == [j for j in range(n_ctx) if visible(kind, pos, j, block)]


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_window_attention_equals_attention_over_the_visible_keys(kind: str) -> None:
    """`window_attention` on the window of `window_positions` gives torch's attention over the visible keys only."""
    g = torch.Generator().manual_seed(4)
    keys, values = torch.randn(2, 3, N_CTX, 8, generator=g), torch.randn(2, 3, N_CTX, 8, generator=g)
    for pos in (0, 3, 5, 13, N_CTX - 1):
        q = torch.randn(2, 3, 1, 8, generator=g)
        index, seen = window_positions(kind, torch.tensor(pos), n_ctx=N_CTX, block_size=BLOCK)
        got = window_attention(q, keys, values, index, seen)
        keep = [j for j in range(N_CTX) if visible(kind, pos, j)]
        expected = F.scaled_dot_product_attention(q, keys[:, :, keep], values[:, :, keep])
        assert torch.allclose(got, expected, atol=1e-6), f"{kind} at {pos}"
