"""Architectures only: no losses, parallelism or checkpointing."""
from rqscale.models.rqvae import RQVAE, RQVAEOutput

__all__ = ["RQVAE", "RQVAEOutput"]
