"""FLoRA (Si et al., "FLoRA: Low-Rank Core Space for N-dimension", arXiv 2405.14739).

A weight with N modes, ordered ``dims = [in / groups, out, k1, k2, ...]``, gets a Tucker update

    delta = scale * G x_0 U_0 x_1 U_1 ... x_{N-1} U_{N-1}     (then modes 0 and 1 swapped)

with core ``G`` (``r_0 x ... x r_{N-1}``, zero at init) and factors ``U_i`` (``d_i x r_i``,
kaiming-normal a = sqrt 3, from a seeded CPU generator). Parameters: ``prod r_i + sum d_i r_i``.
Grouped and depthwise convs use ``in_channels / groups`` (the reference code's
``in_channels`` mis-shapes their update). The forward adds ``conv(x, delta)`` with the base
layer's stride, padding, dilation and groups.

Exact PEFT export: the out mode has rank ``r_1``, so ``delta = B x_out A'`` with ``B = U_1``
and ``A' = scale * G x_0 U_0 x_2 U_2 ...``. For a linear layer that is a LoRA of rank ``r_1``;
for a conv it is PEFT's conv LoRA (``lora_A`` a conv with the base kernel, ``lora_B`` a 1x1
conv with the base groups) of rank ``groups * r_1``, ``lora_A`` block-diagonal over groups.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, LowRankError, TargetError
from ..surgery import CONV_TYPES, LINEAR_OR_CONV, LayerKind
from .base import ADAPTERS, AdapterConfig, AdapterLayer, LoraExport, generator, positive


@ADAPTERS.register
@dataclass
class FLoRA(AdapterConfig):
    """Tucker-core adapter for linear and Conv1d/2d/3d weights (channel ranks = ``rank``)."""

    kind: ClassVar[str] = "flora"
    selects: ClassVar[LayerKind] = LINEAR_OR_CONV

    kernel_rank: int | None = field(default=None, metadata={
        "help": "rank of each kernel mode of a conv (default: the kernel size, i.e. full)"})
    scale: float = field(default=1.0, metadata={"help": "multiplier of the Tucker update"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_rank is not None:
            positive(self.kernel_rank, "kernel_rank")
        positive(self.scale, "scale", allow_float=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def make_layer(self, module: nn.Module, name: str) -> FLoRALayer:
        return FLoRALayer(module, name, self.rank, self.kernel_rank, self.scale,
                          dropout=self.dropout, seed=self.seed)


def tucker_product(core: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    """``core x_0 U_0 x_1 U_1 ...`` (``U_i`` is ``d_i x r_i``)."""
    n = core.dim()
    letters = string.ascii_lowercase
    src = letters[:n]
    dst = letters[n:2 * n]
    operands = ",".join(f"{dst[i]}{src[i]}" for i in range(n))
    return torch.einsum(f"{src},{operands}->{dst}", core, *factors)


class FLoRALayer(AdapterLayer):
    """A frozen Linear/ConvNd plus a Tucker update; parameters ``core``, ``factor_<i>``."""

    def __init__(self, base: nn.Module, name: str, rank: int, kernel_rank: int | None,
                 scale: float, *, dropout: float = 0.0, seed: int = 0) -> None:
        if not isinstance(base, (nn.Linear, *CONV_TYPES)):
            raise TargetError(f"FLoRA adapts Linear and Conv1d/2d/3d; '{name}' is a "
                              f"{type(base).__name__}")
        if isinstance(base, CONV_TYPES) and base.padding_mode != "zeros":
            raise TargetError(f"FLoRA supports padding_mode='zeros'; '{name}' has "
                              f"{base.padding_mode!r}")
        super().__init__(base, name)
        w = base.weight
        dims = [w.shape[1], w.shape[0], *w.shape[2:]]  # [in / groups, out, k...]
        ranks = [min(rank, dims[0]), min(rank, dims[1])]
        ranks += [d if kernel_rank is None else min(kernel_rank, d) for d in dims[2:]]
        self.dims, self.ranks, self.scale = dims, ranks, scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        g = generator(seed, name, "flora")
        self.core = nn.Parameter(torch.zeros(*ranks, device=w.device, dtype=w.dtype))
        for i, (d, r) in enumerate(zip(dims, ranks, strict=True)):
            u = torch.empty(d, r)
            nn.init.kaiming_normal_(u, a=math.sqrt(3), generator=g)
            setattr(self, f"factor_{i}", nn.Parameter(u.to(w.device, w.dtype)))

    def factors(self) -> list[torch.Tensor]:
        return [getattr(self, f"factor_{i}") for i in range(len(self.dims))]

    def delta_weight(self) -> torch.Tensor:
        t = tucker_product(self.core.float(), [u.float() for u in self.factors()])
        return self.scale * t.transpose(0, 1)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().adapter_forward(self.dropout(x))

    def to_lora(self) -> LoraExport:
        us = [u.detach().float() for u in self.factors()]
        r1 = self.ranks[1]
        eye = torch.eye(r1, device=us[1].device)
        # A' = scale * G x_0 U_0 x_1 I x_2 U_2 ..., arranged [r1, in/groups, k...]
        a = self.scale * tucker_product(self.core.detach().float(), [us[0], eye, *us[2:]])
        a = a.transpose(0, 1).contiguous()
        b = us[1]
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return LoraExport(A=a, B=b, alpha=float(r1))
        if any(d != 1 for d in base.dilation):
            raise LowRankError(f"'{self.module_name}' has dilation {base.dilation}: PEFT's conv "
                               "LoRA has none, so no exact export; use lowrank.adapt.save")
        groups = base.groups
        in_g = self.dims[0]
        full = torch.zeros(groups * r1, in_g * groups, *a.shape[2:], device=a.device)
        for j in range(groups):
            full[j * r1:(j + 1) * r1, j * in_g:(j + 1) * in_g] = a
        kdim = a.dim() - 2
        return LoraExport(A=full, B=b.reshape(*b.shape, *([1] * kdim)),
                          alpha=float(groups * r1))

    def native_meta(self) -> dict[str, Any]:
        return {"dims": self.dims, "ranks": self.ranks, "scale": self.scale}
