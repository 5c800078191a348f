"""Residual quantization: pure math with a round-trip API; collectives are injected."""
from rqscale.quantizer.codebook import EMACodebook, code_histogram
from rqscale.quantizer.collective import Collective, LocalCollective
from rqscale.quantizer.residual import QuantizerOutput, ResidualQuantizer

__all__ = ["Collective", "EMACodebook", "code_histogram", "LocalCollective", "QuantizerOutput", "ResidualQuantizer"]
