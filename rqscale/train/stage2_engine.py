"""Stage 2 under DeepSpeed: the RQ-Transformer in one engine (ZeRO-3 by default), the RQ-VAE frozen
beside it, outside the engine, so ZeRO never partitions or converts it."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from rqscale.config import Config
from rqscale.engine import EngineModule, build_engine, consolidated_state_dict, deepspeed_config, fp32_state_dict_from_checkpoint
from rqscale.engine import load_engine_checkpoint, save_engine_checkpoint
from rqscale.engine.precision import with_resolved_precision
from rqscale.models import RQTransformer, build_stage2_model
from rqscale.sampling.checkpoint import save_consolidated
from rqscale.tasks import stage2_task
from rqscale.train.engine_step import engine_step
from rqscale.train.optim import build_optimizer, build_scheduler
from rqscale.train.stage2 import decay_groups, load_init_transformer, load_rqvae, run_picture
from rqscale.utils.collectives import DeviceCollectives

ENGINE_TAG = "engine"


class Stage2Engines:
    tags = (ENGINE_TAG,)

    def __init__(self, cfg: Config, world_size: int, device: torch.device, universal: bool = False):
        cfg = with_resolved_precision(cfg, device)  # engine.precision=auto: bf16 or fp32 for this device
        self.cfg = cfg
        self.collectives = DeviceCollectives(device)
        self.task = stage2_task(cfg, load_rqvae(cfg))
        if cfg.run.init_from:  # fine-tuning: before the engine takes the parameters (ZeRO partitions them)
            load_init_transformer(self.task.model, cfg.run.init_from)
        self.task = self.task.to(device)
        o = cfg.stage2.optim
        groups = decay_groups(self.task.model, o.weight_decay)
        self.optimizer = optimizer = build_optimizer(groups, o)
        scheduler = build_scheduler(optimizer, o, cfg.train.max_steps)
        config = deepspeed_config(cfg, world_size, o.grad_clip)
        self.engine = build_engine(EngineModule(self.task.model, self.task.losses), groups, optimizer, scheduler, config, universal)
        self.scheduler = scheduler
        self.weight_decays = [g["weight_decay"] for g in groups]

    def step(self, micro_batches: Sequence[dict], step: int) -> tuple:
        """(metrics as device tensors, taken: 0-dim device flag, 0.0 when the step was skipped): one
        optimizer step over this rank's micro-batches. Class labels were range-checked by the reader."""
        self.task.train()
        metrics: dict = {}
        taken = engine_step(self.engine, self.optimizer, micro_batches, self.engine, metrics, self.collectives)
        metrics["loss"] = metrics["total"]
        metrics["grad_norm"] = self.engine.get_global_grad_norm()
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics, taken

    def on_sync(self) -> None:
        """Nothing of stage 2 waits for a logging step."""

    def save(self, directory: str) -> None:
        save_engine_checkpoint(self.engine, directory, ENGINE_TAG)

    def load(self, directory: str, tags: dict) -> None:
        load_engine_checkpoint(self.engine, directory, tags[ENGINE_TAG], self.weight_decays)

    def export(self, checkpoint_dir: str, out_dir: str) -> str:
        """Rank 0: the consolidated fp32 rqtransformer.pt that rqscale.sample reads."""
        model = plain_model(self.cfg, fp32_state_dict_from_checkpoint(checkpoint_dir, ENGINE_TAG))
        return save_consolidated(os.path.join(out_dir, "rqtransformer.pt"), self.cfg, self.task.rqvae, model)

    def picture(self, path: str) -> Optional[str]:
        """A collective under ZeRO-3 (gathering the weights); rank 0 samples and writes the grid."""
        state = consolidated_state_dict(self.engine)
        if state is None:
            return None
        task = stage2_task(self.cfg, self.task.rqvae)
        task.model.load_state_dict(state)
        return run_picture(task.to(next(self.task.rqvae.parameters()).device), self.cfg, path)


def plain_model(cfg: Config, state: dict) -> RQTransformer:
    r = cfg.rqvae
    model = build_stage2_model(cfg.stage2.model, r.code_shape, r.num_codes, r.code_dim)
    model.load_state_dict(state)
    return model
