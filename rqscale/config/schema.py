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
    output_dir: str = "runs"  # storage: a local directory or s3://bucket/prefix; a run lives in <output_dir>/<name>/
    seed: int = 0
    # Weights to start from (fine-tuning): stage 1, an RQ-VAE state dict (rqvae.pt; A.3 LSUN); stage 2, a
    # consolidated rqtransformer.pt (a stage-2 run's, or python -m rqscale.convert's)
    init_from: Optional[str] = None
    verbose: bool = False  # true: the terminal also shows Ray's, DeepSpeed's and torch's own output (rqscale/launch/console.py)


@dataclass
class DQConfig:
    """Dynamic grained coding of the DQ-VAE (Huang et al., CVPR 2023; rqscale/models/dqvae.py). Values from
    the supplement (S) and the authors' code (R: CrossmodalGroup/DynamicVectorQuantization, learned-router
    config dqvae-dual-r-05_imagenet.yml)."""

    fine_ratio: float = 0.5  # r_f, the budget's target share of fine regions (S, R target_ratio)
    budget_weight: float = 10.0  # lambda of the budget loss (S Table 1: 10 best). R's code adds its loss twice
    # (budget.py), an effective 20; rqscale follows the paper's lambda.
    gumbel_tau: float = 1.0  # R: F.gumbel_softmax's default
    coarse_commit_weight: float = 0.25  # R: each of a coarse region's 4 copies weighs 1/4 in the commitment loss
    decoder_ch_mult: List[int] = field(default_factory=lambda: [1, 1, 2, 2])  # R: decoder from the 32 x 32 (F = 8) latent
    decoder_attn_resolutions: List[int] = field(default_factory=lambda: [32])  # R: attention at 32 x 32 only
    # Scales the decoder's position embedding at initialisation (1.0: R's init, of std ~1.4). The debug configs use
    # 0.1: at their size the embedding drowned the code signal, and the decoder sat on one mean picture for 150+ steps.
    position_init_scale: float = 1.0
    # Who picks each region's grain. "feature": the paper's learned router on the encoder's features, trained through
    # hard Gumbel-softmax and the budget loss (S). "entropy": the authors' later "better version" (R README; their
    # one released DQ-VAE and both stage-2 configs): a region is fine where its pixel entropy exceeds a threshold
    # fixed from the training set, no router parameters and no budget loss (R dqvae-entropy-dual-r05_imagenet.yml).
    router: str = "feature"
    # The entropy router's threshold in nats: the training set's (1 - fine_ratio) quantile of region entropy, as
    # python -m data_prep.entropy --config CONFIG prints it (R: scripts/tools/calculate_entropy_thresholds.py).
    entropy_threshold: Optional[float] = None


@dataclass
class RQVAEConfig:
    """VQGAN-style encoder/decoder around a residual quantizer (A.1, ref)."""

    kind: str = "rq"  # rq: RQ-VAE (CVPR 2022); dq: DQ-VAE, dynamic grains (CVPR 2023, rqscale/models/dqvae.py)
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
    dq: DQConfig = field(default_factory=DQConfig)  # the DQ-VAE's settings (rqscale/models/dqvae.py)


@dataclass
class Stage1LossConfig:
    beta: float = 0.25  # commitment weight, Sec. 3.1.3 / ref
    lpips_weight: float = 1.0  # A.3
    # torchvision VGG-16 state dict used as LPIPS backbone; None = torch hub cache file.
    lpips_backbone: Optional[str] = None
    lpips_random_backbone: bool = False  # tests only: random VGG features
    disc_weight: float = 0.75  # A.3
    # scale: the generator loss weighs adaptive_weight x disc_weight (the RQ-VAE ref); cap: min(adaptive_weight,
    # disc_weight) (the DQ-VAE ref, its VQGAN loss with a 0.75 ceiling on the adaptive weight)
    disc_weight_mode: str = "scale"
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
class RQTransformerConfig:
    """Spatial + depth transformers (Sec. 3.2.2, A.2). Defaults: the ImageNet 821M row of Table A.1."""

    kind: str = "ar"  # ar: RQ-Transformer (CVPR 2022); contextual: Contextual RQ-Transformer (NeurIPS 2022);
    # dq: DQ-Transformer (CVPR 2023) on DQ-VAE codes, spatial_layers its Position- and depth_layers its Content-Transformer
    embed_dim: int = 1536  # n_e
    num_heads: int = 24
    spatial_layers: int = 24  # N_spatial
    depth_layers: int = 4  # N_depth
    mlp_ratio: int = 4  # ref: GELU MLP 4x
    embd_dropout: float = 0.1  # A.3: dropout 0.1 in every block (0.3 for 3.8B); ref applies it to
    resid_dropout: float = 0.1  # the embeddings, attention weights and residual branches alike
    attn_dropout: float = 0.1
    condition: str = "class"  # none | class | text
    num_classes: int = 1000
    text_vocab: int = 16384  # BPE vocabulary for CC-3M captions (ref)
    text_length: int = 32  # A.2: 32 text tokens, T = 32 + 64 - 1 = 95
    cond_dropout: float = 0.0  # > 0 learns a null condition for classifier-free guidance (paper: 0)
    activation_checkpointing: bool = False
    max_length: int = 2048  # dq only: rows of the absolute position table (R: block_size); sequences reach 4 h w + 4


