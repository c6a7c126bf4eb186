"""The global parameter budget that every rank allocator must meet, and the per-matrix
constraints (:class:`RankConstraints`: keep bounds and rank alignment) that every allocator
honours while meeting it (spec §15.3).

A rank allocator (:class:`lowrank.alloc.base.RankAllocator`) maps ``(items, keep,
constraints)`` to an :class:`Allocation`. The shared pieces here do the constrained part once:
:meth:`RankConstraints.snap` maps any raw rank to the nearest allowed one (so each allocator's
``ranks_at`` stays a plain rule),
:func:`target_params` checks that the bounds can reach the budget at all,
:func:`bisect_parameter` finds the largest setting of the allocator's one knob that fits, and
:func:`greedy_fill` closes the integer gap in steps of ``align`` ranks. :func:`greedy_choice`
is the one budgeted-choice routine (one option per item, most error removed per unit of cost
first) under ``greedy_fill``, the ``output-error`` allocator and LR²VQ's slack spreading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError
from ..nn.accounting import break_even_rank, linear_params

#: Relative tolerance on the global budget: an allocation lands within 0.5% of the target
#: whenever the constraints allow it (with ``align > 1``: within one aligned rank step).
BUDGET_TOLERANCE = 0.005


@dataclass
class BudgetItem:
    """One targeted matrix: its shape, bias, and weighted singular values (descending).

    ``spectrum`` is the method's (weighted, e.g. whitened) spectrum; ``weight_spectrum`` the
    plain singular values of the weight, filled only for allocators that declare
    ``needs_weight_spectrum``; :attr:`plain_spectrum` falls back to ``spectrum``.
    """

    name: str
    out_features: int
    in_features: int
    bias: bool
    spectrum: torch.Tensor
    weight_spectrum: torch.Tensor | None = None
    sensitivity: float | None = None  # measured end-to-end effect (the 'sensitivity' allocator)

    @property
    def plain_spectrum(self) -> torch.Tensor:
        return self.spectrum if self.weight_spectrum is None else self.weight_spectrum

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


class RankLimits(NamedTuple):
    """Allowed ranks of one matrix: multiples of the alignment in ``[lo, hi]`` (none when
    ``lo > hi``), plus dense (``None``) when ``dense_ok``."""

    lo: int
    hi: int
    dense_ok: bool


@dataclass(frozen=True)
class RankConstraints:
    """Per-matrix bounds that every allocator honours (spec §15.3).

    ``min_keep`` / ``max_keep`` bound what each matrix stores after compression as a fraction
    of its own dense parameters (weight and bias: the unit of the global budget). A matrix
    factorized at rank ``k`` stores ``k (m + n)`` (+ bias), which must lie within
    ``[min_keep, max_keep]`` times its dense parameters. A matrix left dense keeps the fraction
    1, so dense is allowed only while ``max_keep == 1``: ``max_keep < 1`` factorizes every
    matrix. ``align`` makes every rank a multiple of ``align`` (8/16/64 suit GEMM kernels;
    ranks are rounded down, at least ``align``); a matrix whose smallest allowed aligned rank
    would not save parameters stays dense.
    """

    min_keep: float = 0.0
    max_keep: float = 1.0
    align: int = 1

    def __post_init__(self) -> None:
        for name in ("min_keep", "max_keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        if not 0 <= self.min_keep <= 1:
            raise ConfigError(f"min_keep must be in [0, 1] (fraction of each matrix's dense "
                              f"parameters), got {self.min_keep}")
        if not 0 < self.max_keep <= 1:
            raise ConfigError(f"max_keep must be in (0, 1] (fraction of each matrix's dense "
                              f"parameters), got {self.max_keep}")
        if self.min_keep > self.max_keep:
            raise ConfigError(f"min_keep must not exceed max_keep, got min_keep="
                              f"{self.min_keep} > max_keep={self.max_keep}")
        if isinstance(self.align, bool) or not isinstance(self.align, int) or self.align < 1:
            raise ConfigError(f"align must be an int >= 1 (ranks are multiples of it), got "
                              f"{self.align!r}")

    def describe(self) -> str:
        return f"min_keep={self.min_keep:g}, max_keep={self.max_keep:g}, align={self.align}"

    def limits(self, item: BudgetItem) -> RankLimits:
        """The ranks ``item`` may take under these bounds."""
        a, dense = self.align, item.dense_cost()
        base = item.cost(0)  # the cost is affine in the rank: base + rank * step
        step = item.cost(1) - base
        hi = item.max_rank // a * a
        if self.max_keep < 1:  # base + rank * step <= max_keep * dense
            hi = min(hi, math.floor((self.max_keep * dense - base) / step + 1e-9) // a * a)
        lo = max(a, -(-math.ceil((self.min_keep * dense - base) / step - 1e-9) // a) * a)
        return RankLimits(lo, hi, self.max_keep >= 1)

    def snap(self, item: BudgetItem, rank: int | None) -> int | None:
        """The allowed rank for a raw ``rank``: rounded down to a multiple of ``align`` and
        clamped to the limits; ``None`` or a rank above ``max_rank`` means dense (or the
        largest allowed rank when ``max_keep < 1``).

        Monotone: a larger raw rank never maps to a smaller cost, so bisection stays valid.
        """
        lim = self.limits(item)
        if lim.lo > lim.hi:
            if not lim.dense_ok:
                raise ConfigError(self._no_rank_message(item))
            return None
        if rank is None or rank > item.max_rank:
            return None if lim.dense_ok else lim.hi
        return min(max(rank // self.align * self.align, lim.lo), lim.hi)

    def cost_range(self, items: Sequence[BudgetItem]) -> tuple[int, int]:
        """Smallest and largest total parameters these bounds allow for ``items``."""
        low = high = 0
        for item in items:
            lim = self.limits(item)
            if lim.lo > lim.hi and not lim.dense_ok:
                raise ConfigError(self._no_rank_message(item))
            low += item.cost(lim.lo) if lim.lo <= lim.hi else item.dense_cost()
            high += item.dense_cost() if lim.dense_ok else item.cost(lim.hi)
        return low, high

    def _no_rank_message(self, item: BudgetItem) -> str:
        lo = self.limits(item).lo
        return (f"no rank of '{item.name}' ({item.out_features}x{item.in_features}) satisfies "
                f"{self.describe()}: its smallest allowed rank {lo} keeps "
                f"{item.cost(lo) / item.dense_cost():.4f} of its parameters, and max_keep < 1 "
                f"forbids leaving it dense")


UNCONSTRAINED = RankConstraints()


def total_cost(items: Sequence[BudgetItem], ranks: dict[str, int | None]) -> int:
    return sum(item.cost(ranks[item.name]) for item in items)


def bisect_parameter(
    items: Sequence[BudgetItem],
    target: int,
    ranks_at: Callable[[float], dict[str, int | None]],
    iters: int = 60,
    constraints: RankConstraints = UNCONSTRAINED,
) -> tuple[float, dict[str, int | None]]:
    """Largest ``t`` in [0, 1] whose ranks ``ranks_at(t)`` fit in ``target`` (cost increasing).

    ``ranks_at`` should already map its raw ranks through ``constraints.snap``; the constraints
    are needed here only to know whether "everything dense" is an allowed answer.
    """
    lo, hi = 0.0, 1.0
    if constraints.max_keep >= 1 and target >= sum(item.dense_cost() for item in items):
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


#: One move offered to :func:`greedy_choice`: ``(new option, added cost, gain)``.
Move = tuple[Any, float, float]


def greedy_choice(options: list[Any], remaining: float,
                  moves: Callable[[int, Any, float], Iterable[Move]]) -> float:
    """Pick one option per item under a budget by marginal analysis (the greedy of budgeted
    allocation: most error removed per unit of added cost first).

    Item ``i`` holds ``options[i]`` (updated in place); ``remaining`` is the budget left.
    Each round every item lists the moves it can afford, ``moves(i, options[i], remaining)``
    -> ``(new option, added cost, gain)`` (the gain: error removed per unit of cost, or any
    priority), and the move of largest gain is taken (ties: the first listed). Stops when no
    item offers a move; returns the budget left.
    """
    while True:
        best: tuple[int, Any, float] | None = None
        best_gain = 0.0
        for i, current in enumerate(options):
            for option, cost, gain in moves(i, current, remaining):
                if best is None or gain > best_gain:
                    best, best_gain = (i, option, cost), gain
        if best is None:
            return remaining
        i, option, cost = best
        options[i] = option
        remaining -= cost


def greedy_fill(
    items: Sequence[BudgetItem],
    ranks: dict[str, int | None],
    target: int,
    priority: Callable[[BudgetItem, int], float],
    constraints: RankConstraints = UNCONSTRAINED,
) -> dict[str, int | None]:
    """Add ``align`` ranks at a time where ``priority(item, current_rank)`` is highest, while it
    fits in ``target`` and the rank stays within the item's limits; a matrix already at its
    largest allowed rank may instead go dense (exact) where the bounds allow it and it fits.

    Closes the gap that integer (aligned) ranks leave between the bisected allocation and the
    budget: afterwards no factorized matrix could take its next step without exceeding it.
    """
    a = constraints.align
    limits = [constraints.limits(item) for item in items]

    def step(i: int, k: int | None, remaining: float) -> list[Move]:
        """The next allowed rank above ``k`` (``None``: dense) if it fits."""
        if k is None:
            return []
        if k + a <= limits[i].hi:
            new = k + a
        elif limits[i].dense_ok:
            new = None
        else:
            return []
        cost = items[i].cost(new) - items[i].cost(k)
        return [(new, cost, priority(items[i], k))] if cost <= remaining else []

    chosen = [ranks[item.name] for item in items]
    greedy_choice(chosen, target - total_cost(items, ranks), step)
    return {**ranks, **{item.name: k for item, k in zip(items, chosen, strict=True)}}


def finish(allocator: str, items: Sequence[BudgetItem], ranks: dict[str, int | None],
           keep: float, details: dict,
           constraints: RankConstraints = UNCONSTRAINED) -> Allocation:
    before = sum(item.dense_cost() for item in items)
    details = {**details, "constraints": asdict(constraints)}
    return Allocation(allocator, ranks, int(math.floor(keep * before)), before,
                      total_cost(items, ranks), details)


def target_params(items: Sequence[BudgetItem], keep: float,
                  constraints: RankConstraints = UNCONSTRAINED) -> int:
    """The budget ``floor(keep * dense parameters)``; raises :class:`ConfigError` when the
    constraints cannot come within the budget tolerance of it, saying what they allow."""
    before = sum(item.dense_cost() for item in items)
    target = int(math.floor(keep * before))
    low, high = constraints.cost_range(items)
    if low > target * (1 + BUDGET_TOLERANCE) or high < target * (1 - BUDGET_TOLERANCE):
        raise ConfigError(
            f"keep={keep:g} cannot be met under {constraints.describe()}: over these "
            f"{len(items)} matrices the bounds allow keep between {low / before:.4f} and "
            f"{high / before:.4f} of the targeted parameters")
    return target
