"""Memory per GPU: model states for every ZeRO stage (DeepSpeed's estimators, rqscale/engine/estimate.py),
activations per sample (activations.py), and the micro-batch that fits.

peak(micro) = model states + micro x activations per sample <= usable memory (hardware.RESERVE_FRACTION
left out). The config's ZeRO stage and offload settings pick the model-state figure; all stages are
reported.
"""
from __future__ import annotations

from dataclasses import dataclass

from rqscale.config import Config
from rqscale.config.validate import zero_stage
from rqscale.planning.activations import stage1_activations, stage2_activations


@dataclass(frozen=True)
class Setup:
    """What the memory figures depend on, beyond the model: one ZeRO / offload / checkpointing choice."""

    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    checkpointing: bool


def configured_setup(cfg: Config) -> Setup:
    e = cfg.engine
    ckpt = cfg.stage == "stage2" and cfg.stage2.model.activation_checkpointing
    return Setup(zero_stage(cfg), e.offload_optimizer != "none", e.offload_params != "none", ckpt)


def states_gpu_bytes(params: int, largest: int, setup: Setup, nodes: int, gpus_per_node: int) -> int:
    from rqscale.engine.estimate import model_states

    return model_states(params, largest, nodes=nodes, gpus_per_node=gpus_per_node, zero_stage=setup.zero_stage,
                        offload_optimizer=setup.offload_optimizer, offload_params=setup.offload_params)["gpu_bytes"]


def activations(cfg: Config) -> dict:
    """Per-sample activation figures: {"without_checkpointing": ..., "with_checkpointing": ...} for stage 2
    (the analytic model), {"without_checkpointing": ...} for stage 1 (measured, no checkpointing there)."""
    if cfg.stage == "stage2":
        return {"without_checkpointing": stage2_activations(cfg, False), "with_checkpointing": stage2_activations(cfg, True)}
    return {"without_checkpointing": stage1_activations(cfg)}


def per_sample(acts: dict, checkpointing: bool) -> int:
    return acts["with_checkpointing" if checkpointing else "without_checkpointing"]["total"]


def max_micro_batch(usable: int, states: int, per_sample_bytes: int) -> int:
    """Largest micro-batch whose activations fit beside the model states (0: not even one sample)."""
    return max(0, (usable - states) // per_sample_bytes)


def split_batch(global_batch: int, world: int, max_micro: int) -> tuple:
    """(micro, accum) with micro x accum x world = global_batch: the largest micro <= max_micro dividing
    global_batch / world. (0, 0) when nothing fits; a world that does not divide the batch gets the
    ceiling of global_batch / world per rank (the warning says so)."""
    per_rank = -(-global_batch // world)
    micro = max((m for m in range(1, min(max_micro, per_rank) + 1) if per_rank % m == 0), default=0)
    return (micro, per_rank // micro) if micro else (0, 0)
