"""Oracles for S4D (kernel = unrolled recurrence) and PTD (conditioning vs transfer error)."""

import numpy as np
import pytest
import torch

from lowrank.errors import ConfigError
from lowrank.structured import DiagonalSSM, ptd_init, s4d_eigenvalues
from lowrank.structured.ssm import (
    fft_conv,
    hippo_legs,
    normal_part_error,
    transfer_function,
    transfer_function_dense,
)


@pytest.mark.parametrize("init", ["lin", "inv", "real", "ptd"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_kernel_equals_unrolled_recurrence(init, disc):
    torch.manual_seed(0)
    layer = DiagonalSSM(4, 16, init=init, discretisation=disc, seed=1).double()
    u = torch.randn(2, 50, 4, dtype=torch.float64)
    y_conv = layer(u)
    state = layer.initial_state(2)
    steps = []
    for t in range(u.shape[1]):
        y_t, state = layer.step(u[:, t], state)
        steps.append(y_t)
    y_rec = torch.stack(steps, 1)
    assert torch.allclose(y_conv, y_rec, atol=1e-10, rtol=0)
    # the linear part alone: K * u + D u against the explicit recurrence
    abar, bbar, c = layer.discrete()
    x = torch.zeros(2, 4, 8, dtype=torch.complex128)
    lin = []
    for t in range(u.shape[1]):
        x = abar * x + bbar * u[:, t].unsqueeze(-1)
        lin.append(2 * (c * x).sum(-1).real + layer.d * u[:, t])
    assert torch.allclose(layer.convolve(u), torch.stack(lin, 1), atol=1e-10, rtol=0)


def test_fft_conv_matches_direct_convolution():
    u, k = torch.randn(3, 37, dtype=torch.float64), torch.randn(3, 37, dtype=torch.float64)
    direct = torch.stack([torch.stack([(k[h, : t + 1].flip(0) * u[h, : t + 1]).sum()
                                       for t in range(37)]) for h in range(3)])
    assert torch.allclose(fft_conv(u, k), direct, atol=1e-12)


def test_init_formulas():
    lam = s4d_eigenvalues(8, "inv")
    assert np.allclose(lam.real, -0.5)
    assert np.allclose(lam.imag, 8 / np.pi * (8 / (2 * np.arange(4) + 1) - 1))
    assert np.allclose(s4d_eigenvalues(8, "lin").imag, np.pi * np.arange(4))
    assert np.allclose(s4d_eigenvalues(8, "real"), -(np.arange(4) + 1))
    with pytest.raises(ConfigError, match="even"):
        s4d_eigenvalues(7)
    with pytest.raises(ConfigError, match="init"):
        DiagonalSSM(4, 8, init="legs")


def test_ptd_conditions_hippo_with_small_transfer_error():
    res = ptd_init(n=64, eps=0.1, n_trials=20, seed=0)
    assert res.cond_v_unperturbed > 1e15          # exact diagonalisation is hopeless
    assert res.cond_v < 1e5                       # >= 10 orders of magnitude better
    assert res.tf_error < 5e-2
    assert np.all(res.lam.real < 0)
    assert res.backward_error < 1e-3
    # the S4D/S5 choice (normal part only) is far from HiPPO's transfer function
    assert normal_part_error(64) > 1.0


def test_ptd_error_shrinks_with_eps():
    errs = [ptd_init(n=32, eps=e, n_trials=5).tf_error for e in (1e-3, 1e-2, 1e-1)]
    assert errs[0] < errs[1] < errs[2]


def test_transfer_function_diagonal_matches_dense():
    rng = np.random.default_rng(0)
    a = -np.diag(rng.uniform(1, 3, 6)) + 0.1 * rng.standard_normal((6, 6))
    b, c = rng.standard_normal(6), rng.standard_normal(6)
    lam, v = np.linalg.eig(a)
    w = np.linspace(0.1, 10, 30)
    g1 = transfer_function(lam, np.linalg.solve(v, b), c @ v, w)
    assert np.allclose(g1, transfer_function_dense(a, b, c, w), rtol=1e-10, atol=1e-12)


def test_hippo_shape_and_spectrum():
    a, b = hippo_legs(5)
    assert np.allclose(np.sort(np.linalg.eigvals(a).real), -np.arange(5, 0, -1))
    assert np.allclose(b, np.sqrt(2 * np.arange(5) + 1))


def test_ptd_input_options():
    ones = DiagonalSSM(2, 16, init="ptd", seed=0)
    vinv = DiagonalSSM(2, 16, init="ptd", ptd_input="vinv", seed=0)
    assert torch.equal(ones.a_imag, vinv.a_imag)               # same PTD eigenvalues
    b_ones = torch.view_as_complex(ones.b.detach())
    b_vinv = torch.view_as_complex(vinv.b.detach())
    assert torch.allclose(b_ones, torch.ones_like(b_ones))
    assert float(b_vinv.abs().max() / b_vinv.abs().min()) > 10  # V^{-1} b is badly scaled
    with pytest.raises(ConfigError):
        DiagonalSSM(2, 16, init="ptd", ptd_input="bad")
