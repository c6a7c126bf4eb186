"""``VQLinear``: a linear layer whose weight is vector-quantized through a low-rank code space.

The storage of LR^2VQ ("Learning Low-Rank Representations for Model Compression", 2022): the
weight (out x in) is cut into ``N = out * in / m`` sub-vectors of ``m`` consecutive input
weights; each sub-vector is stored as the index of one of ``k`` centroids that live in a
``d``-dimensional space, mapped back by ``w = mean + basis @ centroid`` (basis m x d). The
codes are bit-packed at
``ceil(log2 k)`` bits each, so the stored bytes are the paper's bit count rounded up to a
byte. The forward unpacks the codes, dequantizes the weight and runs a dense GEMM.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, optional, positive
from .protocol import StructuredLinear
from .sparse_dict import index_dtype


def code_bits(codebook: int) -> int:
    """Bits per packed code, ``ceil(log2 k)`` (at least 1)."""
    return max(1, math.ceil(math.log2(codebook)))


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` codes of ``bits`` bits, packed back to back."""
    return -(-count * bits // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Little-endian bit-packing of non-negative integer ``codes`` (< 2**bits, bits <= 32)
    into a ``uint8`` tensor of :func:`packed_bytes` bytes."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    c = codes.reshape(-1).to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2 ** bits):
        raise ValueError(f"codes must lie in [0, 2**{bits}), got [{int(c.min())}, "
                         f"{int(c.max())}]")
    n = c.numel()
    out = torch.zeros(packed_bytes(n, bits) + 5, dtype=torch.int64, device=c.device)
    start = torch.arange(n, dtype=torch.int64, device=c.device) * bits
    byte, shift = start >> 3, start & 7
    shifted = c << shift  # the code's bits placed at their offset inside a 5-byte window
    for t in range(5):  # codes occupy disjoint bits, so adding the bytes is OR-ing them
        out.index_add_(0, byte + t, (shifted >> (8 * t)) & 0xFF)
    return out[:packed_bytes(n, bits)].to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` codes as ``int64``."""
    buf = torch.cat([packed.reshape(-1).to(torch.int64),
                     torch.zeros(5, dtype=torch.int64, device=packed.device)])
    start = torch.arange(count, dtype=torch.int64, device=packed.device) * bits
    byte, shift = start >> 3, start & 7
    window = torch.zeros(count, dtype=torch.int64, device=packed.device)
    for t in range(5):
        window |= buf[byte + t] << (8 * t)
    return (window >> shift) & ((1 << bits) - 1)


@register_module_kind
class VQLinear(StructuredLinear):
    """Parameters ``centroids`` (k x d), ``basis`` (m x d), ``mean`` (m) and ``bias``;
    buffer ``codes`` (the N codes bit-packed at ``ceil(log2 k)`` bits, as ``uint8``).
    ``in_features`` must be a multiple of ``m``.

    ``packed=False`` builds the earlier layout (one code per element of the smallest integer
    type holding it), kept so that models saved with it still load.
    """

    manifest_fields = (positive("in_features"), positive("out_features"), positive("codebook"),
                       positive("subvector"), positive("dim"), BIAS, DTYPE,
                       optional("packed", False, bool))  # entries before packing: False

    def __init__(self, in_features: int, out_features: int, codebook: int, subvector: int,
                 dim: int, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, packed: bool = True) -> None:
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
        self.packed = packed
        kw = {"device": device, "dtype": dtype}
        self.num_codes = out_features * in_features // subvector
        self.centroids = nn.Parameter(torch.zeros(codebook, dim, **kw))
        self.basis = nn.Parameter(torch.zeros(subvector, dim, **kw))
        self.mean = nn.Parameter(torch.zeros(subvector, **kw))
        if packed:
            codes = torch.zeros(packed_bytes(self.num_codes, self.code_bits()),
                                dtype=torch.uint8, device=device)
        else:
            codes = torch.zeros(self.num_codes, dtype=index_dtype(codebook), device=device)
        self.register_buffer("codes", codes)
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    @classmethod
    def from_parts(cls, codes: torch.Tensor, centroids: torch.Tensor, basis: torch.Tensor,
                   mean: torch.Tensor, out_features: int, in_features: int,
                   bias: torch.Tensor | None = None) -> VQLinear:
        """Build from the N codes (integers in [0, k)), the centroids (k x d), basis (m x d)
        and mean (m)."""
        k, d = centroids.shape
        layer = cls(in_features, out_features, k, basis.shape[0], d, bias is not None,
                    device=centroids.device, dtype=centroids.dtype)
        if codes.numel() != layer.num_codes:
            raise ValueError(f"expected {layer.num_codes} codes, got {codes.numel()}")
        with torch.no_grad():
            layer.centroids.copy_(centroids)
            layer.basis.copy_(basis)
            layer.mean.copy_(mean)
            layer.codes.copy_(pack_codes(codes.to(layer.codes.device), layer.code_bits()))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def code_indices(self) -> torch.Tensor:
        """The N codes as ``int64``."""
        if not self.packed:
            return self.codes.long()
        return unpack_codes(self.codes, self.code_bits(), self.num_codes)

    def dense_weight(self) -> torch.Tensor:
        """The dequantized weight (out x in)."""
        book = self.mean + self.centroids @ self.basis.T  # (k, m): decoded codebook
        return book[self.code_indices()].reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dense_weight(), self.bias)

    def code_bits(self) -> int:
        """Bits per code in the information-theoretic count, ``ceil(log2 k)`` (at least 1)."""
        return code_bits(self.codebook)

    def _values(self) -> int:
        return self.centroids.numel() + self.basis.numel() + self.mean.numel()

    def storage_bits(self, value_bits: int | None = None) -> int:
        """Codes at ``ceil(log2 k)`` bits + centroids, basis and mean at ``value_bits``
        (bias excluded): the paper's count."""
        vb = value_bits or torch.finfo(self.centroids.dtype).bits
        return self.num_codes * self.code_bits() + vb * self._values()

    def bits_per_weight(self, value_bits: int | None = None) -> float:
        return self.storage_bits(value_bits) / (self.out_features * self.in_features)

    def num_parameters(self) -> int:
        """``out * in`` (+ bias), as for a dense layer: quantization keeps the parameter count
        and shrinks the bytes (at least the stored floating values, for tiny layers)."""
        return max(self.out_features * self.in_features, self._values()) + (
            self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"codebook={self.codebook}, subvector={self.subvector}, dim={self.dim}, "
                f"code_bits={self.code_bits()}")
