"""Measurement operators on factored matrices ``X = U V^T``, and the sub-gradient solver.

Two operators share one interface, so the same solvers run on observed entries (matrix
completion, robust recovery of a matrix) and on general linear measurements (matrix sensing):

* :class:`EntryOperator`: ``A(X) = (X[rows[e], cols[e]])_e``; applying it to ``U V^T`` and its
  adjoint to a residual cost ``O(|Omega| k)``;
* :class:`DenseOperator`: ``A(X) = (<A_i, X>)_i`` for measurement matrices ``A_i`` stacked as
  an ``N x (m n)`` matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lowrank.utils.progress import progress


class EntryOperator:
    """Sampling of the entries ``(rows[e], cols[e])`` of an ``m x n`` matrix.

    When at least ``dense_fraction`` of the entries are observed, products go through dense
    ``m x n`` matrices (``O(m n k)``, faster than scattered updates at that density); otherwise
    they touch only the observed entries (``O(|Omega| k)``).
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int],
                 dense_fraction: float = 0.2):
        self.rows, self.cols, self.shape = rows, cols, shape
        self.dense = rows.numel() >= dense_fraction * shape[0] * shape[1]
        self.flat = rows * shape[1] + cols

    def forward(self, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return (U @ V.T).reshape(-1)[self.flat]
        return (U[self.rows] * V[self.cols]).sum(1)

    def adjoint_times(self, w: torch.Tensor, U: torch.Tensor, V: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S V, S^T U)`` for ``S = A^*(w)`` (the sparse matrix with ``w`` at the entries)."""
        if self.dense:
            S = self.adjoint_dense(w)
            return S @ V, S.T @ U
        SV = torch.zeros_like(U).index_add_(0, self.rows, w[:, None] * V[self.cols])
        StU = torch.zeros_like(V).index_add_(0, self.cols, w[:, None] * U[self.rows])
        return SV, StU

    def adjoint_norm(self, w: torch.Tensor) -> float:
        return float(w.norm())

    def adjoint_dense(self, w: torch.Tensor) -> torch.Tensor:
        S = torch.zeros(self.shape[0] * self.shape[1], dtype=w.dtype, device=w.device)
        return S.index_put_((self.flat,), w, accumulate=True).reshape(self.shape)


class DenseOperator:
    """General measurements ``y_i = <A_i, X>``; ``A`` is ``N x m x n`` (stored ``N x mn``)."""

    def __init__(self, A: torch.Tensor):
        self.shape = (int(A.shape[1]), int(A.shape[2]))
        self.A = A.reshape(A.shape[0], -1)

    def forward(self, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        return self.A @ (U @ V.T).reshape(-1)

    def adjoint_dense(self, w: torch.Tensor) -> torch.Tensor:
        return (w @ self.A).reshape(self.shape)

    def adjoint_times(self, w: torch.Tensor, U: torch.Tensor, V: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        S = self.adjoint_dense(w)
        return S @ V, S.T @ U

    def adjoint_norm(self, w: torch.Tensor) -> float:
        return float(self.adjoint_dense(w).norm())


Operator = EntryOperator | DenseOperator


def random_factors(shape: tuple[int, int], rank: int, init_scale: float, scale: float,
                   symmetric: bool, gen: torch.Generator, like: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Small random start ``U`` (m x rank), ``V`` (n x rank; ``V is U`` when symmetric): entries
    ``N(0, 1/m)`` / ``N(0, 1/n)`` times ``init_scale * sqrt(scale)``, in ``like``'s dtype and
    device."""
    m, n = shape
    U = torch.randn(m, rank, generator=gen, dtype=like.dtype, device=like.device) / math.sqrt(m)
    U = U * init_scale * math.sqrt(scale)
    if symmetric:
        return U, U
    V = torch.randn(n, rank, generator=gen, dtype=like.dtype, device=like.device) / math.sqrt(n)
    return U, V * init_scale * math.sqrt(scale)


def subgradient_l1(op: Operator, y: torch.Tensor, rank: int, *, symmetric: bool,
                   init_scale: float, step: float, decay: float, max_iter: int,
                   scale: float, gen: torch.Generator, verbose: bool | None = None,
                   callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Sub-gradient method on ``(1/N) sum_i |<A_i, U V^T> - y_i|`` (Ma & Fattahi 2022).

    Small random initialisation ``U_0 = init_scale * sqrt(scale) * B`` (``B`` Gaussian with
    unit-norm columns on average), step ``eta_t = step * decay^t`` on the sub-gradient
    direction normalised to unit Frobenius norm (``A^*(sign r) / ||A^*(sign r)||_F``), so that
    ``step`` is a relative size and the method is invariant to the scale of the data.
    ``symmetric=True`` fits ``X = U U^T`` (``V`` is ``U``). Returns ``U, V, history`` where
    ``history`` is the l1 loss relative to ``mean |y|``.
    """
    U, V = random_factors(op.shape, rank, init_scale, scale, symmetric, gen, y)
    y_l1 = float(y.abs().mean()) or 1.0
    history: list[float] = []
    quiet = (y.numel() * rank * max_iter < 5e9) if verbose is None else not verbose
    eta = step
    dense_entries = isinstance(op, EntryOperator) and op.dense
    if dense_entries:  # dense residuals: sign((U V^T - Y) * W) is 0 off the observed set
        Y = op.adjoint_dense(y)
        W = op.adjoint_dense(torch.ones_like(y))
    for it in progress(range(max_iter), "robust recovery (l1 sub-gradient)", quiet=quiet):
        if dense_entries:
            R = (U @ V.T - Y) * W
            history.append(float(R.abs().sum()) / y.numel() / y_l1)
            S = torch.sign(R)
            norm = float(S.norm())
            if norm == 0:
                break
            S = S / norm
            SV, StU = S @ V, S.T @ U
        else:
            r = op.forward(U, V) - y
            history.append(float(r.abs().mean()) / y_l1)
            s = torch.sign(r)
            norm = op.adjoint_norm(s)
            if norm == 0:
                break
            SV, StU = op.adjoint_times(s / norm, U, V)
        if symmetric:
            U = U - eta * (SV + StU)
            V = U
        else:
            U, V = U - eta * SV, V - eta * StU
        eta *= decay
        if callback is not None:
            callback(it, U, V)
    return U, V, history
