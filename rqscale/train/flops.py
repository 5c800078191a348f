"""FLOPs per training sample, for throughput and MFU (model FLOPs utilisation) reporting.

Stage 2 (RQ-Transformer) is counted analytically from the config, so the 3.8B model is planned
without building it. Stage 1 (RQ-VAE + discriminator + LPIPS) is convolutional and irregular, so it
is measured: the networks are built on the meta device (no weights) and one image's training step
runs under `torch.utils.flop_counter.FlopCounterMode`.

Conventions, shared with the usual MFU definition (Kaplan et al. 2020, Sec. 2.1; PaLM App. B):
- one multiply-add is 2 FLOPs: a (m x k) @ (k x n) product costs 2*m*n*k;
- only matmuls and convolutions count: norms, activations, softmax and gathers are left out;
- *model* FLOPs: recomputation for activation checkpointing is not counted, so MFU does not change
  when `stage2.model.activation_checkpointing` is switched on.
"""
from __future__ import annotations

import dataclasses
import functools
import json

import torch

from rqscale.config.schema import Config, RQTransformerConfig, RQVAEConfig, Stage1LossConfig

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
    tokens, the last of which predicts position 1, so L + T - 1 (95 for CC-3M, A.2)."""
    prefix = m.text_length if m.condition == "text" else 1
    return prefix + positions - 1


def stage2_flops(cfg: Config) -> dict:
    """Model FLOPs of the RQ-Transformer per training sample (one image and its condition).

    spatial_forward: input Linear over the T-1 summed code embeddings + the spatial stack.
    depth_forward:   input Linear over the T*(D-1) partial sums (Eq. 12) + the depth stack, which
                     runs T sequences of D tokens.
    heads_forward:   the shared LN+Linear head over K codes at all T*D depth outputs, plus the text
                     head over L-1 caption tokens when condition == "text".
    Not counted: the frozen RQ-VAE (encoder on raw images, soft-label distances of Eq. 15), which
    produces the targets but is not the model being trained.
    """
    m, r = cfg.stage2.model, cfg.rqvae
    h, w, d = r.code_shape
    t, c = h * w, m.embed_dim
    spatial = 2 * (t - 1) * r.code_dim * c + m.spatial_layers * block_flops(m, spatial_length(m, t))
    depth = 2 * t * (d - 1) * r.code_dim * c + m.depth_layers * t * block_flops(m, d)
    heads = 2 * t * d * c * r.num_codes
    if m.condition == "text":
        heads += 2 * (m.text_length - 1) * c * m.text_vocab
    forward = spatial + depth + heads
    return {"spatial_forward": spatial, "depth_forward": depth, "heads_forward": heads,
            "forward": forward, "train": TRAIN_PER_FORWARD * forward}


# ---- stage 1: RQ-VAE + PatchGAN + LPIPS (A.1, A.3) ------------------------------------------------
def quantizer_flops(r: RQVAEConfig) -> int:
    """Nearest-code search of Eq. 1 at each depth: one (H*W x n_z) @ (n_z x K) product per depth, as
    EMACodebook.nearest computes it. Counted analytically because the quantizer disables autocast,
    which has no meta-device variant. The EMA update (bincount, index_add) is not a matmul."""
    h, w, d = r.code_shape
    return d * 2 * h * w * r.code_dim * r.num_codes


def _count(fn) -> tuple:
    """(FLOPs, result) of running fn() under FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn()
    return counter.get_total_flops(), result


def _build_meta(r: RQVAEConfig, loss: Stage1LossConfig) -> tuple:
    """(RQ-VAE, discriminator, LPIPS or None) with meta weights.

    LPIPS is built with a random backbone: the FLOPs do not depend on the weights, and this needs no
    VGG file. Its ScalingLayer makes CPU buffers with the legacy torch.Tensor constructor, which
    ignores the device context, hence the explicit .to("meta")."""
    from rqscale.losses import PatchDiscriminator, build_lpips
    from rqscale.models import RQVAE

    with torch.device("meta"):
        rqvae = RQVAE(r)
        disc = PatchDiscriminator(r.in_channels, loss.disc_ndf, loss.disc_layers)
        lpips = build_lpips(None, random_backbone=True).to("meta") if loss.lpips_weight > 0 else None
    return rqvae, disc, lpips


