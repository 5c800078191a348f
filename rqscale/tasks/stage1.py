"""Stage 1 as a task: RQ-VAE (or DQ-VAE) + its losses -> dicts of named losses (what an engine wraps).

Generator objective (Sec. 3.1.3, A.3, ref):
  L = MSE(X, X^) + beta * L_commit + w_lpips * LPIPS(X, X^) + lambda * w_disc * L_G(D(X^))
with lambda VQGAN's adaptive weight on the decoder's last conv, active from `disc_start`.
Discriminator objective: w_disc * hinge loss on real vs detached reconstructions (ref scales it too).
The DQ-VAE (rqvae.kind=dq) adds its budget loss and reconstructs under L1, as its reference does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rqscale.config.schema import Config
from rqscale.config.validate import default_lpips_backbone
from rqscale.losses import D_LOSSES, G_LOSSES, PatchDiscriminator, adaptive_weight, build_lpips, perceptual_loss
from rqscale.models import DQVAEOutput, build_stage1_model
from rqscale.models.dqvae import codes_per_image


class Stage1Task(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.loss_cfg = cfg.stage1.loss
        self.rqvae = build_stage1_model(cfg.rqvae)  # rqvae.kind: the RQ-VAE or the DQ-VAE
        self.discriminator = PatchDiscriminator(cfg.rqvae.in_channels, cfg.stage1.loss.disc_ndf, cfg.stage1.loss.disc_layers)
        self.lpips = None
        if cfg.stage1.loss.lpips_weight > 0:
            path = cfg.stage1.loss.lpips_backbone or default_lpips_backbone()
            self.lpips = build_lpips(path, random_backbone=cfg.stage1.loss.lpips_random_backbone)
        self.d_loss_fn = D_LOSSES[cfg.stage1.loss.disc_loss]
        self.g_loss_fn = G_LOSSES[cfg.stage1.loss.gen_loss]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()  # a fixed metric: no dropout in its heads (ref keeps it in eval mode)
        return self

    def disc_active(self, step: int) -> bool:
        return self.loss_cfg.disc_weight > 0 and step >= self.loss_cfg.disc_start

    def generator_losses(self, images: torch.Tensor, step: int) -> dict:
        """Named generator losses; 'total' is what to backpropagate. 'reconstruction' is detached."""
        out = self.rqvae(images)
        dq = isinstance(out, DQVAEOutput)
        # Eq. 6 (ref: mean squared error); the DQ-VAE's reference trains on the absolute error (taming's L1)
        recon = (F.l1_loss if dq else F.mse_loss)(out.reconstruction.float(), images.float())
        lpips = self._lpips(images, out.reconstruction)
        losses = {"recon": recon.detach(), "commit": out.commitment_loss.detach(), "lpips": lpips.detach()}
        nll = recon + self.loss_cfg.lpips_weight * lpips
        total = nll + self.loss_cfg.beta * out.commitment_loss
        if dq:  # the budget that steers the share of fine regions to rqvae.dq.fine_ratio
            total = total + out.budget_loss
            losses.update(budget=out.budget_loss.detach(), fine_share=out.fine_share,
                          codes_per_image=codes_per_image(out.grain).float().mean())
        if self.disc_active(step):
            g_loss = self.g_loss_fn(self.discriminator(out.reconstruction))
            g_weight = adaptive_weight(nll, g_loss, self.rqvae.last_layer)
            if self.loss_cfg.disc_weight_mode == "cap":  # the DQ-VAE ref: the weight itself capped at disc_weight
                g_weight = g_weight.clamp(max=self.loss_cfg.disc_weight)
            else:  # the RQ-VAE ref: scaled by it
                g_weight = g_weight * self.loss_cfg.disc_weight
            total = total + g_weight * g_loss
            losses.update(gen=g_loss.detach(), g_weight=g_weight)
        losses.update(total=total, reconstruction=out.reconstruction.detach(), codes=out.codes)
        return losses

    def _lpips(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        if self.lpips is None:
            return recon.new_zeros(())
        return perceptual_loss(self.lpips, images, recon)

    def discriminator_losses(self, images: torch.Tensor, reconstructions: torch.Tensor) -> dict:
        logits_real = self.discriminator(images.detach())
        logits_fake = self.discriminator(reconstructions.detach())
        loss = self.d_loss_fn(logits_real, logits_fake)
        return {"total": self.loss_cfg.disc_weight * loss, "loss": loss.detach(), "logits_real": logits_real.mean().detach(), "logits_fake": logits_fake.mean().detach()}

    def generator_parameters(self):
        return list(self.rqvae.parameters())

    def discriminator_parameters(self):
        return list(self.discriminator.parameters())
