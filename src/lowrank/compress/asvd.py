"""ASVD: activation-aware SVD (Yuan et al., "ASVD: Activation-aware Singular Value
Decomposition for Compressing Large Language Models", arXiv 2312.05821)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..calib.stats import CalibrationStats
from ..errors import ConfigError
from ..linalg import DiagonalRoot, WhitenedSVD, whitened_svd
from .base import METHODS
from .factorize import FactorizationConfig


@METHODS.register
@dataclass
class ASVD(FactorizationConfig):
    """Scale input channels by ``s^alpha`` (``s = mean |x|`` on calibration data) before the SVD.

    ``W' = SVD_k(W diag(s^alpha)) diag(s^-alpha)``: channels with large activations are
    approximated more carefully. ``alpha = 0`` is plain SVD.
    """

    method: ClassVar[str] = "asvd"
    statistics: ClassVar[frozenset[str]] = frozenset({"abs_mean"})

    alpha: float = field(default=0.5, metadata={
        "help": "exponent of the activation scaling s^alpha (0 = plain SVD)"})
    eps: float = field(default=1e-6, metadata={
        "help": "scales below eps * max scale are raised to it (dead channels)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.alpha <= 2:
            raise ConfigError(f"alpha must be in [0, 2], got {self.alpha}")
        if not 0 < self.eps < 1:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps}")

    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> WhitenedSVD:
        scale = stats.site(name).abs_mean.to(weight) ** self.alpha
        scale = scale.clamp_min(self.eps * float(scale.max().clamp_min(1e-300)))
        return whitened_svd(weight, DiagonalRoot(scale))
