"""The global parameter budget that every rank allocator must meet."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..nn.accounting import break_even_rank, linear_params


@dataclass
class BudgetItem:
    """One targeted matrix: its shape, bias, and weighted singular values (descending)."""

    name: str
    out_features: int
    in_features: int
    bias: bool
    spectrum: torch.Tensor

    @property
    def break_even(self) -> float:
        return break_even_rank(self.out_features, self.in_features)

    @property
    def max_rank(self) -> int:
        """Largest rank that still stores fewer parameters than the dense matrix."""
        m, n = self.out_features, self.in_features
        return min(min(m, n), (m * n - 1) // (m + n))

    def cost(self, rank: int | None) -> int:
        return linear_params(self.out_features, self.in_features, rank, self.bias)

    def dense_cost(self) -> int:
        return self.cost(None)


@dataclass
class Allocation:
    """Ranks chosen per matrix (``None`` = stays dense) and how the budget was met."""

    allocator: str
    ranks: dict[str, int | None]
    target_params: int
    params_before: int
    params_after: int
    details: dict = field(default_factory=dict)

    @property
    def keep_actual(self) -> float:
        return self.params_after / self.params_before

    def to_dict(self) -> dict:
        return {"allocator": self.allocator, "ranks": self.ranks,
                "target_params": self.target_params, "params_before": self.params_before,
                "params_after": self.params_after, "keep_actual": self.keep_actual,
                "details": self.details}


def clamp_rank(item: BudgetItem, rank: int) -> int | None:
    """A rank in [1, max_rank], or ``None`` when factorizing at ``rank`` would not save."""
    if rank > item.max_rank:
        return None
    return max(1, rank)


def total_cost(items: Sequence[BudgetItem], ranks: dict[str, int | None]) -> int:
    return sum(item.cost(ranks[item.name]) for item in items)


def bisect_parameter(
    items: Sequence[BudgetItem],
    target: int,
    ranks_at: Callable[[float], dict[str, int | None]],
    iters: int = 60,
) -> tuple[float, dict[str, int | None]]:
    """Largest ``t`` in [0, 1] whose ranks ``ranks_at(t)`` fit in ``target`` (cost increasing)."""
    lo, hi = 0.0, 1.0
    if target >= sum(item.dense_cost() for item in items):
        return hi, {item.name: None for item in items}  # the budget allows everything dense
    if total_cost(items, ranks_at(hi)) <= target:
        return hi, ranks_at(hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if total_cost(items, ranks_at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return lo, ranks_at(lo)


def greedy_fill(
    items: Sequence[BudgetItem],
    ranks: dict[str, int | None],
    target: int,
    priority: Callable[[BudgetItem, int], float],
) -> dict[str, int | None]:
    """Add one rank at a time where ``priority(item, current_rank)`` is highest, while it fits.

    Closes the gap that integer ranks leave between the bisected allocation and the budget.
    """
    ranks = dict(ranks)
    spent = total_cost(items, ranks)
    heap = []
    for i, item in enumerate(items):
        k = ranks[item.name]
        if k is not None and k < item.max_rank:
            heapq.heappush(heap, (-priority(item, k), i))
    while heap:
        _, i = heapq.heappop(heap)
        item = items[i]
        k = ranks[item.name]
        step = item.out_features + item.in_features
        if spent + step > target:
            continue
        ranks[item.name] = k + 1
        spent += step
        if k + 1 < item.max_rank:
            heapq.heappush(heap, (-priority(item, k + 1), i))
    return ranks


def finish(allocator: str, items: Sequence[BudgetItem], ranks: dict[str, int | None],
           keep: float, details: dict) -> Allocation:
    before = sum(item.dense_cost() for item in items)
    return Allocation(allocator, ranks, int(math.floor(keep * before)), before,
                      total_cost(items, ranks), details)


def target_params(items: Sequence[BudgetItem], keep: float) -> int:
    return int(math.floor(keep * sum(item.dense_cost() for item in items)))
