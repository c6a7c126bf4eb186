"""The Kronecker GP equals the dense GP; spectral-mixture kernels and their candidate
frequencies."""

import numpy as np
import pytest

from lowrank.errors import ConfigError
from lowrank.science import KroneckerGP, SpectralMixtureKernel1D
from lowrank.science.kronecker_gp import rbf_kernel, spectral_candidates


def test_kronecker_solve_logdet_mean_equal_dense():
    rng = np.random.default_rng(0)
    x1, x2 = np.linspace(0, 1, 12), np.linspace(0, 2, 9)
    k1 = SpectralMixtureKernel1D(mu=[3.0, 0.5], ell=[4.0, 1.0], log_w=[0.0, -1.0])
    k2 = rbf_kernel(0.3)
    y = rng.standard_normal((12, 9))
    gp = KroneckerGP([k1, k2], [x1, x2], noise=1e-2).fit(y)
    dense = np.kron(k1(x1, x1), k2(x2, x2)) + 1e-2 * np.eye(108)
    alpha = np.linalg.solve(dense, y.ravel())
    assert np.allclose(gp.alpha.ravel(), alpha, rtol=1e-8, atol=1e-8)
    assert np.isclose(gp.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-9)
    xs = [np.array([0.05, 0.5]), np.array([0.1, 1.3, 1.9])]
    kstar = np.kron(k1(xs[0], x1), k2(xs[1], x2))
    assert np.allclose(gp.posterior_mean(xs).ravel(), kstar @ alpha, atol=1e-8)


def test_spectral_mixture_second_derivative_matches_finite_differences():
    k = SpectralMixtureKernel1D(mu=[2.0, 5.0], ell=[3.0, 0.7], log_w=[0.2, -0.4])
    x, xp, h = np.array([0.31, -0.2]), np.array([0.05, 0.4, 0.9]), 1e-4
    fd = (k(x + h, xp) - 2 * k(x, xp) + k(x - h, xp)) / h**2
    assert np.allclose(k(x, xp, deriv=2), fd, rtol=1e-5, atol=1e-5)


def test_spectral_candidates_2d():
    x, y = np.linspace(0, 1, 40), np.linspace(0, 2, 50)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    data = np.sin(2 * np.pi * 3 * xx) * np.sin(2 * np.pi * 0.5 * yy) \
        + 0.01 * np.sin(2 * np.pi * 8 * xx) * np.sin(2 * np.pi * 4 * yy)
    c = spectral_candidates(data, [x, y], max_per_axis=2)
    assert np.allclose(c[0], [3.0, 8.0]) and np.allclose(c[1], [0.5, 4.0])
    with pytest.raises(ConfigError, match="uniform"):
        spectral_candidates(data, [x ** 2, y])


def test_errors():
    with pytest.raises(ConfigError, match="one kernel per grid axis"):
        KroneckerGP([rbf_kernel(1.0)], [np.arange(3), np.arange(4)])
    gp = KroneckerGP([rbf_kernel(1.0)], [np.arange(3.0)])
    with pytest.raises(ConfigError, match="grid's shape"):
        gp.solve(np.zeros(4))
