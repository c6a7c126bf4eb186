"""NOLA (Koohpayegani et al., "NOLA: Compressing LoRA using Linear Combination of Random
Basis", ICLR 2024).

LoRA's factors are combinations of frozen random matrices, and only the mixing coefficients
train:

    A = A0 + sum_i alpha_i A_i     (A0 kaiming-uniform, A_i ~ U(-1, 1) / sqrt(k), r x in)
    B =      sum_j beta_j  B_j     (B_j ~ U(-1, 1) / sqrt(k), out x r)
    delta W = (lora_alpha / r) B A,   alpha = beta = 0 at init (a no-op).

The trainable count is ``2 k`` per module whatever ``r`` and the layer shape. The bases come
from a dedicated CPU ``torch.Generator`` seeded by ``(seed, module name, factor)`` (never the
global RNG, unlike the reference code), so they are identical on any device and in any
process; the native format stores a SHA-256 of them and checks it on load. With
``cache_basis=False`` the bases are regenerated in the forward and backward passes of a custom
autograd function instead of being kept in memory (the paper's memory trick).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, ModelFileError, TargetError
from .base import ADAPTERS, AdapterConfig, AdapterLayer, LoraExport, checksum, generator, positive


@ADAPTERS.register
@dataclass
class NOLA(AdapterConfig):
    """LoRA factors as seeded random-basis combinations; only ``2 * num_basis`` per module train."""

    kind: ClassVar[str] = "nola"

    num_basis: int = field(default=1024, metadata={
        "help": "k: random basis matrices per factor (trainable coefficients per factor)"})
    alpha: float | None = field(default=None, metadata={
        "help": "lora_alpha; scaling = alpha / r (default: alpha = r, scaling 1)"})
    cache_basis: bool = field(default=True, metadata={
        "help": "keep the bases in memory (fast); False regenerates them in every pass"})

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.num_basis, "num_basis")
        if self.alpha is not None:
            positive(self.alpha, "alpha", allow_float=True)

    def make_layer(self, module: nn.Module, name: str) -> NOLALinear:
        alpha = float(self.rank if self.alpha is None else self.alpha)
        return NOLALinear(module, name, self.rank, self.num_basis, alpha, seed=self.seed,
                          cache_basis=self.cache_basis)


def nola_basis(seed: int, name: str, factor: str, k: int, rows: int, cols: int
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(basis [k, rows, cols], A0 [rows, cols] or None)`` for factor "A" or "B" (float32 CPU).

    A fresh CPU generator seeded by ``(seed, name, factor)`` draws ``A0`` (factor "A" only,
    kaiming-uniform a = sqrt 5) and then the basis, U(-1, 1) / sqrt(k).
    """
    g = generator(seed, name, "nola_" + factor)
    a0 = None
    if factor == "A":
        a0 = torch.empty(rows, cols)
        nn.init.kaiming_uniform_(a0, a=math.sqrt(5), generator=g)
    basis = torch.rand(k, rows, cols, generator=g).mul_(2.0).sub_(1.0).div_(math.sqrt(k))
    return basis, a0


class _Combine(torch.autograd.Function):
    """``sum_i c_i M_i`` with the basis regenerated (never stored) in forward and backward."""

    @staticmethod
    def forward(ctx, coef, seed, name, factor, rows, cols):  # noqa: ANN001, ANN205
        ctx.spec = (seed, name, factor, coef.shape[0], rows, cols)
        basis, _ = nola_basis(seed, name, factor, coef.shape[0], rows, cols)
        return torch.einsum("k,krc->rc", coef, basis.to(coef.device, coef.dtype))

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        seed, name, factor, k, rows, cols = ctx.spec
        basis, _ = nola_basis(seed, name, factor, k, rows, cols)
        g = torch.einsum("krc,rc->k", basis.to(grad.device, grad.dtype), grad)
        return g, None, None, None, None, None


def combine(coef: torch.Tensor, seed: int, name: str, factor: str, rows: int,
            cols: int) -> torch.Tensor:
    """Memory-light ``sum_i coef_i basis_i`` (basis regenerated from the seed in both passes)."""
    return _Combine.apply(coef, seed, name, factor, rows, cols)


class NOLALinear(AdapterLayer):
    """A frozen ``nn.Linear`` plus NOLA's ``scaling B A``; trains ``nola_alpha``, ``nola_beta``."""

    def __init__(self, base: nn.Module, name: str, rank: int, num_basis: int, alpha: float,
                 *, seed: int = 0, cache_basis: bool = True) -> None:
        if not isinstance(base, nn.Linear):
            raise TargetError(f"NOLA adapts nn.Linear; '{name}' is a {type(base).__name__}")
        super().__init__(base, name)
        out_f, in_f = base.weight.shape
        if rank > min(out_f, in_f):
            raise ConfigError(f"rank {rank} exceeds min(out, in) = {min(out_f, in_f)} of '{name}'")
        self.rank, self.num_basis, self.alpha, self.seed = rank, num_basis, alpha, seed
        self.scaling = alpha / rank
        self.cache_basis = cache_basis
        self.shape = (out_f, in_f)
        dev, dtype = base.weight.device, base.weight.dtype
        basis_a, a0 = nola_basis(seed, name, "A", num_basis, rank, in_f)
        basis_b, _ = nola_basis(seed, name, "B", num_basis, out_f, rank)
        self.basis_checksum = checksum(basis_a, basis_b)
        self.register_buffer("A0", a0.to(dev), persistent=False)
        if cache_basis:
            self.register_buffer("basis_A", basis_a.to(dev), persistent=False)
            self.register_buffer("basis_B", basis_b.to(dev), persistent=False)
        self.nola_alpha = nn.Parameter(torch.zeros(num_basis, device=dev, dtype=dtype))
        self.nola_beta = nn.Parameter(torch.zeros(num_basis, device=dev, dtype=dtype))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [r, in], B [out, r])`` in float32."""
        out_f, in_f = self.shape
        ca, cb = self.nola_alpha.float(), self.nola_beta.float()
        if self.cache_basis:
            a = torch.einsum("k,krc->rc", ca, self.basis_A)
            b = torch.einsum("k,krc->rc", cb, self.basis_B)
        else:
            a = combine(ca, self.seed, self.module_name, "A", self.rank, in_f)
            b = combine(cb, self.seed, self.module_name, "B", out_f, self.rank)
        return self.A0 + a, b

    def delta_weight(self) -> torch.Tensor:
        a, b = self.factors()
        return self.scaling * (b @ a)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.factors()
        return (x @ a.t().to(x.dtype)) @ b.t().to(x.dtype) * self.scaling

    def to_lora(self) -> LoraExport:
        a, b = self.factors()
        return LoraExport(A=a.detach(), B=b.detach() * self.scaling, alpha=float(self.rank))

    def native_meta(self) -> dict[str, Any]:
        return {"basis_sha256": self.basis_checksum, "rank": self.rank,
                "num_basis": self.num_basis}

    def check_native_meta(self, meta: dict[str, Any]) -> None:
        saved = meta.get("basis_sha256")
        if saved != self.basis_checksum:
            raise ModelFileError(
                f"NOLA basis checksum of '{self.module_name}' is {self.basis_checksum[:12]}…, the "
                f"file expects {str(saved)[:12]}…: the seed, shapes or the generator differ")
