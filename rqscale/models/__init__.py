"""Architectures only: no losses, parallelism or checkpointing."""
from rqscale.models.rqtransformer import RQTransformer, RQTransformerOutput
from rqscale.models.rqvae import RQVAE, RQVAEOutput

__all__ = ["RQTransformer", "RQTransformerOutput", "RQVAE", "RQVAEOutput"]
