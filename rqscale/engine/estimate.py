"""Model-state memory (parameters, gradients, optimizer state) per GPU for each ZeRO stage, from
DeepSpeed's own estimators where it has them. Used by the planner (`python -m rqscale.plan`).

DeepSpeed's byte convention, read from its estimators (deepspeed/runtime/zero/stage_1_and_2.py and
stage3.py, `estimate_zero{2,3}_model_states_mem_needs`), for Ψ parameters trained in 16-bit with Adam:
  2Ψ  16-bit parameters
  2Ψ  16-bit gradients
  16Ψ fp32 master parameters (4) + fp32 gradients (4) + Adam's two moments (8)
= 20Ψ. The ZeRO paper (Rajbhandari et al. 2020, Sec. 3 and 5) counts 2Ψ + 2Ψ + KΨ with K = 12 (no fp32
gradient copy); DeepSpeed's estimators add the fp32 gradient partition, so K = 16 here. ZeRO-1
partitions the K part over the N data-parallel ranks, ZeRO-2 the gradients too, ZeRO-3 the parameters
too (DeepSpeed's ZeRO-3 estimator also adds the largest layer, gathered whole: 4 bytes a parameter).

DeepSpeed has no estimator for ZeRO-0 and ZeRO-1; those two are computed below with the same
convention. CPU memory is per node, as DeepSpeed's estimators report it (their buffer factor 1.5
applies to CPU memory only). rqscale builds the model whole on every rank before deepspeed.initialize
(no `deepspeed.zero.Init`), which is DeepSpeed's `zero_init=False` case.
"""
from __future__ import annotations

BUFFER_FACTOR = 1.5  # DeepSpeed's default additional_buffer_factor (CPU memory only)
PARAM_16, GRAD_16, STATES_32 = 2, 2, 16  # bytes per parameter, DeepSpeed's convention (see above)


def _deepspeed_zero():
    """DeepSpeed's ZeRO modules, imported after its accelerator is chosen (rqscale/engine/setup.py)."""
    from rqscale.engine.setup import import_deepspeed

    import_deepspeed()
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    return stage_1_and_2, stage3


def _zero0(params: int, gpus_per_node: int) -> tuple:
    """ZeRO-0 (plain data parallel): every rank holds all 20 bytes a parameter."""
    cpu = params * 4 * gpus_per_node * BUFFER_FACTOR  # each rank builds the fp32 model on the CPU first
    return int(cpu), (PARAM_16 + GRAD_16 + STATES_32) * params


def _zero1(params: int, gpus_per_node: int, world: int, offload_optimizer: bool) -> tuple:
    """ZeRO-1: only the 16 bytes of fp32 optimizer state are partitioned (or, offloaded, live on the CPU,
    sized like DeepSpeed's ZeRO-2 offload estimate, whose CPU side is the same)."""
    if offload_optimizer:
        cpu = params * max(4 * world, 16) * BUFFER_FACTOR
        return int(cpu), (PARAM_16 + GRAD_16) * params
    cpu = params * 4 * gpus_per_node * BUFFER_FACTOR
    return int(cpu), (PARAM_16 + GRAD_16) * params + STATES_32 * params // world


def model_states(params: int, largest_layer: int, *, nodes: int, gpus_per_node: int, zero_stage: int,
                 offload_optimizer: bool = False, offload_params: bool = False) -> dict:
    """{"gpu_bytes", "cpu_bytes_per_node"} of one ZeRO configuration.

    `largest_layer`: parameters of the largest single module (ZeRO-3 gathers one whole at a time).
    Offload to NVMe needs the same GPU memory as to CPU; pass True for either."""
    world = nodes * gpus_per_node
    if zero_stage == 0:
        cpu, gpu = _zero0(params, gpus_per_node)
    elif zero_stage == 1:
        cpu, gpu = _zero1(params, gpus_per_node, world, offload_optimizer)
    elif zero_stage == 2:
        cpu, gpu = _deepspeed_zero()[0].estimate_zero2_model_states_mem_needs(
            params, gpus_per_node, nodes, cpu_offload=offload_optimizer, additional_buffer_factor=BUFFER_FACTOR)
    elif zero_stage == 3:
        cpu, gpu, _ = _deepspeed_zero()[1].estimate_zero3_model_states_mem_needs(
            params, largest_layer, gpus_per_node, nodes, cpu_offload=offload_optimizer,
            cpu_offload_params=offload_params, zero_init=False, additional_buffer_factor=BUFFER_FACTOR)
    else:
        raise ValueError(f"ZeRO stage {zero_stage} is not 0, 1, 2 or 3")
    return {"gpu_bytes": int(gpu), "cpu_bytes_per_node": int(cpu)}


# (zero_stage, offload_optimizer, offload_params) combinations DeepSpeed supports (rqscale/config/validate.py:
# optimizer offload needs ZeRO >= 1, parameter offload ZeRO-3 and, in DeepSpeed's estimator, optimizer offload).
OPTIONS = ((0, False, False), (1, False, False), (1, True, False), (2, False, False), (2, True, False),
           (3, False, False), (3, True, False), (3, True, True))


def all_model_states(params: int, largest_layer: int, *, nodes: int, gpus_per_node: int) -> list:
    """One row per entry of OPTIONS: zero_stage, offload_optimizer, offload_params, gpu_bytes, cpu_bytes_per_node."""
    rows = []
    for stage, opt, par in OPTIONS:
        row = model_states(params, largest_layer, nodes=nodes, gpus_per_node=gpus_per_node, zero_stage=stage,
                           offload_optimizer=opt, offload_params=par)
        rows.append({"zero_stage": stage, "offload_optimizer": opt, "offload_params": par, **row})
    return rows
