"""C-HiDeNN tensor-decomposition (TD) reduced-order model of transient heat conduction.

Paper: Park, Lu, Lu, Xie, Yang, Li, Liu, Kafka, Liu, Wagner, Liu et al., "MultiLevel Variational
MultiScale (ML-VMS) framework for large-scale simulation" (C-HiDeNN-TD as the space-time ROM).
This module implements the ROM in its simplest faithful single-level form:

* **C-HiDeNN basis** (:class:`CHiDeNNBasis1D`): the convolution-patch interpolation
  ``u(x) = sum_{i in element} N_i(x) sum_{j in patch(i)} W^i_j(x) u_j``, where ``N_i`` are the
  linear finite-element shape functions and ``W^i`` the radial-basis interpolation (Gaussian
  kernel with dilation ``a``, augmented by monomials up to order ``p``) over the ``2s+1`` patch
  nodes of node ``i``. It keeps the Kronecker-delta property, reproduces polynomials of degree
  ``p`` exactly on a linear mesh and has support ``s`` elements wider than a hat function.
  ``s = 0`` gives the linear finite-element basis.
* **space-time separated solution** (:func:`separated_solve`): the all-at-once Galerkin system
  of ``u_t = kappa Laplace(u) + f`` on a rectangle (Crank-Nicolson or backward Euler in time) is
  the Kronecker sum ``(M_x (x) M_y (x) B_t + kappa K_x (x) M_y (x) C_t + kappa M_x (x) K_y (x)
  C_t) u = F``.
  The solution is sought as ``u(x, y, t) = sum_m X_m(x) Y_m(y) T_m(t)`` by greedy rank-one
  enrichment, each mode by alternating (ALS) Galerkin solves in one dimension at a time, followed
  by a Galerkin update of all mode amplitudes (proper generalised decomposition, PGD).

:class:`TransientHeat2D` builds the 1-D matrices, separated loads (including a moving Gaussian
"laser" source) and a full-grid reference (sparse LU time marching of the same discretisation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

# --------------------------------------------------------------------------------------------
# 1-D bases
# --------------------------------------------------------------------------------------------


class CHiDeNNBasis1D:
    """C-HiDeNN convolution-patch basis on a uniform 1-D mesh of ``n_elements`` elements.

    ``p``: polynomial reproduction order; ``s``: patch size (layers of elements, ``p <= 2s``);
    ``dilation``: Gaussian kernel width in element lengths. ``s = 0`` is the linear FE basis.
    """

    def __init__(self, n_elements: int, *, p: int = 2, s: int = 2, dilation: float = 2.0,
                 lo: float = 0.0, hi: float = 1.0) -> None:
        if n_elements < 1 or hi <= lo:
            raise ConfigError(f"CHiDeNNBasis1D needs n_elements >= 1 and hi > lo, got "
                              f"n_elements={n_elements}, lo={lo}, hi={hi}")
        if s < 0 or (s > 0 and not 1 <= p <= 2 * s) or dilation <= 0:
            raise ConfigError(f"C-HiDeNN needs s >= 0, 1 <= p <= 2 s (patch of 2s+1 nodes) and "
                              f"dilation > 0, got p={p}, s={s}, dilation={dilation}")
        if 2 * s + 1 > n_elements + 1:
            raise ConfigError(f"patch size s={s} needs at least {2 * s} elements, "
                              f"got {n_elements}")
        self.n_elements, self.p, self.s, self.dilation = n_elements, p, s, dilation
        self.nodes = np.linspace(lo, hi, n_elements + 1)
        self.h = (hi - lo) / n_elements
        self.patches: list[np.ndarray] = []
        self.inverses: list[np.ndarray] = []
        n = len(self.nodes)
        for i in range(n):
            start = min(max(i - s, 0), n - (2 * s + 1))
            patch = np.arange(start, start + 2 * s + 1)
            self.patches.append(patch)
            if s > 0:
                z = (self.nodes[patch] - self.nodes[i]) / self.h
                r0 = self._rbf(z[:, None] - z[None, :])
                p0 = z[:, None] ** np.arange(p + 1)[None, :]
                g = np.block([[r0, p0], [p0.T, np.zeros((p + 1, p + 1))]])
                self.inverses.append(np.linalg.inv(g)[:, : len(patch)])

    @property
    def size(self) -> int:
        return len(self.nodes)

    def _rbf(self, z: np.ndarray) -> np.ndarray:
        return np.exp(-(z / self.dilation) ** 2)

    def _patch_weights(self, i: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``W^i(x)`` and ``dW^i/dx`` over the patch of node ``i``, each (len(x), 2s+1)."""
        patch = self.patches[i]
        z = (self.nodes[patch] - self.nodes[i]) / self.h
        xi = (x - self.nodes[i]) / self.h
        diff = xi[:, None] - z[None, :]
        r = self._rbf(diff)
        dr = -2 * diff / self.dilation ** 2 * r / self.h
        k = np.arange(self.p + 1)
        poly = xi[:, None] ** k[None, :]
        dpoly = np.where(k > 0, k * xi[:, None] ** np.maximum(k - 1, 0), 0.0) / self.h
        inv = self.inverses[i]
        return np.hstack([r, poly]) @ inv, np.hstack([dr, dpoly]) @ inv

    def evaluate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shape functions and their derivatives at ``x``: two (len(x), n_nodes) arrays."""
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        lo, hi = self.nodes[0], self.nodes[-1]
        if np.any(x < lo - 1e-12) or np.any(x > hi + 1e-12):
            raise ConfigError(f"evaluation points must lie in [{lo}, {hi}]")
        e = np.clip(((x - lo) // self.h).astype(int), 0, self.n_elements - 1)
        phi = np.zeros((len(x), self.size))
        dphi = np.zeros((len(x), self.size))
        for el in np.unique(e):
            sel = np.nonzero(e == el)[0]
            xs = x[sel]
            xa, xb = self.nodes[el], self.nodes[el + 1]
            hat = {el: ((xb - xs) / self.h, -1 / self.h), el + 1: ((xs - xa) / self.h, 1 / self.h)}
            for i, (n_i, dn_i) in hat.items():
                if self.s == 0:
                    phi[sel, i] += n_i
                    dphi[sel, i] += dn_i
                    continue
                w, dw = self._patch_weights(i, xs)
                cols = self.patches[i]
                phi[np.ix_(sel, cols)] += n_i[:, None] * w
                dphi[np.ix_(sel, cols)] += dn_i * w + n_i[:, None] * dw
        return phi, dphi

    def quadrature(self, order: int = 6) -> tuple[np.ndarray, np.ndarray]:
        """Gauss-Legendre points and weights, ``order`` per element."""
        g, w = np.polynomial.legendre.leggauss(order)
        xa = self.nodes[:-1, None]
        pts = xa + (g[None, :] + 1) * self.h / 2
        return pts.ravel(), np.tile(w * self.h / 2, self.n_elements)

    def matrices(self, order: int = 6) -> tuple[np.ndarray, np.ndarray]:
        """Consistent mass ``M_ij = int phi_i phi_j`` and stiffness ``K_ij = int phi_i' phi_j'``."""
        xq, wq = self.quadrature(order)
        phi, dphi = self.evaluate(xq)
        return phi.T @ (wq[:, None] * phi), dphi.T @ (wq[:, None] * dphi)

    def project(self, g: Callable[[np.ndarray], np.ndarray], order: int = 6) -> np.ndarray:
        """Load vector ``int g phi_i`` for every node."""
        xq, wq = self.quadrature(order)
        phi, _ = self.evaluate(xq)
        return phi.T @ (wq * g(xq))


# --------------------------------------------------------------------------------------------
# Separated (CP) Galerkin solver: greedy rank-one enrichment + ALS (PGD)
# --------------------------------------------------------------------------------------------


@dataclass
class SeparatedSolution:
    """``u = sum_m weights[m] prod_d factors[d][:, m]`` and the solver's history."""

    factors: list[np.ndarray]
    weights: np.ndarray
    residuals: list[float]
    seconds: float

    @property
    def rank(self) -> int:
        return len(self.weights)

    def full(self) -> np.ndarray:
        """The full tensor (only for checks on small problems)."""
        letters = "abcdefgh"[: len(self.factors)]
        spec = ",".join(f"{c}z" for c in letters) + ",z->" + letters
        return np.einsum(spec, *self.factors, self.weights)


