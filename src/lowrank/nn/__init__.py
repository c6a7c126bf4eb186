"""Structured layers (low-rank, quantized, sparse, residual, factorized embedding and
convolution), the protocol they share (:mod:`.protocol`), their checkpoint kinds
(:mod:`.kinds`, :mod:`.manifest`) and parameter / byte / FLOP accounting."""

from .accounting import (
    break_even_rank,
    count_bytes,
    count_parameters,
    linear_flops,
    linear_params,
    structured_layers,
)
from .cp_conv import CPConv2d
from .factorized_embedding import FactorizedEmbedding
from .indexed_linear import IndexedLinear
from .linformer import LinformerSelfAttention
from .lost import LOSTLinear
from .lowrank_linear import LowRankLinear
from .ordered import OrderedDropout, OrderedLowRankLinear
from .protocol import StructuredConv2d, StructuredLayer, StructuredLinear, dense_weight_of
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
    "StructuredConv2d",
    "StructuredLayer",
    "StructuredLinear",
    "TFNO2d",
    "TiledSparseMatrix",
    "Tucker2Conv2d",
    "VQLinear",
    "break_even_rank",
    "count_bytes",
    "count_parameters",
    "dense_weight_of",
    "linear_flops",
    "linear_params",
    "structured_layers",
]
