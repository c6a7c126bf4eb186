"""The LR^2VQ rate model: which ``(m, d, k)`` a matrix gets for a byte budget.

For sub-vectors of ``m`` weights whose covariance has eigenvalues ``lambda_1 >= lambda_2 >=
...``, clustering in the top ``d`` principal directions with ``k`` centroids is predicted to
leave the discarded principal variance ``sum_{i>d} lambda_i`` plus the high-resolution (Zador)
k-means distortion ``d G_d 2 pi ((d+2)/d)^((d+2)/2) (prod_{i<=d} lambda_i)^(1/d) k^(-2/d)``
(``G_d`` the normalised second moment of the best known ``d``-dimensional lattice, Conway &
Sloane), capped at the kept variance and scaled by ``1 - k/N`` (``k = N`` sub-vectors is
lossless). The storage of a :class:`~lowrank.nn.vq_linear.VQLinear` (bit-packed codes plus
``k d + m d + m`` values) is exact; for every ``m`` and ``d`` the largest ``k`` that fits the
budget is found and the configuration of smallest predicted error is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..nn.vq_linear import code_bits, packed_bytes

#: Normalised second moments of the best known lattice quantizers in dimensions 1..16
#: (Conway & Sloane, "Sphere Packings, Lattices and Groups", table 2.3; interpolated where
#: the table has no entry). They enter only the predicted error used to choose the rate.
_LATTICE_G = {1: 0.083333, 2: 0.080188, 3: 0.078543, 4: 0.076603, 5: 0.075625, 6: 0.074244,
              7: 0.073116, 8: 0.071682, 12: 0.070100, 16: 0.068299}


def lattice_moment(d: int) -> float:
    """``G_d`` (linear interpolation between the tabulated dimensions; 1/(2 pi e) beyond)."""
    if d in _LATTICE_G:
        return _LATTICE_G[d]
    dims = sorted(_LATTICE_G)
    if d > dims[-1]:
        return 1 / (2 * math.pi * math.e)
    lo = max(x for x in dims if x < d)
    hi = min(x for x in dims if x > d)
    t = (d - lo) / (hi - lo)
    return (1 - t) * _LATTICE_G[lo] + t * _LATTICE_G[hi]


def subvector_spectrum(weight: torch.Tensor, subvector: int) -> torch.Tensor:
    """Eigenvalues (descending) of the covariance of the sub-vectors of ``weight``."""
    vecs = weight.reshape(-1, subvector).to(torch.float64)
    centred = vecs - vecs.mean(0)
    return torch.linalg.eigvalsh(centred.T @ centred / vecs.shape[0]).flip(0).clamp_min(0)


def predicted_error(spectrum: torch.Tensor, dim: int, codebook: int, count: int) -> float:
    """Predicted mean squared error per sub-vector of LR^2VQ at ``(d, k)`` on ``count``
    sub-vectors whose covariance has eigenvalues ``spectrum`` (see the module docstring)."""
    lam = spectrum.to(torch.float64)
    residual = float(lam[dim:].sum())
    # directions without variance cost nothing: the points fill only the others
    top = float(lam.max()) if lam.numel() else 0.0
    kept = lam[:dim]
    kept = kept[kept > 1e-12 * top] if top > 0 else kept[:0]
    if kept.numel() == 0:
        return residual
    e = kept.numel()
    geo = float(torch.exp(torch.log(kept).mean()))
    zador = e * lattice_moment(e) * 2 * math.pi * ((e + 2) / e) ** ((e + 2) / 2)
    cluster = min(float(kept.sum()), zador * geo * codebook ** (-2.0 / e))
    return residual + cluster * max(0.0, 1.0 - codebook / count)


def storage_bytes(out_features: int, in_features: int, subvector: int, dim: int,
                  codebook: int, value_bytes: int) -> int:
    """Bytes of a :class:`VQLinear` weight (bias excluded): packed codes + values."""
    n = out_features * in_features // subvector
    values = codebook * dim + subvector * dim + subvector
    return packed_bytes(n, code_bits(codebook)) + value_bytes * values


def largest_codebook(out_features: int, in_features: int, subvector: int, dim: int,
                     budget: float, value_bytes: int, limit: int) -> int:
    """Largest ``k <= limit`` whose storage fits ``budget`` bytes (0 if none, k >= 2)."""
    def cost(k: int) -> int:
        return storage_bytes(out_features, in_features, subvector, dim, k, value_bytes)

    if limit < 2 or cost(2) > budget:
        return 0
    lo, hi = 2, limit  # storage grows with k: bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class Rate:
    """One matrix's LR^2VQ configuration and its predicted relative error."""

    subvector: int
    dim: int
    codebook: int
    bytes: int
    predicted_rel_error: float

    def better_than(self, other: Rate) -> bool:
        """Smaller predicted error (ties, up to rounding: fewer bytes, then smaller d and m)."""
        tol = 1e-9 * max(self.predicted_rel_error, other.predicted_rel_error)
        if abs(self.predicted_rel_error - other.predicted_rel_error) > tol:
            return self.predicted_rel_error < other.predicted_rel_error
        return (self.bytes, self.dim, self.subvector) < (other.bytes, other.dim, other.subvector)


