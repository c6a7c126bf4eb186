"""Matrix sensing by factored GD (Xiong, Ding, Du 2024) and the one-step rebalancing fix.

Setting of the spec (B3): n = 20, r = 2, sigma(M*) = (1, 0.5), 800 Gaussian measurements
``A_i / sqrt(N)``, step 0.2. Oracles: exact parameterisation reaches 1e-6; with k = 4 > r the
asymmetric GD plus one-step fix reaches 1e-6 in at most 1000 iterations for alpha = 0.3 and
0.03, and its iteration count does not grow as alpha shrinks, while plain GD does not get
there within 1000 iterations at alpha = 0.03.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matrix_helpers import rel

from lowrank.errors import ConfigError, DataError
from lowrank.matrix import rebalance, sense
from lowrank.matrix._ops import DenseOperator
from lowrank.matrix.sense import factored_gd


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    n, r, N = 20, 2, 800
    Q1 = np.linalg.qr(rng.standard_normal((n, r)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((n, r)))[0]
    X = (Q1 * np.array([1.0, 0.5])) @ Q2.T
    A = rng.standard_normal((N, n, n)) / np.sqrt(N)
    return A, np.einsum("kij,ij->k", A, X), X


def _iters_to(problem, k, alpha, rebalance_at, max_iter=1000, target=1e-6):
    A, y, X = problem
    Xt = torch.tensor(X)
    hit = []

    def cb(it, F, G):
        if not hit and float((F @ G.T - Xt).norm() / Xt.norm()) < target:
            hit.append(it + 1)

    factored_gd(DenseOperator(torch.tensor(A)), torch.tensor(y), k, symmetric=False,
                init_scale=alpha, step=0.2, max_iter=max_iter, tol=1e-9,
                rebalance_at=rebalance_at, gen=torch.Generator().manual_seed(0), callback=cb)
    return hit[0] if hit else None


def test_exact_rank_converges(problem):
    A, y, X = problem
    assert rel(sense(A, y, rank=2), X) < 1e-6
    flat = sense(torch.tensor(A.reshape(len(y), -1)), torch.tensor(y), rank=2, shape=(20, 20))
    assert isinstance(flat, torch.Tensor) and rel(flat.numpy(), X) < 1e-6


def test_one_step_fix_rate_independent_of_init_scale(problem):
    fixed = {a: _iters_to(problem, 4, a, 1e-2) for a in (0.3, 0.03)}
    assert all(v is not None and v <= 1000 for v in fixed.values()), fixed
    assert fixed[0.03] <= 1.5 * fixed[0.3], fixed
    assert _iters_to(problem, 4, 0.03, None) is None  # plain over-parameterised GD stalls


def test_rebalance_preserves_product_and_balances():
    g = torch.Generator().manual_seed(0)
    F = torch.randn(10, 4, generator=g, dtype=torch.float64) * torch.tensor([1, 1e-3, 1, 2.0])
    G = torch.randn(8, 4, generator=g, dtype=torch.float64)
    F2, G2 = rebalance(F, G)
    torch.testing.assert_close(F2 @ G2.T, F @ G.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(F2.T @ F2, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)


def test_bad_inputs(problem):
    A, y, _ = problem
    with pytest.raises(DataError, match="measurements"):
        sense(A, y[:-1], 2)
    with pytest.raises(DataError, match="shape="):
        sense(A.reshape(len(y), -1), y, 2)
    with pytest.raises(ConfigError, match="loss"):
        sense(A, y, 2, loss="huber")
    with pytest.raises(ConfigError, match="square"):
        sense(A[:, :, :10], y, 2, symmetric=True)
