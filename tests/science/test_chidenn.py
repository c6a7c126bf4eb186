"""Oracles for the C-HiDeNN-TD space-time reduced-order model: polynomial reproduction and
Kronecker delta of the basis, all-at-once system = time marching, separated solve = full-grid
solve, and convergence order against a manufactured solution."""

import numpy as np
import pytest

from lowrank.errors import ConfigError
from lowrank.science.chidenn import CHiDeNNBasis1D, TransientHeat2D, separated_solve


@pytest.mark.parametrize("p,s", [(1, 1), (2, 1), (2, 2), (3, 2), (4, 2)])
def test_basis_reproduces_polynomials_and_is_interpolating(p, s):
    b = CHiDeNNBasis1D(9, p=p, s=s, lo=-0.5, hi=1.0)
    x = np.linspace(-0.5, 1.0, 53)
    phi, dphi = b.evaluate(x)
    for k in range(p + 1):
        assert np.abs(phi @ b.nodes ** k - x ** k).max() < 1e-10
        deriv = k * x ** (k - 1) if k else np.zeros_like(x)
        assert np.abs(dphi @ b.nodes ** k - deriv).max() < 1e-8
    assert np.abs(b.evaluate(b.nodes)[0] - np.eye(b.size)).max() < 1e-12


def test_linear_fe_special_case_and_bad_config():
    b = CHiDeNNBasis1D(4, s=0)
    m, k = b.matrices()
    h = 0.25
    assert np.allclose(k[1, :3], [-1 / h, 2 / h, -1 / h]) and np.allclose(m[1, 1], 2 * h / 3)
    with pytest.raises(ConfigError):
        CHiDeNNBasis1D(8, p=5, s=2)


@pytest.mark.parametrize("scheme", ["cn", "be"])
def test_all_at_once_kronecker_system_equals_time_marching(scheme):
    pr = TransientHeat2D(6, 5, 4, kappa=0.3, scheme=scheme)
    load = pr.load_separable(lambda x: np.sin(np.pi * x), lambda y: y * (1 - y), lambda t: 1 + t)
    dense = sum(np.kron(np.kron(t[2], t[0]), t[1]) for t in pr.operator_terms())
    rhs = np.einsum("ar,br,cr->cab", *load).ravel()
    u = np.linalg.solve(dense, rhs).reshape(pr.nt, 5, 4)
    assert np.abs(u - pr.solve_full(load).u).max() < 1e-12


def test_separated_solve_matches_full_grid_solve():
    pr = TransientHeat2D(12, 10, 16, kappa=0.05)
    load = pr.load_moving_source(radius=0.15, speed=0.5)
    full = pr.solve_full(load)
    td = pr.solve_td(load, max_rank=40, tol=1e-6)
    diff = np.linalg.norm(pr.td_to_grid(td) - full.u) / np.linalg.norm(full.u)
    assert td.residuals[-1] < 1e-2 and diff < 1e-2
    assert td.residuals[-1] < td.residuals[5] < td.residuals[1]     # greedy enrichment helps
    # an exactly separable solution is found with one mode to round-off
    a = np.diag([2.0, 3.0, 4.0])
    b = np.array([[2.0, -1.0], [-1.0, 2.0]])
    sol = separated_solve([[a, np.eye(2)], [np.eye(3), b]], [np.ones((3, 1)), np.ones((2, 1))],
                          max_rank=6, tol=1e-7)
    ref = np.linalg.solve(np.kron(a, np.eye(2)) + np.kron(np.eye(3), b), np.ones(6))
    assert np.abs(sol.full().ravel() - ref).max() < 1e-6


def test_chidenn_beats_linear_fe_on_manufactured_solution():
    kappa = 0.1

    def q(t):
        return np.exp(-t) + 2 * np.pi ** 2 * kappa * (1 - np.exp(-t))

    errors = {}
    for name, p, s in (("fe", 1, 0), ("chidenn", 3, 2)):
        for n in (8, 16):
            pr = TransientHeat2D(n, n, 100, kappa=kappa, p=p, s=s)
            load = pr.load_separable(lambda x: np.sin(np.pi * x), lambda y: np.sin(np.pi * y), q)
            u = pr.td_to_grid(pr.solve_td(load, max_rank=8, tol=1e-7))[-1]
            x, y = pr.interior_nodes()
            exact = np.outer(np.sin(np.pi * x), np.sin(np.pi * y)) * (1 - np.exp(-1.0))
            errors[name, n] = np.linalg.norm(u - exact) / np.linalg.norm(exact)
    # linear FE converges at second order, C-HiDeNN (p=3) is far more accurate on the same mesh
    assert 3.0 < errors["fe", 8] / errors["fe", 16] < 5.0
    assert errors["chidenn", 16] < 0.01 * errors["fe", 16]
