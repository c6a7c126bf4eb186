"""Instance noise restores a well-posed likelihood for data on a low-dimensional subspace.

"A likelihood approach to nonparametric estimation of a singular distribution using deep
generative models" (arXiv 2105.04046). When the data lie exactly on a low-dimensional set, the
maximum-likelihood estimate of a full-dimensional density model degenerates: the noise variance
goes to 0 and the likelihood to +infinity. Perturbing the data with instance noise of variance
``sigma0^2`` makes the MLE well posed and leaves the estimate of the low-dimensional structure
consistent. The smallest faithful model is probabilistic PCA (Tipping & Bishop), whose MLE is
closed form: the top-q eigenvectors of the sample covariance ``S`` span the subspace,
``sigma^2 = mean`` of the remaining eigenvalues and
``log L = -n/2 (p log 2 pi + sum_{j<=q} log l_j + (p - q) log sigma^2 + p)``.

Asserts, for data exactly on a 3-D subspace of R^20: without noise the fitted sigma^2 is at
round-off and the log-likelihood jumps to a value bounded only by round-off at q = 3; with
instance noise sigma0 = 0.05, sigma^2 ~ sigma0^2, the log-likelihood is finite and the
principal angle to the true subspace is below 1 degree (n = 500).
Run: python examples/instance_noise.py [--fast]
"""

from __future__ import annotations

import argparse
import math
import os

import torch


def ppca_mle(x: torch.Tensor, q: int) -> tuple[torch.Tensor, float, float]:
    """Closed-form PPCA MLE: ``(basis (p, q), sigma^2, log-likelihood)``."""
    n, p = x.shape
    xc = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(xc.T @ xc / n)
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    sigma2 = float(evals[q:].mean())
    logdet = float(torch.log(evals[:q]).sum()) + (p - q) * math.log(max(sigma2, 1e-300))
    loglik = -n / 2 * (p * math.log(2 * math.pi) + logdet + p)
    return evecs[:, :q], sigma2, loglik


def max_principal_angle(u: torch.Tensor, v: torch.Tensor) -> float:
    s = torch.linalg.svdvals(u.T @ v).clamp(max=1.0)
    return float(torch.rad2deg(torch.arccos(s.min())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        default=os.environ.get("LOWRANK_FAST") == "1")
    parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    p, k, n, sigma0 = 20, 3, 500, 0.05
    basis, _ = torch.linalg.qr(torch.randn(p, k, generator=gen, dtype=torch.float64))
    x = torch.randn(n, k, generator=gen, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0],
                                                                             dtype=torch.float64)
    x = x @ basis.T                                         # exactly on a 3-D subspace

    print("q | plain sigma^2 | plain log L | noisy sigma^2 | noisy log L | angle (deg)")
    x_noisy = x + sigma0 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    plain, noisy = {}, {}
    for q in (1, 2, 3):
        plain[q] = ppca_mle(x, q)
        noisy[q] = ppca_mle(x_noisy, q)
        print(f"{q} | {plain[q][1]:.2e} | {plain[q][2]:.3e} | {noisy[q][1]:.2e} | "
              f"{noisy[q][2]:.3e} | {max_principal_angle(noisy[q][0], basis[:, :q]):.2f}")
    # without noise: sigma^2 collapses to round-off and log L jumps by orders of magnitude at
    # q = 3 (bounded only by floating-point round-off, n (p - q) / 2 log(1 / sigma^2))
    assert plain[3][1] < 1e-12 and plain[3][2] > 10 * noisy[3][2] > 0
    # with instance noise: sigma^2 ~ sigma0^2, log L finite and moderate, subspace recovered
    assert abs(noisy[3][1] / sigma0 ** 2 - 1) < 0.15
    assert math.isfinite(noisy[3][2]) and abs(noisy[3][2]) < 10 * abs(noisy[2][2])
    angle = max_principal_angle(noisy[3][0], basis)
    print(f"instance noise sigma0 = {sigma0}: sigma^2 / sigma0^2 = {noisy[3][1] / sigma0 ** 2:.3f},"
          f" principal angle {angle:.3f} deg")
    assert angle < 1.0


if __name__ == "__main__":
    main()
