"""Gram roots and the whitened low-rank primitive (spec §0, §2-§4, §14), in float64.

Setup as in spec §14 (smaller): W is m x n, X is n x N with N > n (full row rank) and a few
outlier channels, k fixed. The optimum of ``min ||(W - W') X||_F`` over rank-k ``W'`` is
``W' = P_k(W X) X^+`` with ``P_k`` the Eckart–Young truncation, and its value is the tail of
the singular values of ``W X``.
"""

from __future__ import annotations

import pytest
import torch

from lowrank.linalg import (
    DiagonalRoot,
    sqrt_gram,
    truncated_svd,
    whitened_lowrank,
    whitened_svd,
)

M_OUT, N_IN, TOKENS, K = 24, 32, 400, 6


def _outlier_inputs(rng: torch.Generator, n: int = N_IN, tokens: int = TOKENS) -> torch.Tensor:
    """Inputs (n x tokens) with 2 channels at 30x and 4 at 5x scale, plus channel mixing."""
    scale = torch.ones(n, dtype=torch.float64)
    scale[:2] = 30.0
    scale[2:6] = 5.0
    X = torch.randn(n, tokens, generator=rng, dtype=torch.float64) * scale[:, None]
    mix = torch.eye(n, dtype=torch.float64) + 0.1 * torch.randn(
        n, n, generator=rng, dtype=torch.float64)
    return mix @ X


