"""DQ-VAE (Huang et al., CVPR 2023, "Towards Accurate Image Coding: Improved Autoregressive Image
Generation with Dynamic Vector Quantization"): a VQGAN encoder with two output grains, a router that
codes each 16 x 16-pixel region either once (coarse, F = 16) or as 2 x 2 codes (fine, F = 8), one
vector quantizer, and a decoder from the assembled 32 x 32 (F = 8) map. Architecture only.

Facts from the supplement (S) and the authors' code (R: CrossmodalGroup/DynamicVectorQuantization,
modules/dynamic_modules/{EncoderDual,RouterDual,DecoderPositional,budget}.py):
  encoder   the VQGAN trunk; the fine tap is the F = 8 level's output before its downsample, the coarse
            tap the last level's (F = 16); each tap has its own mid block, GroupNorm, SiLU, 3x3 conv (S, R)
  router    GroupNorm(coarse) and 2x2-average-pooled GroupNorm(fine), concatenated, Linear-SiLU-Linear to
            2 logits per region (0 coarse, 1 fine); hard Gumbel-softmax with straight-through gradient
            when training, argmax in evaluation (S, R). Or (rqvae.dq.router=entropy, R's later "better
            version"): fine where the region's pixel entropy exceeds a threshold fixed from the training set
  assembly  coarse features repeated 2x2 where the gate says coarse, fine ones elsewhere, multiplied by
            the chosen gate (1 forward; the router's gradient path to the reconstruction) (R)
  budget    lambda (fine share of the batch's regions - r_f)^2 (S; R doubles it, see DQConfig)
  quantizer one shared codebook for all 1024 positions; a coarse region's 4 copies get one code and weigh
            1/4 each in the commitment loss (R); the EMA counts every copy, as R's does
  decoder   VQGAN decoder from the 32 x 32 latent, a Fourier + learned row/column position embedding
            added first (R "fourier+learned"; the grain map itself is not an input)
Codes per image: 256 + 3 x (fine regions), 640 on average at r_f = 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from rqscale.config.schema import RQVAEConfig
from rqscale.config.validate import check_dq_shape
from rqscale.models.image_entropy import region_entropy
from rqscale.models.layers import group_norm
from rqscale.models.rqvae import CodeDecoding, Decoder, EncoderTrunk, _mid
from rqscale.quantizer import ResidualQuantizer


class DualGrainEncoder(EncoderTrunk):
    """The VQGAN trunk with a fine (F = 8: the second-last level, before its downsample) and a coarse
    (F = 16: the last level) output, each through its own head."""

    def __init__(self, cfg: RQVAEConfig):
        super().__init__(cfg)
        self.fine_head = _tap_head(self.channels[-2], cfg)
        self.coarse_head = _tap_head(self.channels[-1], cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fine (B, z, 2h, 2w), coarse (B, z, h, w)) features."""
        *_, fine, coarse = self.level_outputs(x)
        return self.fine_head(fine), self.coarse_head(coarse)


def _tap_head(channels: int, cfg: RQVAEConfig) -> nn.Sequential:
    return nn.Sequential(_mid(channels, cfg.dropout), group_norm(channels), nn.SiLU(), nn.Conv2d(channels, cfg.z_channels, 3, padding=1))


class GrainRouter(nn.Module):
    """Two logits (coarse, fine) per coarse region from both grains' features (R: DualGrainFeatureRouter)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm_fine, self.norm_coarse = group_norm(channels), group_norm(channels)
        self.mlp = nn.Sequential(nn.Linear(2 * channels, 2 * channels), nn.SiLU(), nn.Linear(2 * channels, 2))

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 2) logits."""
        pooled = F.avg_pool2d(self.norm_fine(fine), 2)
        both = torch.cat([self.norm_coarse(coarse), pooled], dim=1).permute(0, 2, 3, 1)
        return self.mlp(both)


