"""The DQ-Transformer as a task: frozen DQ-VAE -> codes and grain map (the router's argmax, eval mode,
as R) -> coarse-to-fine sequences -> packed rows -> position and content cross-entropy.

Loss (R: stackgpt.py, both weights 1.0): content CE + (coarse-position CE + fine-position CE) / 2, each
a mean over its own targets; every target of a sequence counts, EOS and the fine SOS included (R), pads
never. The packing needs the sequences' lengths on the host. From DQ code shards (data_prep.latents of a DQ-VAE) the
reader computes them from the grain maps it decoded, so the step reads nothing back. Encoding images on the
fly, they are the step's one device-to-host read (R pays the same as padding to the batch's longest segments).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from rqscale.config import ConfigError
from rqscale.config.schema import Config
from rqscale.data.dq_sequence import COARSE, FINE, layout_of, pack, packed_attention, to_sequences
from rqscale.models.dqtransformer import DQTransformer, Tokens
from rqscale.models.dqvae import DQVAE, codes_per_image
from rqscale.tasks.stage2 import Stage2Task


class DQStage2Task(Stage2Task):
    def __init__(self, cfg: Config, rqvae: DQVAE):
        nn.Module.__init__(self)  # not Stage2Task's: no RQ codebook to copy, the content embedding is learned (R)
        self.cfg, self.loss_cfg = cfg, cfg.stage2.loss
        self.rqvae = rqvae.eval().requires_grad_(False)
        self.layout = layout_of(cfg)
        self.model = DQTransformer(cfg.stage2.model, self.layout)

    @torch.no_grad()
    def sequences(self, batch: dict):
        """(Sequences, grain, host lengths) of a batch of images, or of given codes and grain maps ("codes",
        "grain"; with "lengths" on the host when they come from DQ code shards)."""
        if "codes" in batch:
            seq = to_sequences(batch["codes"], batch["grain"], self.layout)
            return seq, batch["grain"], _host_list(batch["lengths"]) if "lengths" in batch else seq.length.tolist()
        if "images" not in batch:  # a ConfigError: Ray must not retry it
            raise ConfigError("data.shards", "these shards hold an RQ-VAE's latents; the DQ-Transformer reads images or "
                              "a DQ-VAE's codes", "point data.shards at image shards, or at data_prep.latents' output for a DQ-VAE")
        codes, grain = self.rqvae.encode_with_grain(batch["images"])
        seq = to_sequences(codes, grain, self.layout)
        return seq, grain, seq.length.tolist()  # the step's one host read (module docstring)

    def packed_tokens(self, seq, lengths: list, cond: Optional[torch.Tensor]) -> tuple:
        """(input Tokens (R, C), targets (content, position, segment), valid slots, attention, padding share)."""
        rows = pack(lengths, self.layout.max_length)
        device = seq.content.device
        source, sample = rows.source.to(device, non_blocking=True), rows.sample.to(device, non_blocking=True)
        valid = source >= 0
        at, nxt = source.clamp(min=0), source.clamp(min=0) + 1
        flat = lambda t: t.reshape(-1)  # noqa: E731
        c, p, s = flat(seq.content), flat(seq.position), flat(seq.segment)
        label = None if cond is None else cond[sample.clamp(min=0)]
        tokens = Tokens(c[at], p[at], s[at], at % self.layout.max_length, p[nxt], s[nxt], label)
        return tokens, (c[nxt], p[nxt], s[nxt]), valid, packed_attention(sample), rows.padding

    def losses(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        seq, grain, lengths = self.sequences(batch)
        cond, _ = self.condition(batch)
        tokens, (content, position, segment), valid, attend, padding = self.packed_tokens(seq, lengths, cond)
        out = self.model(tokens, attend)
        content_ce = _masked_mean(_ce(out.content_logits, content), valid)
        position_ce = _ce(out.position_logits, position)
        coarse = _masked_mean(position_ce, valid & (segment == COARSE))
        fine = _masked_mean(position_ce, valid & (segment == FINE))
        total = content_ce + 0.5 * (coarse + fine)
        return {"total": total, "content": content_ce.detach(), "coarse_position": coarse.detach(),
                "fine_position": fine.detach(), "padding": padding,  # a host float: no copy to the device
                "codes_per_image": codes_per_image(grain).float().mean()}


def _host_list(lengths: torch.Tensor) -> list:
    if lengths.device.type != "cpu":  # the training loop keeps it on the host (rqscale/train/loop.py HOST_FIELDS)
        raise ValueError(f"batch['lengths'] is on {lengths.device}: keep it on the host (rqscale/train/loop.py HOST_FIELDS); "
                         "reading it back would cost a device sync every step")
    return lengths.tolist()


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, -2), target.flatten(), reduction="none").view(target.shape)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries, without a host read of their count."""
    m = mask.float()
    return (values * m).sum() / m.sum().clamp_min(1.0)
