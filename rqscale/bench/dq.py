"""DQ-Transformer sampling speed (issue 15): the KV-cached coarse-to-fine sampler against recomputing both
stacks over the whole prefix at every step (the reference's sampler, stackgpt.py), same model, same
seed, one run. Random weights (only shapes and sequence lengths matter), bf16, codes only (no decoding).
"""
from __future__ import annotations

import json
import time

import torch

from rqscale.bench.common import machine
from rqscale.config import load
from rqscale.models import build_stage2_model
from rqscale.sampling import SamplingParams
from rqscale.sampling.dq_sampler import sample_dq
from rqscale.utils.memory import retain_freed_memory
from rqscale.utils.timing import synchronize


def _timed(model, batch: int, cond, use_cache: bool, device: torch.device) -> tuple[float, torch.Tensor]:
    """(seconds, the sampled Sequences) of one call at a fixed seed."""
    synchronize(device)
    start = time.perf_counter()
    _, seq = sample_dq(model, batch, cond, SamplingParams(), torch.Generator(device=device).manual_seed(0), use_cache=use_cache)
    synchronize(device)
    return time.perf_counter() - start, seq


def run(config: str, batch: int = 16, device: str = "cpu") -> dict:
    cfg = load(config, check_files=False)
    dev = torch.device(device)
    retained = dev.type == "cpu" and retain_freed_memory()
    r = cfg.rqvae
    torch.manual_seed(0)
    model = build_stage2_model(cfg.stage2.model, r.code_shape, r.num_codes, r.code_dim).eval().to(dev, torch.bfloat16)
    cond = None if cfg.stage2.model.condition == "none" else torch.arange(batch, device=dev) % cfg.stage2.model.num_classes
    _timed(model, 2, None if cond is None else cond[:2], True, dev)  # warm-up
    cached, seq = _timed(model, batch, cond, True, dev)
    recomputed, seq_again = _timed(model, batch, cond, False, dev)
    m = cfg.stage2.model
    return {"benchmark": "sample-dq", "machine": machine(), "config": config, "batch": batch, "malloc_retained": retained,
            "model": {"embed_dim": m.embed_dim, "position_layers": m.spatial_layers, "content_layers": m.depth_layers},
            "code_map": list(r.code_shape[:2]), "mean_length": float(seq.length.float().mean()),
            "same_sequences": all(torch.equal(a, b) for a, b in zip(seq, seq_again)),  # bf16: both paths round alike or not
            "kv_cache_seconds_per_sample": cached / batch, "recompute_seconds_per_sample": recomputed / batch,
            "kv_cache_speedup": recomputed / cached}


def report(r: dict) -> str:
    lines = [f"sample (dq)  config={r['config']}  model={r['model']}  code map {r['code_map'][0]}x{r['code_map'][1]}  "
             f"batch={r['batch']}  bf16",
             f"  machine: {r['machine']}  (malloc keeps freed memory: {r['malloc_retained']})",
             f"  sequences of {r['mean_length']:.1f} tokens on average (random weights); both samplers drew the same: "
             f"{r['same_sequences']}",
             f"  KV cache   {r['kv_cache_seconds_per_sample']:.4f} s/sample",
             f"  recompute  {r['recompute_seconds_per_sample']:.4f} s/sample (both stacks over the whole prefix each step, as the reference)",
             f"  KV cache speed-up: {r['kv_cache_speedup']:.1f}x"]
    return "\n".join(lines) + "\n" + json.dumps(r)
