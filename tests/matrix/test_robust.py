"""Robust recovery: l1 sub-gradient method (Ma & Fattahi) and principal component pursuit.

Oracles: a planted rank-r matrix with 30% gross outliers (entries + 100 N(0,1)) is recovered by
the sub-gradient method to 1e-3 (1e-6 after the exact inlier refit) with an over-estimated rank;
PCP with lambda = 1/sqrt(max(m, n)) recovers it to 1e-6 at 10% outliers while lambda = 1 fails;
in the measurement setting of the spec (B2), 40% one-sided outliers leave the l1 estimate below
1e-3 where least squares fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matrix_helpers import planted, rel

from lowrank.errors import ConfigError
from lowrank.matrix import robust, robust_pca, sense


def _corrupted(frac, n=100, r=3, seed=0):
    L = planted(n, n, r, seed=seed)
    rng = np.random.default_rng(seed + 7)
    out = rng.random(L.shape) < frac
    M = L.copy()
    M[out] += 100 * rng.standard_normal(int(out.sum()))
    return L, M


def test_subgradient_recovers_with_30pct_outliers_and_overestimated_rank():
    L, M = _corrupted(0.3)
    res = robust(M, rank=6, return_factors=True)
    assert rel(res.to_dense(), L) < 1e-3
    assert res.history[-1] < res.history[0]
    refined = robust(M, rank=6, refine=True)
    assert rel(refined, L) < 1e-6


def test_subgradient_torch_and_mask():
    L, M = _corrupted(0.3)
    mask = np.random.default_rng(5).random(M.shape) < 0.8
    out = robust(torch.tensor(M), rank=6, mask=torch.tensor(mask), refine=True)
    assert isinstance(out, torch.Tensor)
    assert rel(out.numpy(), L) < 1e-6


def test_robust_pca_default_lambda_works_and_lambda_one_fails():
    L, M = _corrupted(0.1)
    Lh, S = robust_pca(M)
    assert rel(Lh, L) < 1e-6
    np.testing.assert_allclose(Lh + S, M, atol=1e-6 * np.abs(M).max())
    bad, _ = robust_pca(M, lam=1.0)
    assert rel(bad, L) > 0.1


def test_l1_sensing_40pct_outliers_where_least_squares_fails():
    rng = np.random.default_rng(0)
    d, r, N = 20, 2, 1200
    Us = rng.standard_normal((d, r))
    X = Us @ Us.T
    B = rng.standard_normal((N, d, d))
    A = (B + B.transpose(0, 2, 1)) / 2
    y = np.einsum("kij,ij->k", A, X)
    out = rng.random(N) < 0.4
    y[out] += 100 * np.linalg.norm(X) * rng.random(int(out.sum()))
    est = sense(A, y, rank=6, symmetric=True, loss="l1")
    assert rel(est, X) < 1e-3
    ls = np.linalg.lstsq(A.reshape(N, -1), y, rcond=None)[0].reshape(d, d)
    assert rel(ls, X) > 1.0


def test_bad_parameters():
    L, M = _corrupted(0.1, n=20)
    with pytest.raises(ConfigError, match="decay"):
        robust(M, 2, decay=1.5)
    with pytest.raises(ConfigError, match="square"):
        robust(M[:10], 2, symmetric=True)
    with pytest.raises(ConfigError, match="lam"):
        robust_pca(M, lam=-1.0)
