"""Masked upsamplers (issue 13): the masking schedule, a loss on hidden positions only, a bidirectional
model, decoding in K passes per window with fixed overlaps, determinism, and a mixed run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY_UP, train_tiny_run
from housebox.cli import main
from housebox.generate.sampling import sample_masked, unmask_schedule
from housebox.models.conditioning import Labels
from housebox.models.prior import Conditioning, Prior, PriorConfig, mask_positions

V = 16
N_CTX = 32
RATIO = 4


def masked_upsampler(seed: int = 0, dropout: float = 0.0, attention=("dense",), span: int = 1) -> Prior:
    torch.manual_seed(seed)
    config = PriorConfig(level=0, codebook_size=V, n_artists=2, n_genres=2, max_genres=2, sample_rate=16000, hop=8,
                         width=32, depth=2, heads=2, n_ctx=N_CTX, attention=attention, block_size=8, timing=False,
                         upper_codebook_size=V, upper_ratio=RATIO, kind="masked", mask_span=span, dropout=dropout,
                         label_dropout=0.0)
    return Prior(config)


def labels(b: int) -> Labels:
    return Labels(artist=torch.arange(b) % 2, genres=torch.zeros(b, 2, dtype=torch.long))


def conditioning(b: int, upper: torch.Tensor) -> Conditioning:
    return Conditioning(labels=labels(b), start=torch.zeros(b, dtype=torch.long),
                        total_tokens=torch.full((b,), 500), upper=upper)


def test_masking_schedule_is_cosine_and_in_spans() -> None:
    valid = torch.ones(4000, 64, dtype=torch.bool)
    hidden = mask_positions(valid, span=4, generator=torch.Generator().manual_seed(0))
    shares = hidden.float().mean(dim=1)
    # u ~ U(0, 1), spans hidden = round(16 cos(pi u / 2)): mean ~2 / pi of the window, and fewer than 8 of
    # the 16 spans exactly when cos(pi u / 2) < 7.5 / 16, i.e. u > 2 / pi * acos(7.5 / 16)
    assert shares.mean().item() == pytest.approx(2 / math.pi, abs=0.02)
    expected = 1 - 2 / math.pi * math.acos(7.5 / 16)
    assert (shares < 0.5).float().mean().item() == pytest.approx(expected, abs=0.02)
    assert hidden.any(dim=1).all()  # every window has a target
    spans = hidden.view(4000, 16, 4)
    assert ((spans.all(dim=2)) | (~spans.any(dim=2))).all()  # whole spans of 4, never part of one
    partial = torch.zeros(2, 64, dtype=torch.bool)
    partial[:, :10] = True  # a track ending after 10 tokens: nothing beyond it is a target
    assert not mask_positions(partial, generator=torch.Generator().manual_seed(1))[:, 10:].any()


def test_unmask_schedule_reveals_everything_in_k_passes() -> None:
    assert unmask_schedule(100, 4) == [92, 71, 38, 0]
    assert unmask_schedule(3, 8)[-1] == 0 and unmask_schedule(3, 8) == sorted(unmask_schedule(3, 8), reverse=True)
    assert unmask_schedule(5, 1) == [0]


def test_loss_only_on_hidden_positions_and_the_model_sees_both_ways() -> None:
    model = masked_upsampler().eval()
    codes = torch.randint(0, V, (2, N_CTX), generator=torch.Generator().manual_seed(0))
    upper = torch.randint(0, V, (2, N_CTX // RATIO), generator=torch.Generator().manual_seed(1))
    hidden = torch.zeros(2, N_CTX, dtype=torch.bool)
    hidden[:, [3, 17, 30]] = True
    out = model(codes, conditioning(2, upper), None, hidden)
    manual = torch.nn.functional.cross_entropy(out.logits[hidden], codes[hidden])
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert out.tokens.item() == 6
    changed = codes.clone()
    changed[:, 20] = (changed[:, 20] + 1) % V  # a later, visible code changes an earlier prediction ...
    assert not torch.allclose(model(changed, conditioning(2, upper), None, hidden).logits[:, 3], out.logits[:, 3])
    changed = codes.clone()
    changed[hidden] = (changed[hidden] + 1) % V  # ... a hidden code's own value changes nothing it predicts
    assert torch.allclose(model(changed, conditioning(2, upper), None, hidden).logits, out.logits, atol=1e-6)


def test_overfit_batch_is_decoded_back_from_its_upper_codes() -> None:
    """Trained on one batch, the decoder fills the windows back from their upper codes alone."""
    model = masked_upsampler(attention=("row", "column", "prev_block"))
    gen = torch.Generator().manual_seed(2)
    upper = torch.randint(0, V, (2, N_CTX // RATIO), generator=gen)
    codes = (upper.repeat_interleave(RATIO, dim=1) * 3 + torch.arange(N_CTX) % RATIO) % V  # a function of upper
    codes[1, ::5] = torch.randint(0, V, (7,), generator=gen)  # and some that only the window's own codes tell
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    valid = torch.ones(2, N_CTX, dtype=torch.bool)
    torch.manual_seed(3)
    for _ in range(300):
        optimiser.zero_grad()
        model(codes, conditioning(2, upper), valid, mask_positions(valid)).loss.backward()
        optimiser.step()
    model.eval()
    decoded = sample_masked(model, n_tokens=N_CTX, labels=labels(2), upper=upper, steps=8, temperature=0.1,
                            generator=torch.Generator().manual_seed(0), progress=False)
    assert (decoded == codes).float().mean().item() > 0.9


def test_k_passes_per_window_fixed_overlap_and_same_seed_same_codes(monkeypatch) -> None:
    model = masked_upsampler().eval()
    upper = torch.randint(0, V, (2, 3 * N_CTX // RATIO), generator=torch.Generator().manual_seed(4))
    passes = []
    real = Prior.window_logits

    def counted(self, ids, context):
        passes.append(ids.shape)
        return real(self, ids, context)

    monkeypatch.setattr(Prior, "window_logits", counted)
    kwargs = dict(labels=labels(2), upper=upper, steps=5, hop_fraction=0.5, progress=False)
    three = sample_masked(model, n_tokens=3 * N_CTX, generator=torch.Generator().manual_seed(7), **kwargs)
    windows = len(range(0, 3 * N_CTX - N_CTX // 2, N_CTX // 2))  # hop of half a window: 5 windows
    assert len(passes) == 5 * windows
    passes.clear()  # the default hop: windows 7/8 of a window apart
    sample_masked(model, n_tokens=3 * N_CTX, **{**kwargs, "hop_fraction": 0.875})
    assert len(passes) == 5 * len(range(0, 3 * N_CTX - N_CTX // 8, 7 * N_CTX // 8))
    again = sample_masked(model, n_tokens=3 * N_CTX, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(three, again)
    other = sample_masked(model, n_tokens=3 * N_CTX, generator=torch.Generator().manual_seed(8), **kwargs)
    assert not torch.equal(three, other)
    # the first window alone draws exactly what the long run has there: later windows never change it
    first = sample_masked(model, n_tokens=N_CTX, generator=torch.Generator().manual_seed(7),
                          **{**kwargs, "upper": upper[:, : N_CTX // RATIO]})
    assert torch.equal(first, three[:, :N_CTX])
    # a prime is kept as it is, and a window after it starts from it
    primed = sample_masked(model, n_tokens=3 * N_CTX, prime=three[:, :40], generator=torch.Generator().manual_seed(9),
                           **kwargs)
    assert torch.equal(primed[:, :40], three[:, :40])


def test_guidance_runs_one_batch_with_the_labels_dropped(monkeypatch) -> None:
    model = masked_upsampler().eval()
    upper = torch.randint(0, V, (2, N_CTX // RATIO), generator=torch.Generator().manual_seed(5))
    shapes = []
    real = Prior.window_logits
    monkeypatch.setattr(Prior, "window_logits", lambda self, ids, context: shapes.append(ids.shape)
                        or real(self, ids, context))
    sample_masked(model, n_tokens=N_CTX, labels=labels(2), upper=upper, steps=3, cfg_scale=2.0, progress=False)
    assert shapes == [(4, N_CTX)] * 3


def test_masked_config_is_checked() -> None:
    with pytest.raises(ValueError, match="upsamplers"):
        PriorConfig(kind="masked")  # a top-level prior
    with pytest.raises(ValueError, match="kind"):
        PriorConfig(kind="diffusion")
    with pytest.raises(ValueError, match="needs `hidden`"):
        model = masked_upsampler()
        model(torch.zeros(1, N_CTX, dtype=torch.long), conditioning(1, torch.zeros(1, 8, dtype=torch.long)))


@pytest.mark.slow
def test_mixed_run_autoregressive_level_1_masked_level_0(demo_data, tmp_path, monkeypatch, capsys) -> None:
    run = train_tiny_run(demo_data, tmp_path / "run", vqvae_steps=6, prior_steps=4)
    args = ["--data", str(demo_data), "--device", "cpu", *TINY_UP, "--set", "upsampler_train.steps=4"]
    assert main(["train", "upsampler", "--level", "1", "-o", str(run / "up_l1"), *args]) == 0
    assert main(["train", "upsampler", "--level", "0", "--kind", "masked", "-o", str(run / "up_l0"), *args]) == 0
    from housebox.generate.pipeline import load_run

    loaded = load_run(run)
    assert loaded.priors[1].config.kind == "autoregressive" and loaded.priors[0].config.kind == "masked"
    import housebox.generate.pipeline as pipeline

    monkeypatch.setattr(pipeline, "cpu_has_native_bf16", lambda: True)  # `auto` on such a CPU: bf16 for masked only
    dtypes = {level: p.head.weight.dtype for level, p in load_run(run, precision="auto").priors.items()}
    assert dtypes == {2: torch.float32, 1: torch.float32, 0: torch.bfloat16}
    monkeypatch.undo()
    for name in ("a", "b"):  # the same seed twice
        assert main(["sample", str(run), "--seconds", "1.5", "--seed", "3", "--upsample-steps", "4",
                     "-o", str(tmp_path / name), "--device", "cpu", "--beat-guidance", "1"]) == 0
    a, b = np.load(tmp_path / "a" / "codes.npz"), np.load(tmp_path / "b" / "codes.npz")
    assert a["l0"].shape[1] == 4 * a["l1"].shape[1] > 0  # level 0 decoded from level 1 by the masked model
    assert all(np.array_equal(a[f"l{level}"], b[f"l{level}"]) for level in (2, 1, 0))
    assert (tmp_path / "a" / "sample_000.wav").exists()
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["settings"]["upsample_steps"] == 4 and report["settings"]["upsample_noise"] == 10.0
    import housebox.generate.sampling as sampling

    noises = []
    real = sampling._sample_masked

    def recording(prior, **kwargs):
        noises.append(kwargs["remask_noise"])
        return real(prior, **kwargs)

    monkeypatch.setattr(sampling, "_sample_masked", recording)
    assert main(["sample", str(run), "--seconds", "1.5", "--seed", "3", "--upsample-noise", "inf",
                 "-o", str(tmp_path / "c"), "--device", "cpu", "--beat-guidance", "1"]) == 0
    assert noises == [math.inf]  # level 0 only: level 1 is autoregressive
    report = json.loads((tmp_path / "c" / "report.json").read_text(), parse_constant=refuse_constant)
    assert float(report["settings"]["upsample_noise"]) == math.inf  # "inf": strict JSON readers take it
    assert main(["sample", str(run), "--seconds", "1.5", "--upsample-noise", "-2", "-o", str(tmp_path / "d"),
                 "--device", "cpu"]) != 0
    assert "--upsample-noise must be >= 0" in capsys.readouterr().err


def test_upper_noise_replaces_that_share_of_the_codes_above_in_training_only() -> None:
    """`upper_noise`: in a training step, about that share of the level-above codes is replaced by random
    codes (in range, same shape); 0 leaves them as they are (and draws nothing)."""
    from housebox.train.prior import corrupt_upper

    upper = torch.randint(0, 64, (8, 512), generator=torch.Generator().manual_seed(0))
    assert corrupt_upper(upper, 0.0, 64) is upper
    torch.manual_seed(1)
    noisy = corrupt_upper(upper, 0.2, 64)
    changed = (noisy != upper).float().mean().item()
    assert noisy.shape == upper.shape and noisy.dtype == upper.dtype and 0 <= int(noisy.min()) and int(noisy.max()) < 64
    assert 0.2 * (1 - 1 / 64) - 0.02 < changed < 0.2 * (1 - 1 / 64) + 0.02  # a replacement may draw the same code
    with pytest.raises(ValueError, match="upper_noise"):
        PriorConfig(level=0, codebook_size=64, n_artists=1, n_genres=1, max_genres=1, sample_rate=16000, hop=8,
                    upper_codebook_size=64, upper_ratio=4, upper_noise=1.0)


def test_passes_keep_the_temperature_unless_annealing_is_asked(monkeypatch) -> None:
    """By default every pass samples at the asked temperature (annealing to half made real music dark:
    README); `final_temperature` anneals linearly to that share of it by the last pass."""
    import housebox.generate.sampling as sampling

    seen = []
    real = sampling.filter_logits

    def recording(logits, temperature, top_k, top_p):
        seen.append(round(temperature, 6))
        return real(logits, temperature, top_k, top_p)

    monkeypatch.setattr(sampling, "filter_logits", recording)
    model = masked_upsampler().eval()
    upper = torch.randint(0, V, (1, N_CTX // RATIO), generator=torch.Generator().manual_seed(4))
    kwargs = dict(n_tokens=N_CTX, labels=labels(1), upper=upper, steps=4, temperature=0.9, progress=False)
    sample_masked(model, **kwargs)
    assert seen == [0.9] * 4
    seen.clear()
    sample_masked(model, final_temperature=0.5, **kwargs)
    assert seen == [0.9, 0.75, 0.6, 0.45]


def record_hidden_again(monkeypatch) -> list[torch.Tensor]:
    """A list that collects, pass by pass, the positions a masked pass hides again (its smallest-k topk)."""
    hidden_again: list[torch.Tensor] = []
    real_topk = torch.Tensor.topk

    def recording_topk(self, k, dim=-1, largest=True, sorted=True):
        out = real_topk(self, k, dim=dim, largest=largest, sorted=sorted)
        if not largest:
            hidden_again.append(out.indices.sort(dim=1).values)
        return out

    monkeypatch.setattr(torch.Tensor, "topk", recording_topk)
    return hidden_again


def test_remask_noise_changes_which_draws_are_kept(monkeypatch) -> None:
    """The same draws (same seed) with and without the default noise: without it the first pass hides again
    exactly its least confident draws; with it others (the noise keeps the most predictable codes, quiet
    ones on real music, from filling the window first)."""
    model = masked_upsampler().eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # confident, and unequally so across positions
    upper = torch.randint(0, V, (2, N_CTX // RATIO), generator=torch.Generator().manual_seed(4))
    hidden_again = record_hidden_again(monkeypatch)
    first = {}
    for noise in (0.0, 10.0):
        hidden_again.clear()
        sample_masked(model, n_tokens=N_CTX, labels=labels(2), upper=upper, steps=4, remask_noise=noise,
                      generator=torch.Generator().manual_seed(1), progress=False)
        first[noise] = hidden_again[0]
    assert first[0.0].shape == first[10.0].shape == (2, unmask_schedule(N_CTX, 4)[0])
    assert not torch.equal(first[0.0], first[10.0])


def test_infinite_remask_noise_keeps_a_random_share_whatever_the_model(monkeypatch) -> None:
    """--upsample-noise inf: which draws a pass hides again depends on the seed only, not on the model's
    confidence (two different models, the same seed: the same positions), where without noise each model
    hides its own least confident draws; a negative scale is refused."""
    upper = torch.randint(0, V, (2, N_CTX // RATIO), generator=torch.Generator().manual_seed(4))
    hidden_again = record_hidden_again(monkeypatch)
    models = [masked_upsampler(seed).eval() for seed in (0, 1)]
    for model in models:
        with torch.no_grad():
            model.head.weight.mul_(20.0)  # confident, and unequally so across positions
    first = {}
    for noise in (0.0, math.inf):
        for i, model in enumerate(models):
            hidden_again.clear()
            sample_masked(model, n_tokens=N_CTX, labels=labels(2), upper=upper, steps=4, remask_noise=noise,
                          generator=torch.Generator().manual_seed(1), progress=False)
            first[noise, i] = hidden_again[0]
    assert first[math.inf, 0].shape == (2, unmask_schedule(N_CTX, 4)[0])
    assert torch.equal(first[math.inf, 0], first[math.inf, 1])
    hidden_again.clear()  # ... and on the seed: another seed, other positions
    sample_masked(models[0], n_tokens=N_CTX, labels=labels(2), upper=upper, steps=4, remask_noise=math.inf,
                  generator=torch.Generator().manual_seed(2), progress=False)
    assert not torch.equal(hidden_again[0], first[math.inf, 0])
    assert not torch.equal(first[0.0, 0], first[0.0, 1])  # by confidence: each model its own
    with pytest.raises(ValueError, match="remask_noise"):
        sample_masked(models[0], n_tokens=N_CTX, labels=labels(2), upper=upper, remask_noise=-1.0, progress=False)


def refuse_constant(name: str):
    raise ValueError(f"{name} in a JSON file: strict readers (JSON.parse, jq) refuse it")
