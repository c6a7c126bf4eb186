"""SLTrain layer: forward/gradient oracles, support determinism, accounting, conversions."""

from __future__ import annotations

import math

import torch
from torch import nn

from lowrank.nn.kinds import module_kind
from lowrank.nn.sparse_lowrank import SparseLowRankLinear, sparse_support


def _layer(dtype=torch.float64):
    torch.manual_seed(0)
    layer = SparseLowRankLinear(9, 7, rank=3, density=0.2, alpha=6.0, seed=1, name="blk.q",
                                dtype=dtype)
    with torch.no_grad():
        layer.B.normal_()
    return layer


def test_forward_matches_dense_reference():
    layer = _layer()
    x = torch.randn(4, 5, 9, dtype=torch.float64)
    dense = layer.scale * layer.B @ layer.A
    dense.view(-1)[layer.indices.long()] += layer.values
    ref = x @ dense.T + layer.bias
    torch.testing.assert_close(layer(x), ref, atol=1e-12, rtol=0)


def test_gradcheck_custom_autograd():
    layer = _layer()
    x = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    from lowrank.nn.sparse_lowrank import _SparseLowRankFn

    def f(x, B, A, values, bias):
        return _SparseLowRankFn.apply(x, B, A, values, layer.indices, bias, layer.scale)

    assert torch.autograd.gradcheck(
        f, (x, layer.B.detach().requires_grad_(), layer.A.detach().requires_grad_(),
            layer.values.detach().requires_grad_(), layer.bias.detach().requires_grad_()))


def test_no_dense_weight_saved_for_backward():
    layer = _layer(torch.float32)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(torch.randn(2, 9)).sum().backward()
    assert 7 * 9 not in sizes


def test_support_is_seeded_int32_and_parameter_count():
    a = sparse_support(30, 40, 0.05, seed=3, name="layers.0.mlp")
    b = sparse_support(30, 40, 0.05, seed=3, name="layers.0.mlp")
    c = sparse_support(30, 40, 0.05, seed=3, name="layers.1.mlp")
    assert a.dtype == torch.int32 and torch.equal(a, b) and not torch.equal(a, c)
    assert a.numel() == math.floor(0.05 * 1200) and a.unique().numel() == a.numel()
    layer = SparseLowRankLinear(40, 30, 4, 0.05, seed=3, name="layers.0.mlp")
    assert torch.equal(layer.indices, a)
    n = sum(p.numel() for p in layer.parameters())
    assert n == layer.num_parameters() == 4 * 70 + 60 + 30
    assert torch.count_nonzero(layer.B) == 0  # the paper's init: purely sparse at step 0


def test_from_linear_round_trip_and_state_dict():
    torch.manual_seed(0)
    lin = nn.Linear(9, 7).double()
    full = SparseLowRankLinear.from_linear(lin, rank=7, density=0.1, alpha=4.0)
    back = full.to_dense_module()
    torch.testing.assert_close(back.weight, lin.weight, atol=1e-12, rtol=0)
    torch.testing.assert_close(back.bias, lin.bias, atol=0, rtol=0)
    part = SparseLowRankLinear.from_linear(lin, rank=2, density=0.3)
    w = part.to_dense_module().weight
    idx = part.indices.long()
    torch.testing.assert_close(w.view(-1)[idx], lin.weight.view(-1)[idx], atol=1e-12, rtol=0)
    x = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(part(x), part.to_dense_module()(x), atol=1e-12, rtol=0)
    assert list(part.state_dict()) == ["B", "A", "values", "bias", "indices"]
    cls = module_kind("SparseLowRankLinear")
    fresh = cls.from_manifest_entry({"kind": "SparseLowRankLinear", **part.manifest_entry()})
    fresh.load_state_dict(part.state_dict())
    torch.testing.assert_close(fresh(x), part(x), atol=0, rtol=0)
