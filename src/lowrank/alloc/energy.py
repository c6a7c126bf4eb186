"""Energy allocation: each matrix keeps the same fraction of its weighted spectral energy."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import ALLOCATORS, Probe, RankAllocator
from .budget import (
    UNCONSTRAINED,
    Allocation,
    BudgetItem,
    RankConstraints,
    bisect_parameter,
    finish,
    greedy_fill,
)
from .budget import target_params as _target


def _energy_curves(items: Sequence[BudgetItem]) -> dict[str, torch.Tensor]:
    curves = {}
    for it in items:
        e = it.spectrum.to(torch.float64) ** 2
        total = e.sum().clamp_min(1e-300)
        curves[it.name] = torch.cumsum(e, 0) / total
    return curves


@ALLOCATORS.register
class Energy(RankAllocator):
    """Smallest rank whose kept energy ``sum_{i<=k} s_i^2 / sum s_i^2`` reaches ``tau``.

    ``tau`` (one value for all matrices) is bisected to meet the budget; the spectra are the
    method's weighted ones (whitened for SVD-LLM), so energy is output energy where data
    exists. Leftover budget goes to the largest marginal energy gain per parameter (over the
    next ``constraints.align`` ranks). Ranks are clamped to the per-matrix limits.
    """

    name = "energy"

    def allocate(self, items: Sequence[BudgetItem], keep: float, *,
                 constraints: RankConstraints = UNCONSTRAINED,
                 probe: Probe | None = None) -> Allocation:
        target = _target(items, keep, constraints)
        a = constraints.align
        curves = _energy_curves(items)

        def ranks_at(tau: float) -> dict[str, int | None]:
            out = {}
            for it in items:
                curve = curves[it.name]
                k = int(torch.searchsorted(curve, torch.tensor(tau, dtype=curve.dtype))) + 1
                out[it.name] = constraints.snap(it, min(k, curve.numel()))
            return out

        def gain(it: BudgetItem, k: int) -> float:
            curve = curves[it.name]
            end = min(k + a, curve.numel())
            step = float(curve[end - 1] - curve[k - 1]) if k < curve.numel() else 0.0
            return step / (a * (it.out_features + it.in_features))

        tau, ranks = bisect_parameter(items, target, ranks_at, constraints=constraints)
        ranks = greedy_fill(items, ranks, target, gain, constraints)
        return finish("energy", items, ranks, keep, {"energy_kept_threshold": tau},
                      constraints)
