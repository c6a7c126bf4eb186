"""SoftImpute and IterativeSVD with fancyimpute's defaults.

Oracles: SoftImpute's output is a fixed point of ``X = S_lambda(P_Omega(M) + P_Omega^perp(X))``
(soft-thresholded SVD); its first step with default lambda is the SVD of the zero-filled matrix
shrunk by sigma_max / 50; IterativeSVD's filled entries come from a rank-k reconstruction.
"""

from __future__ import annotations

import numpy as np
import torch
from matrix_helpers import planted, rel

from lowrank.matrix import iterative_svd, soft_impute


def _problem(seed=0):
    M = planted(80, 60, 3, seed=seed)
    mask = np.random.default_rng(seed + 1).random(M.shape) < 0.5
    return M, mask


def _svt(X, lam):
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    return (U * np.maximum(s - lam, 0)) @ Vt


def test_soft_impute_first_step_uses_sigma_max_over_50():
    M, mask = _problem()
    Z = np.where(mask, M, 0.0)
    lam = np.linalg.svd(Z, compute_uv=False)[0] / 50
    out = soft_impute(M, mask, max_iters=1)
    np.testing.assert_allclose(out[~mask], _svt(Z, lam)[~mask], atol=1e-6 * np.abs(M).max())
    np.testing.assert_array_equal(out[mask], M[mask])


def test_soft_impute_reaches_its_fixed_point():
    M, mask = _problem()
    lam = 2.0
    out, hist = soft_impute(M, mask, shrinkage_value=lam, convergence_threshold=1e-10,
                            max_iters=2000, return_history=True)
    assert hist[-1] < 1e-10
    fixed = _svt(np.where(mask, M, out), lam)
    assert rel(out, fixed, ~mask) < 1e-7
    # shrinkage biases the estimate: good but not exact
    assert rel(out, M, ~mask) < 0.2


def test_iterative_svd_rank_k_reconstruction_and_accuracy():
    M, mask = _problem()
    out, hist = iterative_svd(M, mask, rank=3, return_history=True)
    assert hist[-1] < 1e-5 or len(hist) == 200
    np.testing.assert_array_equal(out[mask], M[mask])
    assert rel(out, M, ~mask) < 0.05
    # fixed point: the filled entries are (up to the stopping threshold) those of the rank-3
    # truncated SVD of the filled matrix
    U, s, Vt = np.linalg.svd(out, full_matrices=False)
    assert rel((U[:, :3] * s[:3]) @ Vt[:3], out, ~mask) < 1e-2


def test_imputers_keep_array_type():
    M, mask = _problem()
    Mt = torch.tensor(np.where(mask, M, np.nan), dtype=torch.float32)
    for fn in (soft_impute, lambda x: iterative_svd(x, rank=3, svd_algorithm="randomized")):
        out = fn(Mt)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert not torch.isnan(out).any()
