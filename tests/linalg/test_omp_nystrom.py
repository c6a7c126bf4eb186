"""OMP, K-SVD and Nyström column selection against their mathematical oracles."""

from __future__ import annotations

import pytest
import torch

from lowrank.linalg.nystrom import (
    cr_scores,
    nystrom_correct,
    ridge_leverage_scores,
    select_columns,
)
from lowrank.linalg.omp import ksvd, omp


def _planted(gen, n=96, k=128, m=200, s=4):
    d = torch.randn(n, k, generator=gen, dtype=torch.float64)
    d /= d.norm(dim=0)
    c = torch.zeros(k, m, dtype=torch.float64)
    for j in range(m):
        idx = torch.randperm(k, generator=gen)[:s]
        mag = 1 + torch.rand(s, generator=gen, dtype=torch.float64)
        c[idx, j] = mag * torch.randn(s, generator=gen, dtype=torch.float64).sign()
    return d, c


def test_omp_recovers_planted_sparse_code(rng):
    d, c = _planted(rng)
    code = omp(d, d @ c, 4)
    assert torch.allclose(code.dense(), c, atol=1e-10)  # exact support and values


def test_omp_unnormalised_atoms_and_full_sparsity_is_least_squares(rng):
    d = torch.randn(20, 8, generator=rng, dtype=torch.float64) * 3
    y = torch.randn(20, 30, generator=rng, dtype=torch.float64)
    code = omp(d, y, 8)
    ls = torch.linalg.lstsq(d, y).solution
    assert torch.allclose(code.dense(), ls, atol=1e-9)


def test_omp_rejects_bad_sparsity(rng):
    with pytest.raises(ValueError, match="sparsity"):
        omp(torch.randn(4, 3, generator=rng), torch.randn(4, 2, generator=rng), 4)


def test_ksvd_dense_code_is_at_least_the_truncated_svd(rng):
    y = torch.randn(40, 90, generator=rng, dtype=torch.float64)
    sv = torch.linalg.svdvals(y)
    for k in (5, 12):
        optimum = float(sv[k:].pow(2).sum().sqrt() / sv.pow(2).sum().sqrt())
        fit = ksvd(y, k, k, iters=3)
        assert fit.rel_error <= optimum + 1e-10
        assert fit.rel_error >= optimum - 1e-10  # and cannot beat Eckart-Young


def test_ksvd_union_of_subspaces_beats_low_rank_at_equal_values(rng):
    """Spec 7(g): 8 random 4-dim subspaces in 48 dims, 256 signals; k=33, s=8 vs rank 12."""
    cols = []
    for _ in range(8):
        basis = torch.linalg.qr(torch.randn(48, 4, generator=rng, dtype=torch.float64))[0]
        cols.append(basis @ torch.randn(4, 32, generator=rng, dtype=torch.float64))
    y = torch.cat(cols, 1)
    sv = torch.linalg.svdvals(y)
    rank12 = float(sv[12:].pow(2).sum().sqrt() / sv.pow(2).sum().sqrt())
    fit = ksvd(y, 33, 8, iters=10)
    assert 33 * 48 + 8 * 256 <= 12 * (48 + 256)  # no more values than rank 12
    assert rank12 > 0.45 and fit.rel_error < 0.6 * rank12
    assert fit.history[-1] <= fit.history[0] + 1e-12 or fit.rel_error <= min(fit.history)


def test_ridge_leverage_matches_definition(rng):
    h = torch.randn(300, 20, generator=rng, dtype=torch.float64)
    c = h.T @ h
    lev = ridge_leverage_scores(c, ridge=0.1)
    lam = 0.1 * torch.trace(c) / 20
    direct = torch.diagonal(c @ torch.linalg.inv(c + lam * torch.eye(20, dtype=c.dtype)))
    assert torch.allclose(lev, direct, atol=1e-10)
    assert bool(((lev > 0) & (lev < 1)).all())


def test_nystrom_with_all_columns_is_exact(rng):
    h = torch.randn(500, 24, generator=rng, dtype=torch.float64)
    w = torch.randn(24, 7, generator=rng, dtype=torch.float64)
    out = nystrom_correct(h.T @ h, torch.arange(24), w)
    assert torch.allclose(out, w, atol=1e-9)


def test_nystrom_correction_is_least_squares_and_beats_plain_selection(rng):
    """Spec 8(g): ReLU MLP d_h=32, d_int=128, keep 48 neurons."""
    x = torch.randn(4000, 32, generator=rng, dtype=torch.float64)
    wu = torch.randn(32, 128, generator=rng, dtype=torch.float64) / 32 ** 0.5
    wd = torch.randn(128, 32, generator=rng, dtype=torch.float64) / 128 ** 0.5
    h = torch.relu(x @ wu)
    c = h.T @ h
    keep = select_columns(ridge_leverage_scores(c, 1e-2), 48)
    corrected = nystrom_correct(c, keep, wd)
    target = h @ wd
    err = float((target - h[:, keep] @ corrected).norm() / target.norm())
    plain = float((target - h[:, keep] @ wd[keep]).norm() / target.norm())
    ls = torch.linalg.lstsq(h[:, keep], target).solution
    assert torch.allclose(corrected, ls, atol=1e-8)
    assert err < 0.7 * plain


def test_select_columns_and_cr_scores():
    s = torch.tensor([0.1, 0.9, 0.5, 0.9])
    assert select_columns(s, 2).tolist() == [1, 3]
    cq = torch.diag(torch.tensor([4.0, 1.0]))
    ck = torch.diag(torch.tensor([1.0, 9.0]))
    assert torch.allclose(cr_scores(cq, ck), torch.tensor([2.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        select_columns(s, 5)
