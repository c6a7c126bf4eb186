"""Modules with low-rank structure and their accounting."""

from .accounting import (
    break_even_rank,
    count_bytes,
    count_parameters,
    linear_flops,
    linear_params,
)
from .cp_conv import CPConv2d
from .factorized_embedding import FactorizedEmbedding
from .indexed_linear import IndexedLinear
from .linformer import LinformerSelfAttention
from .lost import LOSTLinear
from .lowrank_linear import LowRankLinear
from .ordered import OrderedDropout, OrderedLowRankLinear
from .quantized import QuantizedLinear
from .residual import ResidualLowRankLinear
from .sparse_dict import SparseDictLinear
from .sparse_kernel import TiledSparseMatrix
from .sparse_lowrank import SparseLowRankLinear
from .spectral_conv import FactorizedSpectralConv2d, MultigridPatching2D, TFNO2d
from .tucker_conv import Tucker2Conv2d
from .vq_linear import VQLinear

__all__ = [
    "CPConv2d",
    "FactorizedEmbedding",
    "FactorizedSpectralConv2d",
    "IndexedLinear",
    "LOSTLinear",
    "LinformerSelfAttention",
    "LowRankLinear",
    "MultigridPatching2D",
    "OrderedDropout",
    "OrderedLowRankLinear",
    "QuantizedLinear",
    "ResidualLowRankLinear",
    "SparseDictLinear",
    "SparseLowRankLinear",
    "TFNO2d",
    "TiledSparseMatrix",
    "Tucker2Conv2d",
    "VQLinear",
    "break_even_rank",
    "count_bytes",
    "count_parameters",
    "linear_flops",
    "linear_params",
]
