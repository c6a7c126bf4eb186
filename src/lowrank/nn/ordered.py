"""``OrderedLowRankLinear`` (Maestro): a factorized layer trained with ordered dropout.

Paper: "Maestro: Uncovering Low-Rank Structures via Trainable Decomposition" (Horváth et al.,
ICML 2024). ``W = U V`` with ``U`` (out x r) and ``V`` (r x in). Ordered dropout trains
prefixes: a sampled width ``k`` uses only the first ``k`` components, so components are pushed
into importance order; a (hierarchical) group lasso on the components and importance-based
pruning (``importance_j = ||U[:, j]|| ||V[j]||``) shrink the rank.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .kinds import register_module_kind
from .manifest import BIAS, DTYPE, positive
from .protocol import StructuredLinear


@register_module_kind
class OrderedLowRankLinear(StructuredLinear):
    """Linear layer ``y = U (V x) + b`` whose forward can use any prefix width of the rank."""

    manifest_fields = (positive("in_features"), positive("out_features"), positive("rank"),
                       BIAS, DTYPE)

    def __init__(self, in_features: int, out_features: int, rank: int | None = None,
                 bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        rank = min(in_features, out_features) if rank is None else rank
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        kw = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.V = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.active_width: int | None = None  # set by OrderedDropout for one forward
        nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
        nn.init.uniform_(self.U, -1 / math.sqrt(rank), 1 / math.sqrt(rank))

    def forward(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        k = width if width is not None else self.active_width
        k = self.rank if k is None else max(1, min(int(k), self.rank))
        return nn.functional.linear(nn.functional.linear(x, self.V[:k]), self.U[:, :k],
                                    self.bias)

    def importance(self) -> torch.Tensor:
        """Per-component importance ``||U[:, j]|| * ||V[j]||`` (length rank)."""
        return self.U.detach().norm(dim=0) * self.V.detach().norm(dim=1)

    def group_lasso(self, hierarchical: bool = False) -> torch.Tensor:
        """``sum_j ||U_j|| + ||V_j||``; hierarchical: ``sum_j sqrt(sum_{l>=j} ||U_l||^2 +
        ||V_l||^2)``, which penalises later components more."""
        if not hierarchical:
            return self.U.norm(dim=0).sum() + self.V.norm(dim=1).sum()
        sq = self.U.pow(2).sum(0) + self.V.pow(2).sum(1)
        tails = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])
        return tails.clamp_min(1e-30).sqrt().sum()

    @torch.no_grad()
    def prune_(self, threshold: float = 1e-5) -> int:
        """Drop components with importance below ``threshold`` (order kept); returns new rank."""
        keep = torch.nonzero(self.importance() >= threshold).flatten()
        if keep.numel() == 0:
            keep = torch.argmax(self.importance()).reshape(1)
        self.U = nn.Parameter(self.U[:, keep].clone())
        self.V = nn.Parameter(self.V[keep].clone())
        self.rank = int(keep.numel())
        return self.rank

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int | None = None) -> OrderedLowRankLinear:
        """SVD init ``U = U_s S^{1/2}``, ``V = S^{1/2} V_s^T`` (ordered by singular value; exact
        at full rank)."""
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                    device=w.device, dtype=w.dtype)
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
            r = layer.rank
            root = s[:r].sqrt()
            layer.U.copy_(u[:, :r] * root)
            layer.V.copy_(root[:, None] * vh[:r])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The represented dense weight ``U @ V`` (out x in), all components."""
        return self.U @ self.V

    def flops_per_token(self) -> int:
        """Multiply-accumulates x 2 for one input vector at full width."""
        return 2 * self.rank * (self.in_features + self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")


class OrderedDropout:
    """Maestro's single-layer sampler: each draw truncates one layer to a random prefix width.

    ``with sampler.sample(): loss_od = loss_fn(model(x))`` runs one forward with the sampled
    ``(layer, width)``; other layers stay at full width. Seeded, so reproducible.
    """

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, OrderedLowRankLinear)]
        if not self.layers:
            raise ValueError("OrderedDropout found no OrderedLowRankLinear in the model")
        self.rng = random.Random(seed)

    @contextmanager
    def sample(self) -> Iterator[tuple[int, int]]:
        i = self.rng.randrange(len(self.layers))
        layer = self.layers[i]
        width = self.rng.randint(1, layer.rank)
        layer.active_width = width
        try:
            yield i, width
        finally:
            layer.active_width = None
