"""Oracles for S4D (kernel = unrolled recurrence) and PTD (conditioning vs transfer error)."""

import numpy as np
import pytest
import torch

from lowrank.errors import ConfigError
from lowrank.science import DiagonalSSM, ptd_init, s4d_eigenvalues
from lowrank.science.ssm import (
    conjugate_half,
    fft_conv,
    half_transfer_function,
    hippo_legs,
    hippo_legs_normal,
    normal_part_error,
    transfer_function,
    transfer_function_dense,
)


@pytest.mark.parametrize("init", ["lin", "inv", "real", "legs", "ptd"])
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
    x = torch.zeros(2, 4, layer.n_modes, dtype=torch.complex128)
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
        DiagonalSSM(4, 8, init="hippo")


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


def _dense_discrete_kernel(a, b, c, dt, length):
    """``K[l] = c Abar^l Bbar`` of the dense ZOH-discretised system (no eigenvectors)."""
    from scipy.linalg import expm

    abar = expm(dt * a)
    x = np.linalg.solve(a, (abar - np.eye(a.shape[0])) @ b)
    out = []
    for _ in range(length):
        out.append(c @ x)
        x = abar @ x
    return np.array(out)


@pytest.mark.parametrize("hippo_b", ["balanced", "ones", "vinv"])
@pytest.mark.parametrize("init, tol", [("legs", 1e-4), ("ptd", 5e-2)])
def test_hippo_inits_reproduce_the_system_they_diagonalise(init, tol, hippo_b):
    # each channel's initial kernel is the kernel of c^T (HiPPO system) b with the channel's c:
    # S4D-LegS reproduces the normal part (exactly, up to float32), S4-PTD HiPPO-LegS itself
    # within the PTD transfer-function tolerance (eps = 0.1: ~2e-2)
    n = 64
    layer = DiagonalSSM(2, n, init=init, hippo_b=hippo_b, seed=5)
    a, b = hippo_legs(n)
    if init == "legs":
        a = hippo_legs_normal(n)
    c = np.random.default_rng(5).standard_normal((2, n))       # the layer's read-outs
    with torch.no_grad():
        k = layer.double().kernel(200).numpy()
        dt = torch.exp(layer.log_dt).numpy()
    for h in range(2):
        ref = _dense_discrete_kernel(a, b, c[h], dt[h], 200)
        assert np.abs(k[h] - ref).max() / np.abs(ref).max() < tol
    if init == "ptd":
        assert layer.init_report["tf_error"] < tol
        assert layer.init_report["relative_perturbation"] == pytest.approx(
            0.1 / np.linalg.norm(a, 2), rel=1e-6)


def test_random_readout_is_not_the_hippo_system():
    # the property above is not automatic: a PTD spectrum with an unrelated random C is far
    # from HiPPO (the pre-fix initialisation)
    n = 64
    layer = DiagonalSSM(1, n, init="ptd", hippo_b="ones", seed=5)
    with torch.no_grad():
        layer.c.copy_(torch.randn_like(layer.c))
        k = layer.double().kernel(200).numpy()[0]
        dt = float(torch.exp(layer.log_dt)[0])
    a, b = hippo_legs(n)
    ref = _dense_discrete_kernel(a, b, np.random.default_rng(5).standard_normal(n), dt, 200)
    assert np.abs(k - ref).max() / np.abs(ref).max() > 0.5


def test_conjugate_half_is_exact_with_real_eigenvalues():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 9)) - 4 * np.eye(9)
    b, c = rng.standard_normal(9), rng.standard_normal((2, 9))
    lam, v = np.linalg.eig(a)
    m = int(np.sum(lam.imag == 0))
    assert m >= 1                                               # odd size: a real eigenvalue
    lam_h, b_h, c_h = conjugate_half(lam, np.linalg.solve(v, b), c @ v)
    assert lam_h.size == (9 + m) // 2
    w = np.linspace(0.0, 20.0, 41)
    for h in range(2):
        assert np.allclose(half_transfer_function(lam_h, b_h, c_h[h], w),
                           transfer_function_dense(a, b, c[h], w), rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="conjugate"):
        conjugate_half(np.array([1j, 2j]), np.ones(2), np.ones(2))


def test_hippo_b_splits_keep_the_same_system():
    layers = {hb: DiagonalSSM(3, 16, init="ptd", hippo_b=hb, seed=0)
              for hb in ("balanced", "ones", "vinv")}
    prods = {hb: torch.view_as_complex(m.b.detach()) * torch.view_as_complex(m.c.detach())
             for hb, m in layers.items()}
    for hb in ("ones", "vinv"):
        assert torch.equal(layers[hb].a_imag, layers["balanced"].a_imag)
        assert torch.allclose(prods[hb], prods["balanced"], rtol=1e-4, atol=0)
    b_ones = torch.view_as_complex(layers["ones"].b.detach())
    b_vinv = torch.view_as_complex(layers["vinv"].b.detach())
    assert torch.allclose(b_ones, torch.ones_like(b_ones))
    assert float(b_vinv.abs().max() / b_vinv.abs().min()) > 10  # V^{-1} b is badly scaled
    with pytest.raises(ConfigError, match="hippo_b"):
        DiagonalSSM(2, 16, init="ptd", hippo_b="bad")
    with pytest.raises(ConfigError, match="Re >= 0"):
        DiagonalSSM(2, 64, init="ptd", ptd_eps=30.0, seed=0)
