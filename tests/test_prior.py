"""Priors, conditioning and sampling: invariants on tiny models, then the CLI end to end."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import train_tiny_run
from housebox.cli import main
from housebox.generate.sampling import draw, filter_logits, sample_codes
from housebox.models.conditioning import Labels
from housebox.models.prior import IGNORE, Conditioning, Prior, PriorConfig, token_cross_entropy

V = 32


def tiny_prior(upsampler: bool = False, attention=("dense",), n_ctx: int = 32, rotary: bool = False) -> Prior:
    torch.manual_seed(0)
    config = PriorConfig(level=1 if upsampler else 2, codebook_size=V, n_artists=3, n_genres=4, max_genres=2,
                         sample_rate=16000, hop=32 if upsampler else 128, width=32, depth=2, heads=2, n_ctx=n_ctx,
                         attention=attention, block_size=8, timing=not upsampler, timing_bins=8, max_seconds=10.0,
                         upper_codebook_size=V if upsampler else 0, upper_ratio=4 if upsampler else 1,
                         rotary=rotary)
    return Prior(config).eval()


def labels(b: int) -> Labels:
    return Labels(artist=torch.arange(b) % 3, genres=torch.tensor([[1, -1], [2, 3]] * b)[:b])


def cond(prior: Prior, b: int, start: int = 0) -> Conditioning:
    upper = torch.randint(0, V, (b, prior.config.n_ctx // 4)) if prior.config.is_upsampler else None
    return Conditioning(labels=labels(b), start=torch.full((b,), start), total_tokens=torch.full((b,), 500),
                        upper=upper)


@pytest.mark.parametrize("rotary", [False, True], ids=["learned", "rotary"])
@pytest.mark.parametrize("upsampler", [False, True])
@pytest.mark.parametrize("attention", [("dense",), ("row", "column", "prev_block")])
@pytest.mark.parametrize("slices", [None, 2], ids=["own-weights", "packed"])
def test_cached_steps_equal_full_forward(upsampler, attention, rotary, slices):
    """Also with the weights and the head packed in two column slices, as a CPU with two threads samples."""
    prior = tiny_prior(upsampler, attention, rotary=rotary)
    c = cond(prior, 2, start=40)
    codes = torch.randint(0, V, (2, prior.config.n_ctx))
    full = prior(codes, c).logits
    context = prior.context(c)
    ids = prior.inputs(codes)
    cache = prior.new_cache(2, slices=slices)
    assert (cache.head_t is None) == (slices is None)
    prefill = prior.step(ids[:, :5], context, cache, 0)
    steps = [prefill] + [prior.step(ids[:, t : t + 1], context, cache, t) for t in range(5, ids.shape[1])]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("rotary", [False, True], ids=["learned", "rotary"])
@pytest.mark.parametrize("upsampler", [False, True])
@pytest.mark.parametrize("attention", [("dense",), ("row", "column", "prev_block")])
def test_fixed_shape_graph_steps_equal_full_forward(upsampler, attention, rotary):
    """`graph_step` (position as a tensor, a fixed window of the cache: what torch.compile and CUDA
    graphs need) gives the full forward's logits at every position, for every attention kind."""
    prior = tiny_prior(upsampler, attention, rotary=rotary)
    c = cond(prior, 2, start=40)
    codes = torch.randint(0, V, (2, prior.config.n_ctx))
    full = prior(codes, c).logits
    context, ids, cache = prior.context(c), prior.inputs(codes), prior.new_cache(2)
    with torch.inference_mode():
        steps = [prior.graph_step(ids[:, t : t + 1], context, cache, torch.tensor(t)) for t in range(ids.shape[1])]
    assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-5)


