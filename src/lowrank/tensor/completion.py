"""Masked tensor completion: CP and Tucker fitted to the observed entries only.

Alternating least squares restricted to the observed set Ω (the tensor analogue of
alternating-minimisation matrix completion, Jain, Netrapalli & Sanghavi, STOC 2013; for
tensors, Jain & Oh, "Provable Tensor Factorization with Missing Data", NeurIPS 2014): every
row of a factor solves its own small ridge problem over the entries of Ω that lie in its
slice, and the Tucker core solves one least-squares problem over Ω. Unlike tensorly's
``mask=`` (EM imputation, which needs most entries), the missing entries never enter a
residual, so a planted low-rank tensor is recovered from a small fraction of its entries.
Initialisation is spectral: HOSVD of the zero-filled tensor scaled by 1/p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import LowRankError
from ..linalg.arrays import as_numpy, mode_dot
from ..utils.checks import check_finite, check_finite_values, check_int, check_real
from .decomp import CPTensor, TuckerTensor, _convert, _tucker_rank, check_cp_rank

__all__ = ["complete_cp", "complete_tucker"]

_L = "abcdefghijklmnopqrstuvwxyz"


def _observed(x: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    arr = as_numpy(x, "x")
    check_real("x", arr)
    m = as_numpy(mask, "mask") != 0
    if m.shape != arr.shape:
        raise LowRankError(f"mask must have the tensor's shape {arr.shape}, got {m.shape}")
    if arr.ndim < 2:
        raise LowRankError(f"expected a tensor with at least 2 modes, got shape {arr.shape}")
    if not m.any():
        raise LowRankError("mask observes no entry: expected some nonzero entries")
    idx = torch.as_tensor(np.argwhere(m))
    vals = torch.as_tensor(arr[m])
    check_finite_values("x", vals, what="observed entries",
                        hint=" (mark missing entries 0 in the mask instead)")
    dense = torch.zeros(arr.shape, dtype=torch.float64)
    dense[tuple(idx.T)] = vals
    return idx, vals, dense, float(m.mean())


def _row_solve(z: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, n_rows: int,
               reg: float) -> torch.Tensor:
    """For each row i: argmin_a sum_{j: rows_j = i} (y_j - <a, z_j>)^2 + reg |a|^2."""
    r = z.shape[1]
    gram = torch.zeros(n_rows, r * r, dtype=z.dtype)
    gram.index_add_(0, rows, (z[:, :, None] * z[:, None, :]).reshape(-1, r * r))
    rhs = torch.zeros(n_rows, r, dtype=z.dtype).index_add_(0, rows, z * y[:, None])
    gram = gram.reshape(n_rows, r, r) + reg * torch.eye(r, dtype=z.dtype)
    return torch.linalg.solve(gram, rhs)


def _leading(unfolding: torch.Tensor, r: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.linalg.svd(unfolding, full_matrices=False)[0][:, :r]
    if u.shape[1] < r:  # pad with random columns when the mode is smaller than the rank
        u = torch.cat([u, torch.randn(u.shape[0], r - u.shape[1], generator=gen,
                                      dtype=u.dtype)], 1)
    return u


def _unfold(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.movedim(n, 0).reshape(x.shape[n], -1)


def _check_iter(n_iter: int, tol: float, reg: float, random_state: int) -> None:
    check_int("n_iter", n_iter)
    check_finite("tol", tol, 0)
    check_finite("reg", reg, 0)
    check_int("random_state", random_state, 0)


def complete_cp(x: Any, mask: Any, rank: int, *, n_iter: int = 500, tol: float = 1e-10,
                reg: float = 1e-9, random_state: int = 0) -> CPTensor:
    """CP completion by ALS on the observed entries (``mask`` nonzero = observed).

    Stops when the relative error on the observed entries (``rel_error``) is below ``tol``
    or stagnates. ``rank`` may exceed the mode sizes, up to
    :func:`~lowrank.tensor.decomp.cp_rank_bound`.
    """
    _check_iter(n_iter, tol, reg, random_state)
    idx, y, dense, p = _observed(x, mask)
    rank = check_cp_rank(rank, dense.shape)
    gen = torch.Generator().manual_seed(random_state)
    shape = dense.shape
    factors = [_leading(_unfold(dense / p, n), rank, gen) for n in range(len(shape))]
    prev = math.inf
    ynorm = float(y.norm()) or 1.0
    for _ in range(n_iter):
        for n in range(len(shape)):
            z = torch.ones(len(y), rank, dtype=torch.float64)
            for m, f in enumerate(factors):
                if m != n:
                    z = z * f[idx[:, m]]
            factors[n] = _row_solve(z, y, idx[:, n], shape[n], reg)
        fit = torch.ones(len(y), rank, dtype=torch.float64)
        for m, f in enumerate(factors):
            fit = fit * f[idx[:, m]]
        err = float((fit.sum(1) - y).norm()) / ynorm
        if err < tol or abs(prev - err) <= 1e-7 * err:  # converged or stagnated
            break
        prev = err
    norms = [f.norm(dim=0).clamp_min(1e-300) for f in factors]
    weights = torch.stack(norms).prod(0)
    out = CPTensor(weights.numpy(), [(f / nn).numpy() for f, nn in zip(factors, norms,
                                                                       strict=True)], err)
    return _convert(out, x)


def complete_tucker(x: Any, mask: Any, rank: int | Sequence[int], *, n_iter: int = 500,
                    tol: float = 1e-10, reg: float = 1e-9, random_state: int = 0
                    ) -> TuckerTensor:
    """Tucker completion: ALS over factor rows and the core on the observed entries only.

    Factors are re-orthonormalised (QR, R absorbed into the core) after every sweep.
    Stops when the relative error on the observed entries (``rel_error``) is below ``tol``
    or stagnates.
    """
    _check_iter(n_iter, tol, reg, random_state)
    idx, y, dense, p = _observed(x, mask)
    shape = tuple(dense.shape)
    ranks = _tucker_rank(rank, shape)
    n = len(shape)
    if n > 12:
        raise LowRankError(f"complete_tucker supports up to 12 modes, got {n}")
    gen = torch.Generator().manual_seed(random_state)
    factors = [_leading(_unfold(dense / p, k), ranks[k], gen) for k in range(n)]
    core = dense / p
    for k, f in enumerate(factors):
        core = mode_dot(core, f.T, k)
    core_letters = _L[:n]
    ynorm = float(y.norm()) or 1.0
    prev = math.inf
    for _ in range(n_iter):
        for k in range(n):
            others = [m for m in range(n) if m != k]
            eq = core_letters + "," + ",".join(f"Z{core_letters[m]}" for m in others) + \
                f"->Z{core_letters[k]}"
            w = torch.einsum(eq, core, *[factors[m][idx[:, m]] for m in others])
            factors[k] = _row_solve(w, y, idx[:, k], shape[k], reg)
        # core: y_j = <G, ⊗_k U_k[i_k]>, one least-squares problem of size prod(ranks)
        design = factors[0][idx[:, 0]]
        for k in range(1, n):
            design = (design[:, :, None] * factors[k][idx[:, k]][:, None, :]).reshape(
                len(y), -1)
        gram = design.T @ design + reg * torch.eye(design.shape[1], dtype=torch.float64)
        core = torch.linalg.solve(gram, design.T @ y).reshape(ranks)
        for k in range(n):  # orthonormalise, absorb R into the core
            q, r = torch.linalg.qr(factors[k])
            factors[k] = q
            core = mode_dot(core, r, k)
        err = float((_fit_tucker(core, factors, idx) - y).norm()) / ynorm
        if err < tol or abs(prev - err) <= 1e-7 * err:  # converged or stagnated
            break
        prev = err
    out = TuckerTensor(core.numpy(), [f.numpy() for f in factors], err)
    return _convert(out, x)


def _fit_tucker(core: torch.Tensor, factors: list[torch.Tensor], idx: torch.Tensor
                ) -> torch.Tensor:
    n = len(factors)
    letters = _L[:n]
    eq = letters + "," + ",".join(f"Z{c}" for c in letters) + "->Z"
    return torch.einsum(eq, core, *[f[idx[:, k]] for k, f in enumerate(factors)])
