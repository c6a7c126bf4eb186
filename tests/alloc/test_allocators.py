"""Rank allocators meet one global parameter budget (spec §0.1, §15.3)."""

from __future__ import annotations

import pytest
import torch

from lowrank.alloc import ALLOCATORS, Allocation, BudgetItem, total_cost
from lowrank.errors import ConfigError

NAMES = ["uniform", "energy"]
KEEPS = [0.2, 0.4, 0.6, 0.8, 0.95]


def _spectrum(n: int, decay: float) -> torch.Tensor:
    return decay ** torch.arange(n, dtype=torch.float64)


@pytest.fixture(scope="module")
def items() -> list[BudgetItem]:
    """A mix of 16 random shapes (with and without bias) and random decaying spectra."""
    gen = torch.Generator().manual_seed(11)
    out = []
    for i in range(16):
        m = int(torch.randint(24, 200, (1,), generator=gen))
        n = int(torch.randint(24, 200, (1,), generator=gen))
        decay = float(0.8 + 0.19 * torch.rand(1, generator=gen))
        noise = 1 + 0.1 * torch.rand(min(m, n), generator=gen, dtype=torch.float64)
        s = (_spectrum(min(m, n), decay) * noise).sort(descending=True).values
        out.append(BudgetItem(f"m{i}", m, n, bool(i % 2), s))
    return out


def _max_step(items: list[BudgetItem]) -> int:
    return max(it.out_features + it.in_features for it in items)


def test_registry_lists_builtins():
    assert set(NAMES) <= set(ALLOCATORS.names())
    with pytest.raises(ConfigError, match="allocator"):
        ALLOCATORS.get("no-such-allocator")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("keep", KEEPS)
def test_budget_is_met(items, name, keep):
    alloc = ALLOCATORS.get(name)().allocate(items, keep)
    assert isinstance(alloc, Allocation)
    assert alloc.allocator == name
    before = sum(it.dense_cost() for it in items)
    assert alloc.params_before == before
    assert alloc.params_after == total_cost(items, alloc.ranks)
    assert alloc.target_params == int(keep * before)
    assert abs(alloc.keep_actual - keep) / keep <= 0.005
    assert alloc.params_after <= alloc.target_params + _max_step(items)
    assert set(alloc.ranks) == {it.name for it in items}
    for it in items:
        k = alloc.ranks[it.name]
        if k is not None:
            assert 1 <= k <= it.max_rank
            assert it.cost(k) < it.dense_cost()
    d = alloc.to_dict()
    assert d["keep_actual"] == alloc.keep_actual and d["ranks"] == alloc.ranks


@pytest.mark.parametrize("name", NAMES)
def test_keep_one_leaves_everything_dense(items, name):
    alloc = ALLOCATORS.get(name)().allocate(items, 1.0)
    assert alloc.ranks == {it.name: None for it in items}
    assert alloc.keep_actual == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_keep_one_on_square_and_nonsquare(name):
    # 64x96 has a non-integer break-even rank, 64x64 an integer one; keep=1 must not factorize
    # either (factorizing at max_rank saves < m+n parameters and adds approximation error).
    items = [BudgetItem("a", 64, 96, True, _spectrum(64, 0.9)),
             BudgetItem("b", 64, 64, False, _spectrum(64, 0.9))]
    alloc = ALLOCATORS.get(name)().allocate(items, 1.0)
    assert alloc.ranks == {"a": None, "b": None}


def test_max_rank_is_largest_saving_rank():
    for m, n in [(64, 64), (64, 96), (7, 300), (1, 1), (3, 5)]:
        it = BudgetItem("x", m, n, False, _spectrum(min(m, n), 0.9))
        k = it.max_rank
        assert k <= min(m, n)
        if k >= 1:
            assert k * (m + n) < m * n
        if k < min(m, n):
            assert (k + 1) * (m + n) >= m * n


def test_uniform_gives_equal_ranks_to_equal_shapes():
    items = [BudgetItem(f"q{i}", 128, 128, True, _spectrum(128, 0.5 + 0.1 * i))
             for i in range(4)]
    alloc = ALLOCATORS.get("uniform")().allocate(items, 0.5)
    ranks = [alloc.ranks[it.name] for it in items]
    assert max(ranks) - min(ranks) <= 1


def test_energy_gives_more_rank_to_flatter_spectra():
    n = 128
    items = [
        BudgetItem("flat", n, n, False, torch.linspace(1.0, 0.9, n, dtype=torch.float64)),
        BudgetItem("steep", n, n, False, _spectrum(n, 0.85)),
        BudgetItem("medium", n, n, False, _spectrum(n, 0.97)),
    ]
    alloc = ALLOCATORS.get("energy")().allocate(items, 0.4)
    r = alloc.ranks
    assert r["flat"] is not None and r["steep"] is not None and r["medium"] is not None
    assert r["flat"] > r["medium"] > r["steep"]
    # integer ranks leave a gap below the budget smaller than one rank step (m + n)
    assert 0 <= alloc.target_params - alloc.params_after < 2 * n


def test_energy_threshold_is_reported(items):
    alloc = ALLOCATORS.get("energy")().allocate(items, 0.5)
    tau = alloc.details["energy_kept_threshold"]
    assert 0.0 <= tau <= 1.0
    frac = ALLOCATORS.get("uniform")().allocate(items, 0.5).details["fraction_of_break_even"]
    assert 0.0 < frac < 1.0
