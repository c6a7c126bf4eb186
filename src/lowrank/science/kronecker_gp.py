"""Grid Gaussian processes with product kernels, solved exactly through Kronecker
eigendecompositions, and the spectral-mixture kernels that GP-HM learns for them.

GP-HM: Fang, Xu, Wang, Kirby, Zhe, "Solving High Frequency and Multi-Scale PDEs with Gaussian
Processes" (ICLR 2024). A product kernel ``k(x, x') = prod_d k_d(x_d, x'_d)`` on a tensor grid
has Gram matrix ``K = K_1 (x) ... (x) K_D``; with ``K_d = Q_d diag(l_d) Q_d^T`` every solve,
log-determinant, sample and posterior mean costs ``O(sum_d n_d^3 + N sum_d n_d)`` instead of
``O(N^3)`` for ``N = prod_d n_d`` points, exactly (no low-rank approximation). The per-dimension
kernel is a spectral mixture ``k(d) = sum_q w_q exp(-l_q d^2) cos(2 pi mu_q d)`` whose weights
live in the log domain (``w = exp(log_w)``): :func:`spectral_candidates` proposes frequencies
from the sine spectrum of grid data and :func:`fit_log_weights` learns their weights by the
exact marginal likelihood. The PDE solver built on these kernels is
:mod:`lowrank.science.poisson_gp`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..linalg.arrays import kron_matvec

Kernel1D = Callable[..., np.ndarray]


class SpectralMixtureKernel1D:
    """Spectral-mixture kernel ``k(d) = sum_q exp(log_w_q) exp(-ell_q d^2) cos(2 pi mu_q d)``.

    A Gaussian-mixture spectral density with means ``+-mu_q``; ``log_w`` are the log-domain
    weights of GP-HM (equivalent to a Jeffreys prior on ``w``). ``__call__(x1, x2, deriv)``
    returns the Gram matrix of ``k`` (deriv=0) or of ``d^2 k / dx1^2`` (deriv=2), the kernel of
    the second derivative of ``u`` against ``u``.
    """

    def __init__(self, mu: Sequence[float], ell: Sequence[float] | float,
                 log_w: Sequence[float] | float = 0.0) -> None:
        self.mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
        q = self.mu.size
        self.ell = np.broadcast_to(np.asarray(ell, dtype=np.float64), (q,)).copy()
        self.log_w = np.broadcast_to(np.asarray(log_w, dtype=np.float64), (q,)).copy()
        if np.any(self.ell <= 0):
            raise ConfigError(f"ell must be positive, got {self.ell}")

    @property
    def weights(self) -> np.ndarray:
        return np.exp(self.log_w)

    def __call__(self, x1: np.ndarray, x2: np.ndarray, deriv: int = 0) -> np.ndarray:
        d = np.asarray(x1, dtype=np.float64)[:, None] - np.asarray(x2, dtype=np.float64)[None, :]
        out = np.zeros_like(d)
        for w, ell, mu in zip(self.weights, self.ell, self.mu, strict=True):
            a = 2 * math.pi * mu
            g = np.exp(-ell * d * d)
            c, s = np.cos(a * d), np.sin(a * d)
            if deriv == 0:
                out += w * g * c
            elif deriv == 2:
                # (g c)'' = g'' c + 2 g' c' + g c''
                out += w * g * ((4 * ell * ell * d * d - 2 * ell) * c
                                + 4 * ell * d * a * s - a * a * c)
            else:
                raise ConfigError(f"deriv must be 0 or 2, got {deriv}")
        return out


def rbf_kernel(lengthscale: float, variance: float = 1.0) -> Kernel1D:
    """Squared-exponential kernel ``variance * exp(-d^2 / (2 lengthscale^2))`` (deriv 0 only)."""
    def k(x1: np.ndarray, x2: np.ndarray, deriv: int = 0) -> np.ndarray:
        if deriv:
            raise ConfigError("rbf_kernel provides deriv=0 only")
        d = np.asarray(x1)[:, None] - np.asarray(x2)[None, :]
        return variance * np.exp(-0.5 * d * d / lengthscale ** 2)
    return k


class KroneckerGP:
    """GP regression on a tensor grid with a product kernel, exact through Kronecker algebra.

    ``kernels[d]`` is a 1-D kernel ``k_d(x1, x2) -> Gram``; ``grid[d]`` the points of axis d;
    ``noise`` the Gaussian noise variance (``jitter`` is added to each ``K_d`` for stability).
    Observations ``Y`` have the grid's shape ``(n_1, ..., n_D)``.
    """

    def __init__(self, kernels: Sequence[Kernel1D], grid: Sequence[np.ndarray],
                 noise: float = 1e-6, jitter: float = 0.0) -> None:
        if len(kernels) != len(grid) or not grid:
            raise ConfigError(f"KroneckerGP needs one kernel per grid axis, got {len(kernels)} "
                              f"kernels for {len(grid)} axes")
        if noise < 0:
            raise ConfigError(f"noise must be >= 0, got {noise}")
        self.kernels = list(kernels)
        self.grid = [np.asarray(x, dtype=np.float64) for x in grid]
        self.noise = float(noise)
        self.gram = [k(x, x) + jitter * np.eye(x.size) for k, x in zip(kernels, self.grid,
                                                                          strict=True)]
        eig = [np.linalg.eigh(k) for k in self.gram]
        self.evals = [np.clip(e, 0.0, None) for e, _ in eig]
        self.evecs = [q for _, q in eig]
        self.shape = tuple(x.size for x in self.grid)
        self.alpha: np.ndarray | None = None

    def _spectrum(self) -> np.ndarray:
        s = self.evals[0]
        for e in self.evals[1:]:
            s = np.multiply.outer(s, e)
        return s

    def solve(self, y: np.ndarray) -> np.ndarray:
        """``(K + noise I)^{-1} vec(Y)``, returned with the grid's shape."""
        y = np.asarray(y, dtype=np.float64)
        if y.shape != self.shape:
            raise ConfigError(f"Y must have the grid's shape {self.shape}, got {y.shape}")
        t = kron_matvec([q.T for q in self.evecs], y)
        t = t / (self._spectrum() + self.noise)
        return kron_matvec(self.evecs, t)

    def logdet(self) -> float:
        """``log |K + noise I|``."""
        return float(np.sum(np.log(self._spectrum() + self.noise)))

    def fit(self, y: np.ndarray) -> KroneckerGP:
        self.y = np.asarray(y, dtype=np.float64)
        self.alpha = self.solve(self.y)
        return self

    def log_marginal_likelihood(self) -> float:
        if self.alpha is None:
            raise ConfigError("call fit(Y) before log_marginal_likelihood()")
        n = self.y.size
        return float(-0.5 * np.sum(self.y * self.alpha) - 0.5 * self.logdet()
                     - 0.5 * n * math.log(2 * math.pi))

    def posterior_mean(self, points: Sequence[np.ndarray] | None = None,
                       deriv: Sequence[int] | None = None) -> np.ndarray:
        """Posterior mean (or a derivative of it) on the tensor grid ``points`` (default: the
        training grid); ``deriv[d] = 2`` differentiates twice along axis d."""
        if self.alpha is None:
            raise ConfigError("call fit(Y) before posterior_mean()")
        points = self.grid if points is None else points
        deriv = [0] * len(self.grid) if deriv is None else deriv
        mats = [k(p, x, deriv=m) for k, p, x, m in zip(self.kernels, points, self.grid, deriv,
                                                       strict=True)]
        return kron_matvec(mats, self.alpha)

    def sample(self, rng: np.random.Generator | int = 0) -> np.ndarray:
        """One prior draw on the grid, ``Q Lambda^{1/2} z``."""
        rng = np.random.default_rng(rng)
        z = rng.standard_normal(self.shape) * np.sqrt(self._spectrum())
        return kron_matvec(self.evecs, z)


