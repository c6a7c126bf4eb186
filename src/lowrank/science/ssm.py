"""Diagonal state-space layer (S4D) and the perturb-then-diagonalise initialiser (S4/S5-PTD).

S4D: Gu, Gupta, Goel, Re, "On the Parameterization and Initialization of Diagonal State Space
Models" (NeurIPS 2022). A continuous SSM ``x' = A x + B u, y = C x + D u`` with diagonal complex
``A = diag(lambda_n)`` (n = 1..N/2; the conjugate modes are implicit) is discretised with step
``dt`` (ZOH or bilinear); its length-L convolution kernel is the Vandermonde product
``K[l] = 2 Re sum_n C_n Bbar_n Abar_n^l`` and ``y = K * u + D u`` is computed by FFT.

PTD: Yu, Nigmetov, Morozov, Mahoney, Erichson, "Robustifying State-space Models for Long
Sequences via Approximate Diagonalization" (ICLR 2024). The HiPPO-LegS matrix is strongly
non-normal, so its eigenvector matrix is catastrophically ill-conditioned; diagonalising
``A + E`` with a small perturbation ``||E|| <= eps`` instead gives a moderately conditioned
``V`` (a backward-stable diagonalisation of a nearby matrix) whose transfer function stays
uniformly close to HiPPO's. S4-PTD initialises the diagonal SSM with ``(Lambda, V^{-1} B, C V)``
for the HiPPO read-out ``C``: the eigenvalues alone, with an unrelated random ``C``, do not give
HiPPO's kernel (``DiagonalSSM(init="ptd")`` keeps ``C V``; ``init="legs"`` is S4D-LegS, the
normal part of HiPPO-LegS, for comparison).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

INITS = ("lin", "inv", "real", "legs", "ptd")
HIPPO_B = ("balanced", "ones", "vinv")
DISCRETISATIONS = ("zoh", "bilinear")


# --------------------------------------------------------------------------------------------
# Initialisations
# --------------------------------------------------------------------------------------------

def s4d_eigenvalues(d_state: int, init: str = "lin") -> np.ndarray:
    """The ``d_state // 2`` diagonal eigenvalues of S4D-Lin, S4D-Inv or S4D-Real (complex128).

    * lin:  ``-1/2 + i pi n``
    * inv:  ``-1/2 + i (N/pi) (N/(2n+1) - 1)`` (asymptotics of the HiPPO-LegS spectrum)
    * real: ``-(n+1)``
    """
    if d_state < 2 or d_state % 2:
        raise ConfigError(f"d_state must be an even integer >= 2 (N/2 complex modes), "
                          f"got {d_state}")
    n = np.arange(d_state // 2, dtype=np.float64)
    if init == "lin":
        return -0.5 + 1j * math.pi * n
    if init == "inv":
        return -0.5 + 1j * (d_state / math.pi) * (d_state / (2 * n + 1) - 1)
    if init == "real":
        return -(n + 1) + 0j
    raise ConfigError(f"init must be one of {INITS[:3]} here (use hippo_diagonal_system for "
                      f"'legs' and 'ptd'), got {init!r}")


def hippo_legs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegS ``(A, B)``: ``A[i,j] = -sqrt(2i+1) sqrt(2j+1)`` below the diagonal, ``-(i+1)``
    on it, 0 above; ``B[i] = sqrt(2i+1)``."""
    q = np.sqrt(2 * np.arange(n) + 1.0)
    a = -np.tril(np.outer(q, q), -1) - np.diag(np.arange(1, n + 1, dtype=np.float64))
    return a, q.copy()


def hippo_legs_normal(n: int) -> np.ndarray:
    """The normal part ``A + P P^T`` (``P_i = sqrt(i + 1/2)``) of HiPPO-LegS that S4D/S5 keep."""
    a, _ = hippo_legs(n)
    p = np.sqrt(np.arange(n) + 0.5)
    return a + np.outer(p, p)


def transfer_function(lam: np.ndarray, b: np.ndarray, c: np.ndarray,
                      omega: np.ndarray) -> np.ndarray:
    """``G(i w) = sum_n c_n b_n / (i w - lambda_n)`` of a diagonal system, for every ``w``."""
    return ((c * b)[None, :] / (1j * omega[:, None] - lam[None, :])).sum(axis=1)


def transfer_function_dense(a: np.ndarray, b: np.ndarray, c: np.ndarray,
                            omega: np.ndarray) -> np.ndarray:
    """``G(i w) = c^T (i w I - A)^{-1} b`` by a linear solve per frequency (no eigenvectors)."""
    eye = np.eye(a.shape[0])
    return np.array([c @ np.linalg.solve(1j * w * eye - a, b) for w in omega])


@dataclass
class PTDResult:
    """Output of :func:`ptd_init`: the diagonal system and its quality report.

    ``lam``, ``b``, ``c`` define ``G~(s) = sum c_n b_n / (s - lam_n)``; ``cond_v`` is the
    2-norm condition number of the (column-normalised) eigenvector matrix of ``A + E``,
    ``cond_v_unperturbed`` that of ``A`` itself, ``perturbation_norm`` is ``||E||_2``,
    ``backward_error`` is ``||A - V diag(lam) V^{-1}||_2 / ||A||_2`` and ``tf_error`` the
    relative sup error ``max_w |G~(iw) - G(iw)| / max_w |G(iw)|`` over ``omega``.
    """

    lam: np.ndarray
    b: np.ndarray
    c: np.ndarray
    cond_v: float
    cond_v_unperturbed: float
    perturbation_norm: float
    backward_error: float
    tf_error: float
    omega: np.ndarray
    v: np.ndarray | None = None
    relative_perturbation: float = float("nan")


def _diagonalise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    lam, v = np.linalg.eig(a)
    v = v / np.linalg.norm(v, axis=0, keepdims=True)
    s = np.linalg.svd(v, compute_uv=False)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    return lam, v, cond


def ptd_init(a: np.ndarray | None = None, b: np.ndarray | None = None,
             c: np.ndarray | None = None, *, n: int = 64, eps: float = 0.1,
             n_trials: int = 20, omega: np.ndarray | None = None,
             seed: int = 0) -> PTDResult:
    """Perturb-then-diagonalise (PTD) a non-normal state matrix (default: HiPPO-LegS of size n).

    Draws ``n_trials`` real Gaussian perturbations ``E`` scaled to ``||E||_2 = eps``,
    diagonalises each ``A + E = V Lambda V^{-1}`` and keeps the draw with the smallest
    ``kappa(V)`` (the paper's trade-off ``kappa(V_E)`` vs ``||E||`` at a fixed ``eps``; the
    paper minimises ``kappa(V_E) + gamma ||E||`` by gradient descent instead). Returns
    ``Lambda``, ``V^{-1} B`` and ``C V`` (all n modes; :func:`conjugate_half` keeps one of each
    conjugate pair for an S4D layer), ``V`` itself, ``||E|| / ||A||``, the condition numbers and
    the transfer-function error against the unperturbed system on ``i omega`` (default: 400
    log-spaced frequencies in [1e-2, 1e3]). ``c`` defaults to a seeded standard normal vector.
    """
    if a is None:
        a, b_default = hippo_legs(n)
        b = b_default if b is None else b
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ConfigError(f"ptd_init needs a square state matrix, got shape {a.shape}")
    size = a.shape[0]
    if b is None:
        raise ConfigError("ptd_init needs the input vector b when a state matrix is given")
    if eps <= 0 or n_trials < 1:
        raise ConfigError(f"ptd_init needs eps > 0 and n_trials >= 1, got eps={eps}, "
                          f"n_trials={n_trials}")
    rng = np.random.default_rng(seed)
    b = np.asarray(b, dtype=np.float64)
    c = rng.standard_normal(size) if c is None else np.asarray(c, dtype=np.float64)
    omega = np.logspace(-2, 3, 400) if omega is None else np.asarray(omega, dtype=np.float64)

    _, _, cond0 = _diagonalise(a)
    best = None
    for _ in range(n_trials):
        e = rng.standard_normal((size, size))
        e *= eps / np.linalg.norm(e, 2)
        lam, v, cond = _diagonalise(a + e)
        if best is None or cond < best[2]:
            best = (lam, v, cond, e)
    lam, v, cond, e = best
    b_t = np.linalg.solve(v, b)
    c_t = c @ v
    g_ref = transfer_function_dense(a, b, c, omega)
    g_ptd = transfer_function(lam, b_t, c_t, omega)
    tf_err = float(np.max(np.abs(g_ptd - g_ref)) / np.max(np.abs(g_ref)))
    recon = (v * lam[None, :]) @ np.linalg.inv(v)
    back = float(np.linalg.norm(a - recon, 2) / np.linalg.norm(a, 2))
    e_norm = float(np.linalg.norm(e, 2))
    return PTDResult(lam=lam, b=b_t, c=c_t, cond_v=cond, cond_v_unperturbed=cond0,
                     perturbation_norm=e_norm, backward_error=back, tf_error=tf_err, omega=omega,
                     v=v, relative_perturbation=e_norm / float(np.linalg.norm(a, 2)))


def conjugate_half(lam: np.ndarray, b: np.ndarray,
                   c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep one mode of each conjugate pair of a diagonalised *real* system, exactly.

    ``lam``, ``b = V^{-1} b_real`` and ``c = c_real V`` (``c`` may be (h, n), one row per
    channel) come from ``eig`` of a real matrix, so complex modes come in exact conjugate pairs.
    Returns the modes with ``Im lam > 0`` and the real modes, the latter with ``b`` halved, so that
    ``2 Re sum_n c_n b_n exp(lam_n t)`` (the S4D kernel) equals ``c_real exp(tA) b_real``. A real
    matrix with m real eigenvalues gives ``(n + m) / 2`` modes, not ``n / 2``.
    """
    lam = np.asarray(lam)
    pos, real = lam.imag > 0, lam.imag == 0
    if int(pos.sum()) != int((lam.imag < 0).sum()):
        raise ConfigError("conjugate_half needs the eigenvalues of a real matrix (conjugate "
                          f"pairs), got {int(pos.sum())} with Im > 0 and "
                          f"{int((lam.imag < 0).sum())} with Im < 0")
    keep = pos | real
    b_h = np.array(b, dtype=np.complex128)[keep]
    b_h[real[keep]] *= 0.5
    return lam[keep], b_h, np.asarray(c, dtype=np.complex128)[..., keep]


def half_transfer_function(lam: np.ndarray, b: np.ndarray, c: np.ndarray,
                           omega: np.ndarray) -> np.ndarray:
    """Transfer function of the real system a :func:`conjugate_half` triple stands for:
    ``sum_n c_n b_n / (i w - lam_n) + conj(c_n b_n) / (i w - conj(lam_n))``."""
    k = (c * b)[None, :]
    s = 1j * np.asarray(omega)[:, None]
    return (k / (s - lam[None, :]) + k.conj() / (s - lam.conj()[None, :])).sum(axis=1)


def hippo_diagonal_system(init: str, n: int, *, eps: float = 0.1, n_trials: int = 20,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Diagonalised HiPPO-LegS systems usable as S4D initialisers: ``(lam, V, V^{-1} b, report)``.

    * ``legs`` (S4D-LegS): the normal part ``A + P P^T`` of HiPPO-LegS, diagonalised by a unitary
      ``V`` (every ``Re lam = -1/2``); it drops the rank-1 term, so its transfer function is the
      normal part's, not HiPPO's.
    * ``ptd`` (S4-PTD): :func:`ptd_init` of HiPPO-LegS itself, ``A + E = V Lambda V^{-1}``.

    With a read-out ``c`` the diagonal system is ``(lam, V^{-1} b, c V)``.
    """
    a, b = hippo_legs(n)
    if init == "legs":
        lam, v = np.linalg.eig(hippo_legs_normal(n))
        v = v / np.linalg.norm(v, axis=0, keepdims=True)
        s = np.linalg.svd(v, compute_uv=False)
        return lam, v, np.linalg.solve(v, b), {"cond_v": float(s[0] / s[-1])}
    if init == "ptd":
        r = ptd_init(n=n, eps=eps, n_trials=n_trials, seed=seed)
        return r.lam, r.v, r.b, {"cond_v": r.cond_v, "tf_error": r.tf_error, "eps": eps,
                                 "relative_perturbation": r.relative_perturbation}
    raise ConfigError(f"hippo_diagonal_system init must be 'legs' or 'ptd', got {init!r}")


def normal_part_error(n: int = 64, omega: np.ndarray | None = None, seed: int = 0) -> float:
    """Relative sup transfer-function error of the S4D/S5 choice (diagonalise the normal part
    of HiPPO-LegS only) against HiPPO-LegS, with the same seeded ``c`` as :func:`ptd_init`."""
    a, b = hippo_legs(n)
    c = np.random.default_rng(seed).standard_normal(n)
    omega = np.logspace(-2, 3, 400) if omega is None else omega
    lam, v = np.linalg.eig(hippo_legs_normal(n))
    g = transfer_function(lam, np.linalg.solve(v, b), c @ v, omega)
    g_ref = transfer_function_dense(a, b, c, omega)
    return float(np.max(np.abs(g - g_ref)) / np.max(np.abs(g_ref)))


# --------------------------------------------------------------------------------------------
# Kernel and convolution
# --------------------------------------------------------------------------------------------

def discretise(lam: torch.Tensor, b: torch.Tensor, dt: torch.Tensor,
               method: str = "zoh") -> tuple[torch.Tensor, torch.Tensor]:
    """``(Abar, Bbar)`` of ``x' = lam x + b u`` with step ``dt`` (broadcast), ZOH or bilinear.

    ZOH: ``Abar = exp(dt lam)``, ``Bbar = (exp(dt lam) - 1) / lam * b``.
    Bilinear: ``Abar = (1 + dt lam / 2) / (1 - dt lam / 2)``, ``Bbar = dt / (1 - dt lam / 2) * b``.
    """
    dtl = dt * lam
    if method == "zoh":
        abar = torch.exp(dtl)
        return abar, (abar - 1) / lam * b
    if method == "bilinear":
        den = 1 - dtl / 2
        return (1 + dtl / 2) / den, dt / den * b
    raise ConfigError(f"discretisation must be one of {DISCRETISATIONS}, got {method!r}")


def vandermonde_kernel(abar: torch.Tensor, bbar: torch.Tensor, c: torch.Tensor,
                       length: int) -> torch.Tensor:
    """``K[..., l] = 2 Re sum_n c_n bbar_n abar_n^l`` for ``l < length`` (Vandermonde product)."""
    powers = torch.exp(torch.log(abar).unsqueeze(-1)
                       * torch.arange(length, device=abar.device, dtype=abar.real.dtype))
    return 2 * torch.einsum("...n,...nl->...l", c * bbar, powers).real


def fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution ``y[t] = sum_{j<=t} k[j] u[t-j]`` along the last axis by FFT."""
    length = u.shape[-1]
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :length]


class DiagonalSSM(nn.Module):
    """S4D layer: ``H`` independent diagonal SSMs of state size ``d_state`` (``d_state/2``
    complex modes), then GELU and a position-wise ``Linear(H, 2H)`` + GLU (the S4D block).

    Input and output are ``(batch, length, H)``. Parameters: ``log_dt`` (H, log-uniform in
    ``dt_range``), ``log_a_real`` and ``a_imag`` (H, modes), ``b`` and ``c`` (H, modes, complex,
    stored as real pairs), ``d`` (H). ``init``:

    * ``lin`` / ``inv`` / ``real``: S4D's closed-form eigenvalues, ``B = 1``, ``C`` complex
      standard normal (S4D's minimal recipe);
    * ``legs`` (S4D-LegS) / ``ptd`` (S4-PTD): a diagonalised HiPPO-LegS system
      ``(Lambda, V^{-1} b, c V)`` from :func:`hippo_diagonal_system`, with a real standard-normal
      read-out ``c`` per channel, so that each channel's initial kernel is the kernel of the
      (perturbed) HiPPO system it diagonalises. One mode of each conjugate pair is kept
      (:func:`conjugate_half`); for ``ptd`` each pair of real eigenvalues of ``A + E`` adds one
      mode. ``hippo_b`` splits each mode's product ``c_n b_n`` between ``B`` and ``C`` (an exact
      diagonal change of state basis, so the initial system is the same): ``"balanced"``
      (default; ``|B_n| = sqrt(mean_h |c_hn b_n|)``), ``"ones"`` (S4D's ``B = 1``, ``C = c V *
      V^{-1} b``) or ``"vinv"`` (the paper's literal ``B = V^{-1} b``, ``C = c V``; at
      ``kappa(V) ~ 4e4`` its B entries reach 1e5 and Adam barely moves them).

    ``forward`` uses the FFT convolution; :meth:`step` runs the same layer as a recurrence.
    ``init_report`` holds ``kappa(V)``, the transfer-function error of PTD and ``||E||/||A||``.
    """

    def __init__(self, d_model: int, d_state: int = 64, *, init: str = "lin",
                 discretisation: str = "zoh", dt_range: tuple[float, float] = (1e-3, 1e-1),
                 dropout: float = 0.0, postact: bool = True, ptd_eps: float = 0.1,
                 ptd_trials: int = 20, hippo_b: str = "balanced",
                 seed: int | None = None) -> None:
        super().__init__()
        if d_model < 1:
            raise ConfigError(f"d_model must be >= 1, got {d_model}")
        if init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {init!r}")
        if discretisation not in DISCRETISATIONS:
            raise ConfigError(f"discretisation must be one of {DISCRETISATIONS}, "
                              f"got {discretisation!r}")
        if hippo_b not in HIPPO_B:
            raise ConfigError(f"hippo_b must be one of {HIPPO_B}, got {hippo_b!r}")
        if not 0 < dt_range[0] <= dt_range[1]:
            raise ConfigError(f"dt_range must be 0 < min <= max, got {dt_range}")
        if d_state < 2 or d_state % 2:
            raise ConfigError(f"d_state must be an even integer >= 2 (N/2 complex modes), "
                              f"got {d_state}")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.h, self.n, self.init, self.discretisation = d_model, d_state, init, discretisation
        self.init_report: dict = {}
        if init in ("legs", "ptd"):
            lam_all, v, vinv_b, self.init_report = hippo_diagonal_system(
                init, d_state, eps=ptd_eps, n_trials=ptd_trials,
                seed=0 if seed is None else seed)
            rng = np.random.default_rng(seed)
            c_real = rng.standard_normal((d_model, d_state))
            lam, b_h, c_h = conjugate_half(lam_all, vinv_b, c_real @ v)
            if np.any(lam.real >= 0):
                raise ConfigError(f"init={init!r} gave eigenvalues with Re >= 0 (max "
                                  f"{lam.real.max():.3g}); use a smaller ptd_eps than {ptd_eps}")
            coef = c_h * b_h[None, :]                              # (H, modes)
            if hippo_b == "vinv":
                b0, c0 = np.broadcast_to(b_h, coef.shape), c_h
            elif hippo_b == "ones":
                b0, c0 = np.ones_like(coef), coef
            else:
                scale = np.sqrt(np.abs(coef).mean(axis=0))
                scale = np.where(scale > 0, scale, 1.0)
                b0, c0 = np.broadcast_to(scale, coef.shape).astype(np.complex128), coef / scale
            c = torch.tensor(np.ascontiguousarray(c0), dtype=torch.complex64)
        else:
            lam = s4d_eigenvalues(d_state, init)
            b0 = np.ones((d_model, d_state // 2), dtype=np.complex128)
            c = torch.randn(d_model, d_state // 2, dtype=torch.complex64, generator=gen)
        self.n_modes = int(lam.size)
        self.init_report["modes"] = self.n_modes
        lam_t = torch.tensor(lam, dtype=torch.complex64).expand(d_model, -1)
        b_t = torch.tensor(np.ascontiguousarray(b0), dtype=torch.complex64)
        log_dt = (torch.rand(d_model, generator=gen) * (math.log(dt_range[1])
                  - math.log(dt_range[0])) + math.log(dt_range[0]))
        self.log_dt = nn.Parameter(log_dt)
        self.log_a_real = nn.Parameter(torch.log(-lam_t.real).clone())
        self.a_imag = nn.Parameter(lam_t.imag.clone())
        self.b = nn.Parameter(torch.view_as_real(b_t).clone())
        self.c = nn.Parameter(torch.view_as_real(c).clone())
        self.d = nn.Parameter(torch.randn(d_model, generator=gen))
        self.postact = postact
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, 2 * d_model) if postact else None

    def ssm_parameters(self) -> list[nn.Parameter]:
        """The SSM parameters (S4D trains them with their own small lr and no weight decay)."""
        return [self.log_dt, self.log_a_real, self.a_imag, self.b]

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Abar, Bbar, C)``, each (H, modes) complex."""
        lam = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        dt = torch.exp(self.log_dt).unsqueeze(-1)
        abar, bbar = discretise(lam, torch.view_as_complex(self.b), dt, self.discretisation)
        return abar, bbar, torch.view_as_complex(self.c)

    def kernel(self, length: int) -> torch.Tensor:
        """The (H, length) convolution kernel by the Vandermonde product."""
        abar, bbar, c = self.discrete()
        return vandermonde_kernel(abar, bbar, c, length)

    def convolve(self, u: torch.Tensor) -> torch.Tensor:
        """The linear SSM ``y = K * u + D u`` for ``u`` of shape (batch, length, H)."""
        if u.shape[-1] != self.h:
            raise ConfigError(f"DiagonalSSM expects (batch, length, {self.h}) inputs, "
                              f"got shape {tuple(u.shape)}")
        ut = u.transpose(-1, -2)
        k = self.kernel(ut.shape[-1]).to(ut.dtype)
        y = fft_conv(ut, k) + self.d.to(ut.dtype).unsqueeze(-1) * ut
        return y.transpose(-1, -2)

    def _post(self, y: torch.Tensor) -> torch.Tensor:
        if not self.postact:
            return y
        y = self.dropout(nn.functional.gelu(y))
        return nn.functional.glu(self.out(y), dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self._post(self.convolve(u))

    def initial_state(self, batch: int) -> torch.Tensor:
        """Zero recurrent state, (batch, H, modes) complex."""
        return torch.zeros(batch, self.h, self.n_modes, dtype=torch.complex64 if
                           self.c.dtype == torch.float32 else torch.complex128,
                           device=self.c.device)

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step: ``x <- Abar x + Bbar u_t``, ``y = 2 Re(C x) + D u_t``.

        ``u_t`` is (batch, H); returns ``(y_t, new_state)`` with the post-activation applied, so
        running ``step`` over a sequence reproduces ``forward`` exactly (up to rounding).
        """
        abar, bbar, c = self.discrete()
        state = abar * state + bbar * u_t.unsqueeze(-1)
        y = 2 * (c * state).sum(-1).real + self.d * u_t
        return self._post(y), state


def ssm_param_groups(model: nn.Module, lr: float, ssm_lr: float = 1e-3,
                     weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups: S4D's SSM parameters with ``min(ssm_lr, lr)`` and no weight decay."""
    ssm = {id(p) for m in model.modules() if isinstance(m, DiagonalSSM)
           for p in m.ssm_parameters()}
    rest = [p for p in model.parameters() if id(p) not in ssm]
    special = [p for p in model.parameters() if id(p) in ssm]
    return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
            {"params": special, "lr": min(ssm_lr, lr), "weight_decay": 0.0}]
