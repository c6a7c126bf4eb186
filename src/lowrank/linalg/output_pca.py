"""Output moments and output-feature PCA (spec §10 LoRD, §11 AFM, §15.2 ``output_pca``).

For a linear layer ``y = W x + b`` the output moments follow from the input statistics that
calibration already sums (Gram ``G = sum x x^T``, ``s = sum x``, token count ``N``):

* ``sum y = W s + N b``;
* ``sum y y^T = W G W^T + W s b^T + b s^T W^T + N b b^T``;
* the output covariance ``Sigma_y = W Sigma_x W^T`` with ``Sigma_x = G/N - xbar xbar^T``
  (the bias only shifts the mean).

So output-side methods need no hooks on the outputs. Everything here is float64 and pure.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..utils.checks import check_int


class OutputMoments(NamedTuple):
    """``E[y y^T]`` (m x m) and ``E[y]`` (m) over the calibration tokens."""

    second: torch.Tensor
    mean: torch.Tensor

    @property
    def covariance(self) -> torch.Tensor:
        """``E[y y^T] - E[y] E[y]^T`` (loses precision when the mean dominates; prefer
        :func:`output_covariance`, which centres the inputs first)."""
        return self.second - torch.outer(self.mean, self.mean)


class PCA(NamedTuple):
    """Eigenvalues (descending, clamped at 0) and matching eigenvectors (columns), float64."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor


def _check(weight: torch.Tensor, gram: torch.Tensor, xsum: torch.Tensor, tokens: int) -> None:
    n = weight.shape[1]
    if weight.ndim != 2 or gram.shape != (n, n) or xsum.shape != (n,):
        raise ValueError(f"shapes do not fit: weight {tuple(weight.shape)} (out x in) needs "
                         f"gram ({n}, {n}) and input sum ({n},), got {tuple(gram.shape)} and "
                         f"{tuple(xsum.shape)}")
    if tokens <= 0:
        raise ValueError(f"output moments need a positive token count, got {tokens}")


def output_moments(weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor,
                   xsum: torch.Tensor, tokens: int) -> OutputMoments:
    """``E[y y^T]`` and ``E[y]`` of ``y = W x + b`` from ``G = sum x x^T``, ``s = sum x``, N."""
    _check(weight, gram, xsum, tokens)
    W = weight.to(torch.float64)
    G = gram.to(W.device, torch.float64)
    s = xsum.to(W.device, torch.float64)
    Ws = W @ s
    second = W @ G @ W.T
    total = Ws.clone()
    if bias is not None:
        b = bias.to(W.device, torch.float64)
        cross = torch.outer(Ws, b)
        second = second + cross + cross.T + tokens * torch.outer(b, b)
        total = total + tokens * b
    second = 0.5 * (second + second.T)
    return OutputMoments(second / tokens, total / tokens)


def output_covariance(weight: torch.Tensor, gram: torch.Tensor, xsum: torch.Tensor,
                      tokens: int) -> torch.Tensor:
    """``Sigma_y = W (G/N - xbar xbar^T) W^T`` (m x m, float64), independent of the bias."""
    _check(weight, gram, xsum, tokens)
    W = weight.to(torch.float64)
    mean = xsum.to(W.device, torch.float64) / tokens
    cov_x = gram.to(W.device, torch.float64) / tokens - torch.outer(mean, mean)
    cov = W @ cov_x @ W.T
    return 0.5 * (cov + cov.T)


def output_pca(matrix: torch.Tensor, k: int | None = None) -> PCA:
    """Top-``k`` (default: all) eigenpairs of a symmetric PSD matrix (covariance or second
    moment), eigenvalues descending; negative round-off eigenvalues are clamped to 0."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"output_pca expects a square matrix, got shape {tuple(matrix.shape)}")
    m = matrix.shape[0]
    k = m if k is None else check_int("k", k, 0, m)
    sym = matrix.to(torch.float64)
    if not torch.isfinite(sym).all():
        raise ValueError("output_pca: the matrix has non-finite entries")
    lam, vec = torch.linalg.eigh(0.5 * (sym + sym.T))
    lam, vec = lam.flip(0), vec.flip(1)
    return PCA(lam[:k].clamp_min(0), vec[:, :k])


def weighted_row_moments(rows: torch.Tensor, weights: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean (d) and covariance (d x d) of the rows of ``rows`` (V x d), float64.

    ``weights`` (V, non-negative, not all zero) are normalised to sum to one; this is the
    distribution of looked-up rows of an embedding table under token frequencies ``weights``.
    """
    if rows.ndim != 2 or weights.shape != (rows.shape[0],):
        raise ValueError(f"weights must have one entry per row: rows {tuple(rows.shape)}, "
                         f"weights {tuple(weights.shape)}")
    w = weights.to(rows.device, torch.float64)
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("weights must be non-negative and not all zero")
    w = w / w.sum()
    E = rows.to(torch.float64)
    mean = w @ E
    centred = E - mean
    cov = (centred * w[:, None]).T @ centred
    return mean, 0.5 * (cov + cov.T)


def affine_output_error(weight: torch.Tensor, approx: torch.Tensor, bias_shift: torch.Tensor,
                        gram: torch.Tensor, xsum: torch.Tensor, tokens: int) -> float:
    """``||(W X + b 1^T) - (W' X + b' 1^T)||_F / ||W X||_F`` from input statistics.

    ``bias_shift = b - b'``. The denominator is the one of
    :func:`lowrank.compress.base.output_error`, so the two agree when the bias is unchanged
    and errors of methods that move the bias (AFM) compare with those that do not.
    """
    _check(weight, gram, xsum, tokens)
    W = weight.to(torch.float64)
    G = gram.to(W.device, torch.float64)
    delta = W - approx.to(W.device, torch.float64)
    db = bias_shift.to(W.device, torch.float64)
    num = (torch.einsum("ij,jk,ik->", delta, G, delta)
           + 2 * db @ (delta @ xsum.to(W.device, torch.float64)) + tokens * db @ db)
    den = torch.einsum("ij,jk,ik->", W, G, W).clamp_min(1e-300)
    return float((num.clamp_min(0) / den).sqrt())
