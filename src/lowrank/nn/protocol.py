"""The structured-layer protocol: one contract for every low-rank, quantized, sparse, residual,
factorized-embedding and factorized-convolution layer in :mod:`lowrank.nn`.

A :class:`StructuredLayer` stores a dense weight in another form (factors, codes, sparse parts)
and declares

* :meth:`~StructuredLayer.dense_weight`: the weight it computes, laid out as the ``weight`` of
  the equivalent dense module;
* :meth:`~StructuredLayer.to_dense_module`: that dense module (``nn.Linear``, ``nn.Conv2d`` or
  ``nn.Embedding``) with equal outputs, which :func:`lowrank.to_dense` swaps in;
* :meth:`~StructuredLayer.num_parameters` / :meth:`~StructuredLayer.num_bytes`: the weights it
  encodes and the bytes it stores, which :func:`lowrank.nn.count_parameters` and
  :func:`lowrank.nn.count_bytes` add up;
* ``manifest_fields``: its constructor arguments (:mod:`lowrank.nn.manifest`), from which
  :meth:`~StructuredLayer.manifest_entry` and :meth:`~StructuredLayer.from_manifest_entry`
  write and read its ``lowrank.json`` entry.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from itertools import chain
from typing import Any, ClassVar

import torch
from torch import nn

from .manifest import Field


class StructuredLayer(nn.Module, ABC):
    """A layer whose weight is stored in structured form (module docstring)."""

    manifest_fields: ClassVar[tuple[Field, ...]] = ()

    @abstractmethod
    def dense_weight(self) -> torch.Tensor:
        """The weight this layer computes, shaped as the dense module's ``weight``."""

    @abstractmethod
    def to_dense_module(self) -> nn.Module:
        """The equivalent dense module, its weight :meth:`exact_dense_weight`."""

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the stored tensors."""
        return next(t.dtype for t in chain(self.parameters(), self.buffers())
                    if t.is_floating_point())

    @property
    def device(self) -> torch.device:
        return next(chain(self.parameters(), self.buffers())).device

    def exact_dense_weight(self) -> torch.Tensor:
        """:meth:`dense_weight` evaluated on a float64 copy of the layer and rounded once to
        :attr:`dtype` (what :meth:`to_dense_module` stores)."""
        with torch.no_grad():
            if self.dtype == torch.float64:
                return self.dense_weight().detach()
            return copy.deepcopy(self).double().dense_weight().to(self.dtype)

    def num_parameters(self) -> int:
        """Weights this layer stores: its parameters' elements (shared ones once)."""
        return sum(p.numel() for p in self.parameters())

    def num_bytes(self) -> int:
        """Bytes of its parameters and buffers (shared tensors once)."""
        return sum(t.numel() * t.element_size() for t in chain(self.parameters(), self.buffers()))

    def manifest_entry(self) -> dict[str, Any]:
        """JSON description of this layer's structure (``lowrank.json``; no tensors)."""
        return {field.name: field.encode(self) for field in self.manifest_fields}

    @classmethod
    def from_manifest_entry(cls, entry: dict[str, Any]) -> StructuredLayer:
        """An empty layer of the structure ``entry`` describes; ``ValueError`` on bad fields."""
        return cls(**{field.name: field.decode(entry) for field in cls.manifest_fields})


class StructuredLinear(StructuredLayer):
    """A structured layer in place of an ``nn.Linear``: ``in_features``, ``out_features``,
    ``bias``; its dense weight is (out x in)."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None

    def dense_bias(self) -> torch.Tensor | None:
        """The bias of the equivalent ``nn.Linear``."""
        return self.bias

    def to_dense_module(self) -> nn.Linear:
        bias = self.dense_bias()
        dense = nn.Linear(self.in_features, self.out_features, bias is not None,
                          device=self.device, dtype=self.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.exact_dense_weight())
            if bias is not None:
                dense.bias.copy_(bias)
        return dense

    def flops_per_token(self) -> int:
        """Multiply-accumulates x 2 for one input vector: here a dense matmul's."""
        return 2 * self.in_features * self.out_features


class StructuredConv2d(StructuredLayer):
    """A structured layer in place of an ``nn.Conv2d`` (groups 1, zero padding); its dense
    weight is (out, in, k_h, k_w)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    bias: torch.Tensor | None

    def to_dense_module(self) -> nn.Conv2d:
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                          self.padding, self.dilation, bias=self.bias is not None,
                          device=self.device, dtype=self.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.exact_dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


def dense_weight_of(module: nn.Module) -> torch.Tensor:
    """The dense weight ``module`` applies: a structured layer's :meth:`dense_weight`, or the
    ``weight`` of an ``nn.Linear``, ``nn.Conv2d`` or ``nn.Embedding``."""
    if isinstance(module, StructuredLayer):
        return module.dense_weight()
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
        return module.weight
    raise TypeError(f"{type(module).__name__} is neither a structured layer nor a dense "
                    "nn.Linear / nn.Conv2d / nn.Embedding")
