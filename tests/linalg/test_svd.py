"""Exact and randomized truncated SVD against Eckart–Young (float64)."""

from __future__ import annotations

import pytest
import torch

from lowrank.linalg import randomized_svd, split_singular_values, truncated_svd

REL = 1e-10


def _decaying(m: int, n: int, rng: torch.Generator, decay: float = 0.9) -> torch.Tensor:
    """A random m x n matrix with singular values decay**i (random singular vectors)."""
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=rng, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=rng, dtype=torch.float64))
    s = decay ** torch.arange(k, dtype=torch.float64)
    return (U * s) @ V.T


@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (50, 50)])
@pytest.mark.parametrize("rank", [0, 1, 7, 25, 40])
def test_truncated_svd_error_is_dropped_energy(shape, rank, rng):
    M = torch.randn(*shape, generator=rng, dtype=torch.float64)
    full = torch.linalg.svdvals(M)
    svd = truncated_svd(M, rank)
    assert svd.rank == rank
    err2 = float(((M - svd.to_dense()) ** 2).sum())
    tail = float((full[rank:] ** 2).sum())
    assert err2 == pytest.approx(tail, rel=REL)
    assert torch.all(svd.S[:-1] >= svd.S[1:])


def test_truncated_svd_full_rank_reconstructs(rng):
    M = torch.randn(30, 20, generator=rng, dtype=torch.float64)
    svd = truncated_svd(M)
    assert svd.rank == 20
    torch.testing.assert_close(svd.to_dense(), M, rtol=0, atol=1e-12)


def test_split_singular_values_product_is_truncation(rng):
    M = torch.randn(30, 20, generator=rng, dtype=torch.float64)
    svd = truncated_svd(M)
    for k in (1, 5, 20):
        B, A = split_singular_values(svd, k)
        assert B.shape == (30, k) and A.shape == (k, 20)
        torch.testing.assert_close(B @ A, truncated_svd(M, k).to_dense(), rtol=0, atol=1e-12)
        # the singular values are split evenly: both factors have the same column/row norms
        torch.testing.assert_close(B.norm(dim=0), A.norm(dim=1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [-1, 21, 2.0, True])
def test_bad_rank_raises(bad, rng):
    M = torch.randn(30, 20, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match="rank"):
        truncated_svd(M, bad)
    with pytest.raises(ValueError, match="rank"):
        randomized_svd(M, bad)


def test_non_matrix_raises():
    with pytest.raises(ValueError, match="2-D"):
        truncated_svd(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="2-D"):
        randomized_svd(torch.zeros(3), 1)


@pytest.mark.parametrize("power_iters", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomized_svd_no_better_than_exact_and_bound_holds(power_iters, seed, rng):
    M = _decaying(80, 120, rng, decay=0.93) + 1e-3 * torch.randn(
        80, 120, generator=rng, dtype=torch.float64)
    k = 10
    exact = truncated_svd(M, k)
    approx = randomized_svd(M, k, power_iters=power_iters, seed=seed)
    assert approx.rank == k
    exact_fro = float((M - exact.to_dense()).norm())
    approx_fro = float((M - approx.to_dense()).norm())
    # Eckart–Young: no rank-k matrix beats the exact truncation (tiny slack for round-off)
    assert approx_fro >= exact_fro * (1 - 1e-12)
    spectral = float(torch.linalg.matrix_norm(M - approx.to_dense(), ord=2))
    assert approx.error_bound is not None
    assert approx.error_bound >= spectral
    # exact truncation has no probe-based bound
    assert exact.error_bound is None


def test_randomized_svd_recovers_exactly_low_rank(rng):
    k = 6
    M = torch.randn(70, k, generator=rng, dtype=torch.float64) @ torch.randn(
        k, 90, generator=rng, dtype=torch.float64)
    approx = randomized_svd(M, k, oversample=4, power_iters=1, seed=3)
    rel = float((M - approx.to_dense()).norm() / M.norm())
    assert rel < 1e-8
    torch.testing.assert_close(approx.S, torch.linalg.svdvals(M)[:k], rtol=1e-8, atol=0)
    assert approx.error_bound < 1e-8 * float(M.norm())


def test_randomized_svd_is_deterministic_per_seed(rng):
    M = torch.randn(50, 40, generator=rng, dtype=torch.float64)
    a = randomized_svd(M, 5, seed=7)
    b = randomized_svd(M, 5, seed=7)
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S) and torch.equal(a.Vh, b.Vh)
