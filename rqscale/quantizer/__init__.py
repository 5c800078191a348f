"""Residual quantization: pure math with a round-trip API; collectives are injected."""
from rqscale.quantizer.codebook import EMACodebook
from rqscale.quantizer.collective import Collective, LocalCollective, TorchDistCollective
from rqscale.quantizer.residual import QuantizerOutput, ResidualQuantizer

__all__ = ["Collective", "EMACodebook", "LocalCollective", "QuantizerOutput", "ResidualQuantizer", "TorchDistCollective"]
