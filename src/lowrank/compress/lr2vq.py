"""LR^2VQ: vector quantization of weight sub-vectors in a low-rank space ("Learning Low-Rank
Representations for Model Compression", 2022).

Each weight (out x in) is cut into sub-vectors of ``m`` consecutive input weights. A rank-``d``
map (the top ``d`` principal directions of the centred sub-vectors: the training-free start of
the paper's learned map) sends them to ``d`` dimensions, where k-means finds ``k`` centroids
(exact 1-D Lloyd for ``d = 1``; k-means++ seeding and Lloyd iterations otherwise); a
sub-vector is rebuilt as ``mean + basis @ centroid``. Storage (:class:`VQLinear`): the codes
bit-packed at ``ceil(log2 k)`` bits each plus ``k d + m d + m`` values. ``d = m`` is plain
product quantization with one shared codebook. The paper's end-to-end fine-tuning of the map
and codebook is not part of this training-free method. Parameters are unchanged (as for
RTN); bytes shrink.

**Activation-aware** (default when calibration statistics are given): k-means weights the
squared error of input channel ``j`` by ``G_jj`` (G: the layer's input Gram), so its objective
is the output error ``||(W - W')X||_F^2`` with the Gram's off-diagonal part dropped, and the
stored format does not change. (Full whitening would mix input channels and need an
``in x in`` map per layer; quantizing ``W diag(sqrt(G_jj))`` instead, and dividing after,
spreads the values of the loud channels into heavy tails that a shared codebook serves badly:
it measured worse on MiniLM.)

**Rate.** With a byte budget the rate is chosen per matrix: ``bytes_fraction`` of the layer's
dense bytes (weight and bias; the bias stays as is), i.e. ``bytes_fraction * (out * in + bias)
- bias`` values at the layer's dtype for the codes, codebook and map: exactly what a uniform
SVD-LLM factorization at ``keep = bytes_fraction`` stores for that matrix (the rule CoSpaDi
uses); ``bits`` gives the budget in bits per weight instead. Parameters are unchanged, so the
method has no ``keep``. For every sub-vector size ``m`` (1, 2, 4, 8, ... up to ``max_subvector``,
dividing ``in``) and clustering dimension ``d <= m``, the largest ``k`` whose storage fits is
found, and the ``(m, d, k)`` of smallest predicted error is used: the discarded principal
variance ``sum_{i>d} lambda_i`` plus the high-resolution (Zador) k-means distortion
``d G_d 2 pi ((d+2)/d)^((d+2)/2) (prod_{i<=d} lambda_i)^(1/d) k^(-2/d)`` (``G_d`` the normalised
second moment of the best known ``d``-dimensional lattice), capped at the kept variance and
scaled by ``1 - k/N`` (``k = N`` sub-vectors is lossless). A matrix cannot always fill its own
share: once ``k = 2^b`` the next centroid costs one more bit per code. The bytes left unused
then go, greedily, to the matrices where they remove the most predicted squared error per
byte (none above its dense size). The total never exceeds the summed budget and, with a few
dozen matrices, lands within 2% of it (the tests check this against SVD-LLM's bytes at keep
0.8 / 0.6 / 0.4); it stays lower when the remaining slack buys no matrix a step, e.g. every
codebook at its cap (``max_codebook`` for ``d >= 2``, the distinct values for ``d = 1``).
Without ``bytes_fraction``/``bits`` the rate is fixed by ``codebook``/``subvector`` (256 and 4:
2 bits per weight for the codes) and ``d`` is chosen by the same error model unless given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.vq_linear import VQLinear, code_bits, packed_bytes
from ..utils.progress import progress
from .base import (
    METHODS,
    Calibration,
    CompressionConfig,
    MethodOutcome,
    output_error,
    replace_module,
)
from .result import ModuleReport

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


# ---------------------------------------------------------------------------- k-means


def _nearest(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest row of ``c`` for each row of ``x``."""
    c2 = (c * c).sum(1)
    x2 = (x * x).sum(1)
    rows = max(1, (1 << 21) // max(1, c.shape[0]))  # blocks of about 2M distances
    idx, dist = [], []
    for i in range(0, x.shape[0], rows):
        d = torch.addmm(c2, x[i:i + rows], c.T, alpha=-2.0)
        v, j = d.min(1)
        idx.append(j)
        dist.append((v + x2[i:i + rows]).clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def _compander_seeds(xs: torch.Tensor, k: int, ws: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` seeds at equally spaced quantiles of the density ``p^(1/3)`` (the optimal point
    density of a high-resolution scalar quantizer), from a histogram of the sorted values
    ``xs`` (weighted by ``ws``); quantiles of ``p`` itself would leave heavy tails nearly
    unquantized."""
    lo, hi = float(xs[0]), float(xs[-1])
    bins = min(max(8 * k, 4096), 1 << 22)
    width = (hi - lo) / bins
    idx = ((xs - lo) / width).long().clamp_(0, bins - 1)
    mass = torch.zeros(bins, dtype=torch.float64).index_add_(
        0, idx, torch.ones_like(xs) if ws is None else ws.to(xs.dtype))
    weight = mass.pow(1 / 3)
    cum = torch.cumsum(weight, 0)
    targets = (torch.arange(k, dtype=torch.float64) + 0.5) / k * float(cum[-1])
    b = torch.searchsorted(cum, targets).clamp_max(bins - 1)
    before = torch.where(b > 0, cum[(b - 1).clamp_min(0)], torch.zeros_like(targets))
    frac = ((targets - before) / weight[b].clamp_min(1e-300)).clamp(0, 1)
    return torch.unique(lo + (b.to(torch.float64) + frac) * width).to(xs.dtype)


def _kmeans_1d(x: torch.Tensor, k: int, iters: int, w: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (weighted) Lloyd-Max iterations on scalars: with sorted values every cluster is
    an interval, so assignment is a binary search (a point weight does not change which
    centroid is nearest) and the update a weighted segment mean."""
    dtype = x.dtype
    xs, order = torch.sort(x.to(torch.float64))
    ws = None if w is None else w[order].to(torch.float64)
    uniq = torch.unique_consecutive(xs)
    if uniq.numel() <= k:  # every distinct value is its own centroid: lossless
        cent = uniq
        labels_sorted = torch.searchsorted(uniq, xs)
    else:
        cent = _compander_seeds(xs, k, ws)
        if cent.numel() < k:  # repeated values: add distinct values spread over the range
            spare = uniq[~torch.isin(uniq, cent)]
            pick = torch.linspace(0, spare.numel() - 1, k - cent.numel()).round().long()
            cent = torch.sort(torch.cat([cent, spare[pick]])).values
        mass = torch.ones_like(xs) if ws is None else ws
        labels_sorted = None
        for _ in range(max(1, iters)):
            new = torch.searchsorted(0.5 * (cent[1:] + cent[:-1]), xs)
            if labels_sorted is not None and torch.equal(new, labels_sorted):
                break
            labels_sorted = new
            total = torch.zeros_like(cent).index_add_(0, new, mass)
            sums = torch.zeros_like(cent).index_add_(0, new, mass * xs)
            cent = torch.where(total > 0, sums / total.clamp_min(1e-300), cent)
        labels_sorted = torch.searchsorted(0.5 * (cent[1:] + cent[:-1]), xs)
    labels = torch.empty_like(labels_sorted)
    labels[order] = labels_sorted
    return cent[:, None].to(dtype), labels


def _kmeanspp_indices(n: int, k: int, gen: torch.Generator,
                      distance_to: Callable[[list[int]], torch.Tensor]) -> list[int]:
    """k-means++ seeding in batches: ``k`` point indices, each batch drawn with probability
    proportional to the distance to the seeds so far (``distance_to(indices)`` gives every
    point's distance to the seeds built from ``indices``)."""
    first = int(torch.randint(n, (1,), generator=gen))
    chosen = [first]
    best = distance_to([first])
    while len(chosen) < k:
        if float(best.sum()) <= 0:  # every point already coincides with a seed: take unused
            unused = torch.ones(n, dtype=torch.bool)
            unused[chosen] = False
            chosen += unused.nonzero().squeeze(1)[:k - len(chosen)].tolist()
            break
        step = min(k - len(chosen), max(1, len(chosen)), int((best > 0).sum()))
        picks = torch.multinomial(best.cpu().double(), step, replacement=False,
                                  generator=gen).tolist()
        chosen += picks
        best = torch.minimum(best, distance_to(picks))
    return chosen[:k]


def kmeans(points: torch.Tensor, k: int, iters: int = 20, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of ``points`` (N x d); returns ``(centroids (k' x d), labels (N))``.

    ``d = 1``: exact 1-D Lloyd from compander seeds (``k' = min(k, distinct values)``).
    ``d >= 2``: k-means++ seeding (in batches of candidates) and Lloyd iterations
    (``k' = k``). With ``k`` at least the number of distinct points every point is its own
    centroid.
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (number of points), got {k}")
    if points.shape[1] == 1:
        return _kmeans_1d(points[:, 0], k, iters)
    gen = torch.Generator().manual_seed(seed)
    x = points
    chosen = _kmeanspp_indices(n, k, gen, lambda idx: _nearest(x, x[idx])[1])
    cent = x[chosen].clone()
    labels, _ = _nearest(x, cent)
    for _ in range(iters):
        sums = torch.zeros_like(cent).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], cent)
        new_labels, _ = _nearest(x, moved)
        cent = moved
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return cent, labels


def _weighted_nearest(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest row of ``c`` under the per-point diagonal metric ``sum_t w_t (x_t - c_t)^2``."""
    rows = max(1, (1 << 21) // max(1, c.shape[0]))
    idx, dist = [], []
    for i in range(0, x.shape[0], rows):
        xi, wi = x[i:i + rows], w[i:i + rows]
        d = wi @ (c * c).T - 2.0 * (wi * xi) @ c.T
        v, j = d.min(1)
        idx.append(j)
        dist.append((v + (wi * xi * xi).sum(1)).clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def weighted_lowrank_kmeans(x: torch.Tensor, w: torch.Tensor, mean: torch.Tensor,
                            basis: torch.Tensor, k: int, iters: int = 20, seed: int = 0
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of sub-vectors ``x`` (N x m) whose squared error is weighted per coordinate
    by ``w`` (N x m), with centroids ``mean + basis @ z`` on the affine low-rank space;
    returns ``(z (k x d), labels (N))``. Seeding: k-means++ under the weighted distance;
    update: per cluster the weighted least-squares ``z``."""
    n, d = x.shape[0], basis.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (number of points), got {k}")
    gen = torch.Generator().manual_seed(seed)
    centred = x - mean

    def solve(wsum: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        # (B^T diag(wsum_j) B) z_j = B^T rhs_j for every row j
        a = torch.einsum("td,jt,te->jde", basis, wsum, basis)
        a = a + 1e-12 * a.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)[:, None, None] \
            * torch.eye(d, dtype=x.dtype)
        return torch.linalg.solve(a, (rhs @ basis).unsqueeze(-1)).squeeze(-1)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return mean + z @ basis.T

    def seed_distance(idx: list[int]) -> torch.Tensor:
        return _weighted_nearest(x, w, decode(solve(w[idx], w[idx] * centred[idx])))[1]

    chosen = _kmeanspp_indices(n, k, gen, seed_distance)
    z = solve(w[chosen], w[chosen] * centred[chosen])
    labels, _ = _weighted_nearest(x, w, decode(z))
    for _ in range(iters):
        wsum = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, w)
        rhs = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, w * centred)
        used = wsum.sum(1) > 0
        z = torch.where(used[:, None], solve(wsum + (~used)[:, None].to(x.dtype), rhs), z)
        new_labels, _ = _weighted_nearest(x, w, decode(z))
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return z, labels


# ---------------------------------------------------------------------------- rate model


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
            if best is None or _better(rate, best):
                best = rate
    return best


def _better(a: Rate, b: Rate) -> bool:
    """Smaller predicted error (ties, up to rounding: fewer bytes, then smaller d and m)."""
    tol = 1e-9 * max(a.predicted_rel_error, b.predicted_rel_error)
    if abs(a.predicted_rel_error - b.predicted_rel_error) > tol:
        return a.predicted_rel_error < b.predicted_rel_error
    return (a.bytes, a.dim, a.subvector) < (b.bytes, b.dim, b.subvector)


def best_dim(weight: torch.Tensor, subvector: int, codebook: int) -> int:
    """The clustering dimension of smallest predicted error at a fixed ``(m, k)``."""
    n = weight.numel() // subvector
    spectrum = subvector_spectrum(weight, subvector)
    errors = [predicted_error(spectrum, d, min(codebook, n), n) for d in range(1, subvector + 1)]
    least = min(errors)
    return 1 + next(i for i, e in enumerate(errors) if e <= least * (1 + 1e-9) + 1e-300)


def channel_importance(gram: torch.Tensor) -> torch.Tensor:
    """``G_jj / mean(G_jj)`` (floored at 1e-6: inputs that never fire), the weight of input
    channel ``j``'s squared error in the output error with the Gram's off-diagonal dropped."""
    diag = gram.diagonal().to(torch.float64).clamp_min(0)
    mean = float(diag.mean())
    if mean <= 0:
        return torch.ones_like(diag)
    return (diag / mean).clamp_min(1e-6)


def vq_fit(weight: torch.Tensor, codebook: int, subvector: int, dim: int, iters: int = 20,
           seed: int = 0, importance: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, centroids, basis, mean)`` of LR^2VQ for ``weight`` (out x in).

    ``importance`` (in): weights of each input channel's squared error (activation-aware
    k-means, :func:`channel_importance`); None: plain squared error. The codebook may come
    out smaller than ``codebook`` for scalar (``m = d = 1``) codes when the weight has fewer
    distinct values."""
    out_f, in_f = weight.shape
    if in_f % subvector:
        raise ValueError(f"in_features={in_f} is not a multiple of subvector={subvector}")
    if not 1 <= dim <= subvector:
        raise ValueError(f"dim must be in [1, subvector={subvector}], got {dim}")
    vecs = weight.reshape(-1, subvector).to(torch.float64)
    mean = vecs.mean(0)
    centred = vecs - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    basis = vectors.flip(1)[:, :dim]  # (m, d): top principal directions, orthonormal
    z = centred @ basis
    k = min(codebook, vecs.shape[0])
    if importance is None:
        cent, labels = kmeans(z, k, iters=iters, seed=seed)
        return labels, cent, basis, mean
    if importance.shape != (in_f,):
        raise ValueError(f"importance must have in_features={in_f} entries, got "
                         f"{tuple(importance.shape)}")
    w = importance.to(vecs).reshape(1, -1, subvector).expand(out_f, -1, -1)
    w = w.reshape(-1, subvector)
    if subvector == 1:  # scalar codes: the weighted 1-D Lloyd is exact and fast
        cent, labels = _kmeans_1d(z[:, 0], k, iters, w[:, 0])
    else:
        cent, labels = weighted_lowrank_kmeans(vecs, w, mean, basis, k, iters, seed)
    return labels, cent, basis, mean


# ---------------------------------------------------------------------------- the method


def _check_int(name: str, value: object, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}{' or None' if allow_none else ''}, "
                          f"got {value!r}")


@METHODS.register
@dataclass
class LR2VQ(CompressionConfig):
    """Low-rank sub-vector projection + k-means vector quantization (see module docstring)."""

    method: ClassVar[str] = "lr2vq"
    version: ClassVar[int] = 2  # 2: the byte budget is 'bytes_fraction' (was 'keep')

    bytes_fraction: float | None = field(default=None, metadata={
        "help": "byte budget: fraction of each layer's dense bytes (weight and bias) that "
                "remain, the bytes uniform SVD-LLM stores at keep=bytes_fraction; m, d, k are "
                "chosen per matrix"})
    bits: float | None = field(default=None, metadata={
        "help": "byte budget in bits per weight (codes + codebook + map), instead of "
                "bytes_fraction"})
    codebook: int | None = field(default=None, metadata={
        "help": "centroids k per matrix (codes of ceil(log2 k) bits); default 256 at a fixed "
                "rate; with a byte budget an upper bound"})
    subvector: int | None = field(default=None, metadata={
        "help": "sub-vector length m (consecutive input weights, must divide in_features); "
                "default 4 at a fixed rate, chosen per matrix with a byte budget"})
    dim: int | None = field(default=None, metadata={
        "help": "clustering dimension d (1 <= d <= m); default: the d of smallest predicted "
                "error"})
    max_subvector: int = field(default=8, metadata={
        "help": "largest m tried with a byte budget (powers of two up to it)"})
    max_codebook: int = field(default=65536, metadata={
        "help": "largest k of vector (d >= 2) codebooks tried with a byte budget; scalar (d = 1) "
                "codebooks use exact 1-D k-means and may grow to the number of sub-vectors"})
    iters: int = field(default=20, metadata={"help": "Lloyd iterations of k-means"})
    activation_aware: bool = field(default=True, metadata={
        "help": "with calibration statistics, weight each input channel's squared error by "
                "G_jj in k-means (the output error with the Gram's off-diagonal dropped)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("codebook", self.codebook, 1, allow_none=True)
        _check_int("subvector", self.subvector, 1, allow_none=True)
        _check_int("dim", self.dim, 1, allow_none=True)
        _check_int("max_subvector", self.max_subvector, 1)
        _check_int("max_codebook", self.max_codebook, 2)
        _check_int("iters", self.iters, 0)
        largest = self.subvector or (self.max_subvector if self.budgeted else 4)
        if self.dim is not None and self.dim > largest:
            raise ConfigError(f"dim must be an int in [1, subvector={largest}], got "
                              f"{self.dim}")
        if self.bytes_fraction is not None and self.bits is not None:
            raise ConfigError(f"give bytes_fraction or bits, not both (got bytes_fraction="
                              f"{self.bytes_fraction}, bits={self.bits})")
        if self.bytes_fraction is not None:
            if isinstance(self.bytes_fraction, bool) or not isinstance(
                    self.bytes_fraction, (int, float)) or not 0 < float(self.bytes_fraction) <= 1:
                raise ConfigError(f"bytes_fraction must be a number in (0, 1] or None, got "
                                  f"{self.bytes_fraction!r}")
            self.bytes_fraction = float(self.bytes_fraction)
        if self.bits is not None:
            if isinstance(self.bits, bool) or not isinstance(self.bits, (int, float)) \
                    or not self.bits > 0:
                raise ConfigError(f"bits (per weight) must be a number > 0 or None, got "
                                  f"{self.bits!r}")
            self.bits = float(self.bits)
        if not isinstance(self.activation_aware, bool):
            raise ConfigError(f"activation_aware must be a bool, got {self.activation_aware!r}")

    @classmethod
    def upgrade(cls, fields: dict[str, Any], version: int) -> dict[str, Any]:
        fields = dict(fields)
        if "keep" in fields:  # version 1: keep meant this byte budget
            fields["bytes_fraction"] = fields.pop("keep")
        return fields

    @property
    def budgeted(self) -> bool:
        return self.bytes_fraction is not None or self.bits is not None

    def budget_bytes(self, out_f: int, in_f: int, bias: bool, value_bytes: int) -> float:
        """The byte budget of one matrix's weight (bias excluded, it stays as is)."""
        if self.bits is not None:
            return self.bits * out_f * in_f / 8
        extra = out_f if bias else 0
        return (self.bytes_fraction * (out_f * in_f + extra) - extra) * value_bytes

    def rate_for(self, weight: torch.Tensor, bias: bool, value_bytes: int,
                 budget: float | None = None, spectra: dict[int, torch.Tensor] | None = None
                 ) -> Rate | None:
        """The configuration of one matrix (``weight`` in the geometry of the error: its
        columns times ``sqrt`` of their importance when activation-aware), within ``budget``
        bytes (default: :meth:`budget_bytes`) when budgeted."""
        out_f, in_f = weight.shape
        if not self.budgeted:
            m = self.subvector or 4
            if in_f % m:
                return None
            n = out_f * in_f // m
            k = min(self.codebook or 256, n)
            d = self.dim or best_dim(weight, m, k)
            spectrum = subvector_spectrum(weight, m)
            total = float(weight.to(torch.float64).pow(2).sum()) or 1.0
            rel = math.sqrt(predicted_error(spectrum, d, k, n) * n / total)
            return Rate(m, d, k, storage_bytes(out_f, in_f, m, d, k, value_bytes), rel)
        if self.subvector is not None:
            subvectors = [self.subvector]
        else:
            subvectors = [2 ** i for i in range(int(math.log2(self.max_subvector)) + 1)]
        if budget is None:
            budget = self.budget_bytes(out_f, in_f, bias, value_bytes)
        return choose_rate(weight, budget, value_bytes, subvectors=subvectors,
                           dims=None if self.dim is None else [self.dim],
                           max_codebook=self.max_codebook, codebook_cap=self.codebook,
                           spectra=spectra)

    def spread_slack(self, items: list[dict]) -> float:
        """Give the bytes that the per-matrix choices leave unused to the matrices where
        they buy the most: a matrix whose codebook is full for its code width (``k = 2^b``)
        needs one more bit per code to grow, more than its own slack. Greedy on the
        predicted squared error (relative, times the matrix size) removed per byte, no matrix
        above its dense size; returns the slack left. ``items``: dicts with ``geometry``,
        ``bias``, ``vbytes``, ``budget``, ``rate`` (updated in place) and ``spectra``."""
        live = [it for it in items if it["rate"] is not None]
        slack = sum(it["budget"] - it["rate"].bytes for it in live)
        while slack > 0:
            best, best_gain = None, 0.0
            for it in live:
                old = it["rate"]
                dense = it["geometry"].numel() * it["vbytes"]  # never above the dense size
                new = self.rate_for(it["geometry"], it["bias"], it["vbytes"],
                                    budget=min(old.bytes + slack, dense), spectra=it["spectra"])
                if new is None or new.bytes <= old.bytes or not _better(new, old):
                    continue
                gain = (old.predicted_rel_error ** 2 - new.predicted_rel_error ** 2) \
                    * it["geometry"].numel() / (new.bytes - old.bytes)
                if gain > best_gain:
                    best, best_gain = (it, new), gain
            if best is None:
                break
            it, new = best
            slack -= new.bytes - it["rate"].bytes
            it["rate"] = new
        return slack

    def apply(self, model: nn.Module, modules: dict[str, nn.Module],
              calib: Calibration) -> MethodOutcome:
        stats = calib.stats
        items = []
        for name, lin in modules.items():  # pass 1: the rate of every matrix
            weight = lin.weight.detach().to(torch.float64)
            out_f, in_f = weight.shape
            gram = None
            if stats is not None and name in stats.module_site:
                gram = stats.site(name).gram.to(torch.float64)
            importance = channel_importance(gram).to(weight.device) \
                if self.activation_aware and gram is not None else None
            it = {"name": name, "lin": lin, "weight": weight, "gram": gram,
                  "importance": importance, "bias": lin.bias is not None,
                  "vbytes": lin.weight.element_size(), "spectra": {},
                  "geometry": weight if importance is None else weight * importance.sqrt()}
            if self.budgeted:
                it["budget"] = self.budget_bytes(out_f, in_f, it["bias"], it["vbytes"])
            it["rate"] = self.rate_for(it["geometry"], it["bias"], it["vbytes"],
                                       spectra=it["spectra"])
            items.append(it)
        slack = self.spread_slack(items) if self.budgeted else None

        reports = []
        bytes_before = bytes_after = 0
        target_total = 0.0
        for it in progress(items, "lr2vq", quiet=True):  # pass 2: k-means
            name, lin, weight, rate = it["name"], it["lin"], it["weight"], it["rate"]
            out_f, in_f = weight.shape
            vbytes = it["vbytes"]
            params = out_f * in_f + (out_f if it["bias"] else 0)
            b_before = sum(p.numel() * p.element_size() for p in lin.parameters())
            notes: dict = {"bytes_before": b_before,
                           "activation_aware": it["importance"] is not None}
            if self.budgeted:
                notes["target_bytes"] = it["budget"] + (out_f * vbytes if it["bias"] else 0)
                target_total += notes["target_bytes"]
            if rate is None:
                approx = weight
                notes["left_dense"] = ("in_features not a multiple of subvector"
                                       if not self.budgeted else "no codebook fits the budget")
                notes.update(bytes_after=b_before, bits_per_weight=8.0 * vbytes)
            else:
                codes, cent, basis, mean = vq_fit(weight, rate.codebook, rate.subvector,
                                                  rate.dim, self.iters, self.seed,
                                                  it["importance"])
                dt, dev = lin.weight.dtype, lin.weight.device
                new = VQLinear.from_parts(codes, cent.to(dt), basis.to(dt), mean.to(dt), out_f,
                                          in_f, None if lin.bias is None else lin.bias.detach())
                new = new.to(dev)
                approx = new.dense_weight().detach().to(torch.float64)
                notes.update(codebook=new.codebook, subvector=rate.subvector, dim=rate.dim,
                             code_bits=new.code_bits(),
                             bits_per_weight=new.bits_per_weight(8 * vbytes),
                             bytes_after=new.num_bytes(),
                             predicted_rel_error=rate.predicted_rel_error)
                replace_module(model, name, new)
            bytes_before += b_before
            bytes_after += notes["bytes_after"]
            gram = it["gram"]
            out_err = None if gram is None else output_error(weight, approx, gram)
            w_err = float((weight - approx).norm() / weight.norm().clamp_min(1e-300))
            reports.append(ModuleReport(
                name=name, out_features=out_f, in_features=in_f, rank=None,
                params_before=params, params_after=params, rel_output_error=out_err,
                rel_weight_error=w_err, energy_kept=max(0.0, 1.0 - w_err ** 2), notes=notes))
        total = sum(r.params_before for r in reports)
        allocation = {"bytes_fraction": self.bytes_fraction, "bits": self.bits,
                      "bytes_before": bytes_before,
                      "bytes_after": bytes_after,
                      "rates": {r.name: [r.notes.get("subvector"), r.notes.get("dim"),
                                         r.notes.get("codebook")] for r in reports}}
        if self.budgeted:
            allocation.update(target_bytes=target_total, unused_bytes=slack)
        return MethodOutcome(reports, allocation, None, total, total)
