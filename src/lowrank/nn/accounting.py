"""Parameter, byte and FLOP accounting for dense and structured layers."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .protocol import StructuredLayer


def break_even_rank(out_features: int, in_features: int) -> float:
    """Rank at which ``rank * (in + out)`` equals ``in * out``: factorizing saves only below it."""
    return out_features * in_features / (out_features + in_features)


def linear_params(out_features: int, in_features: int, rank: int | None, bias: bool) -> int:
    """Stored parameters of a linear layer kept dense (``rank=None``) or factorized."""
    core = out_features * in_features if rank is None else rank * (out_features + in_features)
    return core + (out_features if bias else 0)


def linear_flops(out_features: int, in_features: int, rank: int | None) -> int:
    """FLOPs per input vector (2 per multiply-accumulate) of a dense or factorized layer."""
    if rank is None:
        return 2 * out_features * in_features
    return 2 * rank * (out_features + in_features)


def structured_layers(module: nn.Module) -> list[StructuredLayer]:
    """The outermost :class:`StructuredLayer` modules in ``module`` (itself, if it is one)."""
    if isinstance(module, StructuredLayer):
        return [module]
    found = {id(layer): layer for child in module.children()
             for layer in structured_layers(child)}
    return list(found.values())


def _count(module: nn.Module, tensors: Iterable[torch.Tensor],
           size: Callable[[torch.Tensor], int],
           layer_size: Callable[[StructuredLayer], int]) -> int:
    layers = structured_layers(module)
    inside = {id(t) for layer in layers for t in (*layer.parameters(), *layer.buffers())}
    rest = sum(size(t) for t in tensors if id(t) not in inside)
    return rest + sum(layer_size(layer) for layer in layers)


def count_parameters(module: nn.Module) -> int:
    """Parameters of ``module``: each structured layer's ``num_parameters()`` (the weights it
    encodes, e.g. one per quantized code) plus every other parameter tensor's elements, shared
    tensors counted once."""
    return _count(module, module.parameters(), torch.Tensor.numel,
                  lambda layer: layer.num_parameters())


def count_bytes(module: nn.Module) -> int:
    """Bytes of all stored parameters and buffers (shared tensors counted once)."""
    return _count(module, (*module.parameters(), *module.buffers()),
                  lambda t: t.numel() * t.element_size(), lambda layer: layer.num_bytes())
