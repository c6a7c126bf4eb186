"""LoRD: one-shot low-rank decomposition by output-feature PCA (Kaushal, Vaidhya, Rish, "LoRD:
Low Rank Decomposition of Monolingual Code LLMs for One-Shot Compression", 2023; spec §10).

Our reading of the paper, which publishes no code: each decomposed linear is projected onto
the top principal directions of its output features on calibration text, ``W' = U_k U_k^T W``,
stored as ``B = U_k`` (out x k) and ``A = U_k^T W`` (k x in), with no retraining (one shot)
and a uniform rank reduction (our default ``alloc="uniform"``). The features are the weight's
own outputs ``W x``: the PCA is uncentred and excludes the bias, which stays as it was. This
is exactly the output-space optimum of SVD-LLM (``U_k`` are the left singular vectors of
``W S`` with ``S S^T = G``), reached without inverting a Gram root, so rank-deficient inputs
need no eigenvalue floor. AFM (``compress/afm.py``) is the centred variant with the bias
correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..calib.stats import CalibrationStats
from ..errors import DataError
from ..linalg.output_pca import PCA, output_pca
from .base import METHODS
from .factorize import FactorizationConfig


@dataclass
class OutputPCADecomposition:
    """Rank-k projections of ``W`` onto the top eigenvectors of an output moment matrix.

    ``pca`` holds the eigenpairs of ``sum (Wx)(Wx)^T`` (LoRD) or of the summed output
    covariance (AFM): the eigenvalues beyond ``k`` sum to the squared output error of the
    rank-``k`` projection, so ``spectrum = sqrt(eigenvalues)`` plays the role of singular
    values for the allocators (truncated to ``min(out, in)``, the largest possible rank).
    """

    weight: torch.Tensor  # (out, in) float64
    pca: PCA
    right: None = None  # no input-side root (factorize reads it for its notes)
    #: Whether :meth:`bias` moves the layer's bias (LoRD keeps it; AFM re-centres it).
    shifts_bias: ClassVar[bool] = False

    @property
    def spectrum(self) -> torch.Tensor:
        r = min(self.weight.shape)
        return self.pca.eigenvalues[:r].sqrt()

    def bias(self, rank: int, bias: torch.Tensor | None) -> torch.Tensor | None:
        """The factorized layer's bias at ``rank``: the dense layer's ``bias``, unchanged."""
        return bias

    def tail_energy(self, rank: int) -> float:
        """Squared output error of the rank-``rank`` projection (summed over tokens)."""
        return float(self.pca.eigenvalues[:min(self.weight.shape)][rank:].sum())

    def basis(self, rank: int) -> torch.Tensor:
        return self.pca.eigenvectors[:, :rank]

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A) = (U_k, U_k^T W)``: ``B A = U_k U_k^T W``."""
        U = self.basis(rank)
        return U.clone(), U.T @ self.weight


def site_stats(stats: CalibrationStats | None, name: str, method: str):
    """The calibration statistics of module ``name``, or a :class:`DataError` saying why not."""
    if stats is None:
        raise DataError(f"method '{method}' needs calibration statistics (output moments come "
                        "from the input Gram): pass data=<texts> or stats=...")
    site = stats.site(name)
    if site.tokens <= 0:
        raise DataError(f"no calibration tokens reached module '{name}'")
    return site


@METHODS.register
@dataclass
class LoRD(FactorizationConfig):
    """Project each weight onto the top-k principal directions of its output features.

    ``U_k`` = top-k eigenvectors of ``sum_x (W x)(W x)^T = W G W^T`` (uncentred, bias
    excluded); the layer becomes ``B = U_k``, ``A = U_k^T W`` with the bias unchanged. The
    spectrum given to the allocator is ``sqrt`` of the eigenvalues, so the dropped energy is
    the squared output error ``||(W - W') X||_F^2``; for one linear, ``W'`` equals SVD-LLM's.
    """

    method: ClassVar[str] = "lord"
    statistics: ClassVar[frozenset[str]] = frozenset({"gram"})

    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> OutputPCADecomposition:
        site = site_stats(stats, name, self.method)
        W = weight.to(torch.float64)
        G = site.gram.to(W.device, torch.float64)
        return OutputPCADecomposition(W, output_pca(W @ G @ W.T))
