"""DQ-Transformer (Huang et al., CVPR 2023, Sec. 3.2; R = CrossmodalGroup/DynamicVectorQuantization,
stackgpt.py): a causal Position-Transformer and a causal Content-Transformer over the coarse-to-fine
sequence of rqscale/data/dq_sequence.py. Architecture only; the task is rqscale/tasks/dq_stage2.py,
decoding rqscale/sampling/dq_sampler.py.

  x_i  = e_content(c_i) + e_pos^{s_i}(p_i) + PE(i) + e_seg(s_i)       (R: shared content, per-segment positions)
  h_i  = PositionTransformer(x_1..x_i)         -> Head_pos(h_i) predicts p_{i+1}
  g_i  = ContentTransformer(u_1..u_i),  u_i = h_i + e_pos^{s_{i+1}}(p_{i+1})   -> Head_content(g_i) predicts c_{i+1}

One position head over the fine vocabulary serves both segments (R). Heads are LayerNorm + Linear
without bias, and neither stack ends in a LayerNorm (R). Class conditioning: R writes the class into
the content and position vocabularies of both segments' SOS; here a separate Embedding(classes + 1, d)
replaces the content embedding at SOS tokens (row `classes`: the null class for guidance). That keeps the
large model at 612.2M, within 1% of the paper's 608M, where R's vocabulary layout gives 616.3M (+1.4%).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from rqscale.config.schema import RQTransformerConfig
from rqscale.data.dq_sequence import COARSE, SequenceLayout
from rqscale.models.rqtransformer import _init_weights
from rqscale.models.transformer import CausalTransformer, Dropout, KVCache


class DQTransformerOutput(NamedTuple):
    """A NamedTuple for ZeRO-3's output hooks (as RQTransformerOutput)."""

    position_logits: torch.Tensor  # (..., P + 3): the next token's position
    content_logits: torch.Tensor  # (..., K + 3): the next token's content


class Tokens(NamedTuple):
    """Input tokens and what the model reads of the next one, any leading shape."""

    content: torch.Tensor
    position: torch.Tensor
    segment: torch.Tensor
    index: torch.Tensor  # the token's place in its own sequence (absolute position)
    next_position: torch.Tensor
    next_segment: torch.Tensor
    cond: Optional[torch.Tensor] = None  # the sample's class label per token


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out, bias=False))  # R: no bias


class DQTransformer(nn.Module):
    """stage2.model.spatial_layers is the Position-Transformer's depth, depth_layers the
    Content-Transformer's (paper: 6 + 18 base, 6 + 42 large)."""

    def __init__(self, cfg: RQTransformerConfig, layout: SequenceLayout):
        super().__init__()
        if cfg.condition == "text":
            raise ValueError("stage2.model.condition: text is not built for the DQ-Transformer; use none or class")
        self.cfg, self.layout = cfg, layout
        self.depth_codes, self.num_codes, self.positions = 1, layout.num_codes, layout.map_positions
        d = cfg.embed_dim
        self.content_emb = nn.Embedding(layout.vocab_size("content"), d)
        self.coarse_pos_emb = nn.Embedding(layout.vocab_size("coarse"), d)
        self.fine_pos_emb = nn.Embedding(layout.vocab_size("fine"), d)
        self.abs_pos = nn.Parameter(torch.zeros(cfg.max_length, d))  # R: pos_emb, block_size 2048
        self.segment_emb = nn.Embedding(2, d)
        if cfg.condition == "class":
            self.class_emb = nn.Embedding(cfg.num_classes + 1, d)
        self.drop = Dropout(cfg.embd_dropout)
        stack = dict(dim=d, heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, attn_dropout=cfg.attn_dropout,
                     resid_dropout=cfg.resid_dropout, final_norm=False)
        self.position_stack = CausalTransformer(layers=cfg.spatial_layers, **stack)
        self.content_stack = CausalTransformer(layers=cfg.depth_layers, **stack)
        self.position_head = _head(d, layout.vocab_size("fine"))
        self.content_head = _head(d, layout.vocab_size("content"))
        self.set_checkpointing(cfg.activation_checkpointing)
        self.apply(_init_weights)
        nn.init.normal_(self.abs_pos, 0.0, 0.02)

    def set_checkpointing(self, enabled: bool) -> None:
        self.position_stack.checkpointing = self.content_stack.checkpointing = enabled

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def segment_position(self, position: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        """e_pos^s(p): the coarse table for coarse tokens, the fine one for the rest."""
        coarse = self.coarse_pos_emb(position.clamp(max=self.layout.vocab_size("coarse") - 1))
        return torch.where((segment == COARSE).unsqueeze(-1), coarse, self.fine_pos_emb(position))

    def input_tokens(self, t: Tokens) -> torch.Tensor:
        """x_i: content (the class at SOS, when class-conditional) + position + absolute + segment."""
        content = self.content_emb(t.content)
        if t.cond is not None:
            is_sos = (t.content == self.layout.sos("content")).unsqueeze(-1)
            content = torch.where(is_sos, self.class_emb(t.cond), content)
        return content + self.segment_position(t.position, t.segment) + self.abs_pos[t.index] + self.segment_emb(t.segment)

    def content_inputs(self, hidden: torch.Tensor, t: Tokens) -> torch.Tensor:
        """u_i = h_i + e_pos(p_{i+1}) (R: no absolute, segment term or dropout here)."""
        return hidden + self.segment_position(t.next_position, t.next_segment)

    def forward(self, tokens: Tokens, attend: Optional[torch.Tensor] = None) -> DQTransformerOutput:
        """Teacher-forced logits for tokens of shape (R, C); `attend` (R, 1, C, C) keeps packed samples apart."""
        hidden = self.position_stack(self.drop(self.input_tokens(tokens)), attend=attend)
        content = self.content_stack(self.content_inputs(hidden, tokens), attend=attend)
        return DQTransformerOutput(self.position_head(hidden), self.content_head(content))

    # ---- incremental steps for KV-cached sampling ----------------------------------------------
    def step(self, tokens: Tokens, position_cache: Optional[KVCache]) -> torch.Tensor:
        """Hidden states of the Position-Transformer for tokens (B, n) (the last n of the prefix when cached)."""
        return self.position_stack(self.input_tokens(tokens), position_cache)

    def new_caches(self, batch: int, device, dtype) -> tuple[KVCache, KVCache]:
        n = self.layout.max_length
        return (self.position_stack.new_cache(batch, n, device, dtype), self.content_stack.new_cache(batch, n, device, dtype))
