"""Range and cross-field checks. Each failure raises ConfigError naming the key and the fix."""
from __future__ import annotations

import math
import os

from rqscale.config.derive import batch_plan, data_kind  # batch_plan: the loop and ds_config import it from here
from rqscale.config.load import ConfigError
from rqscale.config.schema import Config

STAGES = ("stage1", "stage2")
CONDITIONS = ("none", "class", "text")
STAGE1_KINDS = ("rq", "dq")  # rqscale.models.STAGE1_MODELS
STAGE2_KINDS = ("ar", "contextual", "dq")  # rqscale.models.STAGE2_MODELS
DQ_ROUTERS = ("feature", "entropy")  # rqscale/models/dqvae.py
DRAFT_STRATEGIES = ("random", "top-c", "top-c-50")  # rqscale.sampling.draft_revise
DATA_KINDS = ("bundled", "webdataset")
BUNDLED_SETS = ("photos", "digits")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
DISC_LOSSES = ("hinge", "vanilla")
GEN_LOSSES = ("vanilla", "hinge")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("bf16", "fp32", "auto")  # auto: rqscale/engine/precision.py
OFFLOADS = ("none", "cpu", "nvme")
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's published VGG-16 weights


def validate(cfg: Config, check_files: bool = True) -> None:
    """Raise ConfigError for the first problem. `check_files=False` skips weight-file checks (planning)."""
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_batch(cfg)
    _check_engine(cfg)
    _check_code_shape(cfg)
    _check_stage2(cfg)
    if check_files:
        _check_lpips_weights(cfg)
        _check_files(cfg)


def default_lpips_backbone() -> str:
    """Where torchvision itself would cache VGG-16: $TORCH_HOME/hub/checkpoints/."""
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    return os.path.join(torch_home, "hub", "checkpoints", VGG16_FILE)


