"""Whitening: square roots of input Grams and the whitened low-rank primitive.

For a weight ``W`` (out x in) and inputs ``X`` (in x tokens) with Gram ``G = X X^T = S S^T``,
``||(W - W') X||_F = ||(W - W') S||_F``, so the best rank-k ``W'`` in output space is
``SVD_k(W S) S^{-1}`` (SVD-LLM, Wang et al. ICLR 2025; SVD-LLM V2 takes ``S`` from an
eigendecomposition, as here). The same primitive serves ASVD (diagonal ``S``) and FWSVD (a
diagonal weight on the output side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from ..utils.checks import check_finite
from .svd import TruncatedSVD, randomized_svd, split_singular_values, truncated_svd


class RightRoot(Protocol):
    """A square root ``S`` of an input-side weight, applied without forming ``S^{-1}``."""

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:  # matrix @ S
        ...

    def apply_inverse(self, matrix: torch.Tensor) -> torch.Tensor:  # matrix @ S^{-1}
        ...


@dataclass
class GramRoot:
    """``S = Q diag(sqrt(lam))`` from ``G = Q diag(lam) Q^T`` with eigenvalues floored.

    Eigenvalues below ``floor * max(lam)`` (negative ones from round-off included) are raised to
    that value, so ``S`` is always invertible; ``S^{-1} = diag(lam^{-1/2}) Q^T`` is applied as a
    product, never through ``torch.linalg.inv``. ``num_floored`` and ``condition`` (of the
    floored Gram) are recorded for the report.
    """

    eigenvectors: torch.Tensor
    eigenvalues: torch.Tensor
    floor_value: float
    num_floored: int

    @property
    def condition(self) -> float:
        return float(self.eigenvalues.max() / self.eigenvalues.min())

    @property
    def matrix(self) -> torch.Tensor:
        """The root ``S`` itself (``S @ S.T`` equals the floored Gram)."""
        return self.eigenvectors * self.eigenvalues.sqrt()

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        return (matrix @ self.eigenvectors) * self.eigenvalues.sqrt()

    def apply_inverse(self, matrix: torch.Tensor) -> torch.Tensor:
        return (matrix * self.eigenvalues.rsqrt()) @ self.eigenvectors.T


@dataclass
class DiagonalRoot:
    """A diagonal root ``S = diag(scale)`` (ASVD's activation scaling); ``scale`` must be > 0."""

    scale: torch.Tensor

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix * self.scale

    def apply_inverse(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix / self.scale


def sqrt_gram(gram: torch.Tensor, floor: float = 1e-6) -> GramRoot:
    """Square root of a symmetric positive semi-definite Gram by eigendecomposition in float64.

    ``floor`` is relative to the largest eigenvalue. A Gram that is rank deficient (fewer tokens
    than channels, a dead channel) or slightly indefinite from round-off is handled without
    error; an all-zero or non-finite Gram raises ``ValueError``.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"sqrt_gram expects a square matrix, got shape {tuple(gram.shape)}")
    check_finite("floor", floor, 0, 1, low_open=True, high_open=True)
    g = gram.to(torch.float64)
    if not torch.isfinite(g).all():
        raise ValueError("sqrt_gram: the Gram matrix has non-finite entries")
    g = 0.5 * (g + g.T)
    lam, Q = torch.linalg.eigh(g)
    top = float(lam.max())
    if top <= 0:
        raise ValueError("sqrt_gram: the Gram matrix is zero (no signal reached this input)")
    floor_value = floor * top
    num_floored = int((lam < floor_value).sum())
    return GramRoot(Q, lam.clamp_min(floor_value), floor_value, num_floored)


@dataclass
class WhitenedSVD:
    """SVD of the weighted target ``diag(left) @ W @ S``, from which rank-k factors follow.

    ``spectrum`` holds the weighted singular values: the squared tail beyond k is exactly the
    weighted squared error of the rank-k truncation, for every k at once, which is what rank
    allocation needs.
    """

    svd: TruncatedSVD
    right: RightRoot | None
    left: torch.Tensor | None
    #: Whether :meth:`bias` moves the layer's bias (it does not: the bias stays as it is).
    shifts_bias: ClassVar[bool] = False

    @property
    def spectrum(self) -> torch.Tensor:
        return self.svd.S

    def bias(self, rank: int, bias: torch.Tensor | None) -> torch.Tensor | None:
        """The factorized layer's bias at ``rank``: the dense layer's ``bias``, unchanged."""
        return bias

    def tail_energy(self, rank: int) -> float:
        """Squared weighted error of the rank-``rank`` truncation."""
        return float((self.svd.S[rank:].to(torch.float64) ** 2).sum())

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A)`` with ``B @ A`` the weighted-optimal rank-``rank`` approximation of ``W``."""
        B, A = split_singular_values(self.svd, rank)
        if self.left is not None:
            B = B / self.left[:, None]
        if self.right is not None:
            A = self.right.apply_inverse(A)
        return B, A


def whitened_svd(
    weight: torch.Tensor,
    right: RightRoot | None = None,
    left: torch.Tensor | None = None,
    *,
    rank: int | None = None,
    randomized: bool = False,
    seed: int = 0,
) -> WhitenedSVD:
    """Decompose ``diag(left) @ weight @ S`` (either side optional) in float64.

    With ``randomized=True`` only the top ``rank`` triplets are computed (Halko et al.).
    """
    target = weight.to(torch.float64)
    if left is not None:
        left = left.to(torch.float64)
        if left.shape != (target.shape[0],) or not bool((left > 0).all()):
            raise ValueError("left weights must be a positive vector of length out_features")
        target = target * left[:, None]
    if right is not None:
        target = right.apply(target)
    if randomized:
        if rank is None:
            raise ValueError("randomized whitened_svd needs a rank")
        svd = randomized_svd(target, rank, seed=seed)
    else:
        svd = truncated_svd(target, rank)
    return WhitenedSVD(svd, right, left)


def whitened_lowrank(
    weight: torch.Tensor, root: RightRoot | torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whitened truncation: ``(B, A, spectrum)`` minimising ``||(W - B A) S||_F`` at rank k.

    ``root`` is a :class:`GramRoot` / :class:`DiagonalRoot`, or a dense square root ``S`` given
    as a tensor (then ``S^{-1}`` is applied by a linear solve). ``spectrum`` is the full
    singular-value spectrum of ``W S``.
    """
    if isinstance(root, torch.Tensor):
        root = _DenseRoot(root.to(torch.float64))
    dec = whitened_svd(weight, root)
    B, A = dec.factors(rank)
    return B, A, dec.spectrum


@dataclass
class _DenseRoot:
    S: torch.Tensor

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix @ self.S

    def apply_inverse(self, matrix: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.S, matrix, left=False)
