"""Tucker, CP, tensor-train and TT-matrix decompositions as small dataclasses.

The dense algorithms are delegated to tensorly (HOOI for Tucker, ALS for CP, TT-SVD for the
tensor train; Kolda & Bader, "Tensor Decompositions and Applications", SIAM Review 2009;
Oseledets, "Tensor-Train Decomposition", SISC 2011), always on tensorly's numpy backend
inside a thread-local ``backend_context`` so the caller's global tensorly backend is left
alone. Our defaults: SVD initialisation for Tucker/TT, randomized SVD when every rank is at
most 10% of its mode, and for CP the best of ``n_restarts=3`` random initialisations: CP-ALS
from the SVD start stalls in a swamp on generic rank-10 tensors (error 0.32 after 100 sweeps
at 100^3 in ``benchmarks/tensors.py``), while random starts converge in ~15 sweeps and the
best of three avoids the occasional bad start. Results keep the input's array type (numpy or torch).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch

from ..errors import ConfigError, LowRankError
from ..linalg.arrays import ArrayType, as_numpy, einsum, kron_matvec
from ..utils.checks import check_finite, check_finite_values, check_int, check_real
from ._backend import scoped

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

__all__ = ["CPTensor", "TTMatrix", "TTTensor", "TuckerTensor", "cp", "relative_error", "tt",
           "tt_matrix", "tucker"]


def _norm(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        return float(torch.linalg.vector_norm(x.reshape(-1).to(torch.complex128 if x.is_complex()
                                                                  else torch.float64)))
    return float(np.linalg.norm(np.asarray(x).reshape(-1)))


def _projection_error(x: np.ndarray, approx_norm: float, dense: Any) -> float:
    """Relative error of an orthogonal projection ``P x`` from norms (no reconstruction):
    ``sqrt(||x||^2 - ||P x||^2) / ||x||``; below 1e-6 (cancellation) it is recomputed exactly."""
    ref = float(np.linalg.norm(x.reshape(-1)))
    err = math.sqrt(max(ref ** 2 - approx_norm ** 2, 0.0)) / max(ref, 1e-300)
    return err if err > 1e-6 else relative_error(x, dense())


def relative_error(x: Any, approx: Any) -> float:
    """``||x - approx||_F / ||x||_F`` (numpy or torch)."""
    ref = _norm(x)
    if isinstance(x, torch.Tensor) or isinstance(approx, torch.Tensor):
        x, approx = torch.as_tensor(x), torch.as_tensor(approx).to(torch.as_tensor(x).dtype)
    return _norm(x - approx) / max(ref, 1e-300)


@dataclass
class TuckerTensor:
    """``X ~= core ×_1 U_1 … ×_N U_N``; ``rel_error`` is measured against the input."""

    core: Any
    factors: list[Any]
    rel_error: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(f.shape[0]) for f in self.factors)

    @property
    def rank(self) -> tuple[int, ...]:
        return tuple(int(f.shape[1]) for f in self.factors)

    def to_dense(self) -> Any:
        return kron_matvec(self.factors, self.core)

    def num_parameters(self) -> int:
        return int(math.prod(self.rank)) + sum(int(f.shape[0] * f.shape[1]) for f in self.factors)

    def to_tensorly(self) -> Any:
        with scoped() as tl:
            return tl.tucker_tensor.TuckerTensor((as_numpy(self.core),
                                                  [as_numpy(f) for f in self.factors]))

    @classmethod
    def from_tensorly(cls, obj: Any, rel_error: float | None = None) -> TuckerTensor:
        core, factors = obj
        return cls(np.asarray(core), [np.asarray(f) for f in factors], rel_error)


@dataclass
class CPTensor:
    """``X ~= sum_r weights[r] a_r^(1) ∘ … ∘ a_r^(N)`` with ``factors[n]`` of shape I_n x R."""

    weights: Any
    factors: list[Any]
    rel_error: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(f.shape[0]) for f in self.factors)

    @property
    def rank(self) -> int:
        return int(self.factors[0].shape[1])

    def to_dense(self) -> Any:
        # (A_1 diag(w)) (A_2 ⊙ … ⊙ A_N)^T with a Khatri-Rao product built transposed (R x
        # prod I_n, C-contiguous) so the one matmul yields a C-ordered result to reshape
        r = self.rank
        krt = self.factors[1].T
        for f in self.factors[2:]:
            krt = (krt[:, :, None] * f.T[:, None, :]).reshape(r, -1)
        if any(isinstance(f, torch.Tensor) for f in (self.weights, *self.factors)):
            first = torch.as_tensor(self.factors[0]) * torch.as_tensor(self.weights)
            krt = torch.as_tensor(krt).to(first.dtype)
        else:
            first = np.asarray(self.factors[0]) * np.asarray(self.weights)
            krt = np.ascontiguousarray(krt)
            first = np.ascontiguousarray(first)
        return (first @ krt).reshape(self.shape)

    def num_parameters(self) -> int:
        return self.rank * (1 + sum(self.shape))

    def to_tensorly(self) -> Any:
        with scoped() as tl:
            return tl.cp_tensor.CPTensor((as_numpy(self.weights),
                                          [as_numpy(f) for f in self.factors]))

    @classmethod
    def from_tensorly(cls, obj: Any, rel_error: float | None = None) -> CPTensor:
        weights, factors = obj
        return cls(np.asarray(weights), [np.asarray(f) for f in factors], rel_error)


def _chain(cores: Sequence[Any]) -> Any:
    """Contract TT cores ``(r_{k-1}, I_k, r_k)`` into ``(r_0, I_1, …, I_N, r_N)``."""
    x = cores[0]
    for core in cores[1:]:
        x = einsum("...a,abc->...bc", x, core)
    return x


@dataclass
class TTTensor:
    """Tensor train: ``X[i1..iN] = G_1[:, i1, :] … G_N[:, iN, :]``, cores ``(r, I_k, r')``."""

    cores: list[Any]
    rel_error: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def rank(self) -> tuple[int, ...]:
        return (1, *(int(c.shape[2]) for c in self.cores))

    def to_dense(self) -> Any:
        x = _chain(self.cores)
        return x.reshape(self.shape)

    def num_parameters(self) -> int:
        return sum(int(math.prod(c.shape)) for c in self.cores)

    def to_tensorly(self) -> Any:
        with scoped() as tl:
            return tl.tt_tensor.TTTensor([as_numpy(c) for c in self.cores])

    @classmethod
    def from_tensorly(cls, obj: Any, rel_error: float | None = None) -> TTTensor:
        return cls([np.asarray(c) for c in obj], rel_error)


@dataclass
class TTMatrix:
    """TT-matrix: a ``(prod m) x (prod n)`` matrix with cores ``(r, m_k, n_k, r')``."""

    cores: list[Any]
    rel_error: float | None = None

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def col_shape(self) -> tuple[int, ...]:
        return tuple(int(c.shape[2]) for c in self.cores)

    @property
    def rank(self) -> tuple[int, ...]:
        return (1, *(int(c.shape[3]) for c in self.cores))

    def to_tensor(self) -> Any:
        """The tensorized matrix ``(m_1..m_d, n_1..n_d)``."""
        d = len(self.cores)
        x = self.cores[0]
        for core in self.cores[1:]:
            x = einsum("...a,abcd->...bcd", x, core)
        x = x.reshape(tuple(v for pair in zip(self.row_shape, self.col_shape, strict=True)
                            for v in pair))
        perm = [2 * k for k in range(d)] + [2 * k + 1 for k in range(d)]
        return x.transpose(*perm) if isinstance(x, np.ndarray) else x.permute(*perm)

    def to_dense(self) -> Any:
        return self.to_tensor().reshape(math.prod(self.row_shape), math.prod(self.col_shape))

    def matvec(self, v: Any) -> Any:
        """``W @ v`` for ``v`` of length ``prod n`` (or ``prod n x k``) without forming W."""
        d = len(self.cores)
        if d > 12:
            raise LowRankError(f"matvec supports up to 12 TT-matrix cores, got {d}")
        cols = tuple(v.shape[1:]) if v.ndim == 2 else ()
        t = v.reshape(*self.col_shape, *cols)
        ranks, rows, ins = _LETTERS[:d + 1], _LETTERS[13:13 + d], _LETTERS[26:26 + d]
        extra = "Z" if cols else ""
        terms = [f"{ranks[k]}{rows[k]}{ins[k]}{ranks[k + 1]}" for k in range(d)]
        eq = ",".join(terms) + f",{ins}{extra}->{ranks[0]}{rows}{ranks[d]}{extra}"
        out = einsum(eq, *self.cores, t)
        return out.reshape(math.prod(self.row_shape), *cols)

    def num_parameters(self) -> int:
        return sum(int(math.prod(c.shape)) for c in self.cores)

    def to_tensorly(self) -> Any:
        with scoped() as tl:
            return tl.tt_matrix.TTMatrix([as_numpy(c) for c in self.cores])

    @classmethod
    def from_tensorly(cls, obj: Any, rel_error: float | None = None) -> TTMatrix:
        return cls([np.asarray(c) for c in obj], rel_error)


Decomposition = TypeVar("Decomposition", TuckerTensor, CPTensor, TTTensor, TTMatrix)


def _check_tensor(x: Any, min_ndim: int = 2) -> np.ndarray:
    arr = as_numpy(x, "x")
    if arr.ndim < min_ndim:
        raise LowRankError(f"expected a tensor with at least {min_ndim} modes, got shape "
                           f"{tuple(arr.shape)}")
    check_real("x", arr)  # tensorly's ALS/HOOI and our error measures assume real data
    check_finite_values("x", arr, hint=" (pass a mask for missing entries)")
    return arr


def _check_iter(n_iter_max: int, tol: float) -> None:
    check_int("n_iter_max", n_iter_max)
    check_finite("tol", tol, 0)


def mode_ranks(rank: Any, bounds: Sequence[int | None], what: str) -> list[int]:
    """One positive int per mode, each at most its bound (None: unbounded). An int is
    broadcast and clipped to every bound; a sequence must hold one int per mode within its
    bound."""
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        value = check_int(what, rank)
        return [value if b is None else min(value, b) for b in bounds]
    if not isinstance(rank, (Sequence, np.ndarray)) or isinstance(rank, str) or \
            len(rank) != len(bounds):
        raise ConfigError(f"{what} must be an int or {len(bounds)} ints (one per mode), got "
                          f"{rank!r}")
    return [check_int(f"{what}[{k}]", r, 1, b) for k, (r, b) in enumerate(zip(rank, bounds,
                                                                             strict=True))]


def _tucker_rank(rank: int | Sequence[int], shape: tuple[int, ...]) -> list[int]:
    """Tucker ranks for ``shape``: at most each mode's size."""
    return mode_ranks(rank, shape, "Tucker rank")


def cp_rank_bound(shape: Sequence[int]) -> int:
    """The largest CP rank a tensor of ``shape`` can have: ``prod(shape) / max(shape)`` (each
    mode-``n`` unfolding writes it as a sum of ``prod_{k != n} I_k`` rank-one terms; Kolda &
    Bader 2009, section 3.1). CP ranks may exceed every mode size, but not this."""
    return math.prod(shape) // max(shape)


def check_cp_rank(rank: Any, shape: Sequence[int]) -> int:
    bound = cp_rank_bound(shape)
    rank = check_int("CP rank", rank)
    if rank > bound:
        raise ConfigError(f"CP rank {rank} exceeds {bound}, the largest CP rank of a tensor of "
                          f"shape {tuple(shape)} (prod(shape) / max(shape))")
    return rank


def _svd_choice(svd: str, ranks: Sequence[int], shape: Sequence[int]) -> str:
    if svd == "auto":
        small = all(r <= 0.1 * s for r, s in zip(ranks, shape, strict=False))
        return "randomized_svd" if small else "truncated_svd"
    if svd not in ("truncated_svd", "randomized_svd", "symeig_svd"):
        raise ConfigError(f"svd must be 'auto', 'truncated_svd', 'randomized_svd' or "
                          f"'symeig_svd', got {svd!r}")
    return svd


def _mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = as_numpy(mask, "mask")
    if m.shape != shape:
        raise LowRankError(f"mask must have the tensor's shape {shape}, got {m.shape}")
    return (m != 0).astype(np.float64)


def tucker(x: Any, rank: int | Sequence[int], *, n_iter_max: int = 100, tol: float = 1e-4,
           init: str = "svd", svd: str = "auto", mask: Any = None,
           random_state: int | None = 0) -> TuckerTensor:
    """Tucker decomposition by HOSVD initialisation + HOOI (tensorly ``tucker``).

    ``rank``: an int (broadcast, clipped to each mode) or one rank per mode, each at most the
    mode's size. ``svd='auto'``
    picks randomized SVD when every rank is at most 10% of its mode. ``mask`` (1 = observed)
    uses tensorly's EM imputation; for few observed entries use :func:`complete_tucker`.
    """
    arr = _check_tensor(x)
    ranks = _tucker_rank(rank, arr.shape)
    _check_iter(n_iter_max, tol)
    method = _svd_choice(svd, ranks, arr.shape)
    m = _mask(mask, arr.shape)
    with scoped():
        from tensorly.decomposition import tucker as tl_tucker

        core, factors = tl_tucker(arr, ranks, n_iter_max=n_iter_max, tol=tol, init=init,
                                  svd=method, mask=m, random_state=random_state)
    out = TuckerTensor(np.asarray(core), [np.asarray(f) for f in factors])
    if m is None:  # orthonormal factors and core = x projected: error from the core's norm
        out.rel_error = _projection_error(arr, float(np.linalg.norm(out.core)), out.to_dense)
    else:
        out.rel_error = relative_error(arr, out.to_dense())
    return _convert(out, x)


def _convert(dec: Decomposition, ref: Any) -> Decomposition:
    """``dec`` with its arrays in the array type of the input ``ref`` (numpy or torch, its
    dtype and device); ``rel_error`` stays a float."""
    out = ArrayType.of(ref)
    for f in fields(dec):
        value = getattr(dec, f.name)
        if isinstance(value, list):
            setattr(dec, f.name, [out.restore(v) for v in value])
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            setattr(dec, f.name, out.restore(value))
    return dec


def cp(x: Any, rank: int, *, n_iter_max: int = 100, tol: float = 1e-8, init: str = "random",
       svd: str = "auto", n_restarts: int = 3, l2_reg: float = 0.0, mask: Any = None,
       normalize: bool = True, random_state: int | None = 0) -> CPTensor:
    """CP decomposition by alternating least squares (tensorly ``parafac``).

    With ``init='random'`` (default) the best of ``n_restarts`` runs seeded
    ``random_state, random_state + 1, ...`` is kept (one random start can stall in a swamp);
    ``init='svd'`` runs once (tensorly's default; it can swamp, see the module docstring).
    ``normalize`` puts column norms in ``weights``. ``rank`` may exceed the mode sizes, up to
    :func:`cp_rank_bound`.
    """
    arr = _check_tensor(x)
    rank = check_cp_rank(rank, arr.shape)
    if init not in ("svd", "random"):
        raise ConfigError(f"init must be 'svd' or 'random', got {init!r}")
    check_int("n_restarts", n_restarts)
    _check_iter(n_iter_max, tol)
    check_finite("l2_reg", l2_reg, 0)
    method = _svd_choice(svd, [rank] * arr.ndim, arr.shape)
    m = _mask(mask, arr.shape)
    seeds = [None if random_state is None else random_state + k
             for k in range(n_restarts if init == "random" else 1)]
    best = None
    with scoped(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD")  # R > mode size
        from tensorly.decomposition import parafac

        for seed in seeds:
            (weights, factors), errors = parafac(
                arr, int(rank), n_iter_max=n_iter_max, tol=tol, init=init, svd=method,
                l2_reg=l2_reg, mask=m, normalize_factors=normalize, random_state=seed,
                return_errors=True)
            cand = CPTensor(np.asarray(weights), [np.asarray(f) for f in factors])
            # rank restarts by ALS's own running error; the exact error once, for the best
            score = float(errors[-1]) if m is None and len(errors) else \
                relative_error(arr * (1 if m is None else m), cand.to_dense() *
                               (1 if m is None else m))
            if best is None or score < best[0]:
                best = (score, cand)
        best = best[1]
        best.rel_error = relative_error(arr, best.to_dense()) if m is None else \
            relative_error(arr * m, best.to_dense() * m)
    return _convert(best, x)


def _tt_rank(rank: int | Sequence[int], shape: tuple[int, ...]) -> list[int]:
    """TT ranks ``r_0 = 1, r_1, ..., r_N = 1``: ``r_k`` at most the rank of the ``k``-th
    unfolding, ``min(I_1 ... I_k, I_{k+1} ... I_N)`` (an int is clipped to those bounds)."""
    n = len(shape)
    bounds = [min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, n)]
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        return [1, *mode_ranks(rank, bounds, "TT rank"), 1]
    if not isinstance(rank, (Sequence, np.ndarray)) or isinstance(rank, str) or \
            len(rank) != n + 1 or any(isinstance(rank[k], bool) or rank[k] != 1 for k in (0, -1)):
        raise ConfigError(f"TT rank must be an int or a list of {n + 1} positive ints starting "
                          f"and ending with 1 for shape {shape}, got {rank!r}")
    return [1, *(check_int(f"TT rank[{k}]", rank[k], 1, bounds[k - 1]) for k in range(1, n)), 1]


def tt(x: Any, rank: int | Sequence[int], *, svd: str = "auto",
       random_state: int | None = 0) -> TTTensor:
    """Tensor train by TT-SVD (tensorly ``tensor_train``); ``rank`` is an int (clipped to the
    unfolding ranks) or N+1 ranks, ``r_k`` at most ``min(I_1 ... I_k, I_{k+1} ... I_N)``."""
    arr = _check_tensor(x)
    ranks = _tt_rank(rank, arr.shape)
    method = _svd_choice(svd, ranks[1:-1], arr.shape[:-1])
    with scoped():
        from tensorly.decomposition import tensor_train

        cores = tensor_train(arr, ranks, svd=method, random_state=random_state)
    out = TTTensor([np.asarray(c) for c in cores])
    # TT-SVD cores are left-orthonormal except the last: ||x_hat|| = ||last core||
    out.rel_error = _projection_error(arr, float(np.linalg.norm(out.cores[-1])), out.to_dense)
    return _convert(out, x)


def tt_matrix(w: Any, row_shape: Sequence[int], col_shape: Sequence[int],
              rank: int | Sequence[int], *, svd: str = "truncated_svd") -> TTMatrix:
    """TT-matrix of ``w`` (``prod(row_shape) x prod(col_shape)``, or already tensorized as
    ``(*row_shape, *col_shape)``), by TT-SVD of the interleaved tensor (tensorly
    ``tensor_train_matrix``). Complex matrices are supported (the TT-SVD is exact at full rank
    and keeps its error bound)."""
    arr = as_numpy(w, "w")
    check_finite_values("w", arr)
    row_shape, col_shape = tuple(int(v) for v in row_shape), tuple(int(v) for v in col_shape)
    if len(row_shape) != len(col_shape):
        raise ConfigError(f"row_shape and col_shape need the same length, got {row_shape} and "
                          f"{col_shape}")
    if arr.size != math.prod(row_shape) * math.prod(col_shape):
        raise LowRankError(f"w of shape {arr.shape} does not factor as {row_shape} x "
                           f"{col_shape}")
    tens = arr.reshape(*row_shape, *col_shape)
    inter = [m * n for m, n in zip(row_shape, col_shape, strict=True)]
    ranks = _tt_rank(rank, tuple(inter))
    with scoped():
        from tensorly.decomposition import tensor_train_matrix

        cores = tensor_train_matrix(tens, ranks, svd=_svd_choice(svd, [1], [1]))
    out = TTMatrix([np.asarray(c) for c in cores])
    out.rel_error = relative_error(arr.reshape(math.prod(row_shape), -1), out.to_dense())
    return _convert(out, w)
