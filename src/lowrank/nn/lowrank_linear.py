"""``LowRankLinear``: a linear layer stored as two factors, ``y = B (A x) + b``."""

from __future__ import annotations

import math

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, positive
from .protocol import StructuredLinear


@register_module_kind
class LowRankLinear(StructuredLinear):
    """Linear map ``in_features -> out_features`` through a rank-``rank`` bottleneck.

    Holds ``A`` (rank x in) and ``B`` (out x rank) as parameters and an optional ``bias``
    (out). Storage is ``rank * (in + out)`` (+ out for the bias) instead of ``in * out``, which
    saves parameters only below the break-even rank ``in * out / (in + out)``.
    """

    manifest_fields = (positive("rank"), positive("in_features"), positive("out_features"),
                       BIAS, DTYPE)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if min(in_features, out_features) < 1:
            raise ValueError(
                f"LowRankLinear needs positive sizes, got in={in_features}, out={out_features}"
            )
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(
                f"rank must be in [1, {min(in_features, out_features)}] for a "
                f"{out_features}x{in_features} layer, got {rank}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        kw = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.B = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise so that ``B @ A`` has the variance of a default ``nn.Linear`` weight."""
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.rank)
        nn.init.uniform_(self.B, -bound, bound)
        if self.bias is not None:
            fan = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -fan, fan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.linear(x, self.A), self.B, self.bias)

    @classmethod
    def from_factors(
        cls, B: torch.Tensor, A: torch.Tensor, bias: torch.Tensor | None = None
    ) -> LowRankLinear:
        """Build from given factors (copied, in ``A``'s dtype and device)."""
        if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
            raise ValueError(
                f"factors do not chain: B {tuple(B.shape)} @ A {tuple(A.shape)}"
            )
        layer = cls(A.shape[1], B.shape[0], A.shape[0], bias is not None,
                    device=A.device, dtype=A.dtype)
        with torch.no_grad():
            layer.A.copy_(A)
            layer.B.copy_(B)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """Factorize ``linear`` by truncated SVD (Eckart–Young optimal in weight space)."""
        from ..linalg import split_singular_values, truncated_svd

        svd = truncated_svd(linear.weight.detach().to(torch.float64), rank)
        B, A = split_singular_values(svd, rank)
        dtype = linear.weight.dtype
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_factors(B.to(dtype), A.to(dtype), bias).to(linear.weight.device)

    def dense_weight(self) -> torch.Tensor:
        """The represented dense weight ``B @ A`` (out x in)."""
        return self.B @ self.A

    def flops_per_token(self) -> int:
        """Multiply-accumulates x 2 for one input vector (bias adds ignored)."""
        return 2 * self.rank * (self.in_features + self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )
