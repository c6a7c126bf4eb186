"""``VQLinear``: a linear layer whose weight is vector-quantized through a low-rank code space.

The storage of LR^2VQ ("Learning Low-Rank Representations for Model Compression", 2022): the
weight (out x in) is cut into ``N = out * in / m`` sub-vectors of ``m`` consecutive input
weights; each sub-vector is stored as the index of one of ``k`` centroids that live in a
``d``-dimensional space, mapped back by ``w = mean + basis @ centroid`` (basis m x d). The
forward dequantizes the weight and runs a dense GEMM.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kinds import dtype_name, parse_dtype, positive_int, register_module_kind
from .sparse_dict import index_dtype


@register_module_kind
class VQLinear(nn.Module):
    """Parameters ``centroids`` (k x d), ``basis`` (m x d), ``mean`` (m), ``bias``; buffer
    ``codes`` (N, integer). ``in_features`` must be a multiple of ``m``."""

    def __init__(self, in_features: int, out_features: int, codebook: int, subvector: int,
                 dim: int, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if in_features % subvector:
            raise ValueError(f"in_features={in_features} is not a multiple of the sub-vector "
                             f"size {subvector}")
        if not 1 <= dim <= subvector:
            raise ValueError(f"dim must be in [1, subvector={subvector}], got {dim}")
        if codebook < 1:
            raise ValueError(f"codebook size must be >= 1, got {codebook}")
        self.in_features, self.out_features = in_features, out_features
        self.codebook, self.subvector, self.dim = codebook, subvector, dim
        kw = {"device": device, "dtype": dtype}
        n = out_features * in_features // subvector
        self.centroids = nn.Parameter(torch.zeros(codebook, dim, **kw))
        self.basis = nn.Parameter(torch.zeros(subvector, dim, **kw))
        self.mean = nn.Parameter(torch.zeros(subvector, **kw))
        self.register_buffer("codes", torch.zeros(n, dtype=index_dtype(codebook),
                                                  device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    @classmethod
    def from_parts(cls, codes: torch.Tensor, centroids: torch.Tensor, basis: torch.Tensor,
                   mean: torch.Tensor, out_features: int, in_features: int,
                   bias: torch.Tensor | None = None) -> VQLinear:
        k, d = centroids.shape
        layer = cls(in_features, out_features, k, basis.shape[0], d, bias is not None,
                    device=centroids.device, dtype=centroids.dtype)
        if codes.numel() != layer.codes.numel():
            raise ValueError(f"expected {layer.codes.numel()} codes, got {codes.numel()}")
        with torch.no_grad():
            layer.centroids.copy_(centroids)
            layer.basis.copy_(basis)
            layer.mean.copy_(mean)
            layer.codes.copy_(codes.reshape(-1).to(layer.codes.dtype))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The dequantized weight (out x in)."""
        book = self.mean + self.centroids @ self.basis.T  # (k, m): decoded codebook
        return book[self.codes.long()].reshape(self.out_features, self.in_features)

    weight_product = dense_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dense_weight(), self.bias)

    def to_linear(self) -> nn.Linear:
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                          device=self.centroids.device, dtype=self.centroids.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def code_bits(self) -> int:
        """Bits per code in the information-theoretic count, ``ceil(log2 k)`` (at least 1)."""
        return max(1, math.ceil(math.log2(self.codebook)))

    def storage_bits(self, value_bits: int | None = None) -> int:
        """Codes at ``ceil(log2 k)`` bits + centroids, basis and mean at ``value_bits`` (bias
        excluded): the paper's count."""
        vb = value_bits or torch.finfo(self.centroids.dtype).bits
        values = self.centroids.numel() + self.basis.numel() + self.mean.numel()
        return self.codes.numel() * self.code_bits() + vb * values

    def bits_per_weight(self, value_bits: int | None = None) -> float:
        return self.storage_bits(value_bits) / (self.out_features * self.in_features)

    def packed_parameters(self) -> int:
        """Weights encoded beyond the stored floating tensors, so that
        :func:`lowrank.nn.count_parameters` counts ``out * in`` (+ bias) as for a dense layer
        (quantization keeps the parameter count; the bytes shrink)."""
        stored = self.centroids.numel() + self.basis.numel() + self.mean.numel()
        return max(0, self.out_features * self.in_features - stored)

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.parameters(), *self.buffers()))

    def manifest_entry(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "codebook": self.codebook, "subvector": self.subvector, "dim": self.dim,
                "bias": self.bias is not None, "dtype": dtype_name(self.centroids.dtype)}

    @classmethod
    def from_manifest_entry(cls, entry: dict) -> VQLinear:
        return cls(positive_int(entry, "in_features"), positive_int(entry, "out_features"),
                   positive_int(entry, "codebook"), positive_int(entry, "subvector"),
                   positive_int(entry, "dim"), bias=bool(entry.get("bias", True)),
                   dtype=parse_dtype(entry.get("dtype", "float32")))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"codebook={self.codebook}, subvector={self.subvector}, dim={self.dim}")
