"""The plan of one config on one cluster: parameters, FLOPs, memory, speed and warnings, as one dict."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rqscale.config import Config
from rqscale.planning.hardware import GPU, RESERVE_FRACTION, usable_bytes
from rqscale.planning.memory import activations, configured_setup, max_micro_batch, per_sample, split_batch, states_gpu_bytes
from rqscale.planning.params import stage1_params, stage2_params, trained_params
from rqscale.planning.speed import dataset_size, speed
from rqscale.train.flops import stage1_flops, stage2_flops


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu: GPU
    mfu: float = 0.5
    dataset_size: Optional[int] = None  # images per epoch; None: from the config (speed.dataset_size)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def flops_section(cfg: Config) -> dict:
    """Training FLOPs per image. Stage 2: analytic, backward = 2 x forward per part. Stage 1: measured
    forward parts and whole step (rqscale/train/flops.py); backward = step - forward."""
    if cfg.stage == "stage1":
        f = stage1_flops(cfg)
        return {**f, "backward": f["train"] - f["forward"]}
    f = stage2_flops(cfg)
    parts = {f"{p}_backward": 2 * f[f"{p}_forward"] for p in ("spatial", "depth", "heads")}
    return {**f, **parts, "backward": f["train"] - f["forward"]}


def cluster_section(c: Cluster) -> dict:
    return {"nodes": c.nodes, "gpus_per_node": c.gpus_per_node, "world": c.world, "gpu": c.gpu.name,
            "gpu_memory_bytes": c.gpu.memory_bytes, "reserve_fraction": RESERVE_FRACTION,
            "usable_bytes": usable_bytes(c.gpu), "peak_tflops": c.gpu.peak_flops / 1e12, "peak_source": c.gpu.source, "mfu": c.mfu}


def _config_batch(cfg: Config, world: int) -> tuple:
    """(micro, accum) the config runs with on `world` ranks: the trainer's own derivation (batch_plan);
    where that refuses the size, the nearest whole split, so the plan can still say what it would take."""
    from rqscale.config import ConfigError
    from rqscale.config.derive import batch_plan

    try:
        return batch_plan(cfg, world)
    except ConfigError:
        t = cfg.train
        if cfg.stage == "stage1":
            return -(-t.global_batch // world), 1
        return t.micro_batch, max(1, t.global_batch // (t.micro_batch * world))


def memory_section(cfg: Config, c: Cluster) -> dict:
    from rqscale.engine.estimate import all_model_states

    params, largest = trained_params(cfg)
    setup, acts = configured_setup(cfg), activations(cfg)
    states = states_gpu_bytes(params, largest, setup, c.nodes, c.gpus_per_node)
    per = per_sample(acts, setup.checkpointing)
    most = max_micro_batch(usable_bytes(c.gpu), states, per)
    micro, accum = _config_batch(cfg, c.world)
    fixed = (micro, accum) if micro <= most else (0, 0)  # stage 1: the per-GPU batch is global_batch / world
    best = split_batch(cfg.train.global_batch, c.world, most) if cfg.stage == "stage2" else fixed
    return {"zero_stage": setup.zero_stage, "offload_optimizer": cfg.engine.offload_optimizer,
            "offload_params": cfg.engine.offload_params, "activation_checkpointing": setup.checkpointing,
            "trained_params": params, "largest_layer_params": largest,
            "model_states": all_model_states(params, largest, nodes=c.nodes, gpus_per_node=c.gpus_per_node),
            "activations_per_sample": acts, "model_states_gpu_bytes": states, "activations_bytes_per_sample": per,
            "max_micro_batch": most, "micro_batch": micro, "grad_accum": accum, "peak_bytes": states + micro * per,
            "fits": 0 < micro <= most, "suggested_micro_batch": best[0], "suggested_grad_accum": best[1]}


def plan(cfg: Config, cluster: Optional[Cluster] = None) -> dict:
    """Parameter counts; with a cluster also FLOPs, memory, speed and warnings."""
    counts = stage2_params(cfg) if cfg.stage == "stage2" else stage1_params(cfg)
    report = {"stage": cfg.stage, "run": cfg.run.name, **counts}
    if cluster is None:
        return report
    from rqscale.planning.advice import warnings

    name, size = dataset_size(cfg)
    size = cluster.dataset_size or size
    report["cluster"] = cluster_section(cluster)
    report["flops_per_image"] = flops_section(cfg)
    report["memory"] = memory_section(cfg, cluster)
    report["speed"] = {"dataset": name if not cluster.dataset_size else "--dataset-size", "dataset_size": size,
                       **speed(cfg, report["flops_per_image"]["train"], cluster.world, cluster.gpu.peak_flops, cluster.mfu, size)}
    report["warnings"] = warnings(cfg, report)
    return report
