"""GP-HM: the Gaussian-process solver for high-frequency and multi-scale PDEs (Poisson on a box).

Fang, Xu, Wang, Kirby, Zhe, "Solving High Frequency and Multi-Scale PDEs with Gaussian
Processes" (ICLR 2024). The solver places a GP prior with a product kernel
(:mod:`lowrank.science.kronecker_gp`) on ``u`` whose values on the grid are the unknowns; the
conditional mean gives ``u`` and its derivatives (``d^2u/dx_d^2 = K_d'' K_d^{-1} U`` along axis
d), and the grid values minimise ``||u||_K^2 + w (boundary misfit + equation residual)``. This
quadratic is solved exactly in the numerically nonzero eigenspace of each ``K_d`` (a few dozen
directions per axis for a spectral-mixture kernel with a few components, whatever the grid size):
the interior points form a tensor-product set, so the normal equations are sums of Kronecker
products of small per-axis blocks. Conjugate gradients with Kronecker matvecs on the full grid are
kept as an option; they stall on multi-scale kernels, whose normal equations have condition
numbers near ``w ||Laplacian||^2``. For multi-scale solutions the kernel needs every active
frequency: :func:`learn_poisson_kernels` takes candidate frequencies from the sine spectrum of a
cheap finite-difference solution (:func:`finite_difference_poisson`, also the classical baseline)
and learns their log-domain weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..linalg.arrays import kron_matvec, mode_dot
from .kronecker_gp import Kernel1D, SpectralMixtureKernel1D, fit_log_weights, spectral_candidates


@dataclass
class PDESolution:
    """Grid solution of :func:`solve_poisson_gp` and how it was obtained."""

    u: np.ndarray
    iterations: int
    residual: float
    objective_terms: dict


def _cg(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, tol: float,
        maxiter: int) -> tuple[np.ndarray, int, float]:
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = float(np.sum(r * r))
    bnorm = math.sqrt(float(np.sum(b * b))) or 1.0
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007
        ap = matvec(p)
        alpha = rs / float(np.sum(p * ap))
        x += alpha * p
        r -= alpha * ap
        rs_new = float(np.sum(r * r))
        if math.sqrt(rs_new) <= tol * bnorm:
            rs = rs_new
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, it, math.sqrt(rs) / bnorm


def boundary_mask(shape: Sequence[int]) -> np.ndarray:
    """Boolean grid mask of the points on the boundary of the box."""
    mask = np.zeros(shape, dtype=bool)
    for axis, n in enumerate(shape):
        idx = [slice(None)] * len(shape)
        for j in (0, n - 1):
            idx[axis] = j
            mask[tuple(idx)] = True
    return mask


class _PoissonOperators:
    """``S = K^{1/2}`` and ``L S`` (Laplacian of the conditional mean) as Kronecker factors."""

    def __init__(self, kernels: Sequence[Kernel1D], grid: Sequence[np.ndarray], jitter: float):
        self.sqrt, self.lap = [], []
        for k, x in zip(kernels, grid, strict=True):
            gram = k(x, x)
            gram = gram + jitter * np.trace(gram) / x.size * np.eye(x.size)
            lam, q = np.linalg.eigh(gram)
            lam = np.clip(lam, 1e-300, None)
            self.sqrt.append((q * np.sqrt(lam)) @ q.T)
            # K'' K^{-1} K^{1/2} = K'' K^{-1/2}
            self.lap.append(k(x, x, deriv=2) @ ((q / np.sqrt(lam)) @ q.T))

    def u(self, z: np.ndarray) -> np.ndarray:
        return kron_matvec(self.sqrt, z)

    def lu(self, z: np.ndarray) -> np.ndarray:
        out = np.zeros_like(z)
        for d in range(z.ndim):
            mats = [self.lap[e] if e == d else self.sqrt[e] for e in range(z.ndim)]
            out += kron_matvec(mats, z)
        return out

    def u_t(self, r: np.ndarray) -> np.ndarray:
        return kron_matvec([m.T for m in self.sqrt], r)

    def lu_t(self, r: np.ndarray) -> np.ndarray:
        out = np.zeros_like(r)
        for d in range(r.ndim):
            mats = [(self.lap[e] if e == d else self.sqrt[e]).T for e in range(r.ndim)]
            out += kron_matvec(mats, r)
        return out


def _second_derivative_matrix(k: Kernel1D, x: np.ndarray, rank_tol: float = 1e-13) -> np.ndarray:
    """``K'' K^+`` on the numerically nonzero eigenspace of ``K``: the second derivative of the GP
    conditional mean at the grid, from grid values in that eigenspace (diagnostics)."""
    lam, q = np.linalg.eigh(k(x, x))
    keep = lam > rank_tol * lam.max()
    return (k(x, x, deriv=2) @ q[:, keep] / lam[keep]) @ q[:, keep].T


def _eigen_solve(f: np.ndarray, g: np.ndarray, grid: Sequence[np.ndarray],
                 kernels: Sequence[Kernel1D], weight: float, rank_tol: float,
                 max_unknowns: int) -> tuple[np.ndarray, int, float]:
    """The soft GP-HM objective solved exactly in the numerically nonzero eigenspace of K.

    Per axis ``K_d = Q_d diag(l_d) Q_d^T``, keep the ``r_d`` eigenpairs with
    ``l > rank_tol * max(l)``: ``S_d = Q_r l_r^{1/2}`` (grid values) and
    ``P_d = K_d'' Q_r l_r^{-1/2}`` (second derivative). The interior points are a tensor product
    set, so the interior Laplacian of ``U = (S_1 (x) ... (x) S_D) z`` is
    ``F z = sum_d (... (x) P_d[1:-1] (x) ...) z`` and ``F^T F`` is a sum of ``D^2`` Kronecker
    products of ``r x r`` blocks; the boundary rows are few. The normal equations
    ``(I / weight + F^T F + S_b^T S_b) z = F^T f + S_b^T g`` have ``prod_d r_d`` unknowns (about
    35 per axis for a few spectral-mixture components, whatever the grid size) and are solved
    densely. Dropped directions cost at least ``1 / (rank_tol max l)`` per unit amplitude under
    the prior, so the answer is the full objective's minimiser up to that truncation."""
    from scipy.linalg import LinAlgWarning, solve

    dims = len(grid)
    s_list, p_list = [], []
    for k, x in zip(kernels, grid, strict=True):
        x = np.asarray(x, dtype=np.float64)
        lam, q = np.linalg.eigh(k(x, x))
        keep = lam > rank_tol * lam.max()
        lam, q = lam[keep], q[:, keep]
        s_list.append(q * np.sqrt(lam))
        p_list.append(k(x, x, deriv=2) @ (q / np.sqrt(lam)))
    ranks = [m.shape[1] for m in s_list]
    unknowns = int(np.prod(ranks))
    if unknowns > max_unknowns:
        raise ConfigError(f"method='eigen' would need {unknowns} unknowns (kernel ranks {ranks}) "
                          f"> max_unknowns={max_unknowns}; prune the kernels' components or use "
                          f"method='cg'")
    inner = (slice(1, -1),) * dims
    si = [m[1:-1] for m in s_list]
    pi = [m[1:-1] for m in p_list]

    def factor(d: int, axis: int) -> np.ndarray:
        return pi[axis] if axis == d else si[axis]

    gram = np.zeros((unknowns, unknowns))
    for d in range(dims):
        for e in range(dims):
            term = np.ones((1, 1))
            for axis in range(dims):
                term = np.kron(term, factor(d, axis).T @ factor(e, axis))
            gram += term
    rhs = sum(kron_matvec([factor(d, axis).T for axis in range(dims)], f[inner])
              for d in range(dims)).ravel()
    bidx = np.nonzero(boundary_mask(f.shape))
    rows = s_list[0][bidx[0]]
    for axis in range(1, dims):
        rows = (rows[:, :, None] * s_list[axis][bidx[axis]][:, None, :]).reshape(rows.shape[0], -1)
    gram += rows.T @ rows
    rhs += rows.T @ g[bidx]
    gram[np.diag_indices_from(gram)] += 1.0 / weight
    scale = 1.0 / np.sqrt(np.diag(gram))              # Jacobi scaling: columns differ by ~1e8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)  # cond ~ weight ||F||^2 by construction
        z = scale * solve(gram * scale[:, None] * scale[None, :], scale * rhs, assume_a="pos")
    z = z.reshape(ranks)
    return kron_matvec(s_list, z), unknowns, float(np.sum(z * z))


