"""FLOPs per training sample, for throughput and MFU (model FLOPs utilisation) reporting.

Stage 2 (RQ-Transformer) is counted analytically from the config, so the 3.8B model is planned
without building it. Stage 1 (RQ-VAE + discriminator + LPIPS) is convolutional and irregular, so it
is counted: the real Stage1Task is built on fake tensors (shapes, no data) and one image's training
step, as Stage1Engines.step runs it, goes through `torch.utils.flop_counter.FlopCounterMode`. The
losses are the task's own code, so a change to them changes the count.

flops_and_tokens_per_sample() is what the training loop reports MFU with; the planner (rqscale/planning)
and the benchmarks read the per-part dicts stage1_flops() / stage2_flops().

Conventions, shared with the usual MFU definition (Kaplan et al. 2020, Sec. 2.1; PaLM App. B):
- one multiply-add is 2 FLOPs: a (m x k) @ (k x n) product costs 2*m*n*k;
- only matmuls and convolutions count: norms, activations, softmax and gathers are left out;
- *model* FLOPs: recomputation for activation checkpointing is not counted, so MFU does not change
  when `stage2.model.activation_checkpointing` is switched on.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import json

import torch

from rqscale.config.schema import Config, DQConfig, RQTransformerConfig, RQVAEConfig, Stage1LossConfig

# Forward + backward, backward at 2x forward (gradients w.r.t. activations and w.r.t. weights).
TRAIN_PER_FORWARD = 3


# ---- stage 2: RQ-Transformer (Sec. 3.2.2, Eqs. 10-13) --------------------------------------------
def tokens_per_sample(cfg: Config) -> int:
    """Codes per image, H*W*D (8*8*4 = 256 for the paper's 256x256 RQ-VAE, Sec. 3.1.3)."""
    h, w, d = cfg.rqvae.code_shape
    return h * w * d


def block_flops(m: RQTransformerConfig, seq: int) -> int:
    """One pre-LN block over one sequence of `seq` tokens.

    Linears: QKV (C -> 3C), output projection (C -> C), MLP (C -> rC -> C): 2*seq*C^2*(4 + 2r).
    Attention: scores Q K^T and the weighted sum of V, each 2*seq^2*C. The full seq x seq product
    is counted although the mask is causal: that is what SDPA's math path computes and what
    FlopCounterMode reports for the fused kernels (and what the MFU convention counts).
    """
    c = m.embed_dim
    linear = 2 * seq * c * c * (4 + 2 * m.mlp_ratio)
    attention = 2 * (2 * seq * seq * c)
    return linear + attention


def spatial_length(m: RQTransformerConfig, positions: int) -> int:
    """Spatial sequence length: the condition prefix, then the codes of positions 1..T-1 (Eq. 10).

    Class / none: one start token (the class embedding replaces it), so T tokens. Text: L caption
    tokens, the last of which predicts position 1, so L + T - 1 (95 for CC-3M, A.2). A contextual
    model reads all N stacks after its prefix (Eq. 7): 1 + N, or L + N."""
    prefix = m.text_length if m.condition == "text" else 1
    return prefix + positions - (0 if m.kind == "contextual" else 1)


def expected_masked_fraction(positions: int, steps: int = 100_000) -> float:
    """E[ceil(cos(pi r / 2) N)] / N for r ~ U[0, 1) (Draft-and-Revise Eq. 10), by the midpoint rule:
    the share of stacks a contextual training step runs through its depth transformer (0.644 at N = 64)."""
    total = sum(math.ceil(math.cos(math.pi * (i + 0.5) / steps / 2) * positions) for i in range(steps))
    return total / steps / positions


def stage2_flops(cfg: Config) -> dict:
    """Model FLOPs of the RQ-Transformer per training sample (one image and its condition).

    spatial_forward: input Linear over the T-1 summed code embeddings + the spatial stack.
    depth_forward:   input Linear over the T*(D-1) partial sums (Eq. 12) + the depth stack, which
                     runs T sequences of D tokens.
    heads_forward:   the shared LN+Linear head over K codes at all T*D depth outputs, plus the text
                     head over L-1 caption tokens when condition == "text".
    A contextual model (Draft-and-Revise) reads all N stacks, and runs the depth transformer and head at
    the masked ones only: N times the expected masked fraction of Eq. 10's schedule.
    Not counted: the frozen RQ-VAE (encoder on raw images, soft-label distances of Eq. 15), which
    produces the targets but is not the model being trained.
    """
    m, r = cfg.stage2.model, cfg.rqvae
    if m.kind == "dq":
        return dq_stage2_flops(cfg)
    h, w, d = r.code_shape
    t, c = h * w, m.embed_dim
    inputs, stacks = (t, t * _masked_fraction(t)) if m.kind == "contextual" else (t - 1, t)  # contextual: Eqs. 6, 11
    spatial = 2 * inputs * r.code_dim * c + m.spatial_layers * block_flops(m, spatial_length(m, t))
    depth = 2 * stacks * (d - 1) * r.code_dim * c + m.depth_layers * stacks * block_flops(m, d)
    heads = 2 * stacks * d * c * r.num_codes
    if m.condition == "text":
        heads += 2 * (m.text_length - 1) * c * m.text_vocab
    forward = spatial + depth + heads
    return {"spatial_forward": spatial, "depth_forward": depth, "heads_forward": heads,
            "forward": forward, "train": TRAIN_PER_FORWARD * forward}


def dq_sequence_length(cfg: Config) -> float:
    """A DQ-Transformer sequence's expected length at the target fine share r_f: (N_c + 2) + (4 N_f + 2)
    tokens with N_f = r_f N regions (the budget loss holds the share near r_f)."""
    h, w, _ = cfg.rqvae.code_shape
    regions = h * w // 4
    return regions * (1 + 3 * cfg.rqvae.dq.fine_ratio) + 4


def dq_stage2_flops(cfg: Config) -> dict:
    """Model FLOPs of the DQ-Transformer per training sample: its L - 1 inputs through the Position-Transformer
    ("spatial") and the Content-Transformer ("depth"), each token's position head over P + 3 ids and content
    head over K + 3 (heads). Embedding look-ups are free; attention is counted over one sample's own
    sequence (packed rows mask the rest out), at the expected length of dq_sequence_length."""
    m, r = cfg.stage2.model, cfg.rqvae
    h, w, _ = r.code_shape
    inputs, c = dq_sequence_length(cfg) - 1, m.embed_dim
    spatial = m.spatial_layers * block_flops(m, inputs)
    depth = m.depth_layers * block_flops(m, inputs)
    heads = 2 * inputs * c * ((h * w + 3) + (r.num_codes + 3))
    forward = spatial + depth + heads
    return {"spatial_forward": spatial, "depth_forward": depth, "heads_forward": heads,
            "forward": forward, "train": TRAIN_PER_FORWARD * forward}


@functools.lru_cache(maxsize=8)
def _masked_fraction(positions: int) -> float:
    return expected_masked_fraction(positions)


# ---- stage 1: RQ-VAE + PatchGAN + LPIPS (A.1, A.3), counted on the real task -----------------------
# A step before any stage1.loss.disc_start (validated >= 0): the discriminator is off (Stage1Task.disc_active).
BEFORE_GAN = -1


def _task_config(r: RQVAEConfig, loss: Stage1LossConfig) -> Config:
    """The config Stage1Task reads (rqvae, stage1.loss), with LPIPS's random backbone: FLOPs do not depend
    on weights, and counting then needs no VGG file."""
    loss = dataclasses.replace(loss, lpips_random_backbone=True)
    return dataclasses.replace(Config(), stage="stage1", rqvae=r, stage1=dataclasses.replace(Config().stage1, loss=loss))


def fake_stage1(r: RQVAEConfig, loss: Stage1LossConfig) -> tuple:
    """(Stage1Task, FakeTensorMode, one image): the real task, built and run in the mode.

    Fake tensors carry shapes and dtypes but no data, so a 100M-parameter RQ-VAE costs nothing to build and
    its step nothing to run; FlopCounterMode counts them (torch.utils.flop_counter's documented use).
    Fake, not the meta device: the quantizer turns autocast off, which the meta device does not support.
    allow_non_fake_inputs: LPIPS makes its ScalingLayer constants with the legacy torch.Tensor constructor."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from rqscale.tasks import Stage1Task

    from rqscale.quantizer import LocalCollective

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        task = Stage1Task(_task_config(r, loss)).train()
        images = torch.zeros(1, r.in_channels, r.resolution, r.resolution)
    # Counting runs on every rank of a live process group: the codebook's EMA statistics must not reach a real
    # collective (NCCL cannot reduce fake tensors, and ranks may count at different times).
    task.rqvae.quantizer.collective = LocalCollective()
    return task, mode, images


def generator_step(task, images: torch.Tensor, step: int) -> torch.Tensor:
    """The generator half of Stage1Engines.step (rqscale/train/stage1_engine.py): its losses and backward with
    the discriminator frozen (its weights get no gradient). Returns the detached reconstruction."""
    task.discriminator.requires_grad_(False)
    try:
        losses = task.generator_losses(images, step)
        losses["total"].backward()
    finally:
        task.discriminator.requires_grad_(True)
    return losses["reconstruction"]


def stage1_step(task, images: torch.Tensor, step: int) -> None:
    """Stage1Engines.step on one image: the generator's step, then the discriminator's when it is on."""
    recon = generator_step(task, images, step)
    if task.disc_active(step):
        task.discriminator_losses(images, recon)["total"].backward()


def _count(fn) -> tuple:
    """(FLOPs, result) of running fn() under FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn()
    return counter.get_total_flops(), result


def _forward_parts(task, images: torch.Tensor) -> dict:
    """Each network's forward on one image, through the task's own modules and loss terms."""
    rqvae = task.rqvae
    encoder, z = _count(lambda: rqvae.latents(images))
    quantizer, q = _count(lambda: rqvae.quantizer(z))  # Eq. 1's nearest-code search, one matmul per depth
    decoder, recon = _count(lambda: rqvae.decode_latents(q.z_q))
    return {"encoder_forward": encoder, "quantizer_forward": quantizer, "decoder_forward": decoder,
            "disc_forward": _count(lambda: task.discriminator(images))[0],
            "lpips_forward": _count(lambda: task._lpips(images, recon))[0] if task.lpips is not None else 0}


@functools.lru_cache(maxsize=32)
def _stage1_cached(rqvae_json: str, loss_json: str) -> tuple:
    fields = json.loads(rqvae_json)
    r = RQVAEConfig(**{**fields, "dq": DQConfig(**fields["dq"])})
    loss = Stage1LossConfig(**json.loads(loss_json))
    task, mode, images = fake_stage1(r, loss)
    with mode:
        parts = _forward_parts(task, images)
        gan = task.disc_active(loss.disc_start)
        forward = sum(parts[f"{p}_forward"] for p in ("encoder", "quantizer", "decoder", "lpips"))
        parts["forward_without_gan"] = forward
        parts["forward"] = forward + (3 if gan else 0) * parts["disc_forward"]  # D(x^) for G's loss; D(x), D(x^) for D's
        parts["train_without_gan"] = _count(lambda: stage1_step(task, images, BEFORE_GAN))[0]
        parts["train"] = _count(lambda: stage1_step(task, images, loss.disc_start))[0] if gan else parts["train_without_gan"]
    return tuple(parts.items())


def stage1_flops(cfg: Config) -> dict:
    """FLOPs of one image in a stage-1 training step, counted on the real Stage1Task (fake tensors).

    forward: every forward pass the step runs: encoder, quantizer search, decoder, LPIPS on the image
             and its reconstruction, and 3 discriminator passes (D(x^) in the generator loss, D(x)
             and D(x^) in the discriminator loss) when stage1.loss.disc_weight > 0.
    train:   Stage1Engines.step's forward and backward as autograd runs them, counted. Not 3x forward:
             LPIPS is frozen (input gradients only), so is the discriminator during the generator's step,
             the real image needs no gradient, and VQGAN's adaptive weight (autograd.grad of two losses
             w.r.t. the decoder's last conv) adds backward work.
    *_without_gan: the same before stage1.loss.disc_start, when the discriminator is off.
    Also the per-network forward parts: encoder_, quantizer_, decoder_, disc_ (one pass), lpips_.
    Results are cached per (rqvae, stage1.loss) config.
    """
    key = (json.dumps(dataclasses.asdict(cfg.rqvae), sort_keys=True),
           json.dumps(dataclasses.asdict(cfg.stage1.loss), sort_keys=True))
    return dict(_stage1_cached(*key))


def flops_per_sample(cfg: Config) -> float:
    """Training FLOPs per sample for the configured stage: what Telemetry's MFU divides by time. Stage 1:
    the step with the GAN on (its steady state from stage1.loss.disc_start)."""
    return float(stage2_flops(cfg)["train"] if cfg.stage == "stage2" else stage1_flops(cfg)["train"])


def flops_and_tokens_per_sample(cfg: Config) -> tuple:
    """(training FLOPs, tokens) per sample, what the training loop hands Telemetry. Tokens are the
    RQ-Transformer's H*W*D codes; 0 for stage 1, which models pixels, not a token sequence."""
    return flops_per_sample(cfg), tokens_per_sample(cfg) if cfg.stage == "stage2" else 0
