"""Truncated singular value decompositions: exact and randomized.

The randomized SVD is the range finder with power iterations of Halko, Martinsson & Tropp,
"Finding structure with randomness" (SIAM Review 2011), Algorithm 4.4 + 5.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils.checks import check_finite_values, check_int, check_rank


@dataclass
class TruncatedSVD:
    """``M ~= U @ diag(S) @ Vh`` with singular values in descending order.

    ``error_bound`` (randomized only) is an a-posteriori estimate of the spectral norm of the
    residual ``M - U diag(S) Vh`` obtained from random probes (Halko et al. §4.3); ``None`` for
    the exact decomposition, whose error is the tail of the spectrum.
    """

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    error_bound: float | None = None

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])

    def to_dense(self) -> torch.Tensor:
        return (self.U * self.S) @ self.Vh


def truncated_svd(matrix: torch.Tensor, rank: int | None = None) -> TruncatedSVD:
    """Exact SVD kept to the top ``rank`` triplets (all of them when ``rank`` is None).

    Eckart–Young: the result minimises ``||M - M_k||_F`` over rank-``rank`` matrices and the
    squared error equals the sum of the dropped squared singular values.
    """
    if matrix.ndim != 2:
        raise ValueError(f"truncated_svd expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    if rank is not None:
        _check_rank(rank, matrix)
    check_finite_values("matrix", matrix)
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    if rank is not None:
        U, S, Vh = U[:, :rank], S[:rank], Vh[:rank]
    return TruncatedSVD(U, S, Vh)


def range_finder(matrix: torch.Tensor, width: int, power_iters: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Orthonormal ``Q`` (m x ``width``) whose span approximates the range of ``M`` (Halko et
    al., Algorithm 4.4): a Gaussian test matrix drawn from the CPU ``generator`` (so every
    process and device draws the same one), then ``power_iters`` subspace iterations with a
    QR after each product."""
    omega = torch.randn(matrix.shape[1], width, generator=generator,
                        dtype=matrix.dtype).to(matrix.device)
    Q, _ = torch.linalg.qr(matrix @ omega)
    for _ in range(power_iters):
        Z, _ = torch.linalg.qr(matrix.mH @ Q)
        Q, _ = torch.linalg.qr(matrix @ Z)
    return Q


def randomized_svd(
    matrix: torch.Tensor,
    rank: int,
    *,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    error_probes: int = 10,
) -> TruncatedSVD:
    """Randomized truncated SVD with power iterations and an a-posteriori error estimate.

    The range of ``M`` is sampled with a Gaussian test matrix of ``rank + oversample`` columns,
    refined by ``power_iters`` subspace iterations (QR after each product, for stability), and
    the small projected matrix is decomposed exactly. ``error_bound`` is
    ``10 * sqrt(2/pi) * max_i ||(I - QQ^T) M w_i||`` over ``error_probes`` Gaussian vectors, which
    bounds the spectral error with probability at least ``1 - 10^-error_probes`` (Halko et al.,
    eq. 4.3). The estimate is returned so callers can check it against their tolerance.
    Complex matrices are supported (conjugate transposes throughout).
    """
    if matrix.ndim != 2:
        raise ValueError(f"randomized_svd expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    m, n = matrix.shape
    _check_rank(rank, matrix)
    check_int("oversample", oversample, 0)
    check_int("power_iters", power_iters, 0)
    check_int("seed", seed, 0)
    check_int("error_probes", error_probes)
    check_finite_values("matrix", matrix)
    width = min(rank + oversample, min(m, n))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    Q = range_finder(matrix, width, power_iters, gen)
    small = Q.mH @ matrix
    Uh, S, Vh = torch.linalg.svd(small, full_matrices=False)
    U = Q @ Uh
    probes = torch.randn(n, error_probes, generator=gen, dtype=matrix.dtype).to(matrix.device)
    residual = matrix @ probes
    residual = residual - Q @ (Q.mH @ residual)
    bound = 10.0 * (2.0 / torch.pi) ** 0.5 * residual.norm(dim=0).max().item()
    return TruncatedSVD(U[:, :rank], S[:rank], Vh[:rank], error_bound=bound)


def split_singular_values(
    svd: TruncatedSVD, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(B, A)`` with ``B = U_k S_k^{1/2}`` and ``A = S_k^{1/2} Vh_k``, so ``B @ A = M_k``.

    Splitting the singular values evenly keeps both factors equally conditioned, which matters
    for later fine-tuning of the factors.
    """
    check_rank(rank, svd.rank, f"this rank-{svd.rank} decomposition", low=0)
    root = svd.S[:rank].clamp_min(0).sqrt()
    return svd.U[:, :rank] * root, root[:, None] * svd.Vh[:rank]


def _check_rank(rank: int, matrix: torch.Tensor) -> None:
    """An int in ``[0, min(m, n)]``; rank 0 is the zero approximation (Eckart-Young)."""
    m, n = matrix.shape
    check_rank(rank, min(m, n), f"a {m}x{n} matrix", low=0)
