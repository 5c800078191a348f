"""The three modes of `python -m rqscale.evaluate`: every argument is checked (files named, flags
named) before any model is sampled or any Ray task starts; then the chunks run and a report is built."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from rqscale.eval.chunks import ChunkJob, chunk_layout
from rqscale.eval.driver import evaluate_jobs, plan_reference, run_jobs
from rqscale.eval.features import resolve_spec
from rqscale.eval.reference import default_cache_dir, reference_size


def run_mode(args) -> dict:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.mode == "recon":
        return recon(args)
    if args.samples_npz:
        return from_npz(args)
    return generated(args)


def checkpoint_config(path: str):
    """The config stored in a consolidated checkpoint, without reading its weights (memory-mapped)."""
    from rqscale.config import from_yaml_text
    from rqscale.sampling.checkpoint import FORMAT
    from rqscale.utils.safe_load import load_plain

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: '{path}' (--checkpoint wants the rqtransformer.pt a stage-2 run writes)")
    state = load_plain(path, map_location="cpu", mmap=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not an rqscale stage-2 checkpoint (format {FORMAT})")
    return from_yaml_text(state["config"])


def read_captions(path: str | None) -> list[str]:
    if path is None:
        return []
    if not os.path.isfile(path):
        raise FileNotFoundError(f"captions file not found: '{path}' (--captions wants one caption per line)")
    with open(path) as f:
        captions = [line.strip() for line in f if line.strip()]
    if not captions:
        raise ValueError(f"--captions file '{path}' has no caption")
    return captions


def cycled(values: list, count: int) -> tuple:
    return tuple(values[i % len(values)] for i in range(count))


def plan_conditions(args, cfg, count: int) -> tuple:
    """(labels, captions) of all `count` samples, checked against the model."""
    from rqscale.sample import conditions

    kind, captions = cfg.stage2.model.condition, read_captions(args.captions)
    if kind != "class" and (args.class_label or args.class_balanced):
        raise ValueError(f"--class-label / --class-balanced need a class-conditional model; this one is {kind}-conditional")
    if kind != "text" and captions:
        raise ValueError(f"--captions needs a text-conditional model; this one is {kind}-conditional")
    if kind == "text":
        if not captions:
            raise ValueError("this model is text-conditional: pass --captions FILE (one caption per line)")
        _check_captions(cfg, captions)
        return None, cycled(captions, count)
    if kind == "class" and not (args.class_label or args.class_balanced):
        raise ValueError("this model is class-conditional: pass --class-balanced (equally many samples of every class, "
                         "the usual protocol) or --class-label L [L ...]")
    if args.class_balanced:
        args.class_label = list(range(cfg.stage2.model.num_classes))
    _, labels = conditions(args, cfg, count, "cpu")  # checks the labels against the model's classes
    return (tuple(int(x) for x in labels) if kind == "class" else None), None


def _check_captions(cfg, captions: list[str]) -> None:
    from rqscale.data.text import CaptionTokenizer

    if not cfg.stage2.tokenizer:
        raise ValueError("the checkpoint's config names no tokenizer (stage2.tokenizer)")
    tokenizer = CaptionTokenizer(cfg.stage2.tokenizer, cfg.stage2.model.text_length)
    for caption in captions:
        tokenizer.encode(caption)  # a caption longer than the model's text length is an error now, not in a worker


def check_generation(args) -> None:
    from rqscale.sample import check_sampling_args

    if args.num_samples is None:
        raise ValueError("--num-samples is required with --checkpoint")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    check_sampling_args(args)
    if args.speed_batches and min(args.speed_batches) < 1:
        raise ValueError(f"--speed-batches must be >= 1, got {args.speed_batches}")


def generated(args) -> dict:
    """Sample a consolidated checkpoint in chunks; FID / IS / precision-recall and/or CLIP score."""
    from rqscale.sample import check_model_args

    spec, ref_manifest = _check_inputs(args)
    check_generation(args)
    cfg = checkpoint_config(args.checkpoint)
    check_model_args(args, cfg)
    if args.speed_batches and cfg.stage2.model.condition == "text":
        raise ValueError("--speed-batches times class-conditional and unconditional models (Fig. 4), not text ones")
    labels, captions = plan_conditions(args, cfg, args.num_samples)
    if args.clip_model and captions is None:
        raise ValueError("--clip-model scores images against their captions: it needs a text-conditional model and --captions")
    device = args.device if args.local else None
    jobs = sample_jobs(args, spec, labels, captions, device)
    ref = _reference(args, ref_manifest, spec, cfg.rqvae.resolution, device)
    report = evaluate_jobs(jobs, ref, args.workers, args.local, args.device, args.pr_samples)
    report.update(_run_info(args, spec, len(jobs)), checkpoint=args.checkpoint, sampling=dict(jobs[0].sampling, seed=args.seed))
    if args.speed_batches:
        report["speed"] = sampling_speed(args)
    return report


def sample_jobs(args, spec, labels, captions, device) -> list:
    """One job per chunk of `--chunk-size` samples, each with its slice of the planned conditions."""
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "cfg_scale": args.cfg_scale}
    base = ChunkJob("samples", 0, 0, 0, seed=args.seed, device=device, extractor=spec, checkpoint=args.checkpoint,
                    sampling=sampling, batch_size=args.batch_size, clip_model=args.clip_model)
    return [replace(base, index=i, start=s, count=n, labels=labels and labels[s : s + n], captions=captions and captions[s : s + n])
            for i, (s, n) in enumerate(chunk_layout(args.num_samples, args.chunk_size))]


def from_npz(args) -> dict:
    """Already generated samples (rqscale.sample's samples.npz), evaluated in this process."""
    spec, ref_manifest = _check_inputs(args)
    if not os.path.isfile(args.samples_npz):
        raise FileNotFoundError(f"--samples-npz file not found: '{args.samples_npz}'")
    with np.load(args.samples_npz) as data:
        if "images" not in data or data["images"].ndim != 4 or data["images"].dtype != np.uint8:
            raise ValueError(f"'{args.samples_npz}' has no uint8 `images` (N x H x W x 3) as rqscale.sample writes")
        count, resolution = data["images"].shape[0], data["images"].shape[1]
    captions = read_captions(args.captions)
    if args.clip_model and not captions:
        raise ValueError("--clip-model needs --captions FILE: the caption of each sample, in order")
    captions = captions and cycled(captions, count)
    base = ChunkJob("npz", 0, 0, 0, device=args.device, extractor=spec, checkpoint=args.samples_npz, clip_model=args.clip_model)
    jobs = [replace(base, index=i, start=s, count=n, captions=captions and captions[s : s + n])
            for i, (s, n) in enumerate(chunk_layout(count, args.chunk_size))]
    ref = _reference(args, ref_manifest, spec, resolution, args.device)
    report = evaluate_jobs(jobs, ref, 1, True, args.device, args.pr_samples)
    return dict(report, **_run_info(args, spec, len(jobs), local=True), samples_npz=args.samples_npz)


def _check_inputs(args):
    """(extractor spec or None, reference manifest or None); missing files are named before any work."""
    from rqscale.eval.clip_score import check_clip_dir

    spec = None if args.mode == "clip" else resolve_spec(args.feature_extractor, args.inception_weights)
    if args.clip_model:
        check_clip_dir(args.clip_model)
    if args.reference:
        _reference_count(args.reference, args.num_reference)
    if args.pr_samples <= 3:
        raise ValueError(f"--pr-samples must be > 3 (k = 3 nearest neighbours), got {args.pr_samples}")
    return spec, args.reference


def _reference_count(manifest: str, wanted: int | None, flag: str = "--num-reference") -> int:
    try:
        total = reference_size(manifest)
    except FileNotFoundError:
        raise FileNotFoundError(f"reference manifest not found: '{manifest}' (--reference wants the manifest.json of "
                                "shards written by data_prep)") from None
    if wanted is not None and not 2 <= wanted <= total:
        raise ValueError(f"{flag} must be in [2, {total}] for '{manifest}', got {wanted}")
    return wanted or total


def _reference(args, manifest, spec, resolution: int, device):
    if manifest is None or spec is None:
        return None
    count = _reference_count(manifest, args.num_reference)
    return plan_reference(manifest, resolution, count, spec, args.cache_dir or default_cache_dir(), args.chunk_size, device,
                          args.pr_samples)


def _run_info(args, spec, chunks: int, local: bool = False) -> dict:
    local = local or args.local
    return {"mode": args.mode, "extractor": spec.identity() if spec else None, "chunks": chunks,
            "chunk_size": args.chunk_size, "workers": 1 if local else args.workers, "ray": not local}


def sampling_speed(args) -> list:
    """Fig. 4: seconds per image at the given batch sizes, on --device (rqscale.eval.speed)."""
    from rqscale.eval.speed import sampling_speed as measure
    from rqscale.sample import sampling_params
    from rqscale.sampling.checkpoint import load_consolidated
    from rqscale.utils.memory import retain_freed_memory

    if torch.device(args.device).type == "cpu":
        retain_freed_memory()  # large KV caches are otherwise page-faulted in afresh each call (rqscale/bench/sample.py)
    _, _, model = load_consolidated(args.checkpoint, args.device)
    dtype = torch.bfloat16 if args.speed_dtype == "bf16" else torch.float32
    return measure(model, args.speed_batches, args.device, dtype, params=sampling_params(args, model), repeats=1)


def recon(args) -> dict:
    """rFID per depth, MSE per depth and codebook usage of an RQ-VAE on reference shards."""
    from rqscale.eval.rfid import ReconAccumulator, load_rqvae, rqvae_config_path

    spec = resolve_spec(args.feature_extractor, args.inception_weights)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    config = rqvae_config_path(args.rqvae, args.rqvae_config)
    model = load_rqvae(args.rqvae, config, args.device if args.local else "cpu")  # a mismatch is an error here
    count = _reference_count(args.reference, args.num_images, "--num-images")
    base = ChunkJob("recon", 0, 0, 0, device=args.device if args.local else None, extractor=spec, manifest=args.reference,
                    resolution=model.cfg.resolution, rqvae=args.rqvae, rqvae_config=config, batch_size=args.batch_size)
    jobs = [replace(base, index=i, start=s, count=n) for i, (s, n) in enumerate(chunk_layout(count, args.chunk_size))]
    acc = ReconAccumulator()
    run_jobs(jobs, args.workers, args.local, acc.add)
    return dict(acc.report(), **_run_info(args, spec, len(jobs)), rqvae=args.rqvae, reference=args.reference)
