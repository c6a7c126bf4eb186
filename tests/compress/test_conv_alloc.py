"""The conv method's per-layer keeps: greedy allocation past plateaus, keeps applied exactly,
conv-only models through lr.compress, and the errors of its new fields."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowrank as lr
from lowrank.compress.conv import (
    ConvFactorize,
    allocate_conv_keeps,
    factorize_convs,
    keep_grid,
)
from lowrank.errors import ConfigError, DataError, TargetError


def conv_only():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1))


def test_single_layer_allocation_reaches_the_largest_affordable_keep_past_a_plateau():
    # 0.1 and 0.1001 give the same ranks (equal parameters and error: zero gain); with one
    # layer the best allocation is the largest grid keep within the budget, here 0.5
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1))
    x = torch.randn(8, 16, 8, 8)
    keeps = allocate_conv_keeps(model, x, 0.5, grid=(0.1, 0.1001, 0.5))
    assert keeps == {"0": 0.5}


def test_keeps_apply_per_layer_and_match_factorize_convs():
    model, reference = conv_only(), conv_only()
    keeps = {"2": 0.2, "4": 0.5}
    result = lr.compress(model, ConvFactorize(keep=0.3, keeps=keeps, ignore=["0"]))
    assert result.allocation["keeps"] == keeps
    factorize_convs(reference, keeps)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    by_name = {m.name: m for m in result.modules}
    for name, keep in keeps.items():
        assert by_name[name].params_after <= keep * by_name[name].params_before
        assert by_name[name].notes["keep"] == keep


def test_output_error_allocation_runs_inside_compress():
    """alloc='output-error' names the registered allocator; lr.compress measures the keeps on
    the images it is given, exactly as allocate_conv_keeps on the same images."""
    assert ConvFactorize(alloc="output-error").needs == {"images"}
    assert ConvFactorize(alloc="output-error", keeps={"2": 0.2}).needs == frozenset()
    assert ConvFactorize().needs == frozenset()
    images = torch.randn(70, 3, 8, 8)
    model, reference = conv_only(), conv_only()
    config = ConvFactorize(keep=0.3, alloc="output-error", ignore=["0"])
    result = lr.compress(model, config, data=images)
    keeps = allocate_conv_keeps(reference, images[:64], 0.3, ignore=["0"], grid=keep_grid(0.3))
    assert result.allocation["keeps"] == keeps and len(set(keeps.values())) > 1
    factorize_convs(reference, keeps)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    with pytest.raises(DataError, match="no calibration images"):
        lr.compress(conv_only(), ConvFactorize(), data=images)


def test_keep_grid_brackets_the_budget():
    for keep in (0.05, 0.3, 0.5, 0.9, 1.0):
        grid = keep_grid(keep)
        assert keep in grid and grid[0] <= keep / 4 + 1e-9 and grid == tuple(sorted(grid))
        assert 0 < grid[0] and grid[-1] <= 1


def test_new_field_errors():
    with pytest.raises(ConfigError, match="output-error"):
        ConvFactorize(alloc="sensitivity")
    with pytest.raises(ConfigError, match="keeps"):
        ConvFactorize(keeps={"2": 1.5})
    with pytest.raises(DataError, match="images"):
        lr.compress(conv_only(), ConvFactorize(alloc="output-error"))
    with pytest.raises(TargetError, match="nope"):
        lr.compress(conv_only(), ConvFactorize(keeps={"nope": 0.2}))
