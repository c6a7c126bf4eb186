"""``SparseDictLinear``: ``y = C (D x) + b`` with a dense dictionary and row-sparse coefficients.

The layer of CoSpaDi ("CoSpaDi: Compressing LLMs via Calibration-Guided Sparse Dictionary
Learning", arXiv 2509.22075) in PyTorch orientation: ``D`` (k x in) projects the input onto
``k`` atoms and every output row combines exactly ``s`` of them. The coefficients are stored as
``s`` values and ``s`` atom indices per output row (ELL layout: ``uint8`` indices when
``k <= 256``, else ``int16``), and the forward follows the load-as-sparse, compute-as-dense idea
of Flash-LLM: the coefficient matrix is expanded once per call (one scatter) and applied with a
dense GEMM, which on a CPU beats any sparse kernel at the densities CoSpaDi uses (s/k about 1/2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, positive
from .protocol import StructuredLinear


def index_dtype(num_atoms: int) -> torch.dtype:
    """Smallest stored integer type for atom indices ``0 .. num_atoms - 1``."""
    if num_atoms <= 256:
        return torch.uint8
    if num_atoms <= 32768:
        return torch.int16
    return torch.int32


def index_bits(num_atoms: int) -> int:
    """Bits per stored atom index (what the layer's buffers really use)."""
    return torch.iinfo(index_dtype(num_atoms)).bits


@register_module_kind
class SparseDictLinear(StructuredLinear):
    """Linear map through ``num_atoms`` dictionary atoms, ``sparsity`` of them per output.

    Parameters: ``dictionary`` (num_atoms x in), ``values`` (out x sparsity) and ``bias``;
    buffer ``indices`` (out x sparsity, integer). Weight represented: ``C @ dictionary`` where
    row ``i`` of ``C`` has ``values[i]`` at columns ``indices[i]``. :meth:`num_parameters`
    counts the stored floating values (dictionary, coefficient values, bias), not the indices.
    """

    manifest_fields = (positive("in_features"), positive("out_features"), positive("num_atoms"),
                       positive("sparsity"), BIAS, DTYPE)

    def __init__(self, in_features: int, out_features: int, num_atoms: int, sparsity: int,
                 bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if min(in_features, out_features, num_atoms) < 1:
            raise ValueError(f"SparseDictLinear needs positive sizes, got in={in_features}, "
                             f"out={out_features}, num_atoms={num_atoms}")
        if not 1 <= sparsity <= num_atoms:
            raise ValueError(f"sparsity must be in [1, num_atoms={num_atoms}], got {sparsity}")
        self.in_features, self.out_features = in_features, out_features
        self.num_atoms, self.sparsity = num_atoms, sparsity
        kw = {"device": device, "dtype": dtype}
        self.dictionary = nn.Parameter(torch.empty(num_atoms, in_features, **kw))
        self.values = nn.Parameter(torch.empty(out_features, sparsity, **kw))
        self.register_buffer("indices", torch.zeros(out_features, sparsity,
                                                    dtype=index_dtype(num_atoms), device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.dictionary, a=math.sqrt(5))
        nn.init.uniform_(self.values, -1 / math.sqrt(self.sparsity), 1 / math.sqrt(self.sparsity))
        with torch.no_grad():
            ramp = torch.arange(self.sparsity, device=self.indices.device)
            self.indices.copy_(ramp.expand(self.out_features, -1).to(self.indices.dtype))

    @classmethod
    def from_parts(cls, dictionary: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                   bias: torch.Tensor | None = None) -> SparseDictLinear:
        """Build from a dictionary (k x in), indices and values (out x s); copied."""
        if dictionary.ndim != 2 or indices.shape != values.shape or indices.ndim != 2:
            raise ValueError(f"need dictionary (k x in) and indices/values (out x s) of one "
                             f"shape, got {tuple(dictionary.shape)}, {tuple(indices.shape)}, "
                             f"{tuple(values.shape)}")
        k = dictionary.shape[0]
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= k):
            raise ValueError(f"atom indices must lie in [0, {k})")
        layer = cls(dictionary.shape[1], values.shape[0], k, values.shape[1], bias is not None,
                    device=dictionary.device, dtype=dictionary.dtype)
        with torch.no_grad():
            layer.dictionary.copy_(dictionary)
            layer.values.copy_(values)
            layer.indices.copy_(indices.to(layer.indices.dtype))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def coefficients(self) -> torch.Tensor:
        """The dense coefficient matrix ``C`` (out x num_atoms)."""
        out = torch.zeros(self.out_features, self.num_atoms, dtype=self.values.dtype,
                          device=self.values.device)
        return out.scatter_add(1, self.indices.long(), self.values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nn.functional.linear(x, self.dictionary)
        return nn.functional.linear(z, self.coefficients(), self.bias)

    def dense_weight(self) -> torch.Tensor:
        """The represented dense weight ``C @ D`` (out x in)."""
        return self.coefficients() @ self.dictionary

    def index_bits(self) -> int:
        return index_bits(self.num_atoms)

    def budget_parameters(self, value_bits: int | None = None) -> int:
        """Parameters plus the index storage expressed in values of ``value_bits`` bits
        (default: this layer's dtype), rounded up: the honest size for budget comparisons."""
        bits = value_bits or torch.finfo(self.values.dtype).bits
        idx = math.ceil(self.out_features * self.sparsity * self.index_bits() / bits)
        return self.num_parameters() + idx

    def flops_per_token(self) -> int:
        """Multiply-accumulates x 2 of the dictionary projection and the sparse combination."""
        return 2 * (self.num_atoms * self.in_features + self.out_features * self.sparsity)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_atoms={self.num_atoms}, sparsity={self.sparsity}, "
                f"bias={self.bias is not None}")