@dataclass
class Stage2LossConfig:
    temperature: float = 0.5  # tau of Eq. 15, Table A.1 (1.0 for FFHQ)
    soft_labels: bool = True  # Sec. 3.2.3, B.3: used together with stochastic codes
    stochastic_codes: bool = True
    text_weight: float = 0.1  # ref: CC-3M text next-token loss weight
    image_weight: float = 0.9


def _stage2_optim() -> OptimConfig:
    # A.3: AdamW, betas (0.9, 0.95), lr 5e-4 with cosine decay, weight decay 1e-4; grad clip 1.0 (ref).
    return OptimConfig(name="adamw", lr=5.0e-4, betas=[0.9, 0.95], weight_decay=1.0e-4, warmup_steps=0,
                       schedule="cosine", grad_clip=1.0)


@dataclass
class SamplingConfig:
    """How a run's sample picture is drawn, and the defaults `python -m rqscale.sample` takes for its
    checkpoint (its flags override them). Defaults: plain sampling, no filtering, no guidance."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off; else keep the k most likely codes (B.5)
    top_p: float = 1.0  # 1.0: off; else nucleus sampling (B.5)
    cfg_scale: float = 1.0  # 1.0: no classifier-free guidance (needs stage2.model.cond_dropout > 0)
    # Text models: the captions of the run picture's rows (up to 10); empty: the first 10 distinct captions
    # of the held-out data (the bundled sets: their class captions, in label order).
    captions: List[str] = field(default_factory=list)
    # Contextual models (Draft-and-Revise, Algorithm 2): T_draft groups drawn at temperature 1 without
    # guidance, then M revisions of T_revise groups with the temperature and cfg_scale above (supplement
    # A.4; defaults: ImageNet 821M, T_draft 64 from Sec. 4.1).
    draft_steps: int = 64
    revise_steps: int = 2
    revise_iterations: int = 2
    # The draft phase's own sampling (A.4: none of temperature, filtering or guidance) and how it picks each
    # step's positions: "random" (Eq. 12, the paper's choice), or by confidence as supplement Table 3
    # compares: "top-c" (MaskGIT's rule) or "top-c-50" (random among the more confident half).
    draft_temperature: float = 1.0
    draft_top_k: int = 0
    draft_top_p: float = 1.0
    draft_cfg_scale: float = 1.0
    draft_strategy: str = "random"


@dataclass
class Stage2Config:
    """The RQ-Transformer recipe (A.2, A.3), trained on codes of a frozen RQ-VAE."""

    model: RQTransformerConfig = field(default_factory=RQTransformerConfig)
    loss: Stage2LossConfig = field(default_factory=Stage2LossConfig)
    optim: OptimConfig = field(default_factory=_stage2_optim)
    rqvae_checkpoint: Optional[str] = None  # rqvae.pt written by a stage-1 run
    tokenizer: Optional[str] = None  # tokenizer.json for text conditioning
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class DataConfig:
    # bundled: real images shipped in scikit-learn / scikit-image; webdataset: data_prep shards.
    # None: derived, webdataset when data.shards is set, else bundled (load() writes the result back).
    kind: Optional[str] = None
    bundled_set: str = "photos"  # photos | digits
    num_samples: int = 2048  # crops drawn from the bundled images
    shards: str = ""  # data_prep manifest.json of the shards (local path or s3://)
    loader_workers: int = 0
    max_bad_samples: int = 100  # unreadable samples skipped before the run stops
    hflip: bool = True  # random horizontal flip of training images (A.3 / ref); off for digits, which mirroring changes


@dataclass
class TrainConfig:
    global_batch: int = 128  # A.3 (ImageNet RQ-VAE)
    micro_batch: int = 128
    # None: derived per world size, global_batch / (micro_batch x workers) (rqscale/config/derive.py), so
    # a run resubmitted on fewer workers needs only train.num_workers. Written out, it must match.
    grad_accum: Optional[int] = None
    num_workers: int = 1  # data-parallel ranks
    max_steps: int = 100_092  # A.3: 10 epochs of ImageNet at batch 128
    log_every: int = 50
    device: str = "auto"  # auto | cpu | cuda
    min_workers: int = 0  # > 0: elastic, Ray runs between min_workers and num_workers ranks
    max_failures: int = 3  # worker-group restarts Ray attempts before the run fails
    cpus_per_worker: int = 1
    peak_tflops: Optional[float] = None  # MFU denominator per worker; None: by GPU name, or measured on CPU (rqscale/utils/peak.py)
    picture_every: int = 0  # a PNG grid every N steps (0: at the end only)
    max_nonfinite_steps: int = 5  # consecutive non-finite losses skipped before the run aborts


@dataclass
class EngineConfig:
    """DeepSpeed settings. See rqscale/engine/ds_config.py for how each maps onto DeepSpeed's config."""

    zero_stage: int = -1  # -1: the stage's default (3 for stage 2; 1 for stage 1, see validate.py)
    precision: str = "bf16"  # bf16 (A.3 mixed precision) | fp32 | auto (bf16 where the hardware has it: rqscale/engine/precision.py)
    offload_optimizer: str = "none"  # none | cpu | nvme
    offload_params: str = "none"  # none | cpu | nvme (ZeRO-3 only)
    nvme_path: str = "/local_nvme"


@dataclass
class CheckpointConfig:
    every_steps: int = 1000  # and always at the end
    keep: int = 3  # complete checkpoints kept in storage


@dataclass
class Config:
    stage: str = "stage1"
    run: RunConfig = field(default_factory=RunConfig)
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