@pytest.mark.slow
def test_compiled_sampling_gives_the_eager_codes():
    """`compiled=True` (torch.compile of the fixed-shape token step, the draw inside; CUDA graphs on a GPU)
    samples the same codes as the eager step from the same seed: across windows, with guidance, a prime and
    filtered draws, and when one prior is sampled at another batch size and back (the compiled step checks
    its guards on its first calls of a run only, so a run must not reuse another batch's graph)."""
    prior = tiny_prior(True, ("row", "column", "prev_block"), rotary=True)
    upper = torch.randint(0, V, (2, 80 // 4), generator=torch.Generator().manual_seed(1))
    prime = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(2))

    def run(compiled, batch, **options):
        return sample_codes(prior, n_tokens=80, labels=labels(batch), upper=upper[:batch], compiled=compiled,
                            generator=torch.Generator().manual_seed(5), progress=False, **options)

    runs = [(2, dict(cfg_scale=2.0)), (1, dict(cfg_scale=2.0)), (2, dict(cfg_scale=2.0)),
            (2, dict(prime=prime, temperature=0.9, top_k=20))]
    for batch, options in runs:
        assert torch.equal(run(True, batch, **options), run(False, batch, **options)), (batch, options)


@pytest.mark.slow
def test_compiled_sampling_keeps_the_cache_static_for_cuda_graphs(monkeypatch):
    """CUDA graphs (`--compile` on a GPU) are skipped for a step that writes into an input torch does not know
    to be static, and replay copies every non-static input first. Checked on a CPU with torch's own metadata of
    the graph the real sampling loop compiles: the written inputs (key and value buffers) are static, and so is
    every input but the four that change each token (ids, the window's context, the position, the draw)."""
    from torch._dynamo.backends.common import aot_autograd

    import housebox.generate.sampling as sampling

    seen = {}

    def capture(gm, example_inputs):
        meta = getattr(torch._guards.TracingContext.get(), "fw_metadata", None)
        if meta is None or not hasattr(meta, "static_input_indices"):
            pytest.skip("this torch keeps a graph's input metadata elsewhere")
        seen["mutated"] = {i for i, info in enumerate(meta.input_info) if info.mutates_data}
        seen["static"] = set(meta.static_input_indices)
        seen["inputs"] = len(example_inputs)
        return gm

    step = torch.compile(sampling.token_step, backend=aot_autograd(fw_compiler=capture), dynamic=False,
                         fullgraph=True)
    monkeypatch.setattr(sampling, "compiled_step", lambda prior: step)
    torch._dynamo.reset()
    prior = tiny_prior(rotary=True)
    sample_codes(prior, n_tokens=40, labels=labels(2), compiled=True, progress=False)
    assert seen["mutated"], "the step writes its keys and values into the cache"
    assert seen["mutated"] <= seen["static"]
    assert seen["inputs"] - len(seen["static"]) == 4


def test_logits_are_causal_in_the_codes():
    prior = tiny_prior()
    c = cond(prior, 1)
    codes = torch.randint(0, V, (1, 32))
    changed = codes.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % V
    a, b = prior(codes, c).logits, prior(changed, c).logits
    assert torch.allclose(a[:, :21], b[:, :21])  # position 20 reads code 19: unchanged
    assert not torch.allclose(a[:, 21:], b[:, 21:])


def test_conditioning_reaches_the_logits():
    prior = tiny_prior(upsampler=True)
    c = cond(prior, 2)
    codes = torch.randint(0, V, (2, 32))
    base = prior(codes, c).logits
    other_artist = Conditioning(labels=Labels(artist=(c.labels.artist + 1) % 3, genres=c.labels.genres),
                                start=c.start, total_tokens=c.total_tokens, upper=c.upper)
    other_upper = Conditioning(labels=c.labels, start=c.start, total_tokens=c.total_tokens, upper=(c.upper + 1) % V)
    assert not torch.allclose(prior(codes, other_artist).logits, base)
    assert not torch.allclose(prior(codes, other_upper).logits[:, 5:], base[:, 5:])
    top = tiny_prior()
    tc = cond(top, 2)
    later = Conditioning(labels=tc.labels, start=tc.start + 300, total_tokens=tc.total_tokens)
    assert not torch.allclose(top(codes, tc).logits, top(codes, later).logits)  # timing matters


def test_label_dropout_uses_the_dropped_ids():
    prior = tiny_prior()
    lab = labels(4)
    dropped = prior.labels.drop(lab, 1.0)
    assert (dropped.artist == 3).all() and (dropped.genres[:, 0] == 4).all() and (dropped.genres[:, 1:] == -1).all()
    assert prior.labels.drop(lab, 0.0) is lab


def test_logit_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    kept = torch.isfinite(filter_logits(logits, top_p=0.9))
    probs = torch.softmax(logits, -1)[0]
    assert kept.sum() == 3 and probs[:2].sum() < 0.9 <= probs[:3].sum()
    assert torch.allclose(filter_logits(logits, temperature=2.0), logits / 2)
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(logits, temperature=0)


def test_inverse_cdf_draws_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, -1)
    g = torch.Generator().manual_seed(0)
    picks = draw(logits, torch.rand(20000, generator=g))
    freq = torch.bincount(picks, minlength=4).float() / 20000
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.015)


