"""Matrix sensing by factored gradient descent, with the one-step rebalancing fix.

Xiong, Ding, Du, "How Over-Parameterization Slows Down Gradient Descent in Matrix Sensing: The
Curses of Symmetry and Initialization" (ICLR 2024, arXiv 2310.01769). Loss
``(1/2) ||A(X) - y||^2`` over ``X = F F^T`` (symmetric) or ``X = F G^T`` (asymmetric). With an
over-estimated rank ``k > r``, randomly initialised GD is sublinear in the symmetric case and
linear at a rate ``exp(-Omega(alpha^2 T))`` in the asymmetric one, ``alpha`` being the
initialisation scale: the imbalance ``F^T F - G^T G`` is almost conserved and of size
``alpha^2``. The one-step modification: once the iterate is in the local region, replace
``F <- F P^{-1/2}``, ``G <- G P^{1/2}`` with ``P = F^T F`` (the product is unchanged); the
imbalance becomes ``I - G^T G = O(1)``, and plain GD then converges at a rate independent of
``alpha``.

``loss="l1"`` runs the robust sub-gradient method of :func:`lowrank.matrix.robust` on the
same measurements (Ma & Fattahi 2022), for measurements with gross outliers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lowrank.errors import ConfigError, DataError
from lowrank.linalg.arrays import ArrayType, as_torch
from lowrank.utils.checks import check_finite, check_finite_values, check_int, check_rank
from lowrank.utils.progress import progress

from ._data import check_result, generator, pow2_exponent
from ._ops import DenseOperator, random_factors, subgradient_l1
from .complete import Recovery


def _matrix_inv_sqrt(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P^{1/2}, P^{-1/2})`` of a symmetric positive semi-definite ``k x k`` matrix."""
    evals, Q = torch.linalg.eigh(P)
    floor = float(evals.max()) * torch.finfo(P.dtype).eps * P.shape[0]
    evals = evals.clamp_min(max(floor, torch.finfo(P.dtype).tiny))
    return (Q * evals.sqrt()) @ Q.T, (Q / evals.sqrt()) @ Q.T


