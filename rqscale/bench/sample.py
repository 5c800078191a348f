"""Stage-2 sampling speed (issue: RQ-Transformer sampler), all measured in one run on this machine.

1. KV cache vs recomputing the whole prefix each step, at the config's T x D.
2. Time per image as the code map grows from 8x8 to 16x16 (4x the positions).
3. Absolute images/s of the config's model in bf16 at the given batch.
Only shapes matter for speed, so models have random weights; RQ-VAE decoding is not included.
"""
from __future__ import annotations

import dataclasses
import json

import torch

from rqscale.bench.common import machine, time_fn
from rqscale.config import Config, load
from rqscale.models import RQTransformer
from rqscale.sampling import SamplingParams, sample_codes


def build(cfg: Config, code_shape: tuple, dtype: torch.dtype, device: torch.device) -> RQTransformer:
    torch.manual_seed(0)
    model = RQTransformer(cfg.stage2.model, code_shape, cfg.rqvae.num_codes, cfg.rqvae.code_dim).eval()
    model.codebook.normal_()
    return model.to(device=device, dtype=dtype)


def images_per_second(model: RQTransformer, batch: int, device: torch.device, use_cache: bool = True, repeats: int = 2) -> float:
    cond = torch.arange(batch, device=device) % model.cfg.num_classes if model.cfg.condition == "class" else None
    gen = torch.Generator(device=device)

    def once():
        gen.manual_seed(0)
        sample_codes(model, batch, cond, SamplingParams(), gen, use_cache=use_cache)

    return batch / time_fn(once, device, repeats=repeats, warmup=1)


def run(config: str, batch: int = 100, device: str = "cpu", baseline_batch: int = 0) -> dict:
    cfg = load(config, check_files=False)
    dev = torch.device(device)
    h, w, d = cfg.rqvae.code_shape
    bf16 = build(cfg, (h, w, d), torch.bfloat16, dev)
    cached = images_per_second(bf16, batch, dev)
    base_batch = baseline_batch or batch
    no_cache = images_per_second(bf16, base_batch, dev, use_cache=False, repeats=1)
    cached_same = cached if base_batch == batch else images_per_second(bf16, base_batch, dev)
    big = build(cfg, (2 * h, 2 * w, d), torch.bfloat16, dev)
    big_rate = images_per_second(big, batch, dev, repeats=1)
    fp32 = images_per_second(build(cfg, (h, w, d), torch.float32, dev), batch, dev, repeats=1)
    return {
        "benchmark": "sample", "machine": machine(), "config": config, "batch": batch,
        "model": {k: v for k, v in dataclasses.asdict(cfg.stage2.model).items() if k in ("embed_dim", "spatial_layers", "depth_layers")},
        "K": cfg.rqvae.num_codes, "code_shape": [h, w, d],
        "bf16_images_per_s": cached, "fp32_images_per_s": fp32,
        "no_cache_batch": base_batch, "no_cache_images_per_s": no_cache, "cache_speedup": cached_same / no_cache,
        "images_per_s_16x16": big_rate, "time_growth_8x8_to_16x16": cached / big_rate,
    }


def report(r: dict) -> str:
    h, w, d = r["code_shape"]
    return (
        f"sample  config={r['config']}  model={r['model']} K={r['K']} batch={r['batch']}\n"
        f"  machine: {r['machine']}\n"
        f"  KV cache vs recompute ({h}x{w}x{d}, bf16, batch {r['no_cache_batch']}): "
        f"{r['cache_speedup']:.1f}x  ({r['no_cache_images_per_s']:.2f} img/s without cache)   (goal >= 5x)\n"
        f"  time per image {h}x{w} -> {2 * h}x{2 * w} (4x positions): {r['time_growth_8x8_to_16x16']:.2f}x   (goal ~4x, not 16x)\n"
        f"  absolute: {r['bf16_images_per_s']:.1f} img/s bf16, {r['fp32_images_per_s']:.1f} img/s fp32 at batch {r['batch']}"
        f"   (straightforward KV cache ~13 img/s; goal >= 19.5)\n"
        f"{json.dumps(r)}"
    )
