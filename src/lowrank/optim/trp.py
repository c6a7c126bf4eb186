"""``TrainedRankPruning``: nuclear-norm sub-gradient plus periodic low-rank projection.

Paper: "Trained Rank Pruning for Efficient Deep Neural Networks" (Xu et al., IJCAI 2020). For
each targeted weight ``W`` (a linear weight, or a conv weight reshaped channel-wise to
``Cout x (Cin k k)``): after ``backward`` the sub-gradient ``lambda U_k V_k^T`` of
``lambda ||W||_*`` (restricted to the retained components) is added to the gradient, and every
``period`` steps ``W`` is overwritten by its rank-``k`` reconstruction, with ``k`` the smallest
rank that keeps ``energy`` of ``sum sigma^2``. At the end, :meth:`decompose` turns the weights
into :class:`~lowrank.nn.LowRankLinear` layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..surgery import replace_module, select_linears


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``k`` with ``sum_{i<k} s_i^2 >= energy * sum s_i^2`` (at least 1)."""
    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"energy must be in (0, 1], got {energy}")
    sq = singular_values.double().pow(2)
    total = sq.sum()
    if total == 0:
        return 1
    frac = torch.cumsum(sq, 0) / total
    k = int(torch.searchsorted(frac, torch.tensor(energy, dtype=frac.dtype) - 1e-12).item()) + 1
    return max(1, min(k, singular_values.numel()))


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


class TrainedRankPruning:
    """TRP regularizer/callback over the targeted ``nn.Linear``/``nn.Conv2d`` modules.

    Call :meth:`after_backward` between ``loss.backward()`` and ``optimizer.step()`` and
    :meth:`after_step` after ``optimizer.step()`` (it projects every ``period`` steps).
    """

    def __init__(self, model: nn.Module, targets: Any = None, energy: float = 0.9,
                 nuclear_weight: float = 3e-4, period: int = 1, project: bool = True) -> None:
        if period < 1:
            raise ConfigError(f"period must be a positive int, got {period}")
        if nuclear_weight < 0:
            raise ConfigError(f"nuclear_weight must be >= 0, got {nuclear_weight}")
        energy_rank(torch.ones(1), energy)  # validates energy
        if targets is None:
            self.modules = {n: m for n, m in model.named_modules()
                            if isinstance(m, (nn.Linear, nn.Conv2d))}
        else:
            self.modules = dict(select_linears(model, targets))
        if not self.modules:
            raise ConfigError("TrainedRankPruning found no nn.Linear or nn.Conv2d to regularize")
        self.energy, self.nuclear_weight, self.period, self.project = (
            energy, nuclear_weight, period, project)
        self.steps = 0
        self.ranks: dict[str, int] = {}

    @torch.no_grad()
    def after_backward(self) -> None:
        """Add ``lambda U_k V_k^T`` to each targeted weight's gradient."""
        if self.nuclear_weight == 0:
            return
        for name, m in self.modules.items():
            if m.weight.grad is None:
                continue
            w = _matrix(m.weight).float()
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            k = energy_rank(s, self.energy)
            self.ranks[name] = k
            sub = (u[:, :k] @ vh[:k]).reshape(m.weight.shape).to(m.weight.dtype)
            m.weight.grad.add_(sub, alpha=self.nuclear_weight)

    @torch.no_grad()
    def project_now(self, ranks: dict[str, int] | None = None) -> dict[str, int]:
        """Overwrite every targeted weight with its energy-truncated reconstruction (or with
        the given per-module ``ranks``)."""
        for name, m in self.modules.items():
            w = _matrix(m.weight).double()
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            k = ranks[name] if ranks and name in ranks else energy_rank(s, self.energy)
            self.ranks[name] = k
            m.weight.copy_(((u[:, :k] * s[:k]) @ vh[:k]).reshape(m.weight.shape))
        return dict(self.ranks)

    def after_step(self) -> None:
        self.steps += 1
        if self.project and self.steps % self.period == 0:
            self.project_now()

    @torch.no_grad()
    def decompose(self, model: nn.Module, threshold: float = 0.05) -> dict[str, int]:
        """Replace each targeted ``nn.Linear`` by a ``LowRankLinear`` keeping singular values
        ``>= threshold``; returns the chosen ranks (convolutions are left as they are)."""
        from ..nn import LowRankLinear

        ranks: dict[str, int] = {}
        for name, m in list(self.modules.items()):
            if not isinstance(m, nn.Linear):
                continue
            s = torch.linalg.svdvals(m.weight.double())
            k = max(1, int((s >= threshold).sum()))
            replace_module(model, name, LowRankLinear.from_linear(m, k))
            ranks[name] = k
            self.modules.pop(name)
        return ranks