def _choice(key: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(key, f"'{value}' is not one of {', '.join(allowed)}", f"set {key} to one of {', '.join(allowed)}")


def _check_choices(cfg: Config) -> None:
    _choice("stage", cfg.stage, STAGES)
    _choice("data.kind", data_kind(cfg), DATA_KINDS)
    _choice("data.bundled_set", cfg.data.bundled_set, BUNDLED_SETS)
    _choice("stage1.optim.name", cfg.stage1.optim.name, OPTIMIZERS)
    _choice("stage1.optim.schedule", cfg.stage1.optim.schedule, SCHEDULES)
    _choice("stage1.loss.disc_loss", cfg.stage1.loss.disc_loss, DISC_LOSSES)
    _choice("stage1.loss.gen_loss", cfg.stage1.loss.gen_loss, GEN_LOSSES)
    _choice("stage1.loss.disc_weight_mode", cfg.stage1.loss.disc_weight_mode, ("scale", "cap"))
    _choice("train.device", cfg.train.device, DEVICES)
    _choice("stage2.model.condition", cfg.stage2.model.condition, CONDITIONS)
    _choice("stage2.optim.name", cfg.stage2.optim.name, OPTIMIZERS)
    _choice("stage2.optim.schedule", cfg.stage2.optim.schedule, SCHEDULES)


def _positive(key: str, value, strict: bool = True) -> None:
    if value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise ConfigError(key, f"{value} is out of range (must be {bound})", f"set {key} {bound}")


def _check_ranges(cfg: Config) -> None:
    _check_rqvae_ranges(cfg.rqvae)
    for key in ("global_batch", "micro_batch", "num_workers", "max_steps", "log_every"):
        _positive(f"train.{key}", getattr(cfg.train, key))
    if cfg.train.grad_accum is not None:
        _positive("train.grad_accum", cfg.train.grad_accum)
    _positive("data.num_samples", cfg.data.num_samples)
    _positive("data.loader_workers", cfg.data.loader_workers, strict=False)
    _check_stage1_ranges(cfg)


def _check_rqvae_ranges(m) -> None:
    if m.kind not in STAGE1_KINDS:
        raise ConfigError("rqvae.kind", f"unknown stage-1 family '{m.kind}'", f"choose one of {', '.join(STAGE1_KINDS)}")
    for key in ("resolution", "in_channels", "ch", "z_channels", "num_codes", "code_dim", "encoder_res_blocks", "decoder_res_blocks"):
        _positive(f"rqvae.{key}", getattr(m, key))
    if not m.ch_mult or any(k < 1 for k in m.ch_mult):
        raise ConfigError("rqvae.ch_mult", f"{list(m.ch_mult)} needs positive multipliers", "write e.g. rqvae.ch_mult=[1,1,2,2,4,4]")
    if m.ch % 32 or any((m.ch * k) % 32 for k in m.ch_mult):
        raise ConfigError("rqvae.ch", f"channels {m.ch} x {list(m.ch_mult)} are not all multiples of 32", "GroupNorm(32) needs multiples of 32: pick ch a multiple of 32")
    if not 0.0 < m.ema_decay < 1.0:
        raise ConfigError("rqvae.ema_decay", f"{m.ema_decay} is outside (0, 1)", "use a decay in (0, 1); the paper uses 0.99")
    _fraction("rqvae.dropout", m.dropout)
    _check_dq_ranges(m.dq)


def _check_dq_ranges(dq) -> None:
    if not 0.0 < dq.fine_ratio < 1.0:
        raise ConfigError("rqvae.dq.fine_ratio", f"{dq.fine_ratio} is outside (0, 1)",
                          "give the share of regions coded finely, strictly between 0 and 1 (the paper uses 0.5)")
    _positive("rqvae.dq.gumbel_tau", dq.gumbel_tau)
    _positive("rqvae.dq.position_init_scale", dq.position_init_scale)
    _positive("rqvae.dq.budget_weight", dq.budget_weight, strict=False)
    if not 0.0 < dq.coarse_commit_weight <= 1.0:
        raise ConfigError("rqvae.dq.coarse_commit_weight", f"{dq.coarse_commit_weight} is outside (0, 1]",
                          "weigh each copy of a coarse region in (0, 1]: 0.25 counts the region once (the reference)")
    if dq.router not in DQ_ROUTERS:
        raise ConfigError("rqvae.dq.router", f"unknown router '{dq.router}'", f"use one of {', '.join(DQ_ROUTERS)}")
    if dq.entropy_threshold is not None and not 0.0 <= dq.entropy_threshold <= math.log(32):
        raise ConfigError("rqvae.dq.entropy_threshold", f"{dq.entropy_threshold} is outside [0, log 32] (a 32-bin entropy)",
                          "set the value python -m data_prep.entropy --config CONFIG prints")


def _check_stage1_ranges(cfg: Config) -> None:
    loss, o = cfg.stage1.loss, cfg.stage1.optim
    _check_optim("stage1.optim", o)
    if o.disc_lr is not None:
        _positive("stage1.optim.disc_lr", o.disc_lr)
    for key in ("beta", "lpips_weight", "disc_weight", "disc_start"):
        _positive(f"stage1.loss.{key}", getattr(loss, key), strict=False)
    _positive("stage1.loss.disc_layers", loss.disc_layers)
    _positive("stage1.loss.disc_ndf", loss.disc_ndf)
    dq = cfg.rqvae.dq
    if cfg.stage == "stage1" and cfg.rqvae.kind == "dq" and dq.router == "entropy" and dq.entropy_threshold is None:
        raise ConfigError("rqvae.dq.entropy_threshold", "the entropy router needs the training set's region-entropy "
                          f"threshold for fine_ratio {dq.fine_ratio}", "run python -m data_prep.entropy --config CONFIG "
                          "and set the rqvae.dq.entropy_threshold it prints")


def _check_optim(prefix: str, o) -> None:
    _positive(f"{prefix}.lr", o.lr)
    _positive(f"{prefix}.eps", o.eps)
    for key in ("warmup_steps", "weight_decay", "grad_clip"):
        _positive(f"{prefix}.{key}", getattr(o, key), strict=False)
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"{prefix}.betas", f"{list(o.betas)} is not two values in [0, 1)", f"write e.g. {prefix}.betas=[0.9,0.95]")


