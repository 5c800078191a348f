"""Sampling: KV-cached autoregressive decoding, Draft-and-Revise for contextual models, per-depth
temperature / top-k / top-p, CFG; the SampleRequest that the sampling CLIs share, and images from it
(rqscale.sampling.generate)."""
from typing import Optional

import torch

from rqscale.sampling.dq_sampler import sample_dq
from rqscale.sampling.draft_revise import DraftRevise, draft_and_revise
from rqscale.sampling.filters import SamplingParams, filter_logits
from rqscale.sampling.request import SampleRequest
from rqscale.sampling.sampler import sample_codes


def schedule_of(sampling_cfg, params: SamplingParams) -> DraftRevise:
    """A contextual model's Draft-and-Revise schedule from stage2.sampling, with `params` in the revise phase
    and the draft phase's own settings (A.4: plain sampling)."""
    from rqscale.sampling.contextual_flags import DraftReviseFlags

    return DraftReviseFlags().schedule(sampling_cfg, params)


def sample_stage2(model, batch: int, cond: Optional[torch.Tensor], params: SamplingParams, generator=None,
                  schedule: Optional[DraftRevise] = None, known: Optional[torch.Tensor] = None,
                  region: Optional[torch.Tensor] = None, keep_draft: bool = False):
    """Codes (B, T, D) of either family: autoregressive decoding, or Draft-and-Revise (`schedule`, default
    DraftRevise() with `params` in the revise phase: stage2.sampling is not part of the model config, so
    callers pass it). Contextual models only: inpainting (`known` codes, `region` to fill), and with
    keep_draft the pair (codes, drafts)."""
    if model.cfg.kind == "dq":
        if known is not None or keep_draft:
            raise ValueError("inpainting and drafts need a contextual model (stage2.model.kind=contextual); this one is dq")
        return sample_dq(model, batch, cond, params, generator)[0]
    if model.cfg.kind == "contextual":
        return draft_and_revise(model, batch, cond, schedule or DraftRevise(revise=params), generator, known, region, keep_draft)
    if known is not None or keep_draft:
        raise ValueError("inpainting and drafts need a contextual model (stage2.model.kind=contextual)")
    return sample_codes(model, batch, cond, params, generator)


__all__ = ["DraftRevise", "SampleRequest", "SamplingParams", "draft_and_revise", "filter_logits", "sample_codes",
           "sample_dq", "sample_stage2", "schedule_of"]
