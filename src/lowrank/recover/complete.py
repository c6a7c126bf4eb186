"""Matrix completion by robust alternating minimisation in nearly linear time.

Gu, Song, Yin, Zhang, "Low Rank Matrix Completion via Robust Alternating Minimization in
Nearly Linear Time" (ICLR 2024, arXiv 2302.11068), on top of Jain-Netrapalli-Sanghavi
alternating minimisation:

1. spectral initialisation: the top-``k`` singular subspace of ``P_Omega(M) / p``, with rows of
   large norm trimmed back (incoherence) and the basis re-orthonormalised;
2. alternate ``V <- argmin ||P_Omega(U V^T - M)||_F`` and the same for ``U``; each problem
   splits into one ``k x k`` normal equation per row,
   ``(sum_{j in Omega_i} v_j v_j^T) u_i = sum_j m_ij v_j``;
3. the contribution of the paper: each row solve only needs to be *approximate*. We run a few
   warm-started, Jacobi-preconditioned conjugate-gradient steps on all rows at once, applying the
   normal matrix through the observed entries (``u -> sum_j v_j <v_j, u>``), so one step costs
   ``O(|Omega| k)`` and no ``k x k`` matrix is ever formed. The errors of the inexact solves do
   not accumulate (the paper's perturbation argument), which the tests check against the exact
   solution.

Before each half-step the fixed factor is re-orthonormalised by QR (the product is unchanged),
which keeps the normal equations well conditioned, so three CG steps per half-step suffice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lowrank.errors import ConfigError
from lowrank.utils.progress import progress

from ._data import Observed, check_rank, default_device, generator, observe


@dataclass
class Recovery:
    """Factors ``left @ right.T`` of a recovered matrix, plus the solver's record.

    ``left`` and ``right`` are in the caller's array type. ``history`` holds the solver's
    convergence measure per iteration (see each solver), ``sparse`` the outlier part for robust
    PCA.
    """

    left: Any
    right: Any
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    sparse: Any = None

    def to_dense(self) -> Any:
        """The recovered matrix ``left @ right.T`` (same array type as the factors)."""
        return self.left @ self.right.T


def _spmm(obs_rows: torch.Tensor, obs_cols: torch.Tensor, vals: torch.Tensor,
          B: torch.Tensor, n_out: int) -> torch.Tensor:
    """``S @ B`` for the sparse ``S`` with entries ``vals`` at ``(obs_rows, obs_cols)``."""
    out = torch.zeros(n_out, B.shape[1], dtype=B.dtype, device=B.device)
    return out.index_add_(0, obs_rows, vals[:, None] * B[obs_cols])


def sparse_range_finder(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                        shape: tuple[int, int], k: int, gen: torch.Generator,
                        n_iter: int = 4, oversample: int = 10
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` SVD of a sparse matrix by randomized subspace iteration (Halko et al.).

    Touches only the stored entries: each pass costs ``O(nnz * (k + oversample))``.
    Returns ``U (m x k)``, ``s (k)``, ``V (n x k)``.
    """
    m, n = shape
    ell = min(k + oversample, m, n)
    omega = torch.randn(n, ell, generator=gen, dtype=vals.dtype, device=vals.device)
    Q = torch.linalg.qr(_spmm(rows, cols, vals, omega, m))[0]
    for _ in range(n_iter):
        Z = torch.linalg.qr(_spmm(cols, rows, vals, Q, n))[0]
        Q = torch.linalg.qr(_spmm(rows, cols, vals, Z, m))[0]
    Bt = _spmm(cols, rows, vals, Q, n)  # (S^T Q) = B^T, n x ell
    W, s, Zt = torch.linalg.svd(Bt.T, full_matrices=False)
    return Q @ W[:, :k], s[:k], Zt[:k].T


