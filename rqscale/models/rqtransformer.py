"""RQ-Transformer (Sec. 3.2.2, Eqs. 8-14): a causal spatial transformer over T positions and a causal
depth transformer over the D codes of each position. Architecture only.

Inputs reuse the frozen RQ-VAE codebook e(k) (a buffer, never trained), through a Linear per stack:
  u_1 = start / class embedding + PE_T(1);   u_t = Lin_s(sum_d e(S_{t-1,d})) + PE_T(t)       (Eq. 10)
  h_t = SpatialTransformer(u_1..u_t)                                                         (Eq. 11)
  v_t1 = h_t + PE_D(1);   v_td = Lin_d(sum_{d'<d} e(S_td')) + PE_D(d)                        (Eq. 12)
  p_td = softmax(Head(DepthTransformer(v_t1..v_td)))                                          (Eq. 13)
Text conditioning (CC-3M, A.2): L caption tokens are prepended; the last one predicts position 1,
so the spatial sequence has L + T - 1 = 95 tokens, and a text head predicts the next caption token.
"""
from __future__ import annotations


from typing import NamedTuple, Optional

import torch
from torch import nn

from rqscale.config.schema import RQTransformerConfig
from rqscale.models.transformer import CausalTransformer, Dropout, KVCache


class RQTransformerOutput(NamedTuple):
    """A NamedTuple, not a dataclass: ZeRO-3 finds the tensors of a module's output to hook the
    re-gathering of its parameters for backward, and it looks inside tuples but not dataclasses."""

    logits: torch.Tensor  # (B, T, D, K)
    text_logits: Optional[torch.Tensor] = None  # (B, L-1, V): token i predicts token i+1


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out))


