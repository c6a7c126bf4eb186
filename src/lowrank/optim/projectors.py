"""Gradient projectors for GaLore-style optimizers: SVD, randomized SVD and the SVD-free DCT basis.

Papers: "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection" (Zhao et al.,
ICML 2024) and "SVD-Free Low-Rank Adaptive Gradient Optimization for Large Language Models"
(Modoranu et al., 2025).

A projector is described by tensors and ints only: ``side`` (0 = left, ``R = P^T G`` with
``P`` of shape m x r; 1 = right, ``R = G Q`` with ``Q`` of shape n x r; 2 = both sides,
galore-torch's ``full``: ``R = P^T G Q``, r x r) and either dense bases or, for the DCT basis,
``r`` int32 column indices per side into a fixed orthonormal DCT-II matrix that is rebuilt on
demand (one cached copy per size, never stored in optimizer state).
"""

from __future__ import annotations

import math
import zlib

import torch

from ..errors import ConfigError
from ..linalg.svd import range_finder

LEFT, RIGHT, BOTH = 0, 1, 2
BASES = ("svd", "rsvd", "dct")
PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")

_DCT_CACHE: dict[tuple[int, torch.dtype, str], torch.Tensor] = {}


def dct_matrix(size: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthonormal DCT-II basis as columns: ``D[i, j] = c_j cos(pi j (2 i + 1) / (2 s))``.

    ``c_0 = sqrt(1/s)``, ``c_j = sqrt(2/s)``; ``D^T D = I``. Cached per (size, dtype, device).
    """
    key = (int(size), dtype, str(device))
    cached = _DCT_CACHE.get(key)
    if cached is not None:
        return cached
    i = torch.arange(size, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(size, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * j * (2 * i + 1) / (2 * size)) * math.sqrt(2.0 / size)
    d[:, 0] = math.sqrt(1.0 / size)
    d = d.to(dtype=dtype, device=device)
    _DCT_CACHE[key] = d
    return d


def choose_side(shape: tuple[int, int], proj_type: str) -> int:
    """Which side to project: galore-torch's ``std`` projects the smaller dimension."""
    m, n = shape
    if proj_type == "std":
        return RIGHT if m >= n else LEFT
    if proj_type == "reverse_std":
        return LEFT if m >= n else RIGHT
    if proj_type == "left":
        return LEFT
    if proj_type == "right":
        return RIGHT
    if proj_type == "full":
        return BOTH
    raise ConfigError(f"proj_type must be one of {PROJ_TYPES}, got {proj_type!r}")


def effective_rank(shape: tuple[int, int], side: int, rank: int) -> int:
    """Rank clamped to the size of the projected dimension(s)."""
    if side == BOTH:
        return max(1, min(int(rank), *shape))
    return max(1, min(int(rank), shape[1] if side == RIGHT else shape[0]))


def projected_shape(shape: tuple[int, int], side: int, rank: int) -> tuple[int, int]:
    """Shape of the low-rank gradient ``R`` (where the Adam moments live)."""
    m, n = shape
    return {LEFT: (rank, n), RIGHT: (m, rank), BOTH: (rank, rank)}[side]


def basis_sizes(shape: tuple[int, int], side: int) -> tuple[int, ...]:
    """Sizes of the projected dimension(s): ``(m,)`` left, ``(n,)`` right, ``(m, n)`` both."""
    m, n = shape
    return {LEFT: (m,), RIGHT: (n,), BOTH: (m, n)}[side]


def rsvd_seed(seed: int, param_index: int, step: int) -> int:
    """Deterministic seed of the random test matrix (identical on every process)."""
    return zlib.crc32(f"{seed}:{param_index}:{step}".encode()) & 0x7FFFFFFF


def _work(grad: torch.Tensor) -> torch.Tensor:
    """Decompositions run in float32 at least (float64 stays float64)."""
    return grad if grad.dtype == torch.float64 else grad.float()


def _pick(u: torch.Tensor, vh: torch.Tensor, side: int, rank: int, dtype: torch.dtype
          ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    left = u[:, :rank].contiguous().to(dtype)
    right = vh[:rank].T.contiguous().to(dtype)
    return {LEFT: left, RIGHT: right, BOTH: (left, right)}[side]


def svd_basis(grad: torch.Tensor, side: int, rank: int
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` singular vectors of ``grad`` by a full SVD (fp32 or better).

    ``P`` (left), ``Q`` (right) or the pair ``(P, Q)`` (both sides).
    """
    u, _, vh = torch.linalg.svd(_work(grad), full_matrices=False)
    return _pick(u, vh, side, rank, grad.dtype)


def rsvd_basis(grad: torch.Tensor, side: int, rank: int, seed: int, oversample: int = 8,
               power_iters: int = 1) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` singular vectors by a randomized range finder (Halko et al. 2011).

    Costs ``O(m n (r + p))`` instead of a full SVD; the test matrix comes from a CPU generator
    seeded with ``seed``, so every process draws the same one.
    """
    g = _work(grad)
    m, n = g.shape
    k = min(rank + oversample, m, n)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    # range of G^T (row space) for a right basis, range of G (column space) otherwise
    a = g.T if side == RIGHT else g
    y = range_finder(a, k, power_iters, gen)
    ub, _, vbh = torch.linalg.svd(y.T @ a, full_matrices=False)  # a ~ (y ub) s vbh
    u = y @ ub
    if side == RIGHT:  # a = G^T: its left singular vectors are G's right ones
        return u[:, :rank].contiguous().to(grad.dtype)
    return _pick(u, vbh, side, rank, grad.dtype)


def dct_scores(grad: torch.Tensor, side: int, norm: int = 2) -> torch.Tensor:
    """Alignment of every DCT basis vector with ``grad`` (the ``ell_norm`` of ``G D`` columns)."""
    g = _work(grad)
    if side == RIGHT:
        s = g @ dct_matrix(g.shape[1], g.dtype, g.device)  # m x n, columns <-> DCT vectors
        return s.norm(p=norm, dim=0)
    s = dct_matrix(g.shape[0], g.dtype, g.device).T @ g  # m x n, rows <-> DCT vectors
    return s.norm(p=norm, dim=1)


def dct_indices(grad: torch.Tensor, side: int, rank: int, norm: int = 2
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """int32 indices of the ``rank`` DCT vectors best aligned with ``grad`` (sorted ascending).

    Under the l2 score this subset is optimal among subsets of the fixed DCT basis: the
    projection error is ``||G||^2 - sum of the selected squared scores``. For both sides the
    rows and the columns are chosen independently (a pair of index vectors).
    """
    if side == BOTH:
        return dct_indices(grad, LEFT, rank, norm), dct_indices(grad, RIGHT, rank, norm)
    scores = dct_scores(grad, side, norm)
    idx = torch.topk(scores, rank, sorted=False).indices
    return torch.sort(idx).values.to(torch.int32)


def dct_basis(size: int, indices: torch.Tensor, dtype: torch.dtype,
              device: torch.device | str) -> torch.Tensor:
    """The selected DCT columns (size x r) rebuilt from the stored int32 indices."""
    return dct_matrix(size, dtype, device).index_select(1, indices.to(device=device,
                                                                       dtype=torch.long))


Basis = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def project(grad: torch.Tensor, basis: Basis, side: int) -> torch.Tensor:
    """Low-rank gradient: ``P^T G`` (r x n) left, ``G Q`` (m x r) right, ``P^T G Q`` both."""
    if side == BOTH:
        left, right = basis
        return left.T @ grad @ right
    return basis.T @ grad if side == LEFT else grad @ basis


def project_back(low: torch.Tensor, basis: Basis, side: int) -> torch.Tensor:
    """Full-size update: ``P N`` left, ``N Q^T`` right, ``P N Q^T`` both."""
    if side == BOTH:
        left, right = basis
        return left @ low @ right.T
    return basis @ low if side == LEFT else low @ basis.T