def _generator_step(rqvae, disc, lpips, loss: Stage1LossConfig, images: torch.Tensor, gan: bool) -> torch.Tensor:
    """Stage1Task.generator_losses' arithmetic with the quantizer replaced by its straight-through
    identity (z_q = z + sg[...], so gradients and shapes are the same). Returns the reconstruction."""
    from rqscale.losses import G_LOSSES, adaptive_weight, perceptual_loss

    recon = rqvae.decode_latents(rqvae.latents(images))
    nll = (recon - images).pow(2).mean()
    if lpips is not None:
        nll = nll + loss.lpips_weight * perceptual_loss(lpips, images, recon)
    total = nll
    if gan:
        g_loss = G_LOSSES[loss.gen_loss](disc(recon))
        total = total + adaptive_weight(nll, g_loss, rqvae.last_layer) * loss.disc_weight * g_loss
    total.backward()
    return recon.detach()


def _discriminator_step(disc, loss: Stage1LossConfig, images: torch.Tensor, recon: torch.Tensor) -> None:
    from rqscale.losses import D_LOSSES

    (loss.disc_weight * D_LOSSES[loss.disc_loss](disc(images), disc(recon))).backward()


def _forward_parts(r: RQVAEConfig, loss: Stage1LossConfig) -> dict:
    rqvae, disc, lpips = _build_meta(r, loss)
    images = torch.zeros(1, r.in_channels, r.resolution, r.resolution, device="meta")
    encoder, z = _count(lambda: rqvae.latents(images))
    decoder, recon = _count(lambda: rqvae.decode_latents(z))
    parts = {"encoder_forward": encoder, "quantizer_forward": quantizer_flops(r), "decoder_forward": decoder,
             "disc_forward": _count(lambda: disc(images))[0], "lpips_forward": 0}
    if lpips is not None:
        parts["lpips_forward"] = _count(lambda: lpips(images, recon))[0]
    return parts


def _train_step(r: RQVAEConfig, loss: Stage1LossConfig, gan: bool) -> int:
    """Measured FLOPs of one image's training step (forward and backward), quantizer added."""
    rqvae, disc, lpips = _build_meta(r, loss)
    images = torch.zeros(1, r.in_channels, r.resolution, r.resolution, device="meta")

    def step() -> None:
        recon = _generator_step(rqvae, disc, lpips, loss, images, gan)
        if gan:
            _discriminator_step(disc, loss, images, recon)

    return _count(step)[0] + quantizer_flops(r)


@functools.lru_cache(maxsize=32)
def _stage1_cached(rqvae_json: str, loss_json: str) -> tuple:
    r = RQVAEConfig(**json.loads(rqvae_json))
    loss = Stage1LossConfig(**json.loads(loss_json))
    parts = _forward_parts(r, loss)
    gan = loss.disc_weight > 0
    disc_passes = 3 if gan else 0  # D(x^) for the generator loss; D(x), D(x^) for the D loss
    forward = parts["encoder_forward"] + parts["quantizer_forward"] + parts["decoder_forward"] + parts["lpips_forward"]
    parts["forward_without_gan"] = forward
    parts["forward"] = forward + disc_passes * parts["disc_forward"]
    parts["train"] = _train_step(r, loss, gan)
    parts["train_without_gan"] = _train_step(r, loss, False) if gan else parts["train"]
    return tuple(parts.items())


def stage1_flops(cfg: Config) -> dict:
    """FLOPs of one image in a stage-1 training step (generator step, then discriminator step).

    forward: every forward pass the step runs: encoder, quantizer search, decoder, LPIPS on the image
             and its reconstruction, and 3 discriminator passes (D(x^) in the generator loss, D(x)
             and D(x^) in the discriminator loss) when stage1.loss.disc_weight > 0.
    train:   the step's forward and backward as autograd runs them, measured. Not 3x forward: LPIPS
             is frozen (input gradients only), the real image needs no gradient, and VQGAN's adaptive
             weight (autograd.grad of two losses w.r.t. the decoder's last conv) adds backward work.
    *_without_gan: the same before stage1.loss.disc_start, when the discriminator is off.
    Also the per-network forward parts: encoder_, quantizer_, decoder_, disc_ (one pass), lpips_.
    Results are cached per (rqvae, stage1.loss) config.
    """
    key = (json.dumps(dataclasses.asdict(cfg.rqvae), sort_keys=True),
           json.dumps(dataclasses.asdict(cfg.stage1.loss), sort_keys=True))
    return dict(_stage1_cached(*key))


def flops_per_sample(cfg: Config) -> float:
    """Training FLOPs per sample for the configured stage: what Telemetry's MFU divides by time."""
    return float(stage2_flops(cfg)["train"] if cfg.stage == "stage2" else stage1_flops(cfg)["train"])
