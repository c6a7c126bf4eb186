"""Mixture of low-rank Gaussians (MoLRG), its optimal denoiser and subspace clustering.

Wang, Zhang, Zhang, Chen, Ma, Qu, "Diffusion Models Learn Low-Dimensional Distributions via
Subspace Clustering" (arXiv 2409.02426). Data ``x = U_k a`` with ``a ~ N(0, I_d)``, orthonormal
``U_k`` (n x d) and ``k ~ pi``. For ``x_t = x + sigma eps`` the posterior mean is a soft-gated
sum of rank-d projections,
``E[x | x_t] = sum_k w_k(x_t) U_k U_k^T x_t / (1 + sigma^2)`` with
``w_k ∝ pi_k exp(||U_k^T x_t||^2 / (2 sigma^2 (1 + sigma^2)))``; training such a denoiser on
samples is subspace clustering, and the samples needed grow linearly with ``K d``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


def random_bases(n: int, d: int, k: int, rng: np.random.Generator | int = 0) -> np.ndarray:
    """``k`` random orthonormal bases, shape (k, n, d)."""
    if d > n:
        raise ConfigError(f"subspace dimension d={d} exceeds the ambient dimension n={n}")
    rng = np.random.default_rng(rng)
    return np.stack([np.linalg.qr(rng.standard_normal((n, d)))[0] for _ in range(k)])


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))


@dataclass
class MoLRG:
    """Mixture of low-rank Gaussians with bases ``U`` (K, n, d) and mixing weights ``pi``."""

    bases: np.ndarray
    pi: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.bases = np.asarray(self.bases, dtype=np.float64)
        if self.bases.ndim != 3:
            raise ConfigError(f"bases must have shape (K, n, d), got {self.bases.shape}")
        k = self.bases.shape[0]
        self.pi = np.full(k, 1.0 / k) if self.pi is None else np.asarray(self.pi, float)
        if self.pi.shape != (k,) or np.any(self.pi < 0) or not np.isclose(self.pi.sum(), 1):
            raise ConfigError(f"pi must be {k} non-negative weights summing to 1, got {self.pi}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.bases.shape  # type: ignore[return-value]

    def sample(self, num: int, rng: np.random.Generator | int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
        """``num`` samples (num, n) and their component labels."""
        rng = np.random.default_rng(rng)
        k, _, d = self.shape
        labels = rng.choice(k, size=num, p=self.pi)
        a = rng.standard_normal((num, d))
        return np.einsum("mnd,md->mn", self.bases[labels], a), labels

    def posterior_weights(self, xt: np.ndarray, sigma: float) -> np.ndarray:
        """``w_k(x_t)`` (m, K): softmax of ``log pi_k + ||U_k^T x_t||^2 / (2 s^2 (1 + s^2))``."""
        proj = np.einsum("knd,mn->mkd", self.bases, np.atleast_2d(xt))
        logits = np.log(self.pi)[None] + (proj ** 2).sum(-1) / (2 * sigma**2 * (1 + sigma**2))
        return np.exp(logits - _logsumexp(logits, 1))

    def denoise(self, xt: np.ndarray, sigma: float) -> np.ndarray:
        """The optimal (MMSE) denoiser ``E[x | x_t]`` for noise level ``sigma``, shape (m, n)."""
        xt = np.atleast_2d(xt)
        w = self.posterior_weights(xt, sigma)
        proj = np.einsum("knd,mn->mkd", self.bases, xt)
        back = np.einsum("knd,mkd->mkn", self.bases, proj) / (1 + sigma**2)
        return (w[..., None] * back).sum(1)

    def logpdf_noisy(self, xt: np.ndarray, sigma: float) -> np.ndarray:
        """``log p(x_t)`` of the noised mixture (covariances ``U_k U_k^T + sigma^2 I``)."""
        xt = np.atleast_2d(xt)
        k, n, d = self.shape
        proj = (np.einsum("knd,mn->mkd", self.bases, xt) ** 2).sum(-1)
        quad = ((xt ** 2).sum(1)[:, None] - proj / (1 + sigma**2)) / sigma**2
        logdet = d * np.log(1 + sigma**2) + (n - d) * np.log(sigma**2)
        comp = np.log(self.pi)[None] - 0.5 * (quad + logdet + n * np.log(2 * np.pi))
        return _logsumexp(comp, 1)[:, 0]


def principal_angles(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Principal angles (radians) between the column spans of orthonormal ``u`` and ``v``."""
    s = np.linalg.svd(u.T @ v, compute_uv=False)
    return np.arccos(np.clip(s, -1.0, 1.0))


