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
   solution. On CPU the observed entries are held as CSR matrices (one sorted by row, one by
   column) and each CG step is one sampled dense-dense product (``w_e = <u_i, v_j>``) and one
   sparse-dense product, streaming through the entries with only ``k``-wide factors in cache,
   so the time per entry stays flat as |Omega| grows.

Before each half-step the fixed factor is re-orthonormalised by QR (the product is unchanged),
which keeps the normal equations well conditioned, so three CG steps per half-step suffice.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lowrank.utils.checks import check_finite, check_int, check_rank
from lowrank.utils.progress import progress

from ._data import Observed, check_result, default_device, generator, observe, pow2_exponent


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


# Device types on which the observed entries are held as a CSR matrix and applied through
# torch's sparse kernels (MKL on CPU). Each kernel streams once through the entries of one row
# with the small dense factor in cache, so a sweep costs time linear in |Omega|. Elsewhere (and
# when this is emptied, as the tests do) the same products run as gathers and ``index_add_``
# over all entries at once, which materialises |Omega| x k temporaries: fine on a GPU, but on a
# CPU their cost per entry rises once they outgrow the cache.
_CSR_DEVICES: tuple[str, ...] = ("cpu",)


@dataclass
class _Entries:
    """Observed entries of a ``t x s`` matrix sorted by (target row, other index).

    ``order`` maps the sorted entries back to the caller's order; ``crow`` are the CSR row
    pointers (``None`` when the device computes with gathers instead).
    """

    order: torch.Tensor
    target: torch.Tensor
    other: torch.Tensor
    crow: torch.Tensor | None
    shape: tuple[int, int]
    _ones: dict[torch.dtype, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def sort(cls, target: torch.Tensor, other: torch.Tensor, shape: tuple[int, int]
             ) -> _Entries:
        t, s = shape
        key = target * s + other
        if bool((key[1:] >= key[:-1]).all()):  # already in order (dense and scipy inputs)
            order = torch.arange(key.numel(), device=key.device)
        else:
            order = torch.argsort(key)
        tg, ot = target[order], other[order]
        crow = None
        if tg.device.type in _CSR_DEVICES:
            counts = torch.bincount(tg, minlength=t)
            crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        return cls(order, tg, ot, crow, shape)

    def ones(self, dtype: torch.dtype) -> torch.Tensor:
        """A one per entry (the sparsity pattern as values), cached per dtype."""
        if dtype not in self._ones:
            self._ones[dtype] = torch.ones(self.other.shape, dtype=dtype,
                                           device=self.other.device)
        return self._ones[dtype]

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse ``t x s`` matrix with ``values`` (sorted order) at these entries."""
        with warnings.catch_warnings():  # torch flags its CSR layout as beta, once a process
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.other, values, size=self.shape,
                                           check_invariants=False)

    def spmm(self, values: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """``S @ B`` for the sparse ``S`` holding ``values`` at these entries."""
        if self.crow is not None:
            return self.csr(values) @ B
        out = torch.zeros(self.shape[0], B.shape[1], dtype=B.dtype, device=B.device)
        return out.index_add_(0, self.target, values[:, None] * B[self.other])

    def sddmm(self, Y: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
        """``<Y[target_e], F[other_e]>`` for every entry ``e`` (sorted order)."""
        if self.crow is not None:
            pattern = self.csr(self.ones(Y.dtype))
            return torch.sparse.sampled_addmm(pattern, Y, F.T, beta=0.0).values()
        return torch.einsum("ij,ij->i", Y[self.target], F[self.other])


def _range_finder(by_row: _Entries, by_col: _Entries, v_row: torch.Tensor,
                  v_col: torch.Tensor, k: int, gen: torch.Generator, n_iter: int = 4,
                  oversample: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sparse_range_finder` on entries already sorted both ways (values ``v_row``,
    ``v_col`` in those orders)."""
    m, n = by_row.shape
    ell = min(k + oversample, m, n)
    omega = torch.randn(n, ell, generator=gen, dtype=v_row.dtype, device=v_row.device)
    Q = torch.linalg.qr(by_row.spmm(v_row, omega))[0]
    for _ in range(n_iter):
        Z = torch.linalg.qr(by_col.spmm(v_col, Q))[0]
        Q = torch.linalg.qr(by_row.spmm(v_row, Z))[0]
    Bt = by_col.spmm(v_col, Q)  # (S^T Q) = B^T, n x ell
    W, s, Zt = torch.linalg.svd(Bt.T, full_matrices=False)
    return Q @ W[:, :k], s[:k], Zt[:k].T


def sparse_range_finder(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                        shape: tuple[int, int], k: int, gen: torch.Generator,
                        n_iter: int = 4, oversample: int = 10
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` SVD of a sparse matrix by randomized subspace iteration (Halko et al.).

    Touches only the stored entries: each pass costs ``O(nnz * (k + oversample))``.
    Returns ``U (m x k)``, ``s (k)``, ``V (n x k)``.
    """
    m, n = shape
    by_row = _Entries.sort(rows, cols, (m, n))
    by_col = _Entries.sort(cols, rows, (n, m))
    return _range_finder(by_row, by_col, vals[by_row.order], vals[by_col.order], k, gen,
                         n_iter, oversample)


def _batched_cg(E: _Entries, fixed: torch.Tensor, vals: torch.Tensor, X: torch.Tensor,
                steps: int, gram_diag: torch.Tensor, ridge: torch.Tensor) -> torch.Tensor:
    """Approximately solve every row's normal equation, warm-started at ``X``.

    Row ``i`` solves ``(sum_e f_e f_e^T + ridge) x_i = sum_e vals_e f_e`` with ``f_e`` the row
    ``other[e]`` of the fixed factor, over the observed entries ``e`` with ``target[e] == i``;
    ``gram_diag`` is the diagonal of those Grams. Jacobi-preconditioned CG, ``steps``
    iterations, all rows in parallel; the normal matrix is applied as ``S_w @ fixed`` with
    ``w_e = <y_i, f_e>`` (one sampled product and one sparse product), so each iteration costs
    ``O(|Omega| k)``.
    """

    def apply(Y: torch.Tensor) -> torch.Tensor:
        return E.spmm(E.sddmm(Y, fixed), fixed) + ridge * Y

    b = E.spmm(vals, fixed)
    diag = gram_diag + ridge
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


def _exact_rows(E: _Entries, fixed: torch.Tensor, vals: torch.Tensor,
                ridge: torch.Tensor) -> torch.Tensor:
    """Exact row solves through batched ``k x k`` Gram matrices (reference for the CG path).

    The Grams are one sparse product with the ``s x k^2`` outer products of the fixed factor's
    rows: memory ``t k^2`` with the CSR kernels (``|Omega| k^2`` on the gather path).
    """
    t = E.shape[0]
    k = fixed.shape[1]
    outer = (fixed[:, :, None] * fixed[:, None, :]).reshape(-1, k * k)
    gram = E.spmm(E.ones(vals.dtype), outer).reshape(t, k, k)
    gram = gram + torch.diag_embed(ridge.expand(t, k))
    return torch.linalg.solve(gram, E.spmm(vals, fixed))


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
    ``solve`` on ``k x k`` Grams, memory ``(m + n) k^2`` on CPU). The solver runs on the
    values divided by a power of two near their largest magnitude (exact, see
    :func:`pow2_exponent`), so data near the ends of the floating-point range is recovered
    as accurately as data of unit size.
    """
    check_int("max_iter", max_iter)
    check_finite("tol", tol, 0)
    if cg_steps is not None:
        check_int("cg_steps", cg_steps)
    check_finite("reg", reg, 0)
    if trim is not None:
        check_finite("trim", trim, 0, low_open=True)
    m, n = obs.shape
    k = rank
    e = pow2_exponent(obs.vals)
    unit = 2.0 ** (e // 2)  # multiplies each factor back
    rows, cols, vals = obs.rows, obs.cols, obs.vals * 2.0 ** -e
    gen = generator(seed, vals.device)
    vnorm = vals.norm()
    if vnorm == 0:
        zero = torch.zeros(m, k, dtype=vals.dtype, device=vals.device)
        return zero, torch.zeros(n, k, dtype=vals.dtype, device=vals.device), [0.0], True
    # entries sorted by row (for U solves and the residual) and by column (for V solves)
    by_row = _Entries.sort(rows, cols, (m, n))
    by_col = _Entries.sort(cols, rows, (n, m))
    v_row, v_col = vals[by_row.order], vals[by_col.order]

    U0, s0, V0 = _range_finder(by_row, by_col, v_row / obs.fraction, v_col / obs.fraction,
                               k, gen)
    if trim is not None:
        U0 = torch.linalg.qr(_trim(U0, trim))[0]
    U, V = U0, V0 * s0
    base_ridge = float(reg)

    def half(fixed: torch.Tensor, free: torch.Tensor, E: _Entries,
             v: torch.Tensor) -> torch.Tensor:
        gram_diag = E.spmm(E.ones(v.dtype), fixed * fixed)
        diag_mean = gram_diag.sum() / max(free.shape[0], 1)
        ridge = torch.as_tensor((base_ridge + 1e-12) * float(diag_mean) / k + 1e-300,
                                dtype=v.dtype, device=v.device)
        if cg_steps is None:
            return _exact_rows(E, fixed, v, ridge)
        return _batched_cg(E, fixed, v, free, cg_steps, gram_diag, ridge)

    history: list[float] = []
    converged = False
    quiet = (obs.nnz * k < 2e7) if verbose is None else not verbose
    for it in progress(range(max_iter), "matrix completion", quiet=quiet):
        # V-step with U orthonormal (warm start: V R^T keeps the product)
        Q, R = torch.linalg.qr(U)
        U, V = Q, V @ R.T
        V = half(U, V, by_col, v_col)
        # U-step with V orthonormal
        Q, R = torch.linalg.qr(V)
        V, U = Q, U @ R.T
        U = half(V, U, by_row, v_row)
        res = float((by_row.sddmm(U, V) - v_row).norm() / vnorm)
        history.append(res)
        if callback is not None:
            callback(it, U * unit, V * unit)
        if not math.isfinite(res):
            break
        if res < tol:
            converged = True
            break
        if len(history) > 5 and history[-2] - res <= 1e-6 * history[-2]:
            converged = True  # stalled at the noise floor: further sweeps change nothing
            break
    return U * unit, V * unit, history, converged


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
    dev = default_device(device, obs.array_type)
    obs = Observed(obs.rows.to(dev), obs.cols.to(dev), obs.vals.to(dev), obs.shape, obs.array_type)
    rank = check_rank(rank, min(obs.shape), f"a {obs.shape[0]}x{obs.shape[1]} matrix")
    U, V, history, converged = altmin(obs, rank, max_iter=max_iter, tol=tol, cg_steps=cg_steps,
                                      reg=reg, trim=trim, seed=seed, verbose=verbose)
    check_result("complete", U, V, loss=history[-1], hint="; try reg > 0 or cg_steps=None")
    restore = obs.array_type.restore
    if return_factors:
        return Recovery(restore(U), restore(V), history, len(history), converged)
    return restore(U @ V.T)
