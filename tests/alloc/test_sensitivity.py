"""The measured-sensitivity allocator."""

from __future__ import annotations

import copy

import pytest
import torch

import lowrank
from lowrank.alloc import BudgetItem
from lowrank.errors import DataError
from lowrank.registry import get_allocator


def _items(sensitivities):
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 64), (64, 256), (256, 64), (96, 48)]
    return [BudgetItem(f"m{i}", m, n, True, torch.rand(min(m, n), generator=gen).sort(
        descending=True).values, sensitivity=s)
        for i, ((m, n), s) in enumerate(zip(shapes, sensitivities, strict=True))]


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9])
def test_budget_met_and_sensitive_matrices_keep_more(keep):
    items = _items([0.01, 0.01, 0.01, 0.5])
    alloc = get_allocator("sensitivity")(items, keep)
    assert alloc.params_after <= alloc.target_params
    assert abs(alloc.keep_actual - keep) <= 0.005 * keep + 300 / alloc.params_before
    ranks = alloc.ranks
    frac = {it.name: (it.break_even if ranks[it.name] is None else ranks[it.name])
            / it.break_even for it in items}
    assert frac["m3"] >= max(frac["m0"], frac["m1"], frac["m2"])


def test_equal_sensitivities_is_uniform():
    items = _items([0.1, 0.1, 0.1, 0.1])
    a = get_allocator("sensitivity")(items, 0.6)
    b = get_allocator("uniform")(items, 0.6)
    assert abs(a.params_after - b.params_after) <= 2 * max(it.out_features + it.in_features
                                                           for it in items)


def test_needs_measurements():
    with pytest.raises(DataError, match="sensitivities"):
        get_allocator("sensitivity")(_items([None, 0.1, 0.1, 0.1]), 0.6)


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
