"""Sampling: KV-cached autoregressive decoding, per-depth temperature / top-k / top-p, CFG; the
SampleRequest that the sampling CLIs share, and images from it (rqscale.sampling.generate)."""
from rqscale.sampling.filters import SamplingParams, filter_logits
from rqscale.sampling.request import SampleRequest
from rqscale.sampling.sampler import sample_codes

__all__ = ["SampleRequest", "SamplingParams", "filter_logits", "sample_codes"]
