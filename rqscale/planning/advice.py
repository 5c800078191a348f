"""Warnings that name the config key that fixes them (keys as in rqscale/config/schema.py)."""
from __future__ import annotations

from dataclasses import replace

from rqscale.config import Config
from rqscale.planning.hardware import GIB
from rqscale.planning.memory import Setup, max_micro_batch, per_sample, split_batch, states_gpu_bytes


def overrides(old: Setup, new: Setup) -> str:
    """The key=value overrides that turn setup `old` into `new`."""
    device = {True: "cpu", False: "none"}
    parts = []
    if new.zero_stage != old.zero_stage:
        parts.append(f"engine.zero_stage={new.zero_stage}")
    if new.offload_optimizer != old.offload_optimizer:
        parts.append(f"engine.offload_optimizer={device[new.offload_optimizer]}")
    if new.offload_params != old.offload_params:
        parts.append(f"engine.offload_params={device[new.offload_params]}")
    if new.checkpointing != old.checkpointing:
        parts.append(f"stage2.model.activation_checkpointing={str(new.checkpointing).lower()}")
    return " ".join(parts)


def candidate_setups(cfg: Config, s: Setup) -> list:
    """Changes that cut memory, cheapest first: a higher ZeRO stage, optimizer offload, parameter offload,
    activation checkpointing, and all of them at once. Stage 1 stops at ZeRO-1 (validate.py)."""
    stage2 = cfg.stage == "stage2"
    out = [replace(s, zero_stage=z) for z in range(s.zero_stage + 1, (3 if stage2 else 1) + 1)]
    out.append(replace(s, zero_stage=max(s.zero_stage, 1), offload_optimizer=True))
    if stage2:
        out.append(replace(s, zero_stage=3, offload_optimizer=True, offload_params=True))
        out.append(replace(s, checkpointing=True))
        out.append(Setup(3, True, True, True))
    return [c for i, c in enumerate(out) if c != s and c not in out[:i]]


def _fixes(cfg: Config, plan: dict, need: int) -> list:
    """'override (max micro-batch N)' for each candidate setup that fits `need` samples per GPU."""
    m, c, usable = plan["memory"], plan["cluster"], plan["cluster"]["usable_bytes"]
    s = Setup(m["zero_stage"], m["offload_optimizer"] != "none", m["offload_params"] != "none", m["activation_checkpointing"])
    found = []
    for new in candidate_setups(cfg, s):
        states = states_gpu_bytes(m["trained_params"], m["largest_layer_params"], new, c["nodes"], c["gpus_per_node"])
        fits = max_micro_batch(usable, states, per_sample(m["activations_per_sample"], new.checkpointing))
        if fits >= need:
            found.append(f"{overrides(s, new)} (max micro-batch {fits})")
    return found


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def memory_warnings(cfg: Config, plan: dict) -> list:
    m, c = plan["memory"], plan["cluster"]
    where = f"the {_gib(c['usable_bytes'])} usable per {c['gpu']}"
    if m["max_micro_batch"] == 0:
        fixes = _fixes(cfg, plan, 1)
        head = (f"does not fit: model states {_gib(m['model_states_gpu_bytes'])} (ZeRO-{m['zero_stage']}) + activations "
                f"{_gib(m['activations_bytes_per_sample'])} at micro-batch 1 exceed {where}")
        return [head + (": set " + "; or ".join(fixes) if fixes else ": add GPUs (--nodes) or shrink the model")]
    if m["micro_batch"] > m["max_micro_batch"]:
        most, need = m["max_micro_batch"], f"{_gib(m['peak_bytes'])}, more than {where} (at most micro-batch {m['max_micro_batch']})"
        if cfg.stage == "stage1":  # accumulation stays 1 (validate.py): only more ranks shrink the per-GPU batch
            world = next(w for w in range(c["world"], cfg.train.global_batch + 1) if cfg.train.global_batch % w == 0
                         and cfg.train.global_batch // w <= most)
            return [f"train.global_batch {cfg.train.global_batch} over {c['world']} GPUs is {m['micro_batch']} images per GPU "
                    f"and needs {need}: train on {world} GPUs (train.num_workers={world}) "
                    f"or set train.global_batch <= {most * c['world']}"]
        micro, accum = split_batch(cfg.train.global_batch, c["world"], most)
        fixes = [f"train.micro_batch={micro} train.grad_accum={accum}"] + _fixes(cfg, plan, m["micro_batch"])
        return [f"train.micro_batch {m['micro_batch']} needs {need}: set " + "; or ".join(fixes)]
    return []


def batch_warnings(cfg: Config, plan: dict) -> list:
    t, world = cfg.train, plan["cluster"]["world"]
    out = []
    if t.global_batch % world:
        out.append(f"train.global_batch {t.global_batch} is not divisible by the {world} GPUs: set train.global_batch "
                   f"to a multiple of {world} (e.g. {t.global_batch // world * world or world}) or change --nodes/--gpus-per-node")
    elif cfg.stage == "stage2" and t.global_batch % (t.micro_batch * world):
        out.append(f"train.micro_batch {t.micro_batch} x {world} GPUs does not divide train.global_batch {t.global_batch}: "
                   f"set train.micro_batch to a divisor of {t.global_batch // world}")
    elif t.num_workers != world:
        keys = f" train.micro_batch={t.global_batch // world}" if cfg.stage == "stage1" else ""  # stage 2 derives grad_accum
        out.append(f"the config trains on train.num_workers={t.num_workers} ranks, this plan on {world}: "
                   f"set train.num_workers={world}{keys} to run it there")
    return out


def warnings(cfg: Config, plan: dict) -> list:
    out = memory_warnings(cfg, plan) + batch_warnings(cfg, plan)
    if plan["speed"]["epoch_hours"] is None:
        out.append("data.shards names no dataset the planner knows, so no epoch time: pass --dataset-size N")
    return out
