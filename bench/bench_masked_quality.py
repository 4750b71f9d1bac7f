"""Masked against autoregressive upsampling, quality and speed, from the TRUE codes of the level above.

Given a prepared dataset with its code cache, the run's VQ-VAE and two trained upsamplers of one level
(one `kind: autoregressive`, one `kind: masked`, ideally trained with the same steps), it takes one held-out
piece of `--seconds` per artist, fills the level from the true codes of the level above with each model
(masked: each K of `--steps` at each window hop of `--hops`: windows start that share of a window apart,
so 0.5 recomputes half of every window, 0.875 an eighth), and prints per model: the share of codes equal to the true ones, the L1
distance of log power spectrograms between the decoded audio and the decoding of the true codes, and
audio seconds per wall second (batch 1, one thread).

    housebox train upsampler --level 0 --data DATA -o up_ar --preset tiny --set upsampler_train.steps=600
    housebox train upsampler --level 0 --kind masked --data DATA -o up_masked --preset tiny --set upsampler_train.steps=600
    python bench/bench_masked_quality.py --data DATA --vqvae RUN/vqvae --ar up_ar --masked up_masked
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from housebox.data.dataset import held_out_segments, label_ids, token_beats
from housebox.data.labels import Vocabulary
from housebox.data.prepare import load_beats
from housebox.generate.pipeline import decode
from housebox.generate.sampling import sample_codes, sample_masked
from housebox.models.conditioning import Labels
from housebox.models.load import load_prior, load_vqvae


def log_power(audio: np.ndarray) -> torch.Tensor:
    """Log power spectrogram, 1024-point Hann frames, hop 256: Tensor[513 x frames]."""
    x = torch.as_tensor(np.asarray(audio), dtype=torch.float32).reshape(-1)
    spec = torch.stft(x, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs() ** 2
    return torch.log(spec + 1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="prepared dataset with its code cache")
    parser.add_argument("--vqvae", help="the VQ-VAE model directory that made the code cache")
    parser.add_argument("--ar", help="autoregressive upsampler model directory")
    parser.add_argument("--masked", help="masked upsampler model directory (same level)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per held-out piece (default 3)")
    parser.add_argument("--steps", default="4,8,12,16", help="passes per window of the masked model")
    parser.add_argument("--hops", default="0.5", help="masked window hops as shares of a window, e.g. 0.5,0.875")
    args = parser.parse_args()
    if not all((args.data, args.vqvae, args.ar, args.masked)):  # `make bench` runs every bench without arguments
        print("bench_masked_quality: needs --data, --vqvae, --ar and --masked (trained models; see its docstring)")
        return
    torch.set_num_threads(1)
    data = Path(args.data)
    vqvae = load_vqvae(args.vqvae)
    models = {"autoregressive": load_prior(args.ar), "masked": load_prior(args.masked)}
    level = models["masked"].config.level
    if models["autoregressive"].config.level != level or models["autoregressive"].config.masked:
        raise SystemExit("--ar must be an autoregressive upsampler of the same level as --masked")
    vocab = Vocabulary.load(data / "labels.json")
    sr, hops = vqvae.config.sample_rate, vqvae.config.hops
    ratio = hops[level + 1] // hops[level]
    pieces, artists = [], set()
    for row, start, end in held_out_segments(data, sr):
        if row["artist"] in artists or end - start < args.seconds:
            continue
        artists.add(row["artist"])
        above = np.load(data / "codes" / f"l{level + 1}" / f"{row['id']}.npy")
        truth = np.load(data / "codes" / f"l{level}" / f"{row['id']}.npy")
        first = int(start * sr / hops[level + 1])
        count = int(args.seconds * sr / hops[level + 1])
        pieces.append((row, torch.from_numpy(above[first : first + count].astype(np.int64))[None],
                       torch.from_numpy(truth[first * ratio : (first + count) * ratio].astype(np.int64))[None],
                       first * ratio))
    variants = [("autoregressive", 0, 0.5)] + [("masked", int(k), float(h)) for h in args.hops.split(",")
                                               for k in args.steps.split(",")]
    results: dict[tuple, dict[str, list]] = {}
    for row, above, truth, first in pieces:
        artist, genres = label_ids(row, vocab, models["masked"].config.max_genres)
        labels = Labels(artist=torch.tensor([artist]), genres=torch.tensor([genres]))
        beats = torch.from_numpy(token_beats(load_beats(data, row["id"]), first, truth.shape[1], hops[level] / sr))[None]
        reference = log_power(decode(vqvae, truth, level)[0])
        for kind, steps, hop in variants:
            common = dict(n_tokens=truth.shape[1], labels=labels, upper=above, beats=beats, progress=False,
                          generator=torch.Generator().manual_seed(0))
            tick = time.perf_counter()
            if kind == "masked":
                codes = sample_masked(models[kind], steps=steps, hop_fraction=hop, **common)
            else:
                codes = sample_codes(models[kind], **common)
            wall = time.perf_counter() - tick
            out = results.setdefault((kind, steps, hop), {"equal": [], "l1": [], "wall": []})
            out["equal"].append((codes == truth).float().mean().item())
            out["l1"].append((log_power(decode(vqvae, codes, level)[0]) - reference).abs().mean().item())
            out["wall"].append(wall)
    print(f"{len(pieces)} held-out pieces of {args.seconds:g} s (one per artist); level {level} from the true "
          f"level-{level + 1} codes")
    print(f"{'upsampler':<16} {'passes':>6} {'hop':>5} {'codes equal':>12} {'log-spectral L1':>16} {'audio s / wall s':>17}")
    for (kind, steps, hop), out in results.items():
        print(f"{kind:<16} {steps or '-':>6} {hop if steps else '-':>5} {np.mean(out['equal']):>12.3f} {np.mean(out['l1']):>16.3f} "
              f"{args.seconds / np.mean(out['wall']):>17.2f}")


if __name__ == "__main__":
    main()
