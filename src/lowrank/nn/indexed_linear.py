"""``IndexedLinear``: a linear layer on a subset of input features and/or output features.

Structured compression (MoDeGPT, arXiv 2408.09632) removes hidden dimensions of matrix pairs.
Where the surrounding code fixes a dimension (attention heads reshape to ``head_dim``), the
removed dimensions are kept implicitly: the layer reads only ``in_index`` of its input and
writes only ``out_index`` of its output (zeros elsewhere), so it drops into any attention
implementation, rotary embeddings included (a zero rotary pair stays zero). Where nothing
fixes the width (the MLP's intermediate size) both indices are ``None`` and the layer is a
plain, smaller linear map.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, positive
from .protocol import StructuredLinear


@register_module_kind
class IndexedLinear(StructuredLinear):
    """``y[out_index] = W x[in_index] + b``, zeros at the other outputs.

    ``weight`` is (n_out x n_in), ``bias`` (n_out); ``in_index`` (n_in) / ``out_index`` (n_out)
    are ``int32`` buffers, or absent when the layer reads / writes every feature.
    """

    manifest_fields = (positive("in_features"), positive("out_features"), positive("n_in"),
                       positive("n_out"), BIAS, DTYPE)

    def __init__(self, in_features: int, out_features: int, n_in: int | None = None,
                 n_out: int | None = None, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        n_in = in_features if n_in is None else n_in
        n_out = out_features if n_out is None else n_out
        if not (1 <= n_in <= in_features and 1 <= n_out <= out_features):
            raise ValueError(f"IndexedLinear needs 1 <= n_in <= in_features and 1 <= n_out <= "
                             f"out_features, got n_in={n_in}, in={in_features}, "
                             f"n_out={n_out}, out={out_features}")
        self.in_features, self.out_features = in_features, out_features
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(n_out, n_in, **kw))
        self.bias = nn.Parameter(torch.zeros(n_out, **kw)) if bias else None
        self.in_index: torch.Tensor | None
        self.out_index: torch.Tensor | None
        self.register_buffer("in_index", None if n_in == in_features else
                             torch.arange(n_in, dtype=torch.int32, device=device))
        self.register_buffer("out_index", None if n_out == out_features else
                             torch.arange(n_out, dtype=torch.int32, device=device))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @classmethod
    def from_parts(cls, weight: torch.Tensor, bias: torch.Tensor | None, in_features: int,
                   out_features: int, in_index: torch.Tensor | None = None,
                   out_index: torch.Tensor | None = None) -> IndexedLinear:
        """Build from a (n_out x n_in) weight and the kept indices (``None``: all)."""
        n_out, n_in = weight.shape
        for index, kept, full, what in ((in_index, n_in, in_features, "in"),
                                        (out_index, n_out, out_features, "out")):
            if index is None and kept != full:
                raise ValueError(f"a layer that does not use every {what} feature needs "
                                 f"{what}_index ({kept} of {full} kept)")
            if index is not None and index.numel() != kept:
                raise ValueError(f"{what}_index has {index.numel()} entries for {kept} kept "
                                 f"{what} features")
        layer = cls(in_features, out_features, n_in, n_out, bias is not None,
                    device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
            if layer.in_index is not None:
                layer.in_index.copy_(in_index.to(torch.int32))
            if layer.out_index is not None:
                layer.out_index.copy_(out_index.to(torch.int32))
        return layer

    @property
    def n_in(self) -> int:
        """Input features read (columns of ``weight``)."""
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        """Output features written (rows of ``weight``)."""
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_index is not None:
            x = x.index_select(-1, self.in_index)
        y = nn.functional.linear(x, self.weight, self.bias)
        if self.out_index is None:
            return y
        out = y.new_zeros(*y.shape[:-1], self.out_features)
        out[..., self.out_index.long()] = y
        return out

    def dense_weight(self) -> torch.Tensor:
        """The represented (out_features x in_features) weight, zeros off the indices."""
        w = self.weight
        if self.in_index is not None:
            full = w.new_zeros(w.shape[0], self.in_features)
            full[:, self.in_index.long()] = w
            w = full
        if self.out_index is not None:
            full = w.new_zeros(self.out_features, w.shape[1])
            full[self.out_index.long()] = w
            w = full
        return w

    def dense_bias(self) -> torch.Tensor | None:
        """The (out_features) bias, zeros off ``out_index``."""
        if self.bias is None or self.out_index is None:
            return self.bias
        full = self.bias.new_zeros(self.out_features)
        full[self.out_index.long()] = self.bias
        return full

    def flops_per_token(self) -> int:
        return 2 * self.weight.numel()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"kept_in={self.weight.shape[1]}, kept_out={self.weight.shape[0]}, "
                f"bias={self.bias is not None}")
