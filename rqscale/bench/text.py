"""Text-conditional training beside class-conditional training at the same width, in one run (issue 13).

A text model prepends L caption tokens (A.2): its spatial transformer runs L + T - 1 positions instead
of T (95 instead of 64 with 8x8 codes and 32 tokens), and a text head predicts the L - 1 next caption
tokens. The class-conditional twin is the same config with stage2.model.condition=class. Both train
through the DeepSpeed engine (ZeRO-3, 1 rank, the config's precision) on latents, their steps
interleaved so that machine noise hits both alike. The measured cost ratio, text step time over class
step time, is set beside the ratio of their model FLOPs (`stage2_flops`), which predicts it.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rqscale.bench.common import interleaved, rate_of
from rqscale.config import Config
from rqscale.train.flops import stage2_flops


def class_twin_overrides(overrides: Sequence[str]) -> list:
    return [*overrides, "stage2.model.condition=class"]


def compare(text_cfg: Config, class_cfg: Config, warmup: int, repeats: int, peak: float,
            device: torch.device = torch.device("cpu")) -> dict:
    """{text, class: rates + MFU + GFLOP/sample, cost_ratio, flop_ratio}: engine steps on `device`, interleaved."""
    from rqscale.bench.train import engine_trainer, make_batches

    cfgs = {"text": text_cfg, "class": class_cfg}
    steps = {name: engine_trainer(cfg, device)[1] for name, cfg in cfgs.items()}
    times = interleaved(steps, {name: make_batches(cfg, device=device) for name, cfg in cfgs.items()}, warmup, repeats, device)
    out: dict = {}
    for name, cfg in cfgs.items():
        flops = float(stage2_flops(cfg)["train"])
        rates = rate_of(times[name], cfg.train.micro_batch)
        out[name] = {**rates, "gflop_per_sample": flops / 1e9, "mfu": flops * rates["images_per_s"] / peak}
    out["cost_ratio"] = out["text"]["step_s"] / out["class"]["step_s"]
    out["flop_ratio"] = out["text"]["gflop_per_sample"] / out["class"]["gflop_per_sample"]
    return out


def report_lines(c: dict, text_length: int) -> list:
    t, k = c["text"], c["class"]
    return [
        f"  text vs class conditioning at the same width (engine, same process, steps interleaved; {text_length} caption tokens):",
        f"    text  {t['images_per_s']:6.2f} img/s  MFU {t['mfu']:.2f}  ({t['gflop_per_sample']:.2f} GFLOP/sample)",
        f"    class {k['images_per_s']:6.2f} img/s  MFU {k['mfu']:.2f}  ({k['gflop_per_sample']:.2f} GFLOP/sample)",
        f"    text step / class step: measured {c['cost_ratio']:.2f}x, FLOPs predict {c['flop_ratio']:.2f}x",
    ]
