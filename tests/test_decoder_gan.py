"""`housebox train decoder`: adversarial fine-tuning of the decoders with the codes left as they were."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VQVAE

from housebox.config import apply_overrides, load_preset
from housebox.audio.features import spectral_flatness
from housebox.models.discriminator import DiscriminatorConfig, MultiScaleSTFTDiscriminator
from housebox.models.load import ADVERSARIAL_DECODERS, load_vqvae
from housebox.store import load_train_state, load_weights
from housebox.train.decoder import DecoderGAN, train_decoder

FAST = ["decoder.chunk_seconds=0.256", "decoder_train.batch_size=2", "decoder_train.log_every=1",
        "discriminator.width=8", "decoder_train.warmup_steps=1"]


def preset(*extra: str) -> dict:
    return apply_overrides(load_preset("tiny"), [s.split("--set ")[-1] for s in TINY_VQVAE if s != "--set"]
                           + FAST + list(extra))


@pytest.fixture(scope="module")
def tiny_run(demo_data, tmp_path_factory) -> Path:
    from housebox.cli import main

    run = tmp_path_factory.mktemp("decoder_run")
    assert main(["train", "vqvae", "--data", str(demo_data), "-o", str(run / "vqvae"), "--device", "cpu",
                 *TINY_VQVAE, "--set", "vqvae_train.steps=4"]) == 0
    return run


def fresh_run(tiny_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_run / "vqvae", tmp_path / "run" / "vqvae")
    return tmp_path / "run"


def clip(seconds: float = 0.512, sample_rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * torch.sin(2 * np.pi * 220 * t) * (1 + torch.sin(2 * np.pi * 2 * t)))[None, None]


def test_discriminator_sees_real_and_decoded_audio_of_one_length_and_rate(tiny_run):
    vqvae = load_vqvae(tiny_run / "vqvae")
    disc = MultiScaleSTFTDiscriminator(DiscriminatorConfig(sample_rate=vqvae.config.sample_rate, width=8))
    seen = []
    disc.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    model = DecoderGAN(vqvae, disc, (0, 2), 1.0, 2.0).train()
    audio = torch.cat([clip(), clip() * 0.5])
    loss, metrics = model(audio)
    assert torch.isfinite(loss) and {"l0/adversarial", "l2/features", "discriminator_loss"} <= set(metrics)
    assert seen[0] == (2, 1, audio.shape[-1])  # real
    assert seen[1] == (4, 1, audio.shape[-1])  # both levels' decoded audio, same length
    assert all(shape[1:] == seen[0][1:] for shape in seen)
    assert disc.config.sizes() == vqvae.fft_sizes  # the spectral loss's resolutions at the VQ-VAE's rate


def test_one_step_changes_only_the_chosen_decoder_and_the_discriminator(tiny_run, tmp_path):
    run = fresh_run(tiny_run, tmp_path)
    before = load_weights(run / "vqvae" / "model.safetensors")
    train_decoder(run, _data(tiny_run), None, preset("decoder_train.steps=1"), levels=(0,), device="cpu",
                  progress=False)
    after = load_train_state(run / "decoder" / "train_state.pt")["model"]
    changed = {k for k, v in before.items() if not torch.equal(v, after[f"vqvae.{k}"])}
    assert changed and all(k.startswith("decoders.0.") for k in changed)  # encoders, codebooks, other decoders: frozen
    torch.manual_seed(0)  # the discriminator as train_decoder built it (seed 0), before its step
    initial = MultiScaleSTFTDiscriminator(DiscriminatorConfig(sample_rate=16000, width=8)).state_dict()
    weights = [k for k in initial if k.endswith("weight")]  # (the last biases' hinge gradients cancel: +1 - 1)
    assert all(not torch.equal(initial[k], after[f"discriminator.{k}"]) for k in weights)  # all took the step


def _data(tiny_run: Path) -> Path:
    import json

    return Path(json.loads((tiny_run / "vqvae" / "config.json").read_text())["describe"]["data"]["dir"])


def test_codes_stay_the_same_and_the_tuned_decoder_is_installed_beside_the_old(tiny_run, tmp_path):
    run = fresh_run(tiny_run, tmp_path)
    original = load_vqvae(run / "vqvae")
    train_decoder(run, _data(tiny_run), None, preset("decoder_train.steps=3"), levels=(0,), device="cpu",
                  progress=False)
    assert (run / "vqvae" / ADVERSARIAL_DECODERS).exists() and (run / "vqvae" / "model.safetensors").exists()
    tuned = load_vqvae(run / "vqvae")
    audio = clip()
    codes = original.encode(audio)
    assert all(torch.equal(a, b) for a, b in zip(codes, tuned.encode(audio)))  # codes, and so the priors, unchanged
    assert not torch.equal(original.decode(codes[0], 0), tuned.decode(codes[0], 0))  # level 0 decodes anew
    assert torch.equal(original.decode(codes[1], 1), tuned.decode(codes[1], 1))  # untouched level
    old = load_vqvae(run / "vqvae", adversarial=False)
    assert torch.equal(old.decode(codes[0], 0), original.decode(codes[0], 0))  # the old decoders are kept


def test_resume_is_exact(tiny_run, tmp_path):
    straight = fresh_run(tiny_run, tmp_path / "a")
    train_decoder(straight, _data(tiny_run), None, preset("decoder_train.steps=4", "decoder_train.checkpoint_every=2"),
                  levels=(0,), device="cpu", progress=False)
    halves = fresh_run(tiny_run, tmp_path / "b")
    two = preset("decoder_train.steps=4", "decoder_train.checkpoint_every=2")
    two["decoder_train"]["steps"] = 2
    train_decoder(halves, _data(tiny_run), None, two, levels=(0,), device="cpu", progress=False)
    train_decoder(halves, _data(tiny_run), None, preset("decoder_train.steps=4", "decoder_train.checkpoint_every=2"),
                  levels=(0,), resume=True, device="cpu", progress=False)
    a = load_train_state(straight / "decoder" / "train_state.pt")
    b = load_train_state(halves / "decoder" / "train_state.pt")
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_flatness_tells_noise_from_tones():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(16000, generator=generator).numpy() * 0.1
    assert spectral_flatness(noise) > 0.5
    assert spectral_flatness(clip(1.0)[0, 0].numpy()) < 0.05


def test_the_decoders_losses_never_reach_the_discriminator(tiny_run):
    def discriminator_grads(adversarial: float, features: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        disc = MultiScaleSTFTDiscriminator(DiscriminatorConfig(sample_rate=16000, width=8))
        model = DecoderGAN(load_vqvae(tiny_run / "vqvae"), disc, (0,), adversarial, features).train()
        loss, _ = model(torch.cat([clip(), clip() * 0.5]))
        loss.backward()
        return [p.grad.clone() for p in disc.parameters()]

    alone = discriminator_grads(0.0, 0.0)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(alone, discriminator_grads(1.0, 2.0)))
    assert any(g.abs().sum() > 0 for g in alone)


def test_samples_say_which_decoders_made_them(tiny_run, tmp_path):
    from housebox.cli import main

    run = fresh_run(tiny_run, tmp_path)
    data = tmp_path / "data"  # this test encodes its own code cache
    shutil.copytree(_data(tiny_run), data, ignore=shutil.ignore_patterns("codes"))
    train_decoder(run, data, None, preset("decoder_train.steps=1"), levels=(0,), device="cpu", progress=False)
    assert main(["encode", "--data", str(data), "--vqvae", str(run / "vqvae"), "--device", "cpu"]) == 0
    assert main(["train", "prior", "--level", "2", "--data", str(data), "-o", str(run / "prior_l2"),
                 "--device", "cpu", "--set", "prior.width=32", "--set", "prior.depth=1", "--set", "prior.n_ctx=32",
                 "--set", "prior_train.steps=1", "--set", "prior_train.batch_size=2"]) == 0
    assert main(["sample", str(run), "--seconds", "1", "--levels", "1", "--device", "cpu",
                 "-o", str(tmp_path / "s")]) == 0
    import json

    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["models"]["vqvae"]["decoders"]["levels"] == [0]
    assert len(report["models"]["vqvae"]["decoders"]["sha256"]) == 64


def test_torchrun_two_processes_tune_identical_decoders(tiny_run, tmp_path):
    import json
    import os
    import subprocess
    import sys

    run = fresh_run(tiny_run, tmp_path)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    fast = sum([["--set", f] for f in FAST + ["decoder_train.steps=2", "decoder_train.checkpoint_every=2"]], [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "housebox",
           "train", "decoder", "--run-dir", str(run), "--data", str(_data(tiny_run)), "--level", "0", "--device", "cpu",
           *fast]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((run / "decoder" / "config.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_in_sync"] is True
    assert json.loads((run / "vqvae" / "config.json").read_text())["decoders"]["step"] == 2


def test_the_decoders_loss_weighs_each_term_as_configured(tiny_run):
    """The decoder's loss is l2 * L2 + spectral * spectral + mel * log-mel + adversarial + features, with the
    reconstruction weights the VQ-VAE's own unless the decoder section sets them."""
    def parts(**weights) -> tuple[float, dict]:
        torch.manual_seed(0)
        disc = MultiScaleSTFTDiscriminator(DiscriminatorConfig(sample_rate=16000, width=8))
        model = DecoderGAN(load_vqvae(tiny_run / "vqvae"), disc, (0,), 0.0, 0.0, **weights).train()
        _, metrics = model(torch.cat([clip(), clip() * 0.5]))
        return float(metrics["decoder_loss"]), {k: float(v) for k, v in metrics.items()}

    vq = load_vqvae(tiny_run / "vqvae").config
    own, m = parts()
    assert own == pytest.approx(vq.l2_weight * m["l0/recon_loss"] + vq.spectral_weight * m["l0/spectral_loss"], rel=1e-5)
    assert m["l0/mel_loss"] == 0.0  # not computed at weight 0
    tuned, m = parts(l2_weight=0.0, spectral_weight=2.0, mel_weight=3.0)
    assert m["l0/mel_loss"] > 0
    assert tuned == pytest.approx(2.0 * m["l0/spectral_loss"] + 3.0 * m["l0/mel_loss"], rel=1e-5)
