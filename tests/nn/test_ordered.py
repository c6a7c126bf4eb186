"""Maestro ordered low-rank layer: exact conversion, prefix widths, pruning, ordered dropout."""

from __future__ import annotations

import torch
from torch import nn

from lowrank.nn.kinds import module_kind
from lowrank.nn.ordered import OrderedDropout, OrderedLowRankLinear


def test_from_linear_exact_and_prefix_is_truncated_svd():
    torch.manual_seed(0)
    lin = nn.Linear(10, 6).double()
    layer = OrderedLowRankLinear.from_linear(lin)
    x = torch.randn(4, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), lin(x), atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.to_dense_module().weight, lin.weight, atol=1e-12, rtol=0)
    u, s, vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
    w2 = (u[:, :2] * s[:2]) @ vh[:2]
    torch.testing.assert_close(layer(x, width=2), x @ w2.T + lin.bias, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer(x, width=6), layer(x), atol=0, rtol=0)
    imp = layer.importance()
    assert torch.all(imp[:-1] >= imp[1:])  # SVD init is already ordered
    torch.testing.assert_close(imp, s, atol=1e-10, rtol=0)


def test_pruning_zero_components_keeps_outputs_and_lasso():
    torch.manual_seed(0)
    layer = OrderedLowRankLinear(8, 5, rank=5).double()
    with torch.no_grad():
        layer.U[:, 3:] = 0
        layer.V[3:] = 0
    x = torch.randn(3, 8, dtype=torch.float64)
    before = layer(x)
    assert layer.prune_(1e-12) == 3
    torch.testing.assert_close(layer(x), before, atol=1e-12, rtol=0)
    assert layer.num_parameters() == 3 * 13 + 5
    flat = layer.group_lasso()
    ref = layer.U.norm(dim=0).sum() + layer.V.norm(dim=1).sum()
    torch.testing.assert_close(flat, ref)
    sq = layer.U.pow(2).sum(0) + layer.V.pow(2).sum(1)
    hier = sum(sq[j:].sum().sqrt() for j in range(3))
    torch.testing.assert_close(layer.group_lasso(hierarchical=True), hier)


def test_ordered_dropout_sampler_is_seeded_and_restores_width():
    model = nn.Sequential(OrderedLowRankLinear(6, 6), nn.ReLU(), OrderedLowRankLinear(6, 4))
    a = OrderedDropout(model, seed=1)
    b = OrderedDropout(model, seed=1)
    draws_a, draws_b = [], []
    for _ in range(5):
        with a.sample() as d:
            draws_a.append(d)
            assert a.layers[d[0]].active_width == d[1]
        with b.sample() as d:
            draws_b.append(d)
    assert draws_a == draws_b
    assert all(m.active_width is None for m in a.layers)


def test_state_dict_layout_and_manifest():
    layer = OrderedLowRankLinear(7, 3, rank=2)
    assert list(layer.state_dict()) == ["U", "V", "bias"]
    fresh = module_kind("OrderedLowRankLinear").from_manifest_entry(layer.manifest_entry())
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(2, 7)
    torch.testing.assert_close(fresh(x), layer(x), atol=0, rtol=0)
