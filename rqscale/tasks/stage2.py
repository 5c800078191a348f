"""Stage 2 as a task: frozen RQ-VAE -> soft labels and stochastic codes -> RQ-Transformer -> losses.

Targets (Sec. 3.2.3, Eq. 15): with residuals r_{t,d-1} of the latent Z_t,
  soft labels   Q_tau(. | r_{t,d-1})          instead of one-hot Q_0
  stochastic    S_td ~ Q_tau(. | r_{t,d-1})   instead of the greedy code, r_d subtracting e(S_td)
Loss (Eq. 14 with soft targets): cross-entropy averaged over all B*T*D positions; per-depth
losses are reported. Text conditioning adds the caption's next-token loss: 0.1 text + 0.9 image (ref).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from rqscale.config.schema import Config
from rqscale.models import RQVAE, build_stage2_model


# Elements of a (rows x K) fp32 block the soft cross-entropy works on at once. On CPU, 2^18 (1 MB) stays
# in L2 through the cast, log-softmax and product; at (32, 64, 4, 1024) bf16 logits this took the loss's
# forward + backward from ~245 ms to ~35 ms a step (2 cores) against whole-tensor fp32 copies. On GPU
# big blocks keep the number of kernel launches small, and 2^26 elements bound the fp32 scratch at 256 MB.
_CE_BLOCK_ELEMENTS = {"cpu": 1 << 18}
_CE_BLOCK_ELEMENTS_DEFAULT = 1 << 26


def _ce_blocks(rows: int, k: int, device: torch.device):
    step = max(1, _CE_BLOCK_ELEMENTS.get(device.type, _CE_BLOCK_ELEMENTS_DEFAULT) // k)
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


class _SoftCrossEntropy(torch.autograd.Function):
    """-sum_k q_k log softmax(x)_k per row, computed block by block in fp32.

    The same arithmetic as `-(q * log_softmax(x.float())).sum(-1)`, row for row, but the fp32 copy of
    the (B, T, D, K) logits and their fp32 log-probabilities are never materialized (nor saved for
    backward): each block is upcast, used and dropped. Backward recomputes softmax per block:
    d/dx_k = g * (softmax(x)_k * sum_j q_j - q_k), in fp32, rounded once to the logits' dtype, which is
    what autograd through `.float()` gives."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        k = logits.shape[-1]
        x, q = logits.reshape(-1, k), targets.reshape(-1, k)
        out = torch.empty(x.shape[0], dtype=torch.float32, device=logits.device)
        for s, e in _ce_blocks(x.shape[0], k, logits.device):
            logp = F.log_softmax(x[s:e].float(), dim=-1)
            torch.sum(logp.mul_(q[s:e]), dim=-1, out=out[s:e])
        ctx.save_for_backward(logits, targets)
        return out.neg_().view(logits.shape[:-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets = ctx.saved_tensors
        k = logits.shape[-1]
        x, q, g = logits.reshape(-1, k), targets.reshape(-1, k), grad.reshape(-1, 1).float()
        grad_x = torch.empty_like(x)
        for s, e in _ce_blocks(x.shape[0], k, logits.device):
            qb = q[s:e].float()
            p = torch.softmax(x[s:e].float(), dim=-1)
            p.mul_(qb.sum(dim=-1, keepdim=True)).sub_(qb).mul_(g[s:e])
            grad_x[s:e] = p
        grad_q = None
        if ctx.needs_input_grad[1]:  # soft labels are constants in training; kept general for autograd checks
            grad_q = -F.log_softmax(logits.float(), dim=-1) * grad.unsqueeze(-1).float()
        return grad_x.view(logits.shape), grad_q


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_k q_k log p_k per position, in fp32: logits (..., K) in any float dtype, targets (..., K) summing to 1.

    fp32 whatever the logits' dtype: bf16 keeps 8 significant bits, which would round log-probabilities
    near log(1/K) ~ -9.7 (K = 16384) by up to ~0.03 each."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and soft targets {tuple(targets.shape)} differ in shape")
    return _SoftCrossEntropy.apply(logits, targets)


class Stage2Task(nn.Module):
    def __init__(self, cfg: Config, rqvae: RQVAE):
        super().__init__()
        self.cfg = cfg
        self.loss_cfg = cfg.stage2.loss
        self.rqvae = rqvae.eval().requires_grad_(False)  # frozen stage 1
        r = cfg.rqvae
        self.model = build_stage2_model(cfg.stage2.model, r.code_shape, r.num_codes, r.code_dim)
        with torch.no_grad():
            self.model.codebook.copy_(rqvae.quantizer.codebook)

    def train(self, mode: bool = True):
        super().train(mode)
        self.rqvae.eval()  # the RQ-VAE never trains here, and its codebook EMA must not move
        return self

    @torch.no_grad()
    def latents(self, batch: dict) -> torch.Tensor:
        """(B, H, W, n_z) encoder features: given (pre-extracted shards) or computed from images."""
        if "latents" in batch:
            return batch["latents"].float()
        return self.rqvae.latents(batch["images"]).float()

    @torch.no_grad()
    def targets(self, latents: torch.Tensor, generator: Optional[torch.Generator] = None):
        """(soft labels (B,T,D,K) or None for one-hot, codes (B,T,D)) per the loss config."""
        cfg, q = self.loss_cfg, self.rqvae.quantizer
        b = latents.shape[0]
        flat = latents.reshape(b, -1, latents.shape[-1])
        if not cfg.soft_labels and not cfg.stochastic_codes:
            return None, q.encode(flat)
        probs, codes = q.soft_codes(flat, cfg.temperature, stochastic=cfg.stochastic_codes, generator=generator)
        return (probs if cfg.soft_labels else None), codes

    def condition(self, batch: dict):
        """(condition, dropped rows): with prob. cond_dropout a row gets the null condition (for CFG).

        The null condition is the extra class row, or for text a caption of token 0 only."""
        m = self.cfg.stage2.model
        if m.condition == "none":
            return None, None
        cond = batch["cond"]
        dropped = torch.zeros(cond.shape[0], dtype=torch.bool, device=cond.device)
        if self.training and m.cond_dropout > 0:
            dropped = torch.rand(cond.shape[0], device=cond.device) < m.cond_dropout
            null = self.model.null_class if m.condition == "class" else 0
            cond = torch.where(dropped.view(-1, *[1] * (cond.dim() - 1)), torch.full_like(cond, null), cond)
        return cond, dropped

    def losses(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        probs, codes = self.targets(self.latents(batch), generator)
        cond, dropped = self.condition(batch)
        out = self.model(codes, cond)
        per_code = self.code_losses(out.logits, probs, codes)  # (B, T, D)
        return self.named_losses(per_code.flatten(0, 1), out, batch, dropped)

    @staticmethod
    def code_losses(logits: torch.Tensor, probs: Optional[torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each code (logits (..., D, K)): against the soft labels, or the codes if None."""
        if probs is None:
            return F.cross_entropy(logits.float().flatten(0, -2), codes.flatten(), reduction="none").view(codes.shape)
        return soft_cross_entropy(logits, probs)

    def named_losses(self, per_code: torch.Tensor, out, batch: dict, dropped: Optional[torch.Tensor]) -> dict:
        """image (the mean over the stacks' codes, per_code (stacks, D)), depth1..D, text, total."""
        image = per_code.mean()
        losses = {"image": image}
        losses.update({f"depth{d + 1}": v.detach() for d, v in enumerate(per_code.mean(dim=0))})
        total = image
        if out.text_logits is not None:
            text = self._text_loss(out.text_logits, batch["cond"], dropped)
            total = self.loss_cfg.image_weight * image + self.loss_cfg.text_weight * text
            losses["text"] = text.detach()
        losses["total"] = total
        return losses

    @staticmethod
    def _text_loss(text_logits: torch.Tensor, caption: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        """Next-token loss on the captions actually fed in: rows given the null caption are excluded.

        A masked mean rather than selecting the kept rows, whose count the host would have to read
        (a sync); with every row dropped the loss is 0 and still part of the graph."""
        per_token = F.cross_entropy(text_logits.float().flatten(0, 1), caption[:, 1:].flatten(), reduction="none")
        kept = (~dropped).float().unsqueeze(1).expand(-1, caption.shape[1] - 1).reshape(-1)
        return (per_token * kept).sum() / kept.sum().clamp_min(1.0)

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]