def fit_log_weights(grid: Sequence[np.ndarray], y: np.ndarray,
                    mu: Sequence[float] | Sequence[Sequence[float]], ell: float = 2.0, *,
                    noise: float = 1e-4, steps: int = 200, lr: float = 0.1,
                    init_log_w: float = -3.0,
                    prune: float = 1e-6) -> list[SpectralMixtureKernel1D]:
    """Learn the log-domain weights of one spectral-mixture kernel per axis by maximising the
    exact Kronecker GP marginal likelihood of grid data ``y`` (Adam on ``log_w``, autograd
    through the per-axis eigendecompositions), then prune components whose weight falls below
    ``prune`` times the largest. ``mu`` is one candidate list shared by every axis, or one list
    per axis (a sequence of ``len(grid)`` 1-D arrays); all components share ``ell``."""
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    y_t = y_t / y_t.std()
    per_axis = (len(mu) == len(grid) and all(np.ndim(m) == 1 for m in mu))
    mus = ([np.asarray(m, dtype=np.float64) for m in mu] if per_axis
           else [np.asarray(mu, dtype=np.float64)] * len(grid))
    if any(m.ndim != 1 or m.size == 0 for m in mus):
        raise ConfigError(f"mu must be a non-empty list of frequencies (or one per axis), got {mu}")
    mu_ts = [torch.as_tensor(m) for m in mus]
    diffs = [torch.as_tensor(np.subtract.outer(x, x)) for x in grid]
    log_w = [torch.full((m.numel(),), init_log_w, dtype=torch.float64, requires_grad=True)
             for m in mu_ts]
    opt = torch.optim.Adam(log_w, lr=lr)

    def neg_mll() -> torch.Tensor:
        grams = []
        for d, lw, mu_t in zip(diffs, log_w, mu_ts, strict=True):
            k = (torch.exp(lw)[:, None, None] * torch.exp(-ell * d * d)[None]
                 * torch.cos(2 * math.pi * mu_t[:, None, None] * d[None])).sum(0)
            grams.append(k)
        if len(grams) == 1:  # dense Cholesky: stable gradients even for clustered spectra
            ch = torch.linalg.cholesky(grams[0] + noise * torch.eye(grams[0].shape[0],
                                                                    dtype=y_t.dtype))
            a = torch.cholesky_solve(y_t.reshape(-1, 1), ch)
            return 0.5 * (y_t.reshape(-1) @ a.reshape(-1)) + torch.log(torch.diagonal(ch)).sum()
        evals, evecs = [], []
        for k in grams:
            e, q = torch.linalg.eigh(k + 1e-10 * torch.eye(k.shape[0], dtype=k.dtype))
            evals.append(e.clamp_min(0))
            evecs.append(q)
        spec = evals[0]
        for e in evals[1:]:
            spec = torch.einsum("...,j->...j", spec, e)
        t = kron_matvec([q.T for q in evecs], y_t)
        return 0.5 * (t * t / (spec + noise)).sum() + 0.5 * torch.log(spec + noise).sum()

    for _ in range(steps):
        opt.zero_grad()
        loss = neg_mll()
        loss.backward()
        opt.step()
    kernels = []
    for lw, m in zip(log_w, mus, strict=True):
        w = lw.detach().numpy()
        keep = np.exp(w) >= prune * np.exp(w).max()
        kernels.append(SpectralMixtureKernel1D(m[keep], ell, w[keep]))
    return kernels


