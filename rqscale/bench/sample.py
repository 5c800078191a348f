"""Stage-2 sampling speed (issues: RQ-Transformer sampler; 6, sampling speed; 14, Draft-and-Revise), all
measured in one run here. A contextual config (stage2.model.kind=contextual) is measured as paper Table 4
does instead: s/sample of Draft-and-Revise at T_draft 8 / 32 / 64 against the AR sampler of the same width.

1. Seconds per image at batch 100, 200, 500 (paper Fig. 4) in bf16, and how it scales with the batch.
2. KV cache vs recomputing the whole prefix each step, at the config's T x D.
3. Time per image as the code map grows from 8x8 to 16x16 (4x the positions).
4. Absolute images/s of the config's model in bf16 and fp32 at `--batch`.
Only shapes matter for speed, so models have random weights; RQ-VAE decoding is not included (nor is
it in Fig. 4, see rqscale/eval/speed.py). Every model gets one small untimed warm-up call first.
"""
from __future__ import annotations

import dataclasses
import json

import torch

from rqscale.bench.common import machine
from rqscale.config import Config, load
from rqscale.eval.speed import WARMUP_BATCH, sampling_speed, seconds_per_call
from rqscale.models import RQTransformer
from rqscale.utils.memory import retain_freed_memory

FIG4_BATCHES = (100, 200, 500)


def build(cfg: Config, code_shape: tuple, dtype: torch.dtype, device: torch.device) -> RQTransformer:
    torch.manual_seed(0)
    model = RQTransformer(cfg.stage2.model, code_shape, cfg.rqvae.num_codes, cfg.rqvae.code_dim).eval()
    model.codebook.normal_()
    return model.to(device=device, dtype=dtype)


def images_per_second(model: RQTransformer, batch: int, device: torch.device, use_cache: bool = True, repeats: int = 1) -> float:
    """Median over `repeats` timed calls at `batch`, after one small untimed warm-up call."""
    seconds_per_call(model, min(WARMUP_BATCH, batch), device, use_cache=use_cache)
    return batch / seconds_per_call(model, batch, device, repeats=repeats, use_cache=use_cache)


def batch_sweep(model: RQTransformer, batches: list, device: torch.device) -> dict:
    """Fig. 4's measurement in bf16, and s/image at the largest batch over the smallest (< 1: batching pays)."""
    rows = sampling_speed(model, batches, device, torch.bfloat16)
    small, large = min(rows, key=lambda r: r["batch"]), max(rows, key=lambda r: r["batch"])
    ratio = large["seconds_per_image"] / small["seconds_per_image"]
    return {"batches": rows, "batch_scaling": {"from": small["batch"], "to": large["batch"], "seconds_per_image_ratio": ratio}}


def run(config: str, batch: int = 100, device: str = "cpu", baseline_batch: int = 0, batches: tuple = FIG4_BATCHES) -> dict:
    cfg = load(config, check_files=False)
    dev = torch.device(device)
    # As the CPU trainer does (rqscale/utils/memory.py): without it glibc maps every tensor above 32 MB
    # afresh, and after the no-cache run's large blocks the 16x16 model's KV caches were page-faulted
    # in on every step (measured: 8x8 -> 16x16 growth 9.9x with the default malloc, 5.8x retained).
    retained = dev.type == "cpu" and retain_freed_memory()
    h, w, d = cfg.rqvae.code_shape
    bf16 = build(cfg, (h, w, d), torch.bfloat16, dev)
    sweep = batch_sweep(bf16, list(batches), dev)
    at_batch = [r["images_per_second"] for r in sweep["batches"] if r["batch"] == batch]
    cached = at_batch[0] if at_batch else images_per_second(bf16, batch, dev)  # the sweep timed it already
    base_batch = baseline_batch or batch
    no_cache = images_per_second(bf16, base_batch, dev, use_cache=False)
    cached_same = cached if base_batch == batch else images_per_second(bf16, base_batch, dev)
    big_rate = images_per_second(build(cfg, (2 * h, 2 * w, d), torch.bfloat16, dev), batch, dev)
    fp32 = images_per_second(build(cfg, (h, w, d), torch.float32, dev), batch, dev)
    return {
        "benchmark": "sample", "machine": machine(), "config": config, "batch": batch, "malloc_retained": retained,
        "model": {k: v for k, v in dataclasses.asdict(cfg.stage2.model).items() if k in ("embed_dim", "spatial_layers", "depth_layers")},
        "K": cfg.rqvae.num_codes, "code_shape": [h, w, d], **sweep,
        "bf16_images_per_s": cached, "fp32_images_per_s": fp32,
        "no_cache_batch": base_batch, "no_cache_images_per_s": no_cache, "cache_speedup": cached_same / no_cache,
        "images_per_s_16x16": big_rate, "time_growth_8x8_to_16x16": cached / big_rate,
    }


