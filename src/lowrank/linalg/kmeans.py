"""k-means: exact 1-D Lloyd-Max, k-means++ with Lloyd iterations, and a weighted k-means whose
centroids lie on an affine low-rank space.

Seeding is k-means++ (Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding",
SODA 2007), drawn in batches; scalar codes use the exact Lloyd-Max iteration (Lloyd 1982;
Max 1960) from compander seeds (the ``p^(1/3)`` point density of high-resolution scalar
quantization, Panter & Dite 1951).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..utils.checks import check_int

__all__ = ["kmeans", "kmeans_1d", "weighted_lowrank_kmeans"]


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


def kmeans_1d(x: torch.Tensor, k: int, iters: int, w: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (weighted) Lloyd-Max iterations on the scalars ``x`` (N), point weights ``w``
    (N) or None; returns ``(centroids (k' x 1), labels (N))`` with ``k' = min(k, distinct
    values)``. With sorted values every cluster is an interval, so assignment is a binary
    search (a point weight does not change which centroid is nearest) and the update a
    weighted segment mean."""
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
    check_int("k (centroids)", k, 1, n)
    if points.shape[1] == 1:
        return kmeans_1d(points[:, 0], k, iters)
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


def weighted_lowrank_kmeans(x: torch.Tensor, w: torch.Tensor, mean: torch.Tensor,
                            basis: torch.Tensor, k: int, iters: int = 20, seed: int = 0
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the points ``x`` (N x m) whose squared error is weighted per coordinate by
    ``w`` (N x m), with centroids ``mean + basis @ z`` on the affine low-rank space; returns
    ``(z (k x d), labels (N))``. Seeding: k-means++ under the weighted distance; update: per
    cluster the weighted least-squares ``z``."""
    n, d = x.shape[0], basis.shape[1]
    check_int("k (centroids)", k, 1, n)
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
