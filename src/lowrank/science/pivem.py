"""Piecewise-velocity latent distance model (PiVeM) for continuous-time dynamic networks.

Celikkanat, Nakis, Morup, "Piecewise-Velocity Model for Learning Continuous-time Dynamic Node
Representations" (LoG 2022). Node i moves on a piecewise-linear trajectory
``z_i(t) = x_i + sum_b v_i^b * (time spent in bin b before t)``; events between i and j form a
Poisson process with intensity ``exp(beta_i + beta_j - ||z_i(t) - z_j(t)||^2)``, whose integral
over each bin has a closed form through ``erf``. The velocities carry the Kronecker-structured
GP prior ``N(0, lambda^2 (B (x) C (x) I_D))``: ``B`` an RBF kernel over bin centres, ``C = Q Q^T +
diag`` a node covariance with a low-rank community factor; solves and log-determinants use the
Kronecker eigendecomposition of ``B`` and the Woodbury identity for ``C``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError


class KroneckerLowRankGaussian:
    """``N(0, scale^2 (B (x) C (x) I_D))`` with ``C = Q Q^T + diag(c_diag)`` (torch, batched
    over nothing; all ops differentiable). Vectors are arrays of shape (n_b, n, D)."""

    def __init__(self, b: torch.Tensor, q: torch.Tensor, c_diag: torch.Tensor, dim: int,
                 scale: torch.Tensor | float = 1.0) -> None:
        self.b, self.q, self.c_diag, self.dim = b, q, c_diag, dim
        self.scale = torch.as_tensor(scale, dtype=b.dtype)
        self.b_evals, self.b_evecs = torch.linalg.eigh(b)
        k = q.shape[1]
        dq = q / c_diag[:, None]
        self.cap = torch.eye(k, dtype=q.dtype) + q.T @ dq        # I + Q^T D^{-1} Q
        self.cap_chol = torch.linalg.cholesky(self.cap)

    def _c_solve(self, y: torch.Tensor) -> torch.Tensor:
        """``C^{-1} y`` along the node axis (dim -2) by Woodbury."""
        dy = y / self.c_diag[:, None]
        t = torch.cholesky_solve(torch.einsum("nk,...nd->...kd", self.q, dy), self.cap_chol)
        return dy - torch.einsum("nk,...kd->...nd", self.q / self.c_diag[:, None], t)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``Sigma^{-1} vec(v)`` with the shape of ``v``."""
        binv = self.b_evecs @ torch.diag(1 / self.b_evals) @ self.b_evecs.T
        t = torch.einsum("ab,bnd->and", binv, v)
        return self._c_solve(t) / self.scale**2

    def logdet(self) -> torch.Tensor:
        nb, n = self.b.shape[0], self.q.shape[0]
        logdet_c = torch.log(self.c_diag).sum() + 2 * torch.log(torch.diagonal(
            self.cap_chol)).sum()
        logdet_b = torch.log(self.b_evals).sum()
        return self.dim * (n * logdet_b + nb * logdet_c) + 2 * nb * n * self.dim * torch.log(
            self.scale)

    def logpdf(self, v: torch.Tensor) -> torch.Tensor:
        m = v.numel()
        return -0.5 * ((v * self.solve(v)).sum() + self.logdet() + m * math.log(2 * math.pi))

    def dense(self) -> torch.Tensor:
        c = self.q @ self.q.T + torch.diag(self.c_diag)
        eye = torch.eye(self.dim, dtype=self.b.dtype)
        return self.scale**2 * torch.kron(torch.kron(self.b, c), eye)


