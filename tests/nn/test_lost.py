"""LOST layer: SVD split, channel selection, accounting, gamma limits, conversions."""

from __future__ import annotations

import math

import torch
from torch import nn

from lowrank.nn.kinds import module_kind
from lowrank.nn.lost import LOSTLinear


def _lin():
    torch.manual_seed(0)
    return nn.Linear(20, 12).double()


def test_low_rank_part_is_eckart_young_and_channels_are_top_residual_columns():
    lin = _lin()
    layer = LOSTLinear.from_linear(lin, rank=4, sparsity=0.2, gamma=0.5)
    u, s, vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    torch.testing.assert_close(layer.gamma * (layer.B @ layer.A), best, atol=1e-12, rtol=0)
    resid = lin.weight.detach() - best
    k = math.ceil(0.2 * 20)
    top = set(torch.topk(resid.norm(dim=0), k).indices.tolist())
    assert set(layer.channels.tolist()) == top and layer.channels.dtype == torch.int32
    # initial dense weight = W_r + residual on the chosen channels
    w = layer.to_dense_module().weight
    cols = layer.channels.long()
    torch.testing.assert_close(w[:, cols], lin.weight[:, cols], atol=1e-12, rtol=0)
    x = torch.randn(3, 20, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.to_dense_module()(x), atol=1e-12, rtol=0)


def test_parameter_count_and_sparse_gradient_support():
    layer = LOSTLinear.from_linear(_lin(), rank=3, num_channels=5)
    assert layer.num_parameters() == sum(p.numel() for p in layer.parameters())
    assert layer.num_parameters() == 3 * 32 + 12 * 5 + 12
    layer(torch.randn(4, 20, dtype=torch.float64)).sum().backward()
    # the sparse block only exists on the selected channels: the dense weight's gradient
    # through S is zero elsewhere by construction
    w = layer.dense_weight()
    g = torch.autograd.grad(nn.functional.linear(torch.randn(4, 20, dtype=torch.float64), w)
                            .sum(), layer.S)[0]
    assert g.shape == (12, 5)


def test_gamma_one_is_pure_low_rank_and_full_rank_is_exact():
    lin = _lin()
    layer = LOSTLinear.from_linear(lin, rank=3, num_channels=4, gamma=1.0)
    x = torch.randn(2, 20, dtype=torch.float64)
    ref = nn.functional.linear(nn.functional.linear(x, layer.A), layer.B, layer.bias)
    torch.testing.assert_close(layer(x), ref, atol=1e-12, rtol=0)
    exact = LOSTLinear.from_linear(lin, rank=12, num_channels=2)
    torch.testing.assert_close(exact.to_dense_module().weight, lin.weight, atol=1e-12, rtol=0)


def test_state_dict_layout_and_manifest():
    layer = LOSTLinear.from_linear(_lin(), rank=3, num_channels=4)
    assert list(layer.state_dict()) == ["B", "A", "S", "bias", "channels"]
    fresh = module_kind("LOSTLinear").from_manifest_entry(layer.manifest_entry())
    fresh = fresh.double()
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(2, 20, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), layer(x), atol=0, rtol=0)
