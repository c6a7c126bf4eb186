"""SVD-LLM: truncation-aware whitening (Wang et al., "SVD-LLM: Truncation-aware Singular Value
Decomposition for Large Language Model Compression", ICLR 2025)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..calib.data import TokenizedText
from ..calib.stats import CalibrationStats
from ..errors import ConfigError
from ..linalg import WhitenedSVD, whitened_svd
from ..registry import register_method
from .factorize import FactorizationConfig
from .refit import refit_left_factors


@register_method
@dataclass
class SVDLLM(FactorizationConfig):
    """Truncate in the whitened space of the inputs: ``W' = SVD_k(W S) S^-1`` with ``S S^T = G``.

    ``G`` is the calibration input Gram, so the truncation minimises the output error
    ``||(W - W') X||_F`` exactly; the dropped squared singular values of ``W S`` are the squared
    output error. ``S`` comes from an eigendecomposition with an eigenvalue floor (as in
    SVD-LLM V2), so rank-deficient Grams need no Cholesky retries.

    ``update_left=True`` adds the paper's closed-form update of the left factor: with ``A``
    fixed, ``B`` is refitted by least squares so that the layer, fed by the already-compressed
    upstream model, reproduces the original layer's outputs on the calibration data.
    """

    method: ClassVar[str] = "svdllm"
    needs: ClassVar[frozenset[str]] = frozenset({"gram"})

    floor: float = field(default=1e-6, metadata={
        "help": "eigenvalue floor of the Gram, relative to its largest eigenvalue"})
    update_left: bool = field(default=False, metadata={
        "help": "refit the left factor in closed form on inputs from the compressed model"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.floor < 1:
            raise ConfigError(f"floor must be in (0, 1), got {self.floor}")

    @property
    def refines(self) -> bool:
        return self.update_left

    def refine(self, original: nn.Module, model: nn.Module, names: list[str],
               tokens: TokenizedText) -> dict[str, float]:
        """Closed-form least-squares update of each left factor (see ``compress/refit.py``)."""
        return refit_left_factors(original, model, names, tokens)

    def decompose(self, weight: torch.Tensor, name: str,
                  stats: CalibrationStats | None) -> WhitenedSVD:
        root = stats.gram_root(name, self.floor)
        return whitened_svd(weight, root)
