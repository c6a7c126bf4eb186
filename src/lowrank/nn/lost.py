"""``LOSTLinear``: low-rank plus channel-wise sparse layer initialised from an SVD.

Paper: "LOST: Low-rank and Sparse Pre-training for Large Language Models" (Li et al., 2025,
arXiv 2508.02668). From the SVD ``W0 = U S V^T`` of the (random) initial weight, the low-rank
part takes the top-``r`` triplets (``B = U_r S_r^{1/2}``, ``A = S_r^{1/2} V_r^T``); the
complementary spectrum ``R = W0 - U_r S_r V_r^T`` scores every input channel by its column
norm, and the top ``ceil(rho n)`` channels get a dense ``m x |cols|`` block. The output mixes
both: ``y = gamma B A x + (1 - gamma) S x[cols] + b``. Both parts are trained; no dense ``m x n``
weight is formed. At conversion the factors are scaled so the initial layer equals the rank-r
approximation plus the residual on the chosen channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, optional, positive
from .protocol import StructuredLinear


@register_module_kind
class LOSTLinear(StructuredLinear):
    """Low-rank (``B`` out x r, ``A`` r x in) plus channel-sparse (``S`` out x k on int32
    ``channels``) linear layer. Parameter count ``r (m + n) + m k (+ m)``."""

    manifest_fields = (positive("in_features"), positive("out_features"), positive("rank"),
                       optional("num_channels", 0, int), optional("gamma", 0.5, float), BIAS,
                       DTYPE)

    def __init__(self, in_features: int, out_features: int, rank: int, num_channels: int,
                 gamma: float = 0.5, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}] for a "
                             f"{out_features}x{in_features} layer, got {rank}")
        if not 0 <= num_channels <= in_features:
            raise ValueError(f"num_channels must be in [0, {in_features}], got {num_channels}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.gamma = float(gamma)
        kw = {"device": device, "dtype": dtype}
        self.B = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.A = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.S = nn.Parameter(torch.zeros(out_features, num_channels, **kw))
        self.register_buffer("channels", torch.arange(num_channels, dtype=torch.int32,
                                                      device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    @property
    def num_channels(self) -> int:
        return self.S.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(nn.functional.linear(x, self.A), self.B) * self.gamma
        if self.num_channels and self.gamma < 1.0:
            xs = x.index_select(-1, self.channels.long())
            y = y + nn.functional.linear(xs, self.S) * (1.0 - self.gamma)
        return y if self.bias is None else y + self.bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, sparsity: float = 0.05,
                    gamma: float = 0.5, num_channels: int | None = None) -> LOSTLinear:
        """Split ``linear`` into its top-``rank`` SVD part and the ``ceil(sparsity n)`` input
        channels that carry most of the remaining energy (exact when ``rank = min(m, n)``)."""
        w = linear.weight.detach()
        m, n = w.shape
        k = math.ceil(sparsity * n) if num_channels is None else int(num_channels)
        layer = cls(n, m, rank, k, gamma, linear.bias is not None, device=w.device,
                    dtype=w.dtype)
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
            lr_scale = 1.0 / math.sqrt(gamma) if gamma > 0 else 0.0
            root = s[:rank].sqrt() * lr_scale
            layer.B.copy_(u[:, :rank] * root)
            layer.A.copy_(root[:, None] * vh[:rank])
            resid = (u[:, rank:] * s[rank:]) @ vh[rank:]
            cols = torch.sort(torch.topk(resid.norm(dim=0), k).indices).values
            layer.channels.copy_(cols.to(torch.int32))
            if gamma < 1.0:
                layer.S.copy_(resid[:, cols] / (1.0 - gamma))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The represented dense weight ``gamma B A + (1 - gamma) scatter(S)`` (out x in)."""
        w = (self.B @ self.A) * self.gamma
        if self.num_channels:
            w = w.index_add(1, self.channels.long(), self.S * (1.0 - self.gamma))
        return w

    def flops_per_token(self) -> int:
        """Multiply-accumulates x 2 of the low-rank and the channel-sparse parts."""
        return 2 * (self.rank * (self.in_features + self.out_features)
                    + self.out_features * self.num_channels)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, channels={self.num_channels}, gamma={self.gamma}")
