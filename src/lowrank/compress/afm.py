"""AFM: Atomic Feature Mimicking, output-feature PCA with the bias correction (Yu et al.,
"Unified Low-rank Compression Framework for Click-through Rate Prediction", KDD 2024 ADS;
spec §11).

**Linear layers.** With the output mean ``mu = E[y]`` and covariance
``Sigma_y = E[y y^T] - mu mu^T`` of ``y = W x + b`` on calibration tokens (both follow from the
input Gram, input sum and token count: ``linalg/output_pca.py``), keep the top-k eigenvectors
``U_k`` of ``Sigma_y`` and replace the layer by

    y ~ U_k U_k^T (W x + b) + (I - U_k U_k^T) mu,

i.e. a :class:`~lowrank.nn.LowRankLinear` with ``B = U_k``, ``A = U_k^T W`` and bias
``U_k U_k^T b + (I - U_k U_k^T) mu = b + (I - U_k U_k^T) W xbar``. The error is
``(I - U_k U_k^T)(y - mu)``: its squared norm summed over tokens is the sum of the dropped
eigenvalues, so the relative error on centred outputs is ``sqrt(sum_{i>k} l_i / sum_i l_i)``,
never more than LoRD's uncentred projection at the same rank. A layer without a bias gains one
(``out`` parameters), which the budget counts.

**Embedding table** (``embeddings=True``, shared by every factorization method): the
token-frequency weighted PCA of the table's rows, ``compress/embedding.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..alloc.budget import BudgetItem
from ..calib.stats import CalibrationStats
from ..linalg.output_pca import output_covariance, output_pca
from .base import METHODS
from .embedding import AffineBudgetItem
from .factorize import FactorizationConfig
from .lord import OutputPCADecomposition, site_stats


@dataclass
class AFMDecomposition(OutputPCADecomposition):
    """Centred output PCA of one linear; :meth:`bias` is the mean-corrected bias at rank k."""

    input_mean: torch.Tensor | None = None  # xbar (in,), float64
    shifts_bias: ClassVar[bool] = True

    def bias(self, rank: int, bias: torch.Tensor | None) -> torch.Tensor:
        """``b + (I - U_k U_k^T) W xbar`` (= ``U_k U_k^T b + (I - U_k U_k^T) mu``), float64."""
        Wm = self.weight @ self.input_mean
        U = self.basis(rank)
        shift = Wm - U @ (U.T @ Wm)
        return shift if bias is None else bias.to(shift.device, torch.float64) + shift


@METHODS.register
@dataclass
class AFM(FactorizationConfig):
    """Centred output PCA with the bias correction (AFM), optionally on the embedding table.

    Budget: ``keep`` is the fraction of the targeted parameters that remain. With
    ``embeddings=True`` the input-embedding table is targeted as well and its ``V x d``
    parameters count in the targeted total. ``embedding_keep=None`` puts the table in the same
    allocation as the linears (one budget, ``keep`` of linears + table, spent by ``alloc``:
    with ``uniform`` the table keeps about the same fraction of its break-even rank as every
    linear); a number compresses the table to that fraction of its own parameters (the largest
    rank that fits) while the linears keep ``keep`` of theirs, and the reported target is the
    parameter-weighted mix of the two (``keep=1`` with ``embedding_keep=0.5`` compresses the
    table alone). A factorized table stores ``k (V + d) + d`` parameters.
    """

    method: ClassVar[str] = "afm"
    statistics: ClassVar[frozenset[str]] = frozenset({"gram"})

    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> AFMDecomposition:
        site = site_stats(stats, name, self.method)
        mean = site.mean  # raises DataError for statistics without the input sum
        W = weight.to(torch.float64)
        cov = output_covariance(W, site.gram, site.sum, site.tokens) * site.tokens
        return AFMDecomposition(W, output_pca(cov), input_mean=mean.to(W.device, torch.float64))

    def budget_item(self, name: str, module: nn.Linear, spectrum: torch.Tensor) -> BudgetItem:
        return AffineBudgetItem(name, module.out_features, module.in_features, True, spectrum,
                                dense_bias=module.bias is not None)
