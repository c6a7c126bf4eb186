"""PFGM++: the heavy-tailed perturbation kernel in N+D dimensions and its D -> infinity limit.

Xu et al., "PFGM++: Unlocking the Potential of Physics-Inspired Generative Models" (ICML 2023).
Data ``y in R^N`` is perturbed by the kernel ``p_r(x|y) ~ (||x - y||^2 + r^2)^{-(N+D)/2}``,
sampled as ``R = r sqrt(b / (1 - b))``, ``b ~ Beta(N/2, D/2)``, times a uniform direction.
With ``r = sigma sqrt(D)`` it tends to the Gaussian ``N(0, sigma^2 I)`` as D -> infinity
(diffusion models); D = 1 is PFGM. Sampling integrates ``dx/dr = E[x - y | x, r] / r`` from a
large ``r`` down to 0; for an empirical data set the posterior expectation is closed form with
weights ``~ (||x - y_i||^2 + r^2)^{-(N+D)/2}`` (the optimal denoiser of this kernel).

Asserts: the sampled radii follow the kernel's radial law (KS test against the CDF obtained by
quadrature of ``R^{N-1} (R^2 + r^2)^{-(N+D)/2}``, independent of the Beta construction), the
KS distance to the Gaussian radius law falls below 0.02 at D = 1e5, and ODE samples of a 2-D
ring-of-Gaussians toy land on the data (for a small and a large D).
Run: python examples/pfgmpp.py [--fast]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from scipy import integrate, stats


def perturb(y: np.ndarray, r: float, d: int, rng: np.random.Generator) -> np.ndarray:
    """Sample ``x ~ p_r(. | y)`` for every row of ``y`` (the PFGM++ perturbation kernel)."""
    n = y.shape[1]
    b = np.clip(rng.beta(n / 2, d / 2, size=len(y)), 1e-12, 1 - 1e-12)
    radius = r * np.sqrt(b / (1 - b))
    u = rng.standard_normal(y.shape)
    return y + radius[:, None] * u / np.linalg.norm(u, axis=1, keepdims=True)


def radial_cdf(n: int, d: int, r: float):
    """CDF of ``R`` from the unnormalised density ``R^{N-1} (R^2 + r^2)^{-(N+D)/2}``."""
    def log_pdf(t):
        return (n - 1) * np.log(t) - (n + d) / 2 * np.log(t * t + r * r)
    grid = np.concatenate([[0.0], np.geomspace(1e-6 * r, 1e4 * r, 20000)])
    dens = np.exp(log_pdf(np.maximum(grid, 1e-300)) - log_pdf(r * np.sqrt((n - 1) / (d + 1))))
    dens[0] = 0.0
    cdf = integrate.cumulative_trapezoid(dens, grid, initial=0.0)
    return lambda t: np.interp(t, grid, cdf / cdf[-1])


def posterior_mean(x: np.ndarray, data: np.ndarray, r: float, n_plus_d: int) -> np.ndarray:
    d2 = ((x[:, None, :] - data[None]) ** 2).sum(-1)
    logw = -n_plus_d / 2 * np.log(d2 + r * r)
    w = np.exp(logw - logw.max(1, keepdims=True))
    return (w / w.sum(1, keepdims=True)) @ data


def sample(data: np.ndarray, d: int, sigma_max: float, steps: int, n: int,
           rng: np.random.Generator) -> np.ndarray:
    """Euler integration of ``dx/dr = (x - E[y|x,r]) / r`` with ``r = sigma sqrt(D)``."""
    dim = data.shape[1]
    sigmas = np.geomspace(sigma_max, 1e-3, steps)
    x = perturb(np.zeros((n, dim)) + data.mean(0), sigmas[0] * np.sqrt(d), d, rng)
    for s0, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        r0, r1 = s0 * np.sqrt(d), s1 * np.sqrt(d)
        x = x + (r1 - r0) * (x - posterior_mean(x, data, r0, dim + d)) / r0
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        default=os.environ.get("LOWRANK_FAST") == "1")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n_dim, m = 50, 4000 if args.fast else 20000

    for d in (1, 8, 128):
        r = 1.3
        radii = np.linalg.norm(perturb(np.zeros((m, n_dim)), r, d, rng), axis=1)
        p = stats.kstest(radii, radial_cdf(n_dim, d, r)).pvalue
        print(f"N={n_dim}, D={d}: KS p-value of sampled radii vs the kernel's radial law {p:.3f}")
        assert p > 0.01
    sigma = 0.7
    ks = {}
    for d in (10, 1000, 100000):
        radii = np.linalg.norm(perturb(np.zeros((m, n_dim)), sigma * np.sqrt(d), d, rng), axis=1)
        ks[d] = stats.kstest(radii / sigma, stats.chi(n_dim).cdf).statistic
    print("KS distance to the Gaussian (diffusion) radius law: "
          + ", ".join(f"D={d}: {v:.3f}" for d, v in ks.items()))
    assert ks[100000] < 0.02 and ks[10] > ks[100000]

    # 2-D toy: eight Gaussian blobs on a ring
    angles = rng.integers(8, size=200) * np.pi / 4
    data = np.stack([np.cos(angles), np.sin(angles)], 1) * 2 + 0.05 * rng.standard_normal((200, 2))
    centres = np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1) * 2
    for d in (2, 2048):
        xs = sample(data, d, sigma_max=10.0, steps=60 if args.fast else 200, n=300, rng=rng)
        dist = np.linalg.norm(xs[:, None] - centres[None], axis=-1).min(1)
        modes = len(np.unique(np.linalg.norm(xs[:, None] - centres[None], axis=-1).argmin(1)))
        print(f"2-D ring toy, D={d}: median distance of samples to the nearest mode "
              f"{np.median(dist):.3f}, modes covered {modes}/8")
        assert np.median(dist) < 0.15 and modes == 8


if __name__ == "__main__":
    main()
