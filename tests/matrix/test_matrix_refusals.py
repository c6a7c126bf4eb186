"""No silent nonsense: scale, non-finite and complex inputs, ranks and hyper-parameters.

Oracles: dividing the data by a power of two is exact, so a solver that rescales its data
returns bit for bit the same result on ``M * 2**830`` as on ``M`` (times ``2**830``), and on
``M * 1e250`` the same relative error; every refusal is a one-line error naming the value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from matrix_helpers import planted, rel

from lowrank.errors import ConfigError, DataError, LowRankError
from lowrank.matrix import (
    MatrixCompletion,
    RobustRecovery,
    complete,
    iterative_svd,
    robust,
    robust_pca,
    sense,
    soft_impute,
)
from lowrank.matrix._ops import DenseOperator
from lowrank.matrix.sense import factored_gd

POW2 = 2.0 ** 830  # ~7e249: an exact power of two near the top of the float64 range


@pytest.fixture(scope="module")
def problem():
    M = planted(40, 30, 3, seed=3)
    mask = np.random.default_rng(4).random(M.shape) < 0.6
    return M, mask


@pytest.fixture(scope="module")
def sensing():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((300, 6, 5))
    X = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 5))
    return A, np.einsum("kij,ij->k", A, X), X


def _solvers(mask):
    return {
        "complete": lambda M: complete(M, mask, 3),
        "robust": lambda M: robust(M, 3, mask, max_iter=200),
        "robust_pca": lambda M: robust_pca(M, mask=mask, max_iter=100)[0],
        "soft_impute": lambda M: soft_impute(M, mask),
        "iterative_svd": lambda M: iterative_svd(M, mask, rank=3),
    }


@pytest.mark.parametrize("name", ["complete", "robust", "robust_pca", "soft_impute",
                                  "iterative_svd"])
def test_power_of_two_scaling_is_exact(problem, name):
    M, mask = problem
    solve = _solvers(mask)[name]
    base = solve(M)
    for s in (POW2, 1 / POW2):
        np.testing.assert_array_equal(solve(M * s), base * s)


@pytest.mark.parametrize("name", ["complete", "robust", "robust_pca", "soft_impute",
                                  "iterative_svd"])
def test_huge_and_tiny_data_recovered_as_accurately(problem, name):
    # before: complete returned all NaN at 1e250 and iterative_svd raised an ARPACK error
    M, mask = problem
    solve = _solvers(mask)[name]
    err = rel(solve(M), M)
    for s in (1e250, 1e-250):
        assert rel(solve(M * s) / s, M) == pytest.approx(err, rel=1e-6, abs=1e-12)
    if name == "complete":
        assert err < 1e-8


def test_complete_factors_and_torch_at_huge_scale(problem):
    M, mask = problem
    res = complete(torch.tensor(M * 1e250), torch.tensor(mask), 3, return_factors=True)
    assert torch.isfinite(res.left).all() and torch.isfinite(res.right).all()
    assert rel((res.left @ res.right.T).numpy() / 1e250, M) < 1e-8


def test_sense_is_invariant_to_the_scale_of_A_y_and_X(sensing):
    A, y, X = sensing
    base = sense(A, y, 2, max_iter=300)
    for a, b in ((POW2, 1.0), (1.0, POW2), (1 / 8, 2.0)):
        np.testing.assert_array_equal(sense(A * a, y * b, 2, max_iter=300), base * (b / a))
    err = rel(base, X)
    assert rel(sense(A, y * 1e250, 2, max_iter=300) / 1e250, X) == pytest.approx(err, rel=1e-3)


def test_one_step_fix_balances_at_the_problem_scale():
    # before: the fix balanced to F^T F = I whatever ||X||, so GD diverged (to inf and NaN,
    # silently) for ||X||_2 = 16 and 1/16
    rng = np.random.default_rng(0)
    n, N = 12, 300
    Q1, Q2 = (np.linalg.qr(rng.standard_normal((n, 2)))[0] for _ in range(2))
    X = (Q1 * np.array([1.0, 0.5])) @ Q2.T
    A = torch.tensor(rng.standard_normal((N, n, n)) / np.sqrt(N))
    y = torch.tensor(np.einsum("kij,ij->k", A.numpy(), X))
    runs = {}
    for s in (1.0, 16.0, 1 / 16):
        F, G, hist, converged, _ = factored_gd(
            DenseOperator(A), y * s, 4, symmetric=False, init_scale=0.03, step=0.2,
            max_iter=1000, tol=1e-9, rebalance_at=1e-2, gen=torch.Generator().manual_seed(0))
        assert converged
        runs[s] = len(hist)
    assert runs[16.0] == runs[1.0] == runs[1 / 16]


def test_non_finite_inputs_name_the_input_and_count(problem, sensing):
    M, mask = problem
    bad = M.copy()
    bad[0, 0], bad[1, 1] = np.inf, np.nan
    obs = mask.copy()
    obs[0, 0] = obs[1, 1] = True
    with pytest.raises(DataError, match=r"^M holds 2 NaN or infinite observed entries \(of "):
        complete(bad, obs, 3)
    for fn in (lambda X: robust(X, 2, obs), lambda X: robust_pca(X, mask=obs),
               lambda X: soft_impute(X, obs), lambda X: iterative_svd(X, obs, rank=2)):
        with pytest.raises(DataError, match="M holds 2 NaN or infinite"):
            fn(bad)
    # without a mask NaN marks a missing entry (kept), but infinity is refused
    nan_only = M.copy()
    nan_only[~mask] = np.nan
    assert rel(complete(nan_only, None, 3), M) < 1e-8
    with pytest.raises(DataError, match="M holds 1 NaN or infinite.*NaN marks a missing"):
        complete(np.where(np.arange(M.size).reshape(M.shape) == 0, np.inf, nan_only), None, 3)
    stored = sp.csr_matrix(M)
    stored.data[7] = np.inf
    with pytest.raises(DataError, match="M holds 1 NaN or infinite observed entries"):
        complete(stored, None, 3)
    A, y, _ = sensing
    A_bad, y_bad = A.copy(), y.copy()
    A_bad[0, 0, :3] = np.nan
    y_bad[5] = -np.inf
    with pytest.raises(DataError, match=r"^A holds 3 NaN or infinite entries \(of 9000\)"):
        sense(A_bad, y, 2)
    with pytest.raises(DataError, match=r"^y holds 1 NaN or infinite entries \(of 300\)"):
        sense(A, y_bad, 2)


def test_complex_inputs_are_refused(problem, sensing):
    M, mask = problem
    C = M + 1j * M
    for x in (C, torch.tensor(C), sp.csr_matrix(C), torch.tensor(C).to_sparse()):
        with pytest.raises(DataError, match="M has the complex dtype"):
            complete(x, None, 3)
    for fn in (lambda X: robust(X, 2, mask), lambda X: robust_pca(X, mask=mask),
               lambda X: soft_impute(X, mask), lambda X: iterative_svd(X, mask, rank=2)):
        with pytest.raises(DataError, match="imaginary part would be dropped"):
            fn(C)
    A, y, _ = sensing
    with pytest.raises(DataError, match="^A has the complex dtype complex128"):
        sense(A * (1 + 1j), y, 2)
    with pytest.raises(DataError, match="^y has the complex dtype torch.complex128"):
        sense(A, torch.tensor(y + 0j), 2)


def test_every_rank_is_a_positive_int_bounded_by_the_matrix(problem, sensing):
    M, mask = problem
    A, y, _ = sensing
    msg = "rank 1000000 exceeds the largest possible rank 30 of a 40x30 matrix"
    with pytest.raises(ConfigError, match=msg):  # before: ran for minutes
        robust(M, 10**6, mask)
    with pytest.raises(ConfigError, match="rank 6 exceeds the largest possible rank 5 of a 6x5"):
        sense(A, y, 6)
    with pytest.raises(ConfigError, match="max_rank 31 exceeds the largest possible rank 30"):
        soft_impute(M, mask, max_rank=31)
    for bad in (True, 0, -2, 2.0, "3"):
        for fn in (lambda r: complete(M, mask, r), lambda r: robust(M, r, mask),
                   lambda r: sense(A, y, r), lambda r: iterative_svd(M, mask, rank=r)):
            with pytest.raises(ConfigError, match=f"rank must be a positive int, got {bad!r}"):
                fn(bad)
    assert robust(M, np.int64(3), mask, max_iter=5).shape == M.shape


@pytest.mark.parametrize("call, message", [
    (lambda M, m: complete(M, m, 3, tol=math.nan), "tol must be a finite number in [0, inf)"),
    (lambda M, m: complete(M, m, 3, reg=-1.0), "reg must be a finite number in [0, inf)"),
    (lambda M, m: complete(M, m, 3, trim=math.inf), "trim must be a finite number in (0, inf)"),
    (lambda M, m: complete(M, m, 3, max_iter=2.5), "max_iter must be a positive int"),
    (lambda M, m: complete(M, m, 3, cg_steps=0), "cg_steps must be a positive int"),
    (lambda M, m: complete(M, m, 3, seed=1.5), "seed must be a non-negative int"),
    (lambda M, m: robust(M, 3, m, step=math.nan), "step must be a finite number in (0, inf)"),
    (lambda M, m: robust(M, 3, m, init_scale=0.0), "init_scale must be a finite number in (0"),
    (lambda M, m: robust(M, 3, m, decay=math.nan), "decay must be a finite number in (0, 1]"),
    (lambda M, m: robust(M, 3, m, refine_threshold=math.inf), "refine_threshold must be"),
    (lambda M, m: robust_pca(M, lam=math.nan), "lam must be a finite number in (0, inf)"),
    (lambda M, m: robust_pca(M, mu=math.inf), "mu must be a finite number in (0, inf)"),
    (lambda M, m: robust_pca(M, rho=1.0), "rho must be a finite number in (1, inf)"),
    (lambda M, m: robust_pca(M, tol=math.nan), "tol must be a finite number"),
    (lambda M, m: robust_pca(M, max_iter=0), "max_iter must be a positive int"),
    (lambda M, m: soft_impute(M, m, shrinkage_value=math.nan), "shrinkage_value must be"),
    (lambda M, m: soft_impute(M, m, convergence_threshold=math.inf), "convergence_threshold"),
    (lambda M, m: soft_impute(M, m, n_power_iterations=-1), "n_power_iterations must be"),
    (lambda M, m: soft_impute(M, m, min_value=1.0, max_value=0.0), "min_value 1.0 exceeds"),
    (lambda M, m: iterative_svd(M, m, max_value=math.nan), "max_value must be a finite"),
    (lambda M, m: iterative_svd(M, m, max_iters=True), "max_iters must be a positive int"),
    (lambda M, m: MatrixCompletion(rank=3, max_iter=0).fit(np.where(m, M, np.nan)),
     "max_iter must be a positive int, got 0"),  # before: max_iter=0 silently ran 100
    (lambda M, m: MatrixCompletion(rank=3, reg=math.nan).fit(np.where(m, M, np.nan)),
     "reg must be a finite number"),
    (lambda M, m: RobustRecovery(rank=3, max_iter=0).fit(M), "max_iter must be a positive int"),
])
def test_hyper_parameters_must_be_finite_and_in_range(problem, call, message):
    M, mask = problem
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        call(M, mask)


@pytest.mark.parametrize("call, message", [
    (lambda A, y: sense(A, y, 2, step=math.inf), "step must be a finite number in (0, inf)"),
    (lambda A, y: sense(A, y, 2, init_scale=-1.0), "init_scale must be a finite number"),
    (lambda A, y: sense(A, y, 2, tol=math.nan), "tol must be a finite number in [0, inf)"),
    (lambda A, y: sense(A, y, 2, rebalance_at=math.nan), "rebalance_at must be a finite"),
    (lambda A, y: sense(A, y, 2, loss="l1", decay=2.0), "decay must be a finite number in (0"),
    (lambda A, y: sense(A, y, 2, max_iter=10.0), "max_iter must be a positive int, got 10.0"),
])
def test_sense_hyper_parameters(sensing, call, message):
    A, y, _ = sensing
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        call(A, y)


def test_diverged_result_is_refused(sensing):
    # before: a step far too large returned entries of 1e231 without a word
    A, y, _ = sensing
    with pytest.raises(LowRankError, match=r"^sense diverged: .*; try a smaller step \(got "
                                           r"50.0\)"):
        sense(A, y, 2, step=50.0, max_iter=200)
