"""FunBaT: Functional Bayesian Tucker decomposition for continuous-indexed tensor data.

Fang, Yu, Li, Zhe (ICLR 2024), "Functional Bayesian Tucker Decomposition for
Continuous-indexed Tensor Data". An entry at continuous index ``x = (x^1..x^K)`` is modelled as
``y = vec(W)^T (u^1(x^1) ⊗ … ⊗ u^K(x^K)) + eps`` with a Tucker core ``W ~ N(0, v I)``, noise
precision ``tau ~ Gamma(a0, b0)``, and per mode ``R_k`` latent functions, each an independent
Matérn Gaussian process written as its linear SDE (state-space form), so posterior inference
per mode is one Kalman filter + RTS smoother over the sorted distinct coordinates: linear in
their number instead of cubic.

Inference alternates, as in the paper's message passing: (1) for each mode, every entry sends
the latent function values at its coordinate a Gaussian message built from the current
moments of the core and of the other modes (the Kronecker moment identities of the Tucker
likelihood), messages at the same coordinate are summed into one pseudo-observation in
natural parameters (damped against the previous ones), and the Kalman smoother turns them into
the posterior marginals of ``u^k``; (2) Gaussian update of the core; (3) conjugate Gamma update
of ``tau``. Unseen coordinates are predicted by running the smoother over the union of the
training coordinates and the new ones (messages only at the former), which is the SDE
interpolation / extrapolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, LowRankError
from ..linalg.arrays import as_numpy
from ..utils.checks import check_finite, check_finite_values, check_int, check_real
from .decomp import mode_ranks

__all__ = ["FunctionalTucker", "state_space_posterior"]

KERNELS = ("matern12", "matern32")


def _transitions(kernel: str, lengthscale: float, variance: float, gaps: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-gap transition ``A = expm(F d)`` and noise ``Q = P∞ − A P∞ Aᵀ`` (closed forms),
    and the stationary covariance ``P∞``, for one Matérn GP."""
    if kernel == "matern12":
        lam = 1.0 / lengthscale
        a = np.exp(-lam * gaps)[:, None, None]
        pinf = np.array([[variance]])
        return a, variance * (1 - a ** 2), pinf
    lam = math.sqrt(3.0) / lengthscale
    e = np.exp(-lam * gaps)
    a = np.empty((len(gaps), 2, 2))
    a[:, 0, 0] = e * (1 + lam * gaps)
    a[:, 0, 1] = e * gaps
    a[:, 1, 0] = -e * lam ** 2 * gaps
    a[:, 1, 1] = e * (1 - lam * gaps)
    pinf = np.diag([variance, lam ** 2 * variance])
    q = pinf - a @ pinf @ a.transpose(0, 2, 1)
    return a, q, pinf


