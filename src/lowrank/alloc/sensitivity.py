"""Sensitivity allocation: spend the budget where the model's end-to-end quality needs it.

Each matrix's sensitivity ``s_l`` is measured, not estimated from its spectrum: the change of
the model's end-to-end quality on calibration passages (``1 - cosine`` of sentence embeddings
for encoders, next-token KL for causal LMs) when only that matrix is truncated to a probe rank
``p_l`` (half its break-even rank), everything else intact (the measurement-driven allocation
of ASVD's STRS, done once per matrix instead of a sweep).

``sensitivity`` (default) turns the one measurement into a whole curve with the matrix's own
spectrum: truncating to rank ``r`` leaves the weighted tail energy ``T_l(r) = sum_{i>r}
sigma_i^2`` (for whitened spectra, the layer's squared output error), and both the quality
loss and ``T_l`` are second order in the perturbation, so ``gap_l(r) = s_l T_l(r) / T_l(p_l)``.
The allocation minimises ``sum_l gap_l(r_l)`` under the budget by its Lagrangian (each matrix
takes the rank, or dense, minimising ``gap_l(r) + lambda cost_l(r)``; ``lambda`` bisected to
the budget), then fills the integer gap by the largest gap reduction per parameter.

``sensitivity-sqrt`` is the simpler rule of spec §16: each matrix keeps a fraction of its
break-even rank proportional to ``s_l ** 0.5``, one multiplier bisected to the budget.

The measurement is the :data:`~lowrank.alloc.base.Probe` that the method passes
(``needs_probe``; it needs the model and calibration text): each matrix without a
``BudgetItem.sensitivity`` gets ``probe(item, probe_rank(item))`` there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import DataError
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

POWER = 0.5


def probe_rank(item: BudgetItem) -> int:
    """The rank a sensitivity probe truncates ``item`` to: half its break-even rank."""
    return max(1, min(item.max_rank, int(0.5 * item.break_even)))


def _sensitivities(items: Sequence[BudgetItem], probe: Probe | None) -> dict[str, float]:
    """Each item's sensitivity, measured with ``probe`` where it has none yet."""
    for it in items:
        if it.sensitivity is None and probe is not None:
            it.sensitivity = probe(it, probe_rank(it))
    missing = [it.name for it in items if it.sensitivity is None]
    if missing:
        raise DataError("the 'sensitivity' allocators need measured sensitivities: run them "
                        "through lowrank.compress with calibration data (missing for "
                        f"{missing[:3]})")
    return {it.name: max(float(it.sensitivity), 1e-12) for it in items}


class _GapCurve:
    """``gap(r) = s T(r) / T(p)`` at every rank of one matrix, and its allowed ranks."""

    def __init__(self, item: BudgetItem, s: float, constraints: RankConstraints) -> None:
        energy = item.spectrum.detach().to(torch.float64).flatten() ** 2
        tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])  # T(0..n)
        ref = float(tail[min(probe_rank(item), tail.numel() - 1)])
        self.gap = (s * tail / max(ref, 1e-300)).tolist()
        lim = constraints.limits(item)
        self.ranks: list[int | None] = list(range(lim.lo, lim.hi + 1, constraints.align))
        if lim.dense_ok:
            self.ranks.append(None)
        self.costs = [item.cost(r) for r in self.ranks]

    def at(self, rank: int | None) -> float:
        if rank is None:
            return 0.0
        return self.gap[min(rank, len(self.gap) - 1)]

    def best(self, lam: float) -> int | None:
        values = [self.at(r) + lam * c for r, c in zip(self.ranks, self.costs, strict=True)]
        return self.ranks[min(range(len(values)), key=values.__getitem__)]


@ALLOCATORS.register
class Sensitivity(RankAllocator):
    """Minimise the predicted end-to-end loss ``sum_l s_l T_l(r_l) / T_l(p_l)`` under the
    budget (Lagrangian per matrix, multiplier bisected, integer gap filled greedily)."""

    name = "sensitivity"
    needs_probe = True

    def allocate(self, items: Sequence[BudgetItem], keep: float, *,
                 constraints: RankConstraints = UNCONSTRAINED,
                 probe: Probe | None = None) -> Allocation:
        sens = _sensitivities(items, probe)
        target = _target(items, keep, constraints)
        curves = {it.name: _GapCurve(it, sens[it.name], constraints) for it in items}
        # lambda's natural unit: a matrix's loss at its probe per parameter of its dense cost
        unit = sum(sens.values()) / sum(it.dense_cost() for it in items)

        def ranks_at(t: float) -> dict[str, int | None]:
            lam = unit * (1.0 - t) / max(t, 1e-12)
            return {it.name: curves[it.name].best(lam) for it in items}

        t, ranks = bisect_parameter(items, target, ranks_at, constraints=constraints)

        def priority(item: BudgetItem, k: int) -> float:
            curve = curves[item.name]
            nxt = k + constraints.align
            step = item.cost(nxt if nxt <= item.max_rank else None) - item.cost(k)
            return (curve.at(k) - curve.at(nxt if nxt <= item.max_rank else None)) / max(step, 1)

        ranks = greedy_fill(items, ranks, target, priority, constraints)
        predicted = sum(curves[it.name].at(ranks[it.name]) for it in items)
        details = {"rule": "lagrangian", "predicted_loss": predicted,
                   "sensitivity": {it.name: float(it.sensitivity) for it in items}}
        return finish("sensitivity", items, ranks, keep, details, constraints)


@ALLOCATORS.register
class SensitivitySqrt(RankAllocator):
    """Rank ``floor(min(1, m * w_l / mean w) * mn/(m+n))`` with ``w_l = s_l ** 0.5``."""

    name = "sensitivity-sqrt"
    needs_probe = True

    def allocate(self, items: Sequence[BudgetItem], keep: float, *,
                 constraints: RankConstraints = UNCONSTRAINED,
                 probe: Probe | None = None) -> Allocation:
        sens = _sensitivities(items, probe)
        weights = {name: s ** POWER for name, s in sens.items()}
        mean = sum(weights.values()) / len(weights)
        target = _target(items, keep, constraints)

        def ranks_at(t: float) -> dict[str, int | None]:
            scale = t / max(1.0 - t, 1e-12)  # t in [0, 1) -> multiplier in [0, inf)
            return {it.name: constraints.snap(
                it, math.floor(min(1.0, scale * weights[it.name] / mean) * it.break_even))
                for it in items}

        t, ranks = bisect_parameter(items, target, ranks_at, constraints=constraints)
        ranks = greedy_fill(items, ranks, target,
                            lambda it, k: weights[it.name] / mean - k / it.break_even, constraints)
        details = {"rule": "sqrt", "multiplier": t / max(1.0 - t, 1e-12), "power": POWER,
                   "sensitivity": {it.name: float(it.sensitivity) for it in items}}
        return finish("sensitivity-sqrt", items, ranks, keep, details, constraints)
