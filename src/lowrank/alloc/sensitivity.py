"""Sensitivity allocation: spend the budget where the model's end-to-end quality needs it.

Each matrix's sensitivity ``s_l`` is measured, not estimated from its spectrum: the relative
change of the model's final outputs on calibration passages when only that matrix is truncated
to a probe rank (half its break-even rank), everything else intact (the measurement-driven
allocation of ASVD's STRS, done once per matrix instead of a sweep). Each matrix then keeps a
fraction of its break-even rank proportional to ``s_l ** power`` (``power = 0.5`` by default),
with one common multiplier bisected to meet the global budget, and the integer gap filled
where the sensitivity per parameter is highest.

The probes come from :func:`lowrank.compress` (they need the model and calibration text);
the allocator itself only reads ``BudgetItem.sensitivity``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import DataError
from ..registry import register_allocator
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


@register_allocator("sensitivity")
def sensitivity(items: Sequence[BudgetItem], keep: float, *,
                constraints: RankConstraints = UNCONSTRAINED) -> Allocation:
    """Rank ``floor(min(1, m * w_l / mean w) * mn/(m+n))`` with ``w_l = s_l ** 0.5``."""
    missing = [it.name for it in items if getattr(it, "sensitivity", None) is None]
    if missing:
        raise DataError("the 'sensitivity' allocator needs measured sensitivities: run it "
                        "through lowrank.compress with calibration data (missing for "
                        f"{missing[:3]})")
    weights = {it.name: max(float(it.sensitivity), 1e-12) ** POWER for it in items}
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
    details = {"multiplier": t / max(1.0 - t, 1e-12), "power": POWER,
               "sensitivity": {it.name: float(it.sensitivity) for it in items}}
    return finish("sensitivity", items, ranks, keep, details, constraints)


sensitivity.needs_probe = True  # type: ignore[attr-defined]