def subspace_recovery_error(est: np.ndarray, true: np.ndarray) -> float:
    """Worst principal angle (degrees) after matching estimated to true subspaces
    (Hungarian assignment on the largest angle)."""
    from scipy.optimize import linear_sum_assignment

    cost = np.array([[principal_angles(e, t).max() for t in true] for e in est])
    rows, cols = linear_sum_assignment(cost)
    return float(np.degrees(cost[rows, cols].max()))


def _fit_bases(x: np.ndarray, labels: np.ndarray, k: int, d: int,
               rng: np.random.Generator) -> np.ndarray:
    n = x.shape[1]
    bases = []
    for j in range(k):
        pts = x[labels == j]
        if pts.shape[0] == 0:
            bases.append(np.linalg.qr(rng.standard_normal((n, d)))[0])
            continue
        u, _, _ = np.linalg.svd(pts.T, full_matrices=True)
        bases.append(u[:, :d])
    return np.stack(bases)


def spectral_subspace_labels(x: np.ndarray, k: int, power: int = 4,
                             rng: np.random.Generator | int = 0) -> np.ndarray:
    """Spectral clustering on the affinity ``|cos(x_i, x_j)|^power`` (normalised Laplacian
    embedding, then k-means with restarts)."""
    rng = np.random.default_rng(rng)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    aff = np.abs(xn @ xn.T) ** power
    np.fill_diagonal(aff, 0.0)
    deg = aff.sum(1).clip(1e-12)
    lap = aff / np.sqrt(np.outer(deg, deg))
    _, vecs = np.linalg.eigh(lap)
    emb = vecs[:, -k:]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    best, best_cost = None, np.inf
    for _ in range(10):
        cent = emb[rng.choice(len(emb), k, replace=False)]
        for _ in range(50):
            lab = np.argmin(((emb[:, None] - cent[None]) ** 2).sum(-1), 1)
            new = np.stack([emb[lab == j].mean(0) if np.any(lab == j) else cent[j]
                            for j in range(k)])
            if np.allclose(new, cent):
                break
            cent = new
        cost = ((emb - cent[lab]) ** 2).sum()
        if cost < best_cost:
            best, best_cost = lab, cost
    return best


def k_subspaces(x: np.ndarray, k: int, d: int, *, init: str = "spectral", iters: int = 50,
                rng: np.random.Generator | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K-subspaces clustering of the rows of ``x``: returns bases (K, n, d) and labels.

    Alternates assigning each sample to the subspace capturing most of its energy
    (``argmax_k ||U_k^T x||``) and refitting each ``U_k`` as the top-d left singular vectors
    of its samples. ``init='spectral'`` starts from :func:`spectral_subspace_labels`,
    ``init='random'`` from random bases.
    """
    rng = np.random.default_rng(rng)
    x = np.asarray(x, dtype=np.float64)
    if init == "spectral":
        labels = spectral_subspace_labels(x, k, rng=rng)
        bases = _fit_bases(x, labels, k, d, rng)
    elif init == "random":
        bases = random_bases(x.shape[1], d, k, rng)
        labels = np.full(len(x), -1)
    else:
        raise ConfigError(f"init must be 'spectral' or 'random', got {init!r}")
    for _ in range(iters):
        new = np.argmax((np.einsum("knd,mn->mkd", bases, x) ** 2).sum(-1), 1)
        if np.array_equal(new, labels):
            break
        labels = new
        bases = _fit_bases(x, labels, k, d, rng)
    return bases, labels


def recovery_rate(n: int, k: int, d: int, num: int, trials: int = 10, *,
                  threshold_deg: float = 1.0, seed: int = 0) -> float:
    """Fraction of ``trials`` in which :func:`k_subspaces` recovers all K planted subspaces
    (worst principal angle below ``threshold_deg``) from ``num`` samples."""
    hits = 0
    for t in range(trials):
        rng = np.random.default_rng(seed + 1000 * t)
        model = MoLRG(random_bases(n, d, k, rng))
        x, _ = model.sample(num, rng)
        est, _ = k_subspaces(x, k, d, rng=rng)
        hits += subspace_recovery_error(est, model.bases) < threshold_deg
    return hits / trials
