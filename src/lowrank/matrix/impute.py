"""SoftImpute and IterativeSVD, with the defaults users know from fancyimpute.

* SoftImpute (Mazumder, Hastie, Tibshirani, "Spectral Regularization Algorithms for Learning
  Large Incomplete Matrices", JMLR 2010): fill the missing entries (zeros first), take the SVD,
  soft-threshold the singular values by ``lambda``, refill the missing entries from the
  reconstruction, repeat. fancyimpute's defaults: ``lambda = sigma_max(zero-filled) / 50``,
  stop when ``||new - old||_missing / ||old||_missing < 1e-3``, at most 100 iterations, full SVD
  unless ``max_rank`` is given (then a randomized SVD with one power iteration).
* IterativeSVD (Troyanskaya et al., "Missing value estimation methods for DNA microarrays",
  2001, "SVDimpute"): the same loop with a hard rank-``k`` truncation. fancyimpute's defaults:
  rank 10, ARPACK truncated SVD, the rank grows as ``min(2^i, k)`` over the first iterations,
  stop when the *squared* relative change on the missing entries is below 1e-5, at most 200
  iterations.

Both are implemented from these descriptions (fancyimpute itself is unmaintained and fails on
scikit-learn >= 1.8); they are the baselines the AltMin solver is measured against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lowrank.errors import ConfigError
from lowrank.utils.checks import check_finite, check_int, check_rank

from ._data import check_result, default_device, generator, observe, pow2_exponent

_F32_EPS = float(torch.finfo(torch.float32).eps)


def _prepare(M: Any, mask: Any, device: Any, dtype: torch.dtype):
    """The observations, the zero-filled matrix divided by ``unit = 2**e`` (data of unit size,
    exactly rescaled), the missing entries and ``unit``."""
    obs = observe(M, mask, dtype=dtype)
    dev = default_device(device, obs.array_type)
    unit = 2.0 ** pow2_exponent(obs.vals)
    X = obs.dense_filled(0.0).to(dev) / unit
    missing = ~obs.dense_mask().to(dev)
    return obs, X, missing, unit


def _bounds(min_value: float | None, max_value: float | None, unit: float
            ) -> tuple[float | None, float | None]:
    """The clipping bounds, checked and in the rescaled units."""
    lo = None if min_value is None else check_finite("min_value", min_value) / unit
    hi = None if max_value is None else check_finite("max_value", max_value) / unit
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"min_value {min_value} exceeds max_value {max_value}")
    return lo, hi


def _missing_change(old: torch.Tensor, new: torch.Tensor) -> tuple[float, float]:
    """``(||new - old||^2, ||old||^2)`` over the missing entries."""
    diff = new - old
    return float((diff * diff).sum()), float((old * old).sum())


def soft_impute(M: Any, mask: Any = None, *, shrinkage_value: float | None = None,
                convergence_threshold: float = 0.001, max_iters: int = 100,
                max_rank: int | None = None, n_power_iterations: int = 1,
                min_value: float | None = None, max_value: float | None = None,
                seed: int | None = 0, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float64,
                callback: Callable[[int, torch.Tensor], None] | None = None,
                return_history: bool = False) -> Any:
    """SoftImpute with fancyimpute's defaults (see the module docstring).

    ``M`` and ``mask`` are read as in :func:`lowrank.matrix.complete`. Returns the filled
    matrix (observed entries unchanged) in the input's array type; with ``return_history``
    also the per-iteration relative change on the missing entries.
    """
    check_int("max_iters", max_iters)
    check_finite("convergence_threshold", convergence_threshold, 0)
    check_int("n_power_iterations", n_power_iterations, 0)
    obs, X, missing, unit = _prepare(M, mask, device, dtype)
    if max_rank is not None:
        max_rank = check_rank(max_rank, min(obs.shape), f"a {obs.shape[0]}x{obs.shape[1]} "
                              "matrix", name="max_rank")
    if shrinkage_value is not None:
        shrinkage_value = check_finite("shrinkage_value", shrinkage_value, 0) / unit
    min_value, max_value = _bounds(min_value, max_value, unit)
    gen = generator(seed, X.device)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=X.device)))
    try:
        if shrinkage_value is None:
            # sigma_max of the zero-filled matrix by a randomized SVD (rank 1, 5 power iters)
            _, s, _ = torch.svd_lowrank(X, q=min(11, min(obs.shape)), niter=5)
            shrinkage_value = float(s[0]) / 50.0
        history: list[float] = []
        for it in range(max_iters):
            if max_rank:
                q = min(max_rank + 10, min(obs.shape))
                U, s, V = torch.svd_lowrank(X, q=q, niter=n_power_iterations)
                U, s, Vt = U[:, :max_rank], s[:max_rank], V[:, :max_rank].T
            else:
                U, s, Vt = torch.linalg.svd(X, full_matrices=False)
            s = torch.clamp(s - shrinkage_value, min=0.0)
            keep = int((s > 0).sum())
            recon = (U[:, :keep] * s[:keep]) @ Vt[:keep]
            if min_value is not None or max_value is not None:
                recon = recon.clamp(min=min_value, max=max_value)
            ssd, old_sq = _missing_change(X[missing], recon[missing])
            # fancyimpute's guard against a vanishing fill, in the data's units
            if old_sq == 0 or (old_sq ** 0.5 * unit < _F32_EPS < ssd ** 0.5 * unit):
                converged, change = False, float("inf")
            else:
                change = (ssd / old_sq) ** 0.5
                converged = change < convergence_threshold
            history.append(change)
            X[missing] = recon[missing]
            if callback is not None:
                callback(it, X * unit)
            if converged:
                break
    finally:
        torch.random.set_rng_state(torch_state)
    check_result("soft_impute", X)
    out = obs.array_type.restore(X * unit)
    return (out, history) if return_history else out


def iterative_svd(M: Any, mask: Any = None, rank: int = 10, *,
                  convergence_threshold: float = 0.00001, max_iters: int = 200,
                  gradual_rank_increase: bool = True, svd_algorithm: str = "arpack",
                  min_value: float | None = None, max_value: float | None = None,
                  seed: int | None = 0, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float64,
                  callback: Callable[[int, torch.Tensor], None] | None = None,
                  return_history: bool = False) -> Any:
    """IterativeSVD (hard-rank SVD imputation) with fancyimpute's defaults.

    ``svd_algorithm`` is ``"arpack"`` (scipy's ``svds``, as scikit-learn's ``TruncatedSVD``
    uses; CPU) or ``"randomized"`` (torch, any device). Returns the filled matrix in the input's
    array type; with ``return_history`` also the squared relative change per iteration.
    """
    if svd_algorithm not in ("arpack", "randomized"):
        raise ConfigError(f"svd_algorithm must be 'arpack' or 'randomized', got "
                          f"{svd_algorithm!r}")
    check_int("max_iters", max_iters)
    check_finite("convergence_threshold", convergence_threshold, 0)
    obs, X, missing, unit = _prepare(M, mask, device, dtype)
    min_value, max_value = _bounds(min_value, max_value, unit)
    limit = min(obs.shape) - (1 if svd_algorithm == "arpack" else 0)
    rank = check_rank(rank, limit, f"a {obs.shape[0]}x{obs.shape[1]} matrix"
                      + (" with ARPACK (needs rank < min(m, n))"
                         if svd_algorithm == "arpack" else ""))
    gen = generator(seed, X.device)
    history: list[float] = []
    for it in range(max_iters):
        k = min(2 ** it, rank) if gradual_rank_increase else rank
        if svd_algorithm == "arpack":
            import numpy as np
            from scipy.sparse.linalg import svds

            Xn = X.cpu().numpy()
            v0 = torch.rand(min(Xn.shape), generator=torch.Generator().manual_seed(
                int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=X.device))),
                dtype=torch.float64).numpy() * 2 - 1
            U, s, Vt = svds(Xn, k=k, v0=v0)
            recon = torch.from_numpy(np.ascontiguousarray((U * s) @ Vt)).to(X)
        else:
            U, s, V = torch.svd_lowrank(X, q=min(k + 10, min(obs.shape)), niter=4)
            recon = (U[:, :k] * s[:k]) @ V[:, :k].T
        if min_value is not None or max_value is not None:
            recon = recon.clamp(min=min_value, max=max_value)
        ssd, old_sq = _missing_change(X[missing], recon[missing])
        # fancyimpute's guard against a vanishing fill, in the data's (squared) units
        if old_sq == 0 or (old_sq * unit * unit < _F32_EPS < ssd * unit * unit):
            converged, change = False, float("inf")
        else:
            change = ssd / old_sq
            converged = change < convergence_threshold
        history.append(change)
        X[missing] = recon[missing]
        if callback is not None:
            callback(it, X * unit)
        if converged:
            break
    check_result("iterative_svd", X)
    out = obs.array_type.restore(X * unit)
    return (out, history) if return_history else out
