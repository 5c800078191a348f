"""DeepSpeed engines and their checkpoint files.

- `EngineModule` is what an engine wraps: the trainable network as its only submodule, and the
  task's loss function called in `forward`. Frozen helpers the loss needs (stage 2's RQ-VAE, LPIPS)
  stay outside the module tree, so ZeRO-3 never partitions or converts them.
- Checkpoints are DeepSpeed's own per-rank files under <dir>/<tag>/. A checkpoint written by a
  different number of ranks is turned into a universal checkpoint (`to_universal`) and loaded with
  `checkpoint.load_universal` (DESIGN.md: measured to work for 2 -> 1 ranks).
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

# deepspeed is imported inside the functions, through import_deepspeed: DeepSpeed picks its accelerator
# when first imported, and setting that up is process set-up, not something importing rqscale may do.
from rqscale.engine.safe_checkpoint import verify_deepspeed_files
from rqscale.engine.setup import import_deepspeed, printed_to_log

UNIVERSAL_SUFFIX = "_universal"


class EngineModule(nn.Module):
    """`net` is trained; `objective(*args)` (a task method that calls `net`) gives the losses."""

    def __init__(self, net: nn.Module, objective: Callable):
        super().__init__()
        self.net = net
        object.__setattr__(self, "objective", objective)  # a bound method of the task: not a submodule

    def forward(self, *args, **kwargs):
        return self.objective(*args, **kwargs)


def init_distributed() -> None:
    """Join the process group Ray Train made, or make a one-rank group for an in-process run.

    The one-rank group gets an explicit tcp:// address instead of MASTER_ADDR/MASTER_PORT in
    os.environ: child processes would inherit those and collide on the port."""
    if dist.is_initialized():
        return
    deepspeed = import_deepspeed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:  # no launcher set the rendezvous
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it; no port, so safe to inherit
    with printed_to_log(__name__):  # DeepSpeed prints that it built its CPU communication op
        deepspeed.init_distributed(dist_backend=backend, verbose=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_engine(module: EngineModule, param_groups: list, optimizer: torch.optim.Optimizer, scheduler,
                 config: dict, universal: bool = False):
    """deepspeed.initialize with a client optimizer and LR scheduler; `universal` loads universal checkpoints."""
    config = dict(config)
    if universal:
        config["checkpoint"] = {"load_universal": True}
    deepspeed = import_deepspeed()
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, model_parameters=param_groups,
                                           lr_scheduler=scheduler, config=config, dist_init_required=False)
    return engine


def save_engine_checkpoint(engine, directory: str, tag: str) -> None:
    """Every rank writes its shard of `tag` under `directory` (a collective)."""
    engine.save_checkpoint(directory, tag=tag, client_state={}, save_latest=False)


def load_engine_checkpoint(engine, directory: str, tag: str, weight_decays: list) -> None:
    """Load `tag`; then set each param group's lr from the restored schedule and its own weight decay.

    Why: a universal checkpoint's loader copies param group 0's hyperparameters into every group,
    which gives no-decay groups (biases, norms, embeddings) weight decay, and it hands every
    parameter group the *same* Adam step tensor, which torch's Adam then increments once per group
    per step, corrupting the bias correction (measured: a 2->1 resume drifted 3.5e-5 from the
    2-rank run in two steps until each group got its own counter).
    """
    verify_deepspeed_files(directory, tag)  # DeepSpeed unpickles with weights_only=False (safe_checkpoint.py)
    path, _ = engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint '{tag}' under {directory}")
    groups = engine.optimizer.param_groups
    for group, lr, decay in zip(groups, engine.lr_scheduler.get_last_lr(), weight_decays):
        group["lr"], group["weight_decay"] = lr, decay
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()  # one counter per parameter, see above


def to_universal(directory: str, tag: str) -> str:
    """Convert <directory>/<tag> (any number of ranks) into <directory>/<tag>_universal; return that tag."""
    out_tag = tag + UNIVERSAL_SUFFIX
    verify_deepspeed_files(directory, tag)  # ds_to_universal unpickles every shard with weights_only=False
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", os.path.join(directory, tag),
           "--output_folder", os.path.join(directory, out_tag), "--num_extract_workers", "1", "--num_merge_workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if done.returncode != 0:
        raise RuntimeError(f"universal checkpoint conversion of {directory}/{tag} failed:\n{done.stderr[-3000:]}")
    return out_tag


def consolidated_state_dict(engine) -> Optional[dict]:
    """Whole weights of engine.module.net on rank 0 (None elsewhere); a collective under ZeRO-3.

    In the training precision (bf16 weights under bf16); exact fp32 weights come from a saved
    checkpoint through `fp32_state_dict_from_checkpoint`."""
    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if dist.get_rank() == 0 else None
    return None if state is None else _strip(state, "net.")


def fp32_state_dict_from_checkpoint(directory: str, tag: str) -> dict:
    """fp32 weights (and buffers) of `net` from DeepSpeed checkpoint files, any ZeRO stage >= 1."""
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    verify_deepspeed_files(directory, tag)  # zero_to_fp32 unpickles with weights_only=False
    state = get_fp32_state_dict_from_zero_checkpoint(directory, tag=tag)
    return _strip(state, "net.")


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
            for k, v in state.items()}
