"""Sampling: KV-cached autoregressive decoding, Draft-and-Revise for contextual models, per-depth
temperature / top-k / top-p, CFG; the SampleRequest that the sampling CLIs share, and images from it
(rqscale.sampling.generate)."""
from typing import Optional

import torch

from rqscale.sampling.draft_revise import DraftRevise, draft_and_revise
from rqscale.sampling.filters import SamplingParams, filter_logits
from rqscale.sampling.request import SampleRequest
from rqscale.sampling.sampler import sample_codes


def schedule_of(sampling_cfg, params: SamplingParams) -> DraftRevise:
    """A contextual model's Draft-and-Revise schedule from stage2.sampling: `params` in the revise phase,
    plain sampling in the draft (supplement A.4)."""
    return DraftRevise(sampling_cfg.draft_steps, sampling_cfg.revise_steps, sampling_cfg.revise_iterations,
                       draft=SamplingParams(), revise=params)


def sample_stage2(model, batch: int, cond: Optional[torch.Tensor], params: SamplingParams, generator=None,
                  schedule: Optional[DraftRevise] = None) -> torch.Tensor:
    """Codes (B, T, D) of either family: autoregressive decoding, or Draft-and-Revise (`schedule`, default
    from the model's own config: stage2.sampling is not part of the model config, so callers pass it)."""
    if model.cfg.kind == "contextual":
        return draft_and_revise(model, batch, cond, schedule or DraftRevise(revise=params), generator)
    return sample_codes(model, batch, cond, params, generator)


__all__ = ["DraftRevise", "SampleRequest", "SamplingParams", "draft_and_revise", "filter_logits", "sample_codes",
           "sample_stage2", "schedule_of"]
