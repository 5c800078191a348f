"""RQ-VAE (Sec. 3.1.3, A.1): VQGAN encoder E, residual quantizer, VQGAN decoder G.

X (B,3,H0,W0) -E-> Z (B,n_z,H,W) -RQ-> codes (B,H,W,D), Z^(d) -G-> X^ .
Architecture only: no losses, no parallelism.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rqscale.config.schema import RQVAEConfig
from rqscale.models.layers import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm
from rqscale.quantizer import ResidualQuantizer


def _level(in_ch: int, out_ch: int, blocks: int, attn: bool, dropout: float) -> nn.ModuleList:
    layers = []
    for i in range(blocks):
        layers.append(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, dropout))
        if attn:
            layers.append(AttnBlock(out_ch))
    return nn.ModuleList(layers)


def _mid(channels: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(channels, channels, dropout), AttnBlock(channels), ResnetBlock(channels, channels, dropout))


class EncoderTrunk(nn.Module):
    """The VQGAN encoder's levels: residual (and attention) blocks, a downsample between levels."""

    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        self.channels = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.levels, self.downs = nn.ModuleList(), nn.ModuleList()
        res, in_ch = cfg.resolution, cfg.ch
        for i, out_ch in enumerate(self.channels):
            self.levels.append(_level(in_ch, out_ch, cfg.encoder_res_blocks, res in cfg.attn_resolutions, cfg.dropout))
            last = i == len(self.channels) - 1
            self.downs.append(nn.Identity() if last else Downsample(out_ch))
            res, in_ch = (res if last else res // 2), out_ch

    def level_outputs(self, x: torch.Tensor) -> list:
        """Each level's output, before the downsample that follows it."""
        h, outputs = self.conv_in(x), []
        for level, down in zip(self.levels, self.downs):
            for layer in level:
                h = layer(h)
            outputs.append(h)
            h = down(h)
        return outputs


class Encoder(EncoderTrunk):
    def __init__(self, cfg: RQVAEConfig):
        super().__init__(cfg)
        in_ch = self.channels[-1]
        self.mid = _mid(in_ch, cfg.dropout)
        self.norm_out = group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.level_outputs(x)[-1]
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        res = cfg.resolution // 2 ** (len(chans) - 1)
        in_ch = chans[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, in_ch, 3, padding=1)
        self.mid = _mid(in_ch, cfg.dropout)
        self.levels, self.ups = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chans))):
            self.levels.append(_level(in_ch, chans[i], cfg.decoder_res_blocks, res in cfg.attn_resolutions, cfg.dropout))
            self.ups.append(Upsample(chans[i]) if i > 0 else nn.Identity())
            res, in_ch = (res * 2 if i > 0 else res), chans[i]
        self.norm_out = group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level, up in zip(self.levels, self.ups):
            for layer in level:
                h = layer(h)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class RQVAEOutput:
    reconstruction: torch.Tensor  # X^ = G(Z^)
    codes: torch.Tensor  # (B, H, W, D)
    commitment_loss: torch.Tensor  # Eq. 7
    latents: torch.Tensor  # Z = E(X), channels-last (B, H, W, n_z)


class CodeDecoding:
    """What stage-1 models share once their codes exist: decoding them, and the decoder's last layer.
    Needs `quantizer` (decode(codes, depth)) and `decode_latents` (channels-last latents -> images)."""

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """G(Z^(d)) from codes (B, H, W, D): the coarse-to-fine reconstructions of Fig. 5."""
        return self.decode_latents(self.quantizer.decode(codes, depth=depth))

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last conv weight: where VQGAN's adaptive GAN weight is measured."""
        return self.decoder.conv_out.weight


class RQVAE(CodeDecoding, nn.Module):
    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)  # ref: 1x1 convs around RQ
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)
        self.quantizer = ResidualQuantizer(
            cfg.num_codes, cfg.code_dim, cfg.code_shape[2], shared_codebook=cfg.shared_codebook,
            decay=cfg.ema_decay, restart_unused=cfg.restart_unused,
        )

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Z = E(X) as channels-last (B, H, W, n_z): what stage 2 needs for soft labels (Eq. 15)."""
        return self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1).contiguous()

    def decode_latents(self, z_hat: torch.Tensor) -> torch.Tensor:
        """G(Z^) from channels-last quantized features."""
        return self.decoder(self.post_quant_conv(z_hat.permute(0, 3, 1, 2).contiguous()))

    def forward(self, images: torch.Tensor) -> RQVAEOutput:
        z = self.latents(images)
        q = self.quantizer(z)
        return RQVAEOutput(self.decode_latents(q.z_q), q.codes, q.commitment_loss, z)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H0, W0) -> codes (B, H, W, D)."""
        return self.quantizer.encode(self.latents(images))
