"""The `housebox` command: thin verbs that parse arguments, call one function and print the result."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from housebox.heap import keep_freed_memory


def _cmd_prepare(args: argparse.Namespace) -> int:
    from housebox.data.prepare import PrepareSettings, prepare

    sample_rate = args.sr
    if args.preset:  # the rate the preset's models expect, so `train --preset` finds the data it needs
        from housebox.config import load_preset

        preset_rate = int(load_preset(args.preset).get("vqvae", {}).get("sample_rate", 44100))
        if sample_rate is not None and sample_rate != preset_rate:
            raise ValueError(f"--sr {sample_rate} contradicts --preset {args.preset} ({preset_rate} Hz); give one")
        sample_rate = preset_rate
    settings = PrepareSettings(
        sample_rate=sample_rate or 44100,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        remove_vocals=args.remove_vocals,
        target_lufs=args.target_lufs,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
    )
    report = prepare(args.src, args.output, settings, labels_csv=args.labels, workers=args.workers)
    print(f"{'artist':<32} {'tracks':>6} {'minutes':>8}  artist name from")
    for artist, entry in report.artists.items():
        sources = ", ".join(f"{where} {n}" for where, n in sorted(entry["labels"].items()))
        print(f"{artist[:32]:<32} {entry['tracks']:>6} {entry['minutes']:>8.1f}  {sources}")
    relabelled = f", {len(report.relabelled)} relabelled" if report.relabelled else ""
    print(
        f"prepared {len(report.prepared)} new tracks ({report.already_present} already present{relabelled}, "
        f"{len(report.skipped)} skipped); dataset: {report.tracks} tracks, {report.seconds / 60:.1f} min "
        f"-> {args.output}"
    )
    print("artist names come from the --labels CSV, then file tags, then the folder (ARTIST/GENRE/file)")
    if report.skipped:
        print(f"reasons for skipped files are in {Path(args.output) / 'report.json'}")
    return 0


def _cmd_make_demo_corpus(args: argparse.Namespace) -> int:
    from housebox.data.demo_corpus import make_demo_corpus

    info = make_demo_corpus(args.output, minutes=args.minutes, seed=args.seed, sample_rate=args.sr)
    print(f"wrote {len(info.tracks)} tracks ({info.seconds_total / 60:.1f} min) and {info.labels_csv} to {args.output}")
    return 0


CONTINUE = " (continue with the same command and --resume)"


def _cmd_demo(args: argparse.Namespace) -> int:
    from housebox.demo import RESUME_HINT, run_demo

    try:
        run_demo(Path(args.output), quick=args.quick, seed=args.seed, device=args.device)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM in any stage stops the whole demo; finished work is kept
        print(f"\nhousebox demo: stopped; {RESUME_HINT} (finished stages are kept in {args.output})", flush=True)
        return 130
    return 0


def _preset(args: argparse.Namespace) -> dict:
    from housebox.config import apply_overrides, load_preset

    return apply_overrides(load_preset(args.preset), args.set)


def _cmd_train_vqvae(args: argparse.Namespace) -> int:
    from housebox.train.vqvae import SELECT, train_vqvae

    result = train_vqvae(args.data, args.output, _preset(args), resume=args.resume, device=args.device)
    state = "stopped" if result.interrupted else "finished"
    validation = result.validation_summary(SELECT, "dB mean spectral convergence")
    print(f"{state} at step {result.step}" + (f"; {validation}" if validation else "") + f": {args.output}"
          + (CONTINUE if result.interrupted else ""))
    return 0


def _cmd_train_decoder(args: argparse.Namespace) -> int:
    from housebox.train.decoder import train_decoder

    levels = tuple(args.level) if args.level else ()
    result = train_decoder(args.run, args.data, args.output, _preset(args), levels=levels, resume=args.resume,
                           device=args.device)
    state = "stopped" if result.interrupted else "finished"
    figures = ", ".join(f"{k} {v:.4g}" for k, v in result.last_eval.items())
    where = "installed into the run's VQ-VAE" if not result.interrupted else "continue with --resume"
    print(f"{state} at step {result.step}" + (f"; validation {figures}" if figures else "") + f"; {where}")
    return 0


def _cmd_train_prior(args: argparse.Namespace) -> int:
    from housebox.train.prior import train_prior

    preset = _preset(args)
    if getattr(args, "model_kind", None):  # train upsampler --kind: the upsampler section's kind
        preset["upsampler"] = {**(preset.get("upsampler") or {}), "kind": args.model_kind}
    result = train_prior(args.data, args.output, args.level, preset, upsampler=args.kind == "upsampler",
                         resume=args.resume, device=args.device)
    state = "stopped" if result.interrupted else "finished"
    validation = result.validation_summary("bits_per_token", "bits/token")
    print(f"{state} at step {result.step}" + (f"; {validation}" if validation else "") + f": {args.output}"
          + (CONTINUE if result.interrupted else ""))
    return 0


def _cmd_train_all(args: argparse.Namespace) -> int:
    from housebox.train.all import train_all

    if args.minutes is None and not args.steps_from_preset and not args.resume:
        raise ValueError("train all: give --minutes M (a wall-clock budget) or --steps-from-preset")
    try:
        result = train_all(args.data, args.output, _preset(args), minutes=args.minutes, resume=args.resume,
                           device=args.device)
    except KeyboardInterrupt:
        print(f"\nstopped; continue with the same command and --resume ({args.output}/plan.json)")
        return 130
    if result.interrupted:
        return 130
    print(f"\ntrained {len(result.stages)} models in {result.wall_seconds / 60:.1f} min -> {args.output}; "
          f"next: housebox sample {args.output} --artist NAME")
    return 0


def _noise(args: argparse.Namespace) -> dict[str, float]:
    """--upsample-noise where given (else the settings' default), checked."""
    if args.upsample_noise is None:
        return {}
    if not args.upsample_noise >= 0:
        raise ValueError(f"--upsample-noise must be >= 0 (inf: a random order), got {args.upsample_noise}")
    return {"upsample_noise": args.upsample_noise}


def _cmd_sample(args: argparse.Namespace) -> int:
    import time

    from housebox.generate.pipeline import SampleSettings, generate, load_run, write_outputs

    settings = SampleSettings(
        artist=args.artist, genres=tuple(args.genre or ()), seconds=args.seconds, n=args.n,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale,
        beat_guidance=args.beat_guidance,
        seed=args.seed, hop_fraction=args.hop_fraction, levels=args.levels, prime=args.prime,
        prime_seconds=args.prime_seconds, continue_codes=args.continue_codes, upsample_only=args.upsample_only,
        bpm=args.bpm, upsample_steps=args.upsample_steps, upsample_hop=args.upsample_hop,
        compile=args.compile, **_noise(args),
    )
    if args.seconds <= 0 or args.n < 1:
        raise ValueError("--seconds must be > 0 and -n at least 1")
    run = load_run(args.run, _device(args.device), upsampler_kind=args.upsampler_kind, precision=args.precision)
    out = Path(args.output or Path(args.run) / "samples" / time.strftime("%Y%m%d-%H%M%S"))  # where `serve` lists them
    generation = generate(run, settings)
    wavs = write_outputs(out, generation, settings, run)
    audio_seconds = generation.audio.shape[1] / generation.sample_rate
    print(f"wrote {len(wavs)} x {audio_seconds:.1f} s to {out} (open {out / 'index.html'}); "
          f"{generation.wall_seconds:.1f} s wall, decoded from level {generation.lowest_level}")
    if args.check:
        from housebox.evaluate.originality import check_samples, format_table, training_data

        print(format_table(check_samples(out, training_data(args.run))))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from housebox.evaluate.originality import OriginalityConfig, check_samples, format_table

    thresholds = {"suspicious_audio_seconds": args.suspicious_audio, "copied_audio_seconds": args.copied_audio,
                  "suspicious_melody_seconds": args.suspicious_melody, "copied_melody_seconds": args.copied_melody,
                  "suspicious_code_seconds": args.suspicious_codes, "copied_code_seconds": args.copied_codes}
    config = OriginalityConfig(**{k: v for k, v in thresholds.items() if v is not None})
    print(format_table(check_samples(args.samples, args.against, config, progress=True, output=args.output)))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from housebox.web.server import ServerSettings, serve

    serve(args.run, ServerSettings(host=args.host, port=args.port, samples_dir=args.samples,
                                   max_seconds=args.max_seconds, check=not args.no_check,
                                   allowed_hosts=tuple(args.allow_host or ())), device=_device(args.device))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from housebox.evaluate.run import evaluate_run, print_summary
    from housebox.generate.pipeline import load_run

    run = load_run(args.run, _device(args.device), upsampler_kind=args.upsampler_kind)
    out = Path(args.output or Path(args.run) / "evaluation")
    report = evaluate_run(run, args.data, out, seconds=args.seconds, per_artist=args.per_artist, seed=args.seed,
                          temperature=args.temperature, stage_pieces=getattr(args, "stage_pieces", 2),
                          beat_guidance=args.beat_guidance, **_noise(args))
    print_summary(report)
    print(f"wrote {out / 'evaluation.json'} (held-out and training audio per artist, tempo and key per generated "
          f"track, distances per artist, the stage table) and {out / 'evaluation.png'}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from housebox.data.codes import encode_dataset

    summary = encode_dataset(args.data, args.vqvae, device=_device(args.device))
    print(f"encoded {summary['encoded']} tracks ({summary['reused']} already cached); tokens per level: "
          f"{summary['tokens_per_level']} -> {Path(args.data) / 'codes'}")
    return 0


def _cmd_evaluate_vqvae(args: argparse.Namespace) -> int:
    from housebox.evaluate.vqvae import evaluate_vqvae, print_report
    from housebox.models.load import load_vqvae

    model = load_vqvae(args.vqvae, _device(args.device))
    out = Path(args.output or args.vqvae)
    report = evaluate_vqvae(model, args.data, out, seconds=args.seconds, max_tracks=args.max_tracks)
    print_report(report)
    print(f"wrote {out / 'vqvae_eval.json'}, {out / 'vqvae_spectrograms.png'}, {out / 'vqvae_codebook_usage.png'}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from housebox.evaluate.originality import OriginalityConfig
    from housebox.train.plan import format_plan, plan_disk, plan_models

    preset = _preset(args)
    plans = plan_models(preset, device=args.device, artists=args.artists, genres=args.genres)
    disk = plan_disk(preset, args.hours, OriginalityConfig()) if args.hours else None
    print(f"housebox plan: preset {args.preset}, training on {args.device}")
    print(format_plan(plans, args.gpu_memory, disk))
    return 0


def _device(name: str) -> str:
    from housebox.train.distributed import pick_device

    return str(pick_device(name))


def _add_upsampler_kind_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--upsampler-kind", choices=["autoregressive", "masked"],
                   help="where a level holds an upsampler of each kind, the one to use (default masked)")


def _add_beat_guidance_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beat-guidance", type=float, default=2.0,
                   help="top level: guidance by the beat clock, for priors trained with clock dropout (default 2; "
                        "1: off; 3 holds the beat harder and plays more kick and less of the rest: README)")


def _add_upsample_noise_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--upsample-noise", type=float, metavar="SCALE",
                   help="a masked upsampler keeps a pass's most confident draws after Gumbel noise of this scale; "
                        "inf keeps a random share (default 10; the better trained the upsampler, the darker a "
                        "finite scale makes it: README, \"Masked upsamplers\")")


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's, or OMP_NUM_THREADS); sampling steps use them "
                        "too (each thread reads a slice of the weights)")


