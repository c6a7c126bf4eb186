"""Chebyshev-Tucker: product Chebyshev interpolation, then Tucker of the coefficient tensor.

Benner, Khoromskij, Khoromskaia & Sun, "Mesh-free hybrid Chebyshev-Tucker tensor format"
(arXiv 2503.01696). ``f`` is sampled once on the tensor grid of ``p`` Chebyshev points per
dimension; the coefficient tensor ``C = V ×_n T^{-1}`` (``T[j, k] = T_k(x_j)``) is compressed by
HOOI, ``C ~= G ×_n U_n``; the function is then ``f(x) ~= sum G[a..] prod_n phi^n_a(x_n)`` with
``phi^n = T(x_n) U_n``, evaluable anywhere, and on any grid the factors ``T(grid) U_n`` give an
algebraic Tucker tensor with the same core. Evaluations: ``p^d`` instead of the grid's size.

The paper truncates ``C`` in the Euclidean norm of the coefficients. That norm is not the
norm of the function (the Chebyshev polynomials are not orthonormal in L2), so at equal rank
the result is ~10% worse than the best Tucker approximation of the sampled function. With
``metric='l2'`` (default) we truncate in the L2 norm on the box instead: with ``M = R^T R``
the Gram matrix of ``T_0..T_{p-1}`` (Gauss-Legendre quadrature, exact), HOOI runs on
``C ×_n R_n`` and the factors are mapped back by ``R_n^{-1}``; ``metric`` may also be one
1-D grid per dimension (the discrete norm on that grid), or ``'coefficients'`` (the paper's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, LowRankError
from ..linalg.arrays import einsum, mode_dot
from ..utils.checks import check_finite, check_finite_values, check_int, check_real
from .decomp import TuckerTensor, mode_ranks, tucker

__all__ = ["ChebyshevTucker", "chebyshev_nodes"]


def chebyshev_nodes(p: int) -> np.ndarray:
    """The ``p`` Chebyshev points of the first kind on [-1, 1], ``cos(pi (j + 1/2) / p)``."""
    return np.cos(np.pi * (np.arange(p) + 0.5) / p)


def _vander(t: np.ndarray, p: int) -> np.ndarray:
    return np.polynomial.chebyshev.chebvander(np.asarray(t, dtype=np.float64), p - 1)


class ChebyshevTucker:
    """Chebyshev interpolation of ``f`` on a box, compressed to Tucker rank ``rank``.

    ``order``: Chebyshev points per dimension (int or one per dimension). ``rank``: Tucker
    ranks of the coefficient tensor (int, clipped to the orders, or one per dimension, each at
    most its order); ``tol`` instead picks the smallest ranks whose HOSVD tail is below
    ``tol`` relative to ``||C||`` (in ``metric``);
    with neither the coefficients are kept whole (exact interpolation). ``domain``:
    ``(low, high)`` per dimension (default [-1, 1]). ``metric``: norm of the Tucker
    truncation, ``'l2'`` (L2 on the box), ``'coefficients'`` (Euclidean on ``C``, as in the
    paper) or a list of 1-D grids.

    Learned: ``coefficients_``, ``core_``, ``factors_`` (p x r), ``rank_``,
    ``n_evaluations_``, ``coef_rel_error_`` (relative Tucker truncation error in ``metric``),
    ``fit_seconds_``.
    """

    def __init__(self, order: int | Sequence[int] = 32, rank: int | Sequence[int] | None = None,
                 *, tol: float | None = None, domain: Sequence[tuple[float, float]] | None = None,
                 n_iter_max: int = 100, metric: str | Sequence[Any] = "l2") -> None:
        self.order, self.rank, self.tol, self.domain = order, rank, tol, domain
        self.n_iter_max, self.metric = n_iter_max, metric

    def _metric_factors(self, orders: list[int]) -> list[np.ndarray] | None:
        """Upper-triangular ``R_k`` with ``R_k^T R_k`` the Gram matrix of the Chebyshev basis
        in the chosen norm (``None``: Euclidean on the coefficients)."""
        m = self.metric
        if isinstance(m, str):
            if m == "coefficients":
                return None
            if m != "l2":
                raise ConfigError(f"metric must be 'l2', 'coefficients' or one 1-D grid per "
                                  f"dimension, got {m!r}")
            out = []
            for p in orders:  # p + 1 Gauss-Legendre nodes integrate degree 2p + 1 exactly
                t, w = np.polynomial.legendre.leggauss(p + 1)
                out.append(np.linalg.qr(np.sqrt(w)[:, None] * _vander(t, p))[1])
            return out
        if len(m) != len(orders):
            raise ConfigError(f"metric needs one grid per dimension ({len(orders)}), got "
                              f"{len(m)}")
        out = []
        for k, (grid, p) in enumerate(zip(m, orders, strict=True)):
            t = self._to_reference(np.asarray(grid, float).reshape(-1), k)
            if t.size < p:
                raise ConfigError(f"metric grid {k} has {t.size} points, fewer than the order "
                                  f"{p}: the discrete norm would not be a norm")
            out.append(np.linalg.qr(_vander(t, p))[1])
        return out

    def _orders(self, ndim: int) -> list[int]:
        return mode_ranks(self.order, [None] * ndim, "order")

    def _box(self, ndim: int) -> np.ndarray:
        box = np.array([(-1.0, 1.0)] * ndim if self.domain is None else self.domain, float)
        if box.shape != (ndim, 2) or not (box[:, 1] > box[:, 0]).all() or \
                not np.isfinite(box).all():
            raise ConfigError(f"domain must be {ndim} finite (low, high) pairs with low < high, "
                              f"got {self.domain!r}")
        return box

    def fit(self, f: Callable[[np.ndarray], Any], ndim: int) -> ChebyshevTucker:
        """Sample ``f`` (points ``(n, ndim)`` -> values ``(n,)``) on the Chebyshev grid."""
        import time

        t0 = time.perf_counter()
        check_int("ndim", ndim)
        check_int("n_iter_max", self.n_iter_max)
        orders, box = self._orders(ndim), self._box(ndim)
        self.box_ = box
        nodes = [chebyshev_nodes(p) for p in orders]
        phys = [self._to_physical(t, k) for k, t in enumerate(nodes)]
        mesh = np.stack(np.meshgrid(*phys, indexing="ij"), -1).reshape(-1, ndim)
        values = np.asarray(f(mesh))
        if values.shape != (mesh.shape[0],):
            raise LowRankError(f"f must map points of shape (n, {ndim}) to values of shape "
                               f"(n,), got {values.shape} for n={mesh.shape[0]}")
        check_real("f's values", values)
        check_finite_values("f's values", values, what="values on the Chebyshev grid")
        values = values.astype(np.float64)
        coef = values.reshape(orders)
        for k, t in enumerate(nodes):
            coef = mode_dot(coef, np.linalg.inv(_vander(t, orders[k])), k)
        self.coefficients_ = coef
        self.n_evaluations_ = int(math.prod(orders))
        rs = self._metric_factors(orders)
        weighted = coef
        for k, r in enumerate(rs or []):
            weighted = mode_dot(weighted, r, k)
        ranks = self._ranks(weighted)
        if ranks == list(coef.shape):
            self.core_, self.factors_ = coef, [np.eye(p) for p in orders]
            self.coef_rel_error_ = 0.0
        else:
            dec = tucker(weighted, ranks, n_iter_max=self.n_iter_max, svd="truncated_svd")
            self.core_ = dec.core
            self.factors_ = dec.factors if rs is None else \
                [np.linalg.solve(r, u) for r, u in zip(rs, dec.factors, strict=True)]
            self.coef_rel_error_ = float(dec.rel_error)
        self.rank_ = tuple(int(u.shape[1]) for u in self.factors_)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _ranks(self, coef: np.ndarray) -> list[int]:
        shape = list(coef.shape)
        if self.rank is not None:
            return mode_ranks(self.rank, shape, "rank")  # at most the order per dimension
        if self.tol is None:
            return shape
        check_finite("tol", self.tol, 0, low_open=True)
        total = float((coef ** 2).sum()) or 1.0
        budget = self.tol ** 2 * total / len(shape)
        ranks = []
        for k in range(len(shape)):
            s = np.linalg.svd(np.moveaxis(coef, k, 0).reshape(shape[k], -1), compute_uv=False)
            tail = np.concatenate([np.cumsum((s ** 2)[::-1])[::-1], [0.0]])
            ranks.append(int(np.argmax(tail <= budget)) or 1)
        return ranks

    def _to_physical(self, t: np.ndarray, k: int) -> np.ndarray:
        lo, hi = self.box_[k]
        return 0.5 * (hi - lo) * t + 0.5 * (hi + lo)

    def _to_reference(self, x: np.ndarray, k: int) -> np.ndarray:
        lo, hi = self.box_[k]
        return (2 * np.asarray(x, float) - lo - hi) / (hi - lo)

    def _check(self) -> None:
        if not hasattr(self, "core_"):
            raise LowRankError("ChebyshevTucker is not fitted: call fit(f, ndim) first")

    def basis(self, x: np.ndarray, k: int) -> np.ndarray:
        """Factor functions of dimension ``k`` at points ``x``: ``T(x) U_k`` (n x r_k)."""
        self._check()
        return _vander(self._to_reference(x, k), self.factors_[k].shape[0]) @ self.factors_[k]

    def evaluate(self, points: Any) -> np.ndarray:
        """``f`` at arbitrary points ``(n, ndim)`` from the compressed representation."""
        self._check()
        pts = np.asarray(points, dtype=np.float64)
        d = self.core_.ndim
        if pts.ndim != 2 or pts.shape[1] != d:
            raise LowRankError(f"points must have shape (n, {d}), got {pts.shape}")
        letters = "abcdefghijklmnop"[:d]
        eq = letters + "," + ",".join(f"Z{c}" for c in letters) + "->Z"
        return einsum(eq, self.core_, *[self.basis(pts[:, k], k) for k in range(d)])

    __call__ = evaluate

    def to_tucker(self, grids: Sequence[np.ndarray]) -> TuckerTensor:
        """Algebraic Tucker tensor of ``f`` on the tensor grid ``grids`` (one 1-D array per
        dimension): factors ``T(grid_k) U_k``, the same core."""
        self._check()
        if len(grids) != self.core_.ndim:
            raise LowRankError(f"need {self.core_.ndim} grids, got {len(grids)}")
        return TuckerTensor(self.core_, [self.basis(g, k) for k, g in enumerate(grids)])

    def num_parameters(self) -> int:
        self._check()
        return int(self.core_.size) + sum(int(u.size) for u in self.factors_)
