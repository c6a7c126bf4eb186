"""Deep Conjugate Direction method: conjugate directions with a pluggable preconditioner.

Kaneda et al., "A Deep Conjugate Direction Method for Iteratively Solving Linear Systems"
(ICML 2023). Each search direction is ``d_k = f(r_k)`` for a (learned, possibly nonlinear)
approximate inverse ``f``, A-orthogonalised against the last ``k_orth`` directions; the step is
``alpha_k = d_k^T r_k / d_k^T A d_k``, then ``x += alpha d``, ``r -= alpha A d``. With
``f = I`` this is exactly conjugate gradients. Here ``f`` is the low-rank analogue of the
paper's network: an eigen-deflation ``P = I + U (Lambda^{-1} - I) U^T`` built from the ``k``
lowest eigenpairs of the discrete Laplacian (the DCDM network is trained on such low-spectrum
right-hand sides; training a CNN is beyond this CPU example).

System: the 5-point Poisson matrix on an n x n grid (Dirichlet), right-hand side of mixed
frequencies. Asserts: with the identity the iterates equal CG's (1e-10 relative over the first
40 iterations) and a rank-20 deflation needs at least 2x fewer iterations than CG at tol 1e-8.
Run: python examples/deep_conjugate_direction.py [--fast]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch


def poisson_matvec(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def matvec(v: torch.Tensor) -> torch.Tensor:
        u = v.reshape(n, n)
        out = 4 * u
        out[1:] -= u[:-1]
        out[:-1] -= u[1:]
        out[:, 1:] -= u[:, :-1]
        out[:, :-1] -= u[:, 1:]
        return out.reshape(-1)
    return matvec


def conjugate_directions(matvec, b, precond=None, k_orth: int = 2, tol: float = 1e-8,
                         maxiter: int = 10000) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Solve ``A x = b``; returns the solution and the list of iterates."""
    x = torch.zeros_like(b)
    r = b.clone()
    stored: list[tuple[torch.Tensor, torch.Tensor]] = []
    iterates = []
    bnorm = b.norm()
    for _ in range(maxiter):
        d = r.clone() if precond is None else precond(r)
        for p, ap in stored:
            d = d - (d @ ap) / (p @ ap) * p
        ad = matvec(d)
        alpha = (d @ r) / (d @ ad)
        x = x + alpha * d
        r = r - alpha * ad
        iterates.append(x)
        stored = (stored + [(d, ad)])[-k_orth:]
        if r.norm() <= tol * bnorm:
            break
    return x, iterates


def conjugate_gradient(matvec, b, tol: float = 1e-8, maxiter: int = 10000):
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    iterates = []
    for _ in range(maxiter):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        iterates.append(x)
        rr_new = r @ r
        if rr_new.sqrt() <= tol * b.norm():
            break
        p = r + rr_new / rr * p
        rr = rr_new
    return x, iterates


def lowest_eigenpairs(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest eigenpairs of the 5-point Laplacian (sine modes, closed form)."""
    j = torch.arange(1, n + 1, dtype=torch.float64)
    lam1 = 2 - 2 * torch.cos(j * torch.pi / (n + 1))
    s = torch.sin(torch.outer(j, j) * torch.pi / (n + 1)) * (2 / (n + 1)) ** 0.5
    lam = (lam1[:, None] + lam1[None, :]).reshape(-1)
    order = torch.argsort(lam)[:k]
    a, b = order // n, order % n
    vecs = torch.stack([torch.outer(s[:, i], s[:, m]).reshape(-1) for i, m in
                        zip(a.tolist(), b.tolist(), strict=True)], 1)
    return lam[order], vecs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        default=os.environ.get("LOWRANK_FAST") == "1")
    args = parser.parse_args()
    n = 32 if args.fast else 64
    matvec = poisson_matvec(n)
    gen = torch.Generator().manual_seed(0)
    g = torch.linspace(0, 1, n, dtype=torch.float64)
    smooth = torch.outer(torch.sin(torch.pi * g), torch.sin(2 * torch.pi * g)).reshape(-1)
    b = smooth + 0.1 * torch.randn(n * n, generator=gen, dtype=torch.float64)

    x_cd, it_cd = conjugate_directions(matvec, b)
    x_cg, it_cg = conjugate_gradient(matvec, b)
    m = min(40, len(it_cg))
    dev = max(float((a - c).norm() / c.norm()) for a, c in zip(it_cd[:m], it_cg[:m], strict=True))
    print(f"identity preconditioner vs CG: max relative iterate difference over {m} iterations "
          f"{dev:.1e}; iterations {len(it_cd)} vs {len(it_cg)}")
    assert dev < 1e-10

    lam, u = lowest_eigenpairs(n, 20)
    assert float((matvec(u[:, 0]) - lam[0] * u[:, 0]).norm()) < 1e-10

    def deflate(r: torch.Tensor) -> torch.Tensor:
        c = u.T @ r
        return r + u @ (c / lam - c)

    x_p, it_p = conjugate_directions(matvec, b, precond=deflate)
    res = float((matvec(x_p) - b).norm() / b.norm())
    print(f"{n}x{n} Poisson, tol 1e-8: CG {len(it_cg)} iterations, conjugate directions with "
          f"rank-20 deflation {len(it_p)} (final residual {res:.1e})")
    assert res < 1e-8 and 2 * len(it_p) <= len(it_cg)


if __name__ == "__main__":
    main()