def _cp_norm(cols: Sequence[np.ndarray], w: np.ndarray) -> float:
    gram = np.ones((len(w), len(w)))
    for c in cols:
        gram *= c.T @ c
    return float(np.sqrt(max(w @ gram @ w, 0.0)))


def separated_solve(terms: Sequence[Sequence[np.ndarray]], rhs: Sequence[np.ndarray], *,
                    max_rank: int = 30, tol: float = 1e-6, als_iters: int = 30,
                    als_tol: float = 1e-9, seed: int = 0) -> SeparatedSolution:
    """Solve ``(sum_r A_r^1 (x) ... (x) A_r^D) u = sum_s f_s^1 (x) ... (x) f_s^D`` in CP form.

    ``terms[r][d]`` is the (n_d, n_d) factor of operator term r in dimension d; ``rhs[d]`` is the
    (n_d, S) matrix of right-hand-side factors. Greedy rank-one enrichment, each new mode by ALS
    Galerkin sweeps over the dimensions, then a Galerkin update of all amplitudes; stops when the
    relative residual ``||F - A u|| / ||F||`` (computed in CP form) is below ``tol``.
    """
    t0 = time.time()
    dims = len(rhs)
    if not terms or any(len(t) != dims for t in terms):
        raise ConfigError(f"every operator term needs one factor per dimension ({dims})")
    sizes = [f.shape[0] for f in rhs]
    for t in terms:
        for d, a in enumerate(t):
            if a.shape != (sizes[d], sizes[d]):
                raise ConfigError(f"operator factor of dimension {d} has shape {a.shape}, "
                                  f"expected {(sizes[d], sizes[d])}")
    rng = np.random.default_rng(seed)
    modes: list[np.ndarray] = [np.zeros((n, 0)) for n in sizes]
    amp = np.zeros(0)
    f_norm = _cp_norm(rhs, np.ones(rhs[0].shape[1]))
    if f_norm == 0:
        return SeparatedSolution(modes, amp, [0.0], time.time() - t0)
    residuals = [1.0]
    for _ in range(max_rank):
        w = [v / np.linalg.norm(v) for v in (rng.standard_normal(n) for n in sizes)]
        for _ in range(als_iters):
            change = 0.0
            for d in range(dims):
                lhs = np.zeros((sizes[d], sizes[d]))
                vec = np.zeros(sizes[d])
                coef_f = np.ones(rhs[0].shape[1])
                for e in range(dims):
                    if e != d:
                        coef_f = coef_f * (w[e] @ rhs[e])
                vec += rhs[d] @ coef_f
                for t in terms:
                    c_new, c_old = 1.0, amp.copy()
                    for e in range(dims):
                        if e != d:
                            c_new *= w[e] @ t[e] @ w[e]
                            c_old = c_old * (w[e] @ t[e] @ modes[e])
                    lhs += c_new * t[d]
                    vec -= t[d] @ (modes[d] @ c_old)
                new = np.linalg.solve(lhs, vec)
                nrm = np.linalg.norm(new)
                if nrm == 0:
                    break
                new_unit = new / nrm
                change = max(change, min(np.linalg.norm(new_unit - w[d]),
                                         np.linalg.norm(new_unit + w[d])))
                w[d] = new_unit
            if change < als_tol:
                break
        modes = [np.hstack([m, v[:, None]]) for m, v in zip(modes, w, strict=True)]
        # Galerkin update of the amplitudes of all modes
        r = modes[0].shape[1]
        gal = np.zeros((r, r))
        for t in terms:
            g = np.ones((r, r))
            for d in range(dims):
                g *= modes[d].T @ t[d] @ modes[d]
            gal += g
        b = np.ones((r, rhs[0].shape[1]))
        for d in range(dims):
            b *= modes[d].T @ rhs[d]
        amp = np.linalg.solve(gal, b.sum(1))
        # residual F - A u in CP form
        cols = [np.hstack([rhs[d]] + [t[d] @ modes[d] for t in terms]) for d in range(dims)]
        weights = np.concatenate([np.ones(rhs[0].shape[1])] + [-amp for _ in terms])
        residuals.append(_cp_norm(cols, weights) / f_norm)
        if residuals[-1] < tol:
            break
    return SeparatedSolution(modes, amp, residuals, time.time() - t0)


