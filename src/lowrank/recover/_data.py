"""Input handling shared by the recovery solvers: array types, observed entries, validation.

Every solver computes in torch (so a tensor on a GPU stays there) and hands back the array
type it was given: numpy in, numpy out; torch in, torch out on the same device. Observations
come as a dense matrix with a boolean mask, a dense matrix with NaN marking the missing
entries, or a sparse matrix (scipy COO/CSR/CSC or torch sparse) whose stored entries are the
observed ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lowrank.errors import ConfigError, DataError

ArrayLike = Any  # numpy.ndarray | torch.Tensor | scipy.sparse matrix


@dataclass
class Like:
    """What the caller gave us, so results go back in the same form."""

    kind: str  # "numpy" or "torch"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: Any = None  # numpy or torch floating dtype of the input (None: float64)

    def restore(self, x: torch.Tensor) -> Any:
        """Return ``x`` as the caller's array type, device and floating dtype."""
        if self.kind == "torch":
            dtype = self.dtype if self.dtype is not None else torch.float64
            return x.detach().to(device=self.device, dtype=dtype)
        dtype = self.dtype if self.dtype is not None else np.float64
        return x.detach().cpu().numpy().astype(dtype, copy=False)


def is_scipy_sparse(x: Any) -> bool:
    return type(x).__module__.startswith("scipy.sparse")


def like_of(x: Any) -> Like:
    """Describe the array type of ``x`` (numpy, scipy sparse -> numpy, torch)."""
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.dtype.is_floating_point else None
        return Like("torch", x.device, dtype)
    dtype = getattr(x, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.floating):
        return Like("numpy", dtype=np.dtype(dtype))
    return Like("numpy")


def to_tensor(x: Any, name: str, dtype: torch.dtype = torch.float64,
              device: torch.device | str | None = None) -> torch.Tensor:
    """A dense floating tensor from a numpy array, torch tensor or nested list."""
    if is_scipy_sparse(x):
        x = x.toarray()
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            x = x.to_dense()
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - numpy raises many kinds
            raise DataError(f"{name} could not be read as an array: {exc}") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == bool):
            raise DataError(f"{name} must hold numbers, got an array of dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:
            arr = arr.copy()
        t = torch.from_numpy(arr)
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def check_rank(rank: Any, limit: int | None, what: str) -> int:
    """Validate a target rank: a positive int, at most ``limit`` when given."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ConfigError(f"rank must be a positive int, got {rank!r}")
    rank = int(rank)
    if rank < 1:
        raise ConfigError(f"rank must be a positive int, got {rank}")
    if limit is not None and rank > limit:
        raise ConfigError(f"rank {rank} exceeds the largest possible rank {limit} of {what}")
    return rank


@dataclass
class Observed:
    """The observed entries ``M[rows[e], cols[e]] = vals[e]`` of an ``m x n`` matrix."""

    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    shape: tuple[int, int]
    like: Like

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
    like = like_of(M)
    if is_scipy_sparse(M):
        if mask is not None:
            raise DataError("a sparse matrix lists its observed entries itself; pass "
                            "mask=None (got a mask too)")
        if M.ndim != 2:
            raise DataError(f"expected a 2-D matrix, got {M.ndim} dimensions")
        # through CSR: summing duplicates sorts within each row (linear in practice), where
        # COO's sum_duplicates sorts all entries at once; same row-major entries either way
        csr = M.tocsr(copy=True)
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
        dev = torch.device(device) if device is not None else M.device
        rows, cols = coo.indices().to(dev)
        vals = coo.values().to(dev, dtype)
        shape = (int(M.shape[0]), int(M.shape[1]))
    else:
        X = to_tensor(M, "M", dtype=dtype, device=device)
        if X.ndim != 2:
            raise DataError(f"expected a 2-D matrix, got shape {tuple(X.shape)}")
        shape = (int(X.shape[0]), int(X.shape[1]))
        if mask is None:
            m = ~torch.isnan(X)
        else:
            m = _check_mask(mask, shape, X.device)
        rows, cols = torch.nonzero(m, as_tuple=True)
        vals = X[rows, cols]
    if min(shape) < 1:
        raise DataError(f"the matrix is empty (shape {shape})")
    if vals.numel() == 0:
        raise DataError(f"no observed entries in the {shape[0]}x{shape[1]} matrix; expected "
                        "at least one (mask all False, or every entry NaN)")
    if not torch.all(torch.isfinite(vals)):
        bad = int((~torch.isfinite(vals)).sum())
        raise DataError(f"{bad} observed entries are NaN or infinite; observed values must be "
                        "finite (mark missing entries in the mask instead)")
    return Observed(rows, cols, vals, shape, like)


def default_device(device: torch.device | str | None, like: Like) -> torch.device:
    if device is not None:
        return torch.device(device)
    return like.device if like.kind == "torch" else torch.device("cpu")


def generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g