def _optimum(W: torch.Tensor, X: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Eckart–Young in output space: ``P_k(W X) X^+`` and ``sqrt(sum_{i>k} s_i(WX)^2)``."""
    Y = W @ X
    U, S, _ = torch.linalg.svd(Y, full_matrices=False)
    Pk = U[:, :k] @ U[:, :k].T
    W_opt = Pk @ Y @ torch.linalg.pinv(X)
    return W_opt, float((S[k:] ** 2).sum().sqrt())


def _out_err(W: torch.Tensor, W2: torch.Tensor, X: torch.Tensor) -> float:
    return float(((W - W2) @ X).norm())


@pytest.fixture
def problem(rng):
    W = torch.randn(M_OUT, N_IN, generator=rng, dtype=torch.float64)
    X = _outlier_inputs(rng)
    return W, X


# --------------------------------------------------------------------------- sqrt_gram


def test_sqrt_gram_full_rank_root_reproduces_gram(rng):
    X = _outlier_inputs(rng)
    G = X @ X.T
    root = sqrt_gram(G)
    assert root.num_floored == 0
    S = root.matrix
    torch.testing.assert_close(S @ S.T, G, rtol=1e-10, atol=1e-10 * float(G.abs().max()))
    assert root.condition == pytest.approx(
        float(torch.linalg.cond(G)), rel=1e-6)


def test_sqrt_gram_apply_and_inverse(rng):
    X = _outlier_inputs(rng)
    root = sqrt_gram(X @ X.T)
    M = torch.randn(7, N_IN, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(root.apply(M), M @ root.matrix, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(root.apply_inverse(root.apply(M)), M, rtol=0, atol=1e-10)
    torch.testing.assert_close(root.apply(root.apply_inverse(M)), M, rtol=0, atol=1e-10)


def _check_floored_root(G: torch.Tensor, floor: float = 1e-6):
    root = sqrt_gram(G, floor=floor)
    S = root.matrix
    assert torch.isfinite(S).all()
    assert root.num_floored > 0
    assert root.floor_value == pytest.approx(floor * float(torch.linalg.eigvalsh(G).max()))
    # S S^T is the floored Gram: G raised in every direction, by at most floor_value (plus
    # the magnitude of a negative eigenvalue, if any)
    lam, Q = torch.linalg.eigh(G)
    diff = S @ S.T - G
    evals = torch.linalg.eigvalsh(0.5 * (diff + diff.T))
    tol = 1e-9 * float(G.abs().max())
    assert float(evals.min()) >= -tol
    assert float(evals.max()) <= root.floor_value + max(0.0, -float(lam.min())) + tol
    # and it is exactly Q diag(max(lam, floor)) Q^T
    floored = (Q * lam.clamp_min(root.floor_value)) @ Q.T
    torch.testing.assert_close(S @ S.T, floored, rtol=0, atol=tol)
    M = torch.randn(5, G.shape[0], dtype=torch.float64)
    back = root.apply_inverse(root.apply(M))
    assert torch.isfinite(back).all()
    torch.testing.assert_close(back, M, rtol=0, atol=1e-6)
    assert root.condition <= 1 / floor * (1 + 1e-9)
    return root


def test_sqrt_gram_fewer_tokens_than_channels(rng):
    X = _outlier_inputs(rng, tokens=10)  # rank 10 < 32 channels
    root = _check_floored_root(X @ X.T)
    assert root.num_floored >= N_IN - 10


def test_sqrt_gram_dead_channel(rng):
    X = _outlier_inputs(rng)
    X[3] = 0.0
    root = _check_floored_root(X @ X.T)
    assert root.num_floored >= 1


def test_sqrt_gram_slightly_indefinite_is_floored(rng):
    X = _outlier_inputs(rng, tokens=5)
    G = X @ X.T
    lam, Q = torch.linalg.eigh(G)
    lam[0] = -1e-9 * float(lam.max())  # a round-off sized negative eigenvalue
    _check_floored_root((Q * lam) @ Q.T)


def test_sqrt_gram_errors():
    with pytest.raises(ValueError, match="zero"):
        sqrt_gram(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="square"):
        sqrt_gram(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="non-finite"):
        sqrt_gram(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="floor"):
        sqrt_gram(torch.eye(3), floor=0.0)
    with pytest.raises(ValueError, match="floor"):
        sqrt_gram(torch.eye(3), floor=1.0)


# --------------------------------------------------------------- whitened truncation (SVD-LLM)


def test_whitened_error_equals_tail_and_eckart_young(problem):
    W, X = problem
    root = sqrt_gram(X @ X.T)
    assert root.num_floored == 0
    B, A, spectrum = whitened_lowrank(W, root, K)
    assert B.shape == (M_OUT, K) and A.shape == (K, N_IN)
    err = _out_err(W, B @ A, X)
    tail = float((spectrum[K:] ** 2).sum().sqrt())
    W_opt, minimum = _optimum(W, X, K)
    assert err == pytest.approx(tail, rel=1e-9)
    assert err == pytest.approx(minimum, rel=1e-9)
    # the whitened spectrum is the spectrum of W X (root independent)
    torch.testing.assert_close(spectrum, torch.linalg.svdvals(W @ X), rtol=1e-9, atol=0)
    # and the minimiser is unique (X full row rank): it is P_k(WX) X^+
    torch.testing.assert_close(B @ A, W_opt, rtol=0, atol=1e-9 * float(W.abs().max()))


def test_whitened_tail_energy_for_every_rank(problem):
    W, X = problem
    dec = whitened_svd(W, sqrt_gram(X @ X.T))
    for k in (0, 1, 3, K, 20, N_IN - 9):
        B, A = dec.factors(k)
        err2 = _out_err(W, B @ A, X) ** 2
        assert err2 == pytest.approx(dec.tail_energy(k), rel=1e-9)


def test_eigen_and_cholesky_roots_give_same_map(problem):
    W, X = problem
    G = X @ X.T
    B1, A1, s1 = whitened_lowrank(W, sqrt_gram(G), K)
    L = torch.linalg.cholesky(G)
    B2, A2, s2 = whitened_lowrank(W, L, K)
    scale = float((B1 @ A1).abs().max())
    torch.testing.assert_close(B1 @ A1, B2 @ A2, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(s1, s2, rtol=1e-9, atol=0)


def test_whitened_beats_plain_svd_and_asvd_on_outliers(problem):
    W, X = problem
    svdllm = _out_err(W, sum_ba(whitened_lowrank(W, sqrt_gram(X @ X.T), K)), X)
    plain = _out_err(W, truncated_svd(W, K).to_dense(), X)
    scale = X.abs().mean(1) ** 0.5
    asvd = _out_err(W, sum_ba(whitened_lowrank(W, DiagonalRoot(scale), K)), X)
    _, minimum = _optimum(W, X, K)
    assert svdllm == pytest.approx(minimum, rel=1e-9)
    assert svdllm <= asvd * (1 + 1e-12)
    assert svdllm <= plain * (1 + 1e-12)
    # spec §3(g): on outlier inputs ASVD sits between the optimum and plain SVD
    assert asvd < plain


def test_asvd_alpha_zero_is_plain_svd(problem):
    W, _ = problem
    B, A, spectrum = whitened_lowrank(W, DiagonalRoot(torch.ones(N_IN, dtype=torch.float64)), K)
    torch.testing.assert_close(B @ A, truncated_svd(W, K).to_dense(), rtol=0, atol=1e-12)
    torch.testing.assert_close(spectrum, torch.linalg.svdvals(W), rtol=1e-12, atol=0)


def test_diagonal_gram_rms_scaling_equals_svdllm(rng):
    """Spec §3(g): with independent channels (diagonal G), ASVD with an RMS statistic and
    alpha = 1 is SVD-LLM exactly, since then a root of G is diag(sqrt(G_jj))."""
    W = torch.randn(M_OUT, N_IN, generator=rng, dtype=torch.float64)
    d = torch.rand(N_IN, generator=rng, dtype=torch.float64) * 100 + 0.1
    G = torch.diag(d)
    B1, A1, _ = whitened_lowrank(W, sqrt_gram(G, floor=1e-9), K)
    B2, A2, _ = whitened_lowrank(W, DiagonalRoot(d.sqrt()), K)
    torch.testing.assert_close(B1 @ A1, B2 @ A2, rtol=0, atol=1e-9)


def test_randomized_whitened_svd_matches_exact_on_low_rank_target(problem, rng):
    _, X = problem
    W = torch.randn(M_OUT, 4, generator=rng, dtype=torch.float64) @ torch.randn(
        4, N_IN, generator=rng, dtype=torch.float64)
    root = sqrt_gram(X @ X.T)
    exact = whitened_svd(W, root)
    rand = whitened_svd(W, root, rank=4, randomized=True, seed=1)
    Be, Ae = exact.factors(4)
    Br, Ar = rand.factors(4)
    torch.testing.assert_close(Br @ Ar, Be @ Ae, rtol=0, atol=1e-8 * float(W.abs().max()))
    with pytest.raises(ValueError, match="rank"):
        whitened_svd(W, root, randomized=True)


# -------------------------------------------------------------------- FWSVD (left weights)


def _row_weighted_err2(W: torch.Tensor, W2: torch.Tensor, r: torch.Tensor) -> float:
    return float((r[:, None] * (W - W2) ** 2).sum())


def test_fwsvd_left_weighting_beats_plain_svd(rng):
    W = torch.randn(M_OUT, N_IN, generator=rng, dtype=torch.float64)
    r = torch.exp(2 * torch.randn(M_OUT, generator=rng, dtype=torch.float64))  # heavy tailed
    dec = whitened_svd(W, left=r.sqrt())
    B, A = dec.factors(K)
    fw = _row_weighted_err2(W, B @ A, r)
    plain = _row_weighted_err2(W, truncated_svd(W, K).to_dense(), r)
    assert fw <= plain * (1 + 1e-12)
    # the weighted spectrum's tail is the weighted error
    assert fw == pytest.approx(dec.tail_energy(K), rel=1e-9)


def test_fwsvd_uniform_weights_is_plain_svd(rng):
    W = torch.randn(M_OUT, N_IN, generator=rng, dtype=torch.float64)
    B, A = whitened_svd(W, left=torch.full((M_OUT,), 3.7, dtype=torch.float64)).factors(K)
    torch.testing.assert_close(B @ A, truncated_svd(W, K).to_dense(), rtol=0, atol=1e-12)


def test_fwsvd_closed_form_matches_alternating_least_squares(rng):
    """On a 20 x 30 matrix, alternating weighted least squares converges to the same minimum
    of ``sum_i r_i ||W_i - (BA)_i||^2`` as the closed form, and never goes below it."""
    m, n, k = 20, 30, 5
    W = torch.randn(m, n, generator=rng, dtype=torch.float64)
    r = torch.rand(m, generator=rng, dtype=torch.float64) * 10 + 0.05
    B, A = whitened_svd(W, left=r.sqrt()).factors(k)
    closed = _row_weighted_err2(W, B @ A, r)

    R = torch.diag(r)
    Bk = torch.randn(m, k, generator=rng, dtype=torch.float64)
    Ak = torch.randn(k, n, generator=rng, dtype=torch.float64)
    history = []
    for _ in range(300):
        # A-step: weighted least squares over all rows jointly
        Ak = torch.linalg.solve(Bk.T @ R @ Bk, Bk.T @ R @ W)
        # B-step: each row independently (its weight is a constant factor)
        Bk = torch.linalg.solve(Ak @ Ak.T, Ak @ W.T).T
        history.append(_row_weighted_err2(W, Bk @ Ak, r))
    als = history[-1]
    assert all(b <= a * (1 + 1e-10) for a, b in zip(history, history[1:], strict=False))
    assert als >= closed * (1 - 1e-9)
    assert als == pytest.approx(closed, rel=1e-6)


def test_left_weights_validated(rng):
    W = torch.randn(4, 5, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match="left"):
        whitened_svd(W, left=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="left"):
        whitened_svd(W, left=torch.ones(5))


def sum_ba(factors) -> torch.Tensor:
    B, A, _ = factors
    return B @ A
