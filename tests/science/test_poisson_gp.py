"""The GP-HM solver equals its dense assembly and solves Poisson problems, multi-scale ones with
learned kernels."""

import numpy as np

from lowrank.science import SpectralMixtureKernel1D, solve_poisson_gp
from lowrank.science.poisson_gp import (
    boundary_mask,
    finite_difference_poisson,
    learn_poisson_kernels,
)


def test_poisson_cg_equals_dense_and_beats_finite_differences_2d():
    x = np.linspace(0, 1, 14)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    w = 2 * np.pi
    u = np.sin(w * xx) * np.sin(w * yy)
    f = -2 * w * w * u
    ker = SpectralMixtureKernel1D(mu=[1.0], ell=1.0)
    cg = solve_poisson_gp(f, u, [x, x], [ker, ker], method="cg", tol=1e-13)
    dense = solve_poisson_gp(f, u, [x, x], [ker, ker], method="dense")
    assert np.abs(cg.u - dense.u).max() < 1e-6 * np.abs(u).max()  # cond(H) ~ weight = 1e6
    eig = solve_poisson_gp(f, u, [x, x], [ker, ker])               # default: method="eigen"
    # same objective, but dense/CG regularise K^{-1/2} with jitter, eigen truncates instead
    assert np.abs(eig.u - dense.u).max() < 1e-4 * np.abs(u).max()
    fd = finite_difference_poisson(f, u, [x, x])
    for sol in (cg, eig):
        err = np.linalg.norm(sol.u - u) / np.linalg.norm(u)
        assert err < 1e-3 < np.linalg.norm(fd - u) / np.linalg.norm(u)


def test_eigen_solve_equals_explicit_least_squares():
    # the Kronecker assembly of the normal equations against the same truncated objective
    # written out with explicit Kronecker products and solved by lstsq (non-square grid,
    # different kernel per axis)
    rng = np.random.default_rng(1)
    x1, x2 = np.linspace(0, 1, 10), np.linspace(0, 0.7, 12)
    k1 = SpectralMixtureKernel1D([0.5, 3.0], [2.0, 1.0], [0.0, -1.0])
    k2 = SpectralMixtureKernel1D([1.0], 3.0)
    f, g = rng.standard_normal((10, 12)), rng.standard_normal((10, 12))
    weight, tol = 1e3, 1e-10
    sol = solve_poisson_gp(f, g, [x1, x2], [k1, k2], weight=weight, rank_tol=tol)
    s_list, p_list = [], []
    for k, x in ((k1, x1), (k2, x2)):
        lam, q = np.linalg.eigh(k(x, x))
        keep = lam > tol * lam.max()
        s_list.append(q[:, keep] * np.sqrt(lam[keep]))
        p_list.append(k(x, x, deriv=2) @ (q[:, keep] / np.sqrt(lam[keep])))
    s = np.kron(s_list[0], s_list[1])
    lap = np.kron(p_list[0], s_list[1]) + np.kron(s_list[0], p_list[1])
    bm = boundary_mask((10, 12)).ravel()
    a = np.vstack([np.eye(s.shape[1]) / np.sqrt(weight), s[bm], lap[~bm]])
    y = np.concatenate([np.zeros(s.shape[1]), g.ravel()[bm], f.ravel()[~bm]])
    z = np.linalg.lstsq(a, y, rcond=None)[0]
    assert np.allclose(sol.u.ravel(), s @ z, rtol=0, atol=1e-8 * np.abs(s @ z).max())


def test_two_scale_1d_poisson_with_learned_kernel():
    # u = sin(2 pi x) + 0.1 sin(50 pi x): the frequencies 1 and 25 are found from the sine
    # spectrum of the FD solution, their log-weights learned; GP-HM (eigen solve) reaches a
    # relative L2 error below 1e-4 on 150 points, where FD on the same grid is at ~1e-2
    x = np.linspace(0, 1, 150)
    a1, a2 = 2 * np.pi, 50 * np.pi
    u = np.sin(a1 * x) + 0.1 * np.sin(a2 * x)
    f = -a1 ** 2 * np.sin(a1 * x) - 0.1 * a2 ** 2 * np.sin(a2 * x)
    kernels = learn_poisson_kernels(f, u, [x], steps=100)
    assert set(np.round(kernels[0].mu, 6)) == {1.0, 25.0}
    sol = solve_poisson_gp(f, u, [x], kernels)
    assert np.linalg.norm(sol.u - u) / np.linalg.norm(u) < 1e-4
    fd = finite_difference_poisson(f, u, [x])
    assert np.linalg.norm(fd - u) / np.linalg.norm(u) > 5e-3
    # the soft objective by CG stalls on the same kernels (cond ~ weight * ||Laplace||^2)
    cg = solve_poisson_gp(f, u, [x], kernels, method="cg")
    assert np.linalg.norm(cg.u - u) / np.linalg.norm(u) > 10 * np.linalg.norm(sol.u - u) / \
        np.linalg.norm(u)


def test_high_frequency_1d_poisson():
    x = np.linspace(0, 1, 200)
    k = 20 * np.pi
    u = np.sin(k * x)
    sol = solve_poisson_gp(-k * k * u, u, [x], [SpectralMixtureKernel1D(mu=[10.0], ell=2.0)])
    assert np.linalg.norm(sol.u - u) / np.linalg.norm(u) < 1e-3
