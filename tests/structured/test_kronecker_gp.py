"""Kronecker GP equals the dense GP; GP-HM solver equals its dense assembly and solves Poisson."""

import numpy as np
import pytest

from lowrank.errors import ConfigError
from lowrank.structured import KroneckerGP, SpectralMixtureKernel1D, solve_poisson_gp
from lowrank.structured.kronecker_gp import finite_difference_poisson, rbf_kernel


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


def test_poisson_cg_equals_dense_and_beats_finite_differences_2d():
    x = np.linspace(0, 1, 14)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    w = 2 * np.pi
    u = np.sin(w * xx) * np.sin(w * yy)
    f = -2 * w * w * u
    ker = SpectralMixtureKernel1D(mu=[1.0], ell=1.0)
    cg = solve_poisson_gp(f, u, [x, x], [ker, ker], tol=1e-13)
    dense = solve_poisson_gp(f, u, [x, x], [ker, ker], method="dense")
    assert np.abs(cg.u - dense.u).max() < 1e-6 * np.abs(u).max()  # cond(H) ~ weight = 1e6
    err = np.linalg.norm(cg.u - u) / np.linalg.norm(u)
    fd = finite_difference_poisson(f, u, [x, x])
    assert err < 1e-3 < np.linalg.norm(fd - u) / np.linalg.norm(u)


def test_high_frequency_1d_poisson():
    x = np.linspace(0, 1, 200)
    k = 20 * np.pi
    u = np.sin(k * x)
    sol = solve_poisson_gp(-k * k * u, u, [x], [SpectralMixtureKernel1D(mu=[10.0], ell=2.0)])
    assert np.linalg.norm(sol.u - u) / np.linalg.norm(u) < 1e-3


def test_errors():
    with pytest.raises(ConfigError, match="one kernel per grid axis"):
        KroneckerGP([rbf_kernel(1.0)], [np.arange(3), np.arange(4)])
    gp = KroneckerGP([rbf_kernel(1.0)], [np.arange(3.0)])
    with pytest.raises(ConfigError, match="grid's shape"):
        gp.solve(np.zeros(4))
