"""LowRankLinear: construction, SVD round trip, forward, accounting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank import LowRankLinear
from lowrank.linalg import truncated_svd
from lowrank.nn import (
    break_even_rank,
    count_bytes,
    count_parameters,
    linear_flops,
    linear_params,
)


def _linear(in_f: int, out_f: int, bias: bool = True, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_f, out_f, bias=bias, dtype=dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
def test_full_rank_round_trip(shape, bias):
    in_f, out_f = shape
    lin = _linear(in_f, out_f, bias, dtype=torch.float64)
    low = LowRankLinear.from_linear(lin, min(shape))
    back = low.to_dense_module()
    assert isinstance(back, nn.Linear)
    assert back.weight.dtype == torch.float64
    torch.testing.assert_close(back.weight, lin.weight, rtol=0, atol=1e-12)
    if bias:
        assert torch.equal(back.bias, lin.bias)
    else:
        assert back.bias is None and low.bias is None


def test_truncated_round_trip_is_eckart_young():
    lin = _linear(40, 30)
    k = 7
    low = LowRankLinear.from_linear(lin, k)
    assert low.A.dtype == torch.float32 and low.A.shape == (k, 40) and low.B.shape == (30, k)
    expected = truncated_svd(lin.weight.detach().double(), k).to_dense()
    torch.testing.assert_close(low.to_dense_module().weight.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(low.dense_weight().double(), expected, rtol=0, atol=1e-6)


def test_forward_equals_factored_product():
    lin = _linear(40, 30)
    low = LowRankLinear.from_linear(lin, 9)
    x = torch.randn(2, 5, 40)
    y = low(x)
    assert y.shape == (2, 5, 30)
    expected = (x @ low.A.T) @ low.B.T + low.bias
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    # equals the dense export W' x + b
    torch.testing.assert_close(y, low.to_dense_module()(x), rtol=1e-5, atol=1e-5)


def test_from_factors_copies_and_checks_shapes():
    B, A, b = torch.randn(6, 3), torch.randn(3, 8), torch.randn(6)
    low = LowRankLinear.from_factors(B, A, b)
    assert (low.in_features, low.out_features, low.rank) == (8, 6, 3)
    assert torch.equal(low.A, A) and torch.equal(low.B, B) and torch.equal(low.bias, b)
    A.zero_()
    assert not torch.equal(low.A, A)  # copied, not aliased
    no_bias = LowRankLinear.from_factors(B, torch.randn(3, 8))
    assert no_bias.bias is None
    with pytest.raises(ValueError, match="chain"):
        LowRankLinear.from_factors(torch.randn(6, 4), torch.randn(3, 8))
    with pytest.raises(ValueError, match="chain"):
        LowRankLinear.from_factors(torch.randn(6), torch.randn(3, 8))
    with pytest.raises(ValueError, match="chain"):
        LowRankLinear.from_factors(torch.randn(6, 3), torch.randn(3, 8, 1))


@pytest.mark.parametrize("rank", [0, -1, 9, 100])
def test_bad_rank_raises(rank):
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(8, 12, rank)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="positive"):
        LowRankLinear(0, 12, 1)
    with pytest.raises(ValueError):
        LowRankLinear.from_linear(_linear(8, 12), 9)


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_and_flops(bias):
    in_f, out_f, k = 40, 30, 7
    low = LowRankLinear(in_f, out_f, k, bias=bias)
    expected = k * (in_f + out_f) + (out_f if bias else 0)
    assert low.num_parameters() == expected
    assert sum(p.numel() for p in low.parameters()) == expected
    assert count_parameters(low) == expected
    assert count_bytes(low) == 4 * expected
    assert linear_params(out_f, in_f, k, bias) == expected
    assert linear_params(out_f, in_f, None, bias) == out_f * in_f + (out_f if bias else 0)
    assert low.flops_per_token() == 2 * k * (in_f + out_f) == linear_flops(out_f, in_f, k)
    assert linear_flops(out_f, in_f, None) == 2 * out_f * in_f


def test_break_even_rank():
    assert break_even_rank(4096, 4096) == 2048
    m, n = 30, 40
    be = break_even_rank(m, n)
    assert be * (m + n) == pytest.approx(m * n)
    assert linear_params(m, n, int(be), False) <= m * n < linear_params(m, n, int(be) + 1, False)


def test_extra_repr():
    low = LowRankLinear(40, 30, 7, bias=False)
    text = repr(low)
    for part in ("in_features=40", "out_features=30", "rank=7", "bias=False"):
        assert part in text


def test_count_parameters_counts_shared_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, lin)
    assert count_parameters(model) == 20


def test_init_variance_matches_dense_scale():
    """reset_parameters: B @ A has roughly the entry scale of a default nn.Linear weight."""
    torch.manual_seed(0)
    low = LowRankLinear(256, 256, 64)
    dense = nn.Linear(256, 256)
    ratio = float(low.dense_weight().detach().std() / dense.weight.detach().std())
    assert 0.2 < ratio < 5
