"""FWSVD: Fisher-weighted SVD (Hsu et al., "Language model compression with weighted low-rank
factorization", ICLR 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from ..calib.stats import CalibrationStats
from ..errors import ConfigError, DataError
from ..linalg import DiagonalRoot, WhitenedSVD, whitened_svd
from .base import METHODS
from .factorize import FactorizationConfig


@METHODS.register
@dataclass
class FWSVD(FactorizationConfig):
    """Weight each row of ``W`` by the square root of its summed Fisher information.

    ``I_ij`` is the sum of squared gradients of the model's own loss (causal-LM loss, or the
    in-batch contrastive loss for embedding models). Rows (``axis="out"``, the paper's choice
    for PyTorch's out x in storage) or columns (``axis="in"``) share one importance
    ``r = sum I``; then ``W' = D^-1 SVD_k(D W)`` with ``D = diag(sqrt(r + eps * max r))`` is the
    exact minimiser of ``sum_i r_i ||W_i - W'_i||^2``.
    """

    method: ClassVar[str] = "fwsvd"
    statistics: ClassVar[frozenset[str]] = frozenset({"fisher"})

    axis: Literal["out", "in"] = field(default="out", metadata={
        "help": "which side shares one Fisher importance: 'out' (rows) or 'in' (columns)"})
    eps: float = field(default=1e-6, metadata={
        "help": "added to the importances, relative to their maximum"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.axis not in ("out", "in"):
            raise ConfigError(f"axis must be 'out' or 'in', got {self.axis!r}")
        if not 0 < self.eps < 1:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps}")

    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> WhitenedSVD:
        if stats is None or name not in stats.fisher:
            raise DataError(f"FWSVD needs Fisher statistics for '{name}': collect them with a "
                            "loss (calibration data is required)")
        f = stats.fisher[name]
        importance = (f.row_sum if self.axis == "out" else f.col_sum).to(weight)
        weights = (importance + self.eps * float(importance.max().clamp_min(1e-300))).sqrt()
        if self.axis == "out":
            return whitened_svd(weight, left=weights)
        return whitened_svd(weight, DiagonalRoot(weights))