def spectral_candidates(y: np.ndarray, grid: Sequence[np.ndarray], *, max_per_axis: int = 6,
                        rel_power: float = 1e-8) -> list[np.ndarray]:
    """Candidate spectral-mixture frequencies per axis from the data's sine spectrum.

    Along each axis, the DST-I of the interior grid values (sines ``sin(pi k (x - x_0) / L)``,
    i.e. ``k / (2L)`` cycles per unit length, ``L`` the axis length), its power summed over the
    other axes; returns the frequencies of the ``max_per_axis`` strongest local maxima whose power
    exceeds ``rel_power`` times the largest, strongest first. Needs uniform grids."""
    from scipy.fft import dst

    y = np.asarray(y, dtype=np.float64)
    dims = len(grid)
    if y.ndim != dims or min(y.shape) < 4:
        raise ConfigError(f"spectral_candidates needs grid-shaped data with >= 4 points per "
                          f"axis, got shape {y.shape} for {dims} axes")
    inner = y[(slice(1, -1),) * dims]
    out = []
    for axis, x in enumerate(grid):
        x = np.asarray(x, dtype=np.float64)
        h = np.diff(x)
        if not np.allclose(h, h[0], rtol=1e-8, atol=0):
            raise ConfigError(f"spectral_candidates needs a uniform grid, axis {axis} is not")
        coef = dst(inner, type=1, axis=axis)
        power = np.sum(coef ** 2, axis=tuple(a for a in range(dims) if a != axis))
        padded = np.concatenate([[-np.inf], power, [-np.inf]])
        peak = (power >= padded[:-2]) & (power >= padded[2:]) & (power >= rel_power * power.max())
        idx = np.flatnonzero(peak)
        idx = idx[np.argsort(-power[idx], kind="stable")][:max_per_axis]
        out.append((idx + 1) / (2.0 * (x[-1] - x[0])))
    return out
