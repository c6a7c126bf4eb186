"""Every allocator meets the global budget under per-matrix bounds and rank alignment (§15.3)."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank import SVDLLM
from lowrank.alloc import (
    ALLOCATORS,
    BudgetItem,
    Menu,
    OutputErrorAllocator,
    RankConstraints,
    total_cost,
)
from lowrank.alloc.budget import greedy_choice, greedy_fill
from lowrank.errors import ConfigError

NAMES = ["uniform", "energy", "welore", "svdllm-v2", "sensitivity", "sensitivity-sqrt"]
KEEPS = [0.2, 0.35, 0.5, 0.65, 0.8, 0.95]


@pytest.fixture(scope="module")
def items() -> list[BudgetItem]:
    """24 random shapes in 6 repeated 'types' (so V2 has groups), mixed biases and spectra.

    The weight spectrum differs from the method's one (power law vs geometric), as it does
    after whitening.
    """
    gen = torch.Generator().manual_seed(5)
    shapes = [(int(torch.randint(24, 200, (1,), generator=gen)),
               int(torch.randint(24, 200, (1,), generator=gen))) for _ in range(6)]
    out = []
    for layer in range(4):
        for t, (m, n) in enumerate(shapes):
            r = min(m, n)
            decay = float(0.8 + 0.19 * torch.rand(1, generator=gen))
            noise = 1 + 0.1 * torch.rand(r, generator=gen, dtype=torch.float64)
            s = (decay ** torch.arange(r, dtype=torch.float64) * noise).sort(descending=True)
            power = float(0.3 + 1.5 * torch.rand(1, generator=gen))
            w = torch.arange(1, r + 1, dtype=torch.float64) ** -power
            sens = float(10 ** (-3 * torch.rand(1, generator=gen)))  # measured loss at probe
            out.append(BudgetItem(f"blocks.{layer}.type{t}", m, n, bool(t % 2), 50 * s.values,
                                  weight_spectrum=w, sensitivity=sens))
    return out


def _dense(items: list[BudgetItem]) -> int:
    return sum(it.dense_cost() for it in items)


def _check_constraints(items, alloc, c: RankConstraints) -> None:
    for it in items:
        k = alloc.ranks[it.name]
        if k is None:
            assert c.max_keep == 1.0, f"{it.name} dense although max_keep < 1"
            continue
        assert 1 <= k <= it.max_rank and it.cost(k) < it.dense_cost()
        assert k % c.align == 0, (it.name, k)
        frac = it.cost(k) / it.dense_cost()
        assert c.min_keep - 1e-12 <= frac <= c.max_keep + 1e-12, (it.name, k, frac)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("keep", KEEPS)
def test_budget_within_half_percent(items, name, keep):
    alloc = ALLOCATORS.get(name)().allocate(items, keep)
    assert alloc.allocator == name
    assert alloc.params_before == _dense(items)
    assert alloc.params_after == total_cost(items, alloc.ranks)
    assert alloc.params_after <= alloc.target_params
    assert abs(alloc.keep_actual - keep) / keep <= 0.005
    _check_constraints(items, alloc, RankConstraints())
    assert alloc.details["constraints"] == {"min_keep": 0.0, "max_keep": 1.0, "align": 1}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("keep", [0.2, 0.5, 0.8, 0.95])
def test_alignment_to_multiples_of_8(items, name, keep):
    c = RankConstraints(align=8)
    alloc = ALLOCATORS.get(name)().allocate(items, keep, constraints=c)
    _check_constraints(items, alloc, c)
    assert any(k is not None for k in alloc.ranks.values())
    # within one aligned step of the budget, never over it
    step = max(it.cost(8) - it.cost(0) for it in items)
    assert 0 <= alloc.target_params - alloc.params_after < step
    assert alloc.details["constraints"]["align"] == 8


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("keep", "lo", "hi"), [(0.3, 0.15, 0.6), (0.5, 0.3, 0.7),
                                                (0.6, 0.2, 1.0), (0.25, 0.0, 0.3)])
def test_keep_bounds_are_honoured(items, name, keep, lo, hi):
    c = RankConstraints(min_keep=lo, max_keep=hi)
    alloc = ALLOCATORS.get(name)().allocate(items, keep, constraints=c)
    _check_constraints(items, alloc, c)
    assert abs(alloc.keep_actual - keep) / keep <= 0.005


@pytest.mark.parametrize("name", NAMES)
def test_bounds_and_alignment_together(items, name):
    c = RankConstraints(min_keep=0.2, max_keep=0.9, align=8)
    alloc = ALLOCATORS.get(name)().allocate(items, 0.55, constraints=c)
    _check_constraints(items, alloc, c)
    step = max(it.cost(8) - it.cost(0) for it in items)
    assert 0 <= alloc.target_params - alloc.params_after < step


@pytest.mark.parametrize("name", NAMES)
def test_bounds_bind(items, name):
    """A tight band forces every matrix into it, whatever the allocator would prefer."""
    c = RankConstraints(min_keep=0.45, max_keep=0.55)
    alloc = ALLOCATORS.get(name)().allocate(items, 0.5, constraints=c)
    _check_constraints(items, alloc, c)
    assert abs(alloc.keep_actual - 0.5) / 0.5 <= 0.005


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("keep", "c"), [
    (0.9, RankConstraints(max_keep=0.5)),  # cannot keep 90% if no matrix may keep over 50%
    (0.3, RankConstraints(min_keep=0.6)),  # nor 30% if each factorized matrix keeps >= 60%
    (0.005, RankConstraints()),  # rank 1 everywhere already costs more
])
def test_infeasible_bounds_raise(items, name, keep, c):
    with pytest.raises(ConfigError, match=r"cannot be met under .* allow keep between"):
        ALLOCATORS.get(name)().allocate(items, keep, constraints=c)


def test_max_keep_below_smallest_rank_names_the_matrix():
    items = [BudgetItem("tiny", 16, 16, False, torch.ones(16, dtype=torch.float64)),
             BudgetItem("big", 256, 256, False, torch.ones(256, dtype=torch.float64))]
    with pytest.raises(ConfigError, match="'tiny'.*max_keep < 1 forbids leaving it dense"):
        ALLOCATORS.get("uniform")().allocate(items, 0.02,
                                             constraints=RankConstraints(max_keep=0.02))


def test_aligned_rank_that_cannot_save_stays_dense():
    # 12x12: break-even rank 6, largest saving rank 5 -> no multiple of 8 saves: dense
    items = [BudgetItem("small", 12, 12, False, torch.ones(12, dtype=torch.float64),
                        sensitivity=0.1),
             BudgetItem("big", 128, 128, False, 0.9 ** torch.arange(128, dtype=torch.float64),
                        sensitivity=0.1)]
    c = RankConstraints(align=8)
    assert c.limits(items[0]).lo > c.limits(items[0]).hi
    for name in NAMES:
        alloc = ALLOCATORS.get(name)().allocate(items, 0.5, constraints=c)
        assert alloc.ranks["small"] is None
        assert alloc.ranks["big"] % 8 == 0


def test_snap_is_monotone_and_idempotent(items):
    for c in [RankConstraints(), RankConstraints(0.1, 0.8, 8), RankConstraints(0.3, 1.0, 16)]:
        for it in items[:6]:
            costs = []
            for raw in [*range(0, it.max_rank + 3), None]:
                k = c.snap(it, raw)
                assert c.snap(it, k) == k
                costs.append(it.cost(k))
            assert costs == sorted(costs)


def test_limits_match_the_cost_bounds():
    it = BudgetItem("x", 96, 64, True, torch.ones(64, dtype=torch.float64))
    c = RankConstraints(min_keep=0.25, max_keep=0.75, align=4)
    lim = c.limits(it)
    dense = it.dense_cost()
    assert lim.lo % 4 == 0 and lim.hi % 4 == 0 and not lim.dense_ok
    assert it.cost(lim.lo) >= 0.25 * dense > it.cost(lim.lo - 4)
    assert it.cost(lim.hi) <= 0.75 * dense < it.cost(lim.hi + 4)


def test_greedy_fill_steps_by_align_and_can_finish_dense():
    items = [BudgetItem("a", 64, 64, False, torch.ones(64, dtype=torch.float64)),
             BudgetItem("b", 64, 64, False, torch.ones(64, dtype=torch.float64))]
    c = RankConstraints(align=8)
    # 40 ranks of 128 parameters: 8 ranks at a time, lowest rank first (ties: first item)
    ranks = greedy_fill(items, {"a": 8, "b": 8}, 40 * 128, lambda it, k: -k, c)
    assert ranks == {"a": 24, "b": 16}
    # 24 is the largest aligned saving rank (max_rank 31): the next step is dense, and only
    # one of the two dense steps (1024 parameters each) fits
    ranks = greedy_fill(items, {"a": 24, "b": 24}, 64 * 64 + 24 * 128, lambda it, k: -k, c)
    assert ranks == {"a": None, "b": 24}


def test_greedy_choice_takes_the_best_gain_per_cost_that_fits():
    # item options: (cost, error); moves to any costlier option with less error
    menus = [[(0, 10.0), (4, 2.0), (10, 0.0)], [(0, 5.0), (2, 1.0)], [(0, 1.0), (8, 0.5)]]

    def moves(i, level, remaining):
        c0, e0 = menus[i][level]
        return [(j, c - c0, (e0 - e) / (c - c0)) for j, (c, e) in enumerate(menus[i])
                if j > level and c - c0 <= remaining and e < e0]

    levels = [0, 0, 0]
    # item 0 (cost 4) and item 1 (cost 2) both gain 2.0 per unit: the first listed, item 0,
    # goes first, then item 1, then item 0 again (6 more at 0.33); item 2 (8 at 0.0625)
    # no longer fits
    left = greedy_choice(levels, 12, moves)
    assert levels == [2, 1, 0] and left == 0
    levels = [0, 0, 0]
    assert greedy_choice(levels, 5, moves) == 1 and levels == [1, 0, 0]
    assert greedy_choice([0, 0, 0], 0, moves) == 0  # nothing fits


def test_output_error_allocator_spends_the_budget_by_error_per_parameter():
    menus = [Menu("a", 100, [10, 20, 40], [0.5, 0.1, 0.05]),
             Menu("b", 100, [10, 30], [0.2, 0.0]),
             Menu("c", 100, [10, 50], [0.3, 0.29])]
    # budget 0.3 * 300 = 90: start 30; a -> 1 (0.04/param), b -> 1 (0.01), a -> 2 (0.0025)
    assert OutputErrorAllocator().choose(menus, 0.3) == {"a": 2, "b": 1, "c": 0}
    with pytest.raises(ConfigError, match="cheapest options"):
        OutputErrorAllocator().choose(menus, 0.05)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("min_keep", -0.1, r"min_keep must be in \[0, 1\].*-0.1"),
    ("min_keep", "a", "min_keep must be a number"),
    ("max_keep", 0.0, r"max_keep must be in \(0, 1\].*0.0"),
    ("max_keep", 1.5, r"max_keep must be in \(0, 1\].*1.5"),
    ("rank_align", 0, "rank_align must be an int >= 1.*0"),
    ("rank_align", 2.5, "rank_align must be an int >= 1.*2.5"),
    ("rank_align", True, "rank_align must be an int >= 1.*True"),
])
def test_config_validation(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        SVDLLM(**{field: value})


def test_config_fields_and_constraints():
    with pytest.raises(ConfigError, match="min_keep must not exceed max_keep"):
        SVDLLM(min_keep=0.7, max_keep=0.5)
    config = SVDLLM(keep=0.5, min_keep=0.1, max_keep=0.9, rank_align=8, alloc="welore")
    assert config.constraints == RankConstraints(0.1, 0.9, 8)
    d = config.to_dict()
    assert (d["min_keep"], d["max_keep"], d["rank_align"]) == (0.1, 0.9, 8)
    help_text = SVDLLM.help()
    assert all(help_text[f] for f in ("min_keep", "max_keep", "rank_align"))
    assert "welore" in help_text["alloc"] and "svdllm-v2" in help_text["alloc"]
    with pytest.raises(ConfigError, match="align must be an int"):
        RankConstraints(align=0)
    assert math.isclose(SVDLLM(min_keep=0).min_keep, 0.0)