# --------------------------------------------------------------------------------------------
# Transient heat problem
# --------------------------------------------------------------------------------------------


@dataclass
class FullSolution:
    """Full-grid solution (nt, nx, ny) on the interior nodes and its wall time."""

    u: np.ndarray
    seconds: float


class TransientHeat2D:
    """``u_t = kappa (u_xx + u_yy) + f`` on ``[0, lx] x [0, ly] x (0, t_end]``, ``u = 0`` on the
    boundary and at ``t = 0``; C-HiDeNN (or linear FE, ``s=0``) in space, Crank-Nicolson
    (``scheme='cn'``) or backward Euler (``'be'``) in time.

    Loads are separated: :meth:`load_separable` for ``g(x) h(y) q(t)`` and
    :meth:`load_moving_source` for a Gaussian spot moving along x (made separated by a truncated
    SVD of its x-t factor). :meth:`solve_td` is the space-time separated ROM;
    :meth:`solve_full` marches the same discrete system on the full grid (sparse LU).
    """

    def __init__(self, nx: int, ny: int, nt: int, *, kappa: float = 1.0, t_end: float = 1.0,
                 lx: float = 1.0, ly: float = 1.0, p: int = 2, s: int = 2,
                 dilation: float = 2.0, quad_order: int = 6, scheme: str = "cn") -> None:
        if scheme not in ("cn", "be"):
            raise ConfigError(f"scheme must be 'cn' (Crank-Nicolson) or 'be' (backward Euler), "
                              f"got {scheme!r}")
        if nt < 1 or kappa <= 0 or t_end <= 0:
            raise ConfigError(f"TransientHeat2D needs nt >= 1, kappa > 0, t_end > 0; got "
                              f"nt={nt}, kappa={kappa}, t_end={t_end}")
        self.bx = CHiDeNNBasis1D(nx, p=p, s=s, dilation=dilation, hi=lx)
        self.by = CHiDeNNBasis1D(ny, p=p, s=s, dilation=dilation, hi=ly)
        self.nt, self.kappa, self.t_end, self.q = nt, kappa, t_end, quad_order
        self.dt = t_end / nt
        self.times = self.dt * np.arange(1, nt + 1)
        mx, kx = self.bx.matrices(quad_order)
        my, ky = self.by.matrices(quad_order)
        self.mx, self.kx = mx[1:-1, 1:-1], kx[1:-1, 1:-1]            # u = 0 on the boundary
        self.my, self.ky = my[1:-1, 1:-1], ky[1:-1, 1:-1]
        self.scheme = scheme
        self.bt = (np.eye(nt) - np.eye(nt, k=-1)) / self.dt
        # time factor of the stiffness and load terms: identity (BE) or the average (CN)
        self.it = np.eye(nt) if scheme == "be" else (np.eye(nt) + np.eye(nt, k=-1)) / 2

    def _time_average(self, q: np.ndarray) -> np.ndarray:
        """Load values at t_1..t_nt (BE) or averages of t_{n-1}, t_n (CN); ``q`` has nt+1 rows
        (t_0..t_nt)."""
        return q[1:] if self.scheme == "be" else (q[1:] + q[:-1]) / 2

    def operator_terms(self) -> list[list[np.ndarray]]:
        """The all-at-once space-time operator as three Kronecker terms over (x, y, t):
        ``M (x) B_t + kappa K (x) C_t`` with ``B_t`` the backward difference and ``C_t`` the
        identity (BE) or the two-point average (CN), both lower bidiagonal."""
        k = self.kappa
        return [[self.mx, self.my, self.bt], [k * self.kx, self.my, self.it],
                [self.mx, k * self.ky, self.it]]

    def load_separable(self, gx: Callable, gy: Callable, gt: Callable) -> list[np.ndarray]:
        """Separated load of ``f = gx(x) gy(y) gt(t)``: a list of (n_d, 1) factors."""
        return [self.bx.project(gx, self.q)[1:-1, None], self.by.project(gy, self.q)[1:-1, None],
                self._time_average(np.asarray(gt(np.r_[0.0, self.times]),
                                              dtype=np.float64))[:, None]]

    def load_moving_source(self, power: float = 1.0, radius: float = 0.05, x0: float = 0.2,
                           speed: float = 0.6, y0: float = 0.5, tol: float = 1e-10
                           ) -> list[np.ndarray]:
        """``f = power exp(-((x - x0 - speed t)^2 + (y - y0)^2) / radius^2)``, separated by a
        truncated SVD (relative tolerance ``tol``) of its projected x-t factor."""
        xq, wq = self.bx.quadrature(self.q)
        phi, _ = self.bx.evaluate(xq)
        times = np.r_[0.0, self.times]
        gxt = np.exp(-((xq[:, None] - x0 - speed * times[None, :]) / radius) ** 2)
        fxt = self._time_average((phi.T @ (wq[:, None] * gxt))[1:-1].T).T
        u, sv, vt = np.linalg.svd(fxt, full_matrices=False)
        r = int(np.sum(sv > tol * sv[0]))
        fy = self.by.project(lambda y: power * np.exp(-((y - y0) / radius) ** 2), self.q)[1:-1]
        return [u[:, :r] * sv[:r], np.repeat(fy[:, None], r, axis=1), vt[:r].T]

    def solve_td(self, load: Sequence[np.ndarray], **kwargs) -> SeparatedSolution:
        """The C-HiDeNN-TD space-time ROM (kwargs go to :func:`separated_solve`)."""
        return separated_solve(self.operator_terms(), load, **kwargs)

    def solve_full(self, load: Sequence[np.ndarray]) -> FullSolution:
        """Full-grid reference: the same time stepping (CN or BE) marched on the full grid with
        one sparse LU factorisation."""
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        t0 = time.time()
        mx, my = sp.csr_matrix(self.mx), sp.csr_matrix(self.my)
        m2 = sp.kron(mx, my, format="csc")
        k2 = self.kappa * (sp.kron(sp.csr_matrix(self.kx), my) + sp.kron(mx, sp.csr_matrix(
            self.ky)))
        theta = 1.0 if self.scheme == "be" else 0.5
        lu = splu((m2 / self.dt + theta * k2).tocsc())
        explicit = (m2 / self.dt - (1 - theta) * k2).tocsr()
        fx, fy, ft = load
        u = np.zeros((self.nt, fx.shape[0], fy.shape[0]))
        prev = np.zeros(fx.shape[0] * fy.shape[0])
        for n in range(self.nt):
            f_n = ((fx * ft[n]) @ fy.T).ravel()
            prev = lu.solve(explicit @ prev + f_n)
            u[n] = prev.reshape(fx.shape[0], fy.shape[0])
        return FullSolution(u, time.time() - t0)

    def td_to_grid(self, sol: SeparatedSolution) -> np.ndarray:
        """Nodal values (nt, nx-1, ny-1) of a separated solution (interior nodes)."""
        x, y, t = sol.factors
        return np.einsum("az,bz,cz,z->cab", x, y, t, sol.weights)

    def interior_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.bx.nodes[1:-1], self.by.nodes[1:-1]
