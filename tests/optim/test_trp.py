"""Trained Rank Pruning: energy rank, projection, nuclear sub-gradient, decomposition."""

from __future__ import annotations

import torch
from torch import nn

from lowrank.nn import LowRankLinear
from lowrank.optim import TrainedRankPruning, energy_rank


def test_energy_rank_is_minimal():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])
    total = (s**2).sum()
    k = energy_rank(s, 0.9)
    assert (s[:k] ** 2).sum() / total >= 0.9 and (s[: k - 1] ** 2).sum() / total < 0.9
    assert energy_rank(s, 1.0) == 4


def test_projection_is_idempotent_and_sets_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10))
    trp = TrainedRankPruning(model, energy=0.8, nuclear_weight=0.0, period=1)
    ranks = trp.project_now()
    w = model[0].weight.detach().clone()
    assert torch.linalg.matrix_rank(w.double(), atol=1e-5).item() == ranks["0"]
    trp.project_now(ranks)
    torch.testing.assert_close(model[0].weight.detach(), w, atol=1e-5, rtol=0)


def test_nuclear_subgradient_matches_autograd_and_off_equals_sgd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5).double())
    w = model[0].weight
    trp = TrainedRankPruning(model, energy=1.0, nuclear_weight=0.5, project=False)
    w.grad = torch.zeros_like(w)
    trp.after_backward()
    ref = torch.autograd.grad(torch.linalg.svdvals(w).sum(), w)[0]
    torch.testing.assert_close(w.grad, 0.5 * ref, atol=1e-5, rtol=0)
    # lambda = 0 and no projection: a plain SGD step
    a = nn.Sequential(nn.Linear(6, 5))
    b = nn.Sequential(nn.Linear(6, 5))
    b.load_state_dict(a.state_dict())
    trp0 = TrainedRankPruning(b, nuclear_weight=0.0, project=False)
    x = torch.randn(3, 6)
    for m, cb in ((a, None), (b, trp0)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        m(x).sum().backward()
        if cb:
            cb.after_backward()
        opt.step()
        if cb:
            cb.after_step()
    assert torch.equal(a[0].weight, b[0].weight)


def test_decompose_reproduces_truncated_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    trp = TrainedRankPruning(model, energy=0.7, nuclear_weight=0.0)
    trp.project_now()
    x = torch.randn(4, 8)
    before = model(x)
    ranks = trp.decompose(model, threshold=1e-4)
    assert isinstance(model[0], LowRankLinear) and model[0].rank == ranks["0"]
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