def state_space_posterior(coords: np.ndarray, prec: np.ndarray, lin: np.ndarray, *,
                          kernel: str = "matern32", lengthscale: float = 0.3,
                          variance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Posterior marginals of ``R`` independent Matérn GPs at sorted distinct ``coords``
    given Gaussian pseudo-observations in natural form: ``prec[j]`` (R x R) and ``lin[j]`` (R)
    at ``coords[j]`` (log-likelihood ``-½ uᵀ prec u + linᵀ u``). Kalman filter + RTS smoother.

    Returns means ``(n, R)`` and covariances ``(n, R, R)``. With ``prec = I/s²`` and
    ``lin = y/s²`` this is the GP regression posterior (equal to the dense solve).
    """
    coords = np.asarray(coords, np.float64)
    n, r = lin.shape
    if n == 0:
        return np.zeros((0, r)), np.zeros((0, r, r))
    gaps = np.diff(coords)
    if (gaps <= 0).any():
        raise LowRankError("state_space_posterior needs strictly increasing coordinates")
    a1, q1, pinf1 = _transitions(kernel, lengthscale, variance, gaps)
    d = pinf1.shape[0]
    eye = np.eye(r)
    a = np.einsum("ij,nkl->nikjl", eye, a1).reshape(n - 1, r * d, r * d)
    q = np.einsum("ij,nkl->nikjl", eye, q1).reshape(n - 1, r * d, r * d)
    pinf = np.kron(eye, pinf1)
    s = r * d
    pos = np.arange(r) * d  # the state entries that are the function values
    m_pred, p_pred = np.zeros((n, s)), np.zeros((n, s, s))
    m_filt, p_filt = np.zeros((n, s)), np.zeros((n, s, s))
    m, p = np.zeros(s), pinf
    ident = np.eye(r)
    for j in range(n):
        if j:
            m, p = a[j - 1] @ m, a[j - 1] @ p @ a[j - 1].T + q[j - 1]
        m_pred[j], p_pred[j] = m, p
        ph = p[:, pos]  # P Hᵀ
        lam = prec[j]
        inv = np.linalg.inv(ident + lam @ ph[pos])
        m = m + ph @ (inv @ (lin[j] - lam @ m[pos]))
        p = p - ph @ (inv @ (lam @ ph.T))
        p = 0.5 * (p + p.T)
        m_filt[j], p_filt[j] = m, p
    # smoother gains depend only on filtered quantities: G_j = P_f[j] A_jᵀ P_pred[j+1]^{-1}
    gains = np.linalg.solve(p_pred[1:], a @ p_filt[:-1]).transpose(0, 2, 1)
    m_s, p_s = m_filt.copy(), p_filt.copy()
    for j in range(n - 2, -1, -1):
        g = gains[j]
        m_s[j] = m_filt[j] + g @ (m_s[j + 1] - m_pred[j + 1])
        p_s[j] = p_filt[j] + g @ (p_s[j + 1] - p_pred[j + 1]) @ g.T
    return m_s[:, pos], p_s[:, pos][:, :, pos]


def _kron_rows(mats: Sequence[np.ndarray]) -> np.ndarray:
    """Row-wise Kronecker product of ``(n, a)``, ``(n, b)``… -> ``(n, a*b*…)``; also works on
    ``(n, a, a)`` blocks (Kronecker of matrices per row)."""
    out = mats[0]
    for m in mats[1:]:
        if out.ndim == 2:
            out = (out[:, :, None] * m[:, None, :]).reshape(out.shape[0], -1)
        else:
            n = out.shape[0]
            out = (out[:, :, None, :, None] * m[:, None, :, None, :]).reshape(
                n, out.shape[1] * m.shape[1], out.shape[2] * m.shape[2])
    return out


class FunctionalTucker:
    """FunBaT estimator (see the module docstring): ``fit(X, y)`` with continuous ``X``
    of shape ``(n, K)``; ``predict(X, return_std=True)`` at any coordinates.

    ``rank``: ``R_k`` per mode (an int, or one per mode), at most the number of distinct
    coordinates of that mode in the training data (an int is clipped to it).

    Learned: ``core_mean_``, ``core_cov_``, ``noise_precision_``, ``coords_`` (distinct
    coordinates per mode), ``factor_means_`` / ``factor_covs_`` (posterior of ``u^k`` there),
    ``n_iter_``, ``history_`` (training RMSE per epoch).
    """

    def __init__(self, rank: int | Sequence[int] = 2, *, kernel: str = "matern32",
                 lengthscale: float | Sequence[float] = 0.3, variance: float = 1.0,
                 n_epochs: int = 50, damping: float = 0.5, a0: float = 1.0, b0: float = 1.0,
                 core_variance: float = 1.0, tol: float = 1e-6, random_state: int = 0) -> None:
        if kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        check_finite("damping", damping, 0, 1, high_open=True)
        check_int("n_epochs", n_epochs)
        for name, value in (("variance", variance), ("a0", a0), ("b0", b0),
                            ("core_variance", core_variance)):
            check_finite(name, value, 0, low_open=True)
        check_finite("tol", tol, 0)
        check_int("random_state", random_state, 0)
        self.rank, self.kernel, self.lengthscale, self.variance = rank, kernel, lengthscale, \
            variance
        self.n_epochs, self.damping, self.a0, self.b0 = n_epochs, damping, a0, b0
        self.core_variance, self.tol, self.random_state = core_variance, tol, random_state

    def _per_mode(self, value: Any, k: int, name: str) -> list:
        vals = [value] * k if isinstance(value, (int, float)) else list(value)
        if len(vals) != k:
            raise ConfigError(f"{name} must be a number or {k} numbers, got {value!r}")
        return vals

    def fit(self, x: Any, y: Any) -> FunctionalTucker:
        xs, ys = as_numpy(x, "X"), as_numpy(y, "y").reshape(-1)
        if xs.ndim != 2 or xs.shape[0] != ys.shape[0] or xs.shape[1] < 1:
            raise LowRankError(f"X must be (n, K) coordinates and y (n,) values, got X "
                               f"{xs.shape} and y {ys.shape}")
        for name, arr in (("X", xs), ("y", ys)):
            check_real(name, arr)
            check_finite_values(name, arr)
        n, k = xs.shape
        self.coords_, index = [], []
        for m in range(k):
            c, inv = np.unique(xs[:, m], return_inverse=True)
            self.coords_.append(c)
            index.append(inv)
        self._index = index
        # u^m is seen only at the distinct coordinates of mode m: at most that many ranks
        ranks = mode_ranks(self.rank, [len(c) for c in self.coords_], "rank")
        self.ranks_ = ranks
        self.lengthscales_ = [check_finite(f"lengthscale[{m}]", v, 0, low_open=True) for m, v
                              in enumerate(self._per_mode(self.lengthscale, k, "lengthscale"))]
        rng = np.random.default_rng(self.random_state)
        # initial posteriors: smooth random functions (prior draws), small covariance
        means, covs = [], []
        for m in range(k):
            means.append(self._prior_draw(self.coords_[m], ranks[m], m, rng))
            covs.append(np.broadcast_to(0.1 * self.variance * np.eye(ranks[m]),
                                        (len(self.coords_[m]), ranks[m], ranks[m])).copy())
        size = int(np.prod(ranks))
        core_mean = rng.standard_normal(size) * math.sqrt(self.core_variance)
        core_cov = np.eye(size) * 0.1 * self.core_variance
        tau_a, tau_b = self.a0, self.b0
        msgs = [(np.zeros((len(c), r, r)), np.zeros((len(c), r))) for c, r in
                zip(self.coords_, ranks, strict=True)]
        self.history_ = []
        prev = math.inf
        for epoch in range(self.n_epochs):
            tau = tau_a / tau_b
            for m in range(k):
                lam, eta = self._messages(m, ys, means, covs, core_mean, core_cov, tau)
                old_lam, old_eta = msgs[m]
                lam = (1 - self.damping) * lam + self.damping * old_lam if epoch else lam
                eta = (1 - self.damping) * eta + self.damping * old_eta if epoch else eta
                msgs[m] = (lam, eta)
                mu, cov = state_space_posterior(
                    self.coords_[m], lam, eta, kernel=self.kernel,
                    lengthscale=self.lengthscales_[m], variance=self.variance)
                means[m], covs[m] = mu, cov
            ez, ezz = self._z_moments(list(range(k)), means, covs)
            prec = np.eye(size) / self.core_variance + tau * ezz.sum(0)
            core_cov = np.linalg.inv(prec)
            core_cov = 0.5 * (core_cov + core_cov.T)
            core_mean = core_cov @ (tau * (ys[:, None] * ez).sum(0))
            second = core_cov + np.outer(core_mean, core_mean)
            sq = ys ** 2 - 2 * ys * (ez @ core_mean) + np.einsum("ij,nij->n", second, ezz)
            tau_a = self.a0 + 0.5 * n
            tau_b = self.b0 + 0.5 * float(np.clip(sq, 0, None).sum())
            rmse = float(np.sqrt(np.mean((ys - ez @ core_mean) ** 2)))
            self.history_.append(rmse)
            self.n_iter_ = epoch + 1
            if abs(prev - rmse) <= self.tol * max(rmse, 1e-300):
                break
            prev = rmse
        self.core_mean_, self.core_cov_ = core_mean.reshape(ranks), core_cov
        self.noise_precision_ = tau_a / tau_b
        self.factor_means_, self.factor_covs_ = means, covs
        self._msgs = msgs
        return self

    def _prior_draw(self, coords: np.ndarray, r: int, m: int, rng: np.random.Generator
                    ) -> np.ndarray:
        gaps = np.diff(coords)
        a, q, pinf = _transitions(self.kernel, self.lengthscales_[m], self.variance, gaps)
        d = pinf.shape[0]
        z = np.zeros((len(coords), r, d))
        z[0] = rng.standard_normal((r, d)) @ np.linalg.cholesky(pinf).T
        for j in range(1, len(coords)):
            chol = np.linalg.cholesky(q[j - 1] + 1e-12 * np.eye(d))
            z[j] = z[j - 1] @ a[j - 1].T + rng.standard_normal((r, d)) @ chol.T
        return z[:, :, 0]

    def _z_moments(self, modes: list[int], means: list[np.ndarray], covs: list[np.ndarray],
                   index: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        index = self._index if index is None else index
        mu = [means[m][index[m]] for m in modes]
        sec = [covs[m][index[m]] + mu_m[:, :, None] * mu_m[:, None, :]
               for m, mu_m in zip(modes, mu, strict=True)]
        return _kron_rows(mu), _kron_rows(sec)

    def _messages(self, m: int, ys: np.ndarray, means: list[np.ndarray],
                  covs: list[np.ndarray], core_mean: np.ndarray, core_cov: np.ndarray,
                  tau: float) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.ranks_)
        ranks = self.ranks_
        others = [j for j in range(k) if j != m]
        if others:
            ez, ezz = self._z_moments(others, means, covs)
        else:
            ez, ezz = np.ones((len(ys), 1)), np.ones((len(ys), 1, 1))
        r = ranks[m]
        rest = int(np.prod([ranks[j] for j in others])) if others else 1
        # core with mode m first: W_(m) (r x rest); covariance reordered the same way
        w = np.moveaxis(core_mean.reshape(ranks), m, 0).reshape(r, rest)
        s4 = core_cov.reshape(*ranks, *ranks)
        s4 = np.moveaxis(np.moveaxis(s4, k + m, k), m, 0).reshape(r, rest, r, rest)
        ea = ez @ w.T  # (n, r)
        eaa = np.einsum("ps,nst,qt->npq", w, ezz, w) + np.einsum("psqt,nst->npq", s4, ezz)
        lam = np.zeros((len(self.coords_[m]), r, r))
        eta = np.zeros((len(self.coords_[m]), r))
        np.add.at(lam, self._index[m], tau * eaa)
        np.add.at(eta, self._index[m], tau * ys[:, None] * ea)
        return lam, eta

    def _check(self) -> None:
        if not hasattr(self, "core_mean_"):
            raise LowRankError("FunctionalTucker is not fitted: call fit(X, y) first")

    def factor_posterior(self, mode: int, coords: Any) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means ``(n, R)`` and covariances of ``u^mode`` at any coordinates."""
        self._check()
        c = as_numpy(coords, "coords").reshape(-1)
        train = self.coords_[mode]
        union, inv = np.unique(np.concatenate([train, c]), return_inverse=True)
        r = self.ranks_[mode]
        lam = np.zeros((len(union), r, r))
        eta = np.zeros((len(union), r))
        lam[inv[:len(train)]] = self._msgs[mode][0]
        eta[inv[:len(train)]] = self._msgs[mode][1]
        mu, cov = state_space_posterior(union, lam, eta, kernel=self.kernel,
                                        lengthscale=self.lengthscales_[mode],
                                        variance=self.variance)
        sel = inv[len(train):]
        return mu[sel], cov[sel]

    def predict(self, x: Any, return_std: bool = False) -> Any:
        """Posterior predictive mean (and std including noise) at coordinates ``(n, K)``."""
        self._check()
        xs = as_numpy(x, "X")
        k = len(self.ranks_)
        if xs.ndim != 2 or xs.shape[1] != k:
            raise LowRankError(f"X must have shape (n, {k}), got {xs.shape}")
        check_real("X", xs)
        check_finite_values("X", xs)
        means, covs = [], []
        for m in range(k):
            mu, cov = self.factor_posterior(m, xs[:, m])
            means.append(mu)
            covs.append(cov)
        ident = [np.arange(len(xs))] * k
        ez, ezz = self._z_moments(list(range(k)), means, covs, index=ident)
        w = self.core_mean_.reshape(-1)
        mean = ez @ w
        if not return_std:
            return mean
        second = self.core_cov_ + np.outer(w, w)
        var = np.einsum("ij,nij->n", second, ezz) - mean ** 2
        return mean, np.sqrt(np.clip(var, 0, None) + 1.0 / self.noise_precision_)
