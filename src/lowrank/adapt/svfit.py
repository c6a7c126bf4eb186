"""SVFit (Sun et al., "SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models
Using Singular Values").

With ``W = U S V^T``, the top-r singular vectors ``U_r, V_r`` and the residual stay frozen and
only the r singular values train, initialised to ``S_r``:

    W' = W + U_r diag(sigma - S_r) V_r^T        (r trainable numbers per matrix)

The SVD runs in float64 and signs are canonical (the largest-magnitude entry of each column of
``U_r`` is positive), so re-applying SVFit to the same base weights rebuilds the same ``U_r,
V_r``: the native format stores only ``sigma`` and ``S_r`` (checked on load). The PEFT export
is exact: ``lora_A = V_r^T``, ``lora_B = U_r diag(sigma - S_r)``, ``lora_alpha = r``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, ModelFileError, TargetError
from .base import ADAPTERS, AdapterConfig, AdapterLayer, LoraExport


@ADAPTERS.register
@dataclass
class SVFit(AdapterConfig):
    """Train the top-``rank`` singular values of each targeted weight (``rank`` per matrix)."""

    kind: ClassVar[str] = "svfit"

    def make_layer(self, module: nn.Module, name: str) -> SVFitLinear:
        return SVFitLinear(module, name, self.rank)


def top_singular(weight: torch.Tensor, rank: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_r [out, r], S_r [r], V_r [in, r])`` in float32, float64 SVD, canonical signs."""
    u, s, vh = torch.linalg.svd(weight.detach().to("cpu", torch.float64), full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].t()
    idx = u.abs().argmax(dim=0)
    sign = torch.sign(u[idx, torch.arange(rank)])
    sign[sign == 0] = 1.0
    return (u * sign).float(), s.float(), (v * sign).float()


class SVFitLinear(AdapterLayer):
    """A frozen ``nn.Linear`` plus ``U_r diag(sigma - S_r) V_r^T``; parameter ``sigma``."""

    def __init__(self, base: nn.Module, name: str, rank: int) -> None:
        if not isinstance(base, nn.Linear):
            raise TargetError(f"SVFit adapts nn.Linear; '{name}' is a {type(base).__name__}")
        super().__init__(base, name)
        if rank > min(base.weight.shape):
            raise ConfigError(
                f"rank {rank} exceeds min(out, in) = {min(base.weight.shape)} of '{name}'")
        self.rank = rank
        u, s, v = top_singular(base.weight, rank)
        dev = base.weight.device
        self.register_buffer("U", u.to(dev), persistent=False)
        self.register_buffer("V", v.to(dev), persistent=False)
        self.register_buffer("sigma0", s.to(dev), persistent=False)
        self.sigma = nn.Parameter(s.clone().to(dev, base.weight.dtype))

    def delta_weight(self) -> torch.Tensor:
        return (self.U * (self.sigma.float() - self.sigma0)) @ self.V.t()

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (self.sigma.float() - self.sigma0).to(x.dtype)
        return ((x @ self.V.to(x.dtype)) * d) @ self.U.t().to(x.dtype)

    def to_lora(self) -> LoraExport:
        d = (self.sigma.detach().float() - self.sigma0)
        return LoraExport(A=self.V.t().clone(), B=self.U * d, alpha=float(self.rank))

    def native_tensors(self) -> dict[str, torch.Tensor]:
        return {"sigma": self.sigma, "sigma0": self.sigma0}

    def native_meta(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def check_native_meta(self, meta: dict[str, Any]) -> None:
        if meta.get("rank") != self.rank:
            raise ModelFileError(f"SVFit rank of '{self.module_name}' is {self.rank}, the file "
                                 f"has {meta.get('rank')}")

    def check_native_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        saved = tensors["sigma0"].float().to(self.sigma0.device)
        if not torch.allclose(saved, self.sigma0, rtol=1e-5, atol=1e-6):
            raise ModelFileError(f"the singular values of '{self.module_name}' differ from the "
                                 "saved ones: the file was made for another base model")
