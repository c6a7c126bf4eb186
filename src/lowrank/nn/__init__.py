"""Modules with low-rank structure and their accounting."""

from .accounting import (
    break_even_rank,
    count_bytes,
    count_parameters,
    linear_flops,
    linear_params,
)
from .lowrank_linear import LowRankLinear

__all__ = [
    "LowRankLinear",
    "break_even_rank",
    "count_bytes",
    "count_parameters",
    "linear_flops",
    "linear_params",
]
