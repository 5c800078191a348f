"""Stage 1 under DeepSpeed: the RQ-VAE (generator) and the PatchGAN discriminator in two engines,
each with its own Adam and schedule (A.3), ZeRO-1 by default (validate.py says why not 2 or 3).

bf16 runs as autocast around the losses rather than DeepSpeed's bf16 mode: DeepSpeed would convert
every buffer to bf16, and the codebook's EMA (decay 0.99) must accumulate in fp32; the quantizer
turns autocast off for itself (quantizer/residual.py). LPIPS is a fixed metric outside both engines.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Sequence

import torch

from rqscale.config import Config
from rqscale.engine import EngineModule, build_engine, deepspeed_config, fp32_state_dict_from_checkpoint
from rqscale.engine import load_engine_checkpoint, save_engine_checkpoint
from rqscale.engine.precision import with_resolved_precision
from rqscale.models import build_stage1_model
from rqscale.quantizer import code_histogram
from rqscale.tasks import Stage1Task
from rqscale.train.engine_step import engine_step
from rqscale.train.optim import build_optimizer, build_scheduler
from rqscale.train.stage1 import grain_picture, load_init_weights, reconstruction_picture
from rqscale.utils.collectives import DeviceCollectives

GENERATOR, DISCRIMINATOR = "generator", "discriminator"


def code_statistics(codes: torch.Tensor, num_codes: int) -> dict:
    """Share of the codebook used in a batch, and the perplexity exp(H) of its code histogram, as
    device tensors (xlogy: 0 log 0 = 0 without selecting the used codes, which would sync)."""
    counts = code_histogram(codes, num_codes)
    p = counts / counts.sum()
    entropy = -torch.special.xlogy(p, p).sum()
    return {"code_usage": (counts > 0).float().mean(), "code_perplexity": entropy.exp()}


class Stage1Engines:
    tags = (GENERATOR, DISCRIMINATOR)

    def __init__(self, cfg: Config, world_size: int, device: torch.device, universal: bool = False):
        cfg = with_resolved_precision(cfg, device)  # engine.precision=auto: bf16 or fp32 for this device
        self.cfg, self.device = cfg, device
        self.collectives = DeviceCollectives(device)
        self.task = Stage1Task(cfg)
        if cfg.run.init_from:
            load_init_weights(self.task.rqvae, cfg.run.init_from, "run.init_from")
        self.task.rqvae.quantizer.collective = self.collectives  # codebook EMA statistics and restarts
        self.task.to(device)
        o = cfg.stage1.optim
        self.generator, self.opt_g, self.sched_g = self._engine(self.task.rqvae, self._generator_losses, o.lr, world_size, universal)
        self.discriminator, self.opt_d, self.sched_d = self._engine(self.task.discriminator, self._discriminator_losses, o.disc_lr, world_size, universal)
        self._step = 0

    def _engine(self, net, objective, lr: float, world_size: int, universal: bool) -> tuple:
        """(engine, client optimizer, scheduler) for one network."""
        o = self.cfg.stage1.optim
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, o, lr=lr)
        scheduler = build_scheduler(optimizer, o, self.cfg.train.max_steps)
        config = deepspeed_config(self.cfg, world_size, o.grad_clip)
        config["bf16"] = {"enabled": False}
        return build_engine(EngineModule(net, objective), params, optimizer, scheduler, config, universal), optimizer, scheduler

    def _autocast(self):
        if self.cfg.engine.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _generator_losses(self, images: torch.Tensor) -> dict:
        with self._autocast():
            losses = self.task.generator_losses(images, self._step)
        self._recons.append(losses.pop("reconstruction"))
        losses.update(code_statistics(losses.pop("codes"), self.task.rqvae.cfg.num_codes))
        return losses

    def _discriminator_losses(self, images: torch.Tensor, recon: torch.Tensor) -> dict:
        with self._autocast():
            return self.task.discriminator_losses(images, recon)

    def step(self, micro_batches: Sequence[dict], step: int) -> tuple:
        """(metrics as device tensors, taken: 0-dim device flag, 0.0 when the step was skipped)."""
        self.task.train()
        self._step, self._recons, metrics = step, [], {}
        images = [b["images"] for b in micro_batches]
        self.task.discriminator.requires_grad_(False)  # the generator's loss must not leave gradients in D
        try:
            taken = engine_step(self.generator, self.opt_g, images, self.generator, metrics, self.collectives, prefix="g/")
        finally:
            self.task.discriminator.requires_grad_(True)
        metrics["g/grad_norm"] = self.generator.get_global_grad_norm()
        if self.task.disc_active(step):  # a skipped generator step skips D's too (its flag is folded in)
            taken = engine_step(self.discriminator, self.opt_d, list(zip(images, self._recons)), lambda pair: self.discriminator(*pair),
                                metrics, self.collectives, prefix="d/", finite_so_far=taken)
        metrics["lr"] = self.sched_g.get_last_lr()[0]
        metrics["loss"] = metrics["g/total"]
        return metrics, taken

    def on_sync(self) -> None:
        """At a logging/checkpoint step (the host may read the device): plan codebook restarts."""
        self.task.rqvae.quantizer.refresh_restart_budgets()

    def save(self, directory: str) -> None:
        save_engine_checkpoint(self.generator, directory, GENERATOR)
        save_engine_checkpoint(self.discriminator, directory, DISCRIMINATOR)

    def load(self, directory: str, tags: dict) -> None:
        decay = [self.cfg.stage1.optim.weight_decay]
        load_engine_checkpoint(self.generator, directory, tags[GENERATOR], decay)
        load_engine_checkpoint(self.discriminator, directory, tags[DISCRIMINATOR], decay)

    def export(self, checkpoint_dir: str, out_dir: str) -> str:
        """Rank 0: rqvae.pt (the RQ-VAE state dict stage 2 reads) from the checkpoint's fp32 weights."""
        return export_stage1(self.cfg, checkpoint_dir, os.path.join(out_dir, "rqvae.pt"))

    def picture(self, path: str) -> Optional[str]:
        import torch.distributed as dist

        if dist.get_rank() != 0:
            return None
        held_out = self.held_out_images()
        if self.cfg.rqvae.kind == "dq":
            return grain_picture(self.task.rqvae, held_out[:8], path)
        return reconstruction_picture(self.task.rqvae, held_out[:8], path)

    def held_out_images(self) -> torch.Tensor:
        from rqscale.data.pipeline import eval_images

        return eval_images(self.cfg).to(self.device)


def export_stage1(cfg: Config, checkpoint_dir: str, path: str) -> str:
    model = build_stage1_model(cfg.rqvae)
    model.load_state_dict(fp32_state_dict_from_checkpoint(checkpoint_dir, GENERATOR))
    tmp = path + ".tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path
