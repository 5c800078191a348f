"""Stage-1 losses: LPIPS, PatchGAN discriminator, GAN losses and the adaptive generator weight."""
from rqscale.losses.adversarial import D_LOSSES, G_LOSSES, adaptive_weight, hinge_d_loss, vanilla_g_loss
from rqscale.losses.discriminator import PatchDiscriminator
from rqscale.losses.perceptual import MissingWeightsError, build_lpips, perceptual_loss

__all__ = [
    "D_LOSSES", "G_LOSSES", "MissingWeightsError", "PatchDiscriminator", "adaptive_weight",
    "build_lpips", "hinge_d_loss", "perceptual_loss", "vanilla_g_loss",
]
