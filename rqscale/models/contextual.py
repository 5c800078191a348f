"""Contextual RQ-Transformer (Lee et al., NeurIPS 2022, "Draft-and-Revise", Sec. 3.2): a bidirectional
spatial transformer over the N = H x W code stacks, some of them masked, and the RQ-Transformer's causal
depth transformer, run at the masked positions only. Architecture only; its training task is
rqscale/tasks/contextual.py, its decoding rqscale/sampling/draft_revise.py.

  u_n = Lin_s(sum_d e(S_nd)) + PE_N(n)          if position n is visible                       (Eq. 6)
  u_n = Lin_s(e_[MASK]) + PE_N(n)               if it is masked: one vector for the whole stack
  h_1..h_N = BidirectionalSpatialTransformer(condition tokens, u_1..u_N)                       (Eq. 7)
  v_n1 = h_n + PE_D(1);  v_nd = Lin_d(sum_{d'<d} e(S_nd')) + PE_D(d)                           (Eq. 8)
  p(S_nd | S_n,<d, S_\\m) = softmax(Head(DepthTransformer(v_n1..v_nd)))                        (Eq. 9)

The parameters are the RQ-Transformer's (rqtransformer.py) plus e_[MASK], which lives in the code
embedding space (n_z) like the sums it replaces, and a position vector for the condition token (the AR
model gives it PE_T(1), a code position here). Unlike the AR model, h_n feeds the depth transformer of
position n itself. A caption prefix attends causally among its own tokens (the text head predicts the
next one) and not to the image; image positions attend to everything.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from rqscale.config.schema import RQTransformerConfig
from rqscale.models.rqtransformer import RQTransformer


class ContextualOutput(NamedTuple):
    """A NamedTuple for ZeRO-3's output hooks (as RQTransformerOutput)."""

    logits: torch.Tensor  # (M, D, K): the M masked stacks, in (sample, position) order
    text_logits: Optional[torch.Tensor] = None  # (B, L-1, V): token i predicts token i+1


def prefix_attention(prefix: int, positions: int) -> torch.Tensor:
    """(L + N, L + N) bool, True where a query may attend a key: a caption attends causally to itself only;
    code positions attend to everything."""
    total = prefix + positions
    allowed = torch.ones(total, total, dtype=torch.bool)
    allowed[:prefix] = False
    allowed[:prefix, :prefix] = torch.ones(prefix, prefix, dtype=torch.bool).tril_()
    return allowed


class ContextualRQTransformer(RQTransformer):
    SPATIAL_CAUSAL = False  # Eq. 7: bidirectional

    def _build_extra(self, cfg: RQTransformerConfig, code_dim: int) -> None:
        self.mask_emb = nn.Parameter(torch.zeros(code_dim))  # e_[MASK], Eq. 6
        if cfg.condition != "text":
            self.pos_cond = nn.Parameter(torch.zeros(1, cfg.embed_dim))  # the class / start token's position
        attend = prefix_attention(cfg.text_length, self.positions) if cfg.condition == "text" else None
        self.register_buffer("attend", attend, persistent=False)  # None: no mask at all (fused kernels on GPU)

    def condition_tokens(self, batch: int, cond: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, Lc, n_e) tokens before the N code positions: one class (or start) token, or the caption."""
        kind = self.cfg.condition
        if kind == "none":
            return (self.start + self.pos_cond).expand(batch, 1, -1)
        if cond is None:
            raise ValueError(f"a {kind}-conditional Contextual RQ-Transformer needs a condition")
        if kind == "class":
            return (self.class_emb(cond) + self.pos_cond).unsqueeze(1)
        return self.text_emb(cond) + self.pos_text

    def stack_tokens(self, codes: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Eq. 6 for codes (B, N, D) and masked (B, N) bool: (B, N, n_e)."""
        summed = self.codebook[codes].sum(dim=-2)  # fp32 buffer, as in the AR model
        summed = torch.where(masked.unsqueeze(-1), self.mask_emb.to(summed.dtype), summed).to(self.pos_spatial.dtype)
        return self.spatial_proj(summed) + self.pos_spatial

    def context(self, codes: torch.Tensor, masked: torch.Tensor, cond: Optional[torch.Tensor]) -> tuple:
        """Eq. 7: (h (B, N, n_e) at the code positions, hidden states of the condition tokens (B, Lc, n_e))."""
        b = codes.shape[0]
        prefix = self.condition_tokens(b, cond)
        x = torch.cat([prefix, self.stack_tokens(codes.reshape(b, self.positions, self.depth_codes), masked)], dim=1)
        hidden = self.spatial(self.drop(x), attend=self.attend)
        lc = prefix.shape[1]
        return hidden[:, lc:], hidden[:, :lc]

    def forward(self, codes: torch.Tensor, masked: torch.Tensor, index: torch.Tensor,
                cond: Optional[torch.Tensor] = None) -> ContextualOutput:
        """codes (B, H, W, D) or (B, N, D), masked (B, N) bool, index (M,): the flat (b * N + n) rows of the
        masked stacks -> their logits (M, D, K), teacher-forced over depth (Eqs. 8-9)."""
        b = codes.shape[0]
        h, cond_hidden = self.context(codes, masked, cond)
        stacks = codes.reshape(b * self.positions, self.depth_codes)[index]
        depth_in = self.depth_tokens(h.reshape(b * self.positions, -1)[index], stacks[:, :-1])
        logits = self.head(self.depth(depth_in))
        text_logits = self.text_head(cond_hidden[:, :-1]) if self.cfg.condition == "text" else None
        return ContextualOutput(logits, text_logits)
