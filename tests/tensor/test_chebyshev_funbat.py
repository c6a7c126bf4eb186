"""Oracles for Chebyshev-Tucker (exact on polynomials) and FunBaT's state-space GP."""

import numpy as np
import pytest

pytest.importorskip("tensorly")

from lowrank.tensor import ChebyshevTucker, FunctionalTucker  # noqa: E402
from lowrank.tensor.funbat import state_space_posterior  # noqa: E402


def poly(p):
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    return x ** 5 - 2 * y ** 3 * z + z ** 4 * x + 0.5


def test_chebyshev_tucker_interpolates_polynomial_exactly():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (200, 3))
    full = ChebyshevTucker(order=6).fit(poly, 3)  # degree 5 < order 6
    np.testing.assert_allclose(full(pts), poly(pts), atol=1e-12)
    low = ChebyshevTucker(order=6, rank=3).fit(poly, 3)  # multilinear rank of poly is <= 3
    np.testing.assert_allclose(low(pts), poly(pts), atol=1e-10)
    assert low.n_evaluations_ == 216


def test_chebyshev_tucker_domain_grid_export_and_tol():
    def f(p):
        return np.exp(-(p ** 2).sum(1))

    ct = ChebyshevTucker(order=24, tol=1e-8, domain=[(0, 2), (-1, 3)]).fit(f, 2)
    g = [np.linspace(0, 2, 30), np.linspace(-1, 3, 40)]
    grid = ct.to_tucker(g).to_dense()
    mesh = np.stack(np.meshgrid(*g, indexing="ij"), -1).reshape(-1, 2)
    np.testing.assert_allclose(grid.reshape(-1), f(mesh), atol=1e-6)
    assert ct.rank_[0] < 24


def test_chebyshev_tucker_grid_metric_equals_hooi_of_the_interpolant():
    """Truncating in a grid's norm is HOOI of the interpolant sampled on that grid (the map
    C -> C x_n R_n is an isometry onto it); the coefficient metric is no better there."""
    from lowrank.tensor import relative_error, tucker

    def f(p):
        return 1.0 / np.sqrt(0.3 + ((p - 0.2) ** 2).sum(1)) - np.exp(p[:, 0] * p[:, 1] * p[:, 2])

    g = np.linspace(-1, 1, 30)
    full = ChebyshevTucker(order=14).fit(f, 3).to_tucker([g, g, g]).to_dense()
    best = tucker(full, 3, svd="truncated_svd", tol=1e-12, n_iter_max=200).rel_error
    gridded = ChebyshevTucker(order=14, rank=3, metric=[g, g, g], n_iter_max=200).fit(f, 3)
    err = relative_error(full, gridded.to_tucker([g, g, g]).to_dense())
    assert abs(err - best) <= 1e-6 * best
    coef = ChebyshevTucker(order=14, rank=3, metric="coefficients").fit(f, 3)
    assert relative_error(full, coef.to_tucker([g, g, g]).to_dense()) >= err * (1 - 1e-9)
    l2 = ChebyshevTucker(order=14, rank=3).fit(f, 3)  # L2 on the box ~ uniform grid norm
    assert relative_error(full, l2.to_tucker([g, g, g]).to_dense()) <= 1.05 * best
    with pytest.raises(Exception, match="metric"):
        ChebyshevTucker(order=4, rank=2, metric="sobolev").fit(f, 3)
    with pytest.raises(Exception, match="fewer than the order"):
        ChebyshevTucker(order=14, rank=2, metric=[g[:5]] * 3).fit(f, 3)


@pytest.mark.parametrize("kernel", ["matern12", "matern32"])
def test_kalman_smoother_equals_dense_gp(kernel):
    rng = np.random.default_rng(1)
    x = np.sort(rng.random(300))
    y = np.sin(6 * x) + 0.1 * rng.standard_normal(300)
    noise = 0.01
    mu, cov = state_space_posterior(x, np.full((300, 1, 1), 1 / noise), y[:, None] / noise,
                                    kernel=kernel, lengthscale=0.3, variance=1.3)
    d = np.abs(x[:, None] - x[None])
    if kernel == "matern12":
        k = 1.3 * np.exp(-d / 0.3)
    else:
        k = 1.3 * (1 + np.sqrt(3) * d / 0.3) * np.exp(-np.sqrt(3) * d / 0.3)
    a = k + noise * np.eye(300)
    np.testing.assert_allclose(mu[:, 0], k @ np.linalg.solve(a, y), atol=1e-8)
    np.testing.assert_allclose(cov[:, 0, 0], np.diag(k - k @ np.linalg.solve(a, k)),
                               atol=1e-8)


def test_funbat_fits_continuous_tucker_data():
    rng = np.random.default_rng(2)
    w = np.array([[1.0, 0.5], [-0.7, 1.2]])

    def f(x):
        u = np.stack([np.sin(2 * np.pi * x[:, 0]), np.cos(3 * x[:, 0])], 1)
        v = np.stack([np.sin(3 * x[:, 1]), np.cos(2 * np.pi * x[:, 1])], 1)
        return np.einsum("na,ab,nb->n", u, w, v)

    x = rng.random((300, 2))
    y = f(x) + 0.05 * rng.standard_normal(300)
    model = FunctionalTucker(2, n_epochs=25).fit(x, y)
    xt = rng.random((200, 2))  # unseen continuous coordinates
    mean, std = model.predict(xt, return_std=True)
    rmse = np.sqrt(np.mean((mean - f(xt)) ** 2))
    assert rmse < 0.05 * np.std(f(xt)) + 0.05  # well below the signal, near the noise
    assert np.all(std > 0) and 0.02 < 1 / np.sqrt(model.noise_precision_) < 0.12
