"""Output-error allocation: greedy marginal analysis over measured option menus.

Every layer offers options of increasing cost with a measured error each (for convolutions:
the squared relative output error of the layer factorized at a grid of keeps, on calibration
images). Starting from the cheapest option everywhere, the layer whose move to a larger option
lowers the summed error most per added parameter is upgraded while the budget ``keep`` of the
layers' dense cost allows (as in budgeted rank allocation). Any larger option of a layer is a
candidate, so that plateaus (equal costs) or a non-monotone error do not stop the greedy early.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from .base import ALLOCATORS, Menu, OptionAllocator


@ALLOCATORS.register
class OutputError(OptionAllocator):
    """Greedy upgrades by error removed per added parameter (see module docstring)."""

    name = "output-error"

    def choose(self, menus: Sequence[Menu], keep: float) -> dict[str, int]:
        budget = keep * sum(m.dense_cost for m in menus)
        level = {m.name: 0 for m in menus}
        used = sum(m.costs[0] for m in menus)
        if used > budget:
            raise ConfigError(f"keep={keep} is below what the cheapest options need ({used} of "
                              f"{sum(m.dense_cost for m in menus)} parameters)")
        while True:
            best, best_gain = None, 0.0
            for m in menus:
                p0, e0 = m.costs[level[m.name]], m.errors[level[m.name]]
                for j in range(level[m.name] + 1, len(m.costs)):
                    p1, e1 = m.costs[j], m.errors[j]
                    if used - p0 + p1 > budget:
                        continue
                    gain = (e0 - e1) / max(p1 - p0, 1)
                    if gain > best_gain:
                        best, best_gain = (m, j), gain
            if best is None:
                return level
            m, j = best
            used += m.costs[j] - m.costs[level[m.name]]
            level[m.name] = j
