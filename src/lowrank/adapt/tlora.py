"""TLoRA (Tao et al., "Transformed Low-rank Adaptation via Tensor Decomposition and Its
Applications to Text-to-image Models", arXiv 2501.08727).

``W' = T W0 + delta_res``: a full-rank structured **transform** ``T`` of the pretrained weight
plus a compact **residual**, both tensor-decomposed.

- Transform: ``T = T_1 kron T_2`` over a factorisation ``out = d_1 d_2`` (a tensor-train matrix
  of TT-rank 1), both factors initialised to the identity, so ``T = I``; ``T`` is full rank
  whenever ``T_1`` and ``T_2`` are invertible. Applied to the base output: ``(T W0) x = T (W0 x)``.
- Residual: a two-core tensor-train matrix over ``out = o_1 o_2``, ``in = i_1 i_2`` with TT-rank
  R: ``delta[(a, b), (c, d)] = sum_rho C1[a, c, rho] C2[rho, b, d]``, ``C1`` random (seeded),
  ``C2 = 0`` (a no-op at init).

Trainable parameters: ``d_1^2 + d_2^2 + R (o_1 i_1 + o_2 i_2)``. ``merge`` writes
``T W0 + delta_res``; ``unmerge`` solves back with ``T^{-1} = T_1^{-1} kron T_2^{-1}`` in float64.
Plain LoRA is the case ``T = I``. ``T W0`` is full rank, so there is no exact PEFT LoRA
export: use the native format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import TargetError
from .base import ADAPTERS, AdapterConfig, AdapterLayer, generator, positive


@ADAPTERS.register
@dataclass
class TLoRA(AdapterConfig):
    """Kronecker transform (identity init) + tensor-train residual of TT-rank ``rank``."""

    kind: ClassVar[str] = "tlora"

    scale: float = field(default=1.0, metadata={"help": "multiplier of the residual"})

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.scale, "scale", allow_float=True)

    def make_layer(self, module: nn.Module, name: str) -> TLoRALinear:
        return TLoRALinear(module, name, self.rank, self.scale, seed=self.seed)


def balanced_split(n: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b = n`` and ``a`` the largest divisor of n not above sqrt(n)."""
    a = int(math.isqrt(n))
    while n % a:
        a -= 1
    return a, n // a


class TLoRALinear(AdapterLayer):
    """A frozen ``nn.Linear`` under ``W' = (T_1 kron T_2) W0 + TT(C1, C2)``."""

    def __init__(self, base: nn.Module, name: str, rank: int, scale: float, *,
                 seed: int = 0) -> None:
        if not isinstance(base, nn.Linear):
            raise TargetError(f"TLoRA adapts nn.Linear; '{name}' is a {type(base).__name__}")
        super().__init__(base, name)
        w = base.weight
        out_f, in_f = w.shape
        self.out_split, self.in_split = balanced_split(out_f), balanced_split(in_f)
        (o1, o2), (i1, i2) = self.out_split, self.in_split
        self.rank, self.scale = rank, scale
        dev, dt = w.device, w.dtype
        self.T1 = nn.Parameter(torch.eye(o1, device=dev, dtype=dt))
        self.T2 = nn.Parameter(torch.eye(o2, device=dev, dtype=dt))
        c1 = torch.empty(o1, i1, rank)
        g = generator(seed, name, "tlora")
        c1.normal_(0.0, 1.0 / math.sqrt(i1 * rank), generator=g)
        self.C1 = nn.Parameter(c1.to(dev, dt))
        self.C2 = nn.Parameter(torch.zeros(rank, o2, i2, device=dev, dtype=dt))

    def residual(self) -> torch.Tensor:
        """The dense TT residual ``[out, in]`` in float32."""
        (o1, o2), (i1, i2) = self.out_split, self.in_split
        d = torch.einsum("acr,rbd->abcd", self.C1.float(), self.C2.float())
        return self.scale * d.reshape(o1 * o2, i1 * i2)

    def transform(self) -> torch.Tensor:
        """The dense ``T = T_1 kron T_2`` (float32)."""
        return torch.kron(self.T1.float(), self.T2.float())

    def _apply_t(self, h: torch.Tensor) -> torch.Tensor:
        o1, o2 = self.out_split
        hv = h.reshape(*h.shape[:-1], o1, o2)
        hv = torch.einsum("...ab,ca,db->...cd", hv, self.T1.to(h.dtype), self.T2.to(h.dtype))
        return hv.reshape(h.shape)

    def delta_weight(self) -> torch.Tensor:
        w0 = self.base_layer.weight.float()
        return self.transform() @ w0 - w0 + self.residual()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged:
            return base(x)
        h = self._apply_t(nn.functional.linear(x, base.weight))
        if base.bias is not None:
            h = h + base.bias
        return h + nn.functional.linear(x, self.residual().to(x.dtype))

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        w = self.base_layer.weight
        w.copy_((self.transform() @ w.float() + self.residual()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        t1, t2 = self.T1.double(), self.T2.double()
        inv = torch.kron(torch.linalg.inv(t1), torch.linalg.inv(t2))
        w.copy_((inv @ (w.double() - self.residual().double())).to(w.dtype))
        self.merged = False

    def native_meta(self) -> dict[str, Any]:
        return {"rank": self.rank, "out_split": list(self.out_split),
                "in_split": list(self.in_split)}
