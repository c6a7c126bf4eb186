"""Output-error allocation: greedy marginal analysis over measured option menus.

Every layer offers options of increasing cost with a measured error each (for convolutions:
the squared relative output error of the layer factorized at a grid of keeps, on calibration
images). Starting from the cheapest option everywhere, the layer whose move to a larger option
lowers the summed error most per added parameter is upgraded while the budget ``keep`` of the
layers' dense cost allows (as in budgeted rank allocation). Any larger option of a layer is a
candidate, so that plateaus (equal costs) or a non-monotone error do not stop the greedy early
(:func:`~lowrank.alloc.budget.greedy_choice`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from .base import ALLOCATORS, Menu, OptionAllocator
from .budget import Move, greedy_choice


@ALLOCATORS.register
class OutputErrorAllocator(OptionAllocator):
    """Greedy upgrades by error removed per added parameter (see module docstring)."""

    name = "output-error"

    def choose(self, menus: Sequence[Menu], keep: float) -> dict[str, int]:
        budget = keep * sum(m.dense_cost for m in menus)
        used = sum(m.costs[0] for m in menus)
        if used > budget:
            raise ConfigError(f"keep={keep} is below what the cheapest options need ({used} of "
                              f"{sum(m.dense_cost for m in menus)} parameters)")

        def upgrades(i: int, level: int, remaining: float) -> list[Move]:
            """Every larger option of menu ``i`` that fits and lowers its error."""
            m = menus[i]
            p0, e0 = m.costs[level], m.errors[level]
            found = []
            for j in range(level + 1, len(m.costs)):
                p1, e1 = m.costs[j], m.errors[j]
                gain = (e0 - e1) / max(p1 - p0, 1)
                if p1 - p0 <= remaining and gain > 0:
                    found.append((j, p1 - p0, gain))
            return found

        levels = [0] * len(menus)
        greedy_choice(levels, budget - used, upgrades)
        return {m.name: level for m, level in zip(menus, levels, strict=True)}
