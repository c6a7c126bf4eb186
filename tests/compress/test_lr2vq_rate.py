"""The LR^2VQ rate model: lattice moments, the budgeted choice of (m, d, k), tie-breaking."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank.compress.lr2vq_rate import (
    Rate,
    choose_rate,
    fixed_rate,
    lattice_moment,
    storage_bytes,
)


def test_lattice_moment_table_interpolation_and_limit():
    assert lattice_moment(1) == pytest.approx(1 / 12, rel=1e-5)  # the scalar quantizer
    assert lattice_moment(8) > lattice_moment(10) > lattice_moment(12)
    assert lattice_moment(10) == pytest.approx((0.071682 + 0.070100) / 2)
    assert lattice_moment(64) == pytest.approx(1 / (2 * math.pi * math.e))


def test_choose_rate_fits_the_budget_and_improves_with_it(rng):
    w = torch.randn(64, 128, generator=rng, dtype=torch.float64)
    errors = []
    for bits in (1.0, 2.0, 4.0, 8.0):
        budget = bits * w.numel() / 8
        rate = choose_rate(w, budget, 4, subvectors=[1, 2, 4, 8])
        assert rate.bytes == storage_bytes(64, 128, rate.subvector, rate.dim, rate.codebook, 4)
        assert rate.bytes <= budget
        errors.append(rate.predicted_rel_error)
    assert errors == sorted(errors, reverse=True)
    assert choose_rate(w, 10.0, 4, subvectors=[1, 2, 4, 8]) is None  # not even k = 2 fits


def test_choose_rate_honours_the_given_sizes(rng):
    w = torch.randn(32, 48, generator=rng, dtype=torch.float64)
    rate = choose_rate(w, 2.0 * w.numel() / 8, 4, subvectors=[4], dims=[2], codebook_cap=64)
    assert (rate.subvector, rate.dim) == (4, 2) and rate.codebook <= 64
    assert choose_rate(w, 1e9, 4, subvectors=[5]) is None  # 5 does not divide 48
    assert fixed_rate(w, 5, 256, None, 4) is None


def test_rate_ties_prefer_fewer_bytes_then_smaller_sizes():
    a = Rate(subvector=4, dim=2, codebook=16, bytes=100, predicted_rel_error=0.1)
    assert Rate(4, 2, 16, 99, 0.1).better_than(a)
    assert Rate(2, 2, 16, 100, 0.1).better_than(a)
    assert Rate(8, 8, 256, 500, 0.05).better_than(a)
    assert not a.better_than(a)
