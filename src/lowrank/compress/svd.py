"""Plain truncated SVD of each weight (Eckart–Young in weight space; data-free baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..calib.stats import CalibrationStats
from ..linalg import WhitenedSVD, whitened_svd
from .base import METHODS
from .factorize import FactorizationConfig


@METHODS.register
@dataclass
class SVD(FactorizationConfig):
    """Truncated SVD ``W ~= U_k S_k V_k^T``, singular values split evenly between the factors.

    Minimises ``||W - W'||_F`` and ignores the inputs, which is why it degrades quickly on
    transformers whose activations have outlier channels. Needs no calibration data.
    """

    method: ClassVar[str] = "svd"
    statistics: ClassVar[frozenset[str]] = frozenset()

    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> WhitenedSVD:
        return whitened_svd(weight)