def _batched_cg(target: torch.Tensor, other_g: torch.Tensor, vals: torch.Tensor,
                X: torch.Tensor, steps: int, ridge: torch.Tensor) -> torch.Tensor:
    """Approximately solve every row's normal equation, warm-started at ``X``.

    Row ``i`` solves ``(sum_e other_e other_e^T + ridge) x_i = sum_e vals_e other_e`` over the
    observed entries ``e`` with ``target[e] == i``; ``other_g`` is the fixed factor gathered at
    those entries (``|Omega| x k``). Jacobi-preconditioned CG, ``steps`` iterations, all rows in
    parallel; each iteration costs ``O(|Omega| k)``.
    """
    t, _ = X.shape

    def apply(Y: torch.Tensor) -> torch.Tensor:
        pe = torch.einsum("ij,ij->i", Y[target], other_g)[:, None]
        return torch.zeros_like(Y).index_add_(0, target, pe * other_g) + ridge * Y

    b = torch.zeros_like(X).index_add_(0, target, vals[:, None] * other_g)
    diag = torch.zeros_like(X).index_add_(0, target, other_g * other_g) + ridge
    r = b - apply(X)
    z = r / diag
    p = z
    rz = (r * z).sum(1, keepdim=True)
    tiny = torch.finfo(X.dtype).tiny
    for _ in range(steps):
        Ap = apply(p)
        pAp = (p * Ap).sum(1, keepdim=True)
        alpha = torch.where(pAp > tiny, rz / pAp.clamp_min(tiny), torch.zeros_like(pAp))
        X = X + alpha * p
        r = r - alpha * Ap
        z = r / diag
        rz_new = (r * z).sum(1, keepdim=True)
        beta = torch.where(rz > tiny, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return X


def _exact_rows(target: torch.Tensor, other_g: torch.Tensor, vals: torch.Tensor, t: int,
                ridge: torch.Tensor) -> torch.Tensor:
    """Exact row solves through batched ``k x k`` Gram matrices (reference for the CG path)."""
    k = other_g.shape[1]
    outer = (other_g[:, :, None] * other_g[:, None, :]).reshape(-1, k * k)
    gram = torch.zeros(t, k * k, dtype=vals.dtype, device=vals.device)
    gram = gram.index_add_(0, target, outer).reshape(t, k, k)
    gram = gram + torch.diag_embed(ridge.expand(t, k))
    b = torch.zeros(t, k, dtype=vals.dtype, device=vals.device)
    b = b.index_add_(0, target, vals[:, None] * other_g)
    return torch.linalg.solve(gram, b)


def _trim(U: torch.Tensor, factor: float) -> torch.Tensor:
    """Shrink rows whose norm exceeds ``factor`` times the incoherent size ``sqrt(k/m)``."""
    m, k = U.shape
    cap = factor * math.sqrt(k / m)
    norms = U.norm(dim=1, keepdim=True)
    return U * torch.clamp(cap / norms.clamp_min(1e-300), max=1.0)


def altmin(obs: Observed, rank: int, *, max_iter: int = 100, tol: float = 1e-10,
           cg_steps: int | None = 3, reg: float = 0.0, trim: float | None = 4.0,
           seed: int | None = 0, verbose: bool | None = None,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, list[float], bool]:
    """AltMin on observed entries; returns ``U, V, history, converged`` as tensors.

    ``history[t]`` is the relative observed residual ``||P_Omega(U V^T - M)|| / ||P_Omega M||``
    after iteration ``t``. ``cg_steps=None`` solves each row exactly (batched Cholesky-free
    ``solve`` on ``k x k`` Grams, memory ``|Omega| k^2``).
    """
    m, n = obs.shape
    k = rank
    rows, cols, vals = obs.rows, obs.cols, obs.vals
    gen = generator(seed, vals.device)
    vnorm = vals.norm()
    if vnorm == 0:
        zero = torch.zeros(m, k, dtype=vals.dtype, device=vals.device)
        return zero, torch.zeros(n, k, dtype=vals.dtype, device=vals.device), [0.0], True
    # entries sorted by row (for U solves) and by column (for V solves): better locality
    by_row = torch.argsort(rows * n + cols)
    by_col = torch.argsort(cols * m + rows)
    r_row, c_row, v_row = rows[by_row], cols[by_row], vals[by_row]
    r_col, c_col, v_col = rows[by_col], cols[by_col], vals[by_col]

    U0, s0, V0 = sparse_range_finder(rows, cols, vals / obs.fraction, (m, n), k, gen)
    if trim is not None:
        U0 = torch.linalg.qr(_trim(U0, trim))[0]
    U, V = U0, V0 * s0
    base_ridge = float(reg)

    def half(fixed: torch.Tensor, free: torch.Tensor, target: torch.Tensor,
             other: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        other_g = fixed[other]
        diag_mean = (other_g * other_g).sum() / max(free.shape[0], 1)
        ridge = torch.as_tensor((base_ridge + 1e-12) * float(diag_mean) / k + 1e-300,
                                dtype=v.dtype, device=v.device)
        if cg_steps is None:
            return _exact_rows(target, other_g, v, free.shape[0], ridge)
        return _batched_cg(target, other_g, v, free, cg_steps, ridge)

    history: list[float] = []
    converged = False
    quiet = (obs.nnz * k < 2e7) if verbose is None else not verbose
    for it in progress(range(max_iter), "matrix completion", quiet=quiet):
        # V-step with U orthonormal (warm start: V R^T keeps the product)
        Q, R = torch.linalg.qr(U)
        U, V = Q, V @ R.T
        V = half(U, V, c_col, r_col, v_col)
        # U-step with V orthonormal
        Q, R = torch.linalg.qr(V)
        V, U = Q, U @ R.T
        U = half(V, U, r_row, c_row, v_row)
        pred = torch.einsum("ij,ij->i", U[rows], V[cols])
        res = float((pred - vals).norm() / vnorm)
        history.append(res)
        if callback is not None:
            callback(it, U, V)
        if not math.isfinite(res):
            break
        if res < tol:
            converged = True
            break
        if len(history) > 5 and history[-2] - res <= 1e-6 * history[-2]:
            converged = True  # stalled at the noise floor: further sweeps change nothing
            break
    return U, V, history, converged


def complete(M: Any, mask: Any = None, rank: int = 10, *, max_iter: int = 100,
             tol: float = 1e-10, cg_steps: int | None = 3, reg: float = 0.0,
             trim: float | None = 4.0, seed: int | None = 0,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float64,
             return_factors: bool = False, verbose: bool | None = None) -> Any:
    """Complete a low-rank matrix from its observed entries (robust AltMin, Gu et al. 2024).

    Args:
        M: the partially observed matrix: dense numpy/torch with ``mask`` (True = observed), or
            dense with NaN for missing entries (``mask=None``), or sparse (scipy COO/CSR/CSC,
            torch sparse) whose stored entries are the observations.
        mask: boolean matrix of ``M``'s shape, or None.
        rank: target rank ``k`` (at most ``min(m, n)``).
        max_iter: alternating sweeps at most.
        tol: stop when the relative residual on the observed entries drops below ``tol`` (or
            stops changing, which happens at the noise floor of noisy data).
        cg_steps: warm-started CG steps per row solve; None solves each row exactly.
        reg: ridge added to every row's normal equation (for noisy or not exactly low-rank
            data), relative to the mean diagonal of those equations (0.1 = 10%).
        trim: row-norm cap of the spectral initialisation, in units of ``sqrt(k/m)``; None
            disables trimming.
        seed: seed of the randomized spectral initialisation.
        device: where to compute (default: the input tensor's device, else CPU).
        dtype: compute dtype (float64 by default; results are cast back to the input's).
        return_factors: return a :class:`Recovery` with ``left (m x k)`` and ``right (n x k)``
            instead of the dense ``m x n`` completion (use it for large matrices).
        verbose: progress bar on stderr (default: only for large problems).

    Returns:
        The completed matrix, dense, in the input's array type (numpy for numpy and scipy
        input, torch on the input's device for torch), or a :class:`Recovery`.
    """
    obs = observe(M, mask, dtype=dtype, device=None)
    dev = default_device(device, obs.like)
    obs = Observed(obs.rows.to(dev), obs.cols.to(dev), obs.vals.to(dev), obs.shape, obs.like)
    rank = check_rank(rank, min(obs.shape), f"a {obs.shape[0]}x{obs.shape[1]} matrix")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be at least 1, got {max_iter}")
    if cg_steps is not None and cg_steps < 1:
        raise ConfigError(f"cg_steps must be a positive int or None (exact), got {cg_steps}")
    U, V, history, converged = altmin(obs, rank, max_iter=max_iter, tol=tol, cg_steps=cg_steps,
                                      reg=reg, trim=trim, seed=seed, verbose=verbose)
    like = obs.like
    if return_factors:
        return Recovery(like.restore(U), like.restore(V), history, len(history), converged)
    return like.restore(U @ V.T)
