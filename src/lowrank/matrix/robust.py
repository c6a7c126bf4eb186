"""Robust low-rank recovery under gross outliers.

* :func:`robust`: the sub-gradient method on the l1 loss with small initialisation and
  geometrically decaying step (Ma & Fattahi, "Global Convergence of Sub-gradient Method for
  Robust Matrix Recovery: Small Initialization, Noisy Measurements, and Over-parameterization",
  arXiv 2202.08788). The fitted rank may over-estimate the true one: with a small initialisation
  the redundant directions stay at the size of the initialisation while the signal grows.
  Optionally (``refine=True``, our addition, not the paper's) the entries whose l1 residual is
  small are then refitted exactly by alternating minimisation, which turns the sub-gradient
  method's ~1e-4 accuracy into machine precision when the outliers are gross.
* :func:`robust_pca`: principal component pursuit, ``min ||L||_* + lambda ||S||_1`` subject to
  ``L + S = M`` (Candes, Li, Ma, Wright, "Robust Principal Component Analysis?", 2011), by the
  inexact augmented Lagrangian method (Lin, Chen, Ma 2010), with the default that works,
  ``lambda = 1 / sqrt(max(m, n))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lowrank.errors import ConfigError
from lowrank.utils.checks import check_finite, check_int, check_rank
from lowrank.utils.progress import progress

from ._data import Observed, check_result, default_device, generator, observe, pow2_exponent
from ._ops import EntryOperator, subgradient_l1
from .complete import Recovery, altmin


def _robust_scale(vals: torch.Tensor, shape: tuple[int, int], fraction: float) -> float:
    """A Frobenius-norm scale of the clean matrix that outliers cannot inflate (median-based)."""
    med = float(vals.abs().median()) / 0.6745
    return max(med * math.sqrt(shape[0] * shape[1]), 1e-300)


def robust(M: Any, rank: int, mask: Any = None, *, symmetric: bool = False,
           init_scale: float = 1e-5, step: float = 0.2, decay: float = 0.997,
           max_iter: int = 2500, refine: bool = False, refine_threshold: float = 10.0,
           seed: int | None = 0, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float64, return_factors: bool = False,
           verbose: bool | None = None) -> Any:
    """Recover a low-rank matrix from entries of which a fraction are gross outliers.

    Args:
        M: observed matrix, read as in :func:`lowrank.matrix.complete` (dense with or without
            a mask, NaN = missing, or sparse).
        rank: fitted rank ``k``, at most ``min(m, n)``; may exceed the true rank
            (over-parameterisation is harmless with a small ``init_scale``).
        mask: boolean mask of observed entries, or None.
        symmetric: fit ``X = U U^T`` (a PSD matrix) instead of ``U V^T``.
        init_scale: ``alpha``, the size of the random initialisation relative to
            ``sqrt(||M||)``; smaller gives a smaller final error when ``rank`` is too large.
        step: ``eta_0``, the relative step on the normalised sub-gradient direction.
        decay: ``rho``; the step is ``eta_0 * rho^t``.
        max_iter: sub-gradient iterations.
        refine: refit the entries with ``|residual| <= refine_threshold * median |residual|``
            by exact alternating minimisation (not in the paper; see the module docstring).
        refine_threshold: inlier threshold of ``refine``, in units of the median residual.
        seed, device, dtype, return_factors, verbose: as in :func:`complete`.

    Returns:
        The low-rank estimate (dense, the input's array type) or a :class:`Recovery` with
        ``history`` = the l1 loss relative to ``mean |M_Omega|`` per iteration.
    """
    obs = observe(M, mask, dtype=dtype)
    dev = default_device(device, obs.array_type)
    e = pow2_exponent(obs.vals)  # solve on data of unit size, exactly rescaled
    rows, cols, vals = obs.rows.to(dev), obs.cols.to(dev), obs.vals.to(dev) * 2.0 ** -e
    m, n = obs.shape
    if symmetric and m != n:
        raise ConfigError(f"symmetric=True needs a square matrix, got {m}x{n}")
    rank = check_rank(rank, min(m, n), f"a {m}x{n} matrix")
    check_finite("init_scale", init_scale, 0, low_open=True)
    check_finite("step", step, 0, low_open=True)
    check_finite("decay", decay, 0, 1, low_open=True)
    check_int("max_iter", max_iter)
    check_finite("refine_threshold", refine_threshold, 0, low_open=True)
    op = EntryOperator(rows, cols, (m, n))
    gen = generator(seed, dev)
    scale = _robust_scale(vals, (m, n), obs.fraction)
    U, V, history = subgradient_l1(op, vals, rank, symmetric=symmetric, init_scale=init_scale,
                                   step=step, decay=decay, max_iter=max_iter, scale=scale,
                                   gen=gen, verbose=verbose)
    converged = True
    if refine:
        resid = (op.forward(U, V) - vals).abs()
        keep = resid <= refine_threshold * resid.median()
        inliers = Observed(rows[keep], cols[keep], vals[keep], (m, n), obs.array_type)
        k = min(rank, m, n)
        # the rank for the exact refit: the numerical rank of the sub-gradient estimate
        s = torch.linalg.svdvals(U) if symmetric else _factored_svdvals(U, V)
        k = max(1, min(k, int((s > 1e-3 * s[0]).sum())))
        U, V, ref_hist, converged = altmin(inliers, k, cg_steps=None, tol=1e-13,
                                           max_iter=50, seed=seed, verbose=verbose)
        history = history + ref_hist
    check_result("robust", U, V, loss=history[-1], hint="; try a smaller step")
    U, V = U * 2.0 ** (e // 2), V * 2.0 ** (e // 2)
    if return_factors:
        return Recovery(obs.array_type.restore(U), obs.array_type.restore(V), history, len(history),
                        converged)
    return obs.array_type.restore(U @ V.T)


def _factored_svdvals(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Singular values of ``U V^T`` from the factors (two thin QRs and a k x k SVD)."""
    Ru = torch.linalg.qr(U)[1]
    Rv = torch.linalg.qr(V)[1]
    return torch.linalg.svdvals(Ru @ Rv.T)


def robust_pca(M: Any, lam: float | None = None, mask: Any = None, *, tol: float = 1e-9,
               max_iter: int = 500, mu: float | None = None, rho: float = 1.5,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float64,
               return_history: bool = False, verbose: bool | None = None) -> Any:
    """Principal component pursuit by the inexact augmented Lagrangian method.

    Splits ``M = L + S`` with ``L`` low rank and ``S`` sparse, minimising
    ``||L||_* + lam ||S||_1``. Each iteration: ``L = SVT_{1/mu}(M - S + Y/mu)``,
    ``S = shrink_{lam/mu}(M - L + Y/mu)``, ``Y += mu (M - L - S)``, ``mu <- rho mu``.
    Stops when ``||M - L - S||_F / ||M||_F < tol``.

    Args:
        M: dense matrix (numpy or torch); without ``mask``, NaN marks a missing entry.
        lam: weight of the l1 term; default ``1 / sqrt(max(m, n))`` (Candes et al.; a weight
            of 1, tensorly's default, fails).
        mask: optional boolean mask of observed entries; unobserved entries are absorbed by
            ``S`` without penalty (``L`` is then also completed there).
        tol, max_iter, mu, rho: stopping tolerance, iteration cap, initial penalty (default
            ``1.25 / ||M||_2``), penalty growth.
        return_history: also return the relative constraint violation per iteration.

    Returns:
        ``(L, S)`` in the input's array type (plus the history when asked).
    """
    obs = observe(M, mask, dtype=dtype)  # validates shape, mask and finiteness
    restore = obs.array_type.restore
    dev = default_device(device, obs.array_type)
    e = pow2_exponent(obs.vals)  # solve on data of unit size, exactly rescaled
    X = obs.dense_filled(0.0).to(dev) * 2.0 ** -e
    observed = obs.dense_mask().to(dev)
    m, n = X.shape
    lam = 1.0 / math.sqrt(max(m, n)) if lam is None else check_finite("lam", lam, 0,
                                                                        low_open=True)
    check_finite("tol", tol, 0)
    check_int("max_iter", max_iter)
    check_finite("rho", rho, 1, low_open=True)
    norm_fro = float(X.norm()) or 1.0
    norm_two = float(torch.linalg.matrix_norm(X, ord=2)) or 1.0
    norm_inf = float(X.abs().max()) / lam
    Y = X / max(norm_two, norm_inf)
    # the penalty is in units of 1 / M: rescaled with the data
    mu_k = 1.25 / norm_two if mu is None else check_finite("mu", mu, 0, low_open=True) * 2.0 ** e
    mu_max = mu_k * 1e7
    L = torch.zeros_like(X)
    S = torch.zeros_like(X)
    history: list[float] = []
    quiet = (m * n * min(m, n) < 1e9) if verbose is None else not verbose
    for _ in progress(range(max_iter), "robust PCA", quiet=quiet):
        U, s, Vt = torch.linalg.svd(X - S + Y / mu_k, full_matrices=False)
        s = torch.clamp(s - 1.0 / mu_k, min=0.0)
        r = int((s > 0).sum())
        L = (U[:, :r] * s[:r]) @ Vt[:r]
        T = X - L + Y / mu_k
        S = torch.sign(T) * torch.clamp(T.abs() - lam / mu_k, min=0.0)
        S = torch.where(observed, S, T)
        Z = X - L - S
        Y = Y + mu_k * Z
        mu_k = min(rho * mu_k, mu_max)
        history.append(float(Z.norm()) / norm_fro)
        if history[-1] < tol:
            break
    check_result("robust_pca", L, S, loss=history[-1], hint="; try a smaller rho or mu")
    out = (restore(L * 2.0 ** e), restore(S * 2.0 ** e))
    return (*out, history) if return_history else out