def fixed_rate(weight: torch.Tensor, subvector: int, codebook: int, dim: int | None,
               value_bytes: int) -> Rate | None:
    """The rate at a fixed ``(m, k)`` (``k`` capped at the number of sub-vectors; ``d`` of
    smallest predicted error unless given); None if ``m`` does not divide the columns."""
    out_f, in_f = weight.shape
    if in_f % subvector:
        return None
    n = out_f * in_f // subvector
    k = min(codebook, n)
    d = dim or best_dim(weight, subvector, k)
    spectrum = subvector_spectrum(weight, subvector)
    total = float(weight.to(torch.float64).pow(2).sum()) or 1.0
    rel = math.sqrt(predicted_error(spectrum, d, k, n) * n / total)
    return Rate(subvector, d, k, storage_bytes(out_f, in_f, subvector, d, k, value_bytes), rel)


def choose_rate(weight: torch.Tensor, budget: float, value_bytes: int, *,
                subvectors: list[int], dims: list[int] | None = None,
                max_codebook: int = 65536, codebook_cap: int | None = None,
                spectra: dict[int, torch.Tensor] | None = None) -> Rate | None:
    """The ``(m, d, k)`` of smallest predicted error whose storage fits ``budget`` bytes;
    None if nothing fits. ``weight`` is the matrix in the geometry of the error (activation
    aware: its columns times ``sqrt`` of their importance); ``spectra`` caches its
    :func:`subvector_spectrum` per ``m``."""
    out_f, in_f = weight.shape
    total = float(weight.to(torch.float64).pow(2).sum()) or 1.0
    spectra = {} if spectra is None else spectra
    best = None
    for m in subvectors:
        if in_f % m:
            continue
        n = out_f * in_f // m
        if m not in spectra:
            spectra[m] = subvector_spectrum(weight, m)
        spectrum = spectra[m]
        for d in dims or range(1, m + 1):
            if d > m:
                continue
            limit = n if d == 1 else min(n, max_codebook)
            if codebook_cap is not None:
                limit = min(limit, codebook_cap)
            k = largest_codebook(out_f, in_f, m, d, budget, value_bytes, limit)
            if k < 2:
                continue
            rel = math.sqrt(predicted_error(spectrum, d, k, n) * n / total)
            rate = Rate(m, d, k, storage_bytes(out_f, in_f, m, d, k, value_bytes), rel)
            if best is None or rate.better_than(best):
                best = rate
    return best


def best_dim(weight: torch.Tensor, subvector: int, codebook: int) -> int:
    """The clustering dimension of smallest predicted error at a fixed ``(m, k)``."""
    n = weight.numel() // subvector
    spectrum = subvector_spectrum(weight, subvector)
    errors = [predicted_error(spectrum, d, min(codebook, n), n) for d in range(1, subvector + 1)]
    least = min(errors)
    return 1 + next(i for i, e in enumerate(errors) if e <= least * (1 + 1e-9) + 1e-300)
