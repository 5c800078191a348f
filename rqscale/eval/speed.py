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
from rqscale.sampling import SamplingParams, sample_codes

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
                     repeats: int = 1, decode: Optional[Callable] = None, use_cache: bool = True, warmup: int = 0) -> float:
    """Median wall time of generating `batch` images' codes (B, T, D), then `decode(codes)` if given."""
    cond = conditions(model, batch, device)
    gen = torch.Generator(device=device)

    def once() -> None:
        gen.manual_seed(0)  # same draws every repeat: identical work per call
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