class EntropyRouter(nn.Module):
    """A region is fine where its pixel entropy (rqscale/models/image_entropy.py) exceeds a threshold fixed from
    the training set: no parameters, no gradient, the same in training and evaluation (R: RouterDual.py's
    DualGrainFixedEntropyRouter with update_router False). The threshold is a buffer, so the exported weights
    carry it to stage 2; it is held in integer micro-nats because engines cast floating buffers to bf16."""

    def __init__(self, threshold: float | None):
        super().__init__()
        micro = -1 if threshold is None else round(threshold * 1e6)  # -1: unset, a loaded state dict fills it
        self.register_buffer("threshold_micro_nats", torch.tensor(micro, dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 2) one-hot choice (0 coarse, 1 fine)."""
        fine = region_entropy(images) * 1e6 > self.threshold_micro_nats
        return F.one_hot(fine.long(), 2).to(images.dtype)


def gate(logits: torch.Tensor, training: bool, tau: float) -> torch.Tensor:
    """(B, h, w, 2) one-hot choice: hard Gumbel-softmax with a straight-through gradient when training,
    argmax otherwise (R: EncoderDual.py)."""
    if training:
        return F.gumbel_softmax(logits.float(), tau=tau, hard=True, dim=-1)
    return F.one_hot(logits.argmax(dim=-1), 2).to(logits.dtype)


def assemble(fine: torch.Tensor, coarse: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """The 32 x 32 map (B, z, 2h, 2w): each region's coarse vector repeated 2 x 2, or its 4 fine vectors,
    scaled by the chosen gate value (1 in the forward pass; the router's gradient path). Only the chosen
    branch is scaled, so only the chosen gate gets a gradient from the features (R: EncoderDual.py's
    gate.max); scaling both branches by their gates would also pass the unchosen one's."""
    up = lambda t: t.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # noqa: E731
    fine_chosen = up((choice[..., 1] > 0.5).unsqueeze(1))
    picked = torch.where(fine_chosen, fine, up(coarse))
    return picked * up(choice.max(dim=-1).values.unsqueeze(1)).to(fine.dtype)


def budget_loss(choice: torch.Tensor, fine_ratio: float, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda (fine share - r_f)^2, the fine share) over the batch's regions (S; R budget.py)."""
    share = choice[..., 1].float().mean()
    return weight * (share - fine_ratio) ** 2, share.detach()


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, bound: float = 2.0) -> torch.Tensor:
    """N(0, 1) truncated to [-bound, bound] by the inverse CDF (nn.init.trunc_normal_'s method), with the
    CDF bounds computed on the host: torch's version reads them back from a tensor, which fake tensors
    (the FLOP counter, rqscale/train/flops.py) cannot do."""
    edge = math.erf(bound / math.sqrt(2))  # 2 Phi(bound) - 1
    return tensor.uniform_(-edge, edge).erfinv_().mul_(math.sqrt(2)).clamp_(-bound, bound)


class PositionEmbedding2d(nn.Module):
    """Fourier features of the (row, column) coordinates in [-1, 1] plus learned row and column vectors
    (R: DecoderPositional's "fourier+learned")."""

    def __init__(self, size: int, channels: int, init_scale: float = 1.0):
        super().__init__()
        self.fourier = nn.Conv2d(2, channels, 1)
        bound = math.sqrt(9 / 2)  # R: fourier_embedding.py's init range
        nn.init.uniform_(self.fourier.weight, -bound, bound)
        self.rows, self.cols = nn.Parameter(torch.empty(size, channels)), nn.Parameter(torch.empty(size, channels))
        truncated_normal_(self.rows)  # R: tools.py, trunc_normal_ with std 1
        truncated_normal_(self.cols)
        if init_scale != 1.0:  # rqvae.dq.position_init_scale: every initial value scaled (1.0: R's init)
            with torch.no_grad():
                for p in (self.fourier.weight, self.fourier.bias, self.rows, self.cols):
                    p.mul_(init_scale)
        axis = torch.linspace(-1, 1, size)
        self.register_buffer("grid", torch.stack(torch.meshgrid(axis, axis, indexing="ij")).unsqueeze(0), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        learned = (self.rows[:, None, :] + self.cols[None, :, :]).permute(2, 0, 1).unsqueeze(0)
        return z + torch.sin(self.fourier(self.grid.to(z.dtype))) + learned.to(z.dtype)


@dataclass
class DQVAEOutput:
    reconstruction: torch.Tensor
    codes: torch.Tensor  # (B, 2h, 2w, 1): a coarse region's 4 positions hold its one code
    grain: torch.Tensor  # (B, h, w) long: 1 where the region is coded finely
    commitment_loss: torch.Tensor  # coarse copies weighted rqvae.dq.coarse_commit_weight
    budget_loss: torch.Tensor
    fine_share: torch.Tensor  # detached: the batch's share of fine regions


class DQVAE(CodeDecoding, nn.Module):  # decode_codes (D = 1), last_layer: as the RQ-VAE
    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        check_dq_shape(cfg)
        self.cfg, dq = cfg, cfg.dq
        self.encoder = DualGrainEncoder(cfg)
        self.router = EntropyRouter(dq.entropy_threshold) if dq.router == "entropy" else GrainRouter(cfg.z_channels)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)
        self.quantizer = ResidualQuantizer(cfg.num_codes, cfg.code_dim, 1, decay=cfg.ema_decay, restart_unused=cfg.restart_unused)
        self.position = PositionEmbedding2d(cfg.resolution // 8, cfg.z_channels, dq.position_init_scale)
        self.decoder = Decoder(replace(cfg, ch_mult=dq.decoder_ch_mult, attn_resolutions=dq.decoder_attn_resolutions))

    def routed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the assembled latent, channels-last (B, 2h, 2w, n_z); the gate (B, h, w, 2))."""
        fine, coarse = self.encoder(images)
        if self.cfg.dq.router == "entropy":
            choice = self.router(images).to(fine.dtype)
        else:
            choice = gate(self.router(fine, coarse), self.training, self.cfg.dq.gumbel_tau)
        z = self.quant_conv(assemble(fine, coarse, choice))
        return z.permute(0, 2, 3, 1).contiguous(), choice

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """The assembled, quantizer-ready latent, channels-last (as RQVAE.latents)."""
        return self.routed(images)[0]

    def decode_latents(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.position(self.post_quant_conv(z_hat.permute(0, 3, 1, 2).contiguous())))

    def forward(self, images: torch.Tensor) -> DQVAEOutput:
        z, choice = self.routed(images)
        q = self.quantizer(z)
        copy_weight = torch.where(_fine_positions(choice), 1.0, self.cfg.dq.coarse_commit_weight)
        commitment = (copy_weight.unsqueeze(-1) * (z.float() - q.partial_sums[-1]).pow(2)).mean()
        # The entropy router has nothing to train: no budget loss (R's entropy config leaves it out).
        weight = 0.0 if self.cfg.dq.router == "entropy" else self.cfg.dq.budget_weight
        budget, share = budget_loss(choice, self.cfg.dq.fine_ratio, weight)
        return DQVAEOutput(self.decode_latents(q.z_q), q.codes, choice[..., 1].long().detach(), commitment, budget, share)

    @torch.no_grad()
    def encode_with_grain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (B, 2h, 2w, 1), grain (B, h, w) long, 1 = fine) with the router's argmax (in eval mode)."""
        z, choice = self.routed(images)
        return self.quantizer.encode(z), choice[..., 1].long()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes (B, 2h, 2w, 1), as RQVAE.encode (a coarse region's 4 positions hold its one code)."""
        return self.encode_with_grain(images)[0]


def _fine_positions(choice: torch.Tensor) -> torch.Tensor:
    """(B, 2h, 2w) bool: the 32 x 32 positions inside fine regions."""
    fine = choice[..., 1] > 0.5
    return fine.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def codes_per_image(grain: torch.Tensor) -> torch.Tensor:
    """(B,) how many codes each image's sequence holds: one per coarse region, four per fine one."""
    regions = grain.flatten(1)
    return regions.shape[1] + 3 * regions.sum(dim=1)