def _check_batch(cfg: Config) -> None:
    """Every world size Ray may pick must split the global batch whole (batch_plan names the fix);
    keys written out must agree with what it derives."""
    t = cfg.train
    if cfg.stage == "stage1" and t.grad_accum not in (None, 1):
        # The codebook EMA steps once per forward pass: with accumulation it would decay k times per
        # optimizer step and restart codes from single micro-batches, unlike the ref's one update per batch.
        raise ConfigError("train.grad_accum", f"{t.grad_accum} is not supported for stage 1 (its codebook EMA updates once per micro-batch)",
                          "drop train.grad_accum and raise train.micro_batch or train.num_workers instead")
    if t.min_workers > t.num_workers:
        raise ConfigError("train.min_workers", f"{t.min_workers} > train.num_workers {t.num_workers}",
                          "set train.min_workers <= train.num_workers (num_workers is the elastic maximum)")
    micro, accum = batch_plan(cfg, t.num_workers)
    _check_written_batch(cfg, micro, accum)
    for world in range(t.min_workers or t.num_workers, t.num_workers):  # the elastic sizes below the maximum
        batch_plan(cfg, world)


def _check_written_batch(cfg: Config, micro: int, accum: int) -> None:
    t = cfg.train
    if cfg.stage == "stage1" and t.micro_batch != micro:
        raise ConfigError("train.micro_batch", f"stage 1 cannot accumulate, so micro_batch x num_workers must be global_batch {t.global_batch}, "
                          f"got micro_batch {t.micro_batch} x {t.num_workers} workers", f"set train.micro_batch={micro}")
    if t.grad_accum is not None and t.grad_accum != accum:
        raise ConfigError("train.grad_accum", f"micro_batch {t.micro_batch} x grad_accum {t.grad_accum} x num_workers {t.num_workers} "
                          f"= {t.micro_batch * t.grad_accum * t.num_workers}, not global_batch {t.global_batch}",
                          f"drop train.grad_accum (it is derived: {accum} here) or set train.grad_accum={accum}")


def zero_stage(cfg: Config) -> int:
    """The configured ZeRO stage, or the stage's default: 3 for the RQ-Transformer (the design
    card), 1 for the RQ-VAE (see _check_engine)."""
    if cfg.engine.zero_stage >= 0:
        return cfg.engine.zero_stage
    return 3 if cfg.stage == "stage2" else 1


def _check_engine(cfg: Config) -> None:
    e, t = cfg.engine, cfg.train
    _choice("engine.precision", e.precision, PRECISIONS)
    _choice("engine.offload_optimizer", e.offload_optimizer, OFFLOADS)
    _choice("engine.offload_params", e.offload_params, OFFLOADS)
    if e.zero_stage not in (-1, 0, 1, 2, 3):
        raise ConfigError("engine.zero_stage", f"{e.zero_stage} is not a ZeRO stage", "set engine.zero_stage to 0, 1, 2 or 3 (or -1 for the default)")
    stage = zero_stage(cfg)
    if cfg.stage == "stage1" and stage > 1:
        # Stage 1 needs whole parameters and gradients on every rank: the adaptive GAN weight takes
        # autograd.grad of two losses w.r.t. the decoder's last conv (VQGAN), which ZeRO-2's gradient
        # hooks and ZeRO-3's partitioned weights break. The 104M RQ-VAE fits anyway; ZeRO-1 still
        # shards Adam's moments.
        raise ConfigError("engine.zero_stage", f"ZeRO-{stage} cannot train stage 1 (the adaptive GAN weight needs whole decoder weights and gradients)",
                          "use engine.zero_stage=1 (or 0) for stage 1")
    if e.offload_params != "none" and stage != 3:
        raise ConfigError("engine.offload_params", f"parameter offload needs ZeRO-3, not ZeRO-{stage}", "set engine.zero_stage=3 or engine.offload_params=none")
    if e.offload_optimizer != "none" and stage == 0:
        raise ConfigError("engine.offload_optimizer", "optimizer offload needs ZeRO-1 or higher", "set engine.zero_stage >= 1 or engine.offload_optimizer=none")
    for key in ("max_failures", "min_workers", "max_nonfinite_steps", "picture_every"):
        _positive(f"train.{key}", getattr(t, key), strict=False)
    for key, value in (("train.cpus_per_worker", t.cpus_per_worker), ("train.peak_tflops", t.peak_tflops),
                       ("checkpoint.every_steps", cfg.checkpoint.every_steps), ("checkpoint.keep", cfg.checkpoint.keep)):
        if value is not None:  # train.peak_tflops=None: resolved per worker (rqscale/utils/peak.py)
            _positive(key, value)


