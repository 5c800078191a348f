"""Sampling: KV-cached autoregressive decoding, per-depth temperature / top-k / top-p, CFG."""
from rqscale.sampling.filters import SamplingParams, filter_logits
from rqscale.sampling.sampler import sample_codes

__all__ = ["SamplingParams", "filter_logits", "sample_codes"]
