"""Output moments from input statistics, output PCA and weighted row moments (spec §10, §11).

Oracles: moments computed directly from the outputs ``Y = W X + b 1^T`` of explicit inputs.
"""

from __future__ import annotations

import pytest
import torch

from lowrank.compress.base import output_error
from lowrank.linalg.output_pca import (
    affine_output_error,
    output_covariance,
    output_moments,
    output_pca,
    weighted_row_moments,
)

M_OUT, N_IN, TOKENS = 12, 20, 300


def _inputs(rng: torch.Generator) -> torch.Tensor:
    """Inputs (n x tokens) with a non-zero mean, two loud channels and channel mixing."""
    X = torch.randn(N_IN, TOKENS, generator=rng, dtype=torch.float64)
    X[:2] *= 20.0
    mix = torch.eye(N_IN, dtype=torch.float64) + 0.2 * torch.randn(
        N_IN, N_IN, generator=rng, dtype=torch.float64)
    offset = 3.0 * torch.randn(N_IN, 1, generator=rng, dtype=torch.float64)
    return mix @ X + offset


@pytest.fixture
def layer(rng):
    W = torch.randn(M_OUT, N_IN, generator=rng, dtype=torch.float64)
    b = torch.randn(M_OUT, generator=rng, dtype=torch.float64)
    return W, b, _inputs(rng)


@pytest.mark.parametrize("with_bias", [True, False])
def test_output_moments_match_direct_moments(layer, with_bias):
    W, b, X = layer
    bias = b if with_bias else None
    Y = W @ X + (b[:, None] if with_bias else 0.0)
    moments = output_moments(W, bias, X @ X.T, X.sum(1), TOKENS)
    second, mean = Y @ Y.T / TOKENS, Y.mean(1)
    scale = float(second.abs().max())
    assert float((moments.second - second).abs().max()) <= 1e-8 * scale
    assert float((moments.mean - mean).abs().max()) <= 1e-8 * float(mean.abs().max())
    Yc = Y - mean[:, None]
    cov = Yc @ Yc.T / TOKENS
    assert float((moments.covariance - cov).abs().max()) <= 1e-8 * scale
    direct = output_covariance(W, X @ X.T, X.sum(1), TOKENS)
    assert float((direct - cov).abs().max()) <= 1e-8 * float(cov.abs().max())


def test_output_pca_is_a_descending_eigendecomposition(layer):
    W, _, X = layer
    C = output_covariance(W, X @ X.T, X.sum(1), TOKENS)
    lam, U = output_pca(C)
    assert lam.dtype == torch.float64 and U.shape == (M_OUT, M_OUT)
    assert bool((lam[:-1] >= lam[1:]).all()) and bool((lam >= 0).all())
    torch.testing.assert_close(U.T @ U, torch.eye(M_OUT, dtype=torch.float64), atol=1e-12,
                               rtol=0)
    torch.testing.assert_close(C @ U, U * lam, atol=1e-9 * float(lam[0]), rtol=0)
    top = output_pca(C, 4)
    assert top.eigenvectors.shape == (M_OUT, 4)
    torch.testing.assert_close(top.eigenvalues, lam[:4], rtol=1e-12, atol=0)


def test_output_pca_clamps_round_off_and_validates():
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.arange(1.0, 5.0)).double()
    lam, _ = output_pca(rank_one - 1e-12 * torch.eye(4, dtype=torch.float64))
    assert bool((lam >= 0).all()) and lam[0] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="square"):
        output_pca(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="k must be"):
        output_pca(torch.eye(3), 4)
    with pytest.raises(ValueError, match="non-finite"):
        output_pca(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="token count"):
        output_moments(torch.eye(2), None, torch.eye(2), torch.zeros(2), 0)
    with pytest.raises(ValueError, match="shapes"):
        output_moments(torch.eye(2), None, torch.eye(3), torch.zeros(3), 5)


def test_weighted_row_moments_equal_moments_of_repeated_rows(rng):
    rows = torch.randn(7, 5, generator=rng, dtype=torch.float64)
    counts = torch.tensor([3, 0, 1, 5, 2, 0, 4])
    mean, cov = weighted_row_moments(rows, counts.double())
    repeated = rows.repeat_interleave(counts, dim=0)
    torch.testing.assert_close(mean, repeated.mean(0), rtol=1e-12, atol=1e-12)
    centred = repeated - repeated.mean(0)
    torch.testing.assert_close(cov, centred.T @ centred / counts.sum(), rtol=1e-12,
                               atol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        weighted_row_moments(rows, -torch.ones(7))
    with pytest.raises(ValueError, match="one entry per row"):
        weighted_row_moments(rows, torch.ones(6))


def test_affine_output_error_matches_direct_error(layer, rng):
    W, b, X = layer
    W2 = W + 0.1 * torch.randn(M_OUT, N_IN, generator=rng, dtype=torch.float64)
    b2 = b + torch.randn(M_OUT, generator=rng, dtype=torch.float64)
    direct = float(((W @ X + b[:, None]) - (W2 @ X + b2[:, None])).norm() / (W @ X).norm())
    got = affine_output_error(W, W2, b - b2, X @ X.T, X.sum(1), TOKENS)
    assert got == pytest.approx(direct, rel=1e-10)
    # with the bias unchanged it is the plain output error of compress.base
    same = affine_output_error(W, W2, torch.zeros(M_OUT, dtype=torch.float64), X @ X.T,
                               X.sum(1), TOKENS)
    assert same == pytest.approx(output_error(W, W2, X @ X.T), rel=1e-12)
