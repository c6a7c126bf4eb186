"""Parameter, byte and FLOP accounting for dense and factorized linear layers."""

from __future__ import annotations

import torch
from torch import nn


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


def count_parameters(module: nn.Module) -> int:
    """Every stored parameter tensor's elements, shared tensors counted once.

    Weights stored as packed integer buffers (``QuantizedLinear``) count as the number of
    weights they encode, which such a module reports through ``packed_parameters()``.
    """
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    for sub in module.modules():
        if callable(getattr(sub, "packed_parameters", None)):
            total += sub.packed_parameters()
    return total


def count_bytes(module: nn.Module) -> int:
    """Bytes of all stored parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
