"""Tests for the hierarchical VQ-VAE, its EMA codebook and its losses (tiny configs, CPU)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from housebox.models.codebook import CodebookError, EMACodebook
from housebox.models.losses import (
    AudioShapeError,
    default_fft_sizes,
    estimate_magnitudes,
    mel_filterbank,
    mel_l1,
    mel_loss,
    multi_resolution_stft_loss,
    reference_spectra,
    si_sdr,
    spectral_convergence_db,
)
from housebox.models.vqvae import (
    VQVAE,
    TapConvolution,
    VQVAEConfig,
    VQVAEInputError,
    _tap_products,
    use_tap_gradients,
)

TINY = VQVAEConfig(sample_rate=16000, downs=(2, 3, 4), width=16, depth=2, codebook_size=64, code_width=16)
TINY_JUKEBOX_HOPS = VQVAEConfig(
    sample_rate=16000, downs=(3, 5, 7), width=16, depth=2, dilation_cycle=2, codebook_size=128, code_width=16
)


def tone_and_noise(
    *, batch: int, length: int, sample_rate: int = 16000, noise: float = 0.05, seed: int = 0
) -> torch.Tensor:
    """Tensor[batch x 1 x length]: a sine per item (440 Hz, 660 Hz, ...) at amplitude 0.5 plus white noise."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / sample_rate
    tones = [0.5 * torch.sin(2 * math.pi * 440 * (1 + i / 2) * t + i) for i in range(batch)]
    return torch.stack(tones).unsqueeze(1) + noise * torch.randn(batch, 1, length, generator=generator)


def trained_once(config: VQVAEConfig, x: torch.Tensor) -> VQVAE:
    """A model whose codebooks were initialised by one training forward on x, returned in eval mode."""
    torch.manual_seed(0)
    model = VQVAE(config)
    model(x)
    return model.eval()


