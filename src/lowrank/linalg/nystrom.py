"""Column selection by ridge leverage scores and the Nyström (least-squares) correction.

For features ``H`` (tokens x d) with correlation ``C = H^T H``, keeping a subset ``S`` of the
``d`` columns and refitting the next linear map ``W`` (d x out) by least squares gives
``W_S = (C_SS)^+ C_S: W``: the Nyström approximation of MoDeGPT's type-I step ("MoDeGPT:
Modular Decomposition for Large Language Model Compression", ICLR 2025). The columns are
chosen by ridge leverage ``l_j = [C (C + lam I)^-1]_jj``. Also the CR (column-row) scores of the
key-query step, ``||C_Q^{1/2} e_j|| ||C_K^{1/2} e_j|| = sqrt(C_Q[j, j] C_K[j, j])``.
"""

from __future__ import annotations

import torch

from ..utils.checks import check_finite, check_int


def ridge_leverage_scores(corr: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """``diag(C (C + lam I)^-1)`` with ``lam = ridge * trace(C) / d`` (float64)."""
    if corr.ndim != 2 or corr.shape[0] != corr.shape[1]:
        raise ValueError(f"a correlation matrix must be square, got {tuple(corr.shape)}")
    check_finite("ridge", ridge, 0, low_open=True)
    c = corr.to(torch.float64)
    c = 0.5 * (c + c.T)
    lam, q = torch.linalg.eigh(c)
    lam = lam.clamp_min(0)
    reg = ridge * float(lam.sum()) / c.shape[0]
    if reg <= 0:
        raise ValueError("ridge_leverage_scores: the correlation matrix is zero")
    return ((q * q) * (lam / (lam + reg))).sum(1)


def select_columns(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in increasing index order (ties: lower index)."""
    check_int("k", k, 1, scores.numel())
    order = torch.argsort(-scores.to(torch.float64), stable=True)[:k]
    return order.sort().values


def nystrom_correct(corr: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor,
                    rcond: float = 1e-12) -> torch.Tensor:
    """Least-squares map from the kept features: ``(C_SS)^+ C_S: W`` (k x out).

    ``weight`` is (d x out) in the row convention (features times weight); for a PyTorch
    ``nn.Linear`` weight ``W_D`` (out x d) pass ``W_D.T`` and transpose the result back. With
    all columns kept and ``C`` invertible this returns ``W`` itself.
    """
    check_finite("rcond", rcond, 0)
    c = corr.to(torch.float64)
    css = c[keep][:, keep]
    rhs = c[keep] @ weight.to(torch.float64)
    return torch.linalg.pinv(css, rtol=rcond, hermitian=True) @ rhs


def cr_scores(corr_q: torch.Tensor, corr_k: torch.Tensor) -> torch.Tensor:
    """MoDeGPT's type-II column scores ``||C_Q^{1/2}[:, j]|| * ||C_K^{1/2}[:, j]||``."""
    dq = corr_q.diagonal().to(torch.float64).clamp_min(0)
    dk = corr_k.diagonal().to(torch.float64).clamp_min(0)
    return (dq * dk).sqrt()