def report_sweep(r: dict) -> str:
    h, w, d = r["code_shape"]
    per_batch = " | ".join(f"{x['batch']}: {x['seconds_per_image']:.4f} s ({x['images_per_second']:.1f} img/s)" for x in r["batches"])
    s = r["batch_scaling"]
    return (
        f"  s/image by batch ({h}x{w}x{d}, bf16, KV cache, codes only as in Fig. 4): {per_batch}\n"
        f"  batching: s/image at {s['to']} / at {s['from']} = {s['seconds_per_image_ratio']:.2f}"
        f"   (1.0 = no gain from batching; paper Fig. 4, 1.4B on one A100: 0.02 s/image at batch 500)\n"
    )


def report(r: dict) -> str:
    h, w, d = r["code_shape"]
    return (
        f"sample  config={r['config']}  model={r['model']} K={r['K']} batch={r['batch']}\n"
        f"  machine: {r['machine']}  (malloc keeps freed memory: {r['malloc_retained']})\n"
        f"{report_sweep(r)}"
        f"  KV cache vs recompute ({h}x{w}x{d}, bf16, batch {r['no_cache_batch']}): "
        f"{r['cache_speedup']:.1f}x  ({r['no_cache_images_per_s']:.2f} img/s without cache)   (goal >= 5x)\n"
        f"  time per image {h}x{w} -> {2 * h}x{2 * w} (4x positions): {r['time_growth_8x8_to_16x16']:.2f}x   (goal ~4x, not 16x)\n"
        f"  absolute: {r['bf16_images_per_s']:.1f} img/s bf16, {r['fp32_images_per_s']:.1f} img/s fp32 at batch {r['batch']}"
        f"   (straightforward KV cache ~13 img/s; goal >= 19.5)\n"
        f"{json.dumps(r)}"
    )


def run_contextual(config: str, batch: int = 100, device: str = "cpu", repeats: int = 1) -> dict:
    """Table 4's comparison for a contextual config at `batch`, in bf16, random weights (only shapes matter)."""
    from rqscale.eval.speed import draft_revise_speed
    from rqscale.models import build_stage2_model
    from rqscale.sampling import SamplingParams, schedule_of

    cfg = load(config, check_files=False)
    dev = torch.device(device)
    retained = dev.type == "cpu" and retain_freed_memory()
    torch.manual_seed(0)
    model = build_stage2_model(cfg.stage2.model, cfg.rqvae.code_shape, cfg.rqvae.num_codes, cfg.rqvae.code_dim).eval()
    model.codebook.normal_()
    sp = cfg.stage2.sampling
    schedule = schedule_of(sp, SamplingParams(sp.temperature, sp.top_k, sp.top_p, sp.cfg_scale))
    table = draft_revise_speed(model, [batch], dev, torch.bfloat16, schedule, repeats=repeats)[0]
    return {"benchmark": "sample-contextual", "machine": machine(), "config": config, "malloc_retained": retained,
            "model": {k: v for k, v in dataclasses.asdict(cfg.stage2.model).items() if k in ("embed_dim", "spatial_layers", "depth_layers")},
            "K": cfg.rqvae.num_codes, "code_shape": list(cfg.rqvae.code_shape), "cfg_scale": sp.cfg_scale, **table}


def report_contextual(r: dict) -> str:
    h, w, d = r["code_shape"]
    lines = [f"sample (contextual)  config={r['config']}  model={r['model']} K={r['K']} code map {h}x{w}x{d}  batch={r['batch']}  bf16",
             f"  machine: {r['machine']}  (malloc keeps freed memory: {r['malloc_retained']})",
             f"  Draft-and-Revise with T_revise {r['revise_steps']}, M {r['revise_iterations']}, revise guidance {r['cfg_scale']}; "
             "codes only, as Table 4",
             f"  AR sampler, same width (KV cache, guidance {r['cfg_scale']} as the revise phase): "
             f"{r['ar_seconds_per_sample']:.4f} s/sample"]
    for row in r["draft_and_revise"]:
        paper = f"{row['paper_vs_ar']:.2f}x" if row["paper_vs_ar"] is not None else "-"
        lines.append(f"  T_draft {row['draft_steps']:>3}: {row['seconds_per_sample']:.4f} s/sample = {row['vs_ar']:.2f}x AR"
                     f"   (paper Table 4, A100: {paper})")
    return "\n".join(lines) + "\n" + json.dumps(r)
