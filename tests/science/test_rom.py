"""Oracles for the GIOROM-style reduced-order operator: exact affine reproduction of the learned
interpolation, farthest-point coverage, and learned sparse dynamics on an elastic plate."""

import numpy as np
import pytest
import torch

from lowrank.errors import ConfigError
from lowrank.science.rom import (
    LearnedInterpolation,
    ReducedOrderOperator,
    elastic_plate_trajectories,
    farthest_point_sample,
    relative_error,
)


def test_interpolation_reproduces_affine_fields_exactly():
    torch.manual_seed(0)
    interp = LearnedInterpolation(2, k=8)
    for p in interp.phi.parameters():                  # an arbitrary (non-Gaussian) kernel
        torch.nn.init.normal_(p, std=0.5)
    pts = torch.rand(60, 2, dtype=torch.float64)
    query = torch.rand(200, 2, dtype=torch.float64) * 1.2 - 0.1     # includes extrapolation
    a = torch.tensor([[0.3, -1.2], [2.0, 0.7]], dtype=torch.float64)
    c = torch.tensor([0.5, -0.25], dtype=torch.float64)
    vals = pts @ a + c
    out = interp(vals, query, pts)
    assert torch.allclose(out, query @ a + c, atol=1e-10, rtol=0)
    # without the affine correction: a partition of unity (constants exact, weights >= 0)
    avg = LearnedInterpolation(2, k=8, affine=False)
    idx, w = avg.operator(query, pts)
    assert torch.allclose(w.sum(1), torch.ones(200, dtype=torch.float64), atol=1e-12)
    assert (w >= 0).all()


def test_farthest_point_sample_covers_the_cloud():
    x = np.linspace(0, 1, 101)[:, None]
    idx = farthest_point_sample(x, 11, seed=3)
    assert len(set(idx.tolist())) == 11
    cover = np.abs(x - x[idx].T).min(1).max()
    assert cover <= 0.1 + 1e-12                         # optimal covering radius is 0.05
    with pytest.raises(ConfigError):
        farthest_point_sample(x, 500)


def test_rom_learns_sparse_dynamics_and_interpolates():
    data = elastic_plate_trajectories(13, 25, nx=13, ny=4, length=1.2, width=0.3,
                                      stiffness=1600.0, substeps=10, seed=1)
    train, test = data.displacements[:12], data.displacements[12]
    rom = ReducedOrderOperator(data.points, channels=2, m=20, k_graph=5, hidden=32, seed=0)
    rom.fit(train, steps=400, interp_steps=150, batch=32, lr=1e-2, noise=0.0)
    # short rollout on the sparse graph, evaluated on the whole cloud, beats both holding the
    # last frame and constant-velocity extrapolation from the same two frames
    horizon = 8
    pred = rom.predict(test[0], test[1], horizon).numpy()
    true = test[2:2 + horizon]
    steps = np.arange(1, horizon + 1)[:, None, None]
    err = relative_error(pred, true)
    assert err < 0.35
    assert err < relative_error(test[1] + (test[1] - test[0]) * steps, true)
    assert err < 0.5 * relative_error(np.broadcast_to(test[1], true.shape), true)
    # the trained interpolation beats the untrained Gaussian moving least squares on held-out
    # snapshots (at the points that are not in the sparse set and at the sparse ones alike)
    snap = torch.tensor(test[5:], dtype=torch.float32)
    base = LearnedInterpolation(2, rom.interp.k, learn=False)
    pts = torch.tensor(data.points, dtype=torch.float32)
    e_learned = relative_error(rom.evaluate(snap[:, rom.sparse_idx], data.points), snap)
    e_base = relative_error(base(snap[:, rom.sparse_idx], pts, rom.sparse_points), snap)
    assert e_learned < 0.8 * e_base


def test_rom_rejects_bad_shapes():
    pts = np.random.default_rng(0).random((30, 2))
    rom = ReducedOrderOperator(pts, channels=2, m=10, k_graph=4)
    with pytest.raises(ConfigError):
        rom.fit(np.zeros((2, 5, 29, 2)))
    with pytest.raises(ConfigError):
        ReducedOrderOperator(pts, channels=2, m=40)