class RQTransformer(nn.Module):
    SPATIAL_CAUSAL = True  # Eq. 11: h_t sees positions up to t (the contextual model's spatial stack attends both ways)

    def __init__(self, cfg: RQTransformerConfig, code_shape: tuple, num_codes: int, code_dim: int):
        super().__init__()
        self.cfg = cfg
        h, w, self.depth_codes = self.code_shape = tuple(code_shape)
        self.positions, self.num_codes = h * w, num_codes
        ne = cfg.embed_dim
        self.register_buffer("codebook", torch.zeros(num_codes, code_dim))  # e(k), frozen RQ-VAE codebook
        self.spatial_proj = nn.Linear(code_dim, ne)  # ref: separate input Linears for the spatial
        self.depth_proj = nn.Linear(code_dim, ne)  # and the depth transformer
        self.pos_spatial = nn.Parameter(torch.zeros(self.positions, ne))  # PE_T
        self.pos_depth = nn.Parameter(torch.zeros(self.depth_codes, ne))  # PE_D
        self._build_condition(cfg, ne)
        self.drop = Dropout(cfg.embd_dropout)
        stack = dict(dim=ne, heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, attn_dropout=cfg.attn_dropout, resid_dropout=cfg.resid_dropout)
        # No closing LayerNorm on either stack (ref): h_t enters Eq. 12 as is; the head has its own LN.
        self.spatial = CausalTransformer(layers=cfg.spatial_layers, final_norm=False, causal=self.SPATIAL_CAUSAL, **stack)
        self.depth = CausalTransformer(layers=cfg.depth_layers, final_norm=False, **stack)
        self.head = _head(ne, num_codes)  # one LN + Linear shared across depths
        self._build_extra(cfg, code_dim)
        self.set_checkpointing(cfg.activation_checkpointing)
        self.apply(_init_weights)

    def _build_condition(self, cfg: RQTransformerConfig, ne: int) -> None:
        if cfg.condition == "none":
            self.start = nn.Parameter(torch.zeros(1, ne))
        elif cfg.condition == "class":
            self.class_emb = nn.Embedding(cfg.num_classes + 1, ne)  # row num_classes = null class (CFG)
        else:
            self.text_emb = nn.Embedding(cfg.text_vocab, ne)
            self.pos_text = nn.Parameter(torch.zeros(cfg.text_length, ne))
            self.text_head = _head(ne, cfg.text_vocab)

    def _build_extra(self, cfg: RQTransformerConfig, code_dim: int) -> None:
        """Parameters a subclass adds, created before the weights are initialised (none here)."""

    def set_checkpointing(self, enabled: bool) -> None:
        self.spatial.checkpointing = self.depth.checkpointing = enabled

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    # ---- inputs -------------------------------------------------------------------------------
    def condition_tokens(self, batch: int, cond: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, Lc, n_e) tokens that start the spatial sequence; the last one predicts position 1."""
        kind = self.cfg.condition
        if kind == "none":
            return (self.start + self.pos_spatial[:1]).expand(batch, 1, -1)
        if cond is None:
            raise ValueError(f"a {kind}-conditional RQ-Transformer needs a condition")
        if kind == "class":
            return (self.class_emb(cond) + self.pos_spatial[0]).unsqueeze(1)
        return self.text_emb(cond) + self.pos_text

    def code_tokens(self, codes: torch.Tensor, first_position: int) -> torch.Tensor:
        """Linear(sum_d e(S_t,d)) + PE_T(t + 1) for codes (B, n, D) at positions first..first+n-1."""
        n = codes.shape[1]
        # The codebook buffer stays fp32 (a frozen copy of stage 1's); cast the sum to the weights' dtype.
        summed = self.codebook[codes].sum(dim=-2).to(self.pos_spatial.dtype)
        return self.spatial_proj(summed) + self.pos_spatial[first_position + 1 : first_position + 1 + n]

    def depth_tokens(self, context: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """[h + PE_D(1), Linear(e_1) + PE_D(2), Linear(e_1 + e_2) + PE_D(3), ...] for codes (N, d)."""
        tokens = [context.unsqueeze(1)]
        if codes.shape[1] > 0:
            cumulative = self.codebook[codes].cumsum(dim=1).to(self.pos_depth.dtype)  # partial sums z^(d), Eq. 12
            tokens.append(self.depth_proj(cumulative))
        x = torch.cat(tokens, dim=1)
        return x + self.pos_depth[: x.shape[1]]

    # ---- teacher-forced forward ---------------------------------------------------------------
    def forward(self, codes: torch.Tensor, cond: Optional[torch.Tensor] = None) -> RQTransformerOutput:
        """codes (B, H, W, D) or (B, T, D) -> logits (B, T, D, K), all positions in parallel."""
        b = codes.shape[0]
        codes = codes.reshape(b, self.positions, self.depth_codes)
        prefix = self.condition_tokens(b, cond)
        spatial_in = torch.cat([prefix, self.code_tokens(codes[:, :-1], 0)], dim=1)
        hidden = self.spatial(self.drop(spatial_in))
        lc = prefix.shape[1]
        context = hidden[:, lc - 1 :]  # h_1..h_T
        depth_in = self.depth_tokens(context.reshape(b * self.positions, -1), codes[..., :-1].reshape(b * self.positions, -1))
        out = self.depth(depth_in)  # ref: embedding dropout on the spatial sequence only
        logits = self.head(out).view(b, self.positions, self.depth_codes, self.num_codes)
        text_logits = self.text_head(hidden[:, : lc - 1]) if self.cfg.condition == "text" else None
        return RQTransformerOutput(logits, text_logits)

    # ---- incremental steps for KV-cached sampling ----------------------------------------------
    def spatial_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed new spatial tokens (B, n, n_e); returns the context of the last one, (B, n_e)."""
        return self.spatial(tokens, cache)[:, -1]

    def depth_step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed one depth token (B, 1, n_e); returns logits (B, K) for the next code."""
        return self.head(self.depth(token, cache)[:, -1])

    def depth_token(self, codes_so_far: torch.Tensor) -> torch.Tensor:
        """Linear(sum of the codes so far) + PE_D(d+1), for codes (B, d), d >= 1: shape (B, 1, n_e)."""
        d = codes_so_far.shape[1]
        summed = self.codebook[codes_so_far].sum(dim=1)
        return (self.depth_proj(summed) + self.pos_depth[d]).unsqueeze(1)


def _init_weights(module: nn.Module) -> None:
    # GPT-style init (N(0, 0.02), zero biases), which the ref's minGPT-derived blocks use.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, RQTransformer):
        for name in ("pos_spatial", "pos_depth", "start", "pos_text", "pos_cond", "mask_emb"):
            if hasattr(module, name):
                nn.init.normal_(getattr(module, name), 0.0, 0.02)