def _add_training_flags(p: argparse.ArgumentParser, output: str = "model directory to write") -> None:
    from housebox.config import preset_names

    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("-o", "--output", required=True, help=output)
    p.add_argument("--preset", default="tiny", help=f"{' | '.join(preset_names())} or a YAML path (default tiny)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override one preset field, e.g. vqvae_train.steps=200 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    _add_device_flag(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="housebox",
        description="Train a Jukebox-style music generator on your own audio catalogue and generate new tracks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('housebox').__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("prepare", help="decode, clean and label a folder of music into a dataset",
                         description="Turn a folder of audio files into a housebox dataset (incremental).")
    p.add_argument("src", help="folder of audio files (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="dataset folder to create or extend")
    p.add_argument("--sr", type=int, help="sample rate of the dataset (default: the --preset's, else 44100)")
    p.add_argument("--preset", help="prepare at the sample rate of this preset's models (tiny 16 kHz, small "
                                    "22.05 kHz, jukebox 44.1 kHz)")
    p.add_argument("--labels", help="CSV with columns path,artist,genre (overrides tags and folder names)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="skip tracks shorter than this (default 2)")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="skip tracks longer than this (default 1800)")
    p.add_argument("--remove-vocals", choices=["none", "center", "repet", "demucs"], default="none",
                   help="vocal removal before training (default none)")
    p.add_argument("--target-lufs", type=float, default=-16.0, help="loudness to normalise to (default -16 LUFS)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="share of tracks held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    p.add_argument("--workers", type=int, default=1, help="processes decoding in parallel (default 1)")
    p.set_defaults(func=_cmd_prepare)

    p = verbs.add_parser("make-demo-corpus", help="write the built-in synthetic house corpus",
                         description="Render the built-in, deterministic house-music corpus with a labels CSV.")
    p.add_argument("-o", "--output", required=True, help="folder to write the corpus into")
    p.add_argument("--minutes", type=float, default=6.0, help="total length (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--sr", type=int, default=22050, help="sample rate of the files (default 22050)")
    p.set_defaults(func=_cmd_make_demo_corpus)

    p = verbs.add_parser("train", help="train vqvae | prior | upsampler | all through the shared loop (torchrun for several GPUs)",
                         description="Train one model. Under torchrun every process trains a shard (DDP).")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="MODEL")
    k = kinds.add_parser("vqvae", help="the hierarchical VQ-VAE", description="Train the hierarchical VQ-VAE.")
    _add_training_flags(k)
    k.set_defaults(func=_cmd_train_vqvae)

    k = kinds.add_parser("decoder", help="sharpen the VQ-VAE decoders (codes unchanged)",
                         description="Fine-tune the decoders of a run's VQ-VAE, encoders and codebooks frozen, so the "
                                     "codes and the priors stay valid: the VQ-VAE's reconstruction losses plus a "
                                     "multi-scale log-mel loss, and optionally a multi-scale STFT discriminator "
                                     "(decoder.adversarial_weight, decoder.feature_weight; off in the presets, "
                                     "measured not to pay at CPU budgets). The result is installed beside the "
                                     "original decoders.")
    k.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run folder holding the VQ-VAE (--run-dir under torchrun, whose own --run-path takes --run)")
    k.add_argument("--data", required=True, help="prepared dataset folder the VQ-VAE was trained on")
    k.add_argument("-o", "--output", help="model directory of the fine-tune (default RUN/decoder)")
    k.add_argument("--level", type=int, action="append", help="level to tune (repeatable; default: preset, all)")
    k.add_argument("--preset", default="tiny", help="preset or YAML path (default tiny)")
    k.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override one preset field, e.g. decoder_train.steps=200 (repeatable)")
    k.add_argument("--resume", action="store_true", help="continue the fine-tune from its last checkpoint")
    _add_device_flag(k)
    k.set_defaults(func=_cmd_train_decoder)

    for kind, text in (("prior", "the top-level prior over the coarsest codes"),
                       ("upsampler", "an upsampler: codes at LEVEL given the level above")):
        k = kinds.add_parser(kind, help=text, description=f"Train {text}, on the code cache of --data.")
        _add_training_flags(k)
        k.add_argument("--level", type=int, required=True, help="VQ-VAE level (top prior: 2; upsamplers: 1 and 0)")
        if kind == "upsampler":
            k.add_argument("--kind", dest="model_kind", choices=["autoregressive", "masked"],
                           help="autoregressive (one token per step) or masked (a few passes per window); "
                                "default: the preset's upsampler.kind")
        k.set_defaults(func=_cmd_train_prior)

    k = kinds.add_parser("all", help="every model in order: VQ-VAE, code cache, top prior, upsamplers",
                         description="Train the whole stack into one run folder, within a wall-clock budget "
                                     "(each stage's steps set from its measured step time) or with the preset's steps.")
    _add_training_flags(k, output="run folder to write (a model directory per stage, and plan.json)")
    k.set_defaults(func=_cmd_train_all)
    budget = k.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="wall-clock budget for all stages together")
    budget.add_argument("--steps-from-preset", action="store_true", help="use each stage's steps from the preset")

    from housebox.config import preset_names

    p = verbs.add_parser("plan", help="memory per model and disk for your catalogue, before you train",
                         description="Estimate, from the model definitions, what training a preset needs: "
                                     "parameters, weights, gradients, AdamW and EMA bytes, activations per batch "
                                     "item with and without activation checkpointing, the largest batch that fits "
                                     "--gpu-memory, and for --hours of audio the disk and index sizes.")
    p.add_argument("--preset", default="jukebox", help=f"{' | '.join(preset_names())} or a YAML path (default jukebox)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override one preset field, e.g. prior.checkpoint_blocks=true (repeatable)")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help="memory of one GPU in GiB, e.g. 24")
    p.add_argument("--hours", type=float, help="hours of audio in the catalogue, e.g. 50")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="where training runs: decides the autocast dtype (default cuda: bf16)")
    p.add_argument("--artists", type=int, default=50, help="artists in the catalogue (label table size; default 50)")
    p.add_argument("--genres", type=int, default=5, help="genres in the catalogue (default 5)")
    p.set_defaults(func=_cmd_plan)

    p = verbs.add_parser("sample", help="generate tracks from a trained run",
                         description="Sample top-level codes, upsample level by level and decode to wav.")
    p.add_argument("run", help="run folder holding the VQ-VAE and prior model directories")
    p.add_argument("--artist", help="artist to condition on (default unknown)")
    p.add_argument("--genre", action="append", help="genre to condition on (repeatable)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each track (default 10)")
    p.add_argument("-n", type=int, default=1, help="number of tracks (default 1)")
    p.add_argument("-o", "--output", help="folder for the samples (default RUN/samples/TIMESTAMP, where the "
                                          "`serve` page lists them)")
    p.add_argument("--prime", help="audio clip whose opening the tracks continue")
    p.add_argument("--prime-seconds", type=float, default=4.0, help="seconds of the prime to use (default 4)")
    p.add_argument("--continue", dest="continue_codes", help="codes.npz of an earlier sample to continue")
    p.add_argument("--upsample-only", action="store_true", help="keep the top-level codes of --continue, upsample them")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest codes (default 0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (default 1: off)")
    _add_beat_guidance_flag(p)
    p.add_argument("--hop-fraction", type=float, default=0.5, help="window advance beyond the context (default 0.5)")
    p.add_argument("--upsample-steps", type=int, default=4,
                   help="passes per window of a masked upsampler (default 4; 2 is ~2x faster, 8 a little closer "
                        "to the true codes: README)")
    p.add_argument("--upsample-hop", type=float, default=0.875,
                   help="masked windows start this share of a window apart (default 0.875; 0.5 recomputes half "
                        "of every window)")
    _add_upsample_noise_flag(p)
    _add_upsampler_kind_flag(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="the priors' weights and KV cache while sampling (default auto: bf16 on a CUDA GPU that "
                        "supports it; on a CPU with native bf16, bf16 for masked upsamplers only; fp32 "
                        "elsewhere); the VQ-VAE decodes in fp32")
    p.add_argument("--compile", action="store_true",
                   help="run the autoregressive one-token steps through torch.compile (CUDA graphs on a GPU, "
                        "inductor's C++ wrapper on a CPU, which needs a C++ compiler); each prior compiles for "
                        "10-40 s, then its steps ran 0.9-1.9x as fast as eager on a CPU (README: it pays for long jobs of "
                        "priors that fit in the CPU's cache)")
    p.add_argument("--levels", type=int, help="levels to generate top down (default: all the run has)")
    p.add_argument("--seed", type=int, default=0, help="seed: same seed, same audio (default 0)")
    p.add_argument("--bpm", type=float, help="tempo of the beat clock, for runs trained with one (default: a prime's "
                                             "own beat grid, else the artist's median tempo)")
    _add_device_flag(p)
    p.add_argument("--check", action="store_true",
                   help="check the samples' originality against the run's training data (see `housebox check`)")
    p.set_defaults(func=_cmd_sample)

    p = verbs.add_parser("check", help="originality: fingerprints, melody and codes against the training set",
                         description="Match every audio file under SAMPLES against a prepared dataset: landmark "
                                     "fingerprints (index kept in DATA/fingerprints), beat-by-beat pitch "
                                     "profiles (DATA/melody) and, for `housebox sample` folders, passages of codes "
                                     "that follow one track of DATA/codes, verbatim or with slips. Writes each "
                                     "verdict into the folder's report.json and prints a table.")
    p.add_argument("samples", help="an audio file, a sample folder, or a folder of sample folders")
    p.add_argument("--against", required=True, metavar="DATA", help="the prepared dataset the model was trained on")
    p.add_argument("--suspicious-audio", type=float, metavar="S",
                   help="seconds of audio matching one training track that make a sample suspicious (default 5)")
    p.add_argument("--copied-audio", type=float, metavar="S", help="the same, for copied (default 7)")
    p.add_argument("--suspicious-codes", type=float, metavar="S",
                   help="seconds of codes following one training track (verbatim or with slips), beyond what "
                        "unrelated training tracks share, that make a sample suspicious (default 1)")
    p.add_argument("--copied-codes", type=float, metavar="S", help="the same, for copied (default 3)")
    p.add_argument("--suspicious-melody", type=float, metavar="S",
                   help="seconds of a passage following one training track's notes, beyond what different "
                        "training tracks share, for suspicious (default 4)")
    p.add_argument("--copied-melody", type=float, metavar="S", help="the same, for copied (default 8)")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="where the verdicts of audio outside `housebox sample` folders go (report.json; default "
                        "DATA/checks); sample folders keep theirs in their own report.json")
    p.set_defaults(func=_cmd_check)

    p = verbs.add_parser("serve", help="a local web page to generate, listen, see and check",
                         description="Serve a page on which to pick artist, genre, length and temperature, upload a "
                                     "prime clip, generate (one job at a time, queued), listen, see the spectrogram "
                                     "and the originality verdict, and browse earlier samples.")
    p.add_argument("run", help="run folder holding the VQ-VAE and prior model directories")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--samples", help="folder for generated samples (default RUN/samples)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="longest track a request may ask for (default 120)")
    p.add_argument("--no-check", action="store_true", help="do not check originality after each generation")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="with --host other than 127.0.0.1: a name the page is reached by (repeatable; default: "
                        "any name)")
    _add_device_flag(p)
    p.set_defaults(func=_cmd_serve)

    p = verbs.add_parser("encode", help="write the code cache the priors train on",
                         description="Encode every prepared track into codes/l<level>/<id>.npy (resumable).")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--vqvae", required=True, help="trained VQ-VAE model directory")
    _add_device_flag(p)
    p.set_defaults(func=_cmd_encode)

    p = verbs.add_parser("evaluate", help="reconstruction, bits/token and statistics of generated music",
                         description="Evaluate a run: VQ-VAE per level, priors' validation bits/token, tracks "
                                     "generated per artist against held-out audio (tempo, key, loudness, "
                                     "centroid, kick periodicity, Fréchet and kernel mel+chroma distances), and "
                                     "a stage table: where between held-out audio, VQ-VAE, upsamplers and full "
                                     "generation the beat and the distance are lost (a row per upsampler kind "
                                     "where the run holds both, from the same top codes).")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="the prepared dataset the run was trained on")
    p.add_argument("-o", "--output", help="report folder (default RUN/evaluation)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of generated tracks (default 30)")
    p.add_argument("--per-artist", type=int, default=3, help="tracks generated per artist; the report gives "
                                                                 "their median tempo (default 3)")
    p.add_argument("--seed", type=int, default=1000, help="seed for generation (default 1000)")
    p.add_argument("--temperature", type=float, default=0.95, help="sampling temperature (default 0.95, as the "
                                                                    "demo)")
    p.add_argument("--stage-pieces", type=int, default=2, help="held-out pieces per artist put through each "
                                                                 "stage of the stage table (default 2)")
    _add_beat_guidance_flag(p)
    _add_upsample_noise_flag(p)
    _add_upsampler_kind_flag(p)
    _add_device_flag(p)
    p.set_defaults(func=_cmd_evaluate)

    p = verbs.add_parser("evaluate-vqvae", help="reconstruction quality and codebook use per level",
                         description="Spectral convergence, MR-STFT, mel L1, SI-SDR, codebook usage and bitrate "
                                     "per level on validation tracks; JSON and PNGs.")
    p.add_argument("vqvae", help="trained VQ-VAE model directory")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("-o", "--output", help="where to write the report (default: the model directory)")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per validation track (default 8)")
    p.add_argument("--max-tracks", type=int, default=16, help="validation tracks to use (default 16)")
    _add_device_flag(p)
    p.set_defaults(func=_cmd_evaluate_vqvae)

    p = verbs.add_parser("demo", help="the whole pipeline on the built-in corpus, on CPU",
                         description="Make the demo corpus, prepare it and run the pipeline on it: VQ-VAE, top "
                                     "prior, two upsamplers, three 30-second tracks per artist and their "
                                     "evaluation (about 15 minutes on 2 CPU cores). Re-running skips finished training "
                                     "stages.")
    p.add_argument("-o", "--output", default="demo", help="folder for everything the demo writes (default demo/)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster version (used by the tests)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    _add_device_flag(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # every verb runs steps that free and allocate the same large buffers
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, no traceback
        print(f"housebox {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"housebox {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