# ---------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("config", [TINY, TINY_JUKEBOX_HOPS], ids=["hops-4-8-16", "hops-8-32-128"])
def test_shapes_and_code_range(config: VQVAEConfig) -> None:
    torch.manual_seed(0)
    model = VQVAE(config)
    x = tone_and_noise(batch=2, length=2 * model.multiple())
    out = model(x)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert len(out.recons) == len(out.codes) == len(out.levels) == config.levels
    codes = model.encode(x)
    for level, hop in enumerate(config.hops):
        assert out.recons[level].shape == x.shape
        assert codes[level].shape == (2, x.shape[-1] // hop) == out.codes[level].shape
        assert codes[level].dtype == torch.long
        assert 0 <= int(codes[level].min()) and int(codes[level].max()) < config.codebook_size
        assert model.decode(codes[level], level).shape == x.shape
        assert config.tokens_per_second(level) == config.sample_rate / hop
    assert float(out.spectral_loss) > 0.0  # spectral_weight defaults to > 0, so the STFT term runs
    assert set(out.scalars()) >= {"loss", "l0/usage", f"l{config.levels - 1}/perplexity"}


@pytest.mark.parametrize("spectral_weight", [0.1, 0.0])
def test_mel_weight_adds_the_weighted_log_mel_distance_of_every_level(spectral_weight: float) -> None:
    """`mel_weight` adds mel_weight x the multi-scale log-mel L1 of each level's reconstruction to the loss (also
    with the spectral term off), reports it as mel_loss, and leaves everything else as it was."""
    from dataclasses import replace

    x = tone_and_noise(batch=2, length=4 * VQVAE(TINY).multiple())
    trained = trained_once(TINY, x)
    plain, with_mel = (VQVAE(replace(TINY, spectral_weight=spectral_weight, mel_weight=weight)) for weight in (0.0, 2.5))
    for model in (plain, with_mel):
        model.load_state_dict(trained.state_dict())
        model.eval()
    out_plain, out_mel = plain(x), with_mel(x)
    reference = reference_spectra(x, fft_sizes=with_mel.fft_sizes)
    expected = sum(mel_loss(reference, estimate_magnitudes(reference, recon), TINY.sample_rate) for recon in out_mel.recons)
    assert float(out_plain.mel_loss) == 0.0 and float(expected) > 0.0
    torch.testing.assert_close(out_mel.mel_loss, expected)
    torch.testing.assert_close(out_mel.loss - out_plain.loss, 2.5 * expected)
    torch.testing.assert_close(out_mel.spectral_loss, out_plain.spectral_loss)
    assert out_mel.scalars()["l0/mel_loss"] == pytest.approx(float(out_mel.levels[0].mel_loss))
    with pytest.raises(VQVAEInputError, match="loss weights"):
        VQVAEConfig(mel_weight=-1.0)


def test_bad_inputs_raise_clear_errors() -> None:
    model = VQVAE(TINY)
    with pytest.raises(VQVAEInputError, match="multiple of 16"):
        model(torch.zeros(1, 1, 100))
    with pytest.raises(VQVAEInputError, match="mono"):
        model(torch.zeros(1, 2, 64))
    with pytest.raises(VQVAEInputError, match="level 3"):
        model.decode(torch.zeros(1, 4, dtype=torch.long), 3)
    with pytest.raises(CodebookError, match="codes must lie"):
        model.decode(torch.full((1, 4), 64), 0)
    with pytest.raises(VQVAEInputError, match="downs"):
        VQVAEConfig(downs=())
    assert model.pad_to_multiple(torch.zeros(1, 1, 100)).shape[-1] == 112
    # encode only needs a multiple of the largest requested hop
    assert model.encode(torch.zeros(1, 1, 8), levels=[1])[0].shape == (1, 1)


# ----------------------------------------------------------------------------------- invariants


CONVOLUTIONS = [  # (transposed, frames, kernel, stride, padding, dilation, output_padding)
    (False, 40, 3, 1, 1, 1, 0), (False, 40, 3, 1, 9, 9, 0), (False, 19, 3, 1, 27, 27, 0), (False, 40, 4, 2, 1, 1, 0),
    (False, 23, 5, 3, 2, 1, 0), (False, 17, 3, 1, 0, 2, 0), (True, 20, 4, 2, 1, 1, 0), (True, 11, 5, 3, 2, 1, 1),
    (True, 9, 3, 1, 1, 2, 0),
]  # fmt: skip


@pytest.mark.parametrize("transposed, frames, kernel, stride, padding, dilation, output_padding", CONVOLUTIONS)
def test_tap_convolution_gradients_are_exact(transposed, frames, kernel, stride, padding, dilation, output_padding):
    """The weight gradient as one matrix product per tap (with the input and bias gradients) against finite
    differences: strides, dilations and paddings that reach past the ends, transposed convolutions too."""
    generator = torch.Generator().manual_seed(frames)
    x = torch.randn(2, 5, 1, frames, dtype=torch.float64, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(*((5, 6) if transposed else (6, 5)), 1, kernel, dtype=torch.float64, generator=generator)
    bias = torch.randn(6, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(
        lambda x, w, b: TapConvolution.apply(x, w, b, stride, padding, dilation, transposed, output_padding),
        (x, weight.requires_grad_(), bias.requires_grad_()),
    )


@settings(max_examples=60, deadline=None)
@given(rows_a=st.integers(1, 12), rows_b=st.integers(1, 12), taps=st.integers(1, 5), stride=st.integers(1, 4),
       padding=st.integers(0, 14), dilation=st.integers(1, 6))
def test_tap_products_match_the_sum_they_stand_for(rows_a, rows_b, taps, stride, padding, dilation) -> None:
    """Any shape, including taps that fall wholly outside the frames: each tap's sum of row products."""
    generator = torch.Generator().manual_seed(rows_a * 100 + rows_b)
    a = torch.randn(2, rows_a, 3, dtype=torch.float64, generator=generator)
    b = torch.randn(2, rows_b, 4, dtype=torch.float64, generator=generator)
    expected = torch.zeros(3, 4, taps, dtype=torch.float64)
    for j in range(taps):
        for t in range(rows_a):
            partner = t * stride + j * dilation - padding
            if 0 <= partner < rows_b:
                expected[:, :, j] += a[:, t].T @ b[:, partner]
    found = _tap_products(a, b, taps=taps, stride=stride, padding=padding, dilation=dilation)
    torch.testing.assert_close(found, expected)


def test_fp32_training_takes_tap_gradients_equal_to_torchs() -> None:
    """A training step of the VQ-VAE in fp32 on a CPU runs its convolutions through TapConvolution, and every
    parameter's gradient equals the one torch's own convolution gradients give."""
    x = tone_and_noise(batch=2, length=2 * 128)
    grads, kinds = {}, {}
    for taps in (True, False):
        torch.manual_seed(0)
        model = use_tap_gradients(VQVAE(TINY_JUKEBOX_HOPS), taps)
        taken = []
        model.decoders[0][-1].register_forward_hook(lambda m, i, out: taken.append(type(out.grad_fn).__name__))
        model(x).loss.backward()
        grads[taps] = {name: p.grad.clone() for name, p in model.named_parameters()}
        kinds[taps] = taken[0]
    assert "TapConvolution" in kinds[True] and "TapConvolution" not in kinds[False]
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_decode_of_encode_equals_eval_forward() -> None:
    x = tone_and_noise(batch=2, length=256)
    model = trained_once(TINY, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(x)  # eval mode: no codebook update
    codes = model.encode(x)
    for level in range(TINY.levels):
        assert torch.equal(codes[level], out.codes[level])
        torch.testing.assert_close(model.decode(codes[level], level), out.recons[level])
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), f"eval forward changed {name}"


def test_state_dict_and_safetensors_round_trip(tmp_path: Path) -> None:
    x = tone_and_noise(batch=2, length=256)
    model = trained_once(TINY, x)
    assert all(bool(codebook.initialised) for codebook in model.codebooks)
    codes = model.encode(x)
    recons = [model.decode(c, level) for level, c in enumerate(codes)]

    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    for state in (model.state_dict(), load_file(str(path))):
        torch.manual_seed(123)  # a differently initialised fresh model
        fresh = VQVAE(TINY).eval()
        fresh.load_state_dict(state)
        assert all(bool(codebook.initialised) for codebook in fresh.codebooks)
        for level, (c, r) in enumerate(zip(codes, recons)):
            assert torch.equal(fresh.encode(x, levels=[level])[0], c)
            assert torch.equal(fresh.decode(c, level), r)


# ------------------------------------------------------------------------------------- training


def test_overfits_one_batch() -> None:
    """100 Adam steps on two 64 ms tones + white noise (power 0.0025, which a 6-bit-per-token code
    cannot carry). The tones hold ~97% of the power (~0.085); an untrained model's L2 is ~0.09.
    Bound: every level's eval L2 below 0.005 = twice the noise floor (~6% of the signal power,
    > 12 dB SNR), i.e. the tones themselves are reconstructed to about the noise level.
    Measured: ~0.0025-0.003 per level after 100 steps."""
    torch.manual_seed(0)
    config = VQVAEConfig(
        sample_rate=16000, downs=(2, 3, 4), width=32, depth=2, codebook_size=64, code_width=16, spectral_weight=0.0
    )
    model = VQVAE(config)
    x = tone_and_noise(batch=2, length=1024)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        out = model(x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        first = float(out.loss.detach()) if first is None else first
    model.eval()
    final = model(x)
    assert first > 0.2
    for level, metrics in enumerate(final.levels):
        assert float(metrics.recon_loss) < 0.005, f"level {level}: L2 {float(metrics.recon_loss):.4f}"


def test_gradient_reaches_encoder_through_straight_through() -> None:
    config = VQVAEConfig(**{**TINY.__dict__, "commitment_weight": 0.0, "spectral_weight": 0.0})
    torch.manual_seed(0)
    model = VQVAE(config)
    model(tone_and_noise(batch=1, length=64)).loss.backward()
    for encoder in model.encoders:
        first_conv = encoder[0]
        assert first_conv.weight.grad is not None and float(first_conv.weight.grad.abs().sum()) > 0


def test_codebook_learns_without_gradients() -> None:
    torch.manual_seed(0)
    model = VQVAE(TINY)
    codebook_names = {name for name, _ in model.named_parameters() if name.startswith("codebooks")}
    assert not codebook_names, f"codebook state must be buffers, found parameters {codebook_names}"
    x = tone_and_noise(batch=2, length=256)
    model(x)  # initialises
    before = model.codebooks[0].embeddings.clone()
    out = model(x)
    out.loss.backward()
    codebook = model.codebooks[0]
    assert not codebook.embeddings.requires_grad and codebook.embeddings.grad is None
    assert not torch.equal(before, codebook.embeddings), "a training forward must move the codes (EMA)"


# ------------------------------------------------------------------------------------- codebook


def test_codebook_initialised_from_data() -> None:
    """Data sits at mean 5 (std 0.1); the placeholder codes are N(0, 1). After one training forward
    every code must sit within the data cloud (nearest data vector closer than 1.0, the cloud's
    diameter is ~0.4 * 2 in 16 dimensions); an eval forward must not initialise."""
    torch.manual_seed(0)
    z = 5.0 + 0.1 * torch.randn(4, 16, 64)  # (B, D, N): 256 vectors for 64 codes
    codebook = EMACodebook(codebook_size=64, code_width=16).eval()
    codebook(z)
    assert not bool(codebook.initialised)
    codebook.train()
    codebook(z)
    assert bool(codebook.initialised)
    vectors = z.transpose(1, 2).reshape(-1, 16)  # (B*N, D)
    nearest = torch.cdist(codebook.embeddings, vectors).min(dim=1).values  # (K,)
    assert float(nearest.max()) < 1.0
    assert float((codebook.embeddings.mean() - 5.0).abs()) < 0.05


def test_dead_codes_are_restarted() -> None:
    """Kill 60 of 64 codes (far away, EMA count 0). With 256 candidate vectors per batch, one training
    forward must move every dead code into the data (none left far away), and usage on a fresh batch
    must rise from <= 4/64 to more than half of the codebook."""
    torch.manual_seed(0)
    codebook = EMACodebook(codebook_size=64, code_width=16, restart_threshold=1.0)
    batch = lambda: torch.randn(4, 16, 64)  # noqa: E731  (B, D, N)
    codebook(batch())
    with torch.no_grad():
        codebook.embeddings[4:] = 1000.0
        codebook.ema_sums[4:] = 0.0
        codebook.ema_counts[4:] = 0.0
    codebook.eval()
    assert float(codebook(batch()).usage) <= 4 / 64
    codebook.train()
    for _ in range(3):
        codebook(batch())
    assert float(codebook.embeddings.norm(dim=1).max()) < 20.0, "a dead code was not restarted"
    codebook.eval()
    assert float(codebook(batch()).usage) > 0.5


def test_codebook_perplexity_and_usage() -> None:
    codebook = EMACodebook(codebook_size=8, code_width=2).eval()
    with torch.no_grad():
        codebook.embeddings.copy_(torch.arange(16.0).view(8, 2))
    z = codebook.dequantize(torch.tensor([[0, 1, 2, 3]]))  # four codes, equally often
    result = codebook(z)
    assert torch.equal(result.codes, torch.tensor([[0, 1, 2, 3]]))
    assert float(result.usage) == pytest.approx(0.5)
    assert float(result.perplexity) == pytest.approx(4.0, rel=1e-5)
    assert float(result.commit_loss) == pytest.approx(0.0, abs=1e-10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Two codebooks per rank, trained on rank-specific data; rank 0 gathers all buffers."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(100 + rank)  # deliberately different placeholders and RNG streams per rank
        no_restart = EMACodebook(codebook_size=32, code_width=8, restart_threshold=0.0)
        restarting = EMACodebook(codebook_size=32, code_width=8, restart_threshold=1.0)
        for _ in range(4):
            z = torch.randn(2, 8, 12) + rank  # (B, D, N): 24 vectors per rank, fewer than the codes
            no_restart(z)
            restarting(z)
        tensors = {f"{prefix}.{name}": buf.float() for prefix, module in (("a", no_restart), ("b", restarting))
                   for name, buf in module.named_buffers()}
        if rank == 0:
            torch.save(tensors, Path(out_dir) / "rank0.pt")
        dist.barrier()
        if rank == 1:
            torch.save(tensors, Path(out_dir) / "rank1.pt")
    finally:
        dist.destroy_process_group()


def test_codebook_stays_identical_across_ddp_ranks(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
    # Counts were all-reduced: without restarts the EMA count total after 4 steps is
    # 32 * 0.99^4 (initial counts of 1) + (1 - 0.99^4) * 48 (24 vectors on each of 2 ranks).
    expected = 32 * 0.99**4 + (1 - 0.99**4) * 48
    assert float(rank0["a.ema_counts"].sum()) == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------- losses


def test_quality_metrics_match_known_noise_levels() -> None:
    """White noise at -20 dB relative to a tone gives SI-SDR ~ +20 dB; identical signals give a
    spectral convergence far below -60 dB and a mel L1 of 0."""
    torch.manual_seed(0)
    ref = tone_and_noise(batch=2, length=4096, noise=0.0)
    noise = torch.randn_like(ref)
    noise = noise * (ref.pow(2).mean(-1, keepdim=True) / noise.pow(2).mean(-1, keepdim=True)).sqrt() * 0.1
    est = ref + noise
    assert si_sdr(ref, est).shape == (2,)
    assert si_sdr(ref, est) == pytest.approx([20.0, 20.0], abs=0.5)
    assert si_sdr(ref, 3.0 * est) == pytest.approx(si_sdr(ref, est).tolist(), abs=1e-3)  # scale invariant
    assert float(spectral_convergence_db(ref, ref).max()) < -60.0
    assert -25.0 < float(spectral_convergence_db(ref, est).mean()) < -10.0
    assert float(mel_l1(ref, ref, 16000).abs().max()) == 0.0
    assert float(mel_l1(ref, est, 16000).min()) > 0.0
    assert si_sdr(ref[0, 0], est[0, 0]).dim() == 0
    with pytest.raises(AudioShapeError, match="differ in shape"):
        si_sdr(ref, est[..., :100])


def test_stft_loss_handles_short_inputs_and_silence() -> None:
    x = tone_and_noise(batch=2, length=300)  # shorter than every FFT size but 256
    silent = torch.zeros_like(x, requires_grad=True)
    loss = multi_resolution_stft_loss(x, silent, fft_sizes=(2048, 1024, 512))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(silent.grad).all()  # no NaN from |0|
    quiet = (1e-3 * torch.randn_like(x)).requires_grad_()
    multi_resolution_stft_loss(x, quiet, fft_sizes=(2048, 1024, 512)).backward()
    assert float(quiet.grad.abs().sum()) > 0
    assert float(multi_resolution_stft_loss(x, x)) == pytest.approx(0.0, abs=1e-5)
    assert default_fft_sizes(44100) == (2048, 1024, 512)
    assert default_fft_sizes(22050) == (1024, 512, 256)
    filters = mel_filterbank(16000, 512, n_mels=40)
    assert filters.shape == (40, 257) and float(filters.sum(dim=1).min()) > 0  # no empty filter