def rebalance(F: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-step fix: ``F P^{-1/2}, G P^{1/2}`` with ``P = F^T F`` (``F G^T`` unchanged)."""
    half, inv_half = _matrix_inv_sqrt(F.T @ F)
    return F @ inv_half, G @ half


def _top_eigenvalue(A: torch.Tensor, gen: torch.Generator, n_iter: int = 30) -> float:
    """``lambda_max(A^T A)`` by power iteration (``A`` is ``N x d``)."""
    v = torch.randn(A.shape[1], generator=gen, dtype=A.dtype, device=A.device)
    lam = 0.0
    for _ in range(n_iter):
        w = A.T @ (A @ v)
        lam = float(w.norm())
        if lam == 0:
            return 0.0
        v = w / lam
    return lam


def read_measurements(A: Any, y: Any, shape: tuple[int, int] | None, dtype: torch.dtype,
                      device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` as an ``N x m x n`` tensor and ``y`` as an ``N`` vector, with shape checks."""
    At = as_torch(A, "A", dtype=dtype, device=device)
    yt = as_torch(y, "y", dtype=dtype, device=At.device).reshape(-1)
    if At.ndim == 2:
        if shape is None:
            raise DataError(f"A has shape {tuple(At.shape)} (measurements x features); pass "
                            "shape=(m, n) with m * n = features, or A as N x m x n")
        if shape[0] * shape[1] != At.shape[1]:
            raise DataError(f"shape {tuple(shape)} has {shape[0] * shape[1]} entries but A "
                            f"has {At.shape[1]} features per measurement")
        At = At.reshape(At.shape[0], *shape)
    elif At.ndim != 3:
        raise DataError(f"A must be N x m x n (or N x m*n with shape=), got shape "
                        f"{tuple(At.shape)}")
    if yt.numel() != At.shape[0]:
        raise DataError(f"A holds {At.shape[0]} measurements but y has {yt.numel()} values")
    check_finite_values("A", At)
    check_finite_values("y", yt)
    return At, yt


def factored_gd(op: DenseOperator, y: torch.Tensor, rank: int, *, symmetric: bool,
                init_scale: float, step: float, max_iter: int, tol: float,
                rebalance_at: float | None, gen: torch.Generator, verbose: bool | None = None,
                callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, list[float], bool, int | None]:
    """Gradient descent on ``(1/2)||A(F G^T) - y||^2``; returns ``F, G, history, converged,
    the iteration of the rebalancing step (or None)``.

    The step is ``step / (c * sigma)``, where ``c = sum_i ||A_i||_F^2 / (m n)`` is the isotropy
    constant of ``A`` and ``sigma`` the spectral norm of ``A^*(y) / c``; the initialisation is
    ``init_scale * sqrt(sigma) * B`` with ``B`` Gaussian of unit-norm columns on average. The
    one-step fix balances the factors at that scale (``F^T F = sigma I``; the paper's
    ``F^T F = I`` assumes ``||X||_2 = 1``), so the method is invariant to the scale of ``X``.
    """
    m, n = op.shape
    c = float((op.A * op.A).sum()) / (m * n)
    if c == 0:
        raise DataError("every measurement matrix A_i is zero")
    # guard against far-from-isotropic operators (correlated features): GD needs the step
    # below 2 / lambda_max(A^* A); for near-isotropic A, lambda_max / 4 < c and nothing changes
    c = max(c, _top_eigenvalue(op.A, gen) / 4)
    sigma = float(torch.linalg.matrix_norm(op.adjoint_dense(y) / c, ord=2)) or 1.0
    eta = step / (c * sigma)
    F, G = random_factors((m, n), rank, init_scale, sigma, symmetric, gen, y)
    ynorm = float(y.norm()) or 1.0
    history: list[float] = []
    converged = False
    rebalanced_at: int | None = None
    quiet = (y.numel() * m * n * max_iter < 1e10) if verbose is None else not verbose
    for it in progress(range(max_iter), "matrix sensing", quiet=quiet):
        r = op.forward(F, G) - y
        rel = float(r.norm()) / ynorm
        history.append(rel)
        if not math.isfinite(rel):
            break
        if rel < tol:
            converged = True
            break
        if (rebalance_at is not None and not symmetric and rebalanced_at is None
                and rel < rebalance_at):
            root = math.sqrt(sigma)  # balance at the problem's scale: F^T F = sigma I
            F, G = rebalance(F / root, G / root)
            F, G = F * root, G * root
            rebalanced_at = it
        SG, StF = op.adjoint_times(r, F, G)
        if symmetric:
            F = F - eta * (SG + StF)
            G = F
        else:
            F, G = F - eta * SG, G - eta * StF
        if callback is not None:
            callback(it, F, G)
    return F, G, history, converged, rebalanced_at


def sense(A: Any, y: Any, rank: int, *, shape: tuple[int, int] | None = None,
          symmetric: bool = False, loss: str = "l2", init_scale: float | None = None,
          step: float | None = None, max_iter: int | None = None, tol: float = 1e-10,
          rebalance_at: float | None = 1e-2, decay: float = 0.997, seed: int | None = 0,
          device: torch.device | str | None = None, dtype: torch.dtype = torch.float64,
          return_factors: bool = False, verbose: bool | None = None) -> Any:
    """Recover a low-rank ``m x n`` matrix from linear measurements ``y_i = <A_i, X>``.

    Args:
        A: measurement matrices, ``N x m x n`` (or ``N x m*n`` with ``shape``); numpy or torch.
        y: the ``N`` measurements.
        rank: the factor width ``k``, at most ``min(m, n)``; may exceed the true rank
            (over-parameterisation).
        shape: ``(m, n)`` when ``A`` is given flat.
        symmetric: fit ``X = F F^T`` (square, PSD) instead of ``F G^T``.
        loss: ``"l2"`` (factored GD, Xiong et al.) or ``"l1"`` (sub-gradient method, robust to
            outliers, Ma & Fattahi).
        init_scale: ``alpha``, the initialisation size relative to ``sqrt(||X||_2)``; default
            0.1 for ``l2`` and 1e-3 for ``l1``.
        step: relative step; default 0.2 for ``l2`` (divided by the isotropy constant of ``A``
            and by ``||X||_2``) and 0.05 for ``l1`` (``eta_0`` of the decaying schedule).
        max_iter: iterations; default 6000 (``l2``) or 2500 (``l1``).
        tol: ``l2`` stops when ``||A(X) - y|| / ||y|| < tol``.
        rebalance_at: relative residual at which the one-step fix is applied (asymmetric
            ``l2`` only); None runs plain GD.
        decay: ``rho`` of the ``l1`` step schedule ``eta_0 rho^t``.
        seed, device, dtype, return_factors, verbose: as in :func:`complete`.

    Returns:
        The ``m x n`` estimate in ``A``'s array type, or a :class:`Recovery` (``left = F``,
        ``right = G``, ``history`` = relative residual (l2) or relative l1 loss (l1)).
    """
    if loss not in ("l2", "l1"):
        raise ConfigError(f"loss must be 'l2' or 'l1', got {loss!r}")
    restore = ArrayType.of(A).restore
    At, yt = read_measurements(A, y, shape, dtype, device)
    m, n = int(At.shape[1]), int(At.shape[2])
    if symmetric and m != n:
        raise ConfigError(f"symmetric=True needs square matrices, got {m}x{n}")
    rank = check_rank(rank, min(m, n), f"a {m}x{n} matrix")
    if rebalance_at is not None:
        check_finite("rebalance_at", rebalance_at, 0, low_open=True)
    check_finite("tol", tol, 0)
    check_finite("decay", decay, 0, 1, low_open=True)
    # solve on data of unit size: A / 2**ea and y / 2**ey (exact), X scaled by 2**(ea - ey)
    ea, ey = pow2_exponent(At), pow2_exponent(yt)
    op = DenseOperator(At * 2.0 ** -ea)
    yt = yt * 2.0 ** -ey
    gen = generator(seed, At.device)
    if loss == "l2":
        init_scale = 0.1 if init_scale is None else init_scale
        step = 0.2 if step is None else step
        max_iter = 6000 if max_iter is None else max_iter
        _check_schedule(init_scale, step, max_iter)
        F, G, history, converged, _ = factored_gd(
            op, yt, rank, symmetric=symmetric, init_scale=init_scale, step=step,
            max_iter=max_iter, tol=tol, rebalance_at=rebalance_at, gen=gen, verbose=verbose)
    else:
        init_scale = 1e-3 if init_scale is None else init_scale
        step = 0.05 if step is None else step
        max_iter = 2500 if max_iter is None else max_iter
        _check_schedule(init_scale, step, max_iter)
        c = float((op.A * op.A).sum()) / (m * n)
        scale = float(yt.abs().median()) / 0.6745 / math.sqrt(max(c, 1e-300))
        F, G, history = subgradient_l1(op, yt, rank, symmetric=symmetric,
                                       init_scale=init_scale, step=step, decay=decay,
                                       max_iter=max_iter, scale=max(scale, 1e-300), gen=gen,
                                       verbose=verbose)
        converged = True
    check_result("sense", F, G, loss=history[-1], hint=f"; try a smaller step (got {step})")
    half = 2.0 ** ((ey - ea) // 2)  # ey - ea is even
    F, G = F * half, G * half
    if return_factors:
        return Recovery(restore(F), restore(G), history, len(history), converged)
    return restore(F @ G.T)


def _check_schedule(init_scale: float, step: float, max_iter: int) -> None:
    check_finite("init_scale", init_scale, 0, low_open=True)
    check_finite("step", step, 0, low_open=True)
    check_int("max_iter", max_iter)
