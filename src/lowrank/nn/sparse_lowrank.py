"""``SparseLowRankLinear`` (SLTrain): ``W = (alpha / r) B A + S`` with a fixed random support.

Paper: "SLTrain: a sparse plus low-rank approach for parameter and memory efficient
pretraining" (Han et al., NeurIPS 2024). The support of ``S`` is ``floor(delta m n)`` flat
positions drawn uniformly without replacement from a CPU generator seeded by
``(seed, module name)``; it is stored as int32 and fixed for the whole run. Only ``B``, ``A``,
the nonzero values and the bias are trained. A custom autograd function keeps only the factors,
values and indices between forward and backward; the dense weight exists transiently.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, optional, positive
from .protocol import StructuredLinear


def sparse_support(out_features: int, in_features: int, density: float, seed: int,
                   name: str = "") -> torch.Tensor:
    """Sorted int32 flat indices of a uniformly random support, from ``(seed, name)`` only."""
    total = out_features * in_features
    nnz = int(math.floor(density * total))
    gen = torch.Generator(device="cpu").manual_seed(
        zlib.crc32(f"{int(seed)}:{name}".encode()) & 0x7FFFFFFF)
    idx = torch.randperm(total, generator=gen)[:nnz]
    return torch.sort(idx).values.to(torch.int32)


def _dense(B: torch.Tensor, A: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
           scale: float) -> torch.Tensor:
    w = (B @ A) * scale
    w.view(-1).index_add_(0, indices.long(), values)
    return w


class _SparseLowRankFn(torch.autograd.Function):
    """y = x W^T + b with W rebuilt from (B, A, values, indices) in forward and backward."""

    @staticmethod
    def forward(ctx, x, B, A, values, indices, bias, scale):  # noqa: ANN001
        w = _dense(B, A, values, indices, scale)
        ctx.save_for_backward(x, B, A, values, indices, bias)
        ctx.scale = scale
        return nn.functional.linear(x, w, bias)

    @staticmethod
    def backward(ctx, dy):  # noqa: ANN001
        x, B, A, values, indices, bias = ctx.saved_tensors
        scale = ctx.scale
        w = _dense(B, A, values, indices, scale)
        dx = dy @ w
        dy2 = dy.reshape(-1, dy.shape[-1])
        dw = dy2.T @ x.reshape(-1, x.shape[-1])
        dB = (dw @ A.T) * scale
        dA = (B.T @ dw) * scale
        dvalues = dw.view(-1).index_select(0, indices.long())
        dbias = dy2.sum(0) if bias is not None else None
        return dx, dB, dA, dvalues, None, dbias, None


@register_module_kind
class SparseLowRankLinear(StructuredLinear):
    """Sparse plus low-rank linear layer (SLTrain).

    Parameters ``B`` (out x r), ``A`` (r x in), ``values`` (nnz) and ``bias``; buffer
    ``indices`` (nnz, int32, row-major flat positions in the out x in weight). Parameter count
    ``r (m + n) + floor(delta m n) (+ m)``.
    """

    manifest_fields = (positive("in_features"), positive("out_features"), positive("rank"),
                       optional("density", 0.03, float), optional("alpha", 32.0, float),
                       optional("seed", 0, int), optional("name", "", str), BIAS, DTYPE)

    def __init__(self, in_features: int, out_features: int, rank: int, density: float = 0.03,
                 alpha: float = 32.0, bias: bool = True, seed: int = 0, name: str = "",
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}] for a "
                             f"{out_features}x{in_features} layer, got {rank}")
        if not 0.0 <= density < 1.0:
            raise ValueError(f"density must be in [0, 1), got {density}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.density, self.alpha, self.seed, self.name = float(density), float(alpha), seed, name
        kw = {"device": device, "dtype": dtype}
        self.B = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.A = nn.Parameter(torch.empty(rank, in_features, **kw))
        indices = sparse_support(out_features, in_features, density, seed, name)
        self.register_buffer("indices", indices.to(device) if device else indices)
        self.values = nn.Parameter(torch.empty(indices.numel(), **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def reset_parameters(self) -> None:
        """The paper's initialisation: ``B = 0``, ``A`` Kaiming-uniform, values on ``±1/sqrt(n)``
        (so the layer starts purely sparse), bias on ``±1/sqrt(n)``."""
        nn.init.zeros_(self.B)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.values, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SparseLowRankFn.apply(x, self.B, self.A, self.values, self.indices, self.bias,
                                      self.scale)

    def dense_weight(self) -> torch.Tensor:
        """The represented dense weight (out x in)."""
        return _dense(self.B, self.A, self.values, self.indices, self.scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, density: float = 0.03,
                    alpha: float = 32.0, seed: int = 0, name: str = "",
                    init: str = "svd") -> SparseLowRankLinear:
        """Convert ``linear``. ``init="svd"``: ``(alpha/r) B A`` is the rank-r truncated SVD of
        the weight and ``S`` holds the residual on its support (exact when ``rank = min(m,n)``
        or on the support). ``init="random"``: the paper's pretraining init, bias copied."""
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, rank, density, alpha,
                    linear.bias is not None, seed, name, device=w.device, dtype=w.dtype)
        if init not in ("svd", "random"):
            raise ValueError(f"init must be 'svd' or 'random', got {init!r}")
        with torch.no_grad():
            if init == "svd":
                u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
                root = s[:rank].sqrt() / math.sqrt(layer.scale)
                B, A = u[:, :rank] * root, root[:, None] * vh[:rank]
                layer.B.copy_(B)
                layer.A.copy_(A)
                resid = w.double() - layer.scale * (B @ A)
                layer.values.copy_(resid.reshape(-1)[layer.indices.long()])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, nnz={self.values.numel()}, alpha={self.alpha}")
