"""Input handling shared by the matrix recovery solvers: observed entries, validation, scaling.

Every solver computes in torch (so a tensor on a GPU stays there) and hands back the array
type it was given (:class:`~lowrank.linalg.arrays.ArrayType`): numpy in, numpy out; torch in,
torch out on the same device. Observations come as a dense matrix with a boolean mask, a dense
matrix with NaN marking the missing entries, or a sparse matrix (scipy COO/CSR/CSC or torch
sparse) whose stored entries are the observed ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lowrank.errors import DataError, LowRankError
from lowrank.linalg.arrays import ArrayType, as_torch, is_scipy_sparse
from lowrank.utils.checks import check_finite_values, check_int, check_real


@dataclass
class Observed:
    """The observed entries ``M[rows[e], cols[e]] = vals[e]`` of an ``m x n`` matrix."""

    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    shape: tuple[int, int]
    array_type: ArrayType  # the caller's, for the results

    @property
    def nnz(self) -> int:
        return int(self.vals.numel())

    @property
    def fraction(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1])

    def dense_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.shape, dtype=torch.bool, device=self.vals.device)
        mask[self.rows, self.cols] = True
        return mask

    def dense_filled(self, fill: float = 0.0) -> torch.Tensor:
        out = torch.full(self.shape, fill, dtype=self.vals.dtype, device=self.vals.device)
        out[self.rows, self.cols] = self.vals
        return out


def _check_mask(mask: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if is_scipy_sparse(mask):
        mask = mask.toarray()
    if isinstance(mask, torch.Tensor):
        m = mask.detach().to(device)
    else:
        m = torch.from_numpy(np.array(mask)).to(device)
    if tuple(m.shape) != tuple(shape):
        raise DataError(f"mask has shape {tuple(m.shape)} but the matrix has shape "
                        f"{tuple(shape)}; expected a boolean mask of the same shape")
    if m.dtype != torch.bool:
        if m.dtype.is_complex or not torch.all((m == 0) | (m == 1)):
            raise DataError("mask must be boolean (True = observed) or hold only 0 and 1, "
                            f"got values of dtype {m.dtype} outside {{0, 1}}")
        m = m != 0
    return m


def observe(M: Any, mask: Any = None, *, dtype: torch.dtype = torch.float64,
            device: torch.device | str | None = None) -> Observed:
    """Collect the observed entries of ``M``.

    ``M`` is a dense numpy/torch matrix (observed where ``mask`` is True, or where it is not
    NaN when ``mask`` is None) or a sparse matrix (scipy COO/CSR/CSC, torch sparse COO/CSR),
    whose stored entries (explicit zeros included) are the observations.
    """
    array_type = ArrayType.of(M)
    hint = ""  # how to mark a missing entry instead of storing a non-finite value
    if is_scipy_sparse(M):
        if mask is not None:
            raise DataError("a sparse matrix lists its observed entries itself; pass "
                            "mask=None (got a mask too)")
        if M.ndim != 2:
            raise DataError(f"expected a 2-D matrix, got {M.ndim} dimensions")
        # through CSR: summing duplicates sorts within each row (linear in practice), where
        # COO's sum_duplicates sorts all entries at once; same row-major entries either way
        csr = M.tocsr(copy=True)
        check_real("M", csr.data)
        csr.sum_duplicates()
        shape = (int(csr.shape[0]), int(csr.shape[1]))
        dev = torch.device(device) if device is not None else torch.device("cpu")
        row_counts = np.diff(csr.indptr).astype(np.int64)
        rows = torch.from_numpy(np.repeat(np.arange(shape[0], dtype=np.int64), row_counts))
        rows = rows.to(dev)
        cols = torch.from_numpy(csr.indices.astype(np.int64)).to(dev)
        vals = torch.from_numpy(np.array(csr.data)).to(dev, dtype)
    elif isinstance(M, torch.Tensor) and M.layout != torch.strided:
        if mask is not None:
            raise DataError("a sparse tensor lists its observed entries itself; pass "
                            "mask=None (got a mask too)")
        if M.ndim != 2:
            raise DataError(f"expected a 2-D matrix, got shape {tuple(M.shape)}")
        coo = M.detach().to_sparse_coo().coalesce()
        check_real("M", coo.values())
        dev = torch.device(device) if device is not None else M.device
        rows, cols = coo.indices().to(dev)
        vals = coo.values().to(dev, dtype)
        shape = (int(M.shape[0]), int(M.shape[1]))
    else:
        X = as_torch(M, "M", dtype=dtype, device=device)
        if X.ndim != 2:
            raise DataError(f"expected a 2-D matrix, got shape {tuple(X.shape)}")
        shape = (int(X.shape[0]), int(X.shape[1]))
        if mask is None:
            m = ~torch.isnan(X)
            hint = " (NaN marks a missing entry)"
        else:
            m = _check_mask(mask, shape, X.device)
            hint = " (mark missing entries False in the mask instead)"
        rows, cols = torch.nonzero(m, as_tuple=True)
        vals = X[rows, cols]
    if min(shape) < 1:
        raise DataError(f"the matrix is empty (shape {shape})")
    if vals.numel() == 0:
        raise DataError(f"no observed entries in the {shape[0]}x{shape[1]} matrix; expected "
                        "at least one (mask all False, or every entry NaN)")
    check_finite_values("M", vals, what="observed entries", hint=hint)
    return Observed(rows, cols, vals, shape, array_type)


def pow2_exponent(x: torch.Tensor) -> int:
    """An even ``e`` with ``max|x| / 2**e`` in ``[1/4, 1)`` (0 when ``x`` is all zero).

    The solvers divide their data by ``2**e`` (exact, a power of two) and multiply the result
    back (each of two factors by ``2**(e/2)``), so that squares and norms of data near either
    end of the floating-point range neither overflow nor underflow. ``e`` is clamped to keep
    ``2**e`` and ``2**-e`` normal numbers of ``x``'s dtype.
    """
    top = float(x.abs().max()) if x.numel() else 0.0
    if top == 0.0:
        return 0
    e = math.frexp(top)[1]
    limit = math.frexp(torch.finfo(x.dtype).max)[1] - 2  # 1022 for float64
    return min(max(e + e % 2, -limit), limit)


def check_result(func: str, *parts: torch.Tensor, loss: float = 0.0, hint: str = "") -> None:
    """Refuse to return the result of the solver ``func`` when it diverged: non-finite values
    in ``parts`` or a non-finite final ``loss``."""
    for x in parts:
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise LowRankError(f"{func} diverged: {bad} of the {x.numel()} values of its result "
                               f"are NaN or infinite{hint}")
    if not math.isfinite(loss):
        raise LowRankError(f"{func} diverged: its residual became {loss}{hint}")


def default_device(device: torch.device | str | None, array_type: ArrayType) -> torch.device:
    if device is not None:
        return torch.device(device)
    return array_type.device


def generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else check_int("seed", seed, 0))
    return g
