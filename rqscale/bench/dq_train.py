"""DQ-Transformer training throughput against the AR RQ-Transformer at the same width (issue 15), one run.

Both through the plain PyTorch step (`Stage2Trainer`: AdamW, fp32 on CPU; the engine adds the same
overhead to both), the same batch of images per step, random weights and inputs (only shapes matter):
  - DQ: configs/debug/dq_bench.yaml (width 256, 2 position + 4 content layers, a 16 x 16 code map under
    8 x 8 regions), given codes and grain maps with each region fine with probability r_f = 0.5, so the
    sequences have the length a trained DQ-VAE's budget gives them (about 164 tokens);
  - AR: the same width and as many layers (2 of them depth layers, the rest spatial) on an 8 x 8 x 4 code map (256 codes), the
    RQ-Transformer's debug shape, fed latents.
Reported: images/s, and code tokens/s (a token is one predicted code: the DQ sequence's L - 1 inputs,
the AR model's T x D codes); the DQ figure includes the host's packing of each batch.
"""
from __future__ import annotations

import json
import statistics
import time

import torch

from rqscale.bench.common import machine
from rqscale.config import load

DQ_CONFIG = "configs/debug/dq_bench.yaml"
AR_CONFIG = "configs/debug/stage2_bench.yaml"


def _dq_batch(cfg, batch: int, generator: torch.Generator) -> dict:
    h, w, _ = cfg.rqvae.code_shape
    grain = (torch.rand(batch, h // 2, w // 2, generator=generator) < cfg.rqvae.dq.fine_ratio).long()
    codes = torch.randint(0, cfg.rqvae.num_codes, (batch, h, w), generator=generator)
    coarse = codes[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2)  # a coarse region's 4 copies agree
    fine = grain.repeat_interleave(2, 1).repeat_interleave(2, 2).bool()
    return {"codes": torch.where(fine, codes, coarse), "grain": grain, "cond": torch.randint(0, 10, (batch,), generator=generator)}


def _timed(trainer, batches: list, warmup: int) -> float:
    for step, b in enumerate(batches[:warmup]):
        trainer.step([b], step)
    times = []
    for step, b in enumerate(batches[warmup:]):
        start = time.perf_counter()
        trainer.step([b], step)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(config: str = DQ_CONFIG, batch: int = 32, repeats: int = 5, warmup: int = 2) -> dict:
    from rqscale.models import build_stage1_model
    from rqscale.tasks import stage2_task
    from rqscale.train.stage2 import Stage2Trainer

    gen = torch.Generator().manual_seed(0)
    dq_cfg = load(config, check_files=False)
    m = dq_cfg.stage2.model
    ar_cfg = load(AR_CONFIG, [f"stage2.model.embed_dim={m.embed_dim}", f"stage2.model.num_heads={m.num_heads}",
                              f"stage2.model.spatial_layers={m.spatial_layers + m.depth_layers - 2}", "stage2.model.depth_layers=2",
                              "rqvae.code_shape=[8,8,4]"],
                  check_files=False)
    torch.manual_seed(0)
    dq_task = stage2_task(dq_cfg, build_stage1_model(dq_cfg.rqvae))
    dq_batches = [_dq_batch(dq_cfg, batch, gen) for _ in range(warmup + repeats)]
    dq_s = _timed(Stage2Trainer(dq_task, dq_cfg), dq_batches, warmup)
    dq_tokens = float(torch.stack([dq_task.sequences(b)[0].length for b in dq_batches]).float().mean() - 1)
    ar_task = stage2_task(ar_cfg, build_stage1_model(ar_cfg.rqvae))
    ar_batches = [{"latents": torch.randn(batch, 8, 8, ar_cfg.rqvae.code_dim, generator=gen),
                   "cond": torch.randint(0, 10, (batch,), generator=gen)} for _ in range(warmup + repeats)]
    ar_s = _timed(Stage2Trainer(ar_task, ar_cfg), ar_batches, warmup)
    ar_tokens = 8 * 8 * 4
    rows = {"dq": {"images_per_s": batch / dq_s, "tokens_per_image": dq_tokens, "tokens_per_s": batch * dq_tokens / dq_s},
            "ar": {"images_per_s": batch / ar_s, "tokens_per_image": ar_tokens, "tokens_per_s": batch * ar_tokens / ar_s}}
    return {"benchmark": "train-dq", "machine": machine(), "batch": batch, "repeats": repeats, "config": config, "embed_dim": m.embed_dim, "layers": m.spatial_layers + m.depth_layers,
            "models": rows, "tokens_per_s_dq_over_ar": rows["dq"]["tokens_per_s"] / rows["ar"]["tokens_per_s"]}


def report(r: dict) -> str:
    lines = [f"train (dq vs ar)  width {r['embed_dim']}, {r['layers']} layers each, batch {r['batch']}, plain step, fp32, median of {r['repeats']}",
             f"  machine: {r['machine']}"]
    for name, row in r["models"].items():
        lines.append(f"  {name}: {row['images_per_s']:.1f} img/s, {row['tokens_per_image']:.0f} code tokens/image, "
                     f"{row['tokens_per_s']:.0f} tokens/s")
    lines.append(f"  DQ-Transformer tokens/s over the RQ-Transformer's: {r['tokens_per_s_dq_over_ar']:.2f}")
    return "\n".join(lines) + "\n" + json.dumps(r)
