"""The measured-sensitivity allocator."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import lowrank
from lowrank.alloc import ALLOCATORS, BudgetItem
from lowrank.alloc.sensitivity import probe_rank
from lowrank.errors import DataError


def _items(sensitivities):
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 64), (64, 256), (256, 64), (96, 48)]
    return [BudgetItem(f"m{i}", m, n, True, torch.rand(min(m, n), generator=gen).sort(
        descending=True).values, sensitivity=s)
        for i, ((m, n), s) in enumerate(zip(shapes, sensitivities, strict=True))]


@pytest.mark.parametrize("name", ["sensitivity", "sensitivity-sqrt"])
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9])
def test_budget_met_and_sensitive_matrices_keep_more(name, keep):
    items = _items([0.01, 0.01, 0.01, 0.5])
    alloc = ALLOCATORS.get(name)().allocate(items, keep)
    assert alloc.params_after <= alloc.target_params
    assert abs(alloc.keep_actual - keep) <= 0.005 * keep + 300 / alloc.params_before
    ranks = alloc.ranks
    frac = {it.name: (it.break_even if ranks[it.name] is None else ranks[it.name])
            / it.break_even for it in items}
    assert frac["m3"] >= max(frac["m0"], frac["m1"], frac["m2"])


def test_sqrt_rule_with_equal_sensitivities_is_uniform():
    items = _items([0.1, 0.1, 0.1, 0.1])
    a = ALLOCATORS.get("sensitivity-sqrt")().allocate(items, 0.6)
    b = ALLOCATORS.get("uniform")().allocate(items, 0.6)
    assert abs(a.params_after - b.params_after) <= 2 * max(it.out_features + it.in_features
                                                           for it in items)


@pytest.mark.parametrize("name", ["sensitivity", "sensitivity-sqrt"])
def test_needs_measurements(name):
    with pytest.raises(DataError, match="sensitivities"):
        ALLOCATORS.get(name)().allocate(_items([None, 0.1, 0.1, 0.1]), 0.6)


def _predicted_loss(items, ranks):
    """The Lagrangian allocator's model: s * T(r) / T(probe rank), 0 when dense."""
    total = 0.0
    for it in items:
        r = ranks[it.name]
        if r is None:
            continue
        energy = it.spectrum.double() ** 2
        total += it.sensitivity * float(energy[r:].sum() / energy[probe_rank(it):].sum())
    return total


@pytest.mark.parametrize("keep", [0.4, 0.6, 0.8])
def test_lagrangian_beats_every_other_allocation_of_the_same_budget(keep):
    """Oracle: on its own loss model the allocation is no worse than uniform, the sqrt rule
    or the energy allocator at the same budget, and within one rank step of the brute-force
    optimum over all rank combinations (three small matrices)."""
    gen = torch.Generator().manual_seed(3)
    shapes, sens = [(12, 10), (8, 14), (10, 10)], [0.02, 0.3, 0.1]
    items = [BudgetItem(f"m{i}", m, n, False,
                        (0.8 ** torch.arange(min(m, n), dtype=torch.float64))
                        * (1 + 0.2 * torch.rand(min(m, n), generator=gen, dtype=torch.float64)),
                        sensitivity=s)
             for i, ((m, n), s) in enumerate(zip(shapes, sens, strict=True))]
    for it in items:
        it.spectrum = it.spectrum.sort(descending=True).values
    ours = ALLOCATORS.get("sensitivity")().allocate(items, keep)
    assert ours.params_after <= ours.target_params
    mine = _predicted_loss(items, ours.ranks)
    for other in ("uniform", "energy", "sensitivity-sqrt"):
        theirs = ALLOCATORS.get(other)().allocate(items, keep).ranks
        assert mine <= _predicted_loss(items, theirs) + 1e-12
    options = [[*range(1, it.max_rank + 1), None] for it in items]
    best = min(_predicted_loss(items, dict(zip([it.name for it in items], combo, strict=True)))
               for combo in itertools.product(*options)
               if sum(it.cost(r) for it, r in zip(items, combo, strict=True))
               <= ours.target_params)
    step = max(it.sensitivity * float(it.spectrum[0] ** 2 / (it.spectrum[probe_rank(it):] ** 2)
                                      .sum()) for it in items)
    assert best - 1e-12 <= mine <= best + step


def test_through_compress_measures_each_module(tiny_llama, tokenizer, calib_texts):
    model = copy.deepcopy(tiny_llama)
    result = lowrank.compress(model, lowrank.SVDLLM(keep=0.6, alloc="sensitivity"),
                              data=calib_texts, tokenizer=tokenizer, seq_len=32)
    assert abs(result.keep_actual - 0.6) <= 0.003
    measured = result.allocation["details"]["sensitivity"]
    assert set(measured) == {m.name for m in result.modules}
    assert all(v > 0 for v in measured.values())
    for m in result.modules:  # every probe swap was undone: modules match the allocation
        layer = model.get_submodule(m.name)
        assert (m.rank is None) == isinstance(layer, torch.nn.Linear)
    # statistics alone are not enough: the allocator measures the model on calibration text
    stats = lowrank.calibrate(tiny_llama, lowrank.SVDLLM(), calib_texts, tokenizer=tokenizer,
                              seq_len=32)
    with pytest.raises(DataError, match="end to end"):
        lowrank.compress(copy.deepcopy(tiny_llama),
                         lowrank.SVDLLM(keep=0.6, alloc="sensitivity"), stats=stats)
