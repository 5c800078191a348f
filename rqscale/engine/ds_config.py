"""The DeepSpeed config dict for one engine, from the typed schema (no deepspeed import here).

What maps where:
  train.global_batch, batch_plan(world)  -> train_batch_size, train_micro_batch_size_per_gpu,
                                            gradient_accumulation_steps (global batch fixed under resizes)
  <stage>.optim.grad_clip                -> gradient_clipping
  engine.zero_stage (or the stage's default) -> zero_optimization.stage
  engine.offload_optimizer / offload_params  -> zero_optimization.offload_* (cpu or nvme at nvme_path)
  engine.precision                       -> bf16.enabled (fp32 master weights stay in the optimizer)
  one rank under ZeRO-3, no param offload -> every parameter resident, torch's own F.linear (see below)
The optimizer and LR schedule are passed to deepspeed.initialize as objects (rqscale/train/optim.py),
so the schedule is exactly the one-process loop's.
"""
from __future__ import annotations

from rqscale.config import Config
from rqscale.config.validate import batch_plan, zero_stage


def _offload(device: str, nvme_path: str) -> dict:
    if device == "nvme":
        return {"device": "nvme", "nvme_path": nvme_path, "pin_memory": True}
    return {"device": "cpu", "pin_memory": True}


# ZeRO-3 partitions each parameter over the ranks and gathers it back around every module that uses it.
# With one rank the partition is the whole parameter, so the gathering saves no memory and costs host
# time at every module, forward and backward: on 2 CPU cores it took the stage-2 bench step (width 512,
# 8+2 layers) from 2.65 s to 3.0-3.3 s (Dec 2026). Parameters under DeepSpeed's persistence threshold
# are never partitioned; with one rank the threshold is raised above every parameter. Then ZeRO-3's
# "memory-efficient" linear, which it patches over torch.nn.functional.linear for the whole process
# (so that backward does not keep gathered weights alive), has nothing to save either, and it costs: it
# adds the bias in a second pass over each output instead of inside the GEMM. And its reduce-scatter
# path concatenates every gradient bucket into a fresh buffer before "scattering" it to the one rank;
# with reduce_scatter off, the bucket it already copies the gradients into is averaged in place (an
# all-reduce over one rank). Interleaved in one process, that took the bench step 2.16 -> 2.12 s.
ALL_PARAMETERS_PERSIST = 1 << 62


def zero_section(cfg: Config, world_size: int) -> dict:
    e = cfg.engine
    section = {"stage": zero_stage(cfg)}
    if e.offload_optimizer != "none":
        section["offload_optimizer"] = _offload(e.offload_optimizer, e.nvme_path)
    if e.offload_params != "none":
        section["offload_param"] = _offload(e.offload_params, e.nvme_path)
    if section["stage"] == 3:
        # Gather whole parameters into one state dict at save/export time (consolidated weights).
        section["stage3_gather_16bit_weights_on_model_save"] = True
        if world_size == 1 and e.offload_params == "none":
            section["stage3_param_persistence_threshold"] = ALL_PARAMETERS_PERSIST
            section["memory_efficient_linear"] = False
            section["reduce_scatter"] = False
    return section


def deepspeed_config(cfg: Config, world_size: int, grad_clip: float, *, zero: dict | None = None) -> dict:
    """The dict deepspeed.initialize(config=...) takes, for `world_size` data-parallel ranks."""
    if cfg.engine.precision == "auto":  # a bug, not a user error: the training loop resolves it per device
        raise ValueError("engine.precision=auto reached the DeepSpeed config unresolved: pass the config through "
                         "rqscale.engine.precision.with_resolved_precision(cfg, device) first")
    micro, accum = batch_plan(cfg, world_size)
    config = {
        "train_batch_size": micro * accum * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "zero_optimization": zero if zero is not None else zero_section(cfg, world_size),
        "bf16": {"enabled": cfg.engine.precision == "bf16"},
        "steps_per_print": 1 << 30,  # progress is rqscale's own line (telemetry), not DeepSpeed's
        "wall_clock_breakdown": False,
        # A client optimizer (torch AdamW) under ZeRO is fine; DeepSpeed would otherwise insist on
        # its own CPU Adam when offloading.
        "zero_force_ds_cpu_optimizer": False,
    }
    if grad_clip > 0:
        config["gradient_clipping"] = grad_clip
    return config
