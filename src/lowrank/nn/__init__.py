"""Modules with low-rank structure and their accounting."""

from .accounting import (
    break_even_rank,
    count_bytes,
    count_parameters,
    linear_flops,
    linear_params,
)
from .factorized_embedding import FactorizedEmbedding
from .lowrank_linear import LowRankLinear
from .quantized import QuantizedLinear
from .residual import ResidualLowRankLinear

__all__ = [
    "FactorizedEmbedding",
    "LowRankLinear",
    "QuantizedLinear",
    "ResidualLowRankLinear",
    "break_even_rank",
    "count_bytes",
    "count_parameters",
    "linear_flops",
    "linear_params",
]