def check_dq_shape(m) -> None:
    """The DQ-VAE codes 16 x 16-pixel regions once or as 2 x 2 codes: its encoder ends at F = 16, and its
    code map is the F = 8 grid, one code deep (rqscale/models/dqvae.py)."""
    if m.resolution % 16:
        raise ConfigError("rqvae.resolution", f"{m.resolution} is not divisible by 16",
                          "the DQ-VAE codes 16 x 16-pixel regions: use a multiple of 16 (e.g. 256)")
    if 2 ** (len(m.ch_mult) - 1) != 16:
        raise ConfigError("rqvae.ch_mult", f"{list(m.ch_mult)} has {len(m.ch_mult) - 1} downsamplings, not 4",
                          "give 5 levels so the coarse grain is F = 16, e.g. [1,1,2,2,4] (the reference's)")
    fine = m.resolution // 8
    if list(m.code_shape) != [fine, fine, 1]:
        raise ConfigError("rqvae.code_shape", f"{list(m.code_shape)} is not the DQ-VAE's F = 8 code map",
                          f"set rqvae.code_shape=[{fine},{fine},1]")


def _check_code_shape(cfg: Config) -> None:
    m = cfg.rqvae
    if len(m.code_shape) != 3:
        raise ConfigError("rqvae.code_shape", f"{list(m.code_shape)} is not [H, W, D]", "write e.g. rqvae.code_shape=[8,8,4]")
    if not m.ch_mult:
        raise ConfigError("rqvae.ch_mult", "is empty", "give one multiplier per resolution level, e.g. [1,1,2,2,4,4]")
    if m.kind == "dq":
        check_dq_shape(m)
    else:
        _check_rq_shape(m)
    levels = {m.resolution // 2**i for i in range(len(m.ch_mult))}
    bad = [r for r in m.attn_resolutions + (m.dq.decoder_attn_resolutions if m.kind == "dq" else []) if r not in levels]
    if bad:
        raise ConfigError("rqvae.attn_resolutions", f"{bad} is not among the encoder's resolutions {sorted(levels)}", "pick resolutions the encoder passes through")


def _check_rq_shape(m) -> None:
    latent = m.resolution // 2 ** (len(m.ch_mult) - 1)
    h, w, depth = m.code_shape
    if m.resolution % 2 ** (len(m.ch_mult) - 1) or (h, w) != (latent, latent):
        raise ConfigError(
            "rqvae.code_shape",
            f"code map {h}x{w} does not match the encoder: resolution {m.resolution} / 2^{len(m.ch_mult) - 1} downsamplings = {latent}",
            f"set rqvae.code_shape=[{latent},{latent},{depth}] or change rqvae.ch_mult/rqvae.resolution",
        )
    _positive("rqvae.code_shape[2] (depth D)", depth)


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(key, f"{value} is outside [0, 1)", f"set {key} to a probability in [0, 1)")


def _check_stage2(cfg: Config) -> None:
    m, loss, o = cfg.stage2.model, cfg.stage2.loss, cfg.stage2.optim
    if m.kind not in STAGE2_KINDS:
        raise ConfigError("stage2.model.kind", f"unknown model family '{m.kind}'", f"choose one of {', '.join(STAGE2_KINDS)}")
    for key in ("embed_dim", "num_heads", "spatial_layers", "depth_layers", "mlp_ratio", "num_classes", "text_vocab", "text_length"):
        _positive(f"stage2.model.{key}", getattr(m, key))
    if m.embed_dim % m.num_heads:
        raise ConfigError("stage2.model.num_heads", f"embed_dim {m.embed_dim} is not divisible by num_heads {m.num_heads}",
                          "pick num_heads dividing embed_dim (Table A.1 uses head size 64)")
    for key in ("embd_dropout", "resid_dropout", "attn_dropout", "cond_dropout"):
        _fraction(f"stage2.model.{key}", getattr(m, key))
    _positive("stage2.loss.temperature", loss.temperature, strict=False)
    _positive("stage2.loss.text_weight", loss.text_weight, strict=False)
    _positive("stage2.loss.image_weight", loss.image_weight)
    _check_optim("stage2.optim", o)
    _check_dq_stage2(cfg)
    if cfg.stage == "stage2" and not cfg.rqvae.shared_codebook:
        raise ConfigError("rqvae.shared_codebook", "the RQ-Transformer embeds codes with one shared codebook (Eq. 10)",
                          "train stage 2 on an RQ-VAE with rqvae.shared_codebook=true")
    if m.cond_dropout > 0 and m.condition == "none":
        raise ConfigError("stage2.model.cond_dropout", "an unconditional model has no condition to drop",
                          "set stage2.model.cond_dropout=0 or choose condition class/text")
    _check_sampling(cfg)


def _check_dq_stage2(cfg: Config) -> None:
    """The DQ-Transformer reads DQ-VAE codes and nothing else does; what of stage 2 it does not take."""
    m, dq_codes = cfg.stage2.model, cfg.rqvae.kind == "dq"
    if cfg.stage == "stage2" and dq_codes and m.kind != "dq":
        raise ConfigError("stage2.model.kind", f"'{m.kind}' reads fixed-length RQ-VAE codes; DQ-VAE codes (rqvae.kind=dq) "
                          "have variable length", "set stage2.model.kind=dq (the DQ-Transformer)")
    if m.kind != "dq":
        return
    if cfg.stage == "stage2" and not dq_codes:
        raise ConfigError("rqvae.kind", "the DQ-Transformer reads DQ-VAE codes", "set rqvae.kind=dq and point "
                          "stage2.rqvae_checkpoint at a DQ-VAE (python -m rqscale.train configs/dq/stage1_....yaml)")
    if m.condition == "text":
        raise ConfigError("stage2.model.condition", "text conditioning is not built for the DQ-Transformer", "use none or class")
    longest = 4 * cfg.rqvae.code_shape[0] // 2 * cfg.rqvae.code_shape[1] // 2 + 4
    if m.max_length < longest:
        raise ConfigError("stage2.model.max_length", f"{m.max_length} rows < the longest sequence, {longest} tokens",
                          f"set it to {longest} or more (the paper's table has 2048)")
    for key in ("soft_labels", "stochastic_codes"):
        if getattr(cfg.stage2.loss, key):
            raise ConfigError(f"stage2.loss.{key}", "the DQ-Transformer trains on the DQ-VAE's hard codes (R)",
                              f"set stage2.loss.{key}=false")
    if cfg.stage2.sampling.cfg_scale != 1.0:
        raise ConfigError("stage2.sampling.cfg_scale", "the DQ-Transformer samples without guidance (the paper uses none)",
                          "set stage2.sampling.cfg_scale=1.0")


def _check_sampling(cfg: Config) -> None:
    sp, k = cfg.stage2.sampling, cfg.rqvae.num_codes
    _positive("stage2.sampling.temperature", sp.temperature)
    if not 0 <= sp.top_k <= k:
        raise ConfigError("stage2.sampling.top_k", f"{sp.top_k} is outside [0, K={k}]", f"set it between 1 and {k}, or 0 for off")
    if not 0.0 < sp.top_p <= 1.0:
        raise ConfigError("stage2.sampling.top_p", f"{sp.top_p} is outside (0, 1]", "set it in (0, 1], or 1.0 for off")
    _positive("stage2.sampling.cfg_scale", sp.cfg_scale, strict=False)
    _check_draft_revise(cfg)
    if sp.cfg_scale != 1.0 and cfg.stage2.model.cond_dropout == 0:
        raise ConfigError("stage2.sampling.cfg_scale", "guidance needs a model that learned a null condition",
                          "set stage2.sampling.cfg_scale=1.0, or train with stage2.model.cond_dropout > 0")


def _check_draft_revise(cfg: Config) -> None:
    if cfg.stage2.model.kind != "contextual":  # an autoregressive model never reads these
        return
    sp, (h, w, _) = cfg.stage2.sampling, cfg.rqvae.code_shape
    for key in ("draft_steps", "revise_steps"):
        value = getattr(sp, key)
        if not 1 <= value <= h * w:
            raise ConfigError(f"stage2.sampling.{key}", f"{value} groups for {h * w} positions",
                              f"set it between 1 and {h * w} (each group updates positions / groups of them)")
    if sp.revise_iterations < 0:
        raise ConfigError("stage2.sampling.revise_iterations", f"{sp.revise_iterations} is negative", "set it to 0 or more")
    if sp.draft_strategy not in DRAFT_STRATEGIES:
        raise ConfigError("stage2.sampling.draft_strategy", f"unknown strategy '{sp.draft_strategy}'",
                          f"use one of {', '.join(DRAFT_STRATEGIES)}")
    _positive("stage2.sampling.draft_temperature", sp.draft_temperature)
    if not 0 <= sp.draft_top_k <= cfg.rqvae.num_codes:
        raise ConfigError("stage2.sampling.draft_top_k", f"{sp.draft_top_k} is outside [0, K={cfg.rqvae.num_codes}]",
                          "set it between 1 and K, or 0 for off")
    if not 0.0 < sp.draft_top_p <= 1.0:
        raise ConfigError("stage2.sampling.draft_top_p", f"{sp.draft_top_p} is outside (0, 1]", "set it in (0, 1], or 1.0 for off")
    _positive("stage2.sampling.draft_cfg_scale", sp.draft_cfg_scale, strict=False)
    if sp.draft_cfg_scale != 1.0 and cfg.stage2.model.cond_dropout == 0:
        raise ConfigError("stage2.sampling.draft_cfg_scale", "guidance needs a model that learned a null condition",
                          "set it to 1.0, or train with stage2.model.cond_dropout > 0")


def _check_lpips_weights(cfg: Config) -> None:
    loss = cfg.stage1.loss
    if cfg.stage != "stage1" or loss.lpips_weight == 0 or loss.lpips_random_backbone:
        return
    path = loss.lpips_backbone or default_lpips_backbone()
    if not os.path.isfile(path):
        raise ConfigError(
            "stage1.loss.lpips_backbone",
            f"LPIPS needs the VGG-16 weights file '{path}', which does not exist",
            f"copy torchvision's {VGG16_FILE} there (or set stage1.loss.lpips_backbone=PATH); "
            "for tests only, stage1.loss.lpips_random_backbone=true uses random VGG features",
        )


def _check_files(cfg: Config) -> None:
    if cfg.run.init_from and not cfg.run.init_from.startswith("s3://") and not os.path.isfile(cfg.run.init_from):
        wanted = "a trained RQ-VAE state dict (rqvae.pt)" if cfg.stage == "stage1" else "a stage-2 checkpoint (rqtransformer.pt)"
        raise ConfigError("run.init_from", f"weights file '{cfg.run.init_from}' does not exist", f"point run.init_from at {wanted}")
    ckpt = cfg.stage2.rqvae_checkpoint
    if cfg.stage == "stage2":
        if not ckpt:
            raise ConfigError("stage2.rqvae_checkpoint", "stage 2 needs a trained RQ-VAE", "set stage2.rqvae_checkpoint=PATH/rqvae.pt (written by a stage-1 run)")
        if not ckpt.startswith("s3://") and not os.path.isfile(ckpt):
            raise ConfigError("stage2.rqvae_checkpoint", f"weights file '{ckpt}' does not exist", "train stage 1 first or point stage2.rqvae_checkpoint at its rqvae.pt")
        _check_tokenizer_file(cfg)
    _check_shards(cfg.data.shards, data_kind(cfg))


def _check_tokenizer_file(cfg: Config) -> None:
    path = cfg.stage2.tokenizer
    if cfg.stage2.model.condition != "text":
        return
    fix = "train one with python -m data_prep.tokenizer --captions MANIFEST_OR_FILE --out tokenizer.json and set stage2.tokenizer to it"
    if not path:
        raise ConfigError("stage2.tokenizer", "a text-conditional model needs the caption tokenizer, and none is set", fix)
    if not path.startswith("s3://") and not os.path.isfile(path):  # s3://: checked before workers start (check_runnable)
        raise ConfigError("stage2.tokenizer", f"tokenizer file '{path}' does not exist", fix)


def _check_shards(shards: str, kind: str) -> None:
    fix = "set data.shards to the manifest.json that data_prep wrote, e.g. s3://bucket/imagenet/train/manifest.json"
    if kind == "webdataset" and not shards:
        raise ConfigError("data.shards", "data.kind=webdataset needs shards, and none are set", fix + ", or drop data.kind to train on the bundled images")
    if kind == "webdataset" and not shards.endswith("manifest.json"):
        raise ConfigError("data.shards", f"'{shards}' is not the shards' manifest.json", fix)
