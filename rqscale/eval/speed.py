"""Sampling speed of an RQ-Transformer in seconds per image at several batch sizes (paper Fig. 4).

Fig. 4 times a 1.4B RQ-Transformer generating 5,000 samples on one A100 at batch 100, 200 and 500
(0.02 s/image at batch 500). Its text (Sec. 4.3) says the reported speeds do NOT include the stage-1
decoding, which it puts at about 0.008 s/image; so `decode=None` is the paper's measurement, and
passing a `decode` callable adds the RQ-VAE decoding to pixels to each timed call.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch

from rqscale.utils.timing import time_fn
from rqscale.models import RQTransformer
from rqscale.sampling import DraftRevise, SamplingParams, sample_codes, sample_stage2

WARMUP_BATCH = 8  # one small untimed call first: kernels, allocator and thread pools warm up


def conditions(model: RQTransformer, batch: int, device: torch.device) -> Optional[torch.Tensor]:
    """Class labels cycling over the classes, or None for an unconditional model."""
    kind = model.cfg.condition
    if kind == "class":
        return torch.arange(batch, device=device) % model.cfg.num_classes
    if kind == "text":
        raise ValueError("sampling_speed times class-conditional and unconditional models; a text-conditional "
                         "model needs caption tokens: time it with sample_codes(model, batch, tokens) instead")
    return None


def seconds_per_call(model: RQTransformer, batch: int, device: torch.device, params: Optional[SamplingParams] = None,
                     repeats: int = 1, decode: Optional[Callable] = None, use_cache: bool = True, warmup: int = 0,
                     schedule: Optional[DraftRevise] = None) -> float:
    """Median wall time of generating `batch` images' codes (B, T, D), then `decode(codes)` if given. A
    contextual model decodes by Draft-and-Revise with `schedule` (default DraftRevise() with `params`)."""
    cond = conditions(model, batch, device)
    gen = torch.Generator(device=device)

    def once() -> None:
        gen.manual_seed(0)  # same draws every repeat: identical work per call
        if model.cfg.kind in ("contextual", "dq"):  # Draft-and-Revise, or the DQ-Transformer's KV-cached sampler
            codes = sample_stage2(model, batch, cond, params or SamplingParams(), gen, schedule)
        else:
            codes = sample_codes(model, batch, cond, params, gen, use_cache=use_cache)
        if decode is not None:
            decode(codes)

    with torch.no_grad():
        return time_fn(once, device, repeats=repeats, warmup=warmup)


def _converted(model: RQTransformer, device: torch.device, dtype: torch.dtype) -> RQTransformer:
    """The model on `device` in `dtype`; a converted copy if it is not, so the caller's stays untouched."""
    p = next(model.parameters())
    same_device = p.device.type == device.type and device.index in (None, p.device.index)
    if same_device and p.dtype == dtype:
        return model.eval()
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def sampling_speed(model: RQTransformer, batches: Sequence[int], device: torch.device, dtype: torch.dtype,
                   params: SamplingParams | None = None, repeats: int = 1, decode: Callable | None = None) -> list[dict]:
    """One dict per batch size: batch, seconds (median per call), seconds_per_image, images_per_second.

    Each call generates all T x D codes with the KV-cache sampler. `decode`, if given, receives the codes
    (B, T, D) as sample_codes returns them, e.g. `lambda c: rqvae.decode_codes(c.view(len(c), h, w, d))`.
    """
    if not batches:
        return []
    device = torch.device(device)
    model = _converted(model, device, dtype)
    seconds_per_call(model, min(WARMUP_BATCH, *batches), device, params, 1, decode)
    results = []
    for batch in batches:
        seconds = seconds_per_call(model, batch, device, params, repeats, decode)
        results.append({"batch": batch, "seconds": seconds, "seconds_per_image": seconds / batch,
                        "images_per_second": batch / seconds})
    return results


# Paper Table 4 (main paper; 821M contextual model, T_revise 2, M 2, batch 100, one A100), s/sample. Its AR
# row is the 1.4B RQ-Transformer; rqscale compares against the AR model of the contextual model's own width.
TABLE4_SECONDS = {"ar": 0.04, 8: 0.03, 32: 0.07, 64: 0.13}
TABLE4_DRAFT_STEPS = (8, 32, 64)


def autoregressive_twin(model: RQTransformer) -> RQTransformer:
    """An RQ-Transformer of the contextual `model`'s width and depths (random weights: speed depends on
    shapes only), on its device and in its dtype."""
    from dataclasses import replace

    from rqscale.models import build_stage2_model

    p = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays where it was
        torch.manual_seed(0)
        twin = build_stage2_model(replace(model.cfg, kind="ar"), model.code_shape, model.num_codes, model.codebook.shape[1])
    twin.codebook.copy_(model.codebook)
    return twin.to(device=p.device, dtype=p.dtype).eval()


def draft_revise_speed(model: RQTransformer, batches: Sequence[int], device, dtype: torch.dtype, schedule: DraftRevise,
                       draft_steps: Sequence[int] = TABLE4_DRAFT_STEPS, repeats: int = 1) -> list[dict]:
    """Table 4's comparison at each of `batches`: s/sample of Draft-and-Revise at each T_draft (`schedule`
    otherwise) and of the KV-cached AR sampler of an RQ-Transformer of the same width, sampled as the revise
    phase is (its guidance doubles the batch there too); each sampler gets one small untimed warm-up call."""
    from dataclasses import replace

    device = torch.device(device)
    model = _converted(model, device, dtype)
    ar = autoregressive_twin(model)
    plans = [replace(schedule, draft_steps=t) for t in draft_steps if t <= model.positions]
    seconds_per_call(ar, min(WARMUP_BATCH, *batches), device, schedule.revise)
    for plan in plans:
        seconds_per_call(model, min(WARMUP_BATCH, *batches), device, schedule=plan)
    tables = []
    for batch in batches:
        ar_seconds = seconds_per_call(ar, batch, device, schedule.revise, repeats=repeats) / batch
        rows = []
        for plan in plans:
            seconds = seconds_per_call(model, batch, device, repeats=repeats, schedule=plan) / batch
            rows.append({"draft_steps": plan.draft_steps, "seconds_per_sample": seconds, "vs_ar": seconds / ar_seconds,
                         "paper_vs_ar": TABLE4_SECONDS[plan.draft_steps] / TABLE4_SECONDS["ar"] if plan.draft_steps in TABLE4_SECONDS else None})
        tables.append({"batch": batch, "revise_steps": schedule.revise_steps, "revise_iterations": schedule.revise_iterations,
                       "ar_seconds_per_sample": ar_seconds, "draft_and_revise": rows})
    return tables
