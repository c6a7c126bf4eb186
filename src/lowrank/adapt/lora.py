"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models") with PEFT's layout,
and the PiSSA initialisation (Meng et al., "PiSSA: Principal Singular Values and Singular
Vectors Adaptation of Large Language Models").

``y = W x + b + (alpha / r) B A x`` with ``A`` (r x in) and ``B`` (out x r). Default init:
``A`` kaiming-uniform (a = sqrt 5), ``B = 0``. ``init="pissa"``: with ``W = U S V^T`` and
``S' = S_r / scaling``, ``A = diag(sqrt S') V_r^T``, ``B = U_r diag(sqrt S')`` and the base
weight becomes the residual ``W - scaling B A`` (forward unchanged at init). Its PEFT export
is the 2r LoRA ``scaling (B' A' - B0 A0)`` on the *original* weight, as PEFT converts PiSSA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, TargetError
from .base import ADAPTERS, AdapterConfig, AdapterLayer, LoraExport, generator, positive

INITS = ("default", "gaussian", "pissa")


@ADAPTERS.register
@dataclass
class LoRA(AdapterConfig):
    """LoRA with PEFT semantics (scaling ``alpha / r``, or ``alpha / sqrt r`` with rslora)."""

    kind: ClassVar[str] = "lora"

    alpha: float | None = field(default=None, metadata={
        "help": "lora_alpha; scaling = alpha / r (default: alpha = r, scaling 1)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    init: str = field(default="default", metadata={
        "help": "'default' (A kaiming-uniform, B = 0), 'gaussian' (A ~ N(0, 1/r)) or 'pissa' "
                "(top-r SVD of W in the adapter, residual in the base weight)"})
    use_rslora: bool = field(default=False, metadata={"help": "scaling alpha / sqrt(r)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None:
            positive(self.alpha, "alpha", allow_float=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {self.init!r}")

    def make_layer(self, module: nn.Module, name: str) -> LoRALinear:
        alpha = float(self.rank if self.alpha is None else self.alpha)
        return LoRALinear(module, name, self.rank, alpha, dropout=self.dropout, init=self.init,
                          use_rslora=self.use_rslora, seed=self.seed)


class LoRALinear(AdapterLayer):
    """A frozen ``nn.Linear`` plus ``(alpha / r) B A``; parameters ``lora_A``, ``lora_B``."""

    def __init__(self, base: nn.Module, name: str, rank: int, alpha: float, *,
                 dropout: float = 0.0, init: str = "default", use_rslora: bool = False,
                 seed: int = 0) -> None:
        if not isinstance(base, nn.Linear):
            raise TargetError(f"LoRA adapts nn.Linear; '{name}' is a {type(base).__name__}")
        super().__init__(base, name)
        out_f, in_f = base.weight.shape
        if rank > min(out_f, in_f):
            raise ConfigError(f"rank {rank} exceeds min(out, in) = {min(out_f, in_f)} of '{name}'")
        self.rank, self.alpha, self.use_rslora, self.init = rank, alpha, use_rslora, init
        self.scaling = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dev, dtype = base.weight.device, base.weight.dtype
        a = torch.empty(rank, in_f)
        b = torch.zeros(out_f, rank)
        g = generator(seed, name, "lora_A")
        if init == "gaussian":
            a.normal_(0.0, 1.0 / rank, generator=g)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)
        if init == "pissa":
            a, b = self._pissa(base)
        self.lora_A = nn.Parameter(a.to(dev, dtype))
        self.lora_B = nn.Parameter(b.to(dev, dtype))

    @torch.no_grad()
    def _pissa(self, base: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        w = base.weight.detach().to("cpu", torch.float64)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = self.rank
        root = torch.sqrt(s[:r] / self.scaling)
        a = (root[:, None] * vh[:r]).float()
        b = (u[:, :r] * root[None, :]).float()
        residual = w - self.scaling * b.double() @ a.double()
        base.weight.copy_(residual.to(base.weight.dtype))
        self.register_buffer("pissa_A0", a.clone().to(base.weight.device), persistent=False)
        self.register_buffer("pissa_B0", b.clone().to(base.weight.device), persistent=False)
        return a, b

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B.float() @ self.lora_A.float())

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(
            x.dtype) * self.scaling

    def to_lora(self) -> LoraExport:
        a, b = self.lora_A.detach().float(), self.lora_B.detach().float()
        if self.init != "pissa":
            # rslora is folded into alpha (PEFT scaling alpha / r reproduces alpha / sqrt r).
            alpha = self.alpha if not self.use_rslora else self.scaling * self.rank
            return LoraExport(A=a, B=b, alpha=alpha)
        # Relative to the original weight W = W_res + s B0 A0: delta = s (B A - B0 A0), rank 2r.
        a2 = torch.cat([a, self.pissa_A0.float()], dim=0)
        b2 = torch.cat([b, -self.pissa_B0.float()], dim=1) * self.scaling
        return LoraExport(A=a2, B=b2, alpha=float(2 * self.rank))

    def native_meta(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "use_rslora": self.use_rslora}
