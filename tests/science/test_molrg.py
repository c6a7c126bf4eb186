"""MoLRG denoiser = closed-form posterior mean; subspace clustering recovers planted subspaces."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from lowrank.errors import ConfigError
from lowrank.science import MoLRG, k_subspaces, recovery_rate, subspace_recovery_error
from lowrank.science.molrg import random_bases


def test_denoiser_equals_dense_gaussian_posterior_mean():
    rng = np.random.default_rng(0)
    model = MoLRG(random_bases(6, 2, 3, rng), pi=np.array([0.5, 0.3, 0.2]))
    sigma = 0.7
    x, _ = model.sample(5, rng)
    xt = x + sigma * rng.standard_normal(x.shape)
    covs = [u @ u.T + sigma**2 * np.eye(6) for u in model.bases]
    for row in range(5):
        dens = np.array([p * multivariate_normal(np.zeros(6), c).pdf(xt[row])
                         for p, c in zip(model.pi, covs, strict=True)])
        post = dens / dens.sum()
        means = [u @ u.T @ np.linalg.solve(c, xt[row]) for u, c in zip(model.bases, covs,
                                                                         strict=True)]
        oracle = sum(w * m for w, m in zip(post, means, strict=True))
        assert np.allclose(model.denoise(xt[row], sigma)[0], oracle, atol=1e-10)
        assert np.isclose(model.logpdf_noisy(xt[row], sigma)[0], np.log(dens.sum()))


def test_denoiser_beats_identity_and_reaches_oracle_mse():
    rng = np.random.default_rng(1)
    model = MoLRG(random_bases(48, 4, 3, rng))
    x, _ = model.sample(2000, rng)
    xt = x + 0.5 * rng.standard_normal(x.shape)
    mse = np.mean((model.denoise(xt, 0.5) - x) ** 2)
    known_component = 4 / 48 * 0.25 / 1.25   # MMSE if the component were known
    assert known_component <= mse < 1.3 * known_component
    assert mse < 0.1 * np.mean((xt - x) ** 2)


def test_k_subspaces_recovers_planted_subspaces():
    assert recovery_rate(48, 3, 4, num=48, trials=10) >= 0.9


def test_phase_transition_direction():
    assert recovery_rate(48, 3, 4, num=9, trials=5) == 0.0


def test_recovered_bases_are_orthonormal():
    rng = np.random.default_rng(3)
    model = MoLRG(random_bases(20, 2, 2, rng))
    x, _ = model.sample(60, rng)
    est, labels = k_subspaces(x, 2, 2)
    assert np.allclose(np.einsum("knd,kne->kde", est, est), np.eye(2)[None], atol=1e-10)
    assert subspace_recovery_error(est, model.bases) < 1.0


def test_errors():
    with pytest.raises(ConfigError, match="sum"):
        MoLRG(random_bases(4, 2, 2), pi=np.array([0.9, 0.9]))
