"""Linear algebra on tensors, below every model-facing package: truncated and randomized SVD
(``svd``), Gram roots and whitened truncation (``whiten``), output-feature PCA (``output_pca``),
OMP and K-SVD (``omp``), ridge-leverage column selection (``nystrom``), k-means (``kmeans``),
and the numpy / torch array convention with mode products (``arrays``)."""

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