def test_inverse_cdf_never_draws_a_forbidden_code():
    """Draws of exactly 0 and just below 1 keep to the codes top-k / top-p left (forbidden at both ends)."""
    logits = filter_logits(torch.tensor([[-5.0, 3.0, 2.0, 1.0, -5.0]]).expand(3, -1), temperature=1.0, top_k=3)
    picks = draw(logits, torch.tensor([0.0, 0.5, 1.0 - 2 ** -24]))
    assert picks.tolist()[0] == 1 and picks.tolist()[2] == 3 and set(picks.tolist()) <= {1, 2, 3}


@pytest.mark.parametrize("upsampler", [False, True])
def test_sampling_is_seeded_primed_and_windowed(upsampler):
    prior = tiny_prior(upsampler)
    with torch.no_grad():  # untrained label embeddings barely move the logits: make guidance visible
        prior.labels.artist.weight.mul_(50)
    upper = torch.randint(0, V, (2, 80 // 4)) if upsampler else None
    run = lambda seed, **kw: sample_codes(prior, n_tokens=80, labels=labels(2), upper=upper,  # noqa: E731
                                          generator=torch.Generator().manual_seed(seed), progress=False, **kw)
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (2, 80) and int(a.max()) < V and torch.equal(a, b) and not torch.equal(a, c)
    prime = torch.randint(0, V, (2, 45))  # longer than one window's hop
    primed = run(3, prime=prime)
    assert torch.equal(primed[:, :45], prime) and not torch.equal(primed[:, 45:], run(3)[:, 45:])
    guided = run(1, cfg_scale=3.0)
    assert guided.shape == (2, 80) and not torch.equal(guided, a)
    assert torch.equal(run(1, cfg_scale=1.0), a)


def test_one_kv_cache_serves_every_window_and_stale_entries_are_never_read(monkeypatch):
    """sample_codes allocates its KV cache once per call (not once per window), and reusing it is safe:
    a cache that starts full of garbage gives the same codes as a zeroed one, so no step reads a position
    its own window has not written (what an earlier window left there is never seen)."""
    prior = tiny_prior()
    made = []
    zeroed = prior.new_cache

    def counted(batch, garbage=False):
        cache = zeroed(batch)
        if garbage:
            for buffer in cache.keys + cache.values:
                buffer.normal_(0, 1e4)
        made.append(cache)
        return cache

    def run(garbage):
        monkeypatch.setattr(prior, "new_cache", lambda batch: counted(batch, garbage))
        return sample_codes(prior, n_tokens=100, labels=labels(2), cfg_scale=2.0,  # 5 windows of 32, hop 16
                            generator=torch.Generator().manual_seed(3), progress=False)

    clean = run(False)
    assert len(made) == 1 and made[0].batch == 4  # one cache for the 5 windows (2 samples x 2 for guidance)
    assert torch.equal(run(True), clean)


def test_sampled_windows_continue_the_context():
    """Beyond n_ctx the next window sees the previous codes: a prior taught to repeat keeps repeating."""
    from housebox.train.loop import StepOutput, TrainConfig, train

    prior = tiny_prior()
    pattern = torch.tensor([3, 7, 7, 1] * 8)  # period 4 over the 32-token window

    def batch_fn(generator):
        shift = int(torch.randint(0, 4, (1,), generator=generator))
        return torch.roll(pattern, shift)[None].expand(8, -1).clone()

    def step_fn(model, codes):  # windows anywhere in a 96-token track, as sampling will see them
        c = Conditioning(labels=labels(8), start=torch.randint(0, 5, (8,)) * 16, total_tokens=torch.full((8,), 96))
        return StepOutput(loss=model(codes, c).loss, metrics={})

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        train(prior, step_fn=step_fn, batch_fn=batch_fn, out_dir=tmp, describe={"kind": "toy", "model": {}},
              config=TrainConfig(steps=200, lr=3e-3, warmup_steps=10, checkpoint_every=1000, log_every=50,
                                 ema_decay=0.0), device="cpu", progress=False)
    prior.eval()
    out = sample_codes(prior, n_tokens=96, labels=labels(1), prime=pattern[None, :8], temperature=0.5,
                       generator=torch.Generator().manual_seed(0), progress=False)
    expected = pattern.repeat(3)[:96]
    assert (out[0] == expected).float().mean() > 0.95  # 3 windows of 32 with hop 16


# ---- end to end through the CLI --------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(demo_data, tmp_path_factory):
    return train_tiny_run(demo_data, tmp_path_factory.mktemp("run"), vqvae_steps=6, prior_steps=10, upsampler_steps=6)


def test_prior_training_logs_bits_per_token(run_dir):
    rows = [json.loads(line) for line in (run_dir / "prior_l2" / "metrics.jsonl").read_text().splitlines()]
    assert any("bits_per_token" in r for r in rows) and any("eval/bits_per_token" in r for r in rows)
    meta = json.loads((run_dir / "prior_l2" / "config.json").read_text())["describe"]
    assert meta["level"] == 2 and "Dawn Atlas" in meta["vocabulary"]["artists"]
    up = json.loads((run_dir / "up_l1" / "config.json").read_text())["describe"]["model"]
    assert up["upper_ratio"] == 4 and up["upper_codebook_size"] == 64 and up["timing"] is False


def test_wrong_verb_for_level_is_explained(run_dir, demo_data, tmp_path, capsys):
    assert main(["train", "prior", "--level", "1", "--data", str(demo_data), "-o", str(tmp_path / "x")]) == 2
    assert "train upsampler" in capsys.readouterr().err


def test_sample_cli_writes_everything_and_is_seeded(run_dir, tmp_path, capsys):
    args = ["sample", str(run_dir), "--artist", "Dawn Atlas", "--genre", "deep house", "--seconds", "1.5", "-n", "2",
            "--device", "cpu", "--seed", "7", "--top-k", "20"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    for name in ("sample_000.wav", "sample_001.wav", "codes.npz", "spectrogram.png", "report.json", "index.html"):
        assert (tmp_path / "a" / name).exists(), name
    a, sr = sf.read(tmp_path / "a" / "sample_000.wav")
    b, _ = sf.read(tmp_path / "b" / "sample_000.wav")
    assert sr == 16000 and len(a) == round(1.5 * 125) * 128 and np.array_equal(a, b)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["seed"] == 7 and report["levels_generated"] == [2, 1, 0] and len(report["models"]) == 4
    assert all(len(m["sha256"]) == 64 for m in report["models"].values())
    with np.load(tmp_path / "a" / "codes.npz") as codes:
        assert codes["l2"].shape == (2, 188) and codes["l0"].shape == (2, 188 * 16)
    assert 'src="sample_000.wav"' in (tmp_path / "a" / "index.html").read_text()


def test_auto_precision_on_a_cpu_is_bf16_for_masked_upsamplers_only_where_bf16_is_native(monkeypatch):
    """`auto` on a CPU: fp32 where bf16 is emulated; where it is native, bf16 for a masked upsampler (its passes
    are compute-bound) and still fp32 for autoregressive priors (their one-row steps were slower in bf16)."""
    import housebox.generate.pipeline as pipeline

    for native in (False, True):
        monkeypatch.setattr(pipeline, "cpu_has_native_bf16", lambda native=native: native)
        assert pipeline.sampling_dtype("auto", "cpu") == torch.float32
        assert pipeline.sampling_dtype("auto", "cpu", masked=True) == (torch.bfloat16 if native else torch.float32)
        assert pipeline.sampling_dtype("fp32", "cpu", masked=True) == torch.float32


def test_bf16_sampling_keeps_priors_and_cache_in_bf16_and_is_seeded(run_dir, tmp_path):
    """`--precision bf16`: every prior's weights and its KV cache are bf16 (the VQ-VAE stays fp32); the
    tracks are seeded like fp32 ones and come out whole (`auto`: the test above; on a CUDA GPU with bf16,
    test_cuda)."""
    from housebox.generate.pipeline import load_run, sampling_dtype

    assert sampling_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be"):
        sampling_dtype("fp16", "cpu")
    run = load_run(run_dir, "cpu", precision="bf16")
    assert all(p.head.weight.dtype == torch.bfloat16 for p in run.priors.values())
    assert run.priors[2].new_cache(1).keys[0].dtype == torch.bfloat16
    assert next(run.vqvae.parameters()).dtype == torch.float32
    args = ["sample", str(run_dir), "--artist", "Dawn Atlas", "--seconds", "1", "--device", "cpu", "--seed", "7",
            "--precision", "bf16"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0 and main([*args, "-o", str(tmp_path / "b")]) == 0
    a, sr = sf.read(tmp_path / "a" / "sample_000.wav")
    assert np.array_equal(a, sf.read(tmp_path / "b" / "sample_000.wav")[0]) and len(a) == 125 * 128
    assert np.isfinite(a).all() and np.abs(a).max() > 0


def test_unknown_artist_lists_the_known_ones(run_dir, capsys):
    assert main(["sample", str(run_dir), "--artist", "Nobody", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown artist 'Nobody'" in err and "Dawn Atlas" in err and "\n" not in err.strip()


def test_prime_continue_and_upsample_only(run_dir, demo_data, tmp_path):
    from housebox.audio.io import save_audio
    from housebox.data.prepare import load_track, read_manifest

    clip = load_track(demo_data, read_manifest(demo_data)[0]["id"])[: 16000 * 2] / 32768.0
    save_audio(tmp_path / "clip.wav", clip, 16000)
    base = ["sample", str(run_dir), "--seconds", "2", "--device", "cpu", "--artist", "Dawn Atlas"]
    assert main([*base, "--prime", str(tmp_path / "clip.wav"), "--prime-seconds", "1", "-o", str(tmp_path / "p")]) == 0
    from housebox.generate.pipeline import encode_prime, load_run

    primed = np.load(tmp_path / "p" / "codes.npz")
    expected, _ = encode_prime(load_run(run_dir), tmp_path / "clip.wav", 1.0, 1)
    for level, prime in expected.items():  # every primed token of every level, not a few
        n = prime.shape[1]
        assert n >= 0.9 * primed[f"l{level}"].shape[1] / 2  # one of the two seconds
        assert np.array_equal(primed[f"l{level}"][0, :n], prime[0].numpy()), level
    assert main([*base, "--continue", str(tmp_path / "p" / "codes.npz"), "--upsample-only", "--seed", "5",
                 "-o", str(tmp_path / "u")]) == 0
    upsampled = np.load(tmp_path / "u" / "codes.npz")
    assert np.array_equal(upsampled["l2"], primed["l2"]) and not np.array_equal(upsampled["l0"], primed["l0"])
    assert main([*base, "--levels", "1", "-o", str(tmp_path / "top")]) == 0
    report = json.loads((tmp_path / "top" / "report.json").read_text())
    assert report["levels_generated"] == [2] and report["decoded_from_level"] == 2


def test_threads_option_sets_torch_threads_and_refuses_zero(monkeypatch, capsys):
    from housebox.cli import main

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    assert main(["sample", "/nonexistent", "--threads", "3"]) == 2 and seen[-1] == 3
    assert main(["sample", "/nonexistent", "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_sigkill_in_the_middle_of_sample_then_again_gives_the_same_tracks(run_dir, tmp_path):
    """`housebox sample` killed (SIGKILL) while it works: the same command again writes every track, equal
    to an uninterrupted run's (same seed), with its report."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import soundfile as sf

    command = [sys.executable, "-m", "housebox", "sample", str(run_dir), "--artist", "Dawn Atlas", "--seconds", "3",
               "-n", "2", "--seed", "9", "--device", "cpu", "-o"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert subprocess.run([*command, str(full)], capture_output=True).returncode == 0
    proc = subprocess.Popen([*command, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and b"level 2" not in seen:
        seen += os.read(proc.stderr.fileno(), 256)  # the progress bars: kill once sampling is under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "report.json").exists(), "sample finished before it was killed: nothing tested"
    assert subprocess.run([*command, str(killed)], capture_output=True).returncode == 0
    for i in range(2):
        a, _ = sf.read(full / f"sample_{i:03d}.wav")
        b, _ = sf.read(killed / f"sample_{i:03d}.wav")
        np.testing.assert_array_equal(a, b)
    with np.load(full / "codes.npz") as x, np.load(killed / "codes.npz") as y:
        assert all(np.array_equal(x[k], y[k]) for k in x.files)
    assert json.loads((killed / "report.json").read_text())["seed"] == 9


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), vocab=st.integers(2, 300), ignored=st.floats(0.0, 0.9), scale=st.floats(0.1, 20.0),
       bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_token_cross_entropy_is_torchs_loss_and_gradient(rows, vocab, ignored, scale, bf16, seed):
    """Property (hypothesis): the fused loss equals F.cross_entropy(logits.float(), ..., ignore_index=-100) and
    so does its gradient, for any shape, share of ignored rows (at least one kept), logit scale, fp32 or bf16."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * scale
    logits = logits.to(torch.bfloat16 if bf16 else torch.float32)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    drop = torch.rand(rows, generator=g) < ignored
    drop[0] = False
    targets[drop] = IGNORE
    mine_in, torch_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    mine = token_cross_entropy(mine_in, targets)
    theirs = F.cross_entropy(torch_in.float(), targets, ignore_index=IGNORE)
    (mine * 3.0).backward()
    (theirs * 3.0).backward()
    assert mine.dtype == torch.float32
    assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-5)
    assert mine_in.grad.dtype == logits.dtype
    tolerance = 1e-2 if bf16 else 1e-6  # bf16: both gradients are rounded to bf16 from float32
    assert torch.allclose(mine_in.grad.float(), torch_in.grad.float(), rtol=tolerance, atol=tolerance)
    assert (mine_in.grad[drop] == 0).all()


def test_compiling_on_a_cpu_without_a_cpp_compiler_is_one_clear_error(monkeypatch):
    """`--compile` on a CPU builds C++: with no compiler the user gets one line naming what is missing (ValueError,
    which the CLI prints without a traceback), before any step runs."""
    import torch._inductor.config as inductor_config

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("housebox-no-such-compiler",))
    prior = tiny_prior()
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        sample_codes(prior, n_tokens=8, labels=labels(1), compiled=True, progress=False)
    assert "_compiled_step" not in prior.__dict__
