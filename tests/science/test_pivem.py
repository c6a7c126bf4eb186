"""PiVeM: Kronecker x low-rank prior equals the dense Gaussian; erf integral equals quadrature."""

import numpy as np
import torch

from lowrank.science import KroneckerLowRankGaussian, PiVeM, planted_dynamic_network, roc_auc
from lowrank.science.pivem import link_prediction_split, rbf_gram, score_samples


def test_prior_logpdf_and_solve_equal_dense():
    g = torch.Generator().manual_seed(0)
    b = rbf_gram(torch.linspace(0, 1, 20, dtype=torch.float64), torch.tensor(0.2)) \
        + 1e-3 * torch.eye(20, dtype=torch.float64)
    q = torch.randn(30, 3, generator=g, dtype=torch.float64)
    prior = KroneckerLowRankGaussian(b, q, torch.full((30,), 0.1, dtype=torch.float64), 2,
                                     scale=1.7)
    v = torch.randn(20, 30, 2, generator=g, dtype=torch.float64)
    dense = torch.distributions.MultivariateNormal(torch.zeros(1200, dtype=torch.float64),
                                                   covariance_matrix=prior.dense())
    assert torch.allclose(prior.logpdf(v), dense.log_prob(v.reshape(-1)), rtol=1e-8)
    sol = torch.linalg.solve(prior.dense(), v.reshape(-1))
    # cond(Sigma) ~ 4e6, so compare in relative norm
    assert (prior.solve(v).reshape(-1) - sol).norm() / sol.norm() < 1e-8


def test_closed_form_integral_equals_quadrature():
    m = PiVeM(5, n_bins=4, seed=0)
    with torch.no_grad():
        m.v.normal_(0, 2.0)
        m.beta.normal_(0, 0.3)
    i, j = torch.tensor([0, 1, 3]), torch.tensor([2, 4, 4])
    t = torch.linspace(0.1, 0.7, 20001, dtype=torch.float64)
    for a, b in zip(i, j, strict=True):
        lam = torch.exp(m.log_intensity(a.repeat(len(t)), b.repeat(len(t)), t))
        quad = torch.trapezoid(lam, t)
        assert torch.allclose(m.integral(a[None], b[None], 0.1, 0.7)[0], quad, rtol=1e-6)


def test_roc_auc():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5


def test_link_prediction_better_than_chance():
    ev, _ = planted_dynamic_network(18, 3, base_rate=20, seed=1)
    split = link_prediction_split(ev, 0.2, 5, seed=0)
    labels = np.array([s[-1] for s in split["samples"]])
    model = PiVeM(18, n_bins=5, seed=0)
    model.fit(split["train_events"], split["train_pairs"], steps=80)
    assert roc_auc(score_samples(model, split["samples"]), labels) > 0.7
