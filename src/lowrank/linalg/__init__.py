"""Pure functions on tensors: truncated and randomized SVD, Gram roots, whitened truncation."""

from .svd import TruncatedSVD, randomized_svd, split_singular_values, truncated_svd
from .whiten import (
    DiagonalRoot,
    GramRoot,
    WhitenedSVD,
    sqrt_gram,
    whitened_lowrank,
    whitened_svd,
)

__all__ = [
    "DiagonalRoot",
    "GramRoot",
    "TruncatedSVD",
    "WhitenedSVD",
    "randomized_svd",
    "split_singular_values",
    "sqrt_gram",
    "truncated_svd",
    "whitened_lowrank",
    "whitened_svd",
]