def solve_poisson_gp(f: np.ndarray, g: np.ndarray, grid: Sequence[np.ndarray],
                     kernels: Sequence[Kernel1D], *, weight: float = 1e6,
                     jitter: float | None = None, tol: float = 1e-10, maxiter: int = 5000,
                     method: str = "eigen", rank_tol: float = 1e-13,
                     max_unknowns: int = 6000) -> PDESolution:
    """GP-HM solve of ``Laplace(u) = f`` in the box, ``u = g`` on its boundary, on a tensor grid.

    Unknowns are the grid values ``U = K^{1/2} Z`` (so the GP prior term ``U^T K^{-1} U`` is
    ``||Z||^2``); ``Laplace(u)`` at the grid is ``sum_d K_d'' K_d^{-1}`` applied along axis d
    (the derivative of the conditional mean). The paper's soft objective
    ``||Z||^2 + weight * (||U - g||^2_boundary + ||Laplace(U) - f||^2_interior)`` is solved by
    CG on the normal equations with Kronecker matvecs (``method='cg'``) or assembled densely
    (``method='dense'``, the reference for small grids). Its condition number grows like
    ``weight * ||Laplace||^2``, so CG stalls on multi-scale kernels (frequencies 1 and 25: 0.15
    relative error where the dense solve of the same equations gives 6e-5). ``'eigen'``
    (default) solves the same objective exactly in the numerically nonzero eigenspace of each
    ``K_d`` (:func:`_eigen_solve`; ``rank_tol`` the relative eigenvalue cut, at most
    ``max_unknowns`` unknowns). ``jitter`` (CG / dense only, default 1e-10) regularises
    ``K_d^{-1/2}``. ``f`` and ``g`` are grid arrays (``g`` read on the boundary only). The
    paper's code instead runs Adam jointly on ``U``, the kernel parameters and learned boundary
    and residual precisions; here the kernel is fixed (:func:`learn_poisson_kernels`) and the
    fit weight is a large constant, so the grid values are one exact linear solve.
    """
    shape = tuple(np.asarray(x).size for x in grid)
    f, g = np.asarray(f, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if f.shape != shape or g.shape != shape:
        raise ConfigError(f"f and g must have the grid's shape {shape}, got {f.shape}, "
                          f"{g.shape}")
    if method not in ("eigen", "cg", "dense"):
        raise ConfigError(f"method must be 'eigen', 'cg' or 'dense', got {method!r}")
    if len(kernels) != len(shape) or min(shape) < 3:
        raise ConfigError(f"solve_poisson_gp needs one kernel per axis and >= 3 points per axis, "
                          f"got {len(kernels)} kernels for grid shape {shape}")
    bmask = boundary_mask(shape)
    imask = ~bmask
    if method == "eigen":
        u, unknowns, prior = _eigen_solve(f, g, grid, kernels, weight, rank_tol, max_unknowns)
        lap = sum(mode_dot(u, _second_derivative_matrix(k, np.asarray(x, dtype=np.float64)),
                           axis) for axis, (k, x) in enumerate(zip(kernels, grid, strict=True)))
        terms = {"unknowns": unknowns, "prior": prior,
                 "boundary": float(np.sum((bmask * (u - g)) ** 2)),
                 "residual": float(np.sum((imask * (lap - f)) ** 2))}
        res = math.sqrt(terms["residual"]) / (float(np.linalg.norm(imask * f)) or 1.0)
        return PDESolution(u=u, iterations=0, residual=res, objective_terms=terms)
    ops = _PoissonOperators(kernels, grid, 1e-10 if jitter is None else jitter)

    def matvec(z: np.ndarray) -> np.ndarray:
        return z + weight * (ops.u_t(bmask * ops.u(z)) + ops.lu_t(imask * ops.lu(z)))

    rhs = weight * (ops.u_t(bmask * g) + ops.lu_t(imask * f))
    if method == "cg":
        z, iters, res = _cg(matvec, rhs, tol, maxiter)
    else:
        n = int(np.prod(shape))
        s, lap = ops.sqrt[0], None
        for m in ops.sqrt[1:]:
            s = np.kron(s, m)
        for d in range(len(shape)):
            term = None
            for e in range(len(shape)):
                m = ops.lap[e] if e == d else ops.sqrt[e]
                term = m if term is None else np.kron(term, m)
            lap = term if lap is None else lap + term
        bm, im = bmask.ravel(), imask.ravel()
        h = np.eye(n) + weight * (s[bm].T @ s[bm] + lap[im].T @ lap[im])
        z = np.linalg.solve(h, rhs.ravel()).reshape(shape)
        iters, res = 0, float(np.linalg.norm(matvec(z) - rhs) / np.linalg.norm(rhs))
    u = ops.u(z)
    terms = {"prior": float(np.sum(z * z)),
             "boundary": float(np.sum((bmask * (u - g)) ** 2)),
             "residual": float(np.sum((imask * (ops.lu(z) - f)) ** 2))}
    return PDESolution(u=u, iterations=iters, residual=res, objective_terms=terms)


def finite_difference_poisson(f: np.ndarray, g: np.ndarray,
                              grid: Sequence[np.ndarray]) -> np.ndarray:
    """Second-order finite-difference solve of the same problem on the same (uniform) grid,
    assembled sparse and solved directly (the classical, PINN-free baseline)."""
    from scipy.sparse import diags, eye, kron
    from scipy.sparse.linalg import spsolve

    shape = tuple(np.asarray(x).size for x in grid)
    ops = []
    for x in grid:
        h = float(x[1] - x[0])
        n = x.size
        ops.append(diags([np.ones(n - 1), -2 * np.ones(n), np.ones(n - 1)], [-1, 0, 1]) / h ** 2)
    lap = None
    for d in range(len(shape)):
        term = None
        for e in range(len(shape)):
            m = ops[e] if e == d else eye(shape[e])
            term = m if term is None else kron(term, m)
        lap = term if lap is None else lap + term
    lap = lap.tolil()
    bm = boundary_mask(shape).ravel()
    rhs = np.asarray(f, dtype=np.float64).ravel().copy()
    for i in np.flatnonzero(bm):
        lap.rows[i], lap.data[i] = [i], [1.0]
        rhs[i] = np.asarray(g).ravel()[i]
    return spsolve(lap.tocsr(), rhs).reshape(shape)


def learn_poisson_kernels(f: np.ndarray, g: np.ndarray, grid: Sequence[np.ndarray], *,
                          ell: float = 2.0, max_per_axis: int = 6, rel_power: float = 1e-8,
                          steps: int = 150, prune: float = 1e-6) -> list[SpectralMixtureKernel1D]:
    """Spectral-mixture kernels for :func:`solve_poisson_gp` on a multi-scale problem.

    A second-order finite-difference solve on the same grid has the right frequencies (the sines
    of a uniform grid are eigenvectors of the discrete Laplacian), if not the right amplitudes;
    the strongest peaks of its sine spectrum (:func:`spectral_candidates`) initialise the
    frequencies, and their log-domain weights are learned by the exact Kronecker marginal
    likelihood of that solution (:func:`fit_log_weights`, which prunes the spurious ones). The
    source ``f`` is a poor guide on its own: ``f = u''`` weights frequency ``mu`` by
    ``(2 pi mu)^4``, so the low-frequency part of ``sin(2 pi x) + 0.1 sin(50 pi x)`` carries 3e-4
    of the power of ``f`` and is pruned."""
    u0 = finite_difference_poisson(f, g, grid)
    cands = spectral_candidates(u0, grid, max_per_axis=max_per_axis, rel_power=rel_power)
    return fit_log_weights(grid, u0, cands, ell, steps=steps, prune=prune)
