"""Architectures only: no losses, parallelism or checkpointing."""
from rqscale.data.dq_sequence import SequenceLayout
from rqscale.models.contextual import ContextualOutput, ContextualRQTransformer
from rqscale.models.dqtransformer import DQTransformer, DQTransformerOutput
from rqscale.models.dqvae import DQVAE, DQVAEOutput
from rqscale.models.rqtransformer import RQTransformer, RQTransformerOutput
from rqscale.models.rqvae import RQVAE, RQVAEOutput

STAGE1_MODELS = {"rq": RQVAE, "dq": DQVAE}  # rqvae.kind
STAGE2_MODELS = {"ar": RQTransformer, "contextual": ContextualRQTransformer, "dq": DQTransformer}  # stage2.model.kind


def build_stage1_model(rqvae_cfg) -> RQVAE:
    """The stage-1 family rqvae.kind names: the RQ-VAE (CVPR 2022) or the DQ-VAE (CVPR 2023)."""
    return STAGE1_MODELS[rqvae_cfg.kind](rqvae_cfg)


def build_stage2_model(model_cfg, code_shape, num_codes: int, code_dim: int) -> RQTransformer:
    """The stage-2 family stage2.model.kind names: the RQ-Transformer (CVPR 2022) or the Contextual
    RQ-Transformer (NeurIPS 2022), on the RQ-VAE's code shape and codebook, or the DQ-Transformer
    (CVPR 2023) on the DQ-VAE's code map (2h x 2w under h x w regions)."""
    if model_cfg.kind == "dq":
        return DQTransformer(model_cfg, SequenceLayout(code_shape[0] // 2, code_shape[1] // 2, num_codes))
    return STAGE2_MODELS[model_cfg.kind](model_cfg, tuple(code_shape), num_codes, code_dim)


__all__ = ["ContextualOutput", "ContextualRQTransformer", "DQTransformer", "DQTransformerOutput", "DQVAE", "DQVAEOutput", "RQTransformer", "RQTransformerOutput", "RQVAE",
           "RQVAEOutput", "STAGE1_MODELS", "STAGE2_MODELS", "build_stage1_model", "build_stage2_model"]
