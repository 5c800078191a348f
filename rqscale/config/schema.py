"""Typed configuration schema.

Every default here is the paper's or the reference implementation's value for the ImageNet
RQ-VAE (stage 1); YAML files under configs/ hold only the differences. Sources are cited
per field: "A.3" is Appendix A.3 of Lee et al. (CVPR 2022), "ref" the authors' public code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RunConfig:
    name: str = "rqscale"
    output_dir: str = "runs"  # a run writes to <output_dir>/<name>/
    seed: int = 0
    init_from: Optional[str] = None  # RQ-VAE state dict to start from (fine-tuning, A.3 LSUN)


@dataclass
class RQVAEConfig:
    """VQGAN-style encoder/decoder around a residual quantizer (A.1, ref)."""

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: List[int] = field(default_factory=lambda: [1, 1, 2, 2, 4, 4])  # A.1: extra 8x8 level
    encoder_res_blocks: int = 2  # ref
    decoder_res_blocks: int = 3  # ref: VQGAN decoder uses num_res_blocks + 1
    attn_resolutions: List[int] = field(default_factory=lambda: [8])  # ref (16 for FFHQ)
    dropout: float = 0.0  # A.3: no dropout
    z_channels: int = 256
    code_shape: List[int] = field(default_factory=lambda: [8, 8, 4])  # H x W x D, Sec. 3.1.3
    num_codes: int = 16384  # K, Sec. 4
    code_dim: int = 256  # n_z, ref
    shared_codebook: bool = True  # Sec. 3.1.2; False = App. C.3 variant
    ema_decay: float = 0.99  # ref
    restart_unused: bool = True  # A.3: random restart of unused codes (JukeBox)


@dataclass
class Stage1LossConfig:
    beta: float = 0.25  # commitment weight, Sec. 3.1.3 / ref
    lpips_weight: float = 1.0  # A.3
    # torchvision VGG-16 state dict used as LPIPS backbone; None = torch hub cache file.
    lpips_backbone: Optional[str] = None
    lpips_random_backbone: bool = False  # tests only: random VGG features
    disc_weight: float = 0.75  # A.3
    disc_start: int = 0  # ref in256 config: discriminator active from step 0
    disc_layers: int = 2  # ref
    disc_ndf: int = 64  # ref
    disc_loss: str = "hinge"  # ref
    gen_loss: str = "vanilla"  # ref: softplus(-logits_fake)


@dataclass
class OptimConfig:
    name: str = "adam"  # A.3: Adam for RQ-VAE
    lr: float = 4.0e-5  # A.3
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])  # A.3
    eps: float = 1.0e-8
    weight_decay: float = 0.0  # A.3: no weight decay
    warmup_steps: int = 5005  # A.3: 0.5 epoch of 1,281,167 images at batch 128
    schedule: str = "constant"  # A.3: no learning-rate decay for RQ-VAE
    grad_clip: float = 0.0  # 0 disables; A.3 names none for stage 1
    disc_lr: Optional[float] = None  # None = same as lr (ref)


@dataclass
class Stage1Config:
    """The RQ-VAE recipe: losses and optimizer (A.3)."""

    loss: Stage1LossConfig = field(default_factory=Stage1LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class DataConfig:
    kind: str = "bundled"  # bundled: real images shipped in scikit-learn / scikit-image; webdataset: shards
    bundled_set: str = "photos"  # photos | digits
    num_samples: int = 2048  # crops drawn from the bundled images
    shards: str = ""  # webdataset shard spec (local or s3://)
    loader_workers: int = 0


@dataclass
class TrainConfig:
    global_batch: int = 128  # A.3 (ImageNet RQ-VAE)
    micro_batch: int = 128
    grad_accum: int = 1
    num_workers: int = 1  # data-parallel ranks
    max_steps: int = 100_092  # A.3: 10 epochs of ImageNet at batch 128
    log_every: int = 50
    sample_every: int = 0  # 0: only at the end
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class Config:
    stage: str = "stage1"
    run: RunConfig = field(default_factory=RunConfig)
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
