"""k-means: cluster recovery, the exact 1-D Lloyd, the weighted low-rank variant, bad k."""

from __future__ import annotations

import pytest
import torch

from lowrank.errors import ConfigError
from lowrank.linalg.kmeans import kmeans, kmeans_1d, weighted_lowrank_kmeans


def _blobs(rng, k=5, per=40, dim=3):
    centres = 20 * torch.randn(k, dim, generator=rng, dtype=torch.float64)
    points = centres.repeat_interleave(per, 0) + 0.01 * torch.randn(k * per, dim, generator=rng,
                                                                    dtype=torch.float64)
    return centres, points, torch.arange(k).repeat_interleave(per)


def _same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_separated_clusters(rng):
    centres, points, truth = _blobs(rng)
    cent, labels = kmeans(points, 5, seed=1)
    assert _same_partition(labels, truth)
    assert torch.allclose(cent[labels], centres[truth], atol=0.05)


def test_kmeans_is_deterministic_per_seed(rng):
    points = torch.randn(300, 2, generator=rng, dtype=torch.float64)
    a, b = kmeans(points, 8, seed=4), kmeans(points, 8, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_kmeans_1d_is_lossless_with_enough_centroids(rng):
    x = torch.randint(0, 6, (200,), generator=rng).to(torch.float64)
    cent, labels = kmeans_1d(x, 10, iters=20)
    assert cent.shape == (6, 1)  # k' = the distinct values
    assert torch.equal(cent[labels, 0], x)


def test_kmeans_1d_point_weights_pull_the_centroid():
    x = torch.tensor([0.0, 1.0, 10.0, 11.0], dtype=torch.float64)
    plain, _ = kmeans_1d(x, 2, iters=20)
    heavy, labels = kmeans_1d(x, 2, iters=20, w=torch.tensor([1.0, 100.0, 1.0, 1.0]))
    assert labels.tolist() == [0, 0, 1, 1]
    assert plain[:, 0].tolist() == pytest.approx([0.5, 10.5])
    assert heavy[:, 0].tolist() == pytest.approx([100 / 101, 10.5])


def test_weighted_lowrank_kmeans_with_unit_weights_and_full_basis(rng):
    _, points, truth = _blobs(rng, dim=2)
    mean = points.mean(0)
    z, labels = weighted_lowrank_kmeans(points, torch.ones_like(points), mean,
                                        torch.eye(2, dtype=torch.float64), 5, seed=1)
    assert _same_partition(labels, truth)
    assert z.shape == (5, 2)


def test_weighted_lowrank_kmeans_ignores_zero_weight_coordinates(rng):
    """A coordinate of weight ~0 does not affect the clustering: clusters differ only in the
    first coordinate, the second is loud noise."""
    _, points, truth = _blobs(rng, k=3, dim=1)
    noisy = torch.cat([points, 100 * torch.randn(points.shape[0], 1, generator=rng,
                                                 dtype=torch.float64)], 1)
    w = torch.tensor([[1.0, 1e-9]], dtype=torch.float64).expand_as(noisy)
    _, labels = weighted_lowrank_kmeans(noisy, w, noisy.mean(0), torch.eye(2, dtype=torch.float64),
                                        3, seed=0)
    assert _same_partition(labels, truth)


@pytest.mark.parametrize("k", [0, 11, 2.0, True])
def test_k_outside_the_points_is_refused(k):
    points = torch.randn(10, 2, dtype=torch.float64)
    with pytest.raises(ConfigError, match="k"):
        kmeans(points, k)
    with pytest.raises(ConfigError, match="k"):
        weighted_lowrank_kmeans(points, torch.ones_like(points), points.mean(0),
                                torch.eye(2, dtype=torch.float64), k)
