"""The three modes of `python -m rqscale.evaluate`: every argument is checked (files named, flags
named) before any model is sampled or any Ray task starts; then the chunks run and a report is built."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from rqscale.data.text import read_caption_file
from rqscale.eval.chunks import ChunkJob, chunk_layout
from rqscale.eval.driver import evaluate_jobs, plan_reference, run_jobs
from rqscale.eval.features import resolve_spec
from rqscale.eval.reference import default_cache_dir, reference_size
from rqscale.sampling.contextual_flags import draft_revise_flags
from rqscale.sampling.flags import sampling_fields
from rqscale.sampling.generate import cycled, planned_conditions
from rqscale.sampling.request import SampleRequest


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
    from rqscale.sampling.checkpoint import read_config

    return read_config(path)


def read_captions(path: str | None) -> list[str]:
    return [] if path is None else read_caption_file(path)


def conditioned(args, request: SampleRequest, cfg) -> SampleRequest:
    """The request with evaluate's conditions: --class-balanced's classes or --class-label's, --captions'
    lines. A flag the model cannot use, or a missing one it needs, is an error naming it."""
    kind, captions = cfg.stage2.model.condition, read_captions(args.captions)
    if kind != "class" and (args.class_label or args.class_balanced):
        raise ValueError(f"--class-label / --class-balanced need a class-conditional model; this one is {kind}-conditional")
    if kind != "text" and captions:
        raise ValueError(f"--captions needs a text-conditional model; this one is {kind}-conditional")
    if kind == "text" and not captions:
        raise ValueError("this model is text-conditional: pass --captions FILE (one caption per line)")
    if kind == "class" and not (args.class_label or args.class_balanced):
        raise ValueError("this model is class-conditional: pass --class-balanced (equally many samples of every class, "
                         "the usual protocol) or --class-label L [L ...]")
    labels = range(cfg.stage2.model.num_classes) if args.class_balanced else request.class_labels
    return replace(request, class_labels=tuple(labels), captions=tuple(captions))


def sample_request(args) -> SampleRequest:
    """What --checkpoint is sampled with; every flag checked before any file is read."""
    if args.num_samples is None:
        raise ValueError("--num-samples is required with --checkpoint")
    request = SampleRequest(args.checkpoint, args.num_samples, class_labels=tuple(args.class_label or ()),
                            draft_revise=draft_revise_flags(args), **sampling_fields(args))
    if args.speed_batches and min(args.speed_batches) < 1:
        raise ValueError(f"--speed-batches must be >= 1, got {args.speed_batches}")
    return request


def generated(args) -> dict:
    """Sample a consolidated checkpoint in chunks; FID / IS / precision-recall and/or CLIP score."""
    spec, ref_manifest = _check_inputs(args)
    request = sample_request(args)
    cfg = checkpoint_config(request.checkpoint)
    request, labels, captions = fitted_to_model(args, request, cfg)
    device = args.device if args.local else None
    jobs = sample_jobs(args, request, spec, labels, captions, device)
    ref = _reference(args, ref_manifest, spec, cfg.rqvae.resolution, device)
    report = evaluate_jobs(jobs, ref, args.workers, args.local, args.device, args.pr_samples)
    report.update(_run_info(args, spec, len(jobs)), checkpoint=request.checkpoint, sampling=request.settings())
    if cfg.stage2.model.kind == "contextual":  # what the drafts and the revised samples were drawn with
        report["draft_and_revise"] = schedule_record(request.schedule(cfg))
    if args.speed_batches:
        report["speed"] = sampling_speed(request, cfg, args.speed_batches, args.speed_dtype)
    return report


def schedule_record(schedule) -> dict:
    """A Draft-and-Revise schedule as a report records it (its phases' sampling as given)."""
    from dataclasses import asdict

    phases = {name: {k: v for k, v in asdict(getattr(schedule, name)).items() if k != "per_depth"} for name in ("draft", "revise")}
    return {"draft_steps": schedule.draft_steps, "revise_steps": schedule.revise_steps,
            "revise_iterations": schedule.revise_iterations, "draft_strategy": schedule.draft_strategy, **phases}


def fitted_to_model(args, request: SampleRequest, cfg) -> tuple:
    """(the request with its conditions, labels and captions of all samples), checked against the model."""
    request.check_model(cfg)
    if args.speed_batches and cfg.stage2.model.condition == "text":
        raise ValueError("--speed-batches times class-conditional and unconditional models (Fig. 4), not text ones")
    request = conditioned(args, request, cfg)
    labels, captions = planned_conditions(request, cfg, request.num_samples)
    if args.clip_model and captions is None:
        raise ValueError("--clip-model scores images against their captions: it needs a text-conditional model and --captions")
    return request, labels, captions


def sample_jobs(args, request: SampleRequest, spec, labels, captions, device) -> list:
    """One job per chunk of `--chunk-size` samples, each with its slice of the planned conditions."""
    base = ChunkJob("samples", 0, 0, 0, device=device, extractor=spec, request=request, clip_model=args.clip_model)
    return [replace(base, index=i, start=s, count=n, labels=labels and labels[s : s + n], captions=captions and captions[s : s + n])
            for i, (s, n) in enumerate(chunk_layout(request.num_samples, args.chunk_size))]


def from_npz(args) -> dict:
    """Already generated samples (rqscale.sample's samples.npz), evaluated in this process."""
    spec, ref_manifest = _check_inputs(args)
    given = draft_revise_flags(args).given()
    if given:
        raise ValueError(f"{', '.join(given)}: Draft-and-Revise flags apply when a --checkpoint is sampled; the images of "
                         "--samples-npz are already drawn")
    if not os.path.isfile(args.samples_npz):
        raise FileNotFoundError(f"--samples-npz file not found: '{args.samples_npz}'")
    with np.load(args.samples_npz) as data:
        if "images" not in data or data["images"].ndim != 4 or data["images"].dtype != np.uint8:
            raise ValueError(f"'{args.samples_npz}' has no uint8 `images` (N x H x W x 3) as rqscale.sample writes")
        count, resolution = data["images"].shape[0], data["images"].shape[1]
    captions = read_captions(args.captions) or npz_captions(args.samples_npz)
    if args.clip_model and not captions:
        raise ValueError("--clip-model needs the caption of each sample: a samples.npz with `captions` (rqscale.sample "
                         "writes them for text models), or --captions FILE")
    captions = captions and cycled(captions, count)
    base = ChunkJob("npz", 0, 0, 0, device=args.device, extractor=spec, samples_npz=args.samples_npz, clip_model=args.clip_model)
    jobs = [replace(base, index=i, start=s, count=n, captions=captions and captions[s : s + n])
            for i, (s, n) in enumerate(chunk_layout(count, args.chunk_size))]
    ref = _reference(args, ref_manifest, spec, resolution, args.device)
    report = evaluate_jobs(jobs, ref, 1, True, args.device, args.pr_samples)
    return dict(report, **_run_info(args, spec, len(jobs), local=True), samples_npz=args.samples_npz)


def npz_captions(path: str) -> list:
    """The `captions` a samples.npz of a text model holds (one per image), or []."""
    with np.load(path) as data:
        return [str(c) for c in data["captions"]] if "captions" in data else []


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


def sampling_speed(request: SampleRequest, cfg, batches: list, dtype_name: str) -> list:
    """Fig. 4: seconds per image at the given batch sizes, on the request's device (rqscale.eval.speed).
    A contextual checkpoint: paper Table 4's rows at each batch, Draft-and-Revise at T_draft 8 / 32 / 64
    (the request's schedule otherwise) and the AR sampler of the same width."""
    from rqscale.eval.speed import draft_revise_speed, sampling_speed as measure
    from rqscale.sampling.checkpoint import load_consolidated
    from rqscale.utils.memory import retain_freed_memory

    if torch.device(request.device).type == "cpu":
        retain_freed_memory()  # large KV caches are otherwise page-faulted in afresh each call (rqscale/bench/sample.py)
    _, _, model = load_consolidated(request.checkpoint, request.device)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    if cfg.stage2.model.kind != "contextual":
        return measure(model, batches, request.device, dtype, params=request.params, repeats=1)
    rows = []
    for table in draft_revise_speed(model, batches, request.device, dtype, request.schedule(cfg)):
        batch = table["batch"]
        rows.append({"batch": batch, "sampler": "ar (same width)", "seconds_per_image": table["ar_seconds_per_sample"]})
        rows += [{"batch": batch, "sampler": f"draft-and-revise T_draft {r['draft_steps']}", "seconds_per_image":
                  r["seconds_per_sample"], "vs_ar": r["vs_ar"], "paper_vs_ar": r["paper_vs_ar"]} for r in table["draft_and_revise"]]
    return rows


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
