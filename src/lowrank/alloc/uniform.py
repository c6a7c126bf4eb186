"""Uniform allocation: every matrix keeps the same fraction of its break-even rank (SVD-LLM)."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


@ALLOCATORS.register
class Uniform(RankAllocator):
    """Rank ``floor(f * mn/(m+n))`` for every matrix, ``f`` bisected to meet the budget.

    Integer rounding is then closed by adding ranks (``constraints.align`` at a time) to the
    matrices furthest below the common fraction, so the total lands within one rank step of
    the budget. Ranks are clamped to each matrix's ``min_keep``/``max_keep`` limits.
    """

    name = "uniform"
    needs_spectrum = False

    def allocate(self, items: Sequence[BudgetItem], keep: float, *,
                 constraints: RankConstraints = UNCONSTRAINED,
                 probe: Probe | None = None) -> Allocation:
        target = _target(items, keep, constraints)

        def ranks_at(f: float) -> dict[str, int | None]:
            return {it.name: constraints.snap(it, math.floor(f * it.break_even))
                    for it in items}

        f, ranks = bisect_parameter(items, target, ranks_at, constraints=constraints)
        ranks = greedy_fill(items, ranks, target, lambda it, k: -k / it.break_even,
                            constraints)
        return finish("uniform", items, ranks, keep, {"fraction_of_break_even": f},
                      constraints)