def rbf_gram(centres: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    d = centres[:, None] - centres[None, :]
    return torch.exp(-0.5 * d * d / lengthscale**2)


@dataclass
class Events:
    """Continuous-time network events: pairs (i < j) and times in ``[0, t_end]``."""

    i: np.ndarray
    j: np.ndarray
    t: np.ndarray
    n_nodes: int
    t_end: float = 1.0


def _erf_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``erf(b) - erf(a)`` for ``b >= a``, accurate in both tails."""
    pos = a > 0
    neg = b < 0
    mid = torch.special.erf(b) - torch.special.erf(a)
    right = torch.special.erfc(a) - torch.special.erfc(b)
    left = torch.special.erfc(-b) - torch.special.erfc(-a)
    return torch.where(pos, right, torch.where(neg, left, mid))


class PiVeM(nn.Module):
    """PiVeM with ``n_bins`` equal bins on ``[0, t_end]`` and ``dim``-dimensional positions.

    Parameters: initial positions ``x0`` (n, D), velocities ``v`` (n_bins, n, D), node biases
    ``beta`` (n); learnable prior hyperparameters ``log_ls`` (RBF over bin centres) and ``q``
    (n, k community factor); the prior scale and the diagonal of ``C`` are fixed (learning them
    jointly with the velocities is degenerate: the MAP would shrink both to zero).
    ``n_bins=1`` with ``static=True`` (velocities fixed at 0) is the static latent distance
    model baseline.
    """

    def __init__(self, n_nodes: int, n_bins: int = 20, dim: int = 2, *, t_end: float = 1.0,
                 rank: int = 3, static: bool = False, prior_scale: float = 5.0,
                 seed: int = 0) -> None:
        super().__init__()
        if n_nodes < 2 or n_bins < 1 or dim < 1:
            raise ConfigError(f"PiVeM needs n_nodes >= 2, n_bins >= 1, dim >= 1, got "
                              f"{n_nodes}, {n_bins}, {dim}")
        g = torch.Generator().manual_seed(seed)
        self.n, self.nb, self.dim, self.t_end, self.static = n_nodes, n_bins, dim, t_end, static
        dt = torch.float64
        self.x0 = nn.Parameter(0.1 * torch.randn(n_nodes, dim, generator=g, dtype=dt))
        self.v = nn.Parameter(torch.zeros(n_bins, n_nodes, dim, dtype=dt),
                              requires_grad=not static)
        self.beta = nn.Parameter(torch.zeros(n_nodes, dtype=dt))
        self.register_buffer("log_scale", torch.tensor(math.log(prior_scale), dtype=dt))
        self.log_ls = nn.Parameter(torch.tensor(math.log(2.0 / n_bins * t_end), dtype=dt))
        self.q = nn.Parameter(0.1 * torch.randn(n_nodes, rank, generator=g, dtype=dt))
        self.register_buffer("log_c_diag", torch.zeros(n_nodes, dtype=dt))

    @property
    def bin_width(self) -> float:
        return self.t_end / self.nb

    def positions(self, t: torch.Tensor) -> torch.Tensor:
        """Latent positions of all nodes at times ``t`` (m,) -> (m, n, D)."""
        h = self.bin_width
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.t_end)
        edges = torch.arange(self.nb, dtype=torch.float64) * h
        spent = (t[:, None] - edges[None, :]).clamp(0, h)                # (m, n_bins)
        return self.x0[None] + torch.einsum("mb,bnd->mnd", spent, self.v)

    def log_intensity(self, i: torch.Tensor, j: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = self.positions(t)
        ar = torch.arange(len(t))
        diff = z[ar, i] - z[ar, j]
        return self.beta[i] + self.beta[j] - (diff * diff).sum(-1)

    def integral(self, i: torch.Tensor, j: torch.Tensor, t0: float = 0.0,
                 t1: float | None = None) -> torch.Tensor:
        """``int_{t0}^{t1} lambda_ij(t) dt`` for pairs (i, j), exact per bin through erf."""
        t1 = self.t_end if t1 is None else t1
        h = self.bin_width
        starts = torch.arange(self.nb, dtype=torch.float64) * h
        lo = torch.clamp(torch.tensor(t0, dtype=torch.float64) - starts, 0, h)     # (n_bins,)
        hi = torch.clamp(torch.tensor(t1, dtype=torch.float64) - starts, 0, h)
        zs = self.positions(starts)                                               # (nb, n, D)
        a = zs[:, i] - zs[:, j]                                                   # (nb, p, D)
        c = self.v[:, i] - self.v[:, j]
        cc = (c * c).sum(-1).clamp_min(1e-12)
        ac = (a * c).sum(-1)
        s = ac / cc
        m = (a * a).sum(-1) - ac * s
        root = torch.sqrt(cc)
        val = torch.exp(-m) * math.sqrt(math.pi) / (2 * root) * _erf_diff(
            root * (lo[:, None] + s), root * (hi[:, None] + s))
        return torch.exp(self.beta[i] + self.beta[j]) * val.sum(0)

    def prior(self) -> KroneckerLowRankGaussian:
        centres = (torch.arange(self.nb, dtype=torch.float64) + 0.5) * self.bin_width
        b = rbf_gram(centres, torch.exp(self.log_ls)) + 1e-4 * torch.eye(self.nb,
                                                                        dtype=torch.float64)
        return KroneckerLowRankGaussian(b, self.q, torch.exp(self.log_c_diag), self.dim,
                                        torch.exp(self.log_scale))

    def log_likelihood(self, ev: Events, pairs: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        """Poisson-process log-likelihood of events on the given pairs (the others ignored)."""
        i, j = (torch.as_tensor(p) for p in pairs)
        ei, ej, et = torch.as_tensor(ev.i), torch.as_tensor(ev.j), torch.as_tensor(ev.t)
        return self.log_intensity(ei, ej, et).sum() - self.integral(i, j).sum()

    def fit(self, ev: Events, pairs: tuple[np.ndarray, np.ndarray], *, steps: int = 300,
            lr: float = 0.05) -> list[float]:
        """Maximise log-likelihood + log-prior (velocities under the Kronecker GP) with Adam."""
        opt = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=lr)
        history = []
        for _ in range(steps):
            opt.zero_grad()
            loss = -self.log_likelihood(ev, pairs)
            if not self.static:
                loss = loss - self.prior().logpdf(self.v)
            loss.backward()
            opt.step()
            history.append(loss.item())
        return history


def planted_dynamic_network(n_nodes: int = 45, n_comm: int = 3, *, t_end: float = 1.0,
                            base_rate: float = 3.0, seed: int = 0) -> tuple[Events, np.ndarray]:
    """Synthetic continuous-time network with planted communities that move in 2-D: the
    communities start apart, two of them merge mid-way and separate again, the third circles.
    Events are simulated by thinning from ``exp(beta_i + beta_j - ||z_i - z_j||^2)``."""
    rng = np.random.default_rng(seed)
    comm = np.arange(n_nodes) % n_comm
    offsets = 0.3 * rng.standard_normal((n_nodes, 2))
    beta = np.full(n_nodes, math.log(base_rate) / 2) + 0.1 * rng.standard_normal(n_nodes)

    def centre(c: int, t: np.ndarray) -> np.ndarray:
        ang = 2 * math.pi * c / n_comm + 2 * math.pi * t * (1 if c == 2 else 0)
        r = 2.5 * (np.abs(1 - 2 * t) if c < 2 else 1.0)     # communities 0 and 1 meet at t=.5
        return np.stack([r * np.cos(ang + (c == 1) * 0.0), r * np.sin(ang)], -1)

    grid = np.linspace(0, t_end, 401)
    pos = np.stack([centre(c, grid / t_end) for c in comm], 1) + offsets[None]  # (T, n, 2)
    ii, jj, tt = [], [], []
    lam_max = math.exp(2 * beta.max())
    for i in range(n_nodes):
        for j in range(i + 1, n_nodes):
            cnt = rng.poisson(lam_max * t_end)
            if cnt == 0:
                continue
            ts = np.sort(rng.uniform(0, t_end, cnt))
            idx = np.clip(np.round(ts / t_end * (len(grid) - 1)).astype(int), 0, len(grid) - 1)
            d2 = ((pos[idx, i] - pos[idx, j]) ** 2).sum(-1)
            lam = np.exp(beta[i] + beta[j] - d2)
            keep = rng.uniform(0, lam_max, cnt) < lam
            ii += [i] * int(keep.sum())
            jj += [j] * int(keep.sum())
            tt += list(ts[keep])
    return Events(np.array(ii), np.array(jj), np.array(tt), n_nodes, t_end), comm


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) statistic, ties averaged."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    npos, nneg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def link_prediction_split(ev: Events, test_frac: float = 0.1, n_windows: int = 10,
                          seed: int = 0) -> dict:
    """Hold out ``test_frac`` of the node pairs entirely; the task is to tell, for each held-out
    pair and time window, whether it has at least one event there."""
    rng = np.random.default_rng(seed)
    iu, ju = np.triu_indices(ev.n_nodes, 1)
    perm = rng.permutation(len(iu))
    n_test = int(test_frac * len(iu))
    test, train = perm[:n_test], perm[n_test:]
    pair_id = ev.i * ev.n_nodes + ev.j
    test_ids = set((iu[test] * ev.n_nodes + ju[test]).tolist())
    in_test = np.array([p in test_ids for p in pair_id], dtype=bool)
    train_ev = Events(ev.i[~in_test], ev.j[~in_test], ev.t[~in_test], ev.n_nodes, ev.t_end)
    w = ev.t_end / n_windows
    samples = []
    for p in test:
        i, j = iu[p], ju[p]
        times = ev.t[(ev.i == i) & (ev.j == j)]
        for k in range(n_windows):
            has = np.any((times >= k * w) & (times < (k + 1) * w))
            samples.append((i, j, k * w, (k + 1) * w, has))
    return {"train_events": train_ev, "train_pairs": (iu[train], ju[train]),
            "samples": samples}


def score_samples(model: PiVeM, samples: list) -> np.ndarray:
    """Expected number of events of each (i, j, t0, t1) sample under the fitted model."""
    with torch.no_grad():
        return np.array([float(model.integral(torch.tensor([i]), torch.tensor([j]), t0, t1))
                         for i, j, t0, t1, _ in samples])
